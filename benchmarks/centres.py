#!/usr/bin/env python
"""Centre-error benchmark (issue 18, "measure first"): how well HydraPicker *centres* the particles it finds.

Findings (2026-12-02, shipped ``lite`` generic model, ``--n-sim 5``; JSON
docs/benchmarks/centres_before_2026-12-02.json, figure docs/figures/centre_errors_before.png). Errors are
those of the pick matched to each particle under the D/2 rule; "select" = the kept pick fails IoU 0.6 but
some candidate cell above the floor passes it, "regress" = no candidate passes it (fractions of all
particles); "own" = share of matched picks kept from the cell holding the particle's centre; oracle_own /
oracle_select = AP when each matched pick takes its particle's own-cell candidate / best candidate.

  set                     AP_D/2   AP   gap  rec D/2 IoU  median A (D)   p90 D  select regr.  own  or_own or_sel
  t_small80kda             0.842 0.574 0.268 0.980 0.733   8.8 (0.110)  0.343  0.171 0.075  0.68  0.719  0.754
  t_rod                    0.614 0.310 0.303 0.831 0.510  54.1 (0.180)  0.403  0.164 0.159  0.59  0.411  0.457
  t_ferritin_crowded       0.974 0.861 0.113 0.996 0.895   6.6 (0.054)  0.223  0.074 0.027  0.82  0.927  0.946
  t_ribosome               0.989 0.973 0.016 0.993 0.980  11.6 (0.040)  0.084  0.011 0.002  0.90  0.975  0.988
  t_proteasome             0.983 0.921 0.062 1.000 0.941   5.6 (0.035)  0.144  0.045 0.014  0.87  0.956  0.969
  t_micelle                0.930 0.754 0.176 0.997 0.860  12.5 (0.083)  0.244  0.108 0.030  0.75  0.859  0.890
  t_virus                  0.920 0.916 0.004 1.000 0.994   9.2 (0.020)  0.065  0.000 0.006  0.94  0.916  0.916
  t_dumbbell_pp            0.825 0.369 0.457 0.888 0.551  26.7 (0.148)  0.373  0.189 0.148  0.65  0.559  0.619
  c_touching_proteasome    0.952 0.738 0.214 0.995 0.801  12.8 (0.080)  0.295  0.129 0.066  0.74  0.849  0.881
  c_small60kda_lowsnr      0.479 0.144 0.336 0.961 0.480  15.4 (0.220)  0.424  0.280 0.200  0.51  0.294  0.329
  apoferritin_empiar10146  0.980 0.910 0.070 0.998 0.951  10.3 (0.085)  0.172  0.026 0.021  0.77  0.925  0.946
  ribosome80s_empiar10028  0.763 0.761 0.003 1.000 0.998  16.4 (0.055)  0.103  0.002 0.000  0.86  0.763  0.763

Which cause dominates: **the kept pick comes from the wrong cell** (grid stride + single-cell assignment,
then suppression keeps the higher-scoring of two similar cells), i.e. (a)+(b); not neighbours (d); the
regression (c) comes second, and matters at low SNR:

* The grid is coarse: stride 8 rescaled px = D/2, and the IoU rule (error < D/4 along an axis, about D/7
  on a diagonal) leaves half a cell. A particle near a cell border makes two cells fire with similar scores
  (4 micrographs of the touching set: median 0.23 for a kept wrong cell vs 0.18 for the particle's own
  cell, which was a candidate too in 100 % of those cases); suppression keeps the higher.
* The kept pick is from a neighbouring cell for 6-49 % of matched particles, and for 71-81 % of the kept
  picks that fail IoU on the sets with a gap (``kept_from_own_cell_among_iou_fail`` 0.19-0.29). There,
  wrong-cell picks are 0.14-0.33 D off (median), own-cell picks 0.03-0.13 D. The offsets never leave their
  cell (``kept_centre_outside_own_cell`` = 0, no saturation at OFFSET_RANGE): training regresses offsets
  only on the cell holding a centre (criterion.encode, targets within +-0.5 cell), so a neighbour cell's
  offsets are untrained for that particle and point somewhere inside itself; moving a pick to the cell
  that contains its decoded centre (``reassign``) therefore changes nothing.
* Selection-fixable particles outnumber regression-limited ones on every set with a gap > 0.01 (0.01-0.28
  vs 0.002-0.20). Keeping the particle's own cell (``oracle_own``) recovers most of the gap: AP +0.11
  touching, +0.15 t_small80kda, +0.19 t_dumbbell_pp, +0.15 c_small60kda_lowsnr, +0.11 t_micelle, +0.10
  t_rod, +0.07 t_ferritin_crowded, +0.04 t_proteasome, +0.015 real apoferritin, +0.002 real ribosome;
  the best existing candidate (``oracle_select``) adds another 0.00-0.06.
* Crowding and SNR act through the same mechanism: the < 1.0 D bin has lower IoU recall (touching 0.78
  vs 0.86 isolated, micelle 0.78 vs 0.92), the low-SNR half of a set much lower AP (touching 0.61 vs 0.88,
  t_small80kda 0.44 vs 0.73) with larger errors. Neighbours do *not* pull the offsets: the signed error
  towards the nearest neighbour is within +-0.013 D on every simulated set, as for isolated particles.
* The regression itself (c): the slope of predicted vs true sub-cell offset is 0.86-0.93 on easy sets but
  0.34-0.54 on c_small60kda_lowsnr / t_rod / t_dumbbell_pp (offsets shrink to the cell centre), where
  15-20 % of particles have no candidate inside the IoU rule.
* Decode-only tweaks of today's grids give little: the score-weighted mean of the 3 x 3 cells' centres
  gated at D/4 (``avg3x3``) -0.01..+0.02 AP; gated at D/2 (``avg3x3_D2``) +0.01..+0.04 on the crowded sets
  but worse on t_small80kda, t_rod and both real sets, with larger median errors; ungated
  (``avg3x3_all``), the logit-peak parabola (``quad``) and cell centres (``cell``) are much worse (other
  particles' and background cells' offsets are untrained). None comes near oracle_own.

Fix the measurement points to: make whichever cell wins suppression decode the particle's centre, i.e.
train the offsets (and the positive label) on the cells around each centre (at least the 2 x 2 cells
nearest it, OFFSET_RANGE >= 1-1.5 strides), or a finer output grid (stride 4). Expected gain: about the
oracle_own AP above (oracle_select is the bound for choosing among today's candidates; better-trained
neighbour cells can exceed both). Even oracle_own misses "AP within 0.05 of AP_D/2" on t_small80kda, t_rod,
t_micelle, t_dumbbell_pp, c_touching_proteasome, c_small60kda_lowsnr (and real apoferritin by 0.005):
on the first five the regression is short too
(regress 0.07-0.20, offset slope 0.34-0.70), which a second-stage centre refinement on a finer crop addresses (bound:
oracle_exact = AP_D/2). Caveats: 5 micrographs per simulated set; the oracle's best candidate is optimistic
where many cells fire; the real sets' truth was recovered from drawn discs/masks (its own error is part of
their centre error).

Tried (2026-12-02, not shipped): the fix proposed above in its cheapest form, continuing the shipped model
1.15 h with targets that also teach the neighbour cells within 0.7 stride of a particle (``hydra train
--assign-reach 0.7``, scripts/train_centres.sh; docs/training/centres_reach07_not_shipped.pt; JSON
docs/benchmarks/centres_reach07_2026-12-02.json): AP +0.062 c_touching_proteasome, +0.028
t_ferritin_crowded, +0.018 t_proteasome, +0.009 real ribosome, but -0.075 t_small80kda, -0.028
c_small60kda_lowsnr, -0.019 t_rod, -0.014 t_virus; AP_D/2 -0.022 t_dumbbell_pp, -0.014 t_virus; the
kept cell is still a neighbour for 27-40 % of matched particles on the hard sets, with 0.19-0.26 D errors
there (the cells just beyond the reach fire as well). Next: a finer grid or a second-stage refinement
(the regression-limited share, 0.06-0.20, needs one anyway).

After (2026-12-02, the centre refiner, ``hydrapicker/refine.py``, ``hydra pick --refine``; JSON
docs/benchmarks/centres_after_2026-12-02.json, figure docs/figures/centre_errors_after.png; the table is in
the README, Centres): a centre head on the body's stride-2 features gives a stride-4 centre map, and each
pick moves to its hottest cell within 0.3 D. AP rises on the crowded, small and micelle sets (touching
0.738 -> 0.800, t_small80kda 0.574 -> 0.635, t_ferritin_crowded 0.861 -> 0.897, t_micelle 0.754 -> 0.788)
at 1.10-1.20x the CPU time. It falls on real apoferritin (0.910 -> 0.892), and AP_D/2 falls on
t_dumbbell_pp (-0.025) and t_micelle (-0.010), so it is opt-in. The variants ``refined`` (the product:
refined picks closer than D/4 merged), ``refined_nosup`` / ``refined_sup10`` / ``refined_sup25`` (merged at
0 / 0.1 / 0.25 D) compare suppression after the move. ``--timing`` adds CPU time per micrograph with and
without; ``--no-refine`` gives the detector's centres only. ``cli_check`` on t_rod differs by 11 picks
since the border-band finder (issue 14) excludes a band on t_rod_003: the re-implementation here does not
look for bands.

What it measures, per set (every pick kept: ``hydra pick --all``):

* the distribution of centre errors of matched picks (each true particle's pick under the D/2 rule,
  greedy, highest FOM first, as ``hydrapicker.metrics``): median and 90th percentile in A and as a fraction
  of the diameter D;
* AP_D/2 (``AP_centre``) vs AP (IoU > 0.6 of D x D boxes) and the maximum recall under each rule;
* the same split by crowding (distance from each true particle to its nearest true neighbour: < 1.0 D,
  1.0-1.2 D, >= 1.2 D) and, on simulated sets, by SNR (the set's micrographs split at their median
  per-micrograph ``snr`` from meta.json);
* the diagnosis, from the raw network grids (obtained through the Picker: ``_read`` / ``_prepared`` /
  ``_grid``, i.e. exactly what ``hydra pick`` decodes) and from the picks:
  - the *oracle*: for every true particle, is there any candidate cell (score >= the model's floor, before
    duplicate suppression) whose decoded centre passes the IoU rule? Particles whose kept pick fails it
    while some candidate passes it are a selection (suppression / decoding) problem; particles for which
    no candidate passes it are a regression problem;
  - the kept pick's source cell (the cell holding the true centre, or a neighbour), offset saturation
    (|offset| near ``OFFSET_RANGE``), and the slope of predicted vs true sub-cell offset (a slope < 1 is a
    regression that shrinks towards the cell centre: the network cannot resolve the position);
  - neighbour pull: the error's component along the direction to the nearest true neighbour;
  - post-processing variants applied to the same raw grids (decoding is re-implemented here, so that
    nothing in ``hydrapicker/`` changes): ``shipped`` (the product's decoding, checked against the
    ``hydra pick --all`` picks), ``cell`` (offsets ignored: cell centres), ``avg3x3`` (score-weighted mean
    of the decoded centres of the 3 x 3 cells around the kept cell, only those within D/4 of the kept
    centre), ``avg3x3_all`` (the same, ungated), ``quad`` (sub-cell peak of the logit map by a parabola, no
    offsets), ``reassign`` (each pick moved to the candidate of the cell that contains its decoded centre),
    ``oracle_own`` (each matched pick moved to the candidate of the cell holding its particle's centre, when
    that cell is above the floor: suppression that always keeps the right cell),
    ``oracle_select`` (each matched pick moved to the best candidate centre for its particle:
    the most that selection/decoding of existing candidates can give), ``oracle_exact`` (each matched pick
    moved onto its particle: the most any refinement of these picks can give).

Sets (default): the held-out simulated targets (``hydrapicker.simulate.target_dataset_specs``), two sets
built here from target specs with ``.replace``: ``c_touching_proteasome`` (touching/overlapping
proteasome-like barrels) and ``c_small60kda_lowsnr`` (a ~60 kDa, 70 A particle at very low SNR), and the
real validation sets in ../shared/data/real (validation only: never tune on them).

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/centres.py                      # all sets, 5 micrographs each
  .venv/bin/python benchmarks/centres.py --sets t_ferritin_crowded c_touching_proteasome --n-sim 4
  .venv/bin/python benchmarks/centres.py --model runs/x/model.pt --tag after      # docs/.../centres_after_*

Writes docs/benchmarks/centres_<tag>_<date>.json and docs/figures/centre_errors_<tag>_<date>.png (tag default
``after``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_data import REPO, Dataset, load_dataset, real_set_dirs, simulated_dataset, target_names  # noqa: E402

CROWDING_BINS = ((0.0, 1.0, "<1.0D"), (1.0, 1.2, "1.0-1.2D"), (1.2, math.inf, ">=1.2D"))
VARIANTS = ("shipped", "refined", "refined_nosup", "refined_sup10", "refined_sup25", "cell", "avg3x3", "avg3x3_D2", "avg3x3_all", "quad", "reassign", "oracle_own",
            "oracle_select", "oracle_exact")
OFFSET_RANGE = 0.75   # as hydrapicker.postprocess.OFFSET_RANGE (read from there when it exists)


# ------------------------------------------------------------------------------------------- sets
def custom_specs() -> dict:
    """The crowded/touching and the ~60 kDa very-low-SNR sets, built from target specs (seeds of their own)."""
    from hydrapicker.simulate import get_target

    touching = get_target("t_proteasome").replace(
        name="c_touching_proteasome", seed=18_000_001, coverage=(0.4, 0.55), max_overlap=0.15, pref_kappa=0.0,
        description="touching/overlapping D7 barrels (issue 18)")
    small = get_target("t_small80kda")
    tiny = small.replace(name="c_small60kda_lowsnr", seed=18_000_002, diameter_A=70.0,
                         pixel_size=round(70.0 / 24.0, 4), snr=(0.015, 0.04),
                         description="~60 kDa (70 A) two-lobed protein at very low SNR (issue 18)")
    return {s.name: s for s in (touching, tiny)}


def resolve(tokens, n_sim: int, cache: Path) -> list:
    from hydrapicker.simulate import get_target

    custom = custom_specs()
    out = []
    for tok in tokens:
        if tok == "targets":
            out += [(simulated_dataset(get_target(n), cache, n_sim), "simulated") for n in target_names()]
        elif tok == "custom":
            out += [(simulated_dataset(s, cache, n_sim), "simulated") for s in custom.values()]
        elif tok == "real":
            out += [(p, "real") for p in real_set_dirs()]
        elif tok in custom:
            out.append((simulated_dataset(custom[tok], cache, n_sim), "simulated"))
        elif tok in target_names():
            out.append((simulated_dataset(get_target(tok), cache, n_sim), "simulated"))
        elif any(p.name == tok for p in real_set_dirs()):
            out.append((next(p for p in real_set_dirs() if p.name == tok), "real"))
        elif Path(tok).is_dir():
            out.append((Path(tok), None))
        else:
            raise SystemExit(f"--sets: unknown set {tok!r}")
    return out


# ------------------------------------------------------------------------------------------- raw grids
@dataclass
class Raw:
    """One micrograph's raw network output and the geometry that maps it to micrograph pixels."""

    grid: np.ndarray       # (3, H, W): dx, dy, logit
    scale: tuple           # (rescaled nx / nx, rescaled ny / ny)
    shape: tuple           # (ny, nx) of the micrograph
    stride: int
    temperature: float
    prepared: object = None  # the Picker's Prepared micrograph
    cmap: object = None      # its centre map (when the Picker has a refiner)


def raw_grids(picker, ds: Dataset, head: str = "generic") -> dict:
    """stem -> :class:`Raw`, through the Picker's own reading, preparation and (tiled) inference."""
    from hydrapicker.types import Micrograph

    out = {}
    temp = float(picker.meta.get("temperature", 1.0))
    for stem, path in zip(ds.stems, ds.mic_paths):
        mic = Micrograph(str(path), pixel_size=ds.pixel_size, name=stem)
        loaded, _, _ = picker._read(mic, ds.diameter_A)
        prep = picker._prepared(loaded, mic, ds.diameter_A)
        grid, cmap, _ = picker._outputs(prep.image, head)  # the grid alone: what this diagnosis decodes
        out[stem] = Raw(np.asarray(grid, np.float64), tuple(prep.scale_xy), tuple(prep.shape), picker.stride, temp,
                        prep, cmap)
    return out


@dataclass
class Cands:
    """Every cell above the floor of one micrograph: grid index, score, offsets (stride units), centre."""

    i: np.ndarray
    j: np.ndarray
    score: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    xy: np.ndarray         # (N, 2) decoded centres in micrograph px
    raw: Raw

    def to_mic(self, xr, yr):
        """rescaled px -> micrograph px (Fourier rescaling keeps sample 0 in place)."""
        return np.stack([np.asarray(xr) / self.raw.scale[0], np.asarray(yr) / self.raw.scale[1]], axis=1)


def candidates(raw: Raw, floor: float) -> Cands:
    g = raw.grid
    s = raw.stride
    score = 1.0 / (1.0 + np.exp(-np.clip(g[2] / raw.temperature, -60, 60)))
    i, j = np.nonzero(score >= floor)
    dx = np.tanh(g[0, i, j]) * OFFSET_RANGE
    dy = np.tanh(g[1, i, j]) * OFFSET_RANGE
    c = Cands(i, j, score[i, j], dx, dy, np.zeros((len(i), 2)), raw)
    c.xy = c.to_mic((j + 0.5 + dx) * s - 0.5, (i + 0.5 + dy) * s - 0.5)
    return c


def nms(xy: np.ndarray, score: np.ndarray, min_d: float) -> np.ndarray:
    """Greedy suppression by distance, highest score first (as hydrapicker.postprocess.suppress_duplicates)."""
    from scipy.spatial import cKDTree

    order = np.argsort(-score, kind="stable")
    if not len(order) or min_d <= 0:
        return order
    tree = cKDTree(xy)
    alive = np.ones(len(score), bool)
    keep = []
    r = min_d - 1e-9
    for k in order.tolist():
        if not alive[k]:
            continue
        keep.append(k)
        for m in tree.query_ball_point(xy[k], r):
            alive[m] = False
    return np.asarray(keep, int)


def inside(xy: np.ndarray, shape) -> np.ndarray:
    ny, nx = shape
    return (xy[:, 0] >= 0) & (xy[:, 0] <= nx - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= ny - 1)


def shipped_keep(c: Cands, min_d: float) -> np.ndarray:
    """Indices into ``c`` of the product's picks (edge 0, suppression at ``min_d`` micrograph px)."""
    ok = np.flatnonzero(inside(c.xy, c.raw.shape))
    return ok[nms(c.xy[ok], c.score[ok], min_d)]


def refine_avg(c: Cands, keep: np.ndarray, gate: float) -> np.ndarray:
    """Score-weighted mean of the decoded centres of the 3 x 3 cells around each kept cell (those above the
    floor and, when ``gate`` > 0, within ``gate`` micrograph px of the kept centre)."""
    index = cell_index(c)
    out = c.xy[keep].copy()
    for n, k in enumerate(keep.tolist()):
        ks = [index[(c.i[k] + a, c.j[k] + b)] for a in (-1, 0, 1) for b in (-1, 0, 1)
              if (c.i[k] + a, c.j[k] + b) in index]
        ks = np.asarray(ks, int)
        if gate > 0:
            ks = ks[np.hypot(*(c.xy[ks] - c.xy[k]).T) <= gate]
        w = c.score[ks]
        out[n] = (w[:, None] * c.xy[ks]).sum(0) / w.sum()
    return out


def cell_index(c: Cands) -> dict:
    return {(a, b): k for k, (a, b) in enumerate(zip(c.i.tolist(), c.j.tolist()))}


def refine_reassign(c: Cands, keep: np.ndarray, steps: int = 2) -> np.ndarray:
    """Move each kept pick to the decoded centre of the cell that *contains* its decoded centre (the one cell
    whose offsets were trained for a particle there), when that cell is above the floor; repeated."""
    index = cell_index(c)
    s = c.raw.stride
    out = np.empty((len(keep), 2))
    for n, k in enumerate(keep.tolist()):
        for _ in range(steps):
            xr, yr = c.xy[k, 0] * c.raw.scale[0], c.xy[k, 1] * c.raw.scale[1]
            cell = (int(np.floor((yr + 0.5) / s)), int(np.floor((xr + 0.5) / s)))
            if cell == (c.i[k], c.j[k]) or cell not in index:
                break
            k = index[cell]
        out[n] = c.xy[k]
    return out


def refine_quad(c: Cands, keep: np.ndarray) -> np.ndarray:
    """Sub-cell peak of the logit map around each kept cell by a 1D parabola per axis (offsets unused)."""
    logit = c.raw.grid[2]
    H, W = logit.shape
    s = c.raw.stride
    xr, yr = [], []
    for k in keep.tolist():
        i, j = int(c.i[k]), int(c.j[k])
        sh = []
        for (a0, a1) in (((i, max(j - 1, 0)), (i, min(j + 1, W - 1))), ((max(i - 1, 0), j), (min(i + 1, H - 1), j))):
            lm, l0, lp = logit[a0], logit[i, j], logit[a1]
            den = lm - 2 * l0 + lp
            sh.append(float(np.clip(0.5 * (lm - lp) / den, -0.5, 0.5)) if den < 0 else 0.0)
        xr.append((j + 0.5 + sh[0]) * s - 0.5)
        yr.append((i + 0.5 + sh[1]) * s - 0.5)
    return c.to_mic(xr, yr) if len(xr) else np.zeros((0, 2))


# ------------------------------------------------------------------------------------------- geometry
def iou_ok(d: np.ndarray, box: float, iou: float = 0.6) -> np.ndarray:
    """IoU of D x D boxes > iou for centre differences ``d`` (..., 2), as hydrapicker.metrics."""
    d = np.abs(d)
    inter = np.clip(box - d[..., 0], 0, None) * np.clip(box - d[..., 1], 0, None)
    return inter / (2 * box * box - inter) > iou


def nearest_neighbour(txy: np.ndarray):
    """(distance, index) of each true particle's nearest other true particle (inf, -1 when alone)."""
    from scipy.spatial import cKDTree

    if len(txy) < 2:
        return np.full(len(txy), np.inf), np.full(len(txy), -1)
    d, k = cKDTree(txy).query(txy, 2)
    return d[:, 1], k[:, 1]


def q(v, p):
    return None if not len(v) else float(np.quantile(v, p))


# ------------------------------------------------------------------------------------------- one set
def picks_of(xy, fom):
    from hydrapicker.types import Picks

    xy = np.asarray(xy, float).reshape(-1, 2)
    return Picks(xy[:, 0], xy[:, 1], np.asarray(fom, float))


def ap_summary(picks: dict, truth: dict, box: float) -> dict:
    from hydrapicker.metrics import evaluate

    r = evaluate(picks, truth, box, warn=lambda m: None)
    rc = r["pr_centre"]["recall"]
    f = lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4)  # noqa: E731
    return {"AP": f(r["AP"]), "AP_D2": f(r["AP_centre"]), "gap": f(r["AP_centre"] - r["AP"]),
            "recall_iou": f(r["recall"]), "recall_D2": f(rc[-1] if len(rc) else 0.0),
            "n_truth": r["n_truth"], "n_picks": r["n_picks"]}


def errors_of(picks: dict, truth: dict, box: float):
    """Per true particle (concatenated over micrographs): matched pick's error vector (NaN when none)
    under the D/2 rule, and whether it is matched under the IoU rule."""
    from hydrapicker.metrics import match_greedy
    from hydrapicker.types import Picks

    errs, ok_iou = [], []
    for stem, txy in truth.items():
        p = picks.get(stem) or Picks.empty()
        _, m = match_greedy(p, txy, box, centre=True)
        _, mi = match_greedy(p, txy, box, 0.6)
        e = np.full((len(txy), 2), np.nan)
        if len(txy) and len(p):
            hit = m >= 0
            e[hit] = p.xy()[m[hit]] - txy[hit]
        errs.append(e)
        ok_iou.append(mi >= 0)
    return (np.concatenate(errs) if errs else np.zeros((0, 2)),
            np.concatenate(ok_iou) if ok_iou else np.zeros(0, bool))


def err_stats(err: np.ndarray, ok_iou: np.ndarray, ds: Dataset) -> dict:
    n = np.hypot(err[:, 0], err[:, 1])
    hit = ~np.isnan(n)
    e = n[hit]
    apix, box = ds.pixel_size, ds.box_px
    r = lambda v, k=4: None if v is None else round(v, k)  # noqa: E731
    return {"n": int(len(n)), "recall_D2": r(float(hit.mean())) if len(n) else None,
            "recall_iou": r(float(ok_iou.mean())) if len(n) else None,
            "median_A": r(q(e, 0.5) and q(e, 0.5) * apix, 2), "p90_A": r(q(e, 0.9) and q(e, 0.9) * apix, 2),
            "median_D": r(q(e, 0.5) and q(e, 0.5) / box), "p90_D": r(q(e, 0.9) and q(e, 0.9) / box),
            "frac_le_D12": r(float((e <= box / 12).mean())) if len(e) else None}


def refined(picker, ds: Dataset, c: Cands, picks, suppress=True):
    """``picks`` re-centred by the product's refinement step (hydrapicker.picker.refined: the centre map
    read around each pick, then the product's ranking again: edges and, unless ``suppress`` is False,
    duplicate suppression)."""
    from hydrapicker.picker import refined as product_refined

    kw = {} if suppress is True else {"min_distance_A": float(suppress or 0.0) * ds.diameter_A}
    policy = picker.policy(ds.diameter_A, threshold=None, find_invalid=False, **kw)
    return product_refined(picker.refiner, c.raw.cmap, c.raw.prepared, picks, policy)


def cpu_per_micrograph(ds: Dataset, model, refine, repeats: int = 2) -> float:
    """CPU seconds per micrograph of Picker.pick (reading, preparation, network, decoding, ranking, and the
    refinement when ``refine``), after one warm-up micrograph; the best of ``repeats`` passes."""
    from hydrapicker.picker import Picker
    from hydrapicker.types import Micrograph

    p = Picker(model, device="cpu", log=lambda *a: None, refine=refine)
    mics = [Micrograph(str(path), pixel_size=ds.pixel_size, name=stem) for stem, path in zip(ds.stems, ds.mic_paths)]
    policy = p.policy(ds.diameter_A, threshold=None)
    list(p.pick(mics[:1], ds.diameter_A, policy=policy))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        list(p.pick(mics, ds.diameter_A, policy=policy))
        best = min(best, (time.process_time() - t0) / len(mics))
    return best


def analyse(ds: Dataset, picker, args, work: Path, refiner=None) -> dict:
    box = ds.box_px
    min_d = 0.5 * box  # defaults.MIN_DISTANCE_DIAMETERS * D
    floor = float(picker.meta.get("floor", 0.05))
    stride = picker.stride
    scale_px = None
    t0 = time.perf_counter()
    raws = raw_grids(picker, ds)
    t_infer = time.perf_counter() - t0
    cands = {s: candidates(r, floor) for s, r in raws.items()}
    keeps = {s: shipped_keep(c, min_d) for s, c in cands.items()}
    truth = ds.truth

    # ---- the product's picks (hydra pick --all) and their agreement with the re-implemented decoding
    cli = {}
    if not args.no_cli:
        from bench_pickers import run_hydra

        extra = ["--no-refine"] if refiner is None else (["--refiner", str(Path(args.refiner).resolve())]
                                                         if args.refiner else ["--refine"])
        run = run_hydra(ds, work / ds.name, model=args.model, threads=args.threads, extra=extra)
        if run.error:
            print(f"[centres] {ds.name}: hydra pick failed: {run.error}", flush=True)
        else:
            from scipy.spatial import cKDTree

            dmax, nmiss = 0.0, 0
            for s in ds.stems:
                mine = cands[s].xy[keeps[s]]
                if refiner is not None:
                    r_ = refined(picker, ds, cands[s], picks_of(mine, cands[s].score[keeps[s]]))
                    mine = r_.xy()
                theirs = run.picks.get(s)
                if theirs is None or not len(theirs) or not len(mine):
                    nmiss += abs(len(mine) - (0 if theirs is None else len(theirs)))
                    continue
                d, _ = cKDTree(theirs.xy()).query(mine)
                dmax = max(dmax, float(d.max()))
                nmiss += abs(len(mine) - len(theirs))
            cli = {"picks": run.picks, "cpu_s": round(run.cpu_s, 2), "max_shift_px": round(dmax, 3),
                   "count_difference": int(nmiss)}

    # ---- variants on the same raw grids
    variant_picks = {v: {} for v in VARIANTS}
    for s, c in cands.items():
        k = keeps[s]
        fom = c.score[k]
        variant_picks["shipped"][s] = picks_of(c.xy[k], fom)
        cell = c.to_mic((c.j + 0.5) * stride - 0.5, (c.i + 0.5) * stride - 0.5)
        ok = np.flatnonzero(inside(cell, c.raw.shape))
        kc = ok[nms(cell[ok], c.score[ok], min_d)]
        variant_picks["cell"][s] = picks_of(cell[kc], c.score[kc])
        variant_picks["avg3x3"][s] = picks_of(refine_avg(c, k, box / 4), fom)
        variant_picks["avg3x3_D2"][s] = picks_of(refine_avg(c, k, box / 2), fom)
        variant_picks["avg3x3_all"][s] = picks_of(refine_avg(c, k, 0.0), fom)
        variant_picks["quad"][s] = picks_of(refine_quad(c, k), fom)
        variant_picks["reassign"][s] = picks_of(refine_reassign(c, k), fom)
        variant_picks["refined"][s] = refined(picker, ds, c, variant_picks["shipped"][s]) \
            if refiner is not None else variant_picks["shipped"][s]
        for name, frac in (("refined_nosup", 0.0), ("refined_sup10", 0.1), ("refined_sup25", 0.25)):
            variant_picks[name][s] = refined(picker, ds, c, variant_picks["shipped"][s], frac) \
                if refiner is not None else variant_picks["shipped"][s]

    # ---- oracle: per true particle, the best candidate centre (any cell above the floor)
    best_err, best_xy, kept_err, cat, nn_d, nn_dir, snr_of, src_cell, sat, offs = [], [], [], [], [], [], [], [], [], []
    outc = []
    snr = {m["name"]: m.get("snr") for m in ds.meta.get("micrographs", [])} if ds.kind == "simulated" else {}
    from hydrapicker.metrics import match_greedy

    for s in ds.stems:
        txy = truth[s]
        c = cands[s]
        k = keeps[s]
        p = variant_picks["shipped"][s]
        d_nn, k_nn = nearest_neighbour(txy)
        nn_d.append(d_nn / box)
        u = np.zeros((len(txy), 2))
        if len(txy) > 1:
            v = txy[k_nn] - txy
            u = v / np.maximum(np.hypot(v[:, 0], v[:, 1]), 1e-9)[:, None]
        nn_dir.append(u)
        snr_of += [snr.get(s)] * len(txy)
        if not len(txy):
            continue
        if len(c.score):
            from scipy.spatial import cKDTree

            dd, kk = cKDTree(c.xy).query(txy)
            best_err.append(dd / box)
            bxy = c.xy[kk]
        else:
            best_err.append(np.full(len(txy), np.inf))
            bxy = np.full((len(txy), 2), np.nan)
        best_xy.append(bxy)
        _, m = match_greedy(p, txy, box, centre=True)
        _, mi = match_greedy(p, txy, box, 0.6)
        e = np.full((len(txy), 2), np.nan)
        e[m >= 0] = p.xy()[m[m >= 0]] - txy[m >= 0]
        kept_err.append(e)
        cand_ok = iou_ok(bxy - txy, box) if len(c.score) else np.zeros(len(txy), bool)
        # categories: ok (kept pick passes IoU), select (kept pick within D/2 fails IoU, a candidate passes),
        # regress (kept pick within D/2 fails IoU, no candidate passes), missed (no pick within D/2)
        cc = np.where(mi >= 0, "ok", np.where(m < 0, np.where(cand_ok, "missed_cand_ok", "missed"),
                                              np.where(cand_ok, "select", "regress")))
        cat.append(cc)
        # source cell of the matched kept pick relative to the cell holding the true centre; offsets
        sc = np.full(len(txy), -1)
        sa = np.zeros(len(txy), bool)
        oc = np.zeros(len(txy), bool)
        of = np.full((len(txy), 4), np.nan)  # predicted dx, dy; true dx, dy (stride units, own cell only)
        if len(p):
            ck = k[np.maximum(m, 0)]  # candidate index of each matched pick
            tr = np.stack([txy[:, 0] * c.raw.scale[0], txy[:, 1] * c.raw.scale[1]], 1)  # rescaled px
            tj, ti = np.floor((tr[:, 0] + 0.5) / stride), np.floor((tr[:, 1] + 0.5) / stride)
            own = (c.i[ck] == ti) & (c.j[ck] == tj)
            sc = np.where(m < 0, -1, np.where(own, 0, np.maximum(np.abs(c.i[ck] - ti), np.abs(c.j[ck] - tj))))
            sa = (m >= 0) & (np.maximum(np.abs(c.dx[ck]), np.abs(c.dy[ck])) > 0.9 * OFFSET_RANGE)
            oc = (m >= 0) & (np.maximum(np.abs(c.dx[ck]), np.abs(c.dy[ck])) > 0.5)
            sel = (m >= 0) & own
            of[sel] = np.stack([c.dx[ck], c.dy[ck], (tr[:, 0] + 0.5) / stride - (tj + 0.5),
                                (tr[:, 1] + 0.5) / stride - (ti + 0.5)], 1)[sel]
        src_cell.append(sc)
        sat.append(sa)
        outc.append(oc)
        offs.append(of)
        # oracles: matched shipped picks moved to the own cell's candidate / the best candidate / the truth
        xs, xe, xo = p.xy().copy(), p.xy().copy(), p.xy().copy()
        hit = m >= 0
        xs[m[hit]] = bxy[hit]
        xe[m[hit]] = txy[hit]
        index = cell_index(c)
        tr = np.stack([txy[:, 0] * c.raw.scale[0], txy[:, 1] * c.raw.scale[1]], 1)
        for t in np.flatnonzero(hit).tolist():
            cell = (int(np.floor((tr[t, 1] + 0.5) / stride)), int(np.floor((tr[t, 0] + 0.5) / stride)))
            if cell in index:
                xo[m[t]] = c.xy[index[cell]]
        variant_picks["oracle_own"][s] = picks_of(xo, p.fom)
        variant_picks["oracle_select"][s] = picks_of(xs, p.fom)
        variant_picks["oracle_exact"][s] = picks_of(xe, p.fom)

    cat = np.concatenate(cat) if cat else np.zeros(0, str)
    best_err = np.concatenate(best_err) if best_err else np.zeros(0)
    nn_d = np.concatenate(nn_d) if nn_d else np.zeros(0)
    nn_dir = np.concatenate(nn_dir) if nn_dir else np.zeros((0, 2))
    kept_err = np.concatenate(kept_err) if kept_err else np.zeros((0, 2))
    src_cell = np.concatenate(src_cell) if src_cell else np.zeros(0, int)
    sat = np.concatenate(sat) if sat else np.zeros(0, bool)
    outc = np.concatenate(outc) if outc else np.zeros(0, bool)
    offs = np.concatenate(offs) if offs else np.zeros((0, 4))
    snr_of = np.asarray([np.nan if v is None else v for v in snr_of], float)

    # ---- the headline: product picks when the CLI ran, else the re-implemented decoding (equal)
    base = cli.get("picks") or variant_picks["refined" if refiner is not None else "shipped"]
    err, ok_iou = errors_of(base, truth, box)
    res = {"name": ds.name, "kind": ds.kind, "n_micrographs": len(ds.stems), "n_truth": ds.n_truth,
           "diameter_A": ds.diameter_A, "pixel_size": ds.pixel_size, "diameter_px": round(box, 2),
           "rescaled_px_per_px": round(float(np.mean([r.scale[0] for r in raws.values()])), 4),
           "stride_D": round(stride / float(picker.extent_px), 4),
           "source": ("hydra pick --all" if cli.get("picks") else "re-implemented decoding of raw grids")
           + (" with centre refinement" if refiner is not None else " (no refinement)"),
           "cli_check": {k: v for k, v in cli.items() if k != "picks"}, "seconds_infer": round(t_infer, 2)}
    res.update(ap_summary(base, truth, box))
    if args.timing and refiner is not None:
        plain = cpu_per_micrograph(ds, args.model, False)
        with_refiner = cpu_per_micrograph(ds, args.model, args.refiner or "shipped")
        res["cpu_s_per_micrograph"] = {"no_refine": round(plain, 4), "refine": round(with_refiner, 4),
                                       "ratio": round(with_refiner / plain, 3)}
    res["errors"] = err_stats(err, ok_iou, ds)
    res["errors_D_hist"] = np.histogram(np.hypot(*err[~np.isnan(err[:, 0])].T) / box, bins=40,
                                        range=(0, 0.5))[0].tolist()
    e_before, _ = errors_of(variant_picks["shipped"], truth, box)
    res["errors_D_hist_unrefined"] = np.histogram(np.hypot(*e_before[~np.isnan(e_before[:, 0])].T) / box, bins=40,
                                                  range=(0, 0.5))[0].tolist()
    # crowding
    res["crowding"] = {}
    for lo, hi, label in CROWDING_BINS:
        sel = (nn_d >= lo) & (nn_d < hi)
        st = err_stats(err[sel], ok_iou[sel], ds)
        st["frac_of_particles"] = round(float(sel.mean()), 3) if len(sel) else None
        st["oracle_recall_iou"] = (round(float(np.isin(cat[sel], ("ok", "select", "missed_cand_ok")).mean()), 4)
                                   if sel.any() else None)
        st["select_fixable"] = round(float((cat[sel] == "select").mean()), 4) if sel.any() else None
        st["regression_limited"] = round(float((cat[sel] == "regress").mean()), 4) if sel.any() else None
        res["crowding"][label] = st
    # SNR halves (micrographs split at the set's median snr)
    if ds.kind == "simulated" and np.isfinite(snr_of).any():
        per_mic = {s: snr.get(s) for s in ds.stems if snr.get(s) is not None and len(truth[s])}
        med = float(np.median(list(per_mic.values()))) if per_mic else math.nan
        res["snr"] = {"median_snr": round(med, 4)}
        for label, test in (("low", lambda v: v <= med), ("high", lambda v: v > med)):
            stems = [s for s, v in per_mic.items() if test(v)]
            if not stems:
                continue
            sub_t = {s: truth[s] for s in stems}
            st = ap_summary({s: base[s] for s in stems if s in base}, sub_t, box)
            e2, ok2 = errors_of({s: base[s] for s in stems if s in base}, sub_t, box)
            st.update(err_stats(e2, ok2, ds))
            st["snr_range"] = [round(min(per_mic[s] for s in stems), 4), round(max(per_mic[s] for s in stems), 4)]
            res["snr"][label] = st
    # diagnosis
    n = len(cat)
    frac = lambda mask: round(float(mask.mean()), 4) if n else None  # noqa: E731
    matched = src_cell >= 0
    bad = np.isin(cat, ("select", "regress"))
    e_norm = np.hypot(kept_err[:, 0], kept_err[:, 1])
    crowded = matched & (nn_d < 1.2)
    pull = (kept_err * nn_dir).sum(1) / box
    own = ~np.isnan(offs[:, 0])
    slope = None
    if own.sum() > 10:
        pt = np.r_[offs[own, 0], offs[own, 1]]
        tt = np.r_[offs[own, 2], offs[own, 3]]
        slope = round(float(np.cov(pt, tt)[0, 1] / np.var(tt, ddof=1)), 3)
    res["diagnosis"] = {
        "particles": n,
        "ok_iou": frac(cat == "ok"),
        "select_fixable": frac(cat == "select"),        # kept pick fails IoU, some candidate passes it
        "regression_limited": frac(cat == "regress"),   # kept pick fails IoU, no candidate passes it
        "missed_but_candidate_ok": frac(cat == "missed_cand_ok"),
        "missed": frac(cat == "missed"),
        "oracle_recall_iou": frac(np.isin(cat, ("ok", "select", "missed_cand_ok"))),
        "best_candidate_median_D": q(best_err[np.isfinite(best_err)], 0.5),
        "best_candidate_p90_D": q(best_err[np.isfinite(best_err)], 0.9),
        "kept_from_own_cell": round(float((src_cell[matched] == 0).mean()), 4) if matched.any() else None,
        "kept_from_own_cell_among_iou_fail": (round(float((src_cell[bad] == 0).mean()), 4) if bad.any() else None),
        "median_err_D_own_cell": q(e_norm[matched & (src_cell == 0)] / box, 0.5),
        "median_err_D_other_cell": q(e_norm[matched & (src_cell > 0)] / box, 0.5),
        "offset_saturated": round(float(sat[matched].mean()), 4) if matched.any() else None,
        "kept_centre_outside_own_cell": round(float(outc[matched].mean()), 4) if matched.any() else None,
        "offset_slope_pred_vs_true": slope,   # 1 = resolves sub-cell position; 0 = predicts the cell centre
        "offset_resid_median_stride": (q(np.hypot(offs[own, 0] - offs[own, 2], offs[own, 1] - offs[own, 3]), 0.5)
                                       if own.any() else None),
        "pull_to_neighbour_mean_D_crowded": round(float(np.mean(pull[crowded])), 4) if crowded.any() else None,
        "pull_to_neighbour_mean_D_isolated": (round(float(np.mean(pull[matched & (nn_d >= 1.2)])), 4)
                                              if (matched & (nn_d >= 1.2)).any() else None),
    }
    for key in ("best_candidate_median_D", "best_candidate_p90_D", "median_err_D_own_cell",
                "median_err_D_other_cell", "offset_resid_median_stride"):
        v = res["diagnosis"][key]
        res["diagnosis"][key] = None if v is None else round(v, 4)
    res["best_candidate_D_hist"] = np.histogram(best_err[np.isfinite(best_err)], bins=40, range=(0, 0.5))[0].tolist()
    # variants
    res["variants"] = {}
    for v in VARIANTS:
        st = ap_summary(variant_picks[v], truth, box)
        e, ok = errors_of(variant_picks[v], truth, box)
        es = err_stats(e, ok, ds)
        st.update({"median_D": es["median_D"], "p90_D": es["p90_D"], "frac_le_D12": es["frac_le_D12"]})
        res["variants"][v] = st
    return res


# ------------------------------------------------------------------------------------------- output
def table(results: list) -> str:
    f = lambda v, k=3: "-" if v is None else f"{v:.{k}f}"  # noqa: E731
    lines = ["| set | D (A / px) | AP_D/2 | AP | gap | recall D/2 / IoU | median err A (D) | p90 err A (D) | "
             "<1.0D: share, recall IoU, median D | >=1.2D: share, recall IoU, median D |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        e = r["errors"]
        c0, c2 = r["crowding"]["<1.0D"], r["crowding"][">=1.2D"]
        lines.append(
            f"| {r['name']} | {r['diameter_A']:g} / {r['diameter_px']:.1f} | {f(r['AP_D2'])} | {f(r['AP'])} | "
            f"{f(r['gap'])} | {f(r['recall_D2'])} / {f(r['recall_iou'])} | {f(e['median_A'], 1)} ({f(e['median_D'])}) | "
            f"{f(e['p90_A'], 1)} ({f(e['p90_D'])}) | {f(c0['frac_of_particles'], 2)}, {f(c0['recall_iou'])}, "
            f"{f(c0['median_D'])} | {f(c2['frac_of_particles'], 2)}, {f(c2['recall_iou'])}, {f(c2['median_D'])} |")
    lines += ["", "Before (detector's centres) / after (refined), every pick kept:",
              "| set | AP_D/2 | AP (IoU 0.6) | gap | median err D | p90 err D | <= D/12 |", "|---|---|---|---|---|---|---|"]
    if any("cpu_s_per_micrograph" in r for r in results):
        lines[-2] = lines[-2] + " CPU s/micrograph without / with (ratio) |"
        lines[-1] += "---|"
    for r in results:
        b, a = r["variants"]["shipped"], r["variants"]["refined"]
        t = r.get("cpu_s_per_micrograph")
        tcell = f" {t['no_refine']:.3f} / {t['refine']:.3f} ({t['ratio']:.2f}x) |" if t else (
            " - |" if any("cpu_s_per_micrograph" in x for x in results) else "")
        lines.append(f"| {r['name']} | {f(b['AP_D2'])} / {f(a['AP_D2'])} | {f(b['AP'])} / {f(a['AP'])} | "
                     f"{f(b['gap'])} / {f(a['gap'])} | {f(b['median_D'])} / {f(a['median_D'])} | "
                     f"{f(b['p90_D'])} / {f(a['p90_D'])} | {f(b['frac_le_D12'])} / {f(a['frac_le_D12'])} |" + tcell)
    lines += ["", "SNR halves (simulated): AP_D/2 / AP / median err D, low | high",
              "| set | low snr | high snr |", "|---|---|---|"]
    for r in results:
        if "snr" in r:
            cells = []
            for h in ("low", "high"):
                s = r["snr"].get(h)
                cells.append("-" if not s else f"{f(s['AP_D2'])} / {f(s['AP'])} / {f(s['median_D'])} "
                                               f"(snr {s['snr_range'][0]:.3g}-{s['snr_range'][1]:.3g})")
            lines.append(f"| {r['name']} | {cells[0]} | {cells[1]} |")
    lines += ["", "Diagnosis (fractions of true particles; kept = the pick matched under D/2):",
              "| set | ok IoU | select-fixable | regression-limited | missed | oracle recall IoU | best cand. median D | "
              "own cell | median D own / other cell | offset slope | resid (stride) | pull crowded D |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        d = r["diagnosis"]
        lines.append(f"| {r['name']} | {f(d['ok_iou'])} | {f(d['select_fixable'])} | {f(d['regression_limited'])} | "
                     f"{f((d['missed'] or 0) + (d['missed_but_candidate_ok'] or 0))} | {f(d['oracle_recall_iou'])} | "
                     f"{f(d['best_candidate_median_D'])} | {f(d['kept_from_own_cell'])} | "
                     f"{f(d['median_err_D_own_cell'])} / {f(d['median_err_D_other_cell'])} | "
                     f"{f(d['offset_slope_pred_vs_true'])} | {f(d['offset_resid_median_stride'])} | "
                     f"{f(d['pull_to_neighbour_mean_D_crowded'])} |")
    lines += ["", "Variants (same raw grids): AP (IoU 0.6) / median err D", "| set | " + " | ".join(VARIANTS) + " |",
              "|---|" + "---|" * len(VARIANTS)]
    for r in results:
        lines.append(f"| {r['name']} | " + " | ".join(f"{f(r['variants'][v]['AP'])} / {f(r['variants'][v]['median_D'])}"
                                                     for v in VARIANTS) + " |")
    return "\n".join(lines)


def analyse_adapted(ds: Dataset, picker, args, work: Path) -> dict:
    """:func:`analyse` with the refiner adapted to ``ds``'s own micrographs (the product's
    ``picker_with_adapted_refiner``, as ``hydra pick --adapt``; ``picker``'s own centres, the detector's unless
    --refiner, when its guard refuses), started from the shipped refiner."""
    from hydrapicker.refine_adapt import picker_with_adapted_refiner
    from hydrapicker.types import Micrograph

    mics = [Micrograph(str(p), pixel_size=ds.pixel_size, name=s) for s, p in zip(ds.stems, ds.mic_paths)]
    (work / "adapted_refiners").mkdir(parents=True, exist_ok=True)  # beside the CLI run's folder, which is remade
    t0 = time.perf_counter()
    adapted, ra = picker_with_adapted_refiner(picker, mics, ds.diameter_A, work / "adapted_refiners" / f"{ds.name}.pt",
                                              reuse=False, log=lambda *a: None)
    secs = time.perf_counter() - t0
    used = adapted.refiner
    set_args = argparse.Namespace(**{**vars(args), "refiner": None if used is None else str(used.path)})
    r = analyse(ds, adapted, set_args, work, used)
    r["adapted_refiner"] = {"accepted": ra.accepted, "reason": ra.reason, "seconds": round(secs, 1),
                            "positives": ra.record.get("positives"),
                            "refiner": None if used is None else str(used.path)}
    return r


def figure(results: list, path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    from hydrapicker.atomic import atomic_path

    n = len(results)
    cols = 4
    rows = max(1, -(-n // cols))
    fig = Figure(figsize=(3.2 * cols, 2.5 * rows), dpi=110)
    edges = np.linspace(0, 0.5, 41)
    for k, r in enumerate(results):
        ax = fig.add_subplot(rows, cols, k + 1)
        h = np.asarray(r["errors_D_hist"], float)
        b = np.asarray(r["best_candidate_D_hist"], float)
        tot = max(h.sum(), 1.0)
        ax.bar(edges[:-1], h / tot, width=edges[1] - edges[0], align="edge", color="tab:blue", alpha=0.7,
               label="kept pick" + (" (refined)" if "refinement" in r["source"] and "no refinement" not in r["source"] else ""))
        ax.step(edges, np.r_[b / max(b.sum(), 1.0), 0], where="post", color="tab:orange", lw=1.2,
                label="best candidate (oracle)")
        u = np.asarray(r.get("errors_D_hist_unrefined") or [], float)
        if len(u) and r["variants"]["refined"] != r["variants"]["shipped"]:
            ax.step(edges, np.r_[u / max(u.sum(), 1.0), 0], where="post", color="k", lw=1.0,
                    label="before refinement")
        ax.axvline(1 / 12, color="k", ls=":", lw=0.8)
        ax.axvline(0.25, color="tab:red", ls="--", lw=0.8)
        e = r["errors"]
        ad = r.get("adapted_refiner")
        which = "" if ad is None else (" (adapted)" if ad["accepted"] else
                                       f" ({'shipped' if ad.get('refiner') else 'detector'}: too few confident)")
        ax.set_title(f"{r['name']}{which}\nAP {r['AP']:.2f} vs AP_D/2 {r['AP_D2']:.2f}, median {e['median_D']:.3f} D",
                     fontsize=7.5)
        ax.tick_params(labelsize=7)
        if k % cols == 0:
            ax.set_ylabel("fraction of matched", fontsize=7)
        if k >= n - cols:
            ax.set_xlabel("centre error / D  (dotted D/12, dashed D/4)", fontsize=7)
        if k == 0:
            ax.legend(fontsize=6, loc="upper right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="+", default=["targets", "custom", "real"],
                   help="targets, custom, real, or names (t_rod, c_touching_proteasome, a real set) / dirs")
    p.add_argument("--model", default=None, help="model file (default: the shipped model)")
    p.add_argument("--n-sim", type=int, default=5, help="micrographs per simulated set (default 5)")
    p.add_argument("--n-real", type=int, default=None, help="first N micrographs of each real set (default all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-cli", action="store_true", help="skip hydra pick --all (use the re-implemented decoding)")
    p.add_argument("--no-refine", action="store_true", help="the detector's centres only (as before issue 18's refiner)")
    p.add_argument("--refiner", default=None, help="centre refiner file (default: the shipped one)")
    p.add_argument("--adapt-centres", action="store_true",
                   help="per set, the refiner adapted to the set's own micrographs (hydra pick --adapt-centres, no "
                        "labels) re-centres the picks; the figure's 'before refinement' is the detector's centres")
    p.add_argument("--prior-D", type=float, default=None, help="the refiner's preference for near cells (D; 0 = none)")
    p.add_argument("--max-shift-D", type=float, default=None, help="the refiner's largest move (D)")
    p.add_argument("--timing", action="store_true",
                   help="also CPU time per micrograph with and without refinement (Picker.pick, every pick kept)")
    p.add_argument("--tag", default="after")
    p.add_argument("--work", default="/tmp/hydra_bench/centres")
    p.add_argument("--sim-cache", default="/tmp/hydra_bench/sim")
    p.add_argument("--json", default=None, help="default docs/benchmarks/centres_<tag>_<date>.json")
    p.add_argument("--figure", default=None, help="default docs/figures/centre_errors_<tag>_<date>.png (a committed "
                   "figure of another day is never overwritten)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    global OFFSET_RANGE
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    try:
        from hydrapicker.postprocess import OFFSET_RANGE as _R

        OFFSET_RANGE = float(_R)
    except ImportError:
        pass
    from hydrapicker.picker import Picker

    # --adapt-centres starts as hydra pick --adapt does: from the detector's centres, kept where the guard refuses
    picker = Picker(args.model, device="cpu", log=lambda *a: None,
                    refine=False if args.no_refine or (args.adapt_centres and not args.refiner)
                    else (args.refiner or "shipped"))
    refiner = picker.refiner  # None: --no-refine, none installed, or made for another body
    if refiner is not None and args.prior_D is not None:
        refiner.prior_D = args.prior_D
    if refiner is not None and args.max_shift_D is not None:
        refiner.max_shift_D = args.max_shift_D
    work = Path(args.work)
    sets = resolve(args.sets, args.n_sim, Path(args.sim_cache))
    results = []
    for root, kind in sets:
        ds = load_dataset(root, n_micrographs=args.n_real if kind == "real" else None, kind=kind)
        t0 = time.perf_counter()
        if args.adapt_centres:
            r = analyse_adapted(ds, picker, args, work)
        else:
            r = analyse(ds, picker, args, work, refiner)
        r["seconds"] = round(time.perf_counter() - t0, 1)
        results.append(r)
        e = r["errors"]
        print(f"[centres] {r['name']}: AP_D/2 {r['AP_D2']:.3f} AP {r['AP']:.3f} median {e['median_D']} D "
              f"oracle recall IoU {r['diagnosis']['oracle_recall_iou']} ({r['seconds']} s)", flush=True)
    print(table(results))
    date = datetime.date.today().isoformat()
    out = Path(args.json) if args.json else REPO / "docs" / "benchmarks" / f"centres_{args.tag}_{date}.json"
    fig = Path(args.figure) if args.figure else REPO / "docs" / "figures" / f"centre_errors_{args.tag}_{date}.png"
    meta = {"date": date, "command": "python benchmarks/centres.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "model": args.model or "shipped default",
            "refiner": None if refiner is None else refiner.path, "picker_meta": {k: picker.meta.get(k) for k in
            ("preset", "stride", "extent_px", "floor", "temperature", "default_threshold")},
            "host": platform.node(), "threads": args.threads, "n_sim": args.n_sim,
            "crowding_bins_D": [[lo, hi if math.isfinite(hi) else None] for lo, hi, _ in CROWDING_BINS],
            "custom_specs": {k: s.to_dict() for k, s in custom_specs().items()}}
    from hydrapicker.atomic import write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps({"meta": meta, "sets": results, "table": table(results)}, indent=1))
    figure(results, fig, f"Centre error of matched picks (D/2 rule), {meta['model']}, {args.tag}")
    print(f"[centres] wrote {out} and {fig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
