"""Choose between model files on fresh simulated data that none of them was trained on.

The shipped model is chosen here, not on the benchmark's held-out targets (those report accuracy) nor on the
real sets (validation only): each candidate's generic head picks the validation micrographs of
``--datasets`` new source-family datasets drawn with a seed no training stage used (default 3; the shipped
recipe's stages used seeds 0, 1 and 2), prepared exactly as in training; the table gives AP (thesis rule) per
model, the mean, and how many datasets each model wins.

Usage:
  python benchmarks/select_model.py hydrapicker/weights/generic.pt runs/generic3/model.pt --datasets 24
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="model files to compare")
    ap.add_argument("--datasets", type=int, default=24)
    ap.add_argument("--mics", type=int, default=3, help="micrographs per dataset")
    ap.add_argument("--seed", type=int, default=3, help="dataset seed; must differ from every training stage's")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch

    from hydrapicker.checkpoint import load_checkpoint
    from hydrapicker.model import GENERIC
    from hydrapicker.simulate import source_dataset_specs
    from hydrapicker.train import evaluate_sets, simulate_sets

    torch.set_num_threads(args.threads)
    nets = {m: load_checkpoint(m)[0].eval() for m in args.models}
    for m, net in nets.items():
        seeds = [(net_meta.get("recipe") or {}).get("seed") for net_meta in
                 _lineage(load_checkpoint(m)[1].get("training") or {})]
        if args.seed in seeds:
            raise SystemExit(f"{m} was trained on datasets of seed {args.seed}; choose another --seed")
    first = next(iter(nets.values()))
    specs = source_dataset_specs(n=args.datasets, seed=args.seed)
    sets = simulate_sets(specs, args.mics, first.preset.extent_px, 0.0, args.seed + 1, workers=args.threads,
                         first_index=20_000)
    res = {m: {n: r["AP"] for n, r in evaluate_sets(net, sets, lambda n: GENERIC, net.stride,
                                                     net.preset.extent_px).items()}
           for m, net in nets.items()}
    names = [s.name for s in specs]
    print(f"{'dataset':<28}" + "".join(f"{Path(m).parent.name + '/' + Path(m).name:>34}" for m in args.models))
    for n in names:
        print(f"{n:<28}" + "".join(f"{res[m][n]:>34.3f}" for m in args.models))
    best = {m: sum(res[m][n] >= max(res[o][n] for o in args.models) for n in names) for m in args.models}
    print(f"{'mean':<28}" + "".join(f"{np.mean([res[m][n] for n in names]):>34.3f}" for m in args.models))
    print(f"{'datasets won (ties count)':<28}" + "".join(f"{best[m]:>34d}" for m in args.models))
    if args.json:
        Path(args.json).write_text(json.dumps({"seed": args.seed, "datasets": args.datasets, "mics": args.mics,
                                               "AP": res}, indent=1))
    return 0


def _lineage(training: dict) -> list:
    """A model's training record and those of the models it was initialised from."""
    out = []
    while training:
        out.append(training)
        training = training.get("init_from") or {}
    return out


if __name__ == "__main__":
    sys.exit(main())
