#!/usr/bin/env python
"""Experiment (issue 14): compare model files on tuning data, through the product's pick path.

Model choices are made here, never on the benchmark targets (``benchmarks/junk.py``, ``accuracy.py``: they
report) nor on the real sets (validation only). Two kinds of tuning set, the ones the other experiments use:
* clean: the 32 training-family sets of ``bench_data.tuning_sets`` (seeds 7100-7131, 3 micrographs each);
* junk: the 30 training-family junk sets of ``evidence_tune.py`` (seeds 7,770,000 and up, the artefacts of
  ``junk_fields``, 35 % of the micrographs junk-only, 5 micrographs each).

Each model picks every candidate above 0.01 (``hydra pick --all``: micrograph evidence, border bands, two
views, as the product picks) and is scored per set: AP (IoU 0.6), AP_D/2, and on the junk sets the picks
per junk-only micrograph at the model's own calibrated threshold and at the set's best-F1 threshold. The
table gives means, the paired difference to the first model, its worst set and the sets up / down by more
than 0.01.

  OMP_NUM_THREADS=1 python benchmarks/experiments/compare_models.py default runs/junk_deep/model.pt --json out.json
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
sys.path.insert(0, str(ROOT))

JUNK_SEED0 = 7_770_000  # as evidence_tune.SEED0


def junk_tuning_sets(n: int, cache: Path, n_micrographs: int = 5) -> list:
    """evidence_tune.py's junk tuning sets -> [(folder, "simulated")] (simulated once into ``cache``)."""
    from bench_data import simulated_dataset
    from hydrapicker.simulate.datasets import junk_fields, random_dataset_spec

    out = []
    for s in range(JUNK_SEED0, JUNK_SEED0 + n):
        spec = random_dataset_spec(s).replace(name=f"tune{s}", **{**junk_fields(s), "p_junk_only": 0.35})
        out.append((simulated_dataset(spec, cache, n_micrographs), "simulated"))
    return out


def score_set(picker, root, kind) -> dict:
    from bench_data import load_dataset
    from hydrapicker.metrics import evaluate, match_greedy
    from hydrapicker.types import Micrograph

    ds = load_dataset(root, kind=kind)
    mics = [Micrograph(str(p), pixel_size=ds.pixel_size, name=s) for s, p in zip(ds.stems, ds.mic_paths)]
    pol = picker.policy(ds.diameter_A, threshold=0.01)
    picks = {r.micrograph.name: r.picks for r in picker.pick(mics, ds.diameter_A, policy=pol)}
    ev = evaluate(picks, ds.truth, ds.box_px)
    row = {"set": ds.name, "AP": round(float(ev["AP"]), 4), "n_truth": int(sum(len(t) for t in ds.truth.values()))}
    written = {s: p.subset(p.fom >= picker.threshold_for("generic")) for s, p in picks.items()}
    ew = evaluate(written, ds.truth, ds.box_px, warn=lambda *a: None)
    row["f1_at_threshold"] = round(2 * ew["n_tp"] / max(ew["n_picks"] + ew["n_truth"], 1), 4)
    empty = [s for s in ds.stems if len(ds.truth[s]) == 0]
    if empty:
        thr = picker.threshold_for("generic")
        row["picks_per_empty_at_threshold"] = round(float(np.mean([(picks[s].fom >= thr).sum() for s in empty])), 2)
        # the set's best-F1 threshold over all its micrographs
        foms, tps = [], []
        for s in ds.stems:
            tp, _ = match_greedy(picks[s], np.asarray(ds.truth[s], float).reshape(-1, 2), ds.box_px)
            foms.append(np.asarray(picks[s].fom)), tps.append(tp >= 0)
        f, t = np.concatenate(foms), np.concatenate(tps)
        order = np.argsort(-f)
        ctp = np.cumsum(t[order])
        n_truth = max(row["n_truth"], 1)
        f1 = 2 * ctp / (np.arange(1, len(f) + 1) + n_truth)
        best = float(f[order][int(np.argmax(f1))]) if len(f) else 1.0
        row["best_f1"] = round(float(f1.max()) if len(f) else 0.0, 4)
        row["picks_per_empty_at_best_f1"] = round(float(np.mean([(picks[s].fom >= best).sum() for s in empty])), 2)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="model files or shipped names (the first is the reference)")
    ap.add_argument("--clean", type=int, default=32, help="clean tuning sets (0: none)")
    ap.add_argument("--junk", type=int, default=30, help="junk tuning sets (0: none)")
    ap.add_argument("--clean-cache", default="/work/bench/simtune")
    ap.add_argument("--junk-cache", default="/tmp/hydra_bench/threshold_auto/data")
    ap.add_argument("--half-cell", choices=("on", "off", "both"), default="off",
                    help="the half-cell grid (defaults.HALF_CELL_GRID): on, off, or each model both ways "
                         "(off first: the reference)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    from bench_data import tuning_sets
    from hydrapicker.picker import Picker, configure_torch

    configure_torch(args.threads)
    sets = []
    if args.clean:
        sets += [("clean", r, k) for r, k in tuning_sets(args.clean, Path(args.clean_cache))]
    if args.junk:
        sets += [("junk", r, k) for r, k in junk_tuning_sets(args.junk, Path(args.junk_cache))]
    runs = [(m, hc) for m in args.models for hc in {"on": (True,), "off": (False,), "both": (False, True)}[args.half_cell]]
    rows = {}
    for model, hc in runs:
        m = model if args.half_cell != "both" else f"{model}{' half-cell' if hc else ' one grid'}"
        picker = Picker(model, device="cpu", log=None, half_cell=hc)
        t0 = time.process_time()
        rows[m] = []
        for group, root, kind in sets:
            r = {"group": group, **score_set(picker, root, kind)}
            rows[m].append(r)
            print(json.dumps({"model": m, **r}), flush=True)
        print(f"[compare] {m}: {time.process_time() - t0:.0f} s CPU", flush=True)
    ref = next(iter(rows))
    print(f"\n| model | group | mean AP | vs {Path(ref).name} | worst | up / down (> 0.01) | picks / junk-only mic "
          f"(threshold / best F1) | F1 at the threshold |\n|---|---|---|---|---|---|---|---|")
    for m in rows:
        for g in ("clean", "junk"):
            a = [r for r in rows[m] if r["group"] == g]
            b = [r for r in rows[ref] if r["group"] == g]
            if not a:
                continue
            d = np.array([x["AP"] - y["AP"] for x, y in zip(a, b)])
            e = [x for x in a if "picks_per_empty_at_threshold" in x]
            pe = (f"{np.mean([x['picks_per_empty_at_threshold'] for x in e]):.1f} / "
                  f"{np.mean([x['picks_per_empty_at_best_f1'] for x in e]):.1f}") if e else ""
            f1 = [x["f1_at_threshold"] for x in a if "f1_at_threshold" in x]
            print(f"| {m} | {g} | {np.mean([x['AP'] for x in a]):.4f} | {d.mean():+.4f} | {d.min():+.4f} | "
                  f"{int((d > 0.01).sum())} / {int((d < -0.01).sum())} | {pe} | "
                  f"{np.mean(f1) if f1 else float('nan'):.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
