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
