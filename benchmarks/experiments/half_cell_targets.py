#!/usr/bin/env python
"""Experiment (issue 18): the half-cell grid (hydra pick --half-cell) on the centre benchmark's sets.

Each set (the held-out targets, centres.py's two custom sets, the real sets; 5 micrographs per simulated set)
is picked through the product's pick path, every pick above 0.01 kept, four ways: one grid, the half-cell
grid, and each with class-average centring. Per way: AP (IoU 0.6), AP_D/2, median centre error (D), CPU s
per micrograph.

  OMP_NUM_THREADS=1 python benchmarks/experiments/half_cell_targets.py [--sets targets custom real] [--json F]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))
sys.path.insert(0, str(ROOT))

WAYS = (("one", False, False), ("half_cell", True, False), ("one+class", False, True), ("half_cell+class", True, True))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=["targets", "custom", "real"])
    ap.add_argument("--n-sim", type=int, default=5)
    ap.add_argument("--sim-cache", default="/tmp/hydra_bench/sim")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    from bench_data import load_dataset
    from centres import resolve
    from reference_centres import _scores
    from hydrapicker.picker import Picker, configure_torch
    from hydrapicker.types import Micrograph

    configure_torch(1)
    pickers = {hc: Picker("default", device="cpu", log=None, half_cell=hc) for hc in (False, True)}
    rows = []
    for root, kind in resolve(args.sets, args.n_sim, Path(args.sim_cache)):
        ds = load_dataset(root, kind=kind)
        mics = [Micrograph(str(x), pixel_size=ds.pixel_size, name=s) for s, x in zip(ds.stems, ds.mic_paths)]
        row = {"set": ds.name}
        for name, half_cell, class_centres in WAYS:
            p = pickers[half_cell]
            t0 = time.process_time()
            policy = p.policy(ds.diameter_A, threshold=0.01, class_centres=class_centres)
            picks = {r.micrograph.name: r.picks for r in p.pick(mics, ds.diameter_A, policy=policy)}
            sc = _scores(picks, ds.truth, ds.box_px)
            row[name] = {k: sc[k] for k in ("AP", "AP_D2", "median_D")}
            row[name]["cpu_s_per_mic"] = round((time.process_time() - t0) / len(mics), 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    for r in rows:
        print(f"{r['set']:26s} " + "  ".join(f"{n} {r[n]['AP']:.3f}/{r[n]['AP_D2']:.3f}" for n, _, _ in WAYS))
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
