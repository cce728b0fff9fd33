"""Per-micrograph thresholds (hydrapicker.thresholds.auto_threshold) on synthetic score distributions."""
import logging

import numpy as np
import pytest

from hydrapicker.thresholds import auto_threshold, fit_two_gaussians, logit, sigmoid

CAL = 0.3


def bimodal(n_bg, n_p, mu_bg=-2.5, mu_p=0.5, s_bg=0.5, s_p=0.5, seed=0, floor=0.05):
    """Scores of background and particle candidates, Gaussian in logit space, above a floor."""
    rng = np.random.default_rng(seed)
    z = np.r_[rng.normal(mu_bg, s_bg, n_bg), rng.normal(mu_p, s_p, n_p)]
    f = sigmoid(z)
    return f[f >= floor]


def test_fit_recovers_two_components():
    z = logit(bimodal(600, 300, seed=1, floor=0.0))
    fit = fit_two_gaussians(z, split=logit(CAL))
    np.testing.assert_allclose(fit["mu"], [-2.5, 0.5], atol=0.15)
    np.testing.assert_allclose(fit["sigma"], [0.5, 0.5], atol=0.1)
    np.testing.assert_allclose(fit["w"], [2 / 3, 1 / 3], atol=0.05)
    assert fit["ll"] > fit["ll1"]


def test_clear_bimodal_gives_a_threshold_between_the_modes():
    # particles lower than usual (thick ice): modes at 0.10 and 0.27, the calibrated 0.3 is above both
    f = bimodal(500, 200, mu_bg=-2.2, mu_p=-1.0, s_bg=0.25, s_p=0.25, seed=2, floor=0.0)
    t, info = auto_threshold(f, CAL, max_shift=2.0)
    assert info["method"] == "mixture", info
    assert sigmoid(-2.2) < t < sigmoid(-1.0)
    assert t < CAL - 0.05  # it moved down, towards this micrograph's particles
    assert not info["bounded"]
    lo, hi = info["means"]
    assert lo < t < hi


def test_posterior_rule_keeps_nearly_all_particles_and_few_background():
    f_bg = sigmoid(np.random.default_rng(3).normal(-3.0, 0.4, 800))
    f_p = sigmoid(np.random.default_rng(4).normal(0.0, 0.4, 300))
    t, info = auto_threshold(np.r_[f_bg, f_p], 0.5, max_shift=3.0, rule="posterior")
    assert info["method"] == "mixture" and info["rule"] == "posterior"
    assert (f_p >= t).mean() > 0.97 and (f_bg >= t).mean() < 0.03


def test_background_reaching_higher_moves_the_threshold_up():
    # background up to ~0.3, particles at ~0.8: the cut goes above the calibrated 0.3 (bound permitting)
    f = bimodal(600, 150, mu_bg=-1.5, mu_p=1.4, s_bg=0.35, s_p=0.35, seed=5, floor=0.0)
    t, info = auto_threshold(f, CAL, max_shift=2.0)
    assert info["method"] == "mixture" and t > CAL + 0.05


@pytest.mark.parametrize("n", [0, 1, 5, 39])
def test_too_few_candidates_fall_back_to_the_calibrated_threshold(n):
    f = bimodal(n, n, seed=6)[:n]
    t, info = auto_threshold(f, CAL)
    assert t == CAL and info["method"] == "calibrated" and "candidates" in info["reason"]


def test_unimodal_falls_back_to_the_calibrated_threshold():
    f = sigmoid(np.random.default_rng(7).normal(-1.5, 0.8, 2000))
    t, info = auto_threshold(f, CAL)
    assert t == CAL and info["method"] == "calibrated", info


def test_identical_scores_fall_back():
    t, info = auto_threshold(np.full(100, 0.4), CAL)
    assert t == CAL and info["method"] == "calibrated"


def test_a_tiny_second_mode_is_not_trusted():
    f = np.r_[sigmoid(np.random.default_rng(8).normal(-2.5, 0.4, 1000)), [0.9, 0.92, 0.95]]
    t, info = auto_threshold(f, CAL)
    assert t == CAL and info["method"] == "calibrated", info


@pytest.mark.parametrize("rule, shifts", [("particle_mode", (0.1, 0.3)), ("posterior", (0.1, 0.3, 1.0))])
@pytest.mark.parametrize("mu_p, side", [(-0.85, "low"), (2.0, "high")])
def test_bounds_are_respected(mu_p, side, rule, shifts):
    # the mixture cut lies far from the calibrated threshold; it is clipped to within max_shift in logit
    mu_bg = -3.5 if side == "low" else 0.5
    f = bimodal(600, 300, mu_bg=mu_bg, mu_p=mu_p, s_bg=0.2, s_p=0.2, seed=9, floor=0.0)
    for shift in shifts:
        t, info = auto_threshold(f, CAL, max_shift=shift, rule=rule)
        lo, hi = sigmoid(logit(CAL) - shift), sigmoid(logit(CAL) + shift)
        assert lo - 1e-12 <= t <= hi + 1e-12
        assert info["method"] == "mixture" and info["bounded"], info
        assert t == pytest.approx(lo) if side == "low" else t == pytest.approx(hi)
    t_wide, info = auto_threshold(f, CAL, max_shift=5.0, rule=rule)
    assert info["method"] == "mixture" and not info["bounded"]
    assert (t_wide < CAL) if side == "low" else (t_wide > CAL)


def test_asymmetric_bound_and_floor():
    f = bimodal(600, 300, mu_bg=-3.5, mu_p=-1.7, s_bg=0.2, s_p=0.2, seed=10, floor=0.0)
    t, info = auto_threshold(f, CAL, max_shift=5.0, floor=0.2)
    assert t >= 0.2 and info["bounds"][0] == 0.2
    f = bimodal(600, 300, mu_bg=0.5, mu_p=2.0, s_bg=0.2, s_p=0.2, seed=11, floor=0.0)
    t, _ = auto_threshold(f, CAL, max_shift=5.0, max_shift_up=0.0)
    assert t == pytest.approx(CAL)


def test_upper_mode_below_the_bound_falls_back():
    # two modes, both well below the calibrated threshold's range: not the particles it was calibrated for
    f = bimodal(600, 300, mu_bg=-4.5, mu_p=-3.0, s_bg=0.2, s_p=0.2, seed=12, floor=0.0)
    t, info = auto_threshold(f, 0.5, max_shift=0.3)
    assert t == 0.5 and info["method"] == "calibrated" and "upper mode" in info["reason"]


def test_particle_mode_rule_follows_the_particle_mean():
    # a micrograph whose particles score mode_offset above the calibrated cut keeps it; each logit the
    # particle mode sits lower (thick ice) or higher moves the cut by `slope` logits, the background unchanged
    zc = float(logit(CAL))
    got = {}
    for dz in (-0.6, 0.0, 0.6):
        mu_p = zc + 1.0 + dz
        f = bimodal(700, 300, mu_bg=-3.5, mu_p=mu_p, s_bg=0.3, s_p=0.3, seed=15, floor=0.0)
        t, info = auto_threshold(f, CAL, slope=0.32, mode_offset=1.0, max_shift=1.0)
        assert info["method"] == "mixture" and info["rule"] == "particle_mode" and not info["bounded"]
        fitted = info["logit_means"][1]
        assert float(logit(t)) == pytest.approx(zc + 0.32 * (fitted - zc - 1.0), abs=1e-9)
        got[dz] = float(logit(t))
    assert got[0.0] == pytest.approx(zc, abs=0.05)
    assert got[-0.6] == pytest.approx(zc - 0.32 * 0.6, abs=0.05) and got[0.6] == pytest.approx(zc + 0.32 * 0.6, abs=0.05)
    # slope 0: the calibrated threshold whatever the mode
    t, info = auto_threshold(bimodal(700, 300, mu_bg=-3.5, mu_p=zc + 0.4, seed=16, floor=0.0), CAL, slope=0.0)
    assert info["method"] == "mixture" and t == pytest.approx(CAL)


def test_expected_f1_rule_lies_between_the_modes_too():
    f = bimodal(500, 200, mu_bg=-2.5, mu_p=0.5, s_bg=0.4, s_p=0.4, seed=13, floor=0.0)
    t, info = auto_threshold(f, CAL, max_shift=3.0, rule="expected_f1")
    assert info["method"] == "mixture" and sigmoid(-2.5) < t < sigmoid(0.5)


def test_deterministic_no_side_effects_and_debug_logging(caplog):
    f = bimodal(500, 200, seed=14)
    before = f.copy()
    with caplog.at_level(logging.DEBUG, logger="hydrapicker.thresholds"):
        a = auto_threshold(f, CAL)
        b = auto_threshold(f, CAL)
    assert a[0] == b[0] and np.array_equal(f, before)
    assert any("auto threshold" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kw", [dict(calibrated=0.0), dict(calibrated=1.0), dict(max_shift=-1),
                                dict(rule="nope"), dict(posterior=1.0), dict(slope=-0.1),
                                dict(mode_offset=float("nan"))])
def test_bad_arguments_raise(kw):
    args = dict(calibrated=CAL)
    args.update(kw)
    cal = args.pop("calibrated")
    with pytest.raises(ValueError):
        auto_threshold(bimodal(100, 100), cal, **args)
