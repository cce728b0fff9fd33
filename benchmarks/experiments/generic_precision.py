#!/usr/bin/env python
"""The generic head's precision at its calibrated threshold, under the IoU rule and the D/2 rule, on the
32 random training-family tuning sets of fused_suppression.py (make them with `python
benchmarks/experiments/fused_suppression.py make`): the nominal precision of the few-shot label-fraction
estimate (hydrapicker.defaults.LABEL_FRACTION_NOMINAL_PRECISION).

  OMP_NUM_THREADS=1 python benchmarks/experiments/generic_precision.py
"""
import sys, numpy as np
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'benchmarks')); sys.path.insert(0, str(ROOT))
from bench_data import load_dataset
from hydrapicker.picker import Picker, configure_torch
from hydrapicker.types import Micrograph
from hydrapicker.metrics import match_greedy
from hydrapicker.checkpoint import DEFAULT_MODEL
configure_torch(1)
picker = Picker(str(DEFAULT_MODEL), device='cpu', log=lambda *a, **k: None, refine=False)
P_iou, P_c = [], []
tot = np.zeros(3)
for k in range(32):
    ds = load_dataset(f'/work/bench/simfuse/tune_fuse_{k}_n3')
    pol = picker.policy(ds.diameter_A, 'generic', threshold='model')
    n = np.zeros(3)
    for stem, path in zip(ds.stems, ds.mic_paths):
        p = picker.pick_one(Micrograph(str(path), pixel_size=ds.pixel_size), ds.diameter_A, policy=pol)
        t = ds.truth[stem]
        if not len(p): continue
        a, _ = match_greedy(p, t, ds.box_px); b, _ = match_greedy(p, t, ds.box_px, centre=True)
        n += [len(p), (a >= 0).sum(), (b >= 0).sum()]
    tot += n
    if n[0]: P_iou.append(n[1]/n[0]); P_c.append(n[2]/n[0])
print('pooled precision IoU %.3f  D/2 %.3f' % (tot[1]/tot[0], tot[2]/tot[0]))
print('median per set IoU %.3f D/2 %.3f' % (np.median(P_iou), np.median(P_c)))
