"""Class-average centring (hydrapicker.class_centres): touching particles with exact centres come back to them,
the move bound, the refusal, and its place on the picking path (policy, rounding for RELION, both adapters)."""
import numpy as np
import pytest

from hydrapicker.class_centres import ClassCentreSettings, recentre

D = 24.0  # px per diameter at the alignment sampling


def _particle(angle, size=None):
    """A two-lobed particle (a large and a small Gaussian lobe), its centre of mass at the origin, turned by
    ``angle``: an image of ``size`` px centred on the middle pixel."""
    size = size or int(2 * D) + 1
    r = np.arange(size) - size // 2
    x, y = np.meshgrid(r, r, indexing="xy")
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * x + s * y, -s * x + c * y  # the particle's own frame
    big, small = (2.0, 0.0), (-4.0, 0.0)  # lobes' centres, weighted so the centre of mass is the origin
    return (np.exp(-((u - big[0]) ** 2 + (v - big[1]) ** 2) / (2 * 4.0 ** 2)) +
            0.5 * np.exp(-((u - small[0]) ** 2 + (v - small[1]) ** 2) / (2 * 2.5 ** 2)))


def _touching_field(seed=0, n_side=12, noise=0.3):
    """Particles on a jittered grid one diameter apart (they touch), random in-plane angles, exact centres."""
    from scipy.ndimage import shift as nd_shift

    rng = np.random.default_rng(seed)
    size = int((n_side + 2) * D)
    image = rng.normal(0, noise, (size, size))
    truth = []
    for i in range(n_side):
        for j in range(n_side):
            cx, cy = (j + 1.5) * D + rng.uniform(-1, 1), (i + 1.5) * D + rng.uniform(-1, 1)
            ix, iy = int(round(cx)), int(round(cy))
            p = nd_shift(_particle(rng.uniform(0, 2 * np.pi)), (cy - iy, cx - ix), order=1)
            h = p.shape[0] // 2
            image[iy - h: iy + h + 1, ix - h: ix + h + 1] += p
            truth.append((cx, cy))
    return image.astype(np.float32), np.array(truth)


def test_touching_particles_with_exact_centres_come_back_to_them():
    from hydrapicker.class_centres import alignment_image

    image, truth = _touching_field()
    image = alignment_image(image, 1.0, 0.0)  # normalised, as the picking path gives it
    rng = np.random.default_rng(1)
    start = truth + rng.uniform(-0.15, 0.15, truth.shape) * D  # the detector's errors are about this size
    full = ClassCentreSettings(weight=1.0, prior=0.0)  # the whole move, no prior: the alignment itself
    got = recentre(image, start, start, D, full)
    assert got.classes >= 1 and got.moved > 0.5 * len(truth)
    moved = np.any(got.xy != start, axis=1)
    before, after = np.hypot(*(start - truth).T)[moved], np.hypot(*(got.xy - truth).T)[moved]
    assert np.median(before) > 2.0
    assert np.median(after) <= 1.0, f"median error after alignment {np.median(after):.2f} px"
    assert np.mean(after < before) >= 0.8
    # the default trusts the detector's position too (a prior, and half of each move): errors shrink less
    default = np.hypot(*(recentre(image, start, start, D).xy - truth).T)[moved]
    assert np.median(default) < 0.95 * np.median(before) and np.mean(default < before) >= 0.6


def test_no_pick_ever_moves_further_than_the_bound_and_few_confident_picks_change_nothing():
    rng = np.random.default_rng(2)
    image = rng.normal(0, 1, (400, 400)).astype(np.float32)  # noise: alignment pulls anywhere
    xy = rng.uniform(20, 380, (200, 2))
    for s in (ClassCentreSettings(), ClassCentreSettings(weight=1.0, prior=0.0)):
        got = recentre(image, xy, xy, D, s)
        assert got.moved > 0
        assert np.hypot(*(got.xy - xy).T).max() <= s.reach * D + 1e-6
    few = recentre(image, xy, xy[:29], D)
    assert few.classes == 0 and "refused" in few.report and np.array_equal(few.xy, xy)


@pytest.fixture(scope="module")
def touching_mic(tmp_path_factory):
    from conftest import write_mrc
    from test_refine import _touching

    sim, spec = _touching(1, snr=(0.15, 0.25))
    path = write_mrc(tmp_path_factory.mktemp("cc") / "touching.mrc", sim.image, apix=spec.pixel_size)
    return path, sim, spec


def test_the_picking_path_moves_the_detectors_picks_within_the_bound_and_rounds_them_for_relion(touching_mic):
    from dataclasses import replace

    from hydrapicker.picker import Picker
    from hydrapicker.types import Micrograph

    path, sim, spec = touching_mic
    picker = Picker(device="cpu", refine=False, log=None)
    mic = Micrograph(str(path), pixel_size=spec.pixel_size)
    plain = picker.policy(spec.diameter_A)
    on = picker.policy(spec.diameter_A, class_centres=True)
    assert plain.class_centres_at is None and on.class_centres_at == pytest.approx(on.calibrated)
    p0, p1 = picker.pick_one(mic, spec.diameter_A, policy=plain), picker.pick_one(mic, spec.diameter_A, policy=on)
    assert len(p1) == len(p0) > 30 and np.array_equal(p1.fom, p0.fom)  # the same picks, moved
    d_px = spec.diameter_A / spec.pixel_size
    move = np.hypot(p1.x - p0.x, p1.y - p0.y)
    assert (move > 0.01).mean() > 0.5 and move.max() <= ClassCentreSettings().reach * d_px * 1.01
    # the truth: the moved picks sit closer to the particles they found
    from hydrapicker.metrics import match_greedy

    def errors(p):
        _, m = match_greedy(p, sim.xy, d_px, centre=True)
        return np.hypot(*(np.stack([p.x, p.y], 1)[m[m >= 0]] - sim.xy[m >= 0]).T)
    assert np.median(errors(p1)) < np.median(errors(p0))
    rounded = picker.pick_one(mic, spec.diameter_A, policy=replace(on, round_to_pixel=True))
    assert np.array_equal(rounded.x, np.round(p1.x)) and np.array_equal(rounded.y, np.round(p1.y))


def test_class_centres_reaches_the_pick_policy_from_the_cli_relion_and_cryosparc(tmp_path, monkeypatch):
    from cryosparc_hydra.cli import _options, build_parser
    from cryosparc_hydra.picking import policy_for
    from hydrapicker.cli import build_parser as hydra_parser
    from hydrapicker.commands.pick import _policy

    class _Model:  # what the policies read of a picker
        meta = {"default_threshold": 0.3, "heads": ["generic"]}

        def policy(self, diameter_A, head="generic", threshold="model", **kw):
            from hydrapicker.postprocess import PickPolicy

            return PickPolicy.for_model(self.meta, diameter_A, head, threshold, **kw)

    base = ["pick", "--diameter", "150", "--device", "cpu"]
    assert policy_for(_Model(), _options(build_parser().parse_args(base))).class_centres_at is None
    assert policy_for(_Model(), _options(build_parser().parse_args(base + ["--class-centres"]))).class_centres_at == 0.3
    args = hydra_parser().parse_args(["pick", "--mics", "x.mrc", "--diameter", "150", "--out", "o", "--class-centres"])
    assert _policy(_Model(), args).class_centres_at == 0.3
    args = hydra_parser().parse_args(["pick", "--mics", "x.mrc", "--diameter", "150", "--out", "o"])
    assert _policy(_Model(), args).class_centres_at is None
    # on by default with --adapt (unless --no-refine or --no-class-centres), in both commands
    for extra, on in (([], True), (["--no-class-centres"], False), (["--no-refine"], False),
                      (["--no-refine", "--class-centres"], True)):
        args = hydra_parser().parse_args(["pick", "--mics", "x.mrc", "--diameter", "150", "--out", "o", "--adapt"]
                                         + extra)
        assert (_policy(_Model(), args).class_centres_at is not None) is on, extra
        opts = _options(build_parser().parse_args(base + ["--adapt"] + extra))
        assert (policy_for(_Model(), opts).class_centres_at is not None) is on, extra


@pytest.mark.parametrize("asked, adapt, refine, adapted_head, on", [
    (None, False, None, False, False),   # plain picking: off
    (True, False, None, False, True),    # asked
    (None, True, None, False, True),     # --adapt
    (None, True, True, False, True),     # --adapt --refine
    (None, True, False, False, False),   # --adapt --no-refine: the detector's centres
    (False, True, None, True, False),    # --no-class-centres wins
    (None, False, None, True, True),     # a model adapted by --adapt, re-used with --model
    (None, False, False, True, False),   # ... with --no-refine
])
def test_the_one_rule_puts_class_centring_on_with_adapt_and_adapted_models(asked, adapt, refine, adapted_head, on):
    from hydrapicker.class_centres import class_centring_on

    meta = {"heads": ["generic", "adapted"],
            "finetune": {"adapted": {"adaptation": {"pseudo_positives": 120}} if adapted_head else {"epochs": 3}}}
    assert class_centring_on(asked, adapt, refine, meta, "adapted") is on
    plain_head = asked if asked is not None else (adapt and refine is not False)  # the adaptation is the head's
    assert class_centring_on(asked, adapt, refine, meta, "generic") is plain_head
    # a model at a smaller working scale (an elongated particle): off unless asked
    assert class_centring_on(asked, adapt, refine, {**meta, "working_scale": 0.75}, "adapted") is (asked is True)


def _quadrants(image, xy):
    """Four micrographs cut from ``image`` and each one's points of ``xy`` (in its own pixels)."""
    h, w = image.shape[0] // 2, image.shape[1] // 2
    out = []
    for y0 in (0, h):
        for x0 in (0, w):
            inside = (xy[:, 0] >= x0) & (xy[:, 0] < x0 + w) & (xy[:, 1] >= y0) & (xy[:, 1] < y0 + h)
            out.append((image[y0:y0 + h, x0:x0 + w], xy[inside] - (x0, y0), inside))
    return out


def test_a_data_sets_class_averages_centre_micrographs_too_sparse_for_their_own():
    """Four micrographs of the touching field, each with fewer than ``min_confident`` picks that have a whole
    crop: alone, each keeps its picks; the averages of all four bring every one's picks to the exact centres."""
    from hydrapicker.class_centres import alignment_image, references

    image, truth = _touching_field()
    rng = np.random.default_rng(1)
    start = truth + rng.uniform(-0.15, 0.15, truth.shape) * D
    full = ClassCentreSettings(weight=1.0, prior=0.0)
    parts = [(alignment_image(im, 1.0, 0.0), xy, inside) for im, xy, inside in _quadrants(image, start)]
    for im, xy, _ in parts:
        assert recentre(im, xy, xy, D, full).classes == 0  # too few of its own: refused
    refs = references([im for im, _, _ in parts], [xy for _, xy, _ in parts], D, full, data_set=True)
    assert refs is not None and refs.micrographs == 4 and refs.confident >= full.min_confident
    before, after = [], []
    for (im, xy, inside), (_, t, _) in zip(parts, _quadrants(image, truth)):
        got = recentre(im, xy, xy, D, full, refs=refs)
        moved = np.any(got.xy != xy, axis=1)
        assert got.moved > 0 and np.hypot(*(got.xy - xy).T).max() <= full.reach * D + 1e-6
        before.append(np.hypot(*(xy - t).T)[moved])
        after.append(np.hypot(*(got.xy - t).T)[moved])
    before, after = np.concatenate(before), np.concatenate(after)
    assert np.median(before) > 2.0 and np.median(after) <= 1.0, f"median error {np.median(after):.2f} px"
    # too few over the whole data set too: None
    assert references([parts[0][0]], [parts[0][1]], D, full, data_set=True) is None


def test_one_micrographs_averages_are_the_data_set_path_with_one_micrograph_and_survive_a_model_file():
    from hydrapicker.class_centres import ClassReferences, alignment_image, references

    image, truth = _touching_field(seed=3)
    image = alignment_image(image, 1.0, 0.0)
    xy = truth + np.random.default_rng(4).uniform(-0.15, 0.15, truth.shape) * D
    own = recentre(image, xy, xy[:50], D)
    refs = references([image], [xy[:50]], D)
    assert np.array_equal(recentre(image, xy, None, D, refs=refs).xy, own.xy)
    kept = ClassReferences.from_meta(refs.to_meta())  # plain lists, as a model file keeps them
    assert np.array_equal(recentre(image, xy, None, D, refs=kept).xy, own.xy)
    assert ClassReferences.from_meta({**refs.to_meta(), "px_per_d": 12.0}) is None  # made at another sampling
    assert ClassReferences.from_meta(None) is None


def test_the_picker_centres_on_a_data_sets_averages_and_an_adapted_model_keeps_them(touching_mic, tmp_path):
    import shutil

    from hydrapicker.checkpoint import read_checkpoint
    from hydrapicker.class_centres import data_set_classes
    from hydrapicker.picker import Picker
    from hydrapicker.types import Micrograph
    from hydrapicker.checkpoint import default_model_path

    path, sim, spec = touching_mic
    model = tmp_path / "adapted.pt"
    shutil.copyfile(default_model_path(), model)
    picker = Picker(str(model), device="cpu", refine=False, log=None)
    mic = Micrograph(str(path), pixel_size=spec.pixel_size)
    missing = Micrograph(str(tmp_path / "missing.mrc"), pixel_size=spec.pixel_size)
    plain, on = picker.policy(spec.diameter_A), picker.policy(spec.diameter_A, class_centres=True)
    refs, failed = picker.class_references([mic, missing], spec.diameter_A, "generic", on)
    assert failed == [missing.name] and refs.micrographs == 1 and refs.confident >= 30
    ds = picker.with_class_references(refs)
    assert picker.class_refs is None and ds.class_refs is refs and ds.net is picker.net
    from hydrapicker.class_centres import described  # what every entry point's log says

    assert "the data set's class averages" in described(0.3, refs=refs) and "its micrograph's" in described(0.3)
    p0, p1 = picker.pick_one(mic, spec.diameter_A, policy=plain), ds.pick_one(mic, spec.diameter_A, policy=on)
    assert np.array_equal(ds.pick_one(mic, spec.diameter_A, policy=plain).x, p0.x)  # no class centring asked
    move = np.hypot(p1.x - p0.x, p1.y - p0.y)
    d_px = spec.diameter_A / spec.pixel_size
    assert len(p1) == len(p0) and (move > 0.01).mean() > 0.5 and move.max() <= ClassCentreSettings().reach * d_px * 1.01
    # --adapt's step: built over the sample and kept in the adapted model, whose picker re-uses them
    lines = []
    other = tmp_path / "elsewhere.pt"
    assert data_set_classes(picker, [mic], spec.diameter_A, "generic", plain, 24, lines.append) is picker  # off
    got = data_set_classes(picker, [mic], spec.diameter_A, "generic", on, 24, lines.append, keep_in=other)
    assert not other.exists() and "class_references" not in read_checkpoint(model)["meta"]  # not its model
    got = data_set_classes(picker, [mic], spec.diameter_A, "generic", on, 24, lines.append, keep_in=model)
    assert "class_references" in read_checkpoint(model)["meta"] and any("kept in" in s for s in lines)
    again = Picker(str(model), device="cpu", refine=False, log=None)
    assert again.class_refs is not None
    assert data_set_classes(again, [], spec.diameter_A, "generic", on, 24, lines.append) is again  # re-used
    a, b = got.pick_one(mic, spec.diameter_A, policy=on), again.pick_one(mic, spec.diameter_A, policy=on)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)


def test_the_data_sets_averages_centre_every_micrograph_or_only_those_with_too_few_of_their_own():
    """``data_set_for``: "all" (the default) centres every micrograph on the data set's averages; "few" keeps a
    micrograph with enough confident picks on its own averages and gives the data set's to one without."""
    from dataclasses import replace

    from hydrapicker.class_centres import DEFAULT_SETTINGS, alignment_inputs, recentred_picks, references
    from hydrapicker.types import Picks

    image, truth = _touching_field(seed=5)
    jitter = np.random.default_rng(6).uniform(-0.15, 0.15, truth.shape) * D
    picks = Picks(truth[:, 0] + jitter[:, 0], truth[:, 1] + jitter[:, 1], np.ones(len(truth)))
    few = replace(DEFAULT_SETTINGS, data_set_for="few")
    aligned, xy = alignment_inputs(image, (1.0, 1.0), D, picks)  # the network's image at 24 px per diameter
    refs = references([aligned], [xy[::3]], D, data_set=True)  # other picks' averages than the micrograph's own
    own, _ = recentred_picks(picks, image, (1.0, 1.0), D)
    every, _ = recentred_picks(picks, image, (1.0, 1.0), D, refs=refs)
    kept, _ = recentred_picks(picks, image, (1.0, 1.0), D, settings=few, refs=refs)
    assert np.array_equal(kept.x, own.x) and not np.array_equal(every.x, own.x)
    sparse = picks.subset(np.arange(len(picks)) < 20)  # too few of its own: refused alone, centred with "few"
    alone, report = recentred_picks(sparse, image, (1.0, 1.0), D, settings=few)
    helped, _ = recentred_picks(sparse, image, (1.0, 1.0), D, settings=few, refs=refs)
    assert report.classes == 0 and np.array_equal(alone.x, sparse.x) and not np.array_equal(helped.x, sparse.x)
