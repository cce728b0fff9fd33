#!/usr/bin/env python
"""Experiment (issue 17): ``--adapt`` on micrographs of a user's size, not the benchmark's 768².

The adapt benchmark (``benchmarks/adapt.py``) adapts on 12 micrographs of 512-1024 px, 190-470 px at the
working scale. A user's 4096² micrographs are 450-1300 px there, so the same 24-micrograph sample holds
several times the pixels: caching the body features of 8 dihedral orientations then takes most of the
head's two minutes (``AdaptSettings.max_minutes`` counts it), and the head trains for one epoch. This script
renders benchmark targets at ``--size`` (same particles and imaging, larger field), adapts on all of them,
and reports AP (every pick kept, IoU rule), F1 of the written picks, the seconds ``--adapt`` takes, and
the orientations cached and epochs trained, per ``--setting`` (AdaptSettings fields, as in adapt.py).

  OMP_NUM_THREADS=1 python benchmarks/experiments/adapt_large.py --sets t_small80kda t_proteasome --size 2048 --n 12
  ... --setting cache_gb=0.4
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from adapt import _score, _settings, _spec  # noqa: E402
from bench_data import _star_path, load_dataset, simulated_dataset  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="+", default=["t_small80kda", "t_proteasome"])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--n", type=int, default=12)
    p.add_argument("--setting", action="append", default=[], metavar="K=V")
    p.add_argument("--model", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--centres", action="store_true", help="also --adapt-centres after --adapt")
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "hydra_bench_adapt"))
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv=None):
    import torch

    from hydrapicker.adapt import adapt
    from hydrapicker.checkpoint import read_checkpoint
    from hydrapicker.micrographs import read_micrographs_star
    from hydrapicker.picker import Picker

    args = parse(argv)
    torch.set_num_threads(args.threads)
    settings = _settings(args)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hydra-adapt-large-") as work:
        work = Path(work)
        for name in args.sets:
            spec = _spec(name).replace(shape=(args.size, args.size), name=f"{name}_{args.size}")
            root = simulated_dataset(spec, Path(args.cache), args.n)
            ds = load_dataset(root)
            mics = read_micrographs_star(_star_path(root))
            truth = {n: ds.truth[s] for s, n in zip(ds.stems, ds.mic_names)}
            base = Picker(args.model, log=None)
            row = {"set": spec.name, "n": len(mics), "diameter_A": ds.diameter_A}
            row["zero_shot"] = _score(base, base.default_head, mics, truth, ds.diameter_A, ds.box_px,
                                      base.default_threshold)
            t0 = time.time()
            a = adapt(base, mics, ds.diameter_A, work / f"{name}.pt", settings=settings, log=print)
            secs = time.time() - t0
            p = Picker(a.model, log=None) if a.accepted else (a.zero_shot or base)
            row["adapt"] = _score(p, a.head, mics, truth, ds.diameter_A, ds.box_px, p.threshold_for(a.head))
            ft = read_checkpoint(a.model)["meta"]["finetune"][a.head] if a.accepted else {}
            row["adapt"].update(accepted=a.accepted, reason=a.reason, seconds=round(secs, 1),
                                orientations=ft.get("orientations"), epochs=ft.get("epochs"))
            if args.centres:
                from hydrapicker.refine_adapt import picker_with_adapted_refiner

                t0 = time.time()
                pr, ra = picker_with_adapted_refiner(p, mics, ds.diameter_A, work / f"{name}_refiner.pt", a.head,
                                                     reuse=False, log=print)
                secs = time.time() - t0
                row["adapt_centres"] = _score(pr, a.head, mics, truth, ds.diameter_A, ds.box_px,
                                              pr.threshold_for(a.head))
                row["adapt_centres"].update(accepted=ra.accepted, seconds=round(secs, 1))
            rows.append(row)
            print(f"{spec.name}: AP zero-shot {row['zero_shot']['AP']:.3f} -> adapt {row['adapt']['AP']:.3f} "
                  f"(F1 {row['zero_shot']['F1']:.3f} -> {row['adapt']['F1']:.3f}; {row['adapt']['seconds']:.0f} s, "
                  f"{row['adapt']['orientations']} orientations, {row['adapt']['epochs']} epochs)"
                  + (f"; with centres {row['adapt_centres']['AP']:.3f}" if args.centres else ""), flush=True)
    gains = [r["adapt"]["AP"] - r["zero_shot"]["AP"] for r in rows]
    print(f"mean AP gain {np.mean(gains):+.3f}")
    out = {"meta": {"date": time.strftime("%Y-%m-%d"), "command": "python " + " ".join(sys.argv),
                    "settings": vars(settings) if hasattr(settings, "__dict__") else str(settings),
                    "threads": args.threads}, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
