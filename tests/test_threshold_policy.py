"""``threshold = auto`` in the one selection step: each micrograph's own cut-off, recorded."""
import numpy as np
import pytest

from hydrapicker.postprocess import Candidates, PickPolicy, finalize
from hydrapicker.thresholds import auto_threshold, sigmoid


def _bimodal(mu_bg, mu_p, n_bg=300, n_p=120, seed=0):
    rng = np.random.default_rng(seed)
    z = np.concatenate([rng.normal(mu_bg, 0.5, n_bg), rng.normal(mu_p, 0.5, n_p)])
    fom = sigmoid(z)
    xy = np.stack([np.arange(len(z)) * 10.0 % 4000, np.arange(len(z)) * 10.0 // 4000 * 10], axis=1)
    return Candidates(xy, fom, (4096, 4096), 1.0)


def test_auto_threshold_is_chosen_per_micrograph_in_finalize_and_recorded():
    policy = PickPolicy(min_distance_A=0.0, threshold="auto", floor=0.05, calibrated=0.3)
    assert policy.is_auto and policy.decode_floor == 0.05
    thresholds = []
    for c in (_bimodal(-2.5, 0.2, seed=1), _bimodal(-1.5, 2.0, seed=2)):
        info = {}
        picks = finalize(c, policy, info=info)
        keep = c.score >= 0.05
        expect, why = auto_threshold(c.score[keep], 0.3, floor=0.05)
        assert info["threshold"] == pytest.approx(expect)
        assert info["threshold_info"]["method"] == why["method"]
        assert np.all(picks.fom >= info["threshold"])
        assert len(picks) == int((c.score >= info["threshold"]).sum())
        thresholds.append(info["threshold"])
    assert thresholds[0] != thresholds[1]  # two micrographs, two cut-offs
    lo, hi = float(sigmoid(np.log(0.3 / 0.7) - 0.3)), float(sigmoid(np.log(0.3 / 0.7) + 0.3))
    assert all(lo - 1e-9 <= t <= hi + 1e-9 for t in thresholds)


def test_auto_falls_back_to_the_calibrated_threshold_on_few_candidates():
    c = Candidates(np.array([[10.0, 10.0], [50.0, 50.0]]), np.array([0.9, 0.2]), (100, 100), 1.0)
    info = {}
    picks = finalize(c, PickPolicy(min_distance_A=0.0, threshold="auto", calibrated=0.3), info=info)
    assert info["threshold"] == 0.3 and info["threshold_info"]["method"] == "calibrated"
    assert picks.fom.tolist() == [0.9]


def test_fixed_threshold_is_recorded_too_and_bad_values_fail():
    info = {}
    c = Candidates(np.array([[10.0, 10.0]]), np.array([0.9]), (100, 100), 1.0)
    finalize(c, PickPolicy(min_distance_A=0.0, threshold=0.5), info=info)
    assert info["threshold"] == 0.5 and info["threshold_info"]["method"] == "fixed"
    with pytest.raises(ValueError):
        PickPolicy(min_distance_A=0.0, threshold="auto")  # no calibrated threshold
    with pytest.raises(ValueError):
        PickPolicy(min_distance_A=0.0, threshold="high")


def test_for_model_auto_keeps_the_heads_calibrated_threshold():
    meta = {"thresholds": {"generic": 0.27}, "floor": 0.04}
    p = PickPolicy.for_model(meta, 150.0, "generic", "auto")
    from hydrapicker.checkpoint import threshold_for
    assert p.is_auto and p.calibrated == pytest.approx(threshold_for(meta, "generic")) and p.floor == 0.04
    with pytest.raises(ValueError):
        PickPolicy.for_model(meta, 150.0, "generic", "automatic")


# ---- the RELION job: threshold = auto -----------------------------------------------------------------
class BimodalPicker:
    """FakePicker with 196 candidates per micrograph (a 14 x 14 grid), FOMs from two logit Gaussians whose
    particle mode moves with the micrograph, so each micrograph gets its own cut-off."""

    @staticmethod
    def make():
        from relion_helpers import FakePicker

        class _P(FakePicker):
            @staticmethod
            def expected(name, n=12):
                from hydrapicker.types import Picks

                k = int(name[-5])  # mic001 -> 1
                rng = np.random.default_rng(k)
                g = np.arange(14) * 17.0 + 10
                x, y = np.meshgrid(g, g)
                z = np.concatenate([rng.normal(-2.0, 0.5, 140), rng.normal(-0.6 + 0.6 * k, 0.4, 56)])
                return Picks(x.ravel(), y.ravel(), sigmoid(z))

        return _P()


def test_relion_job_threshold_auto_picks_per_micrograph_and_logs_each_threshold(tmp_path, monkeypatch, capsys):
    from relion_helpers import MICS_STAR, make_project
    from relion_hydra import paths
    from relion_hydra.coordfiles import read_coord_star
    from relion_hydra.pick_job import PARAMS, main
    from relion_hydra.args import parse

    assert parse(["--o", "J/", "--in_mics", "a.star", "--particle_diameter", "40", "--threshold", "Auto"],
                 PARAMS, "p")["threshold"] == "auto"
    assert parse(["--o", "J/", "--in_mics", "a.star", "--particle_diameter", "40", "--threshold", "0.4"],
                 PARAMS, "p")["threshold"] == 0.4
    from relion_hydra.args import ArgumentError
    with pytest.raises(ArgumentError, match="threshold"):
        parse(["--o", "J/", "--in_mics", "a.star", "--particle_diameter", "40", "--threshold", "high"], PARAMS, "p")

    make_project(tmp_path, n_mics=3, shape=(256, 256))
    monkeypatch.chdir(tmp_path)
    job = "External/job001/"
    fake = BimodalPicker.make()
    argv = ["--o", job, "--in_mics", MICS_STAR, "--particle_diameter", "10", "--threshold", "auto", "--j", "1"]
    assert main(argv, picker_factory=fake.factory) == 0
    out = capsys.readouterr().out
    names = [f"MotionCorr/job002/Movies/mic{i:03d}.mrc" for i in (1, 2, 3)]
    chosen = []
    for n in names:
        cand = fake.expected(n)
        expect, _ = auto_threshold(cand.fom[cand.fom >= 0.05], 0.5, floor=0.05)
        assert f"{n}: " in out and f"(auto threshold {expect:.3f})" in out
        got = read_coord_star(paths.coord_path(job, n, "autopick"))
        assert len(got) == int((cand.fom >= expect).sum())
        chosen.append(expect)
    assert len(set(np.round(chosen, 6))) >= 2 and "threshold auto (per micrograph" in out
    import starfile
    from relion_hydra.nodes import THRESHOLD_LABEL
    summary = starfile.read(job + "summary.star")
    np.testing.assert_allclose(summary[THRESHOLD_LABEL], chosen, atol=1e-6)  # each micrograph's, recorded
    # a Continue with nothing new keeps them (no model loaded)
    assert main(argv, picker_factory=lambda *a: pytest.fail("model loaded")) == 0
    np.testing.assert_allclose(starfile.read(job + "summary.star")[THRESHOLD_LABEL], chosen, atol=1e-6)
    # a Continue with a fixed threshold is other settings: everything picked again
    fake2 = BimodalPicker.make()
    assert main(argv[:-4] + ["--threshold", "0.5", "--j", "1"], picker_factory=fake2.factory) == 0
    assert sorted(fake2.picked) == names


def test_hydra_pick_threshold_auto_records_each_micrographs_threshold_in_the_summary(tmp_path, capsys):
    from conftest import blob_micrograph, write_mrc
    from hydrapicker.cli import main as hydra
    from hydrapicker.coords import read_coords

    centres = [(x, y) for x in range(30, 250, 40) for y in range(30, 250, 40)]
    for i, amp in enumerate((-3.0, -1.2)):  # a clear and a faint micrograph
        write_mrc(tmp_path / "mics" / f"m{i}.mrc", blob_micrograph((256, 256), centres, 5.0, amp, seed=i), apix=2.0)
    out = tmp_path / "out"
    assert hydra(["pick", str(tmp_path / "mics" / "*.mrc"), "--apix", "2", "--diameter", "40", "--out", str(out),
                  "--threshold", "auto", "--threads", "1"]) == 0
    assert "per-micrograph threshold (auto" in capsys.readouterr().out
    rows = [ln.split("\t") for ln in (out / "summary_hydra.tsv").read_text().splitlines()]
    assert rows[0] == ["micrograph", "coordinates", "picks", "threshold", "excluded_area", "evidence"] and len(rows) == 3
    from hydrapicker.checkpoint import default_model_path, read_checkpoint, threshold_for

    calibrated = threshold_for(read_checkpoint(default_model_path())["meta"], "generic")
    assert calibrated != 0.5  # the shipped model's own, not the fallback
    z = np.log(calibrated / (1 - calibrated))
    for name, coords, n, thr, *_ in rows[1:]:
        thr = float(thr)
        assert float(sigmoid(z - 0.3)) - 1e-6 <= thr <= float(sigmoid(z + 0.3)) + 1e-6
        picks = next(iter(read_coords(out / coords).values()))
        assert len(picks) == int(n) and (picks.fom >= thr - 1e-6).all()
    with pytest.raises(SystemExit):
        hydra(["pick", "x.mrc", "--diameter", "40", "--threshold", "high"])


def test_threshold_auto_is_auto_threshold_of_what_all_writes(tmp_path):
    """The wired path (--threshold auto) and the benchmark's (auto_threshold of every pick above the floor,
    what --all writes) choose the same cut-off for each micrograph."""
    from conftest import blob_micrograph, write_mrc
    from hydrapicker.checkpoint import default_model_path, read_checkpoint, threshold_for
    from hydrapicker.cli import main as hydra
    from hydrapicker.coords import read_coords
    from hydrapicker.postprocess import model_floor

    rng = np.random.default_rng(3)
    for i in range(3):
        centres = rng.uniform(20, 236, (60, 2))
        write_mrc(tmp_path / "mics" / f"m{i}.mrc", blob_micrograph((256, 256), centres, 4.0, -2.0 + 0.5 * i,
                                                                   seed=i), apix=2.0)
    common = ["pick", str(tmp_path / "mics" / "*.mrc"), "--apix", "2", "--diameter", "30", "--threads", "1",
              "--quiet"]
    assert hydra(common + ["--out", str(tmp_path / "all"), "--all"]) == 0
    assert hydra(common + ["--out", str(tmp_path / "auto"), "--threshold", "auto"]) == 0
    meta = read_checkpoint(default_model_path())["meta"]
    calibrated, floor = threshold_for(meta, "generic"), model_floor(meta)
    rows = [ln.split("\t") for ln in (tmp_path / "auto" / "summary_hydra.tsv").read_text().splitlines()[1:]]
    assert len(rows) == 3
    methods = []
    for name, coords, n, thr, *_ in rows:
        every = next(iter(read_coords(tmp_path / "all" / coords).values()))
        expect, why = auto_threshold(every.fom, calibrated, floor=floor)
        methods.append(why["method"])
        assert float(thr) == pytest.approx(expect, abs=1e-4)
        assert int(n) == int((every.fom >= float(thr)).sum())
    assert "mixture" in methods  # the fit was trusted (not only the fallback)
