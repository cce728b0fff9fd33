"""Compare simulated micrographs with the real validation sets: power spectra, SNR, what a particle looks like.

For each real set in ../shared/data/real, a simulated set is made at the same pixel size, particle diameter
and micrograph size, with the held-out target closest in shape (ribosome-like / apoferritin-like) and the SNR
range bracketing the SNR measured on the real micrographs. The figure shows, per set: a real and a
simulated crop, the radially averaged power spectra (each micrograph normalised to unit variance), the radial
profiles of the average of boxes extracted at the truth centres, and those two averages on one grey scale
(real vs simulated). It prints the measured numbers.

    python benchmarks/sim_vs_real.py [--real ../shared/data/real] [--out sim_vs_real.png] [--n 5]

Only reads the real data (validation); nothing is tuned automatically from it.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAIRS = {"ribosome80s_empiar10028": "t_ribosome", "apoferritin_empiar10146": "t_ferritin_crowded"}


def estimate_snr(img, xy, d):
    """Per-pixel SNR: (variance inside particle discs - variance far from particles) / the latter,
    after removing the background below ~2 particle diameters."""
    from scipy.ndimage import distance_transform_edt, gaussian_filter
    img = img.astype(np.float32)
    img = img - gaussian_filter(img, 2 * d)
    free = np.ones(img.shape, bool)
    ix = np.clip(np.round(xy).astype(int), 0, [img.shape[1] - 1, img.shape[0] - 1])
    free[ix[:, 1], ix[:, 0]] = False
    dist = distance_transform_edt(free)
    vi, vo = _robust_var(img[dist <= d / 2]), _robust_var(img[dist > d])
    return float((vi - vo) / vo)


def _robust_var(v):
    """Variance from the median absolute deviation (ignores contamination blobs and carbon edges)."""
    return float((1.4826 * np.median(np.abs(v - np.median(v)))) ** 2)


def radial_power(img, px, nbins=60):
    """Radially averaged power spectrum of a micrograph normalised to zero mean and unit variance."""
    a = img.astype(np.float64)
    a = (a - a.mean()) / (a.std() + 1e-12)
    ny, nx = a.shape
    win = np.outer(np.hanning(ny), np.hanning(nx))
    f = np.abs(np.fft.rfft2(a * win)) ** 2
    ky = np.fft.fftfreq(ny, px)[:, None]
    kx = np.fft.rfftfreq(nx, px)[None, :]
    k = np.sqrt(kx * kx + ky * ky)
    edges = np.linspace(0, 0.5 / px, nbins + 1)
    idx = np.digitize(k.ravel(), edges) - 1
    ok = (idx >= 0) & (idx < nbins)
    p = np.bincount(idx[ok], f.ravel()[ok], nbins) / np.maximum(np.bincount(idx[ok], minlength=nbins), 1)
    return 0.5 * (edges[1:] + edges[:-1]), p / p[1:].sum()


def box_average(img, xy, half, d):
    """Mean of the boxes at the truth centres, in units of the background noise std (after removing
    the background below ~2 particle diameters), so real and simulated contrasts compare directly."""
    from scipy.ndimage import distance_transform_edt, gaussian_filter
    a = img.astype(np.float32)
    a = a - gaussian_filter(a, 2 * d)
    free = np.ones(a.shape, bool)
    ix = np.clip(np.round(xy).astype(int), 0, [a.shape[1] - 1, a.shape[0] - 1])
    free[ix[:, 1], ix[:, 0]] = False
    a = a / a[distance_transform_edt(free) > d].std()
    out = [a[y - half:y + half + 1, x - half:x + half + 1] for x, y in np.round(xy).astype(int)
           if half <= x < a.shape[1] - half and half <= y < a.shape[0] - half]
    return np.mean(out, 0) if out else np.zeros((2 * half + 1,) * 2)


def radial_profile(avg):
    n = avg.shape[0]
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(xx - (n - 1) / 2, yy - (n - 1) / 2).round().astype(int)
    return np.bincount(r.ravel(), avg.ravel()) / np.bincount(r.ravel())


def load_real(base, n):
    import mrcfile
    import starfile
    meta = json.loads((base / "meta.json").read_text())
    mics = []
    for f in sorted(glob.glob(str(base / "Micrographs" / "*.mrc")))[:n]:
        t = starfile.read(base / "truth" / (Path(f).stem + ".star"))
        mics.append((mrcfile.read(f).astype(np.float32), t[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()))
    return meta, mics


def main(argv=None):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hydrapicker.simulate import get_target, simulate_micrograph

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "real"))
    ap.add_argument("--out", default="sim_vs_real.png")
    ap.add_argument("--n", type=int, default=5, help="micrographs per set")
    args = ap.parse_args(argv)

    sets = [(s, t) for s, t in PAIRS.items() if (Path(args.real) / s).is_dir()]
    if not sets:
        sys.exit(f"no real sets found under {args.real}")
    fig, axes = plt.subplots(len(sets), 6, figsize=(25, 4.7 * len(sets)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 1.15, 1.15, 1, 1]})
    for row, (set_name, target) in zip(axes, sets):
        meta, real = load_real(Path(args.real) / set_name, args.n)
        px, d = float(meta["apix"]), float(meta["diameter_px"])
        snr_real = [estimate_snr(im, xy, d) for im, xy in real]
        s_real = float(np.median(snr_real))
        spec = get_target(target).replace(pixel_size=px, diameter_A=d * px, shape=real[0][0].shape,
                                          snr=(s_real, s_real), p_empty=0.0, p_carbon=0.0)
        # calibrate the simulator's SNR parameter so that the particle average has the same depth (in units of
        # the background noise) as the real one: that is what "the same SNR" means for a picker
        half = int(round(0.9 * d))
        depth_real = np.min(radial_profile(np.mean([box_average(im, xy, half, d) for im, xy in real], 0)))
        for _ in range(3):
            probe = [simulate_micrograph(spec, 100 + i) for i in range(2)]
            depth = np.min(radial_profile(np.mean([box_average(m.image, m.xy, half, d) for m in probe], 0)))
            f = float(np.clip((depth_real / min(depth, -1e-3)) ** 2, 0.1, 10))
            spec = spec.replace(snr=(spec.snr[0] * f, spec.snr[1] * f))
        t0 = time.time()
        sim = [simulate_micrograph(spec, i) for i in range(args.n)]
        dt = (time.time() - t0) / args.n
        snr_sim = [estimate_snr(m.image, m.xy, d) for m in sim]
        print(f"  simulator SNR parameter giving the real particle contrast: {spec.snr[0]:.3f}")
        k, p_real = radial_power(real[0][0], px)
        p_real = np.mean([radial_power(im, px)[1] for im, _ in real], 0)
        p_sim = np.mean([radial_power(m.image, px)[1] for m in sim], 0)
        avg_real = np.mean([box_average(im, xy, half, d) for im, xy in real], 0)
        avg_sim = np.mean([box_average(m.image, m.xy, half, d) for m in sim], 0)
        pr_real, pr_sim = radial_profile(avg_real)[:half], radial_profile(avg_sim)[:half]
        hi = k > 0.25 / px
        print(f"{set_name}: {px:.2f} A/px, D = {d:.1f} px | vs simulated {target} ({spec.family})")
        print(f"  per-pixel SNR (disc vs background): real {np.round(snr_real, 3).tolist()}  "
              f"simulated {np.round(snr_sim, 3).tolist()}")
        print(f"  power above 1/(4 px): real {p_real[hi].sum():.3f}  simulated {p_sim[hi].sum():.3f} "
              f"(fraction of the normalised spectrum)")
        for lab, pr in (("real", pr_real), ("simulated", pr_sim)):
            i, j = int(np.argmin(pr)), int(np.argmax(pr[int(np.argmin(pr)):])) + int(np.argmin(pr))
            print(f"  {lab:9s} particle average (units of background noise std): darkest {pr[i]:+.2f} at "
                  f"r = {i} px, bright halo {pr[j]:+.2f} at r = {j} px; centre {pr[0]:+.2f}")
        print(f"  simulation: {dt:.3f} s per {spec.shape[1]}x{spec.shape[0]} micrograph, "
              f"{np.mean([len(m.xy) for m in sim]):.0f} particles/micrograph "
              f"(real: {np.mean([len(xy) for _, xy in real]):.0f} labelled)")
        c = min(256, real[0][0].shape[0], real[0][0].shape[1])
        crop = f"{c}x{c} px = {c * px / 10:.0f} nm crop"
        _show(row[0], real[0][0][:c, :c], f"REAL {set_name}\n{px:.2f} A/px, D = {d:.0f} px; {crop}")
        _show(row[1], sim[0].image[:c, :c], f"SIMULATED ({target})\nsame px, D and particle contrast; {crop}")
        row[2].semilogy(k, p_real, label=f"real ({len(real)} micrographs)")
        row[2].semilogy(k, p_sim, label=f"simulated ({len(sim)} micrographs)")
        row[2].set_xlabel("spatial frequency (1/A)")
        row[2].set_ylabel("power (each micrograph unit variance)")
        row[2].set_title("radially averaged power spectrum")
        row[2].legend(fontsize=8)
        r = np.arange(half)
        row[3].plot(r, pr_real, "o-", ms=3, label="real")
        row[3].plot(r, pr_sim, "o-", ms=3, label="simulated")
        row[3].axhline(0, color="k", lw=0.5)
        row[3].axvline(d / 2, color="gray", ls="--", lw=0.8, label="D/2")
        row[3].set_xlabel("radius from truth centre (px)")
        row[3].set_ylabel("mean intensity (background noise std)")
        row[3].set_title("radial profile of the particle average")
        row[3].legend(fontsize=8)
        # the two averages on one grey scale (both in units of the background noise std)
        lo, hi = np.percentile(np.concatenate([avg_real.ravel(), avg_sim.ravel()]), [1, 99])
        _show(row[4], avg_real, f"REAL: mean of {sum(len(xy) for _, xy in real)} boxes at truth\n"
              f"(grey scale shared with the next panel)", (lo, hi))
        _show(row[5], avg_sim, f"SIMULATED: mean of {sum(len(m.xy) for m in sim)} boxes at truth\n"
              f"(grey scale shared with the previous panel)", (lo, hi))
    fig.suptitle("Simulated vs real micrographs (simulator SNR calibrated so that the particle average has the "
                 "real depth in background-noise std; everything else from the held-out target spec)", fontsize=12)
    fig.tight_layout()
    fig.savefig(args.out, dpi=70)
    _shrink_png(args.out)
    print(f"wrote {args.out}")


def _shrink_png(path):
    """Re-save a PNG with a 256-colour palette (noisy greyscale panels compress badly as RGBA)."""
    if not str(path).lower().endswith(".png"):
        return
    from PIL import Image
    with Image.open(path) as im:
        q = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    q.save(path, optimize=True)


def _show(ax, img, title, limits=None):
    lo, hi = limits if limits is not None else np.percentile(img, [1, 99])
    ax.imshow(np.clip((img - lo) / (hi - lo + 1e-12), 0, 1), cmap="gray")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


if __name__ == "__main__":
    main()
