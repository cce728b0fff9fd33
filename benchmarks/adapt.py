#!/usr/bin/env python
"""Self-adaptation benchmark (issue 17): zero-shot, ``--adapt`` and 5-micrograph few-shot in one run.

Per set: the test micrographs are what a user would pick; ``--adapt`` learns from them without labels
(:func:`hydrapicker.adapt.adapt`, the code ``hydra pick --adapt`` runs); few-shot learns from 5 *other*
micrographs with every particle labelled (:func:`hydrapicker.finetune.finetune`). Reported on the test
micrographs: AP (IoU > 0.6 of D x D boxes, every pick above the floor kept), F1 of the written picks (at the
head's own threshold: the calibrated one, the adapted head's count-matched one, the few-shot head's), and
wall time on top of picking.

Sets: the held-out simulated targets (``t_*``), the junk targets (``j_*``, a third of their micrographs
particle-free) and the real validation sets (``real``; the first 5 of their micrographs are the few-shot
labels, the rest the test set; validation only: nothing about the method is tuned on them).

  OMP_NUM_THREADS=2 python benchmarks/adapt.py --threads 2                       # every set
  python benchmarks/adapt.py --sets t_small80kda j_proteasome --n-sim 12 --no-fewshot
  python benchmarks/adapt.py --timing                                           # 20 x 2048^2 cost only

Writes docs/benchmarks/adapt_<tag>_<date>.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_data import REAL_ROOT, _star_path, load_dataset, simulated_dataset  # noqa: E402

N_FEW = 5
SIM_SETS = ("t_small80kda", "t_rod", "t_ferritin_crowded", "t_ribosome", "t_proteasome", "t_micelle", "t_virus",
            "t_dumbbell_pp", "j_proteasome", "j_ribosome", "j_small80kda", "j_dumbbell_pp", "j_micelle")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sets", nargs="+", default=list(SIM_SETS) + ["real"])
    p.add_argument("--n-sim", type=int, default=12, help="test micrographs per simulated set")
    p.add_argument("--model", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-fewshot", action="store_true")
    p.add_argument("--no-adapt", action="store_true", help="zero-shot and few-shot columns only")
    p.add_argument("--centres", action="store_true",
                   help="also the centre refiner taught the data set after the head (adapt_centres column: hydra pick "
                        "--adapt, its default; the adapt column is then --adapt --no-adapt-centres)")
    p.add_argument("--class-centres", action="store_true",
                   help="also every column's picks with class-average centring (hydra pick --class-centres): "
                        "zero_shot_class, adapt_class, adapt_centres_class")
    p.add_argument("--product", action="store_true",
                   help="also hydra pick --adapt --all itself on the test micrographs (the command's rules, files read back)")
    p.add_argument("--timing", action="store_true", help="only the cost on 20 micrographs of 2048 x 2048")
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "hydra_bench_adapt"))
    p.add_argument("--tag", default="after")
    p.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                   help="override an AdaptSettings field (e.g. rounds=2), for choosing the defaults")
    p.add_argument("--refiner-setting", action="append", default=[], metavar="KEY=VALUE",
                   help="--centres: override a RefinerAdaptSettings field (e.g. steps=200)")
    p.add_argument("--draw", type=int, default=0,
                   help="another draw of the simulated sets (seed + DRAW): choose settings on a draw other "
                        "than the reported one (0)")
    p.add_argument("--half-cell", action="store_true",
                   help="every picker with the half-cell grid (hydra pick --half-cell; defaults.HALF_CELL_GRID)")
    p.add_argument("--data-set-weights", type=float, nargs="+", default=[],
                   help="with --class-centres: the class-centred columns again with class averages of the data "
                        "set (Picker.class_references), each pick moving by each of these fractions of the move")
    p.add_argument("--data-set-for", nargs="+", default=["all"], choices=["all", "few"],
                   help="with --data-set-weights: the data set's averages centre every micrograph (column _ds<w>) "
                        "or those with too few confident picks of their own (_dsfew<w>)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.half_cell:
        from hydrapicker import defaults

        defaults.HALF_CELL_GRID = True
    return args


def _spec(name):
    from hydrapicker.simulate import target_dataset_specs
    from hydrapicker.simulate.datasets import junk_target_specs

    return {s.name: s for s in list(target_dataset_specs()) + list(junk_target_specs())}[name]


def _sets(tokens, args):
    """-> [(name, kind, micrographs, truth by name, diameter A, box px, few-shot micrographs)]."""
    from hydrapicker.micrographs import read_micrographs_star

    out = []
    for tok in tokens:
        if tok == "real":
            roots = sorted(p for p in REAL_ROOT.iterdir() if (p / "meta.json").exists()) if REAL_ROOT.is_dir() else []
            kind = "real"
        else:
            spec = _spec(tok)
            if args.draw:
                spec = spec.replace(seed=spec.seed + args.draw, name=f"{spec.name}_draw{args.draw}")
            roots = [simulated_dataset(spec, Path(args.cache), args.n_sim + N_FEW)]
            kind = "simulated"
        for root in roots:
            ds = load_dataset(root)
            mics = read_micrographs_star(_star_path(root))
            by_stem = dict(zip(ds.stems, ds.mic_names))
            truth = {by_stem[s]: ds.truth[s] for s in ds.stems}
            names = {m.name: m for m in mics}
            ordered = [names[n] for n in ds.mic_names if n in names]
            out.append((ds.name if kind == "simulated" else root.name, kind, ordered[N_FEW:], truth,
                        ds.diameter_A, ds.box_px, ordered[:N_FEW]))
    return out


def _settings(args, cls=None, given=None):
    """``cls`` (default AdaptSettings) with the ``KEY=VALUE`` overrides ``given`` (default --setting)."""
    from dataclasses import fields, replace

    from hydrapicker.adapt import AdaptSettings

    cls = cls or AdaptSettings
    kinds = {f.name: f.type for f in fields(cls)}
    over = {}
    for kv in (args.setting if given is None else given):
        k, v = kv.split("=", 1)
        t = kinds[k]
        over[k] = (v.lower() in ("1", "true", "yes")) if t in (bool, "bool") else (int(v) if t in (int, "int") else float(v))
    return replace(cls(), **over)


def _refiner_settings(args):
    from hydrapicker.refine_adapt import RefinerAdaptSettings

    return _settings(args, RefinerAdaptSettings, args.refiner_setting)


def _score(picker, head, mics, truth, diameter_A, box_px, threshold, class_centres=False, refs=None):
    from hydrapicker.metrics import evaluate

    t0 = time.time()
    policy = picker.policy(diameter_A, head, threshold=None, class_centres=class_centres)
    if refs is not None:  # class averages of the data set's sample (Picker.class_references)
        picker = picker.with_class_references(refs)
    picks = {r.micrograph.name: r.picks for r in picker.pick(mics, diameter_A, head=head, policy=policy) if r.ok}
    secs = time.time() - t0
    tr = {k: truth[k] for k in picks}
    res = evaluate(picks, tr, box_px)
    w = evaluate({k: p.above(threshold) for k, p in picks.items()}, tr, box_px)
    pr, rc = float(w["precision"]), float(w["recall"])
    return {"AP": float(res["AP"]), "AP_centre": float(res["AP_centre"]), "threshold": float(threshold),
            "precision": pr, "recall": rc, "F1": 2 * pr * rc / max(pr + rc, 1e-12),
            "n_written": int(sum(len(p.above(threshold)) for p in picks.values())), "pick_seconds": round(secs, 1)}


def _product(name, mics, truth, diameter_A, box_px, args, work) -> dict:
    """``hydra pick --adapt --all`` on the test micrographs, as a user runs it: the command's own rules (head,
    refiner and class centring), its files read back and scored like the columns above."""
    from hydrapicker.cli import main as hydra
    from hydrapicker.coords import read_coords
    from hydrapicker.metrics import evaluate

    listing, out = work / f"{name}_test.txt", work / f"{name}_product"
    listing.write_text("".join(f"{m.path}\n" for m in mics))
    t0 = time.time()
    rc = hydra(["pick", f"@{listing}", "--apix", str(mics[0].pixel_size), "--diameter", str(diameter_A), "--out",
                str(out), "--adapt", "--all", "-j", str(args.threads), "--format", "star"])
    secs = time.time() - t0
    by_stem = {Path(m.path).stem: m.name for m in mics}
    picks = {by_stem[k]: v for k, v in read_coords(out).items() if k in by_stem}
    res = evaluate(picks, {k: truth[k] for k in picks}, box_px)
    return {"AP": float(res["AP"]), "AP_centre": float(res["AP_centre"]), "rc": rc, "seconds": round(secs, 1),
            "micrographs": len(picks)}


def _adapt_columns(row, base, name, mics, truth, diameter_A, box_px, args, work) -> None:
    """The --adapt columns of ``row``: the adapted head, with --centres its adapted refiner, with
    --class-centres class-centred too."""
    from hydrapicker.adapt import adapt
    from hydrapicker.picker import Picker

    t0 = time.time()
    a = adapt(base, mics, diameter_A, work / f"{name}_adapted.pt", settings=_settings(args), log=lambda *x: None)
    secs = time.time() - t0
    if a.accepted:
        p = Picker(a.model, log=None)
        row["adapt"] = _score(p, a.head, mics, truth, diameter_A, box_px, p.threshold_for(a.head))
    elif a.zero_shot is not None:  # refused, zero-shot at the working scale the data set chose
        row["adapt"] = _score(a.zero_shot, a.head, mics, truth, diameter_A, box_px, a.zero_shot.threshold_for(a.head))
    else:
        row["adapt"] = dict(row["zero_shot"])
    if a.accepted:  # what the head was trained on: orientations cached, epochs
        from hydrapicker.checkpoint import read_checkpoint

        ft = read_checkpoint(a.model)["meta"]["finetune"][a.head]
        row["adapt"].update(orientations=ft.get("orientations"), epochs=ft.get("epochs"))
    row["adapt"].update(accepted=a.accepted, reason=a.reason, seconds=round(secs, 1),
                        pseudo_positives=a.record.get("pseudo_positives"), rounds=a.record.get("rounds"),
                        working_scale=a.record.get("working_scale"), scale_top_scores=a.record.get("scale_top_scores"))
    if args.centres:  # --adapt-centres on top: the adapted (or zero-shot) picker's refiner taught the data set
        from hydrapicker.refine_adapt import picker_with_adapted_refiner

        src = p if a.accepted else (a.zero_shot or base)
        t0 = time.time()
        pr, ra = picker_with_adapted_refiner(src, mics, diameter_A, work / f"{name}_refiner.pt", a.head,
                                             settings=_refiner_settings(args), reuse=False, log=print)
        secs = time.time() - t0
        row["adapt_centres"] = _score(pr, a.head, mics, truth, diameter_A, box_px, pr.threshold_for(a.head))
        row["adapt_centres"].update(accepted=ra.accepted, reason=ra.reason, seconds=round(secs, 1),
                                    positives=ra.record.get("positives"), fallback=ra.record.get("fallback"))
        if args.class_centres:
            row["adapt_centres_class"] = _score(pr, a.head, mics, truth, diameter_A, box_px, pr.threshold_for(a.head),
                                                class_centres=True)
            _data_set_columns(row, "adapt_centres_class", pr, a.head, mics, truth, diameter_A, box_px, args)
    if args.class_centres:  # hydra pick --class-centres on the zero-shot and the adapted head's picks
        row["zero_shot_class"] = _score(base, base.default_head, mics, truth, diameter_A, box_px,
                                        base.default_threshold, class_centres=True)
        if not args.centres:
            _data_set_columns(row, "zero_shot_class", base, base.default_head, mics, truth, diameter_A, box_px, args)
        src = p if a.accepted else (a.zero_shot or base)
        row["adapt_class"] = _score(src, a.head, mics, truth, diameter_A, box_px, src.threshold_for(a.head),
                                    class_centres=True)


def _data_set_columns(row, key, picker, head, mics, truth, diameter_A, box_px, args) -> None:
    """``--data-set-weights``: column ``key`` again with class averages of the data set's sample (the test
    micrographs, as --adapt's sample: :func:`hydrapicker.class_centres.data_set_classes`), each pick taking
    each weight of the move found -> ``<key>_ds<w>`` (the shipped weight is ``ClassCentreSettings.weight``)."""
    from dataclasses import replace

    from hydrapicker import class_centres

    if not args.data_set_weights:
        return
    from hydrapicker.adapt import AdaptSettings

    t0 = time.time()
    refs = class_centres.data_set_classes(picker, mics, diameter_A, head, picker.policy(
        diameter_A, head, threshold=None, class_centres=True), AdaptSettings().sample, log=lambda *a: None).class_refs
    secs = round(time.time() - t0, 1)
    shipped = class_centres.DEFAULT_SETTINGS
    for where in args.data_set_for:
        for w in args.data_set_weights:
            col = f"{key}_ds{'' if where == 'all' else where}{w:g}"
            if refs is None:
                row[col] = {**row[key], "data_set_refs": "too few confident picks"}
                continue
            class_centres.DEFAULT_SETTINGS = replace(shipped, weight=w, data_set_for=where)
            try:
                row[col] = {**_score(picker, head, mics, truth, diameter_A, box_px, picker.threshold_for(head),
                                     class_centres=True, refs=refs),
                            "data_set_confident": refs.confident, "data_set_seconds": secs}
            finally:
                class_centres.DEFAULT_SETTINGS = shipped


def run_set(item, args, work):
    from hydrapicker.finetune import finetune
    from hydrapicker.picker import Picker
    from hydrapicker.types import Picks

    name, kind, mics, truth, diameter_A, box_px, few = item
    base = Picker(args.model, log=None)
    row = {"set": name, "kind": kind, "n_test": len(mics), "n_truth": int(sum(len(truth[m.name]) for m in mics)),
           "diameter_A": diameter_A}
    row["zero_shot"] = _score(base, base.default_head, mics, truth, diameter_A, box_px, base.default_threshold)
    if not args.no_adapt:
        _adapt_columns(row, base, name, mics, truth, diameter_A, box_px, args, work)
    else:  # the tables read the adapt column: here it is zero-shot, and says so
        row["adapt"] = {**row["zero_shot"], "accepted": False, "reason": "--no-adapt", "seconds": 0.0}
    if args.no_adapt and args.class_centres:
        row["zero_shot_class"] = _score(base, base.default_head, mics, truth, diameter_A, box_px,
                                        base.default_threshold, class_centres=True)
    if args.product:
        row["product_adapt"] = _product(name, mics, truth, diameter_A, box_px, args, work)
    if not args.no_fewshot:
        labels = {m.name: Picks(truth[m.name][:, 0], truth[m.name][:, 1]) for m in few}
        t0 = time.time()
        out = finetune(args.model, few, labels, diameter_A, "fs5", out=work / f"{name}_fs5.pt", log=None)
        secs = time.time() - t0
        p = Picker(out, log=None)
        row["fewshot5"] = _score(p, "fs5", mics, truth, diameter_A, box_px, p.threshold_for("fs5"))
        row["fewshot5"]["seconds"] = round(secs, 1)
        if p.refiner is not None:  # the head's own centres, without the refiner taught its labels (--no-refine)
            row["fewshot5_own_centres"] = _score(Picker(out, log=None, refine=False), "fs5", mics, truth, diameter_A,
                                                 box_px, p.threshold_for("fs5"))
        if args.class_centres:  # the few-shot head's picks class-centred (hydra pick --class-centres)
            row["fewshot5_class"] = _score(p, "fs5", mics, truth, diameter_A, box_px, p.threshold_for("fs5"),
                                           class_centres=True)
    return row


def timing(args, work):
    """Cost of --adapt on 20 micrographs of 2048 x 2048 (a proteasome-like target at 4 A/px)."""
    from hydrapicker.adapt import adapt
    from hydrapicker.micrographs import read_micrographs_star
    from hydrapicker.picker import Picker

    spec = _spec("t_proteasome").replace(shape=(2048, 2048), name="t_proteasome_2048")
    root = simulated_dataset(spec, Path(args.cache), 20)
    mics = read_micrographs_star(_star_path(root))
    base = Picker(args.model, log=None)
    t0 = time.time()
    list(base.pick(mics, spec.diameter_A, head="generic"))
    pick_s = time.time() - t0
    t0 = time.time()
    a = adapt(base, mics, spec.diameter_A, work / "timing_adapted.pt", settings=_settings(args), log=lambda *x: None)
    out = {"micrographs": len(mics), "shape": [2048, 2048], "pick_seconds": round(pick_s, 1),
           "adapt_extra_seconds": round(time.time() - t0, 1), "accepted": a.accepted, "threads": args.threads}
    if args.centres:  # --adapt-centres after it: the refiner taught the same micrographs
        from hydrapicker.refine_adapt import picker_with_adapted_refiner

        t0 = time.time()
        _, ra = picker_with_adapted_refiner(Picker(a.model, log=None) if a.accepted else base, mics, spec.diameter_A,
                                            work / "timing_refiner.pt", settings=_refiner_settings(args),
                                            reuse=False, log=lambda *x: None)
        out.update(adapt_centres_extra_seconds=round(time.time() - t0, 1), centres_accepted=ra.accepted)
        if args.class_centres:  # the final picks, as hydra pick --adapt writes them, without and with class centring
            final = Picker(a.model if a.accepted else args.model, log=None, refine=str(ra.path) if ra.accepted else "auto")
            head = a.head
            for key, on in (("final_pick_seconds", False), ("final_pick_class_centres_seconds", True)):
                t0 = time.time()
                list(final.pick(mics, spec.diameter_A, head=head,
                                policy=final.policy(spec.diameter_A, head, class_centres=on)))
                out[key] = round(time.time() - t0, 1)
            # --adapt's last step: the class averages of the data set's sample, then the picks centred on them
            from hydrapicker.adapt import AdaptSettings
            from hydrapicker.class_centres import data_set_classes

            policy = final.policy(spec.diameter_A, head, class_centres=True)
            t0 = time.time()
            ds = data_set_classes(final, mics, spec.diameter_A, head, policy, AdaptSettings().sample, log=lambda *x: None)
            out["data_set_classes_seconds"] = round(time.time() - t0, 1)
            t0 = time.time()
            list(ds.pick(mics, spec.diameter_A, head=head, policy=policy))
            out["final_pick_data_set_class_centres_seconds"] = round(time.time() - t0, 1)
    return out


def print_table(rows):
    head = f"{'set':26s} {'zero AP':>7s} {'adapt':>7s} {'few5':>7s} | {'zero F1':>7s} {'adapt':>7s} {'few5':>7s} | adapt s"
    print(head)
    for r in rows:
        z, a, f = r["zero_shot"], r["adapt"], r.get("fewshot5", {})
        print(f"{r['set']:26s} {z['AP']:7.3f} {a['AP']:7.3f} {f.get('AP', float('nan')):7.3f} | {z['F1']:7.3f} "
              f"{a['F1']:7.3f} {f.get('F1', float('nan')):7.3f} | {a['seconds']:6.0f}"
              + ("" if a["accepted"] else f"  (kept zero-shot: {a['reason'][:60]})"))
    gains = [r["adapt"]["AP"] - r["zero_shot"]["AP"] for r in rows]
    print(f"mean AP gain {np.mean(gains):+.3f}, worst {min(gains):+.3f}")
    if all("adapt_centres" in r for r in rows):
        for r in rows:
            c = r["adapt_centres"]
            print(f"{r['set']:26s} head + centres (--adapt) AP {c['AP']:.3f} (F1 {c['F1']:.3f}, {c['seconds']:.0f} s"
                  + ("" if c["accepted"] else ", centres kept: " + c["reason"][:50]) + ")")
        gains = [r["adapt_centres"]["AP"] - r["zero_shot"]["AP"] for r in rows]
        print(f"head + centres (--adapt): mean AP gain {np.mean(gains):+.3f}, worst {min(gains):+.3f}")
    for key in ("zero_shot_class", "adapt_class", "adapt_centres_class"):
        if all(key in r for r in rows):
            gains = [r[key]["AP"] - r["zero_shot"]["AP"] for r in rows]
            print(f"{key} (--class-centres): " + ", ".join(f"{r['set']} {r[key]['AP']:.3f}" for r in rows)
                  + f"; mean AP gain over zero-shot {np.mean(gains):+.3f}, worst {min(gains):+.3f}")


def main(argv=None) -> int:
    from hydrapicker.picker import configure_torch

    args = parse_args(argv)
    configure_torch(args.threads)
    work = Path(tempfile.mkdtemp(prefix="hydra_adapt_bench_"))
    out = {"meta": {"date": datetime.date.today().isoformat(), "command": "python benchmarks/adapt.py "
                    + " ".join(argv if argv is not None else sys.argv[1:]), "host": platform.node(),
                    "threads": args.threads, "model": args.model or "shipped default", "n_sim": args.n_sim,
                    "settings": __import__("dataclasses").asdict(_settings(args)), "draw": args.draw,
                    "refiner_settings": __import__("dataclasses").asdict(_refiner_settings(args))}}
    if args.timing:
        out["timing"] = timing(args, work)
        print(json.dumps(out["timing"]))
    else:
        rows = []
        for item in _sets(args.sets, args):
            rows.append(run_set(item, args, work))
            r = rows[-1]
            print(f"[bench] {r['set']}: zero {r['zero_shot']['AP']:.3f} adapt {r['adapt']['AP']:.3f} few5 "
                  f"{r.get('fewshot5', {}).get('AP', float('nan')):.3f} ({r['adapt']['reason']})"
                  + (f" adapt+centres {r['adapt_centres']['AP']:.3f}" if "adapt_centres" in r else "")
                  + (f" adapt+centres+class {r['adapt_centres_class']['AP']:.3f}" if "adapt_centres_class" in r else "")
                  + (f" hydra pick --adapt {r['product_adapt']['AP']:.3f}" if "product_adapt" in r else "")
                  + (f" zero+class {r['zero_shot_class']['AP']:.3f}" if "zero_shot_class" in r else "")
                  + (f" few5+class {r['fewshot5_class']['AP']:.3f}" if "fewshot5_class" in r else ""), flush=True)
        out["rows"] = rows
    path = Path(args.json or Path(__file__).resolve().parent.parent / "docs" / "benchmarks" /
                f"adapt_{args.tag}_{datetime.date.today().isoformat()}.json")
    path.write_text(json.dumps(out, indent=1))  # before the table: a table that fails loses no measurement
    print(f"wrote {path}")
    if "rows" in out:
        print_table(out["rows"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
