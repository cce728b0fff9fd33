#!/usr/bin/env python
"""Experiment (issue 14): why particles beside border bands are lost, and what the pick path could do.

On the junk targets' micrographs with border bands (``benchmarks/junk.py --n-sim 18``'s cache), every
candidate is picked (``--all``, the margin rule off) three ways: the micrograph as it is; its bands
(``hydrapicker.regions``) filled with the interior's median, a constant; and the micrograph cropped to the
rectangle inside its bands (picks shifted back), so that a band is what the micrograph's own edge is to the
network. Per particle: the best FOM within D/4, against the same particle on the clean twin; by distance
to the band (D/4-D/2, D/2-D, further); and the false picks (further than D/2 from every particle) between
D/4 and D of a band and further away. Nothing is written to the product.

  OMP_NUM_THREADS=1 python benchmarks/experiments/band_edge.py [--n-sim 18] [--json J]
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

BINS = ((0.25, 0.5), (0.5, 1.0), (1.0, 1e9))


def best_fom(picks, xy, radius):
    if not len(picks.x) or not len(xy):
        return np.zeros(len(xy))
    d = np.hypot(picks.x[None] - xy[:, 0, None], picks.y[None] - xy[:, 1, None])
    return np.where(d <= radius, picks.fom[None], 0).max(1)


def variants(image, regions):
    """{name: (image, (x0, y0))}: as it is, bands filled with the interior median, cropped inside the bands."""
    w = regions.band_widths()
    ny, nx = image.shape
    inside = (slice(w["top"], ny - w["bottom"]), slice(w["left"], nx - w["right"]))
    filled = image.copy()
    band = regions.mask()
    filled[band] = np.median(image[inside])
    return {"as_is": (image, (0, 0)), "filled": (filled, (0, 0)),
            "cropped": (np.ascontiguousarray(image[inside]), (w["left"], w["top"]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-sim", type=int, default=18)
    ap.add_argument("--sim-cache", default="/tmp/hydra_bench/sim")
    ap.add_argument("--model", default=None)
    ap.add_argument("--thresholds", default=None,
                    help="junk.py's JSON: false picks are counted at its best-F1 thresholds (default 0.2)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    args.threshold = {} if not args.thresholds else {
        t["target"]: t["pickers"]["hydra"]["junk"]["threshold"] for t in json.loads(Path(args.thresholds).read_text())["targets"]}

    import mrcfile

    from bench_data import load_dataset, simulated_dataset
    from hydrapicker.picker import Picker
    from hydrapicker.regions import find_regions
    from hydrapicker.simulate.datasets import clean_version, junk_target_specs
    from hydrapicker.types import Micrograph

    picker = Picker(args.model, device="cpu", log=lambda *a, **k: None)
    cache = Path(args.sim_cache)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in junk_target_specs()[:4]:
            junk = load_dataset(simulated_dataset(spec, cache, args.n_sim), kind="simulated")
            clean = load_dataset(simulated_dataset(clean_version(spec), cache, args.n_sim), kind="simulated")
            D = junk.box_px
            policy = picker.policy(junk.diameter_A, threshold=None, find_invalid=False)
            acc, false_near = {}, {}
            for s, cs, path, cpath in zip(junk.stems, clean.stems, junk.mic_paths, clean.mic_paths):
                xy = junk.truth[s]
                image = mrcfile.read(path).astype(np.float32)
                regions = find_regions(image)
                if not len(xy) or not any(regions.band_widths().values()):
                    continue
                dist = np.full(len(xy), 1e9)
                for lo, hi in BINS[::-1]:
                    dist[regions.near(xy[:, 0], xy[:, 1], hi * D)] = hi
                ref = best_fom(picker.pick_one(Micrograph(str(cpath), junk.pixel_size), junk.diameter_A, policy=policy),
                               xy, 0.25 * D)
                for name, (img, (x0, y0)) in variants(image, regions).items():
                    f = Path(tmp) / f"{s}_{name}.mrc"
                    mrcfile.write(f, img, voxel_size=junk.pixel_size, overwrite=True)
                    p = picker.pick_one(Micrograph(str(f), junk.pixel_size), junk.diameter_A, policy=policy)
                    p.x, p.y = p.x + x0, p.y + y0
                    fom = best_fom(p, xy, 0.25 * D)
                    keep = p.fom >= args.threshold.get(spec.name, 0.2)
                    px, py = p.x[keep], p.y[keep]
                    false = np.hypot(px[:, None] - xy[None, :, 0], py[:, None] - xy[None, :, 1]).min(1) > 0.5 * D
                    fb = false_near.setdefault(name, [0, 0])
                    fb[0] += int((false & regions.near(px, py, D) & ~regions.near(px, py, 0.25 * D)).sum())
                    fb[1] += int((false & ~regions.near(px, py, D)).sum())
                    for lo, hi in BINS:
                        sel = (dist == hi) & ~regions.near(xy[:, 0], xy[:, 1], lo * D) if lo else dist == hi
                        a = acc.setdefault(f"{lo}-{hi if hi < 1e8 else 'inf'} D", {}).setdefault(name, [[], []])
                        a[0] += fom[sel].tolist()
                        a[1] += ref[sel].tolist()
            out[spec.name] = {"false_picks_D/4_to_D_of_bands_and_further": false_near}
            print(f"{spec.name:14s} false picks at FOM >= {args.threshold.get(spec.name, 0.2)} between D/4 and D of a "
                  "band, and further: " + " ".join(f"{n} {v}" for n, v in false_near.items()), flush=True)
            for b, byname in acc.items():
                row = {n: {"particles": len(v[0]), "median_fom": round(float(np.median(v[0])), 3) if v[0] else None,
                           "median_fom_clean": round(float(np.median(v[1])), 3) if v[1] else None}
                       for n, v in byname.items()}
                out[spec.name][b] = row
                print(f"{spec.name:14s} {b:10s} n {row['as_is']['particles']:4d} clean {row['as_is']['median_fom_clean']} "
                      + " ".join(f"{n} {r['median_fom']}" for n, r in row.items()), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv[1:], "targets": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
