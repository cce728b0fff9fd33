#!/usr/bin/env python
"""Experiment (issue 14): where the junk benchmark's gap between clean and junk AP comes from.

Reads the picks a ``benchmarks/junk.py --pickers hydra`` run left in its work folder (``--work``) and its JSON
(the best-F1 threshold of each junk target). On the micrographs that hold particles, at that threshold, for
the junk micrographs and their clean twins: true picks (IoU 0.6 rule), picks within D/2 of a particle but
off-centre, and picks further from every particle (false picks); then, on the junk micrographs, the particles
within D/2 of a border band or dead area (``hydrapicker.regions``; the pick path keeps no pick within
``defaults.INVALID_MARGIN_DIAMETERS`` of them, half a diameter until 2026-12-07) and how many of them and of
the others were found. Nothing is picked again.

  python benchmarks/junk.py --pickers hydra --n-sim 18 --work W --json J
  python benchmarks/experiments/junk_gap_parts.py --work W --results J --n-sim 18
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))


def counts(picks, truth, box, thr):
    """((true, off-centre, false) picks at or above ``thr`` on one micrograph, found: bool per particle under the
    IoU rule)."""
    from hydrapicker.metrics import match_greedy
    from hydrapicker.types import Picks

    keep = picks.fom >= thr
    q = Picks(picks.x[keep], picks.y[keep], picks.fom[keep])
    iou, found = match_greedy(q, truth, box)
    centre, _ = match_greedy(q, truth, box, centre=True)
    return (int((iou >= 0).sum()), int(((iou < 0) & (centre >= 0)).sum()), int((centre < 0).sum())), found >= 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="junk.py's --work folder")
    ap.add_argument("--results", required=True, help="junk.py's --json")
    ap.add_argument("--n-sim", type=int, default=18)
    ap.add_argument("--sim-cache", default="/tmp/hydra_bench/sim")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    import mrcfile

    from bench_data import load_dataset, simulated_dataset
    from bench_pickers import Run, _read
    from hydrapicker.regions import find_regions, near_invalid
    from hydrapicker.simulate.datasets import clean_version, junk_target_specs

    res = json.loads(Path(args.results).read_text())
    thr = {t["target"]: t["pickers"]["hydra"]["junk"]["threshold"] for t in res["targets"]}
    cache, work = Path(args.sim_cache), Path(args.work)
    rows = []
    for spec in junk_target_specs():
        if spec.name not in thr:
            continue
        t_cut = thr[spec.name]
        junk = load_dataset(simulated_dataset(spec, cache, args.n_sim), kind="simulated")
        clean = load_dataset(simulated_dataset(clean_version(spec), cache, args.n_sim), kind="simulated")
        junk_only = {m["name"] for m in junk.meta["micrographs"] if m.get("junk_only")}
        row = {"target": spec.name, "threshold": t_cut}
        for label, ds in (("junk", junk), ("clean", clean)):
            run = Run("hydra")
            _read(run, work / ds.name / "hydra" / "picks", ds.stems)
            tot = np.zeros(3, int)
            n_truth = 0
            near = {"truth": 0, "found": 0}
            far = {"truth": 0, "found": 0}
            for s, path in zip(ds.stems, ds.mic_paths):
                if s.replace(spec.name + "_clean", spec.name) in junk_only:
                    continue
                truth = ds.truth[s]
                kinds, found = counts(run.picks[s], truth, ds.box_px, t_cut)
                tot += kinds
                n_truth += len(truth)
                if label == "junk" and len(truth):
                    close = near_invalid(find_regions(mrcfile.read(path).astype(np.float32)), truth[:, 0],
                                         truth[:, 1], 0.5 * ds.box_px)
                    near["truth"] += int(close.sum())
                    near["found"] += int(found[close].sum())
                    far["truth"] += int((~close).sum())
                    far["found"] += int(found[~close].sum())
            row[label] = {"particles": n_truth, "true": int(tot[0]), "off_centre": int(tot[1]), "false": int(tot[2]),
                          "recall": round(tot[0] / max(n_truth, 1), 4)}
            if label == "junk":
                row[label]["near_invalid"] = near
                row[label]["recall_elsewhere"] = round(far["found"] / max(far["truth"], 1), 4)
        rows.append(row)
        j, c = row["junk"], row["clean"]
        print(f"{spec.name:14s} recall clean {c['recall']:.3f} junk {j['recall']:.3f} (elsewhere than near "
              f"bands/dead areas {j['recall_elsewhere']:.3f}; near them {j['near_invalid']['found']} of "
              f"{j['near_invalid']['truth']}); false picks clean {c['false']} junk {j['false']}; off-centre "
              f"{c['off_centre']} / {j['off_centre']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv[1:], "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
