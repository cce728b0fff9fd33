#!/usr/bin/env python
"""Experiment (issue 18): a few-shot head's centres refined by a centre refiner taught the user's own labels.

Few-shot heads centre their protein worse than they find it (``benchmarks/fewshot.py``, 2026-12-06: AP 0.499
against AP_D/2 0.859 on t_dumbbell_pp, 0.531 / 0.806 on t_rod, 0.677 / 0.836 on t_small80kda), and the pick
path leaves them alone: the shipped refiner, made for the generic head's errors, moved their picks worse.
Here the shipped refiner is fine-tuned on the labelled micrographs the head was trained on, their labels as
targets (``refine_adapt.finetune_head``, the machinery of ``--adapt-centres``, which teaches pseudo-labels),
and refines the few-shot head's picks. Per set: ``--train`` labelled and ``--test`` other micrographs
(``fewshot.write_set``), the product's ``finetune``; AP (IoU 0.6) and AP_D/2 on the test micrographs, every
pick kept, of the few-shot head (a) as it picks, (b) refined by the shipped refiner, (c) refined by the
refiner taught its labels, (d) (c) with class-average centring after it.

Sets: ``--targets`` (the benchmark's held-out targets) or ``--tune N`` (training-family sets, seeds 7100 +
k, never a target or a real set: settings are chosen there).

Result (2026-12-07, tenth session): on 16 tuning sets (``--tune 16``, 5 labelled and 8 test micrographs each)
the refiner taught the labels gives mean AP 0.7890 -> 0.8093 (+0.020; 14 sets up by more than 0.005, none
down, worst -0.0002); mean AP_D/2 0.8900 -> 0.8886 (worst set -0.016); the shipped refiner -0.0005 (worst
-0.053). On five targets: t_dumbbell_pp 0.508 -> 0.597, t_rod 0.773 -> 0.808, t_ferritin_crowded 0.884 ->
0.905, t_proteasome 0.913 -> 0.918 (``fewshot_centres_targets_2026-12-07.json``; t_small80kda, in a first run, 0.728 -> 0.743); class centring after it adds nothing (-0.003
mean). Shipped as ``hydra finetune``'s default (``refine_adapt.teach_labelled_refiner``, which teaches the
labels as ``finetune.load_labelled`` prepares them; docs/results/centres.md).

  OMP_NUM_THREADS=2 python benchmarks/experiments/fewshot_centres.py --targets t_dumbbell_pp t_rod --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))


def teaching_mics(picker, mics, truth, diameter_A):
    """The labelled micrographs as the refiner's fine-tuning wants them: prepared images at the model's extent,
    the labels in their pixels."""
    from hydrapicker.preprocess import _cpu_tensor, prepare_t, read_mrc

    out = []
    for m in mics:
        data, apix = read_mrc(m.path)
        prep = prepare_t(_cpu_tensor(data), float(m.pixel_size or apix), diameter_A, float(picker.extent_px), path=m.path)
        xy = truth[m.name].xy() * np.array(prep.scale_xy, np.float64)[None, :]
        if len(xy):
            out.append(SimpleNamespace(image=prep.image.cpu().numpy(), xy=xy))
    return out


def labelled_refiner(picker, mics, truth, diameter_A, out: Path, steps: int, lr: float):
    """The product's :func:`hydrapicker.refine_adapt.teach_labelled_refiner` on ``teaching_mics``, with ``steps``
    and ``lr``: the refiner is written beside the (notional) model file ``out``."""
    from dataclasses import replace

    from hydrapicker.refine_adapt import LABELLED, teach_labelled_refiner

    taught = teach_labelled_refiner(picker.net, picker.meta, teaching_mics(picker, mics, truth, diameter_A), "target",
                                    out, log=lambda *a, **k: None, settings=replace(LABELLED, steps=steps, lr=lr))
    if not taught.accepted:
        raise RuntimeError(f"no refiner taught: {taught.reason}")
    return taught.path, (taught.record["loss_first"], taught.record["loss_last"])


def run_set(spec, args, work: Path) -> dict:
    import fewshot

    from hydrapicker import checkpoint
    from hydrapicker.finetune import finetune
    from hydrapicker.picker import Picker

    tr_mics, tr_truth = fewshot.write_set(spec, work / "train", range(args.train))
    te_mics, te_truth = fewshot.write_set(spec, work / "test", range(1000, 1000 + args.test))
    t0 = time.time()
    model = finetune(args.model, tr_mics, tr_truth, spec.diameter_A, "target", out=work / "fewshot.pt", seed=0,
                     log=lambda *a, **k: None, centre_refiner=False)  # the refiner is this experiment's own
    row = {"set": spec.name, "n_labels": int(sum(len(p) for p in tr_truth.values())),
           "finetune_s": round(time.time() - t0, 1)}
    quiet = lambda *a, **k: None  # noqa: E731

    def score(picker, class_centres=False):
        pol = picker.policy(spec.diameter_A, "target", threshold=0.01, class_centres=class_centres)
        picks = {r.micrograph.name: r.picks for r in picker.pick(te_mics, spec.diameter_A, head="target", policy=pol)}
        from hydrapicker.metrics import evaluate

        res = evaluate(picks, {k: v.xy() for k, v in te_truth.items()}, spec.diameter_px, warn=quiet)
        return {"AP": round(float(res["AP"]), 4), "AP_D2": round(float(res["AP_centre"]), 4)}

    plain = Picker(model, device="cpu", log=quiet, refine=None)
    row["fewshot"] = score(plain)
    learned = checkpoint.head_learned_centres
    checkpoint.head_learned_centres = lambda meta, head: False  # let a refiner act on the few-shot head
    try:
        try:
            row["shipped_refiner"] = score(Picker(model, device="cpu", log=quiet, refine="shipped"))
        except Exception as exc:  # a few-shot model at another working scale: no shipped refiner fits it
            row["shipped_refiner"] = {**row["fewshot"], "refused": str(exc)[:120]}
        t0 = time.time()
        path, losses = labelled_refiner(plain, tr_mics, tr_truth, spec.diameter_A, work / "labelled.pt",
                                        args.steps, args.lr)
        row["labelled_refiner_s"] = round(time.time() - t0, 1)
        row["labelled_refiner_loss"] = [round(v, 4) for v in losses]
        taught = Picker(model, device="cpu", log=quiet, refine=str(path))
        row["labelled_refiner"] = score(taught)
        if args.class_centres:
            row["labelled_refiner_class"] = score(taught, class_centres=True)
            row["fewshot_class"] = score(plain, class_centres=True)
    finally:
        checkpoint.head_learned_centres = learned
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", nargs="*", default=[])
    ap.add_argument("--tune", type=int, default=0, help="training-family tuning sets (seeds 7100 + k)")
    ap.add_argument("--tune-start", type=int, default=0)
    ap.add_argument("--model", default=None)
    ap.add_argument("--train", type=int, default=5)
    ap.add_argument("--test", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--class-centres", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/hydra_bench/fewshot_centres")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from hydrapicker.picker import configure_torch
    from hydrapicker.simulate.datasets import random_dataset_spec, target_dataset_specs

    configure_torch(args.threads)
    specs = [s for s in target_dataset_specs() if s.name in set(args.targets)]
    specs += [random_dataset_spec(7100 + k).replace(name=f"tune{7100 + k}")
              for k in range(args.tune_start, args.tune_start + args.tune)]
    rows = []
    for spec in specs:
        row = run_set(spec, args, Path(args.work) / spec.name)
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = [k for k in ("fewshot", "shipped_refiner", "labelled_refiner", "labelled_refiner_class", "fewshot_class")
            if all(k in r for r in rows)]
    for k in keys:
        d = np.array([r[k]["AP"] - r["fewshot"]["AP"] for r in rows])
        print(f"| {k} | mean AP {np.mean([r[k]['AP'] for r in rows]):.4f} | vs few-shot {d.mean():+.4f} | "
              f"worst {d.min():+.4f} | up / down (> 0.005) {(d > 0.005).sum()} / {(d < -0.005).sum()} | "
              f"mean AP_D/2 {np.mean([r[k]['AP_D2'] for r in rows]):.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
