"""Picking accuracy against ground truth: the thesis' AP (IoU > 0.6 between D x D boxes), AUROC, F1.

Definitions (all pooled over the micrographs of one dataset):

* **Matching.** Every micrograph's picks are taken highest FOM first (ties: input order). A pick is a
  true positive (TP) when an unmatched true particle lies within the criterion; it takes the best such
  particle (highest IoU, or nearest centre), which is then matched. Otherwise it is a false positive.
  Criteria: ``IoU(D x D box of the pick, D x D box of the particle) > iou`` (thesis: 0.6; for boxes of
  equal size this needs the centres within ``D (1 - iou) / (1 + iou)`` = D/4 along each axis), and, for
  the ``*_centre`` variant, centre distance <= D/2.
* **PR curve.** Thresholds are the distinct FOM values, high to low; at threshold ``t`` the picks with
  FOM >= t are kept: precision = TP / kept, recall = TP / (number of true particles).
* **AP** = sum over thresholds of (R_k - R_{k-1}) * P_k with R_0 = 0: the step-wise area under the PR
  curve *without* interpolation (scikit-learn's ``average_precision_score`` rule, but with recall over
  all true particles, so missed particles lower it). It ends at the recall of the lowest threshold.
* **F1** = max over thresholds of 2PR/(P+R); ``threshold`` is the FOM at that maximum.
  ``recall_at_p80`` = the highest recall at a threshold where precision >= 0.8 (0 when none is);
  ``threshold_p80`` its FOM.
* **AUROC** (thesis: negatives are grid cells without a particle). Each micrograph is tiled with D x D
  cells from (0, 0) over its extent (``shapes[name] = (ny, nx)`` when given, otherwise the bounding
  extent of its truth and picks). Positives: the true particles, scored by the FOM of the pick matched
  to them (IoU rule), or -inf when missed. Negatives: the cells holding no true particle centre, scored
  by the highest FOM among the false-positive picks whose centre lies in the cell, or -inf. AUROC is the
  Mann-Whitney probability that a positive scores above a negative (ties count 1/2, so a missed
  particle against an empty cell counts 1/2). ``AUROC_picks`` is the same over picks only (TPs against
  FPs), which ignores missed particles.
* Micrographs in ``truth`` but not in ``picks`` count as all missed. Micrographs in ``picks`` but not in
  ``truth`` are listed in ``extra_micrographs`` (with a warning) and left out, unless
  ``include_extra=True`` (then they are taken as particle-free: every pick there is a false positive).
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np

from .types import Picks


class MetricsWarning(UserWarning):
    """Inputs that were left out of an evaluation."""


def _pairs(pxy: np.ndarray, txy: np.ndarray, box: float, iou: float, centre: bool):
    """Candidate (pick, truth, quality) triplets that satisfy the criterion; quality higher = better."""
    from scipy.spatial import cKDTree

    if not len(pxy) or not len(txy):
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    if centre:
        radius, p = box / 2.0, 2
    else:  # along one axis IoU = (D - d) / (D + d), so no pair beyond this Chebyshev radius can pass
        radius, p = (box * (1 - iou) / (1 + iou) if iou > 0 else box), np.inf
    radius *= 1 + 1e-9  # the exact tests below decide; the radius only has to include every candidate
    m = cKDTree(pxy).sparse_distance_matrix(cKDTree(txy), radius, p=p, output_type="ndarray")
    i, j = m["i"].astype(int), m["j"].astype(int)
    d = np.abs(pxy[i] - txy[j])
    if centre:
        dist = np.hypot(d[:, 0], d[:, 1])
        ok = dist <= box / 2.0
        return i[ok], j[ok], -dist[ok]
    inter = np.clip(box - d[:, 0], 0, None) * np.clip(box - d[:, 1], 0, None)
    q = inter / (2 * box * box - inter)
    ok = q > iou
    return i[ok], j[ok], q[ok]


def match_greedy(picks: Picks, truth_xy: np.ndarray, box_px: float, iou: float = 0.6,
                 centre: bool = False):
    """Greedy matching of one micrograph (highest FOM first).

    Returns ``(tp, matched)``: ``tp[k]`` is the truth index matched to pick ``k`` or -1; ``matched[j]``
    the pick index matched to truth ``j`` or -1.
    """
    truth_xy = np.asarray(truth_xy, dtype=float).reshape(-1, 2)
    tp = np.full(len(picks), -1, dtype=int)
    matched = np.full(len(truth_xy), -1, dtype=int)
    i, j, q = _pairs(picks.xy(), truth_xy, box_px, iou, centre)
    if not len(i):
        return tp, matched
    rank = np.empty(len(picks), dtype=int)
    rank[np.argsort(-picks.fom, kind="stable")] = np.arange(len(picks))
    order = np.lexsort((-q, rank[i]))  # by pick rank, then best quality first
    for a, b in zip(i[order].tolist(), j[order].tolist()):
        if tp[a] < 0 and matched[b] < 0:
            tp[a] = b
            matched[b] = a
    return tp, matched


def pr_curve(scores: np.ndarray, is_tp: np.ndarray, n_truth: int) -> dict:
    """Precision/recall at every distinct score (high to low) and the AP and F1 derived from them."""
    scores = np.asarray(scores, dtype=float)
    is_tp = np.asarray(is_tp, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], is_tp[order]
    ctp = np.cumsum(t)
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1] if len(s) else np.zeros(0, int)
    thr = s[last]
    tp = ctp[last].astype(float)
    n_kept = (last + 1).astype(float)
    precision = tp / n_kept if len(last) else np.zeros(0)
    recall = tp / n_truth if n_truth else np.full(len(last), np.nan)
    out = {"thresholds": thr, "precision": precision, "recall": recall}
    if not n_truth:
        out.update(AP=math.nan, F1=math.nan, threshold=math.nan, recall_at_p80=math.nan,
                   threshold_p80=math.nan)
        return out
    if not len(last):
        out.update(AP=0.0, F1=0.0, threshold=math.nan, recall_at_p80=0.0, threshold_p80=math.nan)
        return out
    out["AP"] = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    k, out["F1"] = index_at_max_f1(precision, recall)
    out["threshold"] = float(thr[k])
    k = index_at_precision(out, 0.8)
    if k is not None:
        out["recall_at_p80"], out["threshold_p80"] = float(recall[k]), float(thr[k])
    else:
        out["recall_at_p80"], out["threshold_p80"] = 0.0, math.nan
    return out


def index_at_precision(pr: dict, precision: float) -> Optional[int]:
    """Index into a PR curve (``thresholds``/``precision``/``recall``) of the best recall at which
    precision reaches ``precision``; None when it never does."""
    ok = np.flatnonzero(np.asarray(pr["precision"]) >= precision)
    if not len(ok):
        return None
    return int(ok[np.argmax(np.asarray(pr["recall"])[ok])])


def index_at_max_f1(precision, recall) -> tuple:
    """(index, F1) of the best F1 = 2PR/(P+R) along a PR curve (0 where P + R = 0)."""
    precision, recall = np.asarray(precision, float), np.asarray(recall, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    k = int(np.argmax(f1))
    return k, float(f1[k])


def threshold_at_precision(pr: dict, precision: float) -> Optional[float]:
    """The FOM threshold of :func:`index_at_precision` (None when precision is never reached)."""
    k = index_at_precision(pr, precision)
    return None if k is None else float(pr["thresholds"][k])


def _auroc(pos: np.ndarray, neg: np.ndarray, n_neg_empty: int = 0) -> float:
    """P(pos > neg) + P(pos == neg)/2, with ``n_neg_empty`` extra negatives scored -inf."""
    n_neg = len(neg) + n_neg_empty
    if not len(pos) or not n_neg:
        return math.nan
    neg = np.sort(neg)
    lo = np.searchsorted(neg, pos, "left")
    hi = np.searchsorted(neg, pos, "right")
    inf = np.isneginf(pos)
    less = lo + np.where(inf, 0, n_neg_empty)
    equal = (hi - lo) + np.where(inf, n_neg_empty, 0)
    return float(np.sum(less + 0.5 * equal) / (len(pos) * n_neg))


def _grid_negatives(p: Picks, fp: np.ndarray, txy: np.ndarray, box: float, shape) -> tuple:
    """(scores of negative cells holding FP picks, number of negative cells without one)."""
    if shape is not None:
        ny, nx = shape
    else:
        ny = max([1.0] + [float(a.max()) + 1 for a in (p.y, txy[:, 1]) if len(a)])
        nx = max([1.0] + [float(a.max()) + 1 for a in (p.x, txy[:, 0]) if len(a)])
    cx, cy = int(math.ceil(nx / box)), int(math.ceil(ny / box))

    def cell(x, y):
        return (np.clip((y // box).astype(int), 0, cy - 1) * cx
                + np.clip((x // box).astype(int), 0, cx - 1))

    pos_cells = np.unique(cell(txy[:, 0], txy[:, 1])) if len(txy) else np.zeros(0, int)
    n_neg = cx * cy - len(pos_cells)
    c = cell(p.x[fp], p.y[fp])
    keep = ~np.isin(c, pos_cells)
    c, f = c[keep], p.fom[fp][keep]
    if not len(c):
        return np.zeros(0), n_neg
    order = np.lexsort((-f, c))
    c, f = c[order], f[order]
    first = np.r_[True, c[1:] != c[:-1]]
    return f[first], n_neg - int(first.sum())


def evaluate(picks: dict, truth: dict, box_px: float, iou: float = 0.6, *, include_extra: bool = False,
             shapes: Optional[dict] = None, warn=None) -> dict:
    """Evaluate ``picks`` ({micrograph: Picks}) against ``truth`` ({micrograph: (N, 2) x, y array or Picks}).

    ``box_px`` is the particle diameter D in pixels of the micrographs. See the module docstring for the
    definitions. Returns a dict with ``AP``, ``AUROC``, ``AUROC_picks``, ``F1``, ``threshold``,
    ``recall_at_p80``, ``threshold_p80``, ``AP_centre``, ``F1_centre``, ``precision``/``recall`` (all
    picks kept), ``n_picks``, ``n_truth``, ``n_tp``, ``n_micrographs``, ``missing_micrographs`` (in truth,
    no picks), ``extra_micrographs`` (picks, no truth), ``per_micrograph`` ({name: (n_truth, n_picks,
    n_tp)}), and the curves ``pr`` / ``pr_centre`` ({thresholds, precision, recall} arrays).
    ``warn``: callable for warnings (default :func:`warnings.warn`).
    """
    if not box_px or box_px <= 0:
        raise ValueError("evaluate: box_px (the particle diameter in pixels) must be > 0")
    shapes = shapes or {}
    extra = sorted(str(k) for k in picks if k not in truth)
    missing = sorted(str(k) for k in truth if k not in picks)
    if extra:
        msg = (f"{len(extra)} micrograph(s) with picks have no ground truth (e.g. '{extra[0]}'); "
               + ("counted as particle-free" if include_extra else "left out"))
        (warn or (lambda m: warnings.warn(m, MetricsWarning, stacklevel=3)))(msg)
    names = list(truth) + ([k for k in picks if k not in truth] if include_extra else [])

    scores, tp_iou, tp_ctr = [], [], []
    pos_scores, neg_scores = [], []
    n_neg_empty = 0
    n_truth = 0
    per_mic = {}
    for name in names:
        t = truth.get(name, np.zeros((0, 2)))
        txy = (t.xy() if isinstance(t, Picks) else np.asarray(t, dtype=float)).reshape(-1, 2)
        p = picks.get(name) or Picks.empty()
        t_iou, matched = match_greedy(p, txy, box_px, iou)
        t_ctr, _ = match_greedy(p, txy, box_px, centre=True)
        scores.append(p.fom)
        tp_iou.append(t_iou >= 0)
        tp_ctr.append(t_ctr >= 0)
        pos_scores.append(np.where(matched >= 0, p.fom[np.maximum(matched, 0)] if len(p) else 0.0,
                                   -np.inf))
        neg, empty = _grid_negatives(p, t_iou < 0, txy, box_px, shapes.get(name))
        neg_scores.append(neg)
        n_neg_empty += empty
        n_truth += len(txy)
        per_mic[str(name)] = (len(txy), len(p), int((t_iou >= 0).sum()))

    s = np.concatenate(scores) if scores else np.zeros(0)
    ti = np.concatenate(tp_iou) if tp_iou else np.zeros(0, bool)
    tc = np.concatenate(tp_ctr) if tp_ctr else np.zeros(0, bool)
    pr = pr_curve(s, ti, n_truth)
    prc = pr_curve(s, tc, n_truth)
    n_tp = int(ti.sum())
    pos = np.concatenate(pos_scores) if pos_scores else np.zeros(0)
    negs = np.concatenate(neg_scores) if neg_scores else np.zeros(0)
    return {
        "AP": pr["AP"], "AUROC": _auroc(pos, negs, n_neg_empty), "AUROC_picks": _auroc(s[ti], s[~ti]),
        "F1": pr["F1"], "threshold": pr["threshold"],
        "recall_at_p80": pr["recall_at_p80"], "threshold_p80": pr["threshold_p80"],
        "AP_centre": prc["AP"], "F1_centre": prc["F1"],
        "precision": n_tp / len(s) if len(s) else math.nan,
        "recall": n_tp / n_truth if n_truth else math.nan,
        "n_picks": int(len(s)), "n_truth": int(n_truth), "n_tp": n_tp, "n_micrographs": len(names),
        "missing_micrographs": missing, "extra_micrographs": extra,
        "per_micrograph": per_mic, "box_px": float(box_px), "iou": float(iou),
        "pr": {k: pr[k] for k in ("thresholds", "precision", "recall")},
        "pr_centre": {k: prc[k] for k in ("thresholds", "precision", "recall")},
    }


SUMMARY_KEYS = ("AP", "AUROC", "F1", "threshold", "recall_at_p80", "AP_centre", "threshold_p80",
                "AUROC_picks", "F1_centre", "precision", "recall", "n_picks", "n_truth", "n_tp",
                "n_micrographs")


def summary(result: dict) -> dict:
    """The scalar metrics of :func:`evaluate` (NaN -> None), ready for ``json.dumps``."""
    out = {}
    for k in SUMMARY_KEYS:
        v = result[k]
        if isinstance(v, float) and math.isnan(v):
            v = None
        out[k] = v
    out["missing_micrographs"] = len(result["missing_micrographs"])
    out["extra_micrographs"] = len(result["extra_micrographs"])
    return out


def pr_curve_png(result: dict, path, title: Optional[str] = None) -> None:
    """Plot the PR curves (IoU rule and centre rule) of an :func:`evaluate` result to a PNG, atomically."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    from .atomic import atomic_path

    fig = Figure(figsize=(5, 4.5), dpi=120)
    ax = fig.subplots()
    for key, label, ap in (("pr", f"IoU > {result['iou']:g}", result["AP"]),
                           ("pr_centre", "centre <= D/2", result["AP_centre"])):
        c = result[key]
        if len(c["recall"]):
            ax.step(np.r_[0.0, c["recall"]], np.r_[c["precision"][0], c["precision"]], where="pre",
                    label=f"{label}: AP {ap:.3f}")
    if not math.isnan(result["F1"]) and not math.isnan(result["threshold"]):
        k = int(np.argmin(np.abs(result["pr"]["thresholds"] - result["threshold"])))
        ax.plot(result["pr"]["recall"][k], result["pr"]["precision"][k], "o", color="k",
                label=f"max F1 {result['F1']:.3f} @ {result['threshold']:.3g}")
    ax.axhline(0.8, color="grey", lw=0.8, ls=":")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title or f"{result['n_picks']} picks, {result['n_truth']} particles, D = {result['box_px']:g} px",
                 fontsize=9)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
