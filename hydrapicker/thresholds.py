"""Per-micrograph thresholds (``--threshold auto``): one micrograph's cut-off from its own FOM distribution.

The model's calibrated threshold is one number for every micrograph. Within one data collection, thick-ice,
low-SNR or far-from-focus micrographs give their particles lower scores, and junk-laden ones give more
background candidates mid scores, so the best cut-off moves from micrograph to micrograph.
:func:`auto_threshold` estimates it from that micrograph's candidates alone.

The rule (the numbers are the keyword defaults of :func:`auto_threshold`):

1. Take every candidate score of the micrograph (every pick above the model's permissive floor, after
   non-maximum suppression) to logit space, ``z = log(f / (1 - f))`` (scores clipped to [1e-4, 1 - 1e-4]).
2. Fit two Gaussians to ``z`` by EM (deterministic start: the candidates below / above the calibrated
   threshold): background (the lower mean) and particles (the higher mean).
3. Trust the fit only if all of these hold, else return the calibrated threshold (``info["method"] ==
   "calibrated"``, with the ``reason``):
   * at least ``min_candidates`` (40) candidates;
   * each component holds at least ``min_weight`` (5 %) and ``min_component`` (8) of them;
   * the components are apart: Ashman's D = sqrt(2) |mu_p - mu_b| / sqrt(s_p^2 + s_b^2) >= ``min_ashman_d``
     (1.5);
   * two components explain the scores better than one by BIC (``2 dLL - 3 ln n > 0``);
   * the particle mean is not below the lower bound of step 5 (else the upper mode is not particles).
4. The threshold follows this micrograph's particle mode (``rule="particle_mode"``, the default): in logit
   space ``z_t = z_c + slope * (mu_p - (z_c + mode_offset))`` with ``z_c`` the calibrated threshold's logit,
   ``mu_p`` the fitted particle mean, ``slope`` 0.32 and ``mode_offset`` 1.0. A micrograph whose particles
   score as the calibration set's did (``mu_p`` one logit above the calibrated cut) keeps the calibrated
   threshold; one whose particle scores sit lower (thick ice, low SNR, far from focus) gets a lower one, one
   whose particles score higher (clean, high contrast) a higher one, and its background's tail with it.
   ``slope`` and ``mode_offset`` are the least-squares line of each tuning micrograph's best-F1 logit
   threshold on its fitted ``mu_p`` (``benchmarks/threshold_auto.py --sets tune``), fitted for the shipped
   junk-trained model's score scale: a model with another score scale needs its own.
   Other rules: ``rule="posterior"``: the lowest score between the two means from which a candidate's
   posterior probability of the particle component is at least ``posterior`` (0.95); it treats the
   background's floor pile as the only background, so on real micrographs it cut too low (apoferritin
   -0.017 F1). ``rule="expected_f1"``: the score maximising the expected F1 under the mixture posterior,
   ``2 sum_{z_i >= t} r_i / (n_{>=t} + sum_i r_i)``; it cut too low on the tuning sets.
5. Bound it in logit space to within ``max_shift`` (0.3; ``max_shift_up`` above, default the same) of the
   calibrated threshold (0.264 -> [0.21, 0.33], 0.5 -> [0.43, 0.57]) and never below ``floor``;
   ``info["bounded"]`` says whether the bound applied.

The defaults were chosen on simulated tuning sets only (``benchmarks/threshold_auto.py --sets tune``:
other seeds than the benchmark's mixed sets; never on the real validation sets). Pure numpy,
deterministic, no global state; diagnostics go to ``logging`` (debug level) and to ``info``.
"""
from __future__ import annotations

import logging
import math
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

_EPS = 1e-4
_LN2PI = math.log(2.0 * math.pi)
_RULES = ("particle_mode", "posterior", "expected_f1")


def logit(p):
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p / (1.0 - p))


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def _gauss_logpdf(z, mu, sigma):
    return -0.5 * ((z - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * _LN2PI


def fit_two_gaussians(z: np.ndarray, split: float, min_sigma: float = 0.1, iters: int = 300,
                      tol: float = 1e-7) -> dict:
    """EM fit of a 2-component 1-D Gaussian mixture to ``z``, started from the points below / above
    ``split`` (quartiles when one side is nearly empty). Returns weights ``w``, means ``mu``, sigmas
    ``sigma`` (component 0 the lower mean), the log-likelihood ``ll``, the 1-Gaussian ``ll1`` and the
    responsibilities ``resp`` (n, 2)."""
    z = np.asarray(z, dtype=np.float64)
    n = len(z)
    lo, hi = z[z < split], z[z >= split]
    if min(len(lo), len(hi)) < 2:
        q1, q3 = np.quantile(z, [0.25, 0.75])
        lo, hi = z[z <= q1], z[z >= q3]
    w = np.array([len(lo), len(hi)], dtype=np.float64)
    w /= w.sum()
    mu = np.array([lo.mean(), hi.mean()])
    sd = max(float(z.std()), min_sigma)
    sigma = np.array([max(lo.std(), min_sigma, 0.25 * sd), max(hi.std(), min_sigma, 0.25 * sd)])
    ll_old = -np.inf
    for _ in range(iters):
        lp = np.stack([np.log(max(w[k], 1e-12)) + _gauss_logpdf(z, mu[k], sigma[k]) for k in (0, 1)], axis=1)
        m = lp.max(axis=1, keepdims=True)
        tot = m[:, 0] + np.log(np.exp(lp - m).sum(axis=1))
        ll = float(tot.sum())
        resp = np.exp(lp - tot[:, None])
        nk = resp.sum(axis=0) + 1e-12
        w = nk / n
        mu = (resp * z[:, None]).sum(axis=0) / nk
        sigma = np.sqrt(np.maximum((resp * (z[:, None] - mu) ** 2).sum(axis=0) / nk, min_sigma ** 2))
        if abs(ll - ll_old) < tol * max(1.0, abs(ll)):
            break
        ll_old = ll
    order = np.argsort(mu)
    w, mu, sigma = w[order], mu[order], sigma[order]
    lp = np.stack([np.log(max(w[k], 1e-12)) + _gauss_logpdf(z, mu[k], sigma[k]) for k in (0, 1)], axis=1)
    m = lp.max(axis=1, keepdims=True)
    tot = m[:, 0] + np.log(np.exp(lp - m).sum(axis=1))
    resp = np.exp(lp - tot[:, None])
    s1 = max(float(z.std()), min_sigma)
    ll1 = float(_gauss_logpdf(z, float(z.mean()), s1).sum())
    return {"w": w, "mu": mu, "sigma": sigma, "ll": float(tot.sum()), "ll1": ll1, "resp": resp}


def expected_f1_threshold(z: np.ndarray, r: np.ndarray) -> tuple:
    """The cut-off on ``z`` maximising ``2 sum_{z_i >= t} r_i / (n_{>=t} + sum r_i)`` (``r_i``: each
    candidate's particle probability); returns (t, expected F1). t is a midpoint between two
    consecutive sorted scores (or just below the lowest)."""
    order = np.argsort(-z)
    zs, rs = z[order], r[order]
    tp = np.cumsum(rs)
    k = np.arange(1, len(zs) + 1)
    f1 = 2.0 * tp / (k + rs.sum())
    i = int(np.argmax(f1))
    t = 0.5 * (zs[i] + zs[i + 1]) if i + 1 < len(zs) else zs[i] - 1e-6
    return float(t), float(f1[i])


def posterior_threshold(fit: dict, p: float = 0.5, n_grid: int = 1024) -> float:
    """The lowest z between the two means from which the particle component's posterior stays >= ``p``."""
    w, mu, sigma = fit["w"], fit["mu"], fit["sigma"]
    z = np.linspace(mu[0], mu[1], n_grid)
    l0 = np.log(w[0]) + _gauss_logpdf(z, mu[0], sigma[0])
    l1 = np.log(w[1]) + _gauss_logpdf(z, mu[1], sigma[1])
    post = 1.0 / (1.0 + np.exp(np.clip(l0 - l1, -50, 50)))
    below = np.flatnonzero(post < p)
    if not len(below):
        return float(z[0])
    return float(z[min(below[-1] + 1, n_grid - 1)])


def auto_threshold(fom: np.ndarray, calibrated: float, *, floor: Optional[float] = None,
                   max_shift: float = 0.3, max_shift_up: Optional[float] = None, min_candidates: int = 40,
                   min_component: int = 8, min_weight: float = 0.05, min_ashman_d: float = 1.5,
                   rule: str = "particle_mode", slope: float = 0.32, mode_offset: float = 1.0,
                   posterior: float = 0.95) -> tuple:
    """One micrograph's FOM threshold from its candidate scores ``fom`` (every pick above the model's
    floor, in [0, 1]), bounded around the model's ``calibrated`` threshold. Returns ``(threshold, info)``;
    ``info["method"]`` is ``"mixture"`` (the fit was trusted) or ``"calibrated"`` (fallback, with
    ``info["reason"]``). See the module docstring for the rule."""
    if not 0.0 < float(calibrated) < 1.0:
        raise ValueError(f"auto_threshold: the calibrated threshold must be in (0, 1), got {calibrated}")
    if max_shift < 0 or (max_shift_up is not None and max_shift_up < 0):
        raise ValueError(f"auto_threshold: max_shift/max_shift_up must be >= 0, got {max_shift}/{max_shift_up}")
    if rule not in _RULES:
        raise ValueError(f"auto_threshold: rule must be one of {', '.join(_RULES)}, not {rule!r}")
    if not (math.isfinite(slope) and slope >= 0 and math.isfinite(mode_offset)):
        raise ValueError(f"auto_threshold: slope must be >= 0 and mode_offset finite, got {slope}/{mode_offset}")
    if not 0.0 < posterior < 1.0:
        raise ValueError(f"auto_threshold: posterior must be in (0, 1), got {posterior}")
    calibrated = float(calibrated)
    fom = np.asarray(fom, dtype=np.float64).ravel()
    fom = fom[np.isfinite(fom)]
    zc = float(logit(calibrated))
    up = max_shift if max_shift_up is None else float(max_shift_up)
    lo_b, hi_b = float(sigmoid(zc - max_shift)), float(sigmoid(zc + up))
    if floor is not None:
        lo_b = max(lo_b, float(floor))
        hi_b = max(hi_b, lo_b)
    info = {"calibrated": calibrated, "n": int(len(fom)), "bounds": (lo_b, hi_b)}

    def fallback(reason):
        info.update(method="calibrated", reason=reason)
        log.debug("auto threshold: calibrated %.3f (%s)", calibrated, reason)
        return calibrated, info

    if len(fom) < min_candidates:
        return fallback(f"{len(fom)} candidates < {min_candidates}")
    z = logit(fom)
    if float(z.std()) < 1e-6:
        return fallback("all candidates have the same score")
    fit = fit_two_gaussians(z, zc)
    w, mu, sigma = fit["w"], fit["mu"], fit["sigma"]
    ashman = float(math.sqrt(2.0) * abs(mu[1] - mu[0]) / math.sqrt(sigma[0] ** 2 + sigma[1] ** 2))
    dbic = float(2.0 * (fit["ll"] - fit["ll1"]) - 3.0 * math.log(len(z)))
    counts = w * len(z)
    info.update(weights=[float(x) for x in w], means=[float(x) for x in sigmoid(mu)],
                logit_means=[float(x) for x in mu], logit_sigmas=[float(x) for x in sigma],
                ashman_d=ashman, delta_bic=dbic)
    if min(w) < min_weight or min(counts) < min_component:
        return fallback(f"a component too small (weights {w[0]:.2f}/{w[1]:.2f}, {counts.min():.0f} candidates)")
    if ashman < min_ashman_d:
        return fallback(f"not bimodal (Ashman D {ashman:.2f} < {min_ashman_d})")
    if dbic <= 0:
        return fallback(f"one component fits as well (dBIC {dbic:.1f})")
    if mu[1] < zc - max_shift:
        return fallback(f"upper mode {float(sigmoid(mu[1])):.3f} below the bound {lo_b:.3f}")
    if rule == "particle_mode":
        zt, ef1 = zc + slope * (float(mu[1]) - (zc + mode_offset)), float("nan")
    elif rule == "posterior":
        zt, ef1 = posterior_threshold(fit, posterior), float("nan")
    else:
        zt, ef1 = expected_f1_threshold(z, fit["resp"][:, 1])
    raw = float(sigmoid(zt))
    t = float(min(max(raw, lo_b), hi_b))
    info.update(method="mixture", rule=rule, raw=raw, expected_f1=ef1, bounded=bool(t != raw), reason="")
    log.debug("auto threshold: %.3f (raw %.3f, calibrated %.3f; means %.3f/%.3f, D %.2f, n %d)",
              t, raw, calibrated, info["means"][0], info["means"][1], ashman, len(z))
    return t, info
