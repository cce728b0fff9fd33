"""hydrapicker.metrics: the thesis' AP rule, AUROC on grid cells, F1, the centre variant, the CLI."""
import json
import math
import warnings

import numpy as np
import pytest

from hydrapicker.coords import write_relion_star, write_topaz_txt
from hydrapicker.metrics import MetricsWarning, evaluate, match_greedy, pr_curve_png, summary
from hydrapicker.types import Picks

D = 20.0
TRUTH3 = np.array([[100.0, 100.0], [200.0, 200.0], [300.0, 300.0]])


def _picks(rows):
    """Picks from (x, y, fom) rows."""
    a = np.asarray(rows, dtype=float).reshape(-1, 3)
    return Picks(a[:, 0], a[:, 1], a[:, 2])


def test_hand_computed_ap_without_interpolation():
    # 3 true particles, 4 picks, D = 20:
    #   0.9 at (500, 500)  FP   kept 1: TP 0 -> P 0/1, R 0/3
    #   0.8 at (100, 100)  TP   kept 2: TP 1 -> P 1/2, R 1/3
    #   0.7 at (202, 199)  TP   kept 3: TP 2 -> P 2/3, R 2/3   (offset 2, 1 px: IoU = 18*19/(800-342) = 0.747)
    #   0.6 at (600, 600)  FP   kept 4: TP 2 -> P 2/4, R 2/3
    # AP = sum (R_k - R_{k-1}) P_k = 0*0 + 1/3*1/2 + 1/3*2/3 + 0*1/2 = 1/6 + 2/9 = 7/18 = 0.3889
    # (the interpolated area would be 1/3*2/3 + 1/3*2/3 = 4/9: the test tells them apart).
    # F1 per threshold: 0, 2(1/2)(1/3)/(5/6) = 0.4, 2/3, 2(1/2)(2/3)/(7/6) = 4/7 -> max 2/3 at 0.7.
    # Precision never reaches 0.8 -> recall_at_p80 = 0.
    picks = _picks([[500, 500, 0.9], [100, 100, 0.8], [202, 199, 0.7], [600, 600, 0.6]])
    r = evaluate({"m": picks}, {"m": TRUTH3}, D)
    assert r["AP"] == pytest.approx(7 / 18)
    assert r["F1"] == pytest.approx(2 / 3)
    assert r["threshold"] == pytest.approx(0.7)
    assert r["recall_at_p80"] == 0.0
    assert (r["n_picks"], r["n_truth"], r["n_tp"]) == (4, 3, 2)
    np.testing.assert_allclose(r["pr"]["precision"], [0, 1 / 2, 2 / 3, 1 / 2])
    np.testing.assert_allclose(r["pr"]["recall"], [0, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(r["pr"]["thresholds"], [0.9, 0.8, 0.7, 0.6])


def test_recall_at_precision_08_and_its_threshold():
    # 5 truths; ranked picks TP TP TP TP FP TP (scores 0.9 .. 0.4):
    # P: 1, 1, 1, 1, 4/5, 5/6; R: .2 .4 .6 .8 .8 1.0 -> precision >= 0.8 up to 0.8 (score 0.6) and 5/6
    # at 0.4, so recall_at_p80 = 1.0 at threshold 0.4.  AP = .2*4*1 + 0 + .2*5/6 = 0.8 + 1/6.
    truth = np.array([[100.0 * k, 50.0] for k in range(1, 6)])
    rows = [[100, 50, .9], [200, 50, .8], [300, 50, .7], [400, 50, .6], [900, 900, .5], [500, 50, .4]]
    r = evaluate({"m": _picks(rows)}, {"m": truth}, D)
    assert r["recall_at_p80"] == pytest.approx(1.0)
    assert r["threshold_p80"] == pytest.approx(0.4)
    assert r["AP"] == pytest.approx(0.8 + 1 / 6)
    assert r["F1"] == pytest.approx(2 * (5 / 6) / (5 / 6 + 1))


def test_perfect_picks_give_ap_one_and_missing_micrograph_counts_as_missed():
    rng = np.random.default_rng(0)
    truth = {f"m{i}": rng.uniform(0, 1000, (30, 2)) for i in range(3)}
    picks = {k: Picks(t[:, 0], t[:, 1], rng.uniform(0.5, 1, len(t))) for k, t in truth.items()}
    r = evaluate(picks, truth, D)
    for key in ("AP", "AP_centre", "F1", "recall_at_p80", "precision", "recall", "AUROC"):
        assert r[key] == pytest.approx(1.0), key
    # Drop one micrograph's picks: its particles are all missed, so recall and AP fall to 2/3.
    del picks["m2"]
    r = evaluate(picks, truth, D)
    assert r["missing_micrographs"] == ["m2"]
    assert r["n_truth"] == 90 and r["recall"] == pytest.approx(2 / 3)
    assert r["AP"] == pytest.approx(2 / 3)


def test_score_order_matters_reversed_and_shuffled():
    # 20 truths all picked exactly + 20 false positives far away.
    n = 20
    truth = np.stack([np.arange(n) * 50.0 + 25, np.full(n, 25.0)], 1)
    fps = np.stack([np.arange(n) * 50.0 + 25, np.full(n, 500.0)], 1)
    xy = np.r_[truth, fps]
    good = np.r_[np.linspace(1, 0.6, n), np.linspace(0.5, 0.1, n)]  # every TP above every FP
    bad = 1.0 - good  # every FP above every TP
    ap_good = evaluate({"m": Picks(xy[:, 0], xy[:, 1], good)}, {"m": truth}, D)["AP"]
    ap_bad = evaluate({"m": Picks(xy[:, 0], xy[:, 1], bad)}, {"m": truth}, D)["AP"]
    assert ap_good == pytest.approx(1.0)
    # FPs first: the k-th TP comes after all n FPs -> AP = (1/n) sum_k k / (n + k)
    assert ap_bad == pytest.approx(sum(k / (n + k) for k in range(1, n + 1)) / n)
    rng = np.random.default_rng(1)
    shuffled = [evaluate({"m": Picks(xy[:, 0], xy[:, 1], rng.permutation(good))}, {"m": truth}, D)
                for _ in range(5)]
    for r in shuffled:
        assert ap_bad < r["AP"] < ap_good
        assert r["AUROC_picks"] < 1.0
    # random scores give an AP near the precision of all picks (0.5)
    assert np.mean([r["AP"] for r in shuffled]) == pytest.approx(0.5, abs=0.15)


@pytest.mark.parametrize("dx, dy, tp", [
    (9.9, 0.0, True),     # IoU = (40-9.9)/(40+9.9) = 0.603
    (10.0, 0.0, False),   # IoU = 30/50 = 0.6 exactly: the rule is strictly greater
    (0.0, -10.0, False),
    (5.3, 5.3, True),     # IoU = 34.7^2 / (3200 - 34.7^2) = 0.602
    (5.4, 5.4, False),    # 34.6^2 / (3200 - 34.6^2) = 0.598
])
def test_iou_threshold_edges(dx, dy, tp):
    box = 40.0
    truth = {"m": np.array([[200.0, 200.0]])}
    r = evaluate({"m": _picks([[200 + dx, 200 + dy, 1.0]])}, truth, box)
    assert r["n_tp"] == int(tp)
    # the centre variant accepts all of these (distance <= D/2 = 20)
    assert r["AP_centre"] == pytest.approx(1.0)


def test_centre_variant_edge_and_iou_parameter():
    truth = {"m": np.array([[100.0, 100.0]])}
    at = evaluate({"m": _picks([[100 + 12, 100 + 16, 1.0]])}, truth, 40.0)  # distance 20 = D/2
    beyond = evaluate({"m": _picks([[100 + 12, 100 + 16.05, 1.0]])}, truth, 40.0)
    assert at["AP_centre"] == 1.0 and beyond["AP_centre"] == 0.0
    assert at["AP"] == 0.0  # (28*24)/(3200-672) = 0.27
    # a looser IoU accepts the 10 px offset that 0.6 rejects: 30/50 = 0.6 > 0.5
    p = {"m": _picks([[110, 100, 1.0]])}
    assert evaluate(p, truth, 40.0, iou=0.5)["n_tp"] == 1
    assert evaluate(p, truth, 40.0, iou=0.6)["n_tp"] == 0


def test_greedy_highest_score_first_and_best_overlap():
    truth = np.array([[100.0, 100.0], [112.0, 100.0]])
    # the 0.9 pick sits between both truths but nearer the second (IoU 33/47 = 0.70 vs 35/45 = 0.78, D = 40): it
    # takes the second; the 0.8 pick on the first truth is then a TP too.
    picks = _picks([[107, 100, 0.9], [100, 100, 0.8]])
    tp, matched = match_greedy(picks, truth, 40.0)
    assert tp.tolist() == [1, 0] and matched.tolist() == [1, 0]
    # two picks on one truth: the higher score is the TP, the other a duplicate FP
    dup = _picks([[100, 100, 0.2], [101, 100, 0.7]])
    tp, _ = match_greedy(dup, truth[:1], 40.0)
    assert tp.tolist() == [-1, 0]


def test_extra_micrographs_warned_and_optionally_counted():
    truth = {"a": TRUTH3}
    picks = {"a": _picks([[100, 100, 1], [200, 200, 1], [300, 300, 1]]),
             "b": _picks([[10, 10, 0.5], [50, 50, 0.5]])}
    with pytest.warns(MetricsWarning, match="no ground truth"):
        r = evaluate(picks, truth, D)
    assert r["extra_micrographs"] == ["b"] and r["n_picks"] == 3 and r["AP"] == pytest.approx(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r2 = evaluate(picks, truth, D, include_extra=True)
    assert r2["n_picks"] == 5 and r2["precision"] == pytest.approx(3 / 5)
    assert r2["AP"] == pytest.approx(1.0)  # the extra picks score below every TP


def test_auroc_on_grid_cells_hand_case():
    # A 40 x 40 micrograph, D = 20 -> 4 cells. One particle at (5, 5) (cell 0), picked with 0.9.
    # A false pick at (30, 30) (cell 3) with 0.95. Negatives: cells 1, 2 (no pick: -inf), cell 3 (0.95).
    # Positive 0.9 beats -inf twice and loses to 0.95: AUROC = 2/3.
    truth = {"m": np.array([[5.0, 5.0]])}
    picks = {"m": _picks([[5, 5, 0.9], [30, 30, 0.95]])}
    r = evaluate(picks, truth, D, shapes={"m": (40, 40)})
    assert r["AUROC"] == pytest.approx(2 / 3)
    assert r["AUROC_picks"] == 0.0  # the only FP outranks the only TP
    # a missed particle scores -inf: it ties with the empty cells (1/2 each) -> (0.5 + 0.5 + 0) / 3
    r = evaluate({"m": _picks([[30, 30, 0.95]])}, truth, D, shapes={"m": (40, 40)})
    assert r["AUROC"] == pytest.approx(1 / 3)


def test_no_picks_and_no_truth():
    r = evaluate({}, {"m": TRUTH3}, D)
    assert r["AP"] == 0.0 and r["n_truth"] == 3 and r["missing_micrographs"] == ["m"]
    r = evaluate({"m": _picks([[1, 1, 1]])}, {"m": np.zeros((0, 2))}, D)
    assert math.isnan(r["AP"]) and summary(r)["AP"] is None
    json.dumps(summary(r))  # NaN became null
    with pytest.raises(ValueError):
        evaluate({}, {"m": TRUTH3}, 0)


def test_fast_on_thousands_of_picks(tmp_path):
    rng = np.random.default_rng(2)
    truth, picks = {}, {}
    for m in range(20):
        t = rng.uniform(0, 4000, (300, 2))
        p = np.r_[t + rng.normal(0, 2, t.shape), rng.uniform(0, 4000, (1500, 2))]
        truth[f"m{m}"] = t
        picks[f"m{m}"] = Picks(p[:, 0], p[:, 1], np.r_[rng.uniform(0.4, 1, 300), rng.uniform(0, 0.6, 1500)])
    r = evaluate(picks, truth, 40.0)
    assert r["n_picks"] == 36000 and 0.5 < r["AP"] < r["AP_centre"] <= 1.0
    pr_curve_png(r, tmp_path / "pr.png")
    assert (tmp_path / "pr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_cli_json_and_plot(tmp_path, capsys):
    from hydrapicker.cli import main

    truth_dir = tmp_path / "truth"
    for name in ("May08_03.05.02", "mic_2"):
        write_relion_star(truth_dir / f"{name}.star", Picks(TRUTH3[:, 0], TRUTH3[:, 1]))
    # Topaz names without extension; the 4 picks of the hand case on the first micrograph only
    picks = {"May08_03.05.02": _picks([[500, 500, 0.9], [100, 100, 0.8], [202, 199, 0.7], [600, 600, 0.6]])}
    write_topaz_txt(tmp_path / "picks.txt", picks)
    png = tmp_path / "pr.png"
    rc = main(["evaluate", "--picks", str(tmp_path / "picks.txt"), "--truth", str(truth_dir),
               "--box", "20", "--json", "--plot", str(png)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("AP", "AUROC", "F1", "threshold", "recall_at_p80", "AP_centre", "n_picks", "n_truth"):
        assert key in out
    # 6 truths (mic_2 is all missed): P as in the hand case, R halved:
    # AP = 1/6*1/2 + 1/6*2/3 = 7/36
    assert out["AP"] == pytest.approx(7 / 36)
    assert out["n_truth"] == 6 and out["n_picks"] == 4 and out["missing_micrographs"] == 1
    assert png.exists()
    # --threshold drops the lower picks; the table is printed without --json
    rc = main(["evaluate", "--picks", str(tmp_path / "picks.txt"), "--truth", str(truth_dir),
               "--box", "20", "--threshold", "0.75"])
    text = capsys.readouterr().out
    assert rc == 0 and "AP (IoU > 0.6)" in text and "2 (FOM >= 0.75)" in text


def test_evaluate_cli_bad_input_is_a_clear_error(tmp_path, capsys):
    from hydrapicker.cli import main

    rc = main(["evaluate", "--picks", str(tmp_path / "nope.star"), "--truth", str(tmp_path), "--box", "20"])
    err = capsys.readouterr().err
    assert rc == 1 and "holds no coordinate files" in err and str(tmp_path) in err
    write_relion_star(tmp_path / "mic.star", Picks(TRUTH3[:, 0], TRUTH3[:, 1]))
    rc = main(["evaluate", "--picks", str(tmp_path / "nope.star"), "--truth", str(tmp_path), "--box", "20"])
    err = capsys.readouterr().err
    assert rc == 1 and "nope.star' does not exist" in err


def test_plots_leave_the_callers_matplotlib_backend_alone(tmp_path):
    """Library plots (PR curve, the RELION job's logfile) draw on Figures: a notebook's backend stays."""
    import subprocess
    import sys

    code = f"""
import matplotlib, numpy as np
matplotlib.use("svg")
from hydrapicker.metrics import evaluate, pr_curve_png
from hydrapicker.types import Picks
from relion_hydra.logfile import write_logfile
res = evaluate({{"m": Picks([10.0, 50.0], [10.0, 50.0], [0.9, 0.4])}}, {{"m": np.array([[10.0, 10.0]])}}, 8.0)
pr_curve_png(res, {str(tmp_path / "pr.png")!r})
write_logfile({str(tmp_path / "log.pdf")!r}, ["m"], [np.array([0.9, 0.4])], 0.5)
print(matplotlib.get_backend())
"""
    env = {k: v for k, v in __import__("os").environ.items() if k != "MPLBACKEND"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "svg"
    assert (tmp_path / "pr.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "log.pdf").read_bytes()[:4] == b"%PDF"
