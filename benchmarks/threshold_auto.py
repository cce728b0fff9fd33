"""Per-micrograph thresholds (``hydrapicker.thresholds.auto_threshold``) against the model's one calibrated
threshold: F1 of the written picks on datasets whose micrographs differ strongly within one set.

Sets:

* ``mix_*``: simulated held-out targets (``hydrapicker.simulate.target_dataset_specs``) with wide
  per-micrograph ranges: SNR x10-20, defocus 0.5-4 um, ice gradient 2.5 (per micrograph: 0 to 2.5 times
  the thickness field), ice spectrum ``ice_alpha`` 0-1.5, B-factor 30-250, micrograph contrast ...
  (``mixed_spec``); micrographs 512^2 to keep it fast on a CPU;
* ``tune_mix_*``: the same recipes with other seeds (the only sets the rule's defaults may be tuned on);
* ``real``: the real validation sets in ``../shared/data/real`` (validation only, never tuned on).

Every set is picked once with the shipped model, every pick above the floor kept (the ``Picker`` API
with no threshold, what ``hydra pick --all`` writes); the candidates are cached. Then per set:
``default`` = the picks with FOM >= the model's calibrated threshold, ``auto`` = each micrograph's picks
with FOM >= ``auto_threshold(its FOMs, calibrated)``. F1 = 2PR/(P+R) of exactly those picks
(``hydrapicker.metrics.evaluate``: IoU > 0.6 of D x D boxes); ``best fixed`` is the best single threshold
of the set chosen with the truth and ``oracle/mic`` the set's F1 with every micrograph's threshold
chosen with the truth (oracles: the headroom of one threshold and of per-micrograph thresholds).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/threshold_auto.py --sets tune mix real --n 32 \
        --json docs/benchmarks/threshold_auto_$(date +%F).json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_data import load_dataset, real_set_dirs, simulated_dataset  # noqa: E402

# held-out targets the mixed sets are built on (shape, diameter and particle kept; imaging widened)
MIX_TARGETS = ("t_ribosome", "t_proteasome", "t_micelle", "t_ferritin_crowded")


def mixed_spec(target: str, seed_offset: int = 0, prefix: str = "mix"):
    """A target with micrographs that differ strongly within the set (see the module docstring)."""
    from hydrapicker.simulate import get_target

    t = get_target(target)
    lo = 0.5 * t.snr[0]
    hi = max(2.0 * t.snr[1], 10 * lo)
    return t.replace(name=f"{prefix}_{target[2:]}", seed=t.seed + 7919 * (1 + seed_offset), shape=(512, 512),
                     snr=(round(lo, 4), round(hi, 4)), defocus_um=(0.5, 4.0), ice_gradient=2.5,
                     ice_alpha=(0.0, 1.5), bfactor=(30.0, 250.0), structural_fraction=(0.05, 0.6),
                     background_scale=1.5,
                     description=t.description + "; mixed ice thickness, defocus and SNR within the set")


def pick_candidates(ds, picker, cache: Path, log=print, evidence=None) -> dict:
    """{stem: Picks} of every pick above the floor (cached next to the dataset, keyed on the model and the
    micrograph evidence multiple and the test-time views: ``evidence`` as ``hydra pick --evidence``, None =
    the default)."""
    from hydrapicker.postprocess import evidence_multiple
    from hydrapicker.types import Micrograph, Picks

    model = Path(picker.meta.get("path", "model"))
    key = (f"{model.stem}_{int(model.stat().st_mtime) if model.exists() else 0}"
           f"_ev{evidence_multiple(evidence):g}_tta{picker.tta}")
    f = cache / f"candidates_{ds.name}_{len(ds.stems)}_{key}.npz"
    if f.exists():
        z = np.load(f)
        return {s: Picks(z[f"{s}/x"], z[f"{s}/y"], z[f"{s}/fom"]) for s in ds.stems}
    t0 = time.time()
    mics = [Micrograph(str(p), pixel_size=ds.pixel_size, name=s) for p, s in zip(ds.mic_paths, ds.stems)]
    out = {}
    policy = picker.policy(ds.diameter_A, threshold=None, evidence=evidence)
    for res in picker.pick(mics, diameter_A=ds.diameter_A, policy=policy):
        if res.error is not None:
            raise RuntimeError(f"{res.micrograph.name}: {res.error}")
        out[res.micrograph.name] = res.picks
    log(f"[bench] picked {ds.name}: {len(mics)} micrographs in {time.time() - t0:.0f} s")
    arrays = {}
    for s, p in out.items():
        arrays.update({f"{s}/x": p.x, f"{s}/y": p.y, f"{s}/fom": p.fom})
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(f, **arrays)
    return out


def f1_of(picks: dict, ds) -> dict:
    from hydrapicker.metrics import evaluate

    r = evaluate(picks, ds.truth, ds.box_px, warn=lambda m: None)
    p, rc = float(r["precision"]), float(r["recall"])
    p = 0.0 if math.isnan(p) else p
    return {"F1": 0.0 if p + rc == 0 else 2 * p * rc / (p + rc), "precision": p, "recall": rc,
            "n_picks": int(r["n_picks"]), "n_tp": int(r["n_tp"]), "n_truth": int(r["n_truth"]),
            "best_F1": float(r["F1"]), "best_threshold": float(r["threshold"])}


def oracle_per_micrograph(ds, cands: dict, calibrated: float, passes: int = 3) -> tuple:
    """Headroom: the set's F1 with each micrograph's threshold chosen with the truth (coordinate ascent
    over a 0.05-0.90 grid, from the calibrated threshold; greedy matching in score order, so a
    thresholded subset's matches are those of the whole candidate list). Returns (F1, thresholds)."""
    from hydrapicker.metrics import match_greedy

    tp = {s: match_greedy(p, np.asarray(ds.truth[s]).reshape(-1, 2), ds.box_px, 0.6)[0] >= 0
          for s, p in cands.items()}
    n_truth = ds.n_truth
    grid = np.round(np.arange(0.05, 0.901, 0.01), 2)
    thr = {s: calibrated for s in cands}
    counts = {s: ((cands[s].fom >= thr[s]).sum(), (tp[s] & (cands[s].fom >= thr[s])).sum()) for s in cands}

    def f1(n_picks, n_tp):
        return 2.0 * n_tp / np.maximum(n_picks + n_truth, 1)
    for _ in range(passes):
        for s, p in cands.items():
            rest_p = sum(c[0] for k, c in counts.items() if k != s)
            rest_t = sum(c[1] for k, c in counts.items() if k != s)
            n_p = (p.fom[None, :] >= grid[:, None]).sum(axis=1)
            n_t = ((p.fom[None, :] >= grid[:, None]) & tp[s][None, :]).sum(axis=1)
            i = int(np.argmax(f1(rest_p + n_p, rest_t + n_t)))
            if f1(rest_p + n_p[i], rest_t + n_t[i]) > f1(rest_p + counts[s][0], rest_t + counts[s][1]):
                thr[s], counts[s] = float(grid[i]), (n_p[i], n_t[i])
    return f1(sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())), thr


def compare(ds, cands: dict, calibrated: float, floor: float, **kw) -> dict:
    from hydrapicker.thresholds import auto_threshold

    default = {s: p.above(calibrated) for s, p in cands.items()}
    auto, per_mic = {}, {}
    for s, p in cands.items():
        t, info = auto_threshold(p.fom, calibrated, floor=floor, **kw)
        auto[s] = p.above(t)
        per_mic[s] = {"threshold": round(t, 4), "method": info["method"], "reason": info.get("reason", ""),
                      "n_candidates": info["n"], "n_truth": int(len(ds.truth[s]))}
        if info["method"] == "mixture":
            per_mic[s]["logit_particle_mean"] = round(info["logit_means"][1], 4)
    d, a = f1_of(default, ds), f1_of(auto, ds)
    oracle_f1, oracle_t = oracle_per_micrograph(ds, cands, calibrated)
    for s in per_mic:
        per_mic[s]["oracle_threshold"] = oracle_t[s]
    ts = [m["threshold"] for m in per_mic.values()]
    return {"set": ds.name, "kind": ds.kind, "n_micrographs": len(cands), "n_truth": ds.n_truth,
            "calibrated": calibrated, "default": d, "auto": a, "delta_F1": a["F1"] - d["F1"],
            "best_fixed_F1": d["best_F1"], "best_fixed_threshold": d["best_threshold"],
            "oracle_per_micrograph_F1": oracle_f1,
            "auto_thresholds": {"min": min(ts), "median": float(np.median(ts)), "max": max(ts),
                                "n_fit": sum(m["method"] == "mixture" for m in per_mic.values())},
            "per_micrograph": per_mic}


def fit_particle_mode_rule(rows: list, calibrated: float) -> dict:
    """How ``auto_threshold``'s ``slope`` and ``mode_offset`` were chosen: the least-squares line of every
    trusted-fit micrograph's oracle logit threshold on its fitted particle mean, ``z_o - z_c = a + b (mu_p -
    z_c)``, over the ``tune_mix_*`` sets only; ``slope = b``, ``mode_offset = -a / b``."""
    from hydrapicker.thresholds import logit

    zc = float(logit(calibrated))
    x, y = [], []
    for r in rows:
        if not r["set"].startswith("tune_mix"):
            continue
        for m in r["per_micrograph"].values():
            if "logit_particle_mean" in m:
                x.append(m["logit_particle_mean"] - zc)
                y.append(float(logit(m["oracle_threshold"])) - zc)
    if len(x) < 3:
        return {}
    b, a = np.polyfit(np.asarray(x), np.asarray(y), 1)
    return {"n_micrographs": len(x), "slope": float(b), "mode_offset": float(-a / b) if b else float("nan")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32, help="micrographs per simulated set")
    ap.add_argument("--sets", nargs="+", default=["mix", "real"],
                    help="mix (the mixed sets), tune (the tuning sets: other seeds), real")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("HYDRA_BENCH_CACHE",
                                                                         "/tmp/hydra_bench/threshold_auto")))
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-shift", type=float, default=None, help="auto_threshold max_shift (default: its own)")
    ap.add_argument("--rule", default=None, help="auto_threshold rule (default: its own)")
    ap.add_argument("--evidence", type=float, default=None,
                    help="micrograph evidence multiple as hydra pick --evidence (default: the core's; 0 = off)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from hydrapicker.picker import Picker, configure_torch

    dirs = []
    for tok in args.sets:
        if tok in ("mix", "tune"):
            for i, t in enumerate(MIX_TARGETS):
                spec = mixed_spec(t) if tok == "mix" else mixed_spec(t, seed_offset=100 + i, prefix="tune_mix")
                dirs.append(simulated_dataset(spec, args.cache / "data", args.n))
        elif tok == "real":
            dirs += real_set_dirs()
        else:
            dirs.append(Path(tok))
    configure_torch(args.threads)
    picker = Picker(model=args.model, device="cpu", log=lambda *a: None)
    calibrated = float(picker.meta.get("default_threshold", 0.5))
    floor = float(picker.meta.get("floor", 0.05))
    kw = {} if args.max_shift is None else {"max_shift": args.max_shift}
    if args.rule is not None:
        kw["rule"] = args.rule
    rows = []
    for d in dirs:
        ds = load_dataset(d)
        cands = pick_candidates(ds, picker, args.cache / "candidates", evidence=args.evidence)
        rows.append(compare(ds, cands, calibrated, floor, **kw))

    head = (f"{'set':28s} {'mics':>4s} {'truth':>5s} | {'F1 default':>10s} {'P':>5s} {'R':>5s} | "
            f"{'F1 auto':>7s} {'P':>5s} {'R':>5s} | {'dF1':>6s} | {'auto t min/med/max':>18s} {'fit':>5s} | "
            f"{'best fixed (t)':>14s} {'oracle/mic':>10s}")
    print(f"model {picker.meta.get('path')}: calibrated threshold {calibrated:g}, floor {floor:g}")
    print(head)
    print("-" * len(head))
    for r in rows:
        d, a, t = r["default"], r["auto"], r["auto_thresholds"]
        print(f"{r['set']:28s} {r['n_micrographs']:4d} {r['n_truth']:5d} | {d['F1']:10.3f} {d['precision']:5.2f} "
              f"{d['recall']:5.2f} | {a['F1']:7.3f} {a['precision']:5.2f} {a['recall']:5.2f} | "
              f"{r['delta_F1']:+6.3f} | {t['min']:.2f}/{t['median']:.2f}/{t['max']:.2f}{'':>4s} "
              f"{t['n_fit']:2d}/{r['n_micrographs']:<2d} | {r['best_fixed_F1']:.3f} ({r['best_fixed_threshold']:.2f})  "
              f"{r['oracle_per_micrograph_F1']:10.3f}")
    fitted = fit_particle_mode_rule(rows, calibrated)
    if fitted:
        print(f"particle-mode line fitted on the tune sets' {fitted['n_micrographs']} trusted-fit micrographs: "
              f"slope {fitted['slope']:.3f}, mode_offset {fitted['mode_offset']:.3f} "
              f"(auto_threshold's defaults: 0.32, 1.0)")
    if args.json:
        from hydrapicker.atomic import write_text
        from hydrapicker.postprocess import evidence_multiple

        out = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv, "model": str(picker.meta.get("path")),
               "calibrated_threshold": calibrated, "floor": floor, "auto_threshold_kwargs": kw,
               "particle_mode_fit_on_tune_sets": fitted,
               "evidence_multiple": evidence_multiple(args.evidence),
               "n_per_simulated_set": args.n, "mix_targets": list(MIX_TARGETS),
               "specs": {r["set"]: None for r in rows}, "rows": rows}
        for d in dirs:
            meta = d / "meta.json"
            if meta.exists():
                m = json.loads(meta.read_text())
                if m.get("simulator"):
                    out["specs"][m["name"]] = m["spec"]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.json, json.dumps(out, indent=1, default=float))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
