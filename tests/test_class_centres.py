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
