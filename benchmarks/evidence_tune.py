#!/usr/bin/env python
"""How micrograph evidence (`hydrapicker.postprocess.weigh_by_evidence`) was chosen: on simulated tuning
sets only, never on the benchmark targets or the real sets.

Two kinds of tuning set, because the rule trades one against the other:
* junk sets: random training-family datasets (`random_dataset_spec`, seeds 7,770,000 and up: none of the
  training runs' seeds) with the artefacts of `junk_fields`, 35 % of their micrographs junk-only, 5
  micrographs each. Wanted: higher AP, fewer picks per particle-free micrograph.
* mixed-ice sets: `benchmarks/threshold_auto.py`'s `tune_mix_*` (held-out shapes, other seeds than its
  benchmark sets; ice thickness, defocus and SNR vary strongly within a set), 32 micrographs each. Their
  weak micrographs hold particles: F1 of the picks at the calibrated threshold must not fall.

The model picks every candidate above 0.01 with raw FOMs once; each setting is then applied to those FOMs:
every FOM of a micrograph times min(1, m / ref) ** p, m = the mean of its k best FOMs (those it lacks
counted as 0), ref the FOM whose odds are c times the calibrated threshold's. The chosen setting: the best mean junk-set AP among those that lose at
most 0.005 of mean mixed-ice F1 and at most 0.015 on any mixed-ice set.

  python benchmarks/evidence_tune.py --model generic-junk-distilled --json evidence_tune.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SEED0 = 7_770_000
MAX_MEAN_LOSS, MAX_SET_LOSS = 0.005, 0.015


def _candidates(picker, spec, n_mics: int, cache: Path) -> list:
    """Raw candidates (every pick above 0.01, micrograph evidence off) of ``n_mics`` micrographs of ``spec``,
    simulated once into ``cache``."""
    from bench_data import load_dataset, simulated_dataset
    from hydrapicker.micrographs import collect_micrographs

    ds = load_dataset(simulated_dataset(spec, cache, n_mics))
    policy = picker.policy(ds.diameter_A, "generic", threshold=0.01, evidence=False)
    rows = []
    for r in picker.pick(collect_micrographs([str(ds.root / n) for n in ds.mic_names]), ds.diameter_A,
                         head="generic", policy=policy):
        name = Path(r.micrograph.name).name.rsplit(".mrc", 1)[0]
        truth = np.asarray(ds.truth.get(name, np.zeros((0, 2))), dtype=float).reshape(-1, 2)
        rows.append(dict(set=ds.name, mic=name, d_px=ds.diameter_A / ds.pixel_size, truth=truth, xy=r.picks.xy(),
                         fom=np.asarray(r.picks.fom)))
    print(f"[tune] {ds.name}: {len(rows)} micrographs, {sum(len(r['truth']) for r in rows)} particles", flush=True)
    return rows


def junk_sets(picker, n_sets: int, n_mics: int, cache: Path) -> list:
    """Raw candidates of the junk tuning micrographs."""
    from hydrapicker.simulate.datasets import junk_fields, random_dataset_spec

    rows = []
    for s in range(SEED0, SEED0 + n_sets):
        spec = random_dataset_spec(s)
        rows += _candidates(picker, spec.replace(name=f"tune{s}", **{**junk_fields(s), "p_junk_only": 0.35}),
                            n_mics, cache)
    return rows


def mixed_sets(picker, n_mics: int, cache: Path) -> list:
    """Raw candidates of threshold_auto.py's tune_mix_* sets."""
    from threshold_auto import MIX_TARGETS, mixed_spec

    return sum((_candidates(picker, mixed_spec(t, seed_offset=100 + i, prefix="tune_mix"), n_mics, cache)
                for i, t in enumerate(MIX_TARGETS)), [])


def _by_set(rows) -> dict:
    sets = {}
    for r in rows:
        sets.setdefault(r["set"], []).append(r)
    return sets


def _evaluate(picks, rs):
    from hydrapicker.metrics import evaluate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate(picks, {r["mic"]: r["truth"] for r in rs}, rs[0]["d_px"])


def junk_score(rows, weigh) -> dict:
    """Mean AP and best F1 over the junk sets, picks per particle-free micrograph at each set's best-F1
    threshold."""
    from hydrapicker.types import Picks

    aps, f1s, free = [], [], []
    for rs in _by_set(rows).values():
        picks = {r["mic"]: Picks(r["xy"][:, 0], r["xy"][:, 1], weigh(r["fom"])) for r in rs}
        res = _evaluate(picks, rs)
        aps.append(res["AP"])
        f1s.append(res["F1"])
        free += [int((picks[r["mic"]].fom >= res["threshold"]).sum()) for r in rs if len(r["truth"]) == 0]
    return {"AP": float(np.mean(aps)), "F1": float(np.mean(f1s)), "picks_per_free_mean": float(np.mean(free)),
            "picks_per_free_median": float(np.median(free)), "n_free": len(free)}


def mixed_f1(rows, weigh, calibrated: float) -> dict:
    """{set: F1 of the picks at the calibrated threshold}."""
    from hydrapicker.types import Picks

    out = {}
    for name, rs in _by_set(rows).items():
        picks = {r["mic"]: Picks(r["xy"][:, 0], r["xy"][:, 1], weigh(r["fom"])).above(calibrated) for r in rs}
        res = _evaluate(picks, rs)
        p, rc = res["precision"], res["recall"]
        out[name] = float(2 * p * rc / (p + rc)) if p + rc > 0 else 0.0
    return out


def weigher(k: int, c: float, p: float, calibrated: float):
    """The core's rule (``evidence_factor`` against ``evidence_reference``) with setting (k, c, p)."""
    from hydrapicker.postprocess import evidence_factor, evidence_reference

    ref = evidence_reference(calibrated, c)
    return lambda fom: fom * evidence_factor(fom, ref, top_k=k, power=p)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model file or shipped name (default: the shipped one)")
    ap.add_argument("--sets", type=int, default=30, help="junk tuning sets")
    ap.add_argument("--mics", type=int, default=5, help="micrographs per junk tuning set")
    ap.add_argument("--mix-mics", type=int, default=32, help="micrographs per mixed-ice tuning set")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/hydra_bench/threshold_auto/data"),
                    help="where the tuning sets are simulated once (the mixed-ice ones: threshold_auto.py's cache)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ks", default="10,20", help="numbers of best FOMs averaged (k) to try, comma-separated")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from hydrapicker.checkpoint import default_model_path, threshold_for
    from hydrapicker.picker import Picker, configure_torch

    model = args.model or str(default_model_path())
    configure_torch(args.threads)
    picker = Picker(model, device="cpu", log=lambda *a, **k: None)
    calibrated = float(threshold_for(picker.meta, "generic"))
    junk = junk_sets(picker, args.sets, args.mics, args.cache)
    mixed = mixed_sets(picker, args.mix_mics, args.cache)
    raw_mix = mixed_f1(mixed, lambda f: f, calibrated)
    results = []
    settings = [("raw", None)] + [(f"k{k} c{c:g}x odds p{p:g}", (k, c, p)) for k, c, p in
                                  itertools.product([int(k) for k in args.ks.split(",")], (1.3, 1.5, 1.65, 1.8, 2.0, 2.5, 3.0), (1.0, 2.0, 4.0))]
    for label, kcp in settings:
        weigh = (lambda f: f) if kcp is None else weigher(*kcp, calibrated)
        mix = mixed_f1(mixed, weigh, calibrated)
        loss = {n: raw_mix[n] - v for n, v in mix.items()}
        results.append({"setting": label, **(dict(zip("kcp", kcp)) if kcp else {}), **junk_score(junk, weigh),
                        "mixed_F1": mix, "mixed_loss_mean": float(np.mean(list(loss.values()))),
                        "mixed_loss_max": float(max(loss.values()))})
    ok = [r for r in results[1:] if r["mixed_loss_mean"] <= MAX_MEAN_LOSS and r["mixed_loss_max"] <= MAX_SET_LOSS]
    chosen = max(ok, key=lambda r: r["AP"]) if ok else None
    print(f"\nmodel {model}; calibrated threshold {calibrated:.3f}")
    print("| setting | junk sets: mean AP | mean best F1 | picks / particle-free mic (mean, median) | "
          "mixed-ice F1 at the threshold: mean loss, worst set |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['setting']}{' (chosen)' if r is chosen else ''} | {r['AP']:.4f} | {r['F1']:.4f} | "
              f"{r['picks_per_free_mean']:.1f}, {r['picks_per_free_median']:.1f} | {r['mixed_loss_mean']:+.4f}, "
              f"{r['mixed_loss_max']:+.4f} |")
    if args.json:
        from hydrapicker.atomic import write_text

        write_text(Path(args.json), json.dumps({"argv": sys.argv, "model": model, "calibrated": calibrated,
                                                "chosen": chosen and chosen["setting"], "results": results},
                                               indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
