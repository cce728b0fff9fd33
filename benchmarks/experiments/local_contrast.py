#!/usr/bin/env python
"""Experiment (issue 14, not shipped): local contrast normalisation before the network, on the tuning sets.

The pick path normalises each prepared micrograph once (``preprocess.highpass_normalise_t``: high-pass, then
one robust z-score for the whole micrograph), so a part with more noise (thin carbon over part of the field,
thick ice) reaches the network at a higher contrast than the rest. This variant divides the high-passed image
by its local RMS (values clipped at ``--cap`` robust SDs, Gaussian window of ``--window`` particle extents),
then z-scores and clips as before, and runs ``compare_models.py`` with it patched in (in-process; compare the
JSON with the same command's ``--window 0``, the product as it is).

  OMP_NUM_THREADS=2 python benchmarks/experiments/local_contrast.py --window 4 -- default --clean 0 --threads 2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))


def local_normalise(window_extents: float, cap: float):
    from hydrapicker import preprocess as pp

    plain = pp.highpass_normalise_t

    def normalise(img, sigma_px: float, clip: float = 5.0):
        z = plain(img, sigma_px, clip=float("inf"))  # high-pass and the micrograph's robust z-score
        rms2 = pp.gaussian_blur_t(z.clamp(-cap, cap) ** 2, window_extents * sigma_px / 4.0)  # sigma_px = 4 extents
        z = z / (rms2 / pp._median(rms2)).clamp_min(0.05).sqrt()
        med = pp._median(z)
        mad = pp._median((z - med).abs()) * 1.4826
        return ((z - med) / mad).clamp_(-clip, clip)

    return normalise


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--window", type=float, default=4.0, help="local window (Gaussian sigma) in particle extents; 0: off")
    ap.add_argument("--cap", type=float, default=3.0, help="values clipped at this many SDs for the local RMS")
    ap.add_argument("compare_args", nargs=argparse.REMAINDER, help="-- then compare_models.py's arguments")
    args = ap.parse_args(argv)
    import compare_models
    from hydrapicker import preprocess

    if args.window > 0:
        preprocess.highpass_normalise_t = local_normalise(args.window, args.cap)
    rest = args.compare_args[1:] if args.compare_args[:1] == ["--"] else args.compare_args
    return compare_models.main(rest)


if __name__ == "__main__":
    sys.exit(main())
