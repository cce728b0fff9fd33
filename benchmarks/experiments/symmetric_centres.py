#!/usr/bin/env python
"""Experiment (issue 18): an independent referee for the centres of round particles.

Question: on real apoferritin both centre improvements (the refiner, fused suppression) lower AP under the
IoU rule while AP_D/2 stays put; on every simulated set they raise it. Are the refined picks worse centred,
or is that set's truth (disc centres recovered from hand-painted overlays) off?

Referee, independent of HydraPicker's network and of the labels' positions: apoferritin's projection is
rotationally symmetric, so each particle's centre is where its image best matches a *rotationally
symmetric* reference. Classical reference-based centring, iterated:

1. crops (1.5 D) at the current centres (sub-pixel, bilinear), averaged, rotationally averaged, masked at
   0.6 D: the reference (its centre is the symmetry centre, whatever the start's offsets);
2. each particle's normalised cross-correlation with the reference over shifts within D/4, peak refined by a
   parabola through the 3 x 3 neighbourhood;
3. repeat from 1 with the new centres (4 rounds).

Checked first on a simulated round set whose truth is exact (t_ferritin_crowded): how close the referee
comes to the exact centres tells how far it can be trusted. Then, per set: the truth's distance to the
referee's centres, and HydraPicker's picks (detector / ``--refine``) scored against the truth and against
the referee's centres (AP under the IoU rule, AP_D/2, median error of matched picks). The real set is
used for validation only: nothing here is tuned on it, the referee has no free parameter chosen on it.

  OMP_NUM_THREADS=1 python benchmarks/experiments/symmetric_centres.py [--sets t_ferritin_crowded
      apoferritin_empiar10146] [--n-sim 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from bench_data import load_dataset, resolve_sets  # noqa: E402
from centres import errors_of  # noqa: E402


def normalised(image: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    im = gaussian_filter(image.astype(np.float64), sigma) if sigma > 0 else image.astype(np.float64)
    return (im - im.mean()) / (im.std() + 1e-12)


def crop(image: np.ndarray, x: float, y: float, half: int) -> np.ndarray:
    """(2 half + 1)^2 crop centred at sub-pixel (x, y), bilinear; outside the micrograph: 0."""
    from scipy.ndimage import map_coordinates

    r = np.arange(-half, half + 1, dtype=np.float64)
    yy, xx = np.meshgrid(y + r, x + r, indexing="ij")
    return map_coordinates(image, [yy, xx], order=1, mode="constant", cval=0.0)


def radial_average(img: np.ndarray) -> np.ndarray:
    """Rotational average about the crop's centre pixel, as a 2D image (linear in radius)."""
    half = img.shape[0] // 2
    r = np.arange(-half, half + 1)
    rr = np.hypot(*np.meshgrid(r, r, indexing="ij"))
    ri = np.floor(rr).astype(int)
    frac = rr - ri
    nb = ri.max() + 2
    s = np.bincount(ri.ravel(), (img * (1 - frac)).ravel(), nb) + np.bincount(ri.ravel() + 1, (img * frac).ravel(), nb)
    w = np.bincount(ri.ravel(), (1 - frac).ravel(), nb) + np.bincount(ri.ravel() + 1, frac.ravel(), nb)
    prof = s / np.maximum(w, 1e-12)
    return prof[ri] * (1 - frac) + prof[np.minimum(ri + 1, nb - 1)] * frac


def peak_subpixel(cc: np.ndarray) -> tuple:
    """(dy, dx) of the maximum of ``cc`` relative to its centre, refined by 1D parabolas."""
    iy, ix = np.unravel_index(int(np.argmax(cc)), cc.shape)
    out = []
    for i, n, line in ((iy, cc.shape[0], cc[:, ix]), (ix, cc.shape[1], cc[iy, :])):
        d = 0.0
        if 0 < i < n - 1:
            a, b, c = line[i - 1], line[i], line[i + 1]
            den = a - 2 * b + c
            if np.isfinite(den) and den < 0:
                d = float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))
        out.append(i + d - (n // 2))
    return out[0], out[1]


def referee_centres(images: dict, starts: dict, box: float, rounds: int = 4) -> tuple:
    """Symmetric-reference centring of every particle: stem -> (N, 2) centres, and the final reference."""
    from scipy.signal import correlate

    half = int(np.ceil(0.75 * box))
    search = int(np.ceil(box / 4))
    r = np.arange(-half, half + 1)
    rr = np.hypot(*np.meshgrid(r, r, indexing="ij"))
    mask = np.clip((0.6 * box - rr) / 2.0 + 0.5, 0, 1)  # soft edge, 2 px
    cur = {s: np.asarray(v, float).copy() for s, v in starts.items()}
    ref = None
    for _ in range(rounds):
        acc, n = np.zeros((2 * half + 1,) * 2), 0
        for s, xy in cur.items():
            for x, y in xy:
                acc += crop(images[s], x, y, half)
                n += 1
        ref = radial_average(acc / max(n, 1)) * mask
        ref = ref - (ref * mask).sum() / mask.sum() * mask
        ref /= np.sqrt((ref ** 2).sum()) + 1e-12
        for s, xy in cur.items():
            im = images[s]
            for k, (x, y) in enumerate(xy):
                win = crop(im, x, y, half + search)
                # normalised by the local energy under the mask, so bright neighbours do not pull
                num = correlate(win, ref, mode="valid")
                en = correlate(win ** 2, mask, mode="valid") - correlate(win, mask, mode="valid") ** 2 / mask.sum()
                cc = num / np.sqrt(np.maximum(en, 1e-12))
                yy, xx = np.meshgrid(np.arange(-search, search + 1), np.arange(-search, search + 1), indexing="ij")
                cc = np.where(np.hypot(yy, xx) <= search, cc, -np.inf)
                dy, dx = peak_subpixel(cc)
                xy[k] = (x + dx, y + dy)
    return cur, ref


def picks_of(picker, ds) -> dict:
    from hydrapicker.types import Micrograph

    mics = [Micrograph(str(p), pixel_size=ds.pixel_size, name=s) for s, p in zip(ds.stems, ds.mic_paths)]
    policy = picker.policy(ds.diameter_A, threshold=None)
    return {r.micrograph.name: r.picks for r in picker.pick(mics, ds.diameter_A, policy=policy)}


def scores(picks: dict, truth: dict, box: float) -> dict:
    from hydrapicker.metrics import evaluate

    r = evaluate(picks, truth, box, warn=lambda m: None)
    e, _ = errors_of(picks, truth, box)  # the centre benchmark's matching (D/2 rule)
    e = e[~np.isnan(e[:, 0])]
    n = np.hypot(e[:, 0], e[:, 1])
    return {"AP": round(float(r["AP"]), 4), "AP_D2": round(float(r["AP_centre"]), 4),
            "median_err_D": round(float(np.median(n)) / box, 4) if len(n) else None,
            "mean_err_px": [round(float(v), 3) for v in e.mean(0)] if len(e) else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=["t_ferritin_crowded", "apoferritin_empiar10146"])
    ap.add_argument("--n-sim", type=int, default=5)
    ap.add_argument("--sim-cache", default="/work/bench/simcache_centres")
    ap.add_argument("--model", default="default")
    ap.add_argument("--sigma", type=float, default=1.0, help="Gaussian low-pass (px) before centring")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    from hydrapicker.picker import Picker, configure_torch
    import mrcfile

    configure_torch(1)
    sets = resolve_sets(args.sets, None, Path(args.sim_cache), args.n_sim)
    pickers = {"detector": Picker(args.model, device="cpu", log=None, refine=False),
               "refined": Picker(args.model, device="cpu", log=None, refine="shipped")}
    results = []
    for root, kind in sets:
        ds = load_dataset(root, kind=kind)
        box = ds.box_px
        images = {s: normalised(mrcfile.read(p), args.sigma) for s, p in zip(ds.stems, ds.mic_paths)}
        ref_xy, ref_img = referee_centres(images, ds.truth, box)
        d = np.concatenate([ref_xy[s] - ds.truth[s] for s in ds.stems])
        dn = np.hypot(d[:, 0], d[:, 1])
        row = {"set": ds.name, "box_px": round(box, 2), "n": int(len(d)),
               "truth_to_referee": {"median_px": round(float(np.median(dn)), 3),
                                    "median_D": round(float(np.median(dn)) / box, 4),
                                    "p90_D": round(float(np.quantile(dn, 0.9)) / box, 4),
                                    "mean_px": [round(float(v), 3) for v in d.mean(0)]}}
        if ds.kind == "simulated":  # the referee checked on the same start, jittered
            rng = np.random.default_rng(0)
            jit = {s: v + rng.normal(0, box / 12, v.shape) for s, v in ds.truth.items()}
            jx, _ = referee_centres(images, jit, box)
            dj = np.concatenate([jx[s] - ds.truth[s] for s in ds.stems])
            row["referee_from_jittered_truth_to_exact"] = {
                "median_D": round(float(np.median(np.hypot(dj[:, 0], dj[:, 1]))) / box, 4)}
        for name, picker in pickers.items():
            p = picks_of(picker, ds)
            row[name] = {"vs_truth": scores(p, ds.truth, box), "vs_referee": scores(p, ref_xy, box)}
        results.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(f"{'set':26s} {'truth->ref D':>12s} | {'AP truth det/ref':>17s} | {'AP referee det/ref':>19s} | "
          f"{'med D truth det/ref':>20s} | {'med D referee det/ref':>22s}")
    for r in results:
        t = r["truth_to_referee"]
        print(f"{r['set']:26s} {t['median_D']:12.3f} | {r['detector']['vs_truth']['AP']:8.3f} "
              f"{r['refined']['vs_truth']['AP']:8.3f} | {r['detector']['vs_referee']['AP']:9.3f} "
              f"{r['refined']['vs_referee']['AP']:9.3f} | {r['detector']['vs_truth']['median_err_D']:10.3f} "
              f"{r['refined']['vs_truth']['median_err_D']:9.3f} | {r['detector']['vs_referee']['median_err_D']:11.3f} "
              f"{r['refined']['vs_referee']['median_err_D']:10.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
