"""Merge accuracy-benchmark JSON files into one Markdown table (the README's).

Every JSON file written by ``accuracy.py`` holds, per set, the pickers it ran. Runs of the same picker
from several files are told apart by a label: ``FILE:LABEL`` (default label: the picker's name, with
``+ttaN`` when HydraPicker ran with other test-time views than ``hydra pick``'s default). Columns follow the order of first appearance;
per cell ``AP (AP_D/2)``, the best AP of a row in bold, and a last row with the mean over the simulated
targets. CPU seconds per picker and set are summed into a ratio line (peers' CPU time over the first
column's), which is the fairer speed figure on a shared machine.

Usage:
  python benchmarks/report.py peers.json ours.json ours_tta8.json:HydraPicker+TTA8
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hydrapicker import defaults  # noqa: E402

NAMES = {"hydra": "HydraPicker", "topaz": "Topaz", "log": "LoG"}


def load_columns(specs):
    """-> (ordered column labels, {set: {label: row}}, {set: set_info})."""
    columns, cells, info = [], {}, {}
    for spec in specs:
        path, _, label = spec.partition(":")
        data = json.loads(Path(path).read_text())
        for s in data["sets"]:
            info.setdefault(s["set"], s)
            for row in s["pickers"]:
                if row.get("error") or not row.get("metrics"):
                    continue
                name = label or NAMES.get(row["picker"], row["picker"])
                tta = (row.get("info") or {}).get("tta", 1)  # runs that recorded none had one view
                if not label and row["picker"] == "hydra" and tta != defaults.TTA:
                    name += f"+TTA{tta}"
                if name not in columns:
                    columns.append(name)
                cells.setdefault(s["set"], {})[name] = row
    return columns, cells, info


def markdown(columns, cells, info) -> str:
    order = sorted(cells, key=lambda k: (info[k]["kind"] != "real", list(info).index(k)))
    lines = ["| set | " + " | ".join(f"{c} AP (AP_D/2)" for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    sums = {c: [] for c in columns}
    cpu = {c: 0.0 for c in columns}
    for key in order:
        rows = cells[key]
        best = max((r["metrics"]["AP"] for r in rows.values()), default=None)
        out = []
        for c in columns:
            r = rows.get(c)
            if r is None:
                out.append("n/m")
                continue
            ap, apc = r["metrics"]["AP"], r["metrics"]["AP_centre"]
            txt = f"{ap:.3f} ({apc:.3f})"
            out.append(f"**{txt}**" if ap == best else txt)
            if info[key]["kind"] != "real":
                sums[c].append(ap)
            cpu[c] += r.get("cpu_s") or 0.0
        s = info[key]
        lines.append(f"| {s['kind']}: {key} ({s['n_micrographs']} mics, D {s['diameter_A']:g} A) | "
                     + " | ".join(out) + " |")
    n = max(len(v) for v in sums.values()) if sums else 0
    means = [f"{sum(v) / len(v):.3f}" if len(v) == n and n else "n/m" for v in sums.values()]
    lines.append(f"| **mean of the {n} simulated targets** | " + " | ".join(means) + " |")
    base = cpu[columns[0]] if columns else 0
    if base:
        lines.append("")
        lines.append("CPU seconds summed over all sets, relative to " + columns[0] + ": "
                     + ", ".join(f"{c} {cpu[c] / base:.1f}x" for c in columns) + ".")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("json", nargs="+", help="accuracy.py JSON files, optionally FILE:LABEL")
    args = p.parse_args(argv)
    print(markdown(*load_columns(args.json)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
