#!/usr/bin/env python
"""Micrograph evidence against a decoy of the micrograph itself (issue 14): the target-decoy idea of proteomics.

Today's rule (`hydrapicker.postprocess.evidence_factor`) weighs a micrograph by the mean of its 20 best FOMs.
A particle-free micrograph and one with hundreds of weak (small, low-SNR) particles both have weak best
candidates, so no level of that rule separates them (README, Junk): the weak targets' best-F1 threshold is
low, and the particle-free micrographs keep their noise floor (j_small80kda: 72 picks each).

The hypothesis: what tells them apart is not how strong the best candidates are, but whether there are *more*
strong candidates than the micrograph's noise alone would give. The noise alone is measured on a decoy: the
same micrograph with its Fourier phases randomised (the same power spectrum: ice, CTF, particles' power; no
particle left). Let L be the FOM of the decoy's k-th best candidate (per the micrograph's area); a
micrograph of noise alone has about k candidates at or above L, one with particles many more. With
z = (candidates >= L) / k, every FOM of the micrograph is multiplied by clip((z - 1) / (z_full - 1), floor, 1)
on top of today's strength rule ("and" form), or the factor replaces a stricter strength rule's verdict
when it says "particles" ("rescue" form).

Tuned as the default was (`benchmarks/evidence_tune.py`): junk tuning sets (AP, picks per particle-free
micrograph at the best-F1 threshold) against the mixed-ice tuning sets (F1 at the calibrated threshold must
not fall), never the benchmark targets or the real sets. The decoys' candidates are computed once (the
network, evidence off, every candidate above 0.01, as the rows of `evidence_density.py`) and cached.

  OMP_NUM_THREADS=1 python benchmarks/experiments/evidence_decoy.py --json out.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import pickle
import zlib
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

import evidence_tune as et  # noqa: E402


def phase_randomised(image: np.ndarray, seed: int) -> np.ndarray:
    """The image with the same Fourier amplitudes and random phases (the mean kept)."""
    rng = np.random.default_rng(seed)
    img = np.asarray(image, np.float64)
    f = np.fft.rfft2(img - img.mean())
    ph = np.fft.rfft2(rng.standard_normal(img.shape))
    out = np.fft.irfft2(np.abs(f) * ph / np.maximum(np.abs(ph), 1e-30), s=img.shape)
    return (out + img.mean()).astype(np.float32)


def _mic_path(r, cache: Path) -> Path:
    hits = list(cache.glob(f"{r['set']}_n*/**/{r['mic']}.mrc"))
    if not hits:
        raise SystemExit(f"no micrograph for {r['set']}/{r['mic']} under {cache}")
    return hits[0]


def decoy_candidates(picker, rows, cache: Path, work: Path, seed: int = 0) -> None:
    """Adds r['decoy_fom'] (every decoy candidate above 0.01, evidence off) to every row."""
    import mrcfile

    from hydrapicker.micrographs import collect_micrographs

    by_set = {}
    for r in rows:
        if "decoy_fom" not in r:
            by_set.setdefault(r["set"], []).append(r)
    for name, rs in by_set.items():
        paths = []
        for r in rs:
            src = _mic_path(r, cache)
            dst = work / name / f"{r['mic']}.mrc"
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                with mrcfile.open(src, permissive=True) as m:
                    data, vs = np.asarray(m.data), m.voxel_size
                with mrcfile.new(dst, overwrite=True) as m:
                    m.set_data(phase_randomised(data, seed + zlib.crc32(r["mic"].encode())))
                    m.voxel_size = vs
            paths.append(str(dst))
        px = float(mrcfile.open(paths[0], permissive=True, header_only=True).voxel_size.x)
        diameter_A = rs[0]["d_px"] * px
        policy = picker.policy(diameter_A, "generic", threshold=0.01, evidence=False)
        got = {Path(res.micrograph.name).name.rsplit(".mrc", 1)[0]: np.asarray(res.picks.fom)
               for res in picker.pick(collect_micrographs(paths), diameter_A, head="generic", policy=policy)}
        for r in rs:
            r["decoy_fom"] = got[r["mic"]]
        print(f"[decoy] {name}: {len(rs)} micrographs", flush=True)


def decoy_z(fom, decoy_fom, k: int) -> float:
    """(candidates >= the decoy's k-th best FOM) / k."""
    d = np.sort(np.asarray(decoy_fom))[::-1]
    if len(d) < k:
        return float("inf") if len(fom) > len(d) else 1.0
    return float((np.asarray(fom) >= d[k - 1]).sum()) / k


def weigher(calibrated: float, c: float, k: int, z_full: float, form: str, floor: float = 0.0):
    from hydrapicker.postprocess import evidence_factor, evidence_reference

    ref = evidence_reference(calibrated, c)

    def weigh(r):
        s = evidence_factor(r["fom"], ref, top_k=20, power=1.0)
        z = decoy_z(r["fom"], r["decoy_fom"], k)
        d = float(np.clip((z - 1) / (z_full - 1), floor, 1.0)) if np.isfinite(z) else 1.0
        f = s * d if form == "and" else max(s, d)
        return r["fom"] * f

    return weigh


def _rowwise(score_fn, rows, weigh, *a):
    shadow = [dict(r, fom=weigh(r)) for r in rows]
    return score_fn(shadow, lambda fom: fom, *a)


def per_set_ap(rows, weigh) -> dict:
    from hydrapicker.types import Picks

    out = {}
    for name, rs in et._by_set(rows).items():
        picks = {r["mic"]: Picks(r["xy"][:, 0], r["xy"][:, 1], weigh(r)) for r in rs}
        out[name] = et._evaluate(picks, rs)["AP"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/hydra_bench/threshold_auto/data"))
    ap.add_argument("--rows", type=Path, default=Path("/tmp/hydra_bench/evidence_density_rows.pkl"))
    ap.add_argument("--decoy-rows", type=Path, default=Path("/tmp/hydra_bench/evidence_decoy_rows.pkl"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/hydra_bench/decoys"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--cs", type=float, nargs="+", default=[1.65, 2.5, 4.0])
    ap.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20, 40])
    ap.add_argument("--zs", type=float, nargs="+", default=[1.5, 2.0, 3.0, 5.0])
    args = ap.parse_args(argv)
    from hydrapicker.checkpoint import default_model_path, threshold_for
    from hydrapicker.picker import Picker, configure_torch

    model = args.model or str(default_model_path())
    configure_torch(args.threads)
    picker = Picker(model, device="cpu", log=lambda *a, **k: None)
    calibrated = float(threshold_for(picker.meta, "generic"))
    src = args.decoy_rows if args.decoy_rows.exists() else args.rows
    junk, mixed = pickle.loads(src.read_bytes())
    decoy_candidates(picker, junk + mixed, args.cache, args.work)
    args.decoy_rows.write_bytes(pickle.dumps((junk, mixed)))

    print(f"calibrated threshold {calibrated:.3f}")
    for k in args.ks:
        free = [decoy_z(r["fom"], r["decoy_fom"], k) for r in junk if len(r["truth"]) == 0]
        full = [decoy_z(r["fom"], r["decoy_fom"], k) for r in junk if len(r["truth"])]
        mix = [decoy_z(r["fom"], r["decoy_fom"], k) for r in mixed]
        q = lambda v: " ".join(f"{x:6.2f}" for x in np.quantile(v, [0.0, 0.1, 0.5, 0.9, 1.0]))  # noqa: E731
        print(f"k={k:3d} z (min q10 q50 q90 max): free {q(free)} | with particles {q(full)} | mixed-ice {q(mix)}")

    base_junk = et.junk_score(junk, lambda fom: fom * 1.0)
    today = lambda r: r["fom"] * __import__("hydrapicker.postprocess", fromlist=["x"]).evidence_factor(  # noqa: E731
        r["fom"], __import__("hydrapicker.postprocess", fromlist=["x"]).evidence_reference(calibrated, 1.65),
        top_k=20, power=1.0)
    today_junk = _rowwise(et.junk_score, junk, today)
    today_mix = _rowwise(et.mixed_f1, mixed, today, calibrated)
    off_mix = et.mixed_f1(mixed, lambda fom: fom, calibrated)
    today_sets = per_set_ap(junk, today)
    print(f"off:   junk AP {base_junk['AP']:.4f} picks/free {base_junk['picks_per_free_mean']:.1f}")
    print(f"today: junk AP {today_junk['AP']:.4f} picks/free {today_junk['picks_per_free_mean']:.1f} "
          f"(median {today_junk['picks_per_free_median']:.1f}) mixed F1 {np.mean(list(today_mix.values())):.4f}")
    results = []
    for c, k, z, form in itertools.product(args.cs, args.ks, args.zs, ["and", "rescue"]):
        w = weigher(calibrated, c, k, z, form)
        js = _rowwise(et.junk_score, junk, w)
        mx = _rowwise(et.mixed_f1, mixed, w, calibrated)
        loss = {s: off_mix[s] - mx[s] for s in mx}
        sets = per_set_ap(junk, w)
        d = [sets[s] - today_sets[s] for s in sets]
        row = {"c": c, "k": k, "z_full": z, "form": form, "junk_AP": round(js["AP"], 4),
               "picks_free": round(js["picks_per_free_mean"], 2), "picks_free_median": js["picks_per_free_median"],
               "mixed_loss_mean": round(float(np.mean(list(loss.values()))), 4),
               "mixed_loss_worst": round(float(max(loss.values())), 4),
               "worst_set_vs_today": round(float(min(d)), 4), "mean_vs_today": round(float(np.mean(d)), 4)}
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "calibrated": calibrated,
                                               "today": {"junk": today_junk, "mixed": today_mix},
                                               "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
