#!/usr/bin/env python
"""Experiment: re-estimate the network's batch-norm statistics on the data set being picked (AdaBN, Li et al.
2016), with no labels and no training.

Why it might help: `hydra train` builds every mini-batch from one source dataset, so during training each
layer normalised its features with *one dataset's* statistics; at inference the running averages mix the
last datasets seen. Re-estimating them on the micrographs being picked gives the network the per-dataset
normalisation it was trained with (and follows a shift to real data).

Per set of issue 17's adaptation benchmark (`benchmarks/adapt.py`'s sets and scoring: the test micrographs,
AP with every pick kept, F1 of the written picks at the model's threshold): zero-shot, then the same picker
after its statistics were re-estimated on ``--sample`` of the set's own micrographs.

  OMP_NUM_THREADS=1 python benchmarks/experiments/adabn.py --sets t_small80kda real --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

from adapt import SIM_SETS, _score, _sets  # noqa: E402


def renormalise(picker, mics, diameter_A, head: str, sample: int, prior: float = 0.0) -> int:
    """Reset the body's and ``head``'s batch-norm statistics and re-estimate them (cumulative average) on
    ``sample`` micrographs spread over ``mics``, prepared as the picker prepares them; ``prior``: the weight
    of the model's own statistics in the result (Schneider et al. 2020: prior x source + (1 - prior) x
    target, for means and variances). Returns how many micrographs were used."""
    import torch

    from hydrapicker.adapt import sample_micrographs

    mods = [picker.net.body, picker.net.heads[head]]
    bns = [m for mod in mods for m in mod.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    source = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    used = sample_micrographs(list(mics), sample)
    with torch.no_grad():
        for mic in used:
            loaded, _, _ = picker._read(mic, diameter_A)
            img = picker._prepared(loaded, mic, diameter_A).image
            picker.net.heads[head](picker.net.body(img[None, None].float()))
    for m, (mu, var) in zip(bns, source):
        m.running_mean.mul_(1 - prior).add_(prior * mu)
        m.running_var.mul_(1 - prior).add_(prior * var)
        m.eval()
    return len(used)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sets", nargs="+", default=list(SIM_SETS) + ["real"])
    p.add_argument("--n-sim", type=int, default=12)
    p.add_argument("--model", default=None)
    p.add_argument("--sample", type=int, default=24)
    p.add_argument("--prior", type=float, default=0.0, help="weight of the model's own statistics (0-1)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "hydra_bench_adapt"))
    p.add_argument("--draw", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from hydrapicker.picker import Picker, configure_torch

    configure_torch(args.threads)
    rows = []
    for item in _sets(args.sets, args):
        name, kind, mics, truth, diameter_A, box_px, _ = item
        base = Picker(args.model, log=None)
        head = base.default_head
        row = {"set": name, "kind": kind, "n_test": len(mics)}
        row["zero_shot"] = _score(base, head, mics, truth, diameter_A, box_px, base.default_threshold)
        t0 = time.time()
        row["n_sample"] = renormalise(base, mics, diameter_A, head, args.sample, args.prior)
        row["seconds"] = round(time.time() - t0, 1)
        row["adabn"] = _score(base, head, mics, truth, diameter_A, box_px, base.default_threshold)
        z, a = row["zero_shot"], row["adabn"]
        print(f"{name:34s} AP {z['AP']:.3f} -> {a['AP']:.3f} ({a['AP'] - z['AP']:+.3f})   F1 {z['F1']:.3f} -> "
              f"{a['F1']:.3f}   AP_D/2 {z['AP_centre']:.3f} -> {a['AP_centre']:.3f}   {row['seconds']} s", flush=True)
        rows.append(row)
    d = {k: np.mean([r["adabn"][k] - r["zero_shot"][k] for r in rows]) for k in ("AP", "F1", "AP_centre")}
    print(f"mean change: AP {d['AP']:+.4f}, F1 {d['F1']:+.4f}, AP_D/2 {d['AP_centre']:+.4f}; worst AP "
          f"{min(r['adabn']['AP'] - r['zero_shot']['AP'] for r in rows):+.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
