#!/usr/bin/env python
"""Experiment (issue 17/18): can a data set tell, without labels, at which scale the network centres best?

Label-free proxy: the same micrographs picked twice, as they are and rotated by 180 degrees (coordinates
mapped back), one view each. The network is not rotation-equivariant, so the two views give partly
independent centres; their scatter (median distance between a confident pick and its partner in the
other view, in diameters) estimates the centring noise at that scale. Per set and scale: AP (IoU 0.6, one
view), AP_D/2, and that scatter; and whether the scale with the least scatter is the scale with the best AP.

  OMP_NUM_THREADS=1 python benchmarks/experiments/scale_consistency.py --tune 32 --sim-cache /work/bench/simtune
  OMP_NUM_THREADS=1 python benchmarks/experiments/scale_consistency.py --sets targets custom real
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from bench_data import load_dataset, tuning_sets  # noqa: E402
from centres import ap_summary, resolve  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=["targets", "custom", "real"])
    ap.add_argument("--tune", type=int, default=0)
    ap.add_argument("--scales", default="1.0,0.85,0.75")
    ap.add_argument("--n-sim", type=int, default=3)
    ap.add_argument("--sim-cache", default="/tmp/hydra_bench/sim")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    import mrcfile
    from scipy.spatial import cKDTree

    from hydrapicker.picker import Picker, configure_torch
    from hydrapicker.scale import model_at_scale
    from hydrapicker.types import Micrograph

    configure_torch(1)
    if args.tune:
        sets = tuning_sets(args.tune, Path(args.sim_cache))
    else:
        sets = resolve(args.sets, args.n_sim, Path(args.sim_cache))
    scales = [float(s) for s in args.scales.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="scale-consistency-"))
    pickers = {s: Picker(str(model_at_scale("default", s, tmp / f"m{s:g}.pt")) if s != 1 else "default",
                         device="cpu", log=None, tta=1, refine=False) for s in scales}
    thr = pickers[1.0].threshold_for("generic")
    rows = []
    for root, kind in sets:
        ds = load_dataset(root, kind=kind)
        box = ds.box_px
        mics = [Micrograph(str(p), pixel_size=ds.pixel_size, name=s) for s, p in zip(ds.stems, ds.mic_paths)]
        rot, shapes = [], {}
        for m in mics:
            img = mrcfile.read(m.path)
            shapes[m.name] = img.shape
            path = tmp / f"{ds.name}_{m.name}_r180.mrc"
            with mrcfile.new(path, overwrite=True) as f:
                f.set_data(np.ascontiguousarray(img[::-1, ::-1]).astype(np.float32))
                f.voxel_size = ds.pixel_size
            rot.append(Micrograph(str(path), pixel_size=ds.pixel_size, name=m.name))
        row = {"set": ds.name}
        for s, p in pickers.items():
            pol = p.policy(ds.diameter_A, threshold=None, evidence=0)
            a = {r.micrograph.name: r.picks for r in p.pick(mics, ds.diameter_A, policy=pol)}
            b = {r.micrograph.name: r.picks for r in p.pick(rot, ds.diameter_A, policy=pol)}
            dists = []
            for name, pa in a.items():
                ny, nx = shapes[name]
                pb = b[name]
                xa = pa.xy()[pa.fom >= thr]
                xb = np.stack([nx - 1 - pb.x, ny - 1 - pb.y], 1)[pb.fom >= thr]
                if len(xa) and len(xb):
                    d, _ = cKDTree(xb).query(xa)
                    dists.append(d[d < box / 2])
            d = np.concatenate(dists) if dists else np.zeros(0)
            sc = ap_summary(a, ds.truth, box)
            row[f"{s:g}"] = {"AP": sc["AP"], "AP_D2": sc["AP_D2"], "n_pairs": int(len(d)),
                             "scatter_D": round(float(np.median(d)) / box, 4) if len(d) else None}
        keys = [f"{s:g}" for s in scales]
        ok = [k for k in keys if row[k]["scatter_D"] is not None]
        row["best_AP"] = max(keys, key=lambda k: row[k]["AP"])
        row["least_scatter"] = min(ok, key=lambda k: row[k]["scatter_D"]) if ok else None
        rows.append(row)
        print(json.dumps(row), flush=True)
    agree = sum(r["best_AP"] == r["least_scatter"] for r in rows)
    print(f"\nleast scatter = best AP on {agree} of {len(rows)} sets")
    print("| set | " + " | ".join(f"AP / scatter D at {s:g}" for s in scales) + " |")
    for r in rows:
        print(f"| {r['set']} | " + " | ".join(f"{r[f'{s:g}']['AP']:.3f} / {r[f'{s:g}']['scatter_D']}" for s in scales) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
