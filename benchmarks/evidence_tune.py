#!/usr/bin/env python
"""How micrograph evidence (`hydrapicker.postprocess.weigh_by_evidence`) was chosen: on simulated
training-family junk sets, never on the benchmark targets or the real sets.

Each set is a random training-family dataset (`random_dataset_spec`, seeds 7,770,000 and up: none of the
training runs' seeds) with the artefacts of `junk_fields` and 35 % of its micrographs junk-only, 5
micrographs each. The model picks every candidate above 0.01 with raw FOMs once; each setting is then
applied to those FOMs: every FOM of a micrograph times min(1, m / (c x the model's calibrated threshold)) ** p,
m = the mean of its k best FOMs (those it lacks counted as 0). Per setting: the mean over sets of AP and best
F1, and the picks per particle-free micrograph at each set's best-F1 threshold.

  python benchmarks/evidence_tune.py --model generic-junk-distilled --json evidence_tune.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SEED0 = 7_770_000


def tune_sets(n_sets: int, n_mics: int, work: Path, model, threads: int) -> tuple:
    """Raw candidates of every tuning micrograph -> (rows, calibrated threshold of the generic head)."""
    import mrcfile

    from hydrapicker.checkpoint import threshold_for
    from hydrapicker.micrographs import collect_micrographs
    from hydrapicker.picker import Picker, configure_torch
    from hydrapicker.simulate.datasets import junk_fields, random_dataset_spec
    from hydrapicker.simulate.micrograph import simulate_micrograph

    configure_torch(threads)
    picker = Picker(model, device="cpu", log=lambda *a, **k: None)
    rows = []
    for s in range(SEED0, SEED0 + n_sets):
        spec = random_dataset_spec(s)
        spec = spec.replace(name=f"tune{s}", **{**junk_fields(s), "p_junk_only": 0.35})
        files, truth = [], {}
        for i in range(n_mics):
            m = simulate_micrograph(spec, i)
            f = work / f"{m.name}.mrc"
            with mrcfile.new(f, overwrite=True) as out:
                out.set_data(m.image)
                out.voxel_size = m.pixel_size
            files.append(str(f))
            truth[f.stem] = np.asarray(m.xy, dtype=float).reshape(-1, 2)
        policy = picker.policy(spec.diameter_A, "generic", threshold=0.01, evidence=False)
        for r in picker.pick(collect_micrographs(files), spec.diameter_A, head="generic", policy=policy):
            name = Path(r.micrograph.name).stem
            rows.append(dict(set=spec.name, mic=name, d_px=spec.diameter_A / spec.pixel_size, truth=truth[name],
                             xy=r.picks.xy(), fom=np.asarray(r.picks.fom)))
        print(f"[tune] {spec.name}: {[len(truth[k]) for k in truth]} particles", flush=True)
    return rows, float(threshold_for(picker.meta, "generic"))


def score(rows, weigh) -> dict:
    """Mean AP, mean best F1 and picks per particle-free micrograph (at each set's best-F1 threshold) of
    the FOMs ``weigh(fom)`` gives."""
    from hydrapicker.metrics import evaluate
    from hydrapicker.types import Picks

    sets = {}
    for r in rows:
        sets.setdefault(r["set"], []).append(r)
    aps, f1s, free = [], [], []
    for rs in sets.values():
        picks = {r["mic"]: Picks(r["xy"][:, 0], r["xy"][:, 1], weigh(r["fom"])) for r in rs}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = evaluate(picks, {r["mic"]: r["truth"] for r in rs}, rs[0]["d_px"])
        aps.append(res["AP"])
        f1s.append(res["F1"])
        free += [int((picks[r["mic"]].fom >= res["threshold"]).sum()) for r in rs if len(r["truth"]) == 0]
    return {"AP": float(np.mean(aps)), "F1": float(np.mean(f1s)), "picks_per_free_mean": float(np.mean(free)),
            "picks_per_free_median": float(np.median(free)), "n_sets": len(aps), "n_free": len(free)}


def weigher(k: int, c: float, p: float, calibrated: float):
    def weigh(fom):
        if len(fom) == 0:
            return fom
        m = float(np.sort(fom)[-k:].sum()) / k
        return fom * min(1.0, m / (c * calibrated)) ** p
    return weigh


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model file or shipped name (default: the shipped one)")
    ap.add_argument("--sets", type=int, default=30)
    ap.add_argument("--mics", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from hydrapicker.checkpoint import default_model_path

    model = args.model or str(default_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        rows, calibrated = tune_sets(args.sets, args.mics, Path(tmp), model, args.threads)
    results = [{"setting": "raw", **score(rows, lambda f: f)}]
    for k, c, p in itertools.product((5, 10, 20), (1.5, 2.0, 2.5), (1.0, 2.0, 3.0)):
        results.append({"setting": f"k{k} c{c}x p{p:g}", "k": k, "c": c, "p": p,
                        **score(rows, weigher(k, c, p, calibrated))})
    print(f"\nmodel {model}; calibrated threshold {calibrated:.3f}")
    print("| setting | mean AP | mean best F1 | picks / particle-free mic (mean, median) |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r['setting']} | {r['AP']:.4f} | {r['F1']:.4f} | {r['picks_per_free_mean']:.1f}, "
              f"{r['picks_per_free_median']:.1f} |")
    if args.json:
        from hydrapicker.atomic import write_text

        write_text(Path(args.json), json.dumps({"argv": sys.argv, "model": model, "calibrated": calibrated,
                                                "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
