"""Few-shot heads (hydrapicker.finetune, `hydra finetune`): learning, sparse labels, every coordinate
format through the command, the output model, bad input.

The base model is a freshly initialised ``lite`` network (no shipped weights needed): its body is random
but fixed, so a head trained on its features must learn the target from the labels alone.
"""
import functools
import json

import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from hydrapicker.checkpoint import load_checkpoint, make_meta, read_checkpoint, save_checkpoint
from hydrapicker.cli import main as hydra
from hydrapicker.coords import name_stem, write_box, write_relion_star, write_topaz_txt
from hydrapicker.errors import UserFacingError
from hydrapicker.finetune import FinetuneError, annotated_region, finetune, pu_targets
from hydrapicker.metrics import evaluate
from hydrapicker.model import build_model
from hydrapicker.picker import Picker
from hydrapicker.simulate import get_target
from hydrapicker.types import Picks

QUIET = dict(log=lambda *a, **k: None)
FAST = dict(crop=64, batch=8, steps_per_epoch=8, working_scale=1.0, **QUIET)  # small crops: seconds per fine-tune


def _write_set(spec, out, indices):
    from conftest import write_simulated_set

    return write_simulated_set(spec, out, indices)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A held-out simulated target (small micrographs), a random base model, truth of every micrograph."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("fewshot")
    spec = get_target("t_proteasome").replace(shape=(320, 320), p_carbon=0.0)
    mics, truth = _write_set(spec, root / "train", range(5))
    test_mics, test_truth = _write_set(spec, root / "test", range(100, 102))
    torch.manual_seed(0)
    net = build_model("lite")
    net.eval()
    base = save_checkpoint(root / "base.pt", net, make_meta(net, default_threshold=0.3))
    return dict(root=root, spec=spec, base=base, mics=mics, truth=truth, test_mics=test_mics,
                test_truth=test_truth)


def _ap(model, head, mics, truth, spec):
    picker = Picker(model, device="cpu", **QUIET)
    policy = picker.policy(spec.diameter_A, head, threshold=0.01)
    picks = {r.micrograph.name: r.picks for r in picker.pick(mics, spec.diameter_A, head=head, policy=policy)}
    return evaluate(picks, {k: v.xy() for k, v in truth.items()}, spec.diameter_px)["AP"]


@pytest.fixture(scope="module")
def dense(data):
    """One fine-tune on every particle of 5 micrographs (shared by several tests)."""
    out = data["root"] / "dense.pt"
    finetune(data["base"], data["mics"], data["truth"], data["spec"].diameter_A, "prot", out=out,
             epochs=16, patience=6, lr=3e-3, **FAST)
    return out


def test_finetune_improves_ap_on_test_micrographs(data, dense):
    spec = data["spec"]
    ap_base = _ap(dense, "generic", data["test_mics"], data["test_truth"], spec)
    ap_new = _ap(dense, "prot", data["test_mics"], data["test_truth"], spec)
    # a random (but frozen) body limits what a head can learn; the base head is at chance level
    assert ap_base < 0.1 and ap_new > ap_base + 0.15, (ap_base, ap_new)


def test_output_model_is_a_plain_checkpoint_with_the_new_head(data, dense):
    ck = torch.load(dense, map_location="cpu", weights_only=True)
    meta = ck["meta"]
    assert meta["heads"] == ["generic", "prot"]
    assert any(k.startswith("heads.prot.") for k in ck["model"])
    info = meta["finetune"]["prot"]
    assert info["n_picks"] == sum(len(p) for p in data["truth"].values())
    assert sorted(info["micrographs"]) == sorted(m.name for m in data["mics"])
    assert len(info["validation_micrographs"]) == 1 and info["validation"] == "micrographs"
    assert 0 < info["epochs"] <= 16 and 1 <= info["best_epoch"] <= info["epochs"]
    assert info["label_fraction"] == 1.0  # a random base detects nothing: labels are taken as dense
    assert 0.0 < meta["head_thresholds"]["prot"] < 1.0 and meta["head_thresholds"]["generic"] == 0.3
    assert meta["default_threshold"] == meta["head_thresholds"]["prot"] and meta["default_head"] == "prot"
    assert meta["head_diameters"]["prot"] == data["spec"].diameter_A
    json.dumps(info)  # plain values only
    # the body and the generic head are untouched
    base = torch.load(data["base"], map_location="cpu", weights_only=True)["model"]
    for k, v in base.items():
        assert torch.equal(ck["model"][k], v), k
    net, _ = load_checkpoint(dense)
    assert not torch.equal(net.heads["prot"].out.weight, net.heads["generic"].out.weight)
    # the threshold is the validation micrograph's best F1 point (the labels are dense here: c = 1, so
    # precision is not corrected), and picking that micrograph for real at it gives what the calibration saw
    vm = info["validation_metrics"]
    picker = Picker(dense, device="cpu", **QUIET)
    vname = info["validation_micrographs"][0]
    vmic = next(m for m in data["mics"] if m.name == vname)
    assert picker.default_head == "prot" and picker.default_threshold == info["threshold"]
    picks = picker.pick_one(vmic, data["spec"].diameter_A, head="prot").above(picker.default_threshold)
    truth = data["truth"][vname]
    # validation counts only the annotated region: within region_radius diameters of a label
    dist = np.hypot(picks.x[:, None] - truth.x[None], picks.y[:, None] - truth.y[None]).min(1)
    picks = picks.subset(dist <= info["region_radius_diameters"] * data["spec"].diameter_px)
    res = evaluate({vname: picks}, {vname: truth.xy()}, data["spec"].diameter_px)
    assert len(picks) > 0
    assert info["threshold"] == pytest.approx(vm["threshold"])
    f1 = 2 * res["precision"] * res["recall"] / (res["precision"] + res["recall"])
    assert f1 == pytest.approx(vm["F1"], abs=0.15), (f1, vm["F1"])


# ---------------------------------------------------------------------------------------- sparse labels
def test_threshold_is_the_best_label_corrected_f1():
    """The new head's threshold maximises F1 with precision against partial labels divided by c (capped at
    1): with dense labels it is plain max F1; with c = 0.5 a pick off the labels may be an unlabelled
    particle, and the threshold goes down to the last labelled hit."""
    from hydrapicker.finetune import max_f1_threshold

    # 10 labels; picks in score order: 6 hits, 2 misses, 2 hits, 4 misses, 2 hits
    hits = np.array([1] * 6 + [0] * 2 + [1] * 2 + [0] * 4 + [1] * 2, bool)
    thresholds = np.linspace(0.9, 0.15, len(hits))
    tp = np.cumsum(hits)
    pr = {"thresholds": thresholds, "precision": tp / np.arange(1, len(hits) + 1), "recall": tp / 10}
    f1 = lambda p, r: 2 * p * r / (p + r)  # noqa: E731
    assert f1(8 / 10, 8 / 10) > max(f1(6 / 6, 6 / 10), f1(10 / 16, 10 / 10))
    assert max_f1_threshold({"pr": pr}, 1.0) == pytest.approx(thresholds[9])   # 8 right of 10, 8 of 10 found
    assert max_f1_threshold({"pr": pr}, 0.5) == pytest.approx(thresholds[15])  # 10 / 16 x 2 >= 1: all found
    nothing = {"thresholds": thresholds, "precision": np.zeros(16), "recall": np.zeros(16)}
    assert max_f1_threshold({"pr": nothing}, 1.0) is None


def test_pu_targets_and_annotated_region():
    region = np.ones((1, 4), np.float32)
    cls = np.array([[1, 0, 0, 0]], np.float32)
    t = np.array([[0.9, 0.9, 0.5, 0.0]])
    target, weight = pu_targets(region, t, cls, 1.0)  # dense labels: unlabelled cells are background
    np.testing.assert_allclose(target, [[1, 0, 0, 0]])
    np.testing.assert_allclose(weight, [[1, 1, 1, 1]])
    target, weight = pu_targets(region, t, cls, 0.3)  # 30% labelled: a confident unlabelled cell is likely a particle
    assert target[0, 0] == 1.0 and target[0, 1] > 0.8 and 0.3 < target[0, 2] < 0.5 and target[0, 3] == 0.0
    np.testing.assert_allclose(target[0, 1], 0.9 * 0.7 / (1 - 0.27), rtol=1e-5)
    _, weight = pu_targets(region * 0, t, cls, 0.3)  # outside the annotated region nothing is taught
    np.testing.assert_allclose(weight, [[1, 0, 0, 0]])
    reg = annotated_region((50, 100), np.array([[10.0, 10.0]]), 8.0)
    assert reg[10, 17] == 1 and reg[10, 19] == 0 and reg[40, 90] == 0 and reg.sum() == pytest.approx(np.pi * 64, rel=0.1)
    assert annotated_region((5, 5), np.zeros((0, 2)), 8.0).all()  # an empty file: all annotated


def test_sparse_labels_do_not_teach_unlabelled_particles_as_background(data, dense, tmp_path):
    """30% of the particles labelled. The base is the dense fine-tune with its head as 'generic' (a base
    that knows the target), so the unlabelled particles are ones the base already scores high. The PU
    treatment (estimated label fraction) must keep them high; a dense-negative fine-tune (label fraction
    1, no region) pushes them towards background."""
    net, meta = load_checkpoint(dense)
    net.heads["generic"].load_state_dict(net.heads["prot"].state_dict())
    del net.heads["prot"]
    teacher = save_checkpoint(tmp_path / "teacher.pt", net,
                              make_meta(net, default_threshold=meta["head_thresholds"]["prot"]))
    rng = np.random.default_rng(3)
    labelled, unlabelled = {}, {}
    for name, p in data["truth"].items():
        keep = rng.random(len(p)) < 0.3
        labelled[name], unlabelled[name] = p.subset(keep), p.subset(~keep)
    d = data["spec"].diameter_A
    pu = finetune(teacher, data["mics"], labelled, d, "pu", out=tmp_path / "pu.pt", epochs=6, patience=6,
                  **FAST)
    neg = finetune(teacher, data["mics"], labelled, d, "neg", out=tmp_path / "neg.pt", epochs=6, patience=6,
                   label_fraction=1.0, region_radius=float("inf"), **FAST)
    c = torch.load(pu, weights_only=True)["meta"]["finetune"]["pu"]["label_fraction"]
    assert 0.1 < c < 0.6, c  # estimated from the base's detections

    def unlabelled_scores(model, head):
        picker = Picker(model, device="cpu", **QUIET)
        out = []
        for m in data["mics"]:
            picks = picker.pick_one(m, d, head=head, policy=picker.policy(d, head, threshold=0.0))
            u = unlabelled[m.name]
            tree = np.hypot(picks.x[None] - u.x[:, None], picks.y[None] - u.y[:, None])
            out.append(np.where(tree.min(1) < 0.25 * data["spec"].diameter_px,
                                picks.fom[tree.argmin(1)], 0.0))
        return np.concatenate(out)

    s_base = unlabelled_scores(teacher, "generic")
    s_pu, s_neg = unlabelled_scores(pu, "pu"), unlabelled_scores(neg, "neg")
    # the unlabelled particles the base picks (at its calibrated threshold): PU must keep them, a
    # dense-negative fine-tune teaches them as background
    known = s_base >= meta["head_thresholds"]["prot"]
    assert known.sum() >= 10, known.sum()
    b, p, n = np.median(s_base[known]), np.median(s_pu[known]), np.median(s_neg[known])
    print(f"unlabelled particles the base picks: {known.sum()}; median FOM base {b:.3f} pu {p:.3f} neg {n:.3f}")
    assert p > 1.3 * n, (b, p, n)
    assert p > 0.5 * b, (b, p, n)


def test_region_limits_what_is_taught(data, tmp_path):
    """Picks only in the left half: with the annotated region the right half is untaught."""
    d = data["spec"].diameter_A
    left = {k: p.subset(p.x < 130) for k, p in data["truth"].items()}
    out = finetune(data["base"], data["mics"], left, d, "left", out=tmp_path / "l.pt", epochs=1,
                   val_fraction=0.0, **FAST)
    info = torch.load(out, weights_only=True)["meta"]["finetune"]["left"]
    assert info["validation"] == "none" and info["n_picks"] == sum(len(p) for p in left.values())


# ---------------------------------------------------------------------------------- coordinate formats
def _write_format(fmt, root, mics, truth, mics_star):
    """Write the truth of the first two micrographs in format ``fmt``; returns the --coords argument."""
    use = mics[:2]
    d = root / fmt
    d.mkdir()
    if fmt == "star_dir":
        for m in use:
            write_relion_star(d / f"{name_stem(m.name)}_manualpick.star", truth[m.name])
        return d
    if fmt == "star_file":
        write_relion_star(d / f"{name_stem(use[0].name)}_manualpick.star", truth[use[0].name])
        return d / f"{name_stem(use[0].name)}_manualpick.star"
    if fmt == "coords_suffix":
        for m in use:
            write_relion_star(d / "Micrographs" / f"{name_stem(m.name)}_manualpick.star", truth[m.name])
        (d / "coords_suffix_manualpick.star").write_text(str(mics_star) + "\n")
        return d / "coords_suffix_manualpick.star"
    if fmt == "manualpick":
        for m in use:
            write_relion_star(d / f"{name_stem(m.name)}_manualpick.star", truth[m.name])
        starfile.write({"coordinate_files": pd.DataFrame({
            "rlnMicrographName": [m.name for m in use],
            "rlnMicrographCoordinates": [f"{name_stem(m.name)}_manualpick.star" for m in use]})},
            d / "manualpick.star")
        return d / "manualpick.star"
    if fmt == "particles":
        rows = [(m.name, x, y) for m in use for x, y in truth[m.name].xy()]
        df = pd.DataFrame(rows, columns=["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"])
        df["rlnOpticsGroup"] = 1
        optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                               "rlnImagePixelSize": [5.0], "rlnImageSize": [64], "rlnImageDimensionality": [2]})
        starfile.write({"optics": optics, "particles": df}, d / "particles.star")
        return d / "particles.star"
    if fmt == "box":
        for m in use:
            write_box(d / f"{name_stem(m.name)}.box", truth[m.name], 40)
        return d
    if fmt == "topaz":
        write_topaz_txt(d / "picks.txt", {name_stem(m.name): truth[m.name] for m in use})
        return d / "picks.txt"
    if fmt == "cs":
        Dataset = pytest.importorskip("cryosparc.dataset").Dataset
        rows = [(m.name, x, y) for m in use for x, y in truth[m.name].xy()]
        ds = Dataset.allocate(len(rows), [("location/micrograph_uid", "<u8"), ("location/micrograph_path", "O"),
                                          ("location/micrograph_shape", "<u4", (2,)),
                                          ("location/center_x_frac", "<f4"), ("location/center_y_frac", "<f4")])
        n = 320
        ds["location/micrograph_uid"] = [mics.index(next(m for m in use if m.name == r[0])) for r in rows]
        ds["location/micrograph_path"] = [f"J3/motioncorrected/{name_stem(r[0])}.mrc" for r in rows]
        ds["location/micrograph_shape"] = [[n, n]] * len(rows)
        ds["location/center_x_frac"] = [r[1] / n for r in rows]
        ds["location/center_y_frac"] = [r[2] / n for r in rows]
        ds.save(str(d / "particles.cs"))
        return d / "particles.cs"
    raise ValueError(fmt)


@pytest.mark.parametrize("fmt", ["star_dir", "star_file", "coords_suffix", "manualpick", "particles", "box",
                                 "topaz", "cs"])
def test_every_coordinate_format_through_the_command(data, tmp_path, monkeypatch, fmt):
    import hydrapicker.finetune as ft

    monkeypatch.setattr(ft, "finetune", functools.partial(ft.finetune, crop=64, batch=4, steps_per_epoch=2))
    monkeypatch.chdir(data["root"] / "train")  # a RELION-like project directory
    coords = _write_format(fmt, tmp_path, data["mics"], data["truth"], data["root"] / "train" / "micrographs.star")
    out = tmp_path / "model.pt"
    rc = hydra(["finetune", "--mics", str(data["root"] / "train" / "micrographs.star"), "--coords", str(coords),
                "--diameter", str(data["spec"].diameter_A), "--name", "fmt", "--model", str(data["base"]),
                "--epochs", "1", "--out", str(out), "--quiet"])
    assert rc == 0
    info = torch.load(out, weights_only=True)["meta"]["finetune"]["fmt"]
    n = 1 if fmt == "star_file" else 2
    want = [m.name for m in data["mics"][:n]]
    assert sorted(info["micrographs"]) == sorted(want)
    assert info["n_picks"] == sum(len(data["truth"][w]) for w in want)
    assert info["validation"] == "strips"  # 1-2 micrographs: held-out strips
    picker = Picker(out, device="cpu", **QUIET)
    assert picker.net.head_names == ["generic", "fmt"]
    d = data["spec"].diameter_A
    assert len(picker.pick_one(data["mics"][0], d, head="fmt", policy=picker.policy(d, "fmt", threshold=0.0))) > 0


# ------------------------------------------------------------------------------------------- bad input
def test_coordinates_matching_no_micrograph(data, tmp_path):
    coords = {"other_mic_001": Picks([10.0], [10.0])}
    with pytest.raises(FinetuneError, match="none of the 1 coordinate entries matches"):
        finetune(data["base"], data["mics"], coords, data["spec"].diameter_A, "x", out=tmp_path / "x.pt", **QUIET)
    assert not (tmp_path / "x.pt").exists()
    d = tmp_path / "c"
    d.mkdir()
    write_relion_star(d / "unrelated_manualpick.star", Picks([10.0], [10.0]))
    rc = hydra(["finetune", "--mics", str(data["root"] / "train" / "micrographs.star"), "--coords", str(d),
                "--diameter", "160", "--name", "x", "--model", str(data["base"]), "--out", str(tmp_path / "y.pt")])
    assert rc == 1 and not (tmp_path / "y.pt").exists()


def test_existing_or_invalid_head_name_and_bad_coordinates(data, dense, tmp_path):
    d = data["spec"].diameter_A
    with pytest.raises(FinetuneError, match="already has a head named 'prot'"):
        finetune(dense, data["mics"], data["truth"], d, "prot", out=tmp_path / "x.pt", **QUIET)
    with pytest.raises(FinetuneError, match="already has a head named 'generic'"):
        finetune(data["base"], data["mics"], data["truth"], d, "generic", out=tmp_path / "x.pt", **QUIET)
    with pytest.raises(FinetuneError, match="not valid"):
        finetune(data["base"], data["mics"], data["truth"], d, "a b/c", out=tmp_path / "x.pt", **QUIET)
    # coordinates from 2x binned micrographs' frame fall outside: a clear error
    scaled = {k: Picks(p.x * 2 + 200, p.y * 2 + 200) for k, p in data["truth"].items()}
    with pytest.raises(FinetuneError, match="outside the micrograph"):
        finetune(data["base"], data["mics"], scaled, d, "x", out=tmp_path / "x.pt", **QUIET)
    empty = {k: Picks.empty() for k in data["truth"]}
    with pytest.raises(UserFacingError, match="no particles"):
        finetune(data["base"], data["mics"], empty, d, "x", out=tmp_path / "x.pt", **QUIET)
    assert not (tmp_path / "x.pt").exists()


def test_a_micrograph_given_without_picks_teaches_plain_negatives_even_under_pu_weighting():
    """Junk the user wants rejected: a micrograph with an empty coordinate file is particle-free, so its
    cells are plain negatives (target 0, weight 1) even where the generic head is confident and the other
    micrographs are weighted as positive-unlabelled (label fraction < 1)."""
    from hydrapicker.finetune import FinetuneConfig, Labelled, Oriented, _weigh_labels

    g = (6, 6)
    cls = np.zeros(g, np.float32)
    cls[2, 3] = 1.0
    teacher = np.full((3, *g), 4.0, np.float32)  # the generic head is sure everywhere (junk or particles)
    region = np.ones(g, np.float32)
    picked = Labelled("picked", np.zeros((48, 48), np.float32), np.array([[28.0, 20.0]]), np.ones((48, 48)))
    junk = Labelled("junk", np.zeros((48, 48), np.float32), np.zeros((0, 2)), np.ones((48, 48)))
    variants = [(0, Oriented(None, cls.copy(), np.zeros((2, *g)), region, teacher.copy())),
                (1, Oriented(None, np.zeros(g, np.float32), np.zeros((2, *g)), region, teacher.copy()))]
    c, _ = _weigh_labels([picked, junk], variants, 8, 16.0, 0.5, FinetuneConfig(label_fraction=0.3),
                         lambda *a: None)
    assert c == pytest.approx(0.3)
    on_picked, on_junk = variants[0][1], variants[1][1]
    assert on_picked.target[2, 3] == 1.0 and on_picked.target[0, 0] > 0.5  # PU: unlabelled may be particles
    assert np.all(on_junk.target == 0.0) and np.all(on_junk.weight == 1.0)


def test_validation_holds_out_a_strip_of_every_particle_free_micrograph():
    """With whole micrographs held out, a particle-free one (the user's junk) still has its right strip in
    validation, so the new head's threshold is calibrated against that junk too."""
    from hydrapicker.finetune import Labelled, split_validation

    def mic(name, xy):
        return Labelled(name, np.zeros((64, 80), np.float32), np.asarray(xy, float).reshape(-1, 2), np.ones((64, 80)))

    mics = [mic("a", [[10, 10], [70, 30]]), mic("b", [[20, 40]]), mic("junk", np.zeros((0, 2)))]
    train, val = split_validation(mics, 0.2, 8.0, np.random.default_rng(0))
    by_name = {m.name: m for m in val}
    assert set(by_name) == {"junk", "a"} or set(by_name) == {"junk", "b"}  # one particle micrograph whole
    strip = by_name["junk"]
    assert strip.eval_mask is not None and strip.eval_mask[:, -1].all() and not strip.eval_mask[:, 0].any()
    junk_train = next(m for m in train if m.name == "junk")
    assert junk_train.region[:, -1].max() == 0 and junk_train.region[:, 0].min() == 1  # trained on the rest
    whole = next(m for m in val if m.name != "junk")
    assert whole.eval_mask is None and not any(m.name == whole.name for m in train)


def test_label_fraction_counts_an_off_centre_detection_of_a_labelled_particle_as_labelled():
    """The label fraction asks whether the user picked the particles the generic head detects, not how well
    it centred them: detections D/3 off their labels (outside the IoU rule, within D/2) on densely labelled
    micrographs give c = 1; with half the particles labelled c falls to about 0.5 over the nominal precision."""
    from hydrapicker import defaults
    from hydrapicker.finetune import Labelled, Oriented, estimate_label_fraction

    stride, d = 8, 16.0
    g = (16, 16)
    teacher = np.full((3, *g), -6.0, np.float32)
    teacher[:2] = 0.0  # centre offsets 0: detections at cell centres
    cells = [(i, j) for i in range(1, 15, 3) for j in range(1, 15, 3)]  # 25 particles, 24 px apart
    for i, j in cells:
        teacher[2, i, j] = 3.0
    centres = np.array([[(j + 0.5) * stride - 0.5, (i + 0.5) * stride - 0.5] for i, j in cells])
    off_centre = centres + [d / 3, 0.0]

    def c_of(labels):
        m = Labelled("m", np.zeros((128, 128), np.float32), labels, np.ones((128, 128), np.float32))
        o = Oriented(None, np.zeros(g, np.float32), np.zeros((2, *g)), np.ones(g, np.float32), teacher)
        return estimate_label_fraction([m], [o], stride, d, 0.0)

    c, info = c_of(off_centre)
    assert info["estimated"] and info["detections"] == 25 and info["hits"] == 25
    assert c == 1.0
    c, info = c_of(off_centre[::2])
    assert info["hits"] == 13 and c == pytest.approx(13 / (defaults.LABEL_FRACTION_NOMINAL_PRECISION * 25))


@pytest.mark.slow
def test_few_shot_on_an_elongated_particle_works_at_a_smaller_scale_and_keeps_it(tmp_path):
    """working_scale "auto": on a held-out rod (its length given as the diameter) the shipped model's best
    candidates score clearly higher at a smaller scale; the head is trained there, the model file keeps the
    scale, and it picks the rod better than a head trained at the given scale."""
    spec = get_target("t_rod").replace(shape=(768, 768))
    mics, truth = _write_set(spec, tmp_path / "train", range(3))
    test_mics, test_truth = _write_set(spec, tmp_path / "test", range(100, 103))
    kw = dict(epochs=8, patience=4, centre_refiner=False, **QUIET)  # the heads' own centres: the scale is the test
    auto = finetune(None, mics, truth, spec.diameter_A, "rod", out=tmp_path / "auto.pt", **kw)
    given = finetune(None, mics, truth, spec.diameter_A, "rod", out=tmp_path / "given.pt", working_scale=1.0, **kw)
    meta = read_checkpoint(auto)["meta"]
    scale = meta["finetune"]["rod"]["working_scale"]
    assert scale < 1.0 and meta["working_scale"] == pytest.approx(scale)
    assert meta["extent_px"] == pytest.approx(read_checkpoint(given)["meta"]["extent_px"] / scale)
    assert "hydra-scale-" not in meta["finetune"]["rod"]["base_model"]  # the model it came from, not the scaled copy
    assert _ap(auto, "rod", test_mics, test_truth, spec) > _ap(given, "rod", test_mics, test_truth, spec) + 0.05


def test_fine_tuning_reads_the_rectangle_inside_border_bands_as_picking_does(tmp_path):
    """load_labelled shows the head what the pick path shows the network: a micrograph padded with a flat band
    on its left is the micrograph itself, its picks shifted back (defaults.CROP_BANDS)."""
    from conftest import write_mrc
    from hydrapicker.finetune import load_labelled
    from hydrapicker.types import Micrograph

    spec = get_target("t_proteasome").replace(shape=(384, 384))
    from hydrapicker.simulate import simulate_micrograph

    sim = simulate_micrograph(spec, 0)
    padded = np.full((384, 384 + 50), np.float32(sim.image.mean() - 4 * sim.image.std()), np.float32)
    padded[:, 50:] = sim.image
    a = write_mrc(tmp_path / "a.mrc", sim.image, apix=spec.pixel_size)
    b = write_mrc(tmp_path / "b.mrc", padded, apix=spec.pixel_size)
    picks = Picks(sim.xy[:, 0], sim.xy[:, 1])
    la, = load_labelled([Micrograph(str(a), name="a")], {"a": picks}, spec.diameter_A, 16.0, 0.0, log=lambda *x: None)
    lb, = load_labelled([Micrograph(str(b), name="b")], {"b": Picks(picks.x + 50, picks.y)}, spec.diameter_A, 16.0,
                        0.0, log=lambda *x: None)
    assert np.array_equal(la.image, lb.image) and np.allclose(la.xy, lb.xy) and len(la.xy) == len(sim.xy)
