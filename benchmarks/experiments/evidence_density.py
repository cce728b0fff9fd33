#!/usr/bin/env python
"""Micrograph evidence from the *density* of candidates, beside the strength of the best ones (issue 14).

Today's rule (`hydrapicker.postprocess.evidence_factor`) weighs a micrograph by the mean of its 20 best FOMs.
It cannot tell a particle-free micrograph from one with hundreds of weak (small, low-SNR) particles: both
have weak best candidates (README, Junk). The hypothesis tried here: they differ in how *many* candidates
reach a moderate FOM per unit of area (in particle diameters squared). A micrograph is then weighed by
max(strength factor, density factor), so a strong sparse micrograph passes by its best candidates and a dense
weak one by its count, while noise alone fails both; with that rescue the strength rule may be stricter.

Tuned the way the default was chosen (`benchmarks/evidence_tune.py`): the junk tuning sets (AP, picks per
particle-free micrograph at the best-F1 threshold) against the mixed-ice tuning sets (F1 at the calibrated
threshold must not fall), never the benchmark targets or the real sets.

  OMP_NUM_THREADS=1 python benchmarks/experiments/evidence_density.py --json out.json

Outcome (2026-12-07, README Junk; `docs/benchmarks/*evidence_density*_not_shipped_2026-12-07.json`): not
shipped. A stricter strength rule with the density rescue cuts the picks per particle-free tuning micrograph
(11 -> 4 at c = 4) but costs small low-SNR particles AP (worst tuning set -0.02; t_small80kda -0.022 on the
accuracy benchmark); at today's strength the rescue changes nothing. The core's rule as it was tried:
`git apply benchmarks/experiments/evidence_density.patch`, then `python benchmarks/junk.py --pickers hydra
--real --evidence R` and `python benchmarks/accuracy.py --sets targets --n-sim 8 --pickers hydra --evidence R`.
"""
from __future__ import annotations

import argparse
import itertools
import json
import pickle
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

import evidence_tune as et  # noqa: E402


def _area_D2(rows, cache: Path):
    """Each row's micrograph area in particle diameters squared (from the MRC header)."""
    import mrcfile

    for r in rows:
        if "area_D2" in r:
            continue
        hits = list(cache.glob(f"{r['set']}_n*/**/{r['mic']}.mrc"))
        with mrcfile.mmap(hits[0], permissive=True) as m:
            ny, nx = m.data.shape[-2:]
        r["area_D2"] = nx * ny / r["d_px"] ** 2
    return rows


def density_factor(fom, area_D2: float, level: float, dens_ref: float) -> float:
    """min(1, (candidates with FOM >= level per D²) / dens_ref)."""
    return min(1.0, float((np.asarray(fom) >= level).sum()) / max(area_D2, 1e-9) / dens_ref)


def weigher(calibrated: float, c: float, level_mult: float, dens_ref: float, k: int = 20, p: float = 1.0):
    """The combined rule on one micrograph row: FOMs x max(strength, density)."""
    from hydrapicker.postprocess import evidence_factor, evidence_reference

    ref = evidence_reference(calibrated, c)
    level = evidence_reference(calibrated, level_mult)

    def weigh(r):
        f = evidence_factor(r["fom"], ref, top_k=k, power=p)
        if dens_ref > 0:
            f = max(f, density_factor(r["fom"], r["area_D2"], level, dens_ref))
        return r["fom"] * f
    return weigh


def _rowwise(score_fn, rows, weigh, *a):
    """evidence_tune's scorers take a FOM -> FOM function; ours needs the row: give each row its own."""
    out = []
    for r in rows:
        w = weigh(r)
        out.append({**r, "fom": w})
    return score_fn(out, lambda f: f, *a)


def per_set_ap(rows, weigh) -> dict:
    """{junk tuning set: AP} with ``weigh`` applied to each row."""
    from hydrapicker.types import Picks

    out = {}
    for name, rs in et._by_set(rows).items():
        picks = {r["mic"]: Picks(r["xy"][:, 0], r["xy"][:, 1], weigh(r)) for r in rs}
        out[name] = float(et._evaluate(picks, rs)["AP"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--sets", type=int, default=30)
    ap.add_argument("--mics", type=int, default=5)
    ap.add_argument("--mix-mics", type=int, default=32)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/hydra_bench/threshold_auto/data"))
    ap.add_argument("--rows", type=Path, default=Path("/tmp/hydra_bench/evidence_density_rows.pkl"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--cs", type=float, nargs="+", default=[1.65, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0],
                    help="strength references (odds multiples of the calibrated threshold; 1e9 = strength off)")
    ap.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.75, 1.0],
                    help="density levels (odds multiples of the calibrated threshold)")
    ap.add_argument("--ks", type=int, nargs="+", default=[20], help="best FOMs averaged by the strength rule")
    ap.add_argument("--refs", type=float, nargs="+", default=[0.04, 0.08, 0.12, 0.16],
                    help="density references (candidates per D²)")
    args = ap.parse_args(argv)
    from hydrapicker.checkpoint import default_model_path, threshold_for
    from hydrapicker.picker import Picker, configure_torch

    model = args.model or str(default_model_path())
    configure_torch(args.threads)
    picker = Picker(model, device="cpu", log=lambda *a, **k: None)
    calibrated = float(threshold_for(picker.meta, "generic"))
    if args.rows.exists():
        junk, mixed = pickle.loads(args.rows.read_bytes())
    else:
        junk = et.junk_sets(picker, args.sets, args.mics, args.cache)
        mixed = et.mixed_sets(picker, args.mix_mics, args.cache)
    junk, mixed = _area_D2(junk, args.cache), _area_D2(mixed, args.cache)
    args.rows.write_bytes(pickle.dumps((junk, mixed)))

    # what the density looks like: particle-free vs with particles, at a few levels
    print(f"calibrated threshold {calibrated:.3f}")
    from hydrapicker.postprocess import evidence_reference
    for lm in (0.5, 1.0, 1.65):
        lv = evidence_reference(calibrated, lm)
        free = [float((r["fom"] >= lv).sum() / r["area_D2"]) for r in junk if len(r["truth"]) == 0]
        full = [float((r["fom"] >= lv).sum() / r["area_D2"]) for r in junk if len(r["truth"])]
        mix = [float((r["fom"] >= lv).sum() / r["area_D2"]) for r in mixed]
        q = lambda v: " ".join(f"{x:.4f}" for x in np.quantile(v, [0.1, 0.5, 0.9, 1.0]))  # noqa: E731
        print(f"level {lv:.3f} ({lm}x odds): density per D² (q10 q50 q90 max) free {q(free)} | "
              f"with particles {q(full)} | mixed-ice {q(mix)}")

    raw_mix = et.mixed_f1(mixed, lambda f: f, calibrated)
    base_ap = per_set_ap(junk, weigher(calibrated, 1.65, 1.0, 0.0, 20))  # today's rule
    results = []
    grid = [(1.65, 1.0, 0.0, 20)] + list(itertools.product(args.cs, args.levels, args.refs, args.ks))
    for c, lm, dref, k in grid:
        weigh = weigher(calibrated, c, lm, dref, k)
        mix = _rowwise(et.mixed_f1, mixed, weigh, calibrated)
        loss = {n: raw_mix[n] - v for n, v in mix.items()}
        ap_set = per_set_ap(junk, weigh)
        results.append({"k": k, "c": c, "level_mult": lm, "dens_ref": dref, **_rowwise(et.junk_score, junk, weigh),
                        "worst_set_AP_change": min(ap_set[n] - base_ap[n] for n in ap_set),
                        "mixed_loss_mean": float(np.mean(list(loss.values()))),
                        "mixed_loss_max": float(max(loss.values()))})
    ok = [r for r in results if r["mixed_loss_mean"] <= et.MAX_MEAN_LOSS and r["mixed_loss_max"] <= et.MAX_SET_LOSS]
    print("| k | c | level | dens_ref | junk AP | worst set vs today | best F1 | picks/free mean, median | "
          "mixed loss mean, max |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in sorted(results, key=lambda r: -r["AP"]):
        mark = " ok" if r in ok else ""
        print(f"| {r['k']} | {r['c']} | {r['level_mult']} | {r['dens_ref']} | {r['AP']:.4f} | {r['worst_set_AP_change']:+.4f} | {r['F1']:.4f} | "
              f"{r['picks_per_free_mean']:.1f}, {r['picks_per_free_median']:.1f} | "
              f"{r['mixed_loss_mean']:+.4f}, {r['mixed_loss_max']:+.4f}{mark} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "model": model, "calibrated": calibrated,
                                               "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
