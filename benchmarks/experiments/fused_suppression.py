#!/usr/bin/env python
"""Experiment (issue 18, not shipped): fused duplicate suppression.

After greedy suppression, each kept pick moves to the FOM^P-weighted mean position of every candidate
whose decoded centre lies within R x D of it (cells of one particle vote for its centre, "weighted box
fusion"). Prints AP (IoU rule) and AP_D/2 per set for the default model, every pick kept.

  OMP_NUM_THREADS=1 python benchmarks/experiments/fused_suppression.py base          # greedy suppression only
  OMP_NUM_THREADS=1 python benchmarks/experiments/fused_suppression.py fused 0.3 [P]
  TUNE=1 ... (32 random training-family sets of 3 micrographs, seeds 7100-7131: the tuning sets; make them
  first with `python benchmarks/experiments/fused_suppression.py make`), else the 8 held-out targets
  (benchmarks/accuracy.py's 8-micrograph cache in /work/bench/simcache); REAL=1: the two real validation sets.
"""
import sys, numpy as np
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'benchmarks')); sys.path.insert(0, str(ROOT))
from bench_data import load_dataset
import dataclasses

import hydrapicker.postprocess as pp
from hydrapicker.picker import Picker, configure_torch
from hydrapicker.types import Micrograph, Picks
from hydrapicker.metrics import evaluate
configure_torch(1)
mode = sys.argv[1]
if mode == 'make':
    from hydrapicker.simulate.datasets import random_dataset_spec
    from bench_data import simulated_dataset
    for k in range(32):
        simulated_dataset(random_dataset_spec(7100 + k, name=f'tune_fuse_{k}'), Path('/work/bench/simfuse'), 3)
    sys.exit(0)
rf = float(sys.argv[2]) if len(sys.argv) > 2 else 0.25


def fused_rank(candidates, policy, invalid=None):
    # the core's filtering (floor, edge, invalid areas) with suppression off, then its suppression
    allc = ORIGINAL_RANK(candidates, dataclasses.replace(policy, min_distance_A=0.0), invalid)
    xy, score = allc.xy(), allc.fom
    md = float(policy.min_distance_A) / float(candidates.pixel_size)
    order = pp.suppress_duplicates(xy, score, md)
    # fuse: each kept pick's position -> score-weighted mean of the candidates within rf*D of it
    D = 2 * md  # min distance is D/2 by default
    from scipy.spatial import cKDTree
    t = cKDTree(xy)
    out = xy[order].copy()
    for n, i in enumerate(order):
        nb = t.query_ball_point(xy[i], rf * D)
        if len(nb) > 1:
            w = score[nb] ** (float(sys.argv[3]) if len(sys.argv) > 3 else 1.0)
            out[n] = (xy[nb] * w[:, None]).sum(0) / w.sum()
    return Picks(out[:, 0], out[:, 1], score[order])

ORIGINAL_RANK = pp.rank
if mode == 'fused':
    pp.rank = fused_rank
from hydrapicker.checkpoint import DEFAULT_MODEL
picker = Picker(str(DEFAULT_MODEL), device='cpu', log=lambda *a, **k: None, refine=False)
import os
TUNE = os.environ.get('TUNE')
REAL = os.environ.get('REAL')
sets = ['/work/shared/data/real/apoferritin_empiar10146', '/work/shared/data/real/ribosome80s_empiar10028'] if REAL else [f'tune_fuse_{k}' for k in range(32)] if TUNE else ['t_small80kda','t_rod','t_ferritin_crowded','t_ribosome','t_proteasome','t_micelle','t_virus','t_dumbbell_pp']
res = []
for s in sets:
    ds = load_dataset(s if REAL else f'/work/bench/simfuse/{s}_n3' if TUNE else f'/work/bench/simcache/{s}_n8')
    pol = picker.policy(ds.diameter_A, 'generic', threshold=None)
    picks = {}
    for stem, path in zip(ds.stems, ds.mic_paths):
        picks[stem] = picker.pick_one(Micrograph(str(path), pixel_size=ds.pixel_size), ds.diameter_A, policy=pol)
    r = evaluate(picks, ds.truth, ds.box_px, warn=lambda m: None)
    res.append((s, r['AP'], r['AP_centre']))
    print(f"{s:20s} AP {r['AP']:.3f} AP_c {r['AP_centre']:.3f}", flush=True)
print('mean AP', np.mean([r[1] for r in res]).round(4), 'mean AP_c', np.mean([r[2] for r in res]).round(4))
