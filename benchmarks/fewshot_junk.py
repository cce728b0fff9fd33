#!/usr/bin/env python
"""Few-shot on junk: does a new head learn the user's junk?

Per junk target (`hydrapicker.simulate.datasets.junk_target_specs`: held-out particle shapes with every kind
of junk) it simulates 3 labelled micrographs, one of them junk-only (given with an empty coordinate list:
"nothing to pick here"), and ``--test`` test micrographs (a third particle-free on average), and reports AP
(IoU > 0.6) on the test micrographs of the zero-shot generic head, of the fine-tuned head, and of the
zero-shot head on the clean twins of the test micrographs (the same particles without the junk: the
reference the issue asks to come within 0.05 of; the twins of particle-free micrographs hold nothing and are
left out), the same two heads' AP on the junk test micrographs that hold particles, plus the picks per particle-free test micrograph at each
head's own calibrated threshold, and the written picks' F1 at that threshold on the test micrographs.

  OMP_NUM_THREADS=1 python benchmarks/fewshot_junk.py --json docs/benchmarks/fewshot_junk.json
  python benchmarks/fewshot_junk.py --model runs/junk1/model.pt --targets j_proteasome --test 6
  python benchmarks/fewshot_junk.py --model generic-junk --test 12 --draws 3     # mean over 3 labelled draws
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fewshot import ap_of, write_set  # noqa: E402


def _pick_indices(spec, n_particles: int, n_empty: int, start: int):
    """The first micrograph indices from ``start`` giving ``n_particles`` with particles and ``n_empty``
    junk-only ones."""
    from hydrapicker.simulate.artefacts import artefact_rng

    full, empty, i = [], [], start
    while len(full) < n_particles or len(empty) < n_empty:
        junk_only = bool(spec.p_junk_only and artefact_rng(spec.seed, i).random() < spec.p_junk_only)
        (empty if junk_only else full).append(i)
        i += 1
    return full[:n_particles] + empty[:n_empty]


def _picks_per_empty(picker, head, mics, truth, spec):
    """Mean picks per particle-free micrograph at the head's own calibrated threshold."""
    counts = []
    pol = picker.policy(spec.diameter_A, head, threshold="model")
    for r in picker.pick(mics, spec.diameter_A, head=head, policy=pol):
        if len(truth[r.micrograph.name]) == 0:
            counts.append(len(r.picks))
    return float(np.mean(counts)) if counts else None


def _at_threshold(key: str, res: dict) -> dict:
    """``{key: AP, key_F1, key_precision, key_recall}``: AP with every pick kept, and the written picks' (at
    the head's own threshold) precision, recall and F1 on the test micrographs."""
    p, r = res["precision_at_thr"], res["recall_at_thr"]
    p = 0.0 if p != p else p  # NaN: no pick written
    return {key: res["AP"], f"{key}_precision": p, f"{key}_recall": r,
            f"{key}_F1": 0.0 if p + r == 0 else 2 * p * r / (p + r)}


def run_target(spec, args, base, work: Path) -> dict:
    """Zero-shot on the test micrographs (and their clean twins), then one few-shot head per draw of 3
    labelled micrographs (draw d: the first 2 with particles and 1 junk-only from index 100 d; seed d)."""
    from hydrapicker.finetune import finetune
    from hydrapicker.picker import Picker, configure_torch
    from hydrapicker.simulate.datasets import clean_version

    configure_torch(args.threads)

    te_idx = list(range(1000, 1000 + args.test))
    te_mics, te_truth = write_set(spec, work / "test", te_idx)
    cl_idx = [i for i, (k, v) in zip(te_idx, te_truth.items()) if len(v)]
    if not cl_idx:  # AP is undefined without a single particle
        raise SystemExit(f"fewshot_junk: all {len(te_idx)} test micrographs of {spec.name} are particle-free; "
                         "use a larger --test")
    cl_mics, cl_truth = write_set(clean_version(spec), work / "clean", cl_idx)
    quiet = lambda *a: None  # noqa: E731
    zs = Picker(base, device="cpu", log=quiet)
    # AP also on the test micrographs that hold particles: the gap to the clean twins without the
    # particle-free micrographs' picks (which their clean twins, holding nothing, are not asked about)
    with_particles = [k for k, v in te_truth.items() if len(v)]
    zero_shot = ap_of(zs, "generic", te_mics, te_truth, spec, zs.threshold_for("generic"), subset=with_particles)
    row = {"target": spec.name, "n_test": len(te_idx),
           "n_test_particle_free": int(sum(len(v) == 0 for v in te_truth.values())),
           **_at_threshold("zero_shot_junk", zero_shot),
           "zero_shot_clean": ap_of(zs, "generic", cl_mics, cl_truth, spec)["AP"],
           "zero_shot_junk_with_particles": zero_shot["AP_subset"]}
    row["zero_shot_picks_per_empty"] = _picks_per_empty(zs, "generic", te_mics, te_truth, spec)
    draws = []
    for d in range(args.draws):
        tr_idx = _pick_indices(spec, 2, 1, 100 * d)
        tr_mics, tr_truth = write_set(spec, work / f"train{d}", tr_idx)
        out = finetune(base, tr_mics, tr_truth, spec.diameter_A, "target", out=work / f"fewshot{d}.pt",
                       seed=d, log=quiet, **args.settings)
        if args.blend is not None:  # experiment: the few-shot head weight-averaged with the generic head
            from hydrapicker.adapt import blend_head

            blend_head(out, "target", "generic", args.blend)
        ft = Picker(out, device="cpu", log=quiet)
        few_shot = ap_of(ft, "target", te_mics, te_truth, spec, ft.threshold_for("target"), subset=with_particles)
        draws.append({"train_indices": tr_idx, "threshold": ft.threshold_for("target"),
                      **_at_threshold("fewshot_junk", few_shot),
                      "fewshot_junk_with_particles": few_shot["AP_subset"],
                      "fewshot_picks_per_empty": _picks_per_empty(ft, "target", te_mics, te_truth, spec)})
        if ft.refiner is not None:  # the head's own centres: without the refiner taught its labels (--no-refine)
            own = Picker(out, device="cpu", log=quiet, refine=False)
            draws[-1]["fewshot_junk_own_centres"] = ap_of(own, "target", te_mics, te_truth, spec)["AP"]
    row["draws"] = draws
    if all("fewshot_junk_own_centres" in r for r in draws):
        row["fewshot_junk_own_centres"] = float(np.mean([r["fewshot_junk_own_centres"] for r in draws]))
    row["fewshot_junk"] = float(np.mean([r["fewshot_junk"] for r in draws]))
    row["fewshot_junk_F1"] = float(np.mean([r["fewshot_junk_F1"] for r in draws]))
    row["fewshot_junk_with_particles"] = float(np.mean([r["fewshot_junk_with_particles"] for r in draws]))
    pe = [r["fewshot_picks_per_empty"] for r in draws if r["fewshot_picks_per_empty"] is not None]
    row["fewshot_picks_per_empty"] = float(np.mean(pe)) if pe else None
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", nargs="+", default=["j_proteasome", "j_ribosome", "j_small80kda", "j_dumbbell_pp"])
    p.add_argument("--model", default=None, help="base model (default: the shipped one)")
    p.add_argument("--test", type=int, default=6)
    p.add_argument("--draws", type=int, default=1,
                   help="few-shot heads per target, each on its own 3 labelled micrographs (the table gives the mean)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword of hydrapicker.finetune.finetune (a number), e.g. lambda_tie=0.1")
    p.add_argument("--blend", type=float, default=None,
                   help="experiment: move the few-shot head to generic + BLEND x (few-shot - generic) after training "
                        "(its calibrated threshold is not re-set: AP is the measure)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.settings = {}
    for kv in args.setting:
        key, _, value = kv.partition("=")
        if not key or not value:
            p.error(f"--setting {kv!r}: give KEY=VALUE")
        args.settings[key] = float(value)
    from hydrapicker.checkpoint import default_model_path
    from hydrapicker.simulate.datasets import junk_target_specs

    base = args.model or str(default_model_path())  # a file or a shipped model's name (read_checkpoint resolves it)
    specs = {s.name: s for s in junk_target_specs()}
    rows = []
    for name in args.targets:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(run_target(specs[name], args, base, Path(tmp)))
        print(json.dumps(rows[-1]), flush=True)
    f = lambda v, s=".3f": "-" if v is None else format(v, s)  # noqa: E731
    print(f"\n{args.draws} draw(s) of 3 labelled micrographs per target; few-shot columns are their means")
    print("| target | zero-shot AP (clean twins) | zero-shot AP (junk) | few-shot AP (junk) | AP on the junk mics with "
          "particles zero-shot -> few-shot | F1 of the written picks (junk) zero-shot -> few-shot | picks / "
          "particle-free mic zero-shot -> few-shot |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | {f(r['zero_shot_clean'])} | {f(r['zero_shot_junk'])} | {f(r['fewshot_junk'])} | "
              f"{f(r['zero_shot_junk_with_particles'])} -> {f(r['fewshot_junk_with_particles'])} | "
              f"{f(r['zero_shot_junk_F1'])} -> {f(r['fewshot_junk_F1'])} | "
              f"{f(r['zero_shot_picks_per_empty'], '.1f')} -> {f(r['fewshot_picks_per_empty'], '.1f')} |")
    if any("fewshot_junk_own_centres" in r for r in rows):
        print("few-shot AP (junk) with the heads' own centres (no refiner taught the labels): "
              + ", ".join(f"{r['target']} {f(r.get('fewshot_junk_own_centres'))}" for r in rows))
    if args.json:
        from hydrapicker.atomic import write_text

        write_text(Path(args.json), json.dumps({"argv": sys.argv, "model": base, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
