"""The centre refiner taught a data set's own particles (hydrapicker.refine_adapt, `hydra pick --adapt-centres`):
its teaching mask, the guard, a refiner file made for the model's body that re-centres picks better than the
shipped one on a simulated crowded set and never moves a pick further than the bound, and the command
(saved, re-used, refused where it cannot run)."""
import numpy as np
import pytest
import torch

from hydrapicker.cli import main as hydra
from hydrapicker.coords import read_coords
from hydrapicker.metrics import evaluate
from hydrapicker.picker import Picker
from hydrapicker.refine import MAX_SHIFT_D, SHIPPED, Refiner
from hydrapicker.refine_adapt import RefinerAdaptSettings, near_mask, picker_with_adapted_refiner
from hydrapicker.simulate import get_target

QUIET = dict(log=lambda *a, **k: None)


def _write_set(spec, out, indices):
    from conftest import write_simulated_set

    mics, truth = write_simulated_set(spec, out, indices)
    return mics, {k: v.xy() for k, v in truth.items()}


def test_only_cells_near_a_teaching_pick_are_taught():
    m = near_mask(np.array([[10.0, 10.0]]), g=8, stride=4, radius_cells=1.0)
    # (10, 10) px is cell (2.625, 2.625); the cells whose centres lie within one cell of it:
    assert sorted(zip(*np.nonzero(m))) == [(2, 2), (2, 3), (3, 2)]
    assert near_mask(np.zeros((0, 2)), 8, 4, 1.0).sum() == 0


def test_too_few_confident_picks_keep_the_centres_as_they_were(tmp_path):
    """Micrographs of ice and noise only: nothing to learn from; the picker is returned as it was, so a refusal
    changes no pick: the detector's centres (the default), or the refiner it was given."""
    spec = get_target("t_small80kda").replace(shape=(384, 384), coverage=(0.0, 0.0), p_carbon=0.0)
    mics, _ = _write_set(spec, tmp_path, range(2))
    said = []
    plain = Picker(**QUIET)
    picker, res = picker_with_adapted_refiner(plain, mics, spec.diameter_A, tmp_path / "r.pt", reuse=False,
                                              log=said.append)
    assert not res.accepted and "too few confident picks" in res.reason
    assert picker is plain and picker.refiner is None and not (tmp_path / "r.pt").exists()
    assert any("not adapted" in s for s in said) and any("the detector's own centres" in s for s in said)
    shipped = Picker(refine="shipped", **QUIET)
    picker, res = picker_with_adapted_refiner(shipped, mics, spec.diameter_A, tmp_path / "r.pt", reuse=False, **QUIET)
    assert not res.accepted and picker is shipped and picker.refiner.path == str(SHIPPED)
    # no micrographs at all (a --watch restart whose earlier run was refused): said as such
    picker, res = picker_with_adapted_refiner(plain, [], spec.diameter_A, tmp_path / "r.pt", reuse=False, **QUIET)
    assert not res.accepted and res.reason == "no micrographs to learn centres from"
    assert picker is plain and not (tmp_path / "r.pt").exists()


@pytest.mark.parametrize("adapt, adapt_centres, refine, refiner, taught", [
    (True, None, None, None, True),        # --adapt: head and centres
    (True, False, None, None, False),      # --adapt --no-adapt-centres
    (True, None, False, None, False),      # --adapt --no-refine: the detector's centres
    (True, None, None, "r.pt", False),     # --adapt --refiner r.pt: that refiner
    (True, None, True, None, True),        # --adapt --refine
    (False, None, None, None, False),      # plain picking
    (False, True, None, None, True),       # --adapt-centres alone
    (True, True, None, "r.pt", True),      # asked in so many words
])
def test_the_rule_of_when_the_data_set_teaches_the_refiner(adapt, adapt_centres, refine, refiner, taught):
    from hydrapicker.refine_adapt import adapts_centres

    assert adapts_centres(adapt, adapt_centres, refine, refiner) is taught


def test_asking_for_adapted_centres_beside_no_refine_is_refused():
    from hydrapicker.errors import UserFacingError
    from hydrapicker.refine_adapt import adapts_centres

    with pytest.raises(UserFacingError, match="leave out --no-refine"):
        adapts_centres(True, True, False)


def test_a_model_that_names_its_refiner_is_refined_by_it_unless_told_otherwise(tmp_path):
    """``meta['refiner']`` (written for an adapted model beside its adapted refiner): ``refine="auto"`` uses
    that file; a missing one is said and the usual rule applies; --no-refine and --refiner still decide."""
    import shutil

    from hydrapicker.checkpoint import update_meta
    from hydrapicker.refine_adapt import name_in_adapted_model

    model = tmp_path / "model.pt"
    shutil.copyfile(Picker(**QUIET).meta["path"], model)
    shutil.copyfile(Picker(refine="shipped", **QUIET).refiner.path, tmp_path / "own.pt")
    # only a model adapted to the data set (head 'adapted') is ever written
    assert not name_in_adapted_model(model, tmp_path / "own.pt", **QUIET)
    update_meta(model, refiner="own.pt")
    said = []
    assert Picker(model, log=said.append).refiner.path == str(tmp_path / "own.pt")
    assert any("adapted with this model" in s for s in said)
    assert Picker(model, refine=False, **QUIET).refiner is None
    (tmp_path / "own.pt").unlink()
    said = []
    assert Picker(model, log=said.append).refiner is None  # the default: the detector's centres
    assert any("own.pt, which is missing" in s for s in said)


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    """4 micrographs of a held-out D7 proteasome at its benchmark density (many confident picks)."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("refine_adapt")
    spec = get_target("t_proteasome").replace(shape=(768, 768))
    mics, truth = _write_set(spec, root, range(300, 304))
    return dict(root=root, spec=spec, mics=mics, truth=truth)


def _picks(picker, mics, spec):
    policy = picker.policy(spec.diameter_A, threshold=0.01)
    return {r.micrograph.name: r.picks for r in picker.pick(mics, spec.diameter_A, policy=policy)}


@pytest.mark.slow
def test_too_few_confident_picks_fall_back_to_the_written_picks(crowded, tmp_path):
    """``fallback_above``: when fewer than ``min_positives`` picks score above ``positives_above`` (here a cut
    no pick reaches), the picks above the fallback's cut (0.5: the head's threshold, the written picks) teach
    the refiner; without it the guard refuses."""
    from hydrapicker.adapt import shifted_cut
    from hydrapicker.refine_adapt import adapt_refiner

    spec, mics = crowded["spec"], crowded["mics"]
    picker = Picker(**QUIET)
    strict = RefinerAdaptSettings(positives_above=0.99999, steps=10, fallback_above=None)
    res = adapt_refiner(picker, mics, spec.diameter_A, tmp_path / "none.pt", settings=strict, **QUIET)
    assert not res.accepted and "too few confident picks" in res.reason and res.record["fallback"] is False
    fallback = RefinerAdaptSettings(positives_above=0.99999, steps=10)  # the default fallback: 0.5
    res = adapt_refiner(picker, mics, spec.diameter_A, tmp_path / "r.pt", settings=fallback, **QUIET)
    assert res.accepted and res.record["fallback"] is True and res.record["confident_above_positives_cut"] < 30
    assert res.record["positive_cut"] == pytest.approx(shifted_cut(picker.threshold_for("generic"), 0.5), abs=1e-4)
    written = sum(len(p.above(picker.threshold_for("generic"))) for p in _picks(picker, mics, spec).values())
    assert res.record["positives"] >= RefinerAdaptSettings().min_positives and res.record["positives"] <= 1.2 * written
    # enough above the usual cut: the fallback changes nothing
    usual = adapt_refiner(picker, mics, spec.diameter_A, tmp_path / "u.pt", settings=RefinerAdaptSettings(steps=10),
                          **QUIET)
    assert usual.accepted and usual.record["fallback"] is False
    assert usual.record["positive_cut"] == pytest.approx(shifted_cut(picker.threshold_for("generic"), 0.75), abs=1e-4)


@pytest.mark.slow
def test_the_adapted_refiner_centres_better_and_moves_no_pick_beyond_the_bound(crowded, tmp_path):
    spec, mics, truth = crowded["spec"], crowded["mics"], crowded["truth"]
    shipped = Picker(refine="shipped", **QUIET)
    picker, res = picker_with_adapted_refiner(Picker(**QUIET), mics, spec.diameter_A, tmp_path / "r.pt",
                                              reuse=False, **QUIET)
    assert res.accepted and res.record["positives"] >= RefinerAdaptSettings().min_positives
    assert Refiner(res.path).fits(picker.net, picker.meta)  # made for this body: every head of it can use it
    assert Refiner(res.path).meta["adaptation"]["positives"] == res.record["positives"]
    got, before = _picks(picker, mics, spec), _picks(shipped, mics, spec)
    ap = {k: evaluate(p, truth, spec.diameter_px)["AP"] for k, p in (("adapted", got), ("shipped", before))}
    assert ap["adapted"] > ap["shipped"] + 0.005, ap
    detector = _picks(Picker(refine=False, **QUIET), mics, spec)
    for name, p in got.items():  # every refined pick lies within the bound of the detector's pick it came from
        d = np.hypot(*(p.xy()[:, None, :] - detector[name].xy()[None, :, :]).transpose(2, 0, 1)).min(1)
        # (the bound holds in the rescaled micrograph, whose whole-pixel size makes its scale differ from
        # extent / diameter by under 1 %)
        assert d.max() <= MAX_SHIFT_D * spec.diameter_px * 1.01


@pytest.mark.slow
def test_hydra_pick_adapt_centres_saves_the_refiner_and_reuses_it(crowded, tmp_path, capsys):
    star = crowded["root"] / "micrographs.star"
    args = ["pick", "--mics", str(star), "--diameter", str(crowded["spec"].diameter_A)]
    assert hydra(args + ["--out", str(tmp_path / "a"), "--adapt-centres"]) == 0
    refiner = tmp_path / "a" / "adapted_refiner_hydra.pt"
    assert refiner.exists() and "adapted centre refiner saved" in capsys.readouterr().out
    assert hydra(args + ["--out", str(tmp_path / "b"), "--refiner", str(refiner)]) == 0
    assert hydra(args + ["--out", str(tmp_path / "c"), "--adapt-centres", "--save-refiner", str(refiner)]) == 0
    assert "re-using the adapted centre refiner" in capsys.readouterr().out
    for f in sorted((tmp_path / "a").glob("*_hydra.star")):
        (a,) = read_coords(f).values()
        for other in ("b", "c"):
            (b,) = read_coords(tmp_path / other / f.name).values()
            assert np.array_equal(a.xy(), b.xy())


def test_adapt_centres_is_refused_with_watch_without_adapt_and_with_no_refine(tmp_path, capsys):
    base = ["pick", str(tmp_path), "--diameter", "100", "--out", str(tmp_path / "o"), "--adapt-centres"]
    assert hydra(base + ["--watch"]) != 0
    assert "--watch --refiner" in capsys.readouterr().err
    assert hydra(base + ["--no-refine"]) != 0
    assert "leave out --no-refine" in capsys.readouterr().err


@pytest.mark.slow
def test_relion_job_with_adapt_centres_keeps_the_refiner_in_the_job_and_reuses_it(crowded, monkeypatch, capsys):
    """The real RELION pick job (real picker) with ``adapt_centres yes``: the adapted refiner lands in the job
    folder and re-centres the picks; a grown micrographs STAR (a Scheme's next cycle) re-uses it for the new
    micrograph only."""
    from conftest import write_all_but_last
    from relion_hydra.pick_job import main as relion_pick

    monkeypatch.chdir(crowded["root"])
    write_all_but_last("micrographs.star", "first3.star")
    job = "External/job021/"
    argv = ["--o", job, "--particle_diameter", str(crowded["spec"].diameter_A), "--adapt_centres", "yes", "--j", "2"]
    assert relion_pick(argv + ["--in_mics", "first3.star"]) == 0
    refiner = crowded["root"] / job / "adapted_refiner.pt"
    assert refiner.exists() and (crowded["root"] / job / "RELION_JOB_EXIT_SUCCESS").exists()
    out = capsys.readouterr().out
    assert "adapted centre refiner saved" in out and f"centres refined by {job}adapted_refiner.pt" in out
    stamp = refiner.stat().st_mtime_ns
    assert relion_pick(argv + ["--in_mics", "micrographs.star"]) == 0
    out = capsys.readouterr().out
    assert "re-using the adapted centre refiner" in out and "1 micrographs to pick" in out
    assert refiner.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_a_model_at_another_working_scale_gets_a_refiner_made_at_that_scale(crowded, tmp_path):
    """No shipped refiner fits a model at another working scale (hydrapicker.scale); the adapted one starts from
    the shipped refiner of its body and is made for the model's extent."""
    from hydrapicker.scale import model_at_scale

    spec, mics = crowded["spec"], crowded["mics"]
    scaled = Picker(str(model_at_scale(Picker(**QUIET).meta["path"], 0.85, tmp_path / "m.pt")), **QUIET)
    picker, res = picker_with_adapted_refiner(scaled, mics, spec.diameter_A, tmp_path / "r.pt", reuse=False,
                                              settings=RefinerAdaptSettings(steps=20), **QUIET)
    assert res.accepted and Refiner(res.path).fits(picker.net, picker.meta)
    assert picker.refiner is not None and picker.extent_px == scaled.extent_px
