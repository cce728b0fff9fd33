#!/usr/bin/env python
"""Experiment (issue 18): a second grid, shifted by half a cell, to centre the picks of the first.

The diagnosis (``benchmarks/centres.py``): the detector's grid is coarse (stride 8 = D/2), a particle near a
cell border makes two cells fire, and the kept one is often a neighbour whose offsets were never trained for
that particle. A grid shifted by half a cell along both axes puts that particle near the centre of one of
*its* cells, whose offsets are trained. Here the network also reads the prepared image shifted by
``stride / 2`` (same test-time views), and each of the product's ranked picks (every pick above 0.01, two
views, micrograph evidence; class centring off) takes, per variant:
* ``mean``: the score-weighted mean of its own position and that of the best shifted-grid candidate within
  ``--reach`` x D (when there is one);
* ``own``: of the two, the one whose decoded centre lies nearer its own cell's centre (its offset is then
  one the network was trained to give);
* ``pool``: the candidates of both grids pooled, duplicates suppressed as the product does (a finer grid);
* ``pool1``: the same with one view per grid (the cost of the product's two views: the second view is the
  shifted grid instead of the 180° rotation);
* ``best`` / ``best_fom``: the higher-scoring of the two, with the first grid's FOM / the higher FOM;
* ``tta4``: the product with four views instead of two (the network passes of ``pool``), for comparison.
Scores stay the first grid's (``mean``, ``own``), so AP changes through the centres only.

  OMP_NUM_THREADS=1 python benchmarks/experiments/shifted_grid.py --tune 32
  OMP_NUM_THREADS=1 python benchmarks/experiments/shifted_grid.py --sets targets custom real
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=["targets", "custom", "real"])
    ap.add_argument("--tune", type=int, default=0, help="N training-family tuning sets instead of --sets")
    ap.add_argument("--junk-tune", type=int, default=0, help="N junk tuning sets (compare_models.py) instead")
    ap.add_argument("--n-sim", type=int, default=5)
    ap.add_argument("--sim-cache", default="/tmp/hydra_bench/sim")
    ap.add_argument("--tune-cache", default="/work/bench/simtune")
    ap.add_argument("--junk-cache", default="/tmp/hydra_bench/threshold_auto/data")
    ap.add_argument("--reach", type=float, default=0.25, help="shifted-grid partner within this x D")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    from bench_data import load_dataset, tuning_sets
    from centres import resolve
    from compare_models import junk_tuning_sets
    from hydrapicker.metrics import evaluate
    from hydrapicker.picker import Picker, configure_torch
    from hydrapicker.postprocess import Candidates, decode_grid, rank, weigh_by_evidence
    from hydrapicker.types import Micrograph, Picks

    configure_torch(1)
    if args.tune:
        sets = tuning_sets(args.tune, Path(args.tune_cache))
    elif args.junk_tune:
        sets = junk_tuning_sets(args.junk_tune, Path(args.junk_cache))
    else:
        sets = resolve(args.sets, args.n_sim, Path(args.sim_cache))
    picker = Picker("default", device="cpu", log=None, refine=False, half_cell=False)  # one grid: the baseline
    one_view = Picker("default", device="cpu", log=None, refine=False, tta=1, half_cell=False)
    four_views = Picker("default", device="cpu", log=None, refine=False, tta=4, half_cell=False)
    s = picker.stride
    h = s // 2
    temp = float(picker.meta.get("temperature", 1.0))
    rows = []
    for root, kind in sets:
        ds = load_dataset(root, kind=kind)
        policy = picker.policy(ds.diameter_A, threshold=0.01)
        out = {k: {} for k in ("product", "mean", "own", "pool", "pool1", "tta4", "best", "best_fom")}
        t_extra = 0.0
        for stem, path in zip(ds.stems, ds.mic_paths):
            mic = Micrograph(str(path), pixel_size=ds.pixel_size, name=stem)
            loaded, _, regions = picker._read(mic, ds.diameter_A, policy.find_invalid)
            prep = picker._prepared(loaded, mic, ds.diameter_A)
            outputs = picker._outputs(prep.image, "generic")
            picks, ranked = picker._finish(prep, outputs, policy, regions)
            out["product"][stem] = picks
            out["tta4"][stem] = four_views._finish(prep, four_views._outputs(prep.image, "generic"), policy, regions)[0]
            t0 = time.process_time()
            grid_b = picker._outputs(prep.image[h:, h:].contiguous(), "generic").grid
            t_extra += time.process_time() - t0
            sx, sy = prep.scale_xy
            xa, sa = decode_grid(outputs.grid, s, temp, policy.decode_floor)
            xb, sb = decode_grid(grid_b, s, temp, policy.decode_floor)
            xb = xb + h
            # pool: both grids' candidates as one, ranked as the product ranks
            pooled = Candidates(np.concatenate([xa, xb]) / np.array([sx, sy]), np.concatenate([sa, sb]),
                                prep.shape, prep.pixel_size)
            out["pool"][stem] = weigh_by_evidence(rank(pooled, policy, regions), policy)
            xa1, sa1 = decode_grid(one_view._outputs(prep.image, "generic").grid, s, temp, policy.decode_floor)
            xb1, sb1 = decode_grid(one_view._outputs(prep.image[h:, h:].contiguous(), "generic").grid, s, temp,
                                   policy.decode_floor)
            pooled1 = Candidates(np.concatenate([xa1, xb1 + h]) / np.array([sx, sy]), np.concatenate([sa1, sb1]),
                                 prep.shape, prep.pixel_size)
            out["pool1"][stem] = weigh_by_evidence(rank(pooled1, policy, regions), policy)
            # partners of each product pick (prepared-image px)
            pa = np.stack([picks.x * sx, picks.y * sy], 1)
            d_px = picker.extent_px
            if len(xb) and len(pa):
                from scipy.spatial import cKDTree

                tree = cKDTree(xb)
                nb = tree.query_ball_point(pa, r=args.reach * d_px)
                mean, own, best, best_fom = pa.copy(), pa.copy(), pa.copy(), picks.fom.copy()
                for i, cand in enumerate(nb):
                    if not cand:
                        continue
                    j = cand[int(np.argmax(sb[cand]))]
                    wa = float(picks.fom[i])
                    mean[i] = (wa * pa[i] + sb[j] * xb[j]) / (wa + sb[j])
                    # offset from the own cell's centre, in cells: grid A cells at (k + 0.5) s - 0.5, B at + h
                    oa = np.abs(((pa[i] + 0.5) / s) % 1.0 - 0.5).max()
                    ob = np.abs(((xb[j] - h + 0.5) / s) % 1.0 - 0.5).max()
                    own[i] = pa[i] if oa <= ob else xb[j]
                    if sb[j] > wa:
                        best[i], best_fom[i] = xb[j], sb[j]
            else:
                mean, own, best, best_fom = pa, pa, pa, picks.fom.copy()
            for k, v in (("mean", mean), ("own", own)):
                out[k][stem] = Picks(v[:, 0] / sx, v[:, 1] / sy, picks.fom.copy())
            out["best"][stem] = Picks(best[:, 0] / sx, best[:, 1] / sy, picks.fom.copy())
            out["best_fom"][stem] = Picks(best[:, 0] / sx, best[:, 1] / sy, best_fom)
        row = {"set": ds.name, "extra_cpu_s_per_mic": round(t_extra / len(ds.stems), 3)}
        for k, picks in out.items():
            ev = evaluate(picks, ds.truth, ds.box_px)
            row[k] = round(float(ev["AP"]), 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    for k in ("mean", "own", "pool", "pool1", "tta4", "best", "best_fom"):
        d = np.array([r[k] - r["product"] for r in rows])
        print(f"{k:6s}: mean dAP {d.mean():+.4f}  worst {d.min():+.4f}  best {d.max():+.4f}  "
              f"up {int((d > 0.005).sum())} down {int((d < -0.005).sum())}")
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
