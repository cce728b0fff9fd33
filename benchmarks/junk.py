#!/usr/bin/env python
"""Junk benchmark: HydraPicker, Topaz resnet16_u64 and RELION LoG on held-out targets with and without junk.

Each junk target (a held-out particle shape, `hydrapicker.simulate.datasets.junk_target_specs`) is rendered
twice with the same particles at the same places: with junk (vesicles, ice crystals, gold, rimmed
contamination, thin carbon, clumps of other proteins, border bands, gain stripes, hot pixels; about a third
of its micrographs particle-free) and clean (`clean_version`: the artefacts drawn but not shown; the twins
of the particle-free micrographs are left out of its AP). Per target and picker it reports AP (IoU > 0.6 of D x D
boxes) on the clean and on the junk micrographs, precision and F1 at the picker's best-F1 threshold on the
junk micrographs, and the picks per particle-free micrograph at that threshold; beside it the picks at the
same threshold on those micrographs' clean twins, which hold nothing at all (picks there are the picker's
noise floor, not junk), and for HydraPicker the picks per particle-free micrograph at the model's own
calibrated threshold (what a user gets). With `--real`, the real
validation sets too: AP and the picks within one diameter of a micrograph edge (at the best-F1 threshold).

  python benchmarks/junk.py                                  # 4 targets x 6 micrographs, all three pickers
  python benchmarks/junk.py --pickers hydra --model runs/junk1/model.pt --json junk_new.json
  python benchmarks/junk.py --real --n-sim 9

Peers: benchmarks/setup_peers.sh. The real sets are validation data only: never tune on these numbers.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_data import load_dataset, real_set_dirs, simulated_dataset  # noqa: E402
from bench_pickers import PICKERS  # noqa: E402

DEFAULT_TARGETS = ("j_proteasome", "j_ribosome", "j_small80kda", "j_dumbbell_pp")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS))
    p.add_argument("--pickers", nargs="+", default=["hydra", "topaz", "log"], choices=sorted(PICKERS))
    p.add_argument("--model", default=None, help="HydraPicker model file (default: the shipped model)")
    p.add_argument("--n-sim", type=int, default=6, help="micrographs per junk target (default 6)")
    p.add_argument("--evidence", default=None, metavar="R", help="HydraPicker's micrograph evidence (hydra pick --evidence R; 0 = off)")
    p.add_argument("--refine", action="store_true", help="HydraPicker with its centre refiner (hydra pick --refine)")
    p.add_argument("--class-centres", action="store_true",
                   help="HydraPicker with class-average centring (hydra pick --class-centres)")
    p.add_argument("--half-cell", action="store_true", help="HydraPicker with the half-cell grid (hydra pick --half-cell)")
    p.add_argument("--keep-invalid", action="store_true",
                   help="HydraPicker keeps its picks in and near border bands and dead areas (hydra pick --keep-invalid)")
    p.add_argument("--tta", type=int, default=None, choices=(1, 2, 4, 8),
                   help="HydraPicker's test-time views (hydra pick --tta; default: its default)")
    p.add_argument("--real", action="store_true", help="also the real validation sets (AP, picks near edges)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="/tmp/hydra_bench/junk")
    p.add_argument("--sim-cache", default="/tmp/hydra_bench/sim")
    p.add_argument("--json", default=None, help="results JSON (default: <work>/junk.json)")
    return p.parse_args(argv)


def _run(name, ds, work, args):
    kw = {"threads": args.threads}
    if name == "hydra":
        kw["model"] = args.model
        kw["tta"] = args.tta
        kw["extra"] = (["--refine"] if args.refine else []) + (["--evidence", str(args.evidence)] if args.evidence is not None else []) + \
            (["--class-centres"] if args.class_centres else []) + (["--half-cell"] if args.half_cell else []) + \
            (["--keep-invalid"] if args.keep_invalid else [])
    return PICKERS[name](ds, work / ds.name / name, **kw)


def _metrics(picks, ds):
    from hydrapicker.metrics import evaluate

    res = evaluate({k: v for k, v in picks.items() if k in ds.truth}, ds.truth, ds.box_px, warn=lambda m: None)
    thr = res["threshold"]
    prec = None
    pr = res["pr"]
    if len(pr["thresholds"]) and thr == thr:
        k = int(np.argmin(np.abs(np.asarray(pr["thresholds"]) - thr)))
        prec = float(pr["precision"][k])
    f = lambda v: None if v is None or v != v else float(v)  # noqa: E731
    return {"AP": f(res["AP"]), "AP_centre": f(res["AP_centre"]), "F1": f(res["F1"]), "threshold": f(thr),
            "precision_at_F1": prec, "n_picks": int(res["n_picks"]), "n_truth": int(res["n_truth"])}


def _count_at(picks, names, thr):
    if thr is None:
        return None
    return [int(np.sum(picks[n].fom >= thr)) if n in picks else 0 for n in names]


def junk_target(name, args, work):
    from hydrapicker.simulate.datasets import clean_version, junk_target_specs

    spec = {s.name: s for s in junk_target_specs()}[name]
    cache = Path(args.sim_cache)
    junk = load_dataset(simulated_dataset(spec, cache, args.n_sim), kind="simulated")
    clean = load_dataset(simulated_dataset(clean_version(spec), cache, args.n_sim), kind="simulated")
    junk_only = [m["name"] for m in junk.meta["micrographs"] if m.get("junk_only")]
    # the clean twins of the particle-free micrographs hold nothing at all: they are picked (the picker's
    # noise floor: picks there are not on junk) but left out of the clean AP
    empty_clean = [s for s in clean.stems if s.replace(name + "_clean", name) in junk_only]
    clean.truth = {s: t for s, t in clean.truth.items() if s not in empty_clean}
    out = {"target": name, "description": spec.description, "n_micrographs": len(junk.mic_names),
           "n_particle_free": len(junk_only), "diameter_A": spec.diameter_A, "pixel_size": spec.pixel_size,
           "pickers": {}}
    for p in args.pickers:
        print(f"[junk] {name}: {p} ...", flush=True)
        row, runs = {}, {}
        for label, ds in (("clean", clean), ("junk", junk)):
            run = runs[label] = _run(p, ds, work, args)
            if run.error:
                row[label] = {"error": run.error}
                continue
            m = _metrics(run.picks, ds)
            m["cpu_s"] = run.cpu_s
            if label == "junk":
                # the gap's two parts: junk beside particles (AP on the micrographs that hold particles) and
                # the junk-only micrographs' picks ranked among the particles (AP over all of them)
                m["AP_with_particles"] = _metrics({k: v for k, v in run.picks.items() if k not in junk_only},
                                                  ds)["AP"]
                counts = _count_at(run.picks, junk_only, m["threshold"])
                m["picks_per_particle_free"] = (float(np.mean(counts)) if counts else None)
                if not runs["clean"].error:
                    # the same threshold on the same micrographs rendered without their junk (nothing at all)
                    counts = _count_at(runs["clean"].picks, empty_clean, m["threshold"])
                    m["picks_per_empty_clean"] = (float(np.mean(counts)) if counts else None)
                if p == "hydra":
                    # what a user gets: the model's own calibrated threshold
                    thr = _hydra_threshold(args.model)
                    counts = _count_at(run.picks, junk_only, thr)
                    m["default_threshold"] = thr
                    m["picks_per_particle_free_at_default"] = (float(np.mean(counts)) if counts else None)
            row[label] = m
        out["pickers"][p] = row
    return out


def _hydra_threshold(model) -> float:
    """The calibrated threshold of a HydraPicker model (a shipped model's name, a file, None = the default)."""
    from hydrapicker.checkpoint import DEFAULT_MODEL, default_head, read_checkpoint, threshold_for

    meta = read_checkpoint(model or DEFAULT_MODEL)["meta"]  # a shipped model's name resolves there
    return threshold_for(meta, default_head(meta))


def _edge_counts(picks, ds, thr):
    import mrcfile

    n_edge, n_all = 0, 0
    d = ds.box_px
    for stem, path in zip(ds.stems, ds.mic_paths):
        if stem not in picks:
            continue
        with mrcfile.mmap(path, permissive=True) as m:
            ny, nx = m.data.shape[-2:]
        p = picks[stem]
        sel = p.fom >= thr
        x, y = p.x[sel], p.y[sel]
        near = (x < d) | (y < d) | (x > nx - 1 - d) | (y > ny - 1 - d)
        n_edge += int(near.sum())
        n_all += int(sel.sum())
    return n_edge, n_all


def real_set(root, args, work):
    ds = load_dataset(root)
    out = {"set": ds.name, "n_micrographs": len(ds.mic_names), "pickers": {}}
    for p in args.pickers:
        print(f"[junk] real {ds.name}: {p} ...", flush=True)
        run = _run(p, ds, work, args)
        if run.error:
            out["pickers"][p] = {"error": run.error}
            continue
        m = _metrics(run.picks, ds)
        if m["threshold"] is not None:
            m["picks_near_edge"], m["picks_at_F1"] = _edge_counts(run.picks, ds, m["threshold"])
        m["cpu_s"] = run.cpu_s
        out["pickers"][p] = m
    return out


def fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def print_tables(res):
    print("\n| target | picker | AP clean | AP junk | AP junk, mics with particles | precision @ best F1 (junk) | F1 (junk) "
          "| picks / particle-free mic | the same mics without junk | picks / particle-free mic at the default threshold |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for t in res["targets"]:
        for p, row in t["pickers"].items():
            c, j = row.get("clean", {}), row.get("junk", {})
            print(f"| {t['target']} | {p} | {fmt(c.get('AP'))} | {fmt(j.get('AP'))} | {fmt(j.get('AP_with_particles'))} "
                  f"| {fmt(j.get('precision_at_F1'))} "
                  f"| {fmt(j.get('F1'))} | {fmt(j.get('picks_per_particle_free'), '.1f')} "
                  f"| {fmt(j.get('picks_per_empty_clean'), '.1f')} | {fmt(j.get('picks_per_particle_free_at_default'), '.1f')} |")
    if res.get("real"):
        print("\n| real set | picker | AP | AP_D/2 | picks within D of an edge / picks (best-F1 threshold) |")
        print("|---|---|---|---|---|")
        for r in res["real"]:
            for p, m in r["pickers"].items():
                print(f"| {r['set']} | {p} | {fmt(m.get('AP'))} | {fmt(m.get('AP_centre'))} | "
                      f"{m.get('picks_near_edge', '-')} / {m.get('picks_at_F1', '-')} |")


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    res = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs", "argv": sys.argv,
           "model": args.model or "shipped", "n_sim": args.n_sim, "targets": [], "real": []}
    json_path = Path(args.json) if args.json else work / "junk.json"
    from hydrapicker.atomic import write_text

    for name in args.targets:
        res["targets"].append(junk_target(name, args, work))
        write_text(json_path, json.dumps(res, indent=1, default=str))
    if args.real:
        for root in real_set_dirs():
            res["real"].append(real_set(root, args, work))
            write_text(json_path, json.dumps(res, indent=1, default=str))
    print_tables(res)
    print(f"\n[junk] results in {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
