#!/usr/bin/env python
"""Experiment (issue 18): re-centre every pick on a reference built from the data set's own picks.

Classical reference-based centring, as 2D classification does it, with no network and nothing learned:
the confident picks of a data set (FOM at or above the calibrated threshold) are cropped, averaged and
rotationally averaged into a reference (in-plane rotations are random, so only its radial profile is
trusted); every pick then moves to the peak of its normalised cross-correlation with that reference,
within ``--reach`` diameters; ``--rounds`` rounds (1: the reference from the detector's centres only; more
let it shrink onto one domain of a multi-domain particle). Works on the micrograph binned to about ``--px-per-d`` pixels per
diameter and low-passed by ``--sigma`` px there. Run on the detector's picks and on the refiner's.

  OMP_NUM_THREADS=1 python benchmarks/experiments/reference_centres.py [--sets targets custom real] [--n-sim 5]
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

from bench_data import load_dataset, tuning_sets  # noqa: E402
from centres import ap_summary, errors_of, resolve  # noqa: E402
from symmetric_centres import radial_average  # noqa: E402


def _crops(image, xy, half):
    """(n, 2 half + 1, 2 half + 1) bilinear crops centred at sub-pixel xy (outside: 0)."""
    from scipy.ndimage import map_coordinates

    r = np.arange(-half, half + 1, dtype=np.float64)
    yy = xy[:, 1, None, None] + r[None, :, None] + 0 * r[None, None, :]
    xx = xy[:, 0, None, None] + 0 * r[None, :, None] + r[None, None, :]
    return map_coordinates(image, [yy, xx], order=1, mode="constant", cval=0.0)


def ncc_map(image, ref, mask):
    """Normalised cross-correlation of ``image`` with the zero-mean ``ref`` under ``mask``, at every pixel."""
    from scipy.signal import fftconvolve

    fl = lambda a: a[::-1, ::-1]  # noqa: E731
    num = fftconvolve(image, fl(ref), mode="same")
    s1 = fftconvolve(image, fl(mask), mode="same")
    s2 = fftconvolve(image * image, fl(mask), mode="same")
    en = s2 - s1 * s1 / mask.sum()
    return num / np.sqrt(np.maximum(en, 1e-6 * float(np.median(np.abs(en))) + 1e-12))


def best_in_reach(cc, xy, search):
    """Each point moved to the sub-pixel peak of ``cc`` within ``search`` px of its rounded position."""
    ny, nx = cc.shape
    oy, ox = np.meshgrid(np.arange(-search, search + 1), np.arange(-search, search + 1), indexing="ij")
    keep = np.hypot(oy, ox) <= search
    oy, ox = oy[keep], ox[keep]
    xi, yi = np.rint(xy[:, 0]).astype(int), np.rint(xy[:, 1]).astype(int)
    Y, X = yi[:, None] + oy[None], xi[:, None] + ox[None]
    ok = (Y >= 1) & (Y < ny - 1) & (X >= 1) & (X < nx - 1)
    v = np.where(ok, cc[np.clip(Y, 0, ny - 1), np.clip(X, 0, nx - 1)], -np.inf)
    k = np.argmax(v, axis=1)
    n = np.arange(len(xy))
    py, px = Y[n, k], X[n, k]
    good = np.isfinite(v[n, k])
    py, px = np.clip(py, 1, ny - 2), np.clip(px, 1, nx - 2)

    def sub(a, b, c):
        den = a - 2 * b + c
        return np.where(den < 0, np.clip(0.5 * (a - c) / np.where(den < 0, den, -1), -0.5, 0.5), 0.0)

    dx = sub(cc[py, px - 1], cc[py, px], cc[py, px + 1])
    dy = sub(cc[py - 1, px], cc[py, px], cc[py + 1, px])
    out = np.stack([px + dx, py + dy], 1)
    return np.where(good[:, None], out, xy)


def reference_centre(images: dict, picks: dict, conf: dict, box: float, rounds=3, reach=0.25, mask_d=0.6,
                     min_ref=20) -> dict:
    half = int(np.ceil(0.75 * box))
    search = max(1, int(np.ceil(reach * box)))
    r = np.arange(-half, half + 1)
    rr = np.hypot(*np.meshgrid(r, r, indexing="ij"))
    mask = np.clip((mask_d * box - rr) / 2.0 + 0.5, 0, 1)
    start = {s: np.asarray(v, float).reshape(-1, 2) for s, v in picks.items()}
    cur = {s: v.copy() for s, v in start.items()}
    if sum(int(c.sum()) for c in conf.values()) < min_ref:
        return cur
    for _ in range(rounds):
        acc, n = np.zeros((2 * half + 1,) * 2), 0
        for s, xy in cur.items():
            if conf[s].any():
                acc += _crops(images[s], xy[conf[s]], half).sum(0)
                n += int(conf[s].sum())
        ref = radial_average(acc / max(n, 1)) * mask
        ref = ref - (ref * mask).sum() / mask.sum() * mask
        ref /= np.sqrt((ref ** 2).sum()) + 1e-12
        for s in cur:
            if len(start[s]):
                cc = ncc_map(images[s], ref, mask)
                cur[s] = best_in_reach(cc, start[s], search)
    return cur


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=["targets", "custom", "real"])
    ap.add_argument("--n-sim", type=int, default=5)
    ap.add_argument("--sim-cache", default="/tmp/hydra_bench/sim")
    ap.add_argument("--px-per-d", type=float, default=24.0)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--reach", type=float, default=0.25)
    ap.add_argument("--mask", type=float, default=0.6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gate", type=float, default=None,
                    help="undo every move longer than this many diameters (default: keep every move)")
    ap.add_argument("--tune", type=int, default=0, help="N training-family tuning sets (seeds 7100+) instead of --sets")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    import mrcfile
    from scipy.ndimage import gaussian_filter, zoom

    from hydrapicker.picker import Picker, configure_torch
    from hydrapicker.types import Micrograph, Picks

    configure_torch(1)
    if args.tune:  # training-family tuning sets (never the benchmark targets or the real sets)
        sets = tuning_sets(args.tune, Path(args.sim_cache))
    else:
        sets = resolve(args.sets, args.n_sim, Path(args.sim_cache))
    pickers = {"detector": Picker("default", device="cpu", log=None, refine=False),
               "refined": Picker("default", device="cpu", log=None, refine="shipped")}
    thr = pickers["detector"].threshold_for("generic")
    results = []
    for root, kind in sets:
        ds = load_dataset(root, kind=kind)
        box = ds.box_px
        f = min(1.0, args.px_per_d / box)
        images = {}
        for s, p in zip(ds.stems, ds.mic_paths):
            im = mrcfile.read(p).astype(np.float64)
            im = zoom(im, f, order=1) if f < 1 else im
            im = gaussian_filter(im, args.sigma) if args.sigma > 0 else im
            images[s] = (im - im.mean()) / (im.std() + 1e-12)
        mics = [Micrograph(str(p), pixel_size=ds.pixel_size, name=s) for s, p in zip(ds.stems, ds.mic_paths)]
        row = {"set": ds.name, "box_px": round(box, 2), "bin": round(1 / f, 3)}
        for name, picker in pickers.items():
            pol = picker.policy(ds.diameter_A, threshold=0.01)
            picks = {r.micrograph.name: r.picks for r in picker.pick(mics, ds.diameter_A, policy=pol)}
            row[name] = _scores(picks, ds.truth, box)
            t0 = time.process_time()
            xy = {s: p.xy() * f for s, p in picks.items()}
            conf = {s: p.fom >= thr for s, p in picks.items()}
            new = reference_centre(images, xy, conf, box * f, rounds=args.rounds, reach=args.reach, mask_d=args.mask)
            cpu = time.process_time() - t0
            mv = np.concatenate([np.hypot(*(new[s] - xy[s])[conf[s]].T) for s in new if len(xy[s])]) / (box * f)
            if args.gate is not None:  # moves longer than the gate are undone (the start was better there)
                for s in new:
                    far = np.hypot(*(new[s] - xy[s]).T) > args.gate * box * f
                    new[s][far] = xy[s][far]
            moved = {s: Picks(v[:, 0] / f, v[:, 1] / f, picks[s].fom) for s, v in new.items()}
            row[name + "+reference"] = {**_scores(moved, ds.truth, box),
                                         "cpu_s_per_mic": round(cpu / len(mics), 3),
                                         "median_move_D": round(float(np.median(mv)), 4) if len(mv) else None}
        results.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(f"{'set':26s} | {'AP det / +ref':>15s} | {'AP refined / +ref':>17s} | {'AP_D2 det/+ref':>15s} | "
          f"{'med D det/+ref':>15s} | {'med D refined/+ref':>18s}")
    for r in results:
        d, dr, q, qr = r["detector"], r["detector+reference"], r["refined"], r["refined+reference"]
        print(f"{r['set']:26s} | {d['AP']:6.3f} {dr['AP']:7.3f} | {q['AP']:7.3f} {qr['AP']:8.3f} | "
              f"{d['AP_D2']:6.3f} {dr['AP_D2']:7.3f} | {d['median_D']:6.3f} {dr['median_D']:7.3f} | "
              f"{q['median_D']:7.3f} {qr['median_D']:9.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "results": results}, indent=1))
    return 0


def _scores(picks, truth, box):
    s = ap_summary(picks, truth, box)
    e, _ = errors_of(picks, truth, box)
    n = np.hypot(e[:, 0], e[:, 1])
    n = n[~np.isnan(n)]
    return {"AP": s["AP"], "AP_D2": s["AP_D2"], "median_D": round(float(np.median(n)) / box, 4) if len(n) else None,
            "p90_D": round(float(np.quantile(n, 0.9)) / box, 4) if len(n) else None}


if __name__ == "__main__":
    sys.exit(main())
