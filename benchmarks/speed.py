#!/usr/bin/env python
"""Speed benchmark: `hydra pick` (whole process) against Topaz preprocess+extract (resnet16_u64), same micrographs.

For each micrograph size (2048^2, 4096^2 and a K3-like 5760x4092, simulated at ~1 A/px) and each count
(--counts, e.g. 10 100 to check that cost is linear), it runs both pickers as their users would (one
process per step, start-up included) and prints micrographs/s, our speed-up over Topaz, peak RSS of the
largest process, and AP of both.

Simulating a 4096^2 micrograph takes about a minute, so --unique distinct micrographs are simulated per
size (default 2) and the count is made up by linking them under new names; both pickers see the same
files, and the AP is that of the distinct ones repeated.

Examples:
  python benchmarks/speed.py --sizes 2048 4096 k3 --counts 10
  python benchmarks/speed.py --sizes 4096 --counts 10 100 --pickers topaz hydra --model runs/generic.pt
  python benchmarks/speed.py --sizes 4096 --device cuda --threads 16
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_data import Dataset, load_dataset, score, simulated_dataset  # noqa: E402
from bench_pickers import run_hydra, run_topaz  # noqa: E402

SIZES = {"2048": (2048, 2048), "4096": (4096, 4096), "k3": (4092, 5760)}   # (ny, nx)
BASE_TARGET = "t_proteasome"   # 160 A D7 barrel: 160 px at 1 A/px


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["2048", "4096", "k3"], choices=sorted(SIZES))
    p.add_argument("--counts", nargs="+", type=int, default=[10], help="micrographs per run (default 10)")
    p.add_argument("--unique", type=int, default=2, help="distinct simulated micrographs per size (default 2)")
    p.add_argument("--pixel-size", type=float, default=1.0, help="A/px of the simulated micrographs")
    p.add_argument("--pickers", nargs="+", default=["topaz", "hydra"], choices=["topaz", "hydra"])
    p.add_argument("--model", default=None, help="HydraPicker model file (default: the shipped model)")
    p.add_argument("--tta", type=int, default=None, choices=(1, 2, 4, 8),
                   help="HydraPicker's --tta (test-time views; default: hydra pick's)")
    p.add_argument("--half-cell", action="store_true", help="HydraPicker with hydra pick --half-cell")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for both pickers (default 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] for both pickers")
    p.add_argument("--work", default="/tmp/hydra_bench/speed")
    p.add_argument("--sim-cache", default="/tmp/hydra_bench/sim")
    p.add_argument("--json", default=None, help="results JSON (default: <work>/speed.json)")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per picker process")
    return p.parse_args(argv)


def size_spec(label: str, pixel_size: float):
    from hydrapicker.simulate import get_target

    return get_target(BASE_TARGET).replace(name=f"speed{label}", pixel_size=pixel_size, shape=SIZES[label])


def replicated(base: Dataset, n: int, work: Path) -> Dataset:
    """A dataset of ``n`` micrographs cycling through ``base``'s, as links with new names."""
    root = work / f"{base.name}_x{n}"
    if root.exists():
        shutil.rmtree(root)
    (root / "Micrographs").mkdir(parents=True)
    names, truth = [], {}
    for i in range(n):
        src = base.mic_paths[i % len(base.mic_paths)]
        stem = f"{src.stem}_r{i:04d}"
        (root / "Micrographs" / f"{stem}.mrc").symlink_to(src)
        names.append(f"Micrographs/{stem}.mrc")
        truth[stem] = base.truth[base.stems[i % len(base.stems)]]
    return Dataset(name=root.name, root=root, mic_names=names, pixel_size=base.pixel_size,
                   diameter_A=base.diameter_A, truth=truth, kind="simulated", meta=base.meta)


def marginal_costs(runs: list) -> dict:
    """{(size, picker, n_small, n_large): ms per micrograph} from the runs of the smallest and largest count."""
    out = {}
    by = {}
    for r in runs:
        if r.get("error") or not r.get("wall_s"):
            continue
        by.setdefault((r["size"], r["picker"]), {})[r["n"]] = r["wall_s"]
    for (label, name), walls in by.items():
        if len(walls) >= 2:
            n0, n1 = min(walls), max(walls)
            out[(label, name, n0, n1)] = 1000.0 * (walls[n1] - walls[n0]) / (n1 - n0)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    json_path = Path(args.json) if args.json else work / "speed.json"
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
               "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
               "argv": sys.argv, "threads": args.threads, "device": args.device, "runs": []}
    head = (f"{'size':<10} {'n':>4} {'picker':<6} {'mic/s':>7} {'s/mic':>7} {'wall s':>8} {'RSS MB':>7} "
            f"{'AP':>6} {'ours x':>7} {'CPUs/mic':>8}")
    lines = [head, "-" * len(head)]
    for label in args.sizes:
        spec = size_spec(label, args.pixel_size)
        base = load_dataset(simulated_dataset(spec, Path(args.sim_cache), args.unique), kind="simulated")
        for n in args.counts:
            ds = replicated(base, n, work / "data")
            rows = {}
            for name in args.pickers:
                print(f"[speed] {label} x{n}: {name} ...", flush=True)
                fn = run_topaz if name == "topaz" else run_hydra
                kw = ({"model": args.model, "tta": args.tta, "extra": ("--half-cell",) if args.half_cell else ()}
                      if name == "hydra" else {})
                run = fn(ds, work / "runs" / f"{label}_x{n}" / name, threads=args.threads, device=args.device,
                         timeout=args.timeout, **kw)
                row = {"size": label, "shape": list(SIZES[label]), "n": n, "picker": name, "wall_s": run.wall_s,
                       "mics_per_s": n / run.wall_s if run.wall_s and not run.error else None,
                       "cpu_s": run.cpu_s,
                       "cpu_s_per_mic": run.cpu_s / n, "peak_rss_mb": run.peak_rss_mb, "commands": run.commands, "info": run.info,
                       "error": run.error, "metrics": None if run.error else score(run.picks, ds)}
                rows[name] = row
                results["runs"].append(row)
                if run.error:
                    print(f"[speed] {name} failed: {run.error}", file=sys.stderr, flush=True)
            topaz = rows.get("topaz")
            for name, row in rows.items():
                if row["error"]:
                    lines.append(f"{label:<10} {n:>4} {name:<6} FAILED: {row['error'].splitlines()[0]}")
                    continue
                ratio = "-"
                if name == "hydra" and topaz and topaz["mics_per_s"]:
                    ratio = f"{row['mics_per_s'] / topaz['mics_per_s']:.2f}"
                    row["speedup_vs_topaz"] = row["mics_per_s"] / topaz["mics_per_s"]
                ap = row["metrics"]["AP"]
                lines.append(f"{label:<10} {n:>4} {name:<6} {row['mics_per_s']:>7.3f} {row['wall_s'] / n:>7.2f} "
                             f"{row['wall_s']:>8.1f} {row['peak_rss_mb']:>7.0f} "
                             f"{'-' if ap is None else format(ap, '.3f'):>6} {ratio:>7} {row['cpu_s_per_mic']:>8.2f}")
            print("\n".join(lines), flush=True)
            from hydrapicker.atomic import write_text

            write_text(json_path, json.dumps(results, indent=1, default=str))
    marginal = marginal_costs(results["runs"])
    if marginal:
        print("\nmarginal cost per micrograph (start-up excluded: the difference between two counts)")
        for (label, name, n0, n1), ms in marginal.items():
            print(f"  {label} {name}: {ms:.1f} ms/micrograph ({n0} -> {n1} micrographs; {1000.0 / ms:.1f} micrographs/s)")
        results["marginal_ms_per_mic"] = {f"{k[0]} {k[1]} {k[2]}->{k[3]}": v for k, v in marginal.items()}
        from hydrapicker.atomic import write_text

        write_text(json_path, json.dumps(results, indent=1, default=str))
    print(f"[speed] results in {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
