"""Self-adaptation without labels (hydrapicker.adapt, `hydra pick --adapt`): it raises AP on a simulated
target, its guards keep the zero-shot picks when the pseudo-labels are garbage or too few, and the adapted
model is saved with its provenance and re-used.

Uses the shipped generic model (pseudo-labels need a head that picks): small simulated micrographs.
"""

import numpy as np
import pytest
import torch

from hydrapicker import adapt as adapt_mod
from hydrapicker.adapt import AdaptSettings, adapt, count_matching_threshold, sample_micrographs, shifted_cut
from hydrapicker.checkpoint import read_checkpoint
from hydrapicker.cli import main as hydra
from hydrapicker.coords import read_coords
from hydrapicker.metrics import evaluate
from hydrapicker.picker import Picker
from hydrapicker.simulate import get_target
from hydrapicker.types import Picks

QUIET = dict(log=lambda *a, **k: None)
#: blend 1: the trained head itself (what adaptation learns); the default blend is checked on the same head
SETTINGS = AdaptSettings(sample=10, max_minutes=1.0, blend=1.0)


def _write_set(spec, out, indices):
    """-> (micrographs, {name: (N, 2) true centres})."""
    from conftest import write_simulated_set

    mics, truth = write_simulated_set(spec, out, indices)
    return mics, {k: v.xy() for k, v in truth.items()}


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """10 micrographs of a held-out detergent-micelle membrane protein (the shipped head's AP about 0.7)."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("adapt")
    spec = get_target("t_micelle").replace(shape=(768, 768))
    mics, truth = _write_set(spec, root, range(200, 210))
    return dict(root=root, spec=spec, mics=mics, truth=truth)


def _xy(path):
    (picks,) = read_coords(path).values()
    return picks.xy()


def _ap(picker, head, mics, truth, spec):
    policy = picker.policy(spec.diameter_A, head, threshold=None)
    picks = {r.micrograph.name: r.picks for r in picker.pick(mics, spec.diameter_A, head=head, policy=policy)}
    return evaluate(picks, truth, spec.diameter_px)["AP"]


def test_small_helpers():
    assert [m for m in sample_micrographs(list(range(10)), 3)] == [0, 4, 9]  # spread, ends included
    assert sample_micrographs([1, 2], 5) == [1, 2]
    assert shifted_cut(0.3, 0.5) == pytest.approx(0.3)  # shifted 0.5 = the threshold itself
    assert shifted_cut(0.3, 0.6) > 0.3
    assert count_matching_threshold(np.array([0.9, 0.2, 0.5, 0.7]), 2, 0.1) == pytest.approx(0.7)
    assert count_matching_threshold(np.array([0.9]), 0, 0.1) == pytest.approx(0.1)


def test_pseudo_labels_are_read_off_the_networks_own_foms(target, monkeypatch):
    """zero_shot (the teacher) turns micrograph evidence off: the FOMs it returns are the network's even when
    the default evidence would weigh every micrograph down (here a reference no micrograph reaches)."""
    from hydrapicker import defaults

    monkeypatch.setattr(defaults, "EVIDENCE_REFERENCE", 50.0)
    picker = Picker(None, device="cpu", **QUIET)
    mics = target["mics"][:2]
    d = target["spec"].diameter_A
    picked, failed = adapt_mod.zero_shot(picker, mics, d, "generic")
    raw = {r.micrograph.name: r.picks for r in picker.pick(mics, d, policy=picker.policy(d, threshold=None, evidence=0))}
    weighed = {r.micrograph.name: r.picks for r in picker.pick(mics, d, policy=picker.policy(d, threshold=None))}
    assert not failed and all(np.array_equal(p.fom, raw[m.name].fom) for m, p, _ in picked)
    assert all(weighed[m.name].fom.max() < p.fom.max() for m, p, _ in picked)  # the default would have weighed


def test_the_head_trains_on_features_cached_within_the_settings_memory(monkeypatch, tmp_path):
    """``AdaptSettings.cache_gb`` bounds the body features cached for the head (how many orientations: each
    is a body pass over the sample, counted in ``max_minutes``); the time limit is the settings' too."""
    from types import SimpleNamespace

    from fakes import fake_finetune
    from hydrapicker.types import Micrograph

    calls = fake_finetune(monkeypatch)
    settings = AdaptSettings(cache_gb=0.05, max_minutes=0.5)
    record = {"adaptation": {"base_model": None, "working_scale": 1.0}}
    mic = Micrograph(str(tmp_path / "a.mrc"), pixel_size=2.0, name="a")
    adapt_mod._train_round(SimpleNamespace(device="cpu"), [(mic, Picks(), 2.0)], {"a": Picks()}, 100.0,
                           tmp_path / "round1.pt", settings, record, lambda *a: None, None)
    (call,) = calls
    assert call["memory_gb"] == 0.05 and call["max_minutes"] == 0.5


def test_blend_moves_the_adapted_head_towards_the_head_it_started_from(tmp_path):
    from hydrapicker.adapt import blend_head
    from hydrapicker.checkpoint import load_checkpoint, save_checkpoint

    net, meta = load_checkpoint(None)
    net.add_head("adapted", init_from="generic")
    with torch.no_grad():  # a "trained" head: every weight 1 above the generic head's
        for p in net.heads["adapted"].parameters():
            p.add_(1.0)
    generic = [p.detach().clone() for p in net.heads["generic"].parameters()]
    save_checkpoint(tmp_path / "a.pt", net, {**meta, "finetune": {"adapted": {"threshold": 0.4}}})
    blend_head(tmp_path / "a.pt", "adapted", "generic", 0.25)
    net2, meta2 = load_checkpoint(tmp_path / "a.pt")
    for pa, pg, g0 in zip(net2.heads["adapted"].parameters(), net2.heads["generic"].parameters(), generic):
        assert torch.allclose(pg, g0) and torch.allclose(pa, pg + 0.25, atol=1e-5)
    assert meta2["finetune"]["adapted"] == {"threshold": 0.4, "blend": 0.25}
    with pytest.raises(ValueError, match="blend"):
        blend_head(tmp_path / "a.pt", "adapted", "generic", 1.5)


@pytest.mark.slow
def test_adaptation_raises_ap_and_records_its_provenance(target, tmp_path):
    spec, mics, truth = target["spec"], target["mics"], target["truth"]
    # the heads' own picks: centre refinement (a later stage, the same for both) is measured in test_refine
    # one test-time view: what adaptation learns shows on this small set (with the default two views the
    # zero-shot AP rises to about the adapted one's here, 0.723 -> 0.717; README, Self-adaptation)
    base = Picker(None, device="cpu", refine=False, tta=1, **QUIET)
    ap0 = _ap(base, "generic", mics, truth, spec)
    res = adapt(base, mics, spec.diameter_A, tmp_path / "adapted.pt", settings=SETTINGS, **QUIET)
    assert res.accepted, res.reason
    adapted = Picker(res.model, device="cpu", refine=False, tta=1, **QUIET)
    ap1 = _ap(adapted, res.head, mics, truth, spec)
    print(f"adaptation, one view: AP {ap0:.3f} -> {ap1:.3f}")
    assert ap1 > ap0 + 0.01, (ap0, ap1)
    # the default blend (halfway back to the generic head) keeps the AP at least where zero-shot had it
    import shutil

    from hydrapicker.adapt import blend_head

    shutil.copyfile(res.model, tmp_path / "blended.pt")
    blend_head(tmp_path / "blended.pt", "adapted", "generic", AdaptSettings().blend)
    apb = _ap(Picker(tmp_path / "blended.pt", device="cpu", refine=False, tta=1, **QUIET), "adapted", mics, truth, spec)
    assert apb >= ap0 - 0.003, (ap0, apb, ap1)
    meta = read_checkpoint(res.model)["meta"]
    assert meta["default_head"] == "adapted" and "generic" in meta["heads"]
    prov = meta["finetune"]["adapted"]["adaptation"]
    assert prov["pseudo_positives"] == res.record["pseudo_positives"] > 50
    assert len(prov["sample"]) == len(mics) and 0 < prov["agreement_with_zero_shot_F1"] <= 1
    assert prov["held_out_agreement_AP"] >= SETTINGS.min_agreement
    # a small sample's body features fit the default cache in all 8 dihedral orientations
    assert meta["finetune"]["adapted"]["orientations"] == 8
    # the threshold is count-matched: over the sample it writes as many picks as the zero-shot head would
    n0 = sum(len(r.picks) for r in base.pick(mics, spec.diameter_A, policy=base.policy(spec.diameter_A)))
    n1 = sum(len(r.picks) for r in adapted.pick(mics, spec.diameter_A, head="adapted",
                                               policy=adapted.policy(spec.diameter_A, "adapted")))
    assert abs(n1 - n0) <= 0.02 * n0 + 2, (n0, n1)


def test_garbage_pseudo_labels_keep_the_zero_shot_picks(target, tmp_path, monkeypatch):
    """Pseudo-labels at random places (what a head fooled by junk or noise would give): the new head cannot
    reproduce them on held-out micrographs, so adaptation is refused and nothing is written."""
    spec, mics = target["spec"], target["mics"]
    rng = np.random.default_rng(0)

    def garbage(picked, cut):
        return {m.name: Picks(rng.uniform(0, 512, 60), rng.uniform(0, 512, 60), np.ones(60)) for m, _, _ in picked}

    monkeypatch.setattr(adapt_mod, "pseudo_labels", garbage)
    base = Picker(None, device="cpu", **QUIET)
    res = adapt(base, mics, spec.diameter_A, tmp_path / "adapted.pt", settings=SETTINGS, **QUIET)
    assert not res.accepted and "held-out" in res.reason, res.reason
    assert res.head == "generic" and not (tmp_path / "adapted.pt").exists()


def test_hydra_pick_adapt_on_particle_free_micrographs_keeps_zero_shot(tmp_path, capsys):
    """Micrographs of ice and noise only: too few confident picks for the head and for the centre refiner; the
    picks equal a run without --adapt."""
    spec = get_target("t_small80kda").replace(shape=(384, 384), coverage=(0.0, 0.0), p_carbon=0.0)
    _write_set(spec, tmp_path, range(4))
    args = ["pick", "--mics", str(tmp_path / "micrographs.star"), "--diameter", str(spec.diameter_A)]
    assert hydra(args + ["--out", str(tmp_path / "zero")]) == 0
    assert hydra(args + ["--out", str(tmp_path / "ad"), "--adapt"]) == 0
    out = capsys.readouterr().out
    assert "not adapted: too few confident picks" in out
    assert "too few confident picks to learn centres from" in out  # the refiner was tried too, and refused
    assert "class averages of the data set: fewer than" in out  # and the data set's class averages
    assert not (tmp_path / "ad" / "adapted_hydra.pt").exists()
    assert not (tmp_path / "ad" / "adapted_refiner_hydra.pt").exists()
    for f in sorted((tmp_path / "zero").glob("*.star")):
        assert np.array_equal(_xy(f), _xy(tmp_path / "ad" / f.name))


@pytest.mark.slow
def test_hydra_pick_adapt_saves_the_model_and_reuses_it(target, tmp_path, capsys):
    star = target["root"] / "micrographs.star"
    args = ["pick", "--mics", str(star), "--diameter", str(target["spec"].diameter_A), "--adapt-sample", "10"]
    assert hydra(args + ["--out", str(tmp_path / "a"), "--adapt"]) == 0
    model, refiner = tmp_path / "a" / "adapted_hydra.pt", tmp_path / "a" / "adapted_refiner_hydra.pt"
    out = capsys.readouterr().out
    assert model.exists() and "adapted head 'adapted'" in out
    assert refiner.exists() and "adapted centre refiner saved" in out  # --adapt teaches the refiner too
    # and centres every micrograph on the data set's class averages, kept in the adapted model for re-use
    assert "every micrograph's picks are centred on them" in out and f"class averages are kept in {model}" in out
    assert read_checkpoint(model)["meta"]["class_references"]["confident"] >= 30
    # the saved model (naming its refiner) picks the same without adapting again ...
    assert hydra(args + ["--out", str(tmp_path / "b"), "--model", str(model)]) == 0
    # ... and --adapt given an existing --save-model re-uses it, and the refiner it names
    assert hydra(args + ["--out", str(tmp_path / "c"), "--adapt", "--save-model", str(model)]) == 0
    out = capsys.readouterr().out
    assert "re-using the adapted model" in out and f"re-using the adapted centre refiner {refiner}" in out
    assert "class averages of the data set: the" in out  # those kept in the model, not built again
    assert not (tmp_path / "c" / "adapted_refiner_hydra.pt").exists()
    for f in sorted((tmp_path / "a").glob("*_hydra.star")):
        for other in ("b", "c"):
            assert np.array_equal(_xy(f), _xy(tmp_path / other / f.name))
    assert read_checkpoint(model)["meta"]["default_head"] == "adapted"


@pytest.mark.slow
def test_relion_job_with_adapt_yes_keeps_the_adapted_model_in_the_job_and_reuses_it(target, monkeypatch, capsys):
    """The real RELION pick job (real picker) with ``adapt yes``: the adapted model lands in the job folder
    and picks; a Continue with nothing new loads nothing; a grown micrographs STAR (a Scheme's next cycle)
    re-uses the adapted model for the new micrograph only."""
    from conftest import write_all_but_last
    from relion_hydra.pick_job import main as relion_pick

    monkeypatch.chdir(target["root"])
    write_all_but_last("micrographs.star", "first9.star")
    job = "External/job017/"
    argv = ["--o", job, "--particle_diameter", str(target["spec"].diameter_A), "--adapt", "yes", "--j", "2"]
    assert relion_pick(argv + ["--in_mics", "first9.star"]) == 0
    model = target["root"] / job / "adapted_model.pt"
    assert model.exists() and (target["root"] / job / "RELION_JOB_EXIT_SUCCESS").exists()
    out = capsys.readouterr().out
    assert "adapted head 'adapted'" in out and "head adapted" in out
    assert read_checkpoint(model)["meta"]["finetune"]["adapted"]["adaptation"]["pseudo_positives"] > 50
    assert (target["root"] / job / "adapted_refiner.pt").exists()  # adapt yes teaches the refiner too
    assert f"centres refined by {job}adapted_refiner.pt" in out
    stamp = model.stat().st_mtime_ns
    assert relion_pick(argv + ["--in_mics", "first9.star"]) == 0
    assert "nothing new" in capsys.readouterr().out
    assert relion_pick(argv + ["--in_mics", "micrographs.star"]) == 0
    out = capsys.readouterr().out
    assert "re-using the adapted model" in out and "1 micrographs to pick" in out
    assert model.stat().st_mtime_ns == stamp


def test_a_model_at_another_scale_picks_larger_and_maps_back_to_micrograph_pixels(target, tmp_path):
    """model_at_scale: the copy's extent is the base's / scale and records the scale; its picks still land on
    the particles in the micrograph's own pixels (the rescaling is undone)."""
    from hydrapicker.scale import model_at_scale

    path = model_at_scale("default", 0.8, tmp_path / "s.pt")
    base, scaled = read_checkpoint("default")["meta"], read_checkpoint(path)["meta"]
    assert scaled["extent_px"] == pytest.approx(base["extent_px"] / 0.8)
    assert scaled["working_scale"] == pytest.approx(0.8)
    spec, mics = target["spec"], target["mics"][:2]
    picker = Picker(path, device="cpu", **QUIET)
    picks = {r.micrograph.name: r.picks for r in picker.pick(mics, spec.diameter_A)}
    res = evaluate(picks, {m.name: target["truth"][m.name] for m in mics}, spec.diameter_px)
    assert res["AP_centre"] > 0.6


def test_working_scale_stays_unless_another_scores_clearly_higher(target, tmp_path):
    """choose_scale keeps the given scale on a round membrane protein, where no other scale's best
    candidates score 0.05 higher; with a negative margin it takes the best scoring of the other scales, at a
    larger extent; a model already at the smallest scale is not scaled further."""
    from hydrapicker.scale import SCALES, choose_scale, model_at_scale

    picker = Picker(None, device="cpu", **QUIET)
    d, mics = target["spec"].diameter_A, target["mics"][:3]
    got, scale, scores = choose_scale(picker, mics, d, "generic", tmp_path, **QUIET)
    assert scale == 1.0 and got is picker and set(scores) == {1.0, *SCALES}
    best = max(SCALES, key=scores.get)
    got, scale, _ = choose_scale(picker, mics, d, "generic", tmp_path, margin=-1.0, **QUIET)
    assert scale == best and got.extent_px == pytest.approx(picker.extent_px / best)
    # a model already at the smallest scale tried goes no further (scales compound in its file)
    at_min = Picker(model_at_scale("default", min(SCALES), tmp_path / "min.pt"), device="cpu", **QUIET)
    again, scale, scores = choose_scale(at_min, mics, d, "generic", tmp_path, margin=-1.0, **QUIET)
    assert again is at_min and scale == 1.0 and scores == {}


@pytest.mark.slow
def test_an_elongated_particle_is_picked_at_a_smaller_scale(tmp_path):
    """A held-out rod (a 300 A coiled-coil shaft with a small head; the diameter given is its length): its
    best candidates score clearly higher when the network sees it larger, so adaptation works at a smaller
    scale, and picking there raises AP over the given scale."""
    from hydrapicker.scale import choose_scale

    spec = get_target("t_rod").replace(shape=(768, 768))
    mics, truth = _write_set(spec, tmp_path / "rod", range(300, 304))
    picker = Picker(None, device="cpu", **QUIET)
    got, scale, scores = choose_scale(picker, mics, spec.diameter_A, "generic", tmp_path, **QUIET)
    assert scale < 1.0 and scores[scale] >= scores[1.0] + 0.05
    assert _ap(got, "generic", mics, truth, spec) > _ap(picker, "generic", mics, truth, spec) + 0.05


def test_hydra_pick_working_scale_picks_the_same_as_a_model_at_that_scale(target, tmp_path, capsys):
    """``hydra pick --working-scale 0.8`` picks exactly what a model file at 0.8 x picks, in the micrograph's
    pixels (on the particles); auto keeps a round particle at the given scale (the same picks as without);
    with --adapt or (auto) with --watch it is refused with the fix."""
    from hydrapicker.scale import model_at_scale

    star = target["root"] / "micrographs.star"
    d = str(target["spec"].diameter_A)
    args = ["pick", "--mics", str(star), "--diameter", d]
    assert hydra(args + ["--out", str(tmp_path / "s"), "--working-scale", "0.8"]) == 0
    assert "working scale 0.8" in capsys.readouterr().out
    model = model_at_scale("default", 0.8, tmp_path / "m.pt")
    assert hydra(args + ["--out", str(tmp_path / "m"), "--model", str(model)]) == 0
    assert hydra(args + ["--out", str(tmp_path / "plain")]) == 0
    assert hydra(args + ["--out", str(tmp_path / "auto"), "--working-scale", "auto"]) == 0
    files = sorted((tmp_path / "s").glob("*_hydra.star"))
    assert len(files) == len(target["mics"])
    for f in files:
        assert np.array_equal(_xy(f), _xy(tmp_path / "m" / f.name))
        assert np.array_equal(_xy(tmp_path / "plain" / f.name), _xy(tmp_path / "auto" / f.name))
    from pathlib import Path

    picks = {m.name: Picks(*_xy(tmp_path / "s" / f"{Path(m.name).stem}_hydra.star").T) for m in target["mics"]}
    res = evaluate(picks, target["truth"], target["spec"].diameter_px)
    assert res["AP_centre"] > 0.6
    capsys.readouterr()
    assert hydra(args + ["--out", str(tmp_path / "x"), "--working-scale", "0.8", "--adapt"]) != 0
    assert "leave out --working-scale" in capsys.readouterr().err
    assert hydra(["pick", str(tmp_path), "--diameter", d, "--out", str(tmp_path / "w"), "--watch",
                  "--working-scale", "auto"]) != 0
    assert "give a number" in capsys.readouterr().err


@pytest.mark.slow
def test_a_refused_adaptation_still_picks_at_the_working_scale_the_data_set_chose(tmp_path, capsys):
    """The working scale stands on its own: when a guard refuses the adapted head (here: more pseudo-positives
    asked for than any data set has), the rod is picked zero-shot at the smaller scale it chose."""
    from hydrapicker.adapt import adapted_picker

    spec = get_target("t_rod").replace(shape=(768, 768))
    mics, _ = _write_set(spec, tmp_path / "rod", range(300, 304))
    picker = Picker(None, device="cpu", **QUIET)
    got, head, result = adapted_picker(picker, mics, spec.diameter_A, tmp_path / "a.pt",
                                       settings=AdaptSettings(min_positives=10 ** 6), log=print)
    scale = result.record["working_scale"]
    assert not result.accepted and head == "generic" and not (tmp_path / "a.pt").exists()
    assert scale < 1.0 and got.extent_px == pytest.approx(picker.extent_px / scale)
    assert f"at working scale {scale:g}" in capsys.readouterr().out
