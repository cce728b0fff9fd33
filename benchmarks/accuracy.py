#!/usr/bin/env python
"""Accuracy benchmark: Topaz resnet16_u64, RELION 3.1 LoG and HydraPicker on the same sets, in one run.

Per set it prints: picker, AP (IoU > 0.6 of D x D boxes), AP within D/2, max F1, picks, wall time (all of
the picker's processes, start-up included) and the wall-time ratio to ours; and writes every number to
a JSON file. Scoring: hydrapicker.metrics.evaluate (the same code as `hydra evaluate`).

Sets (--sets, any mix): `real` (every set in ../shared/data/real), `targets` (every held-out simulated
target, generated once into --sim-cache by hydrapicker.simulate.write_dataset), a real set's name, a
target's name (t_rod ...), or a dataset directory (Micrographs/*.mrc, a micrographs STAR, truth/*.star,
meta.json).

Examples:
  python benchmarks/accuracy.py --sets real --pickers topaz log
  python benchmarks/accuracy.py --sets real targets --model runs/generic.pt --n-sim 10 --json bench.json
  python benchmarks/accuracy.py --sets t_rod ribosome80s_empiar10028 --n-micrographs 5

Peers are installed by benchmarks/setup_peers.sh (Topaz in its own venv: TOPAZ_VENV, default
/work/venv-topaz). The real sets are validation data only: never tune anything on these numbers.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_data import DatasetError, load_dataset, resolve_sets, score  # noqa: E402
from bench_pickers import PICKERS, Run  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="+", default=["real"], help="real, targets, set names or dataset dirs")
    p.add_argument("--pickers", nargs="+", default=["topaz", "log", "hydra"], choices=sorted(PICKERS),
                   help="pickers to run (default: all three)")
    p.add_argument("--model", default=None, help="HydraPicker model file (default: the shipped model)")
    p.add_argument("--refine", action="store_true", help="HydraPicker with its centre refiner (hydra pick --refine)")
    p.add_argument("--class-centres", action="store_true",
                   help="HydraPicker with class-average centring (hydra pick --class-centres)")
    p.add_argument("--evidence", default=None, metavar="R", help="HydraPicker's micrograph evidence (hydra pick --evidence R; 0 = off)")
    p.add_argument("--tta", type=int, default=None, choices=[1, 2, 4, 8],
                   help="HydraPicker's test-time augmentation views (hydra pick --tta; default: its default)")
    p.add_argument("--n-micrographs", type=int, default=None,
                   help="use the first N micrographs of each set (default: all)")
    p.add_argument("--n-sim", type=int, default=10, help="micrographs per simulated target (default 10)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for every picker (OMP_NUM_THREADS, topaz -j, hydra -j; default 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] for Topaz and HydraPicker (default cpu)")
    p.add_argument("--work", default="/tmp/hydra_bench/accuracy", help="scratch directory (re-created per run)")
    p.add_argument("--sim-cache", default="/tmp/hydra_bench/sim", help="where simulated targets are written")
    p.add_argument("--json", default=None, help="results JSON (default: <work>/accuracy.json)")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per picker process")
    return p.parse_args(argv)


def run_picker(name, ds, work, args) -> Run:
    fn = PICKERS[name]
    kw = {"threads": args.threads, "timeout": args.timeout}
    if name in ("topaz", "hydra"):
        kw["device"] = args.device
    if name == "hydra":
        kw["model"] = args.model
        kw["tta"] = args.tta
        kw["extra"] = (["--refine"] if args.refine else []) + (["--evidence", str(args.evidence)] if args.evidence is not None else []) + \
            (["--class-centres"] if args.class_centres else [])
    return fn(ds, work / ds.name / name, **kw)


def fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def table(set_result: dict) -> str:
    rows = set_result["pickers"]
    ours = next((r["wall_s"] for r in rows if r["picker"] == "hydra" and not r["error"]), None)
    head = f"{'picker':<8} {'AP':>6} {'AP_D/2':>7} {'maxF1':>6} {'picks':>7} {'wall s':>8} {'x ours':>7} {'CPU s':>8}"
    out = [f"== {set_result['set']} ({set_result['kind']}): {set_result['n_micrographs']} micrographs, "
           f"{set_result['n_truth']} particles, D = {set_result['diameter_A']:g} A = "
           f"{set_result['box_px']:.1f} px at {set_result['pixel_size']:g} A/px", head, "-" * len(head)]
    for r in rows:
        if r["error"]:
            out.append(f"{r['picker']:<8} FAILED: {r['error'].splitlines()[0]}")
            continue
        m = r["metrics"]
        ratio = fmt(r["wall_s"] / ours, ".2f") if ours else "-"
        out.append(f"{r['picker']:<8} {fmt(m['AP']):>6} {fmt(m['AP_centre']):>7} {fmt(m['F1']):>6} "
                   f"{m['n_picks']:>7} {r['wall_s']:>8.1f} {ratio:>7} {r.get('cpu_s', 0):>8.1f}")
    return "\n".join(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        sets = resolve_sets(args.sets, args.n_micrographs, Path(args.sim_cache), args.n_sim)
    except DatasetError as exc:
        print(f"accuracy.py: error: {exc}", file=sys.stderr)
        return 2
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
               "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
               "argv": sys.argv, "threads": args.threads, "device": args.device, "sets": []}
    json_path = Path(args.json) if args.json else work / "accuracy.json"
    for root, kind in sets:
        ds = load_dataset(root, args.n_micrographs, kind)
        sr = {"set": ds.name, "kind": ds.kind, "root": str(ds.root), "n_micrographs": len(ds.mic_names),
              "n_truth": ds.n_truth, "diameter_A": ds.diameter_A, "pixel_size": ds.pixel_size,
              "box_px": ds.box_px, "pickers": []}
        for name in args.pickers:
            print(f"[bench] {ds.name}: running {name} ...", flush=True)
            run = run_picker(name, ds, work, args)
            row = {"picker": name, "wall_s": run.wall_s, "cpu_s": run.cpu_s, "peak_rss_mb": run.peak_rss_mb,
                   "commands": run.commands, "info": run.info, "error": run.error, "metrics": None}
            if not run.error:
                row["metrics"] = score(run.picks, ds)
            else:
                print(f"[bench] {name} failed on {ds.name}: {run.error}", file=sys.stderr, flush=True)
            sr["pickers"].append(row)
        results["sets"].append(sr)
        print(table(sr), flush=True)
        print(flush=True)
        from hydrapicker.atomic import write_text  # after every set: a long run keeps what it has

        write_text(json_path, json.dumps(results, indent=1, default=str))
    print(f"[bench] results in {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
