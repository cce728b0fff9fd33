#!/usr/bin/env python
"""Experiment (issue 14): where fewshot_junk.py's test micrographs lose AP against their clean twins.

For one junk target, ``benchmarks/fewshot_junk.py``'s test micrographs (indices 1000 and up) that hold
particles: the zero-shot AP (IoU 0.6, every pick kept) of each, of its clean twin, and of the same micrograph
rendered with a part of its junk left out (``junk_variants.PARTS``: every random draw the same), beside the
junk each one carries.

  OMP_NUM_THREADS=2 python benchmarks/experiments/fewshot_test_micrographs.py --target j_ribosome --test 12 \\
      --variant film_without_noise --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

JUNK_KEYS = ("thin_carbon", "vesicles", "ice_crystals", "gold", "rim_contamination", "other_clumps",
             "n_aggregates", "carbon", "gain_stripes", "snr")


def ap_per_micrograph(picker, spec, mics, truth) -> dict:
    from hydrapicker.metrics import evaluate

    pol = picker.policy(spec.diameter_A, "generic", threshold=0.01)
    out = {}
    for r in picker.pick(mics, spec.diameter_A, head="generic", policy=pol):
        n = r.micrograph.name
        ev = evaluate({n: r.picks}, {n: truth[n].xy()}, spec.diameter_px, warn=lambda *a: None)
        out[n] = (round(float(ev["AP"]), 3), len(truth[n]))
    return out


def main(argv=None) -> int:
    from junk_variants import PARTS, simulator_variant

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default="j_ribosome")
    ap.add_argument("--test", type=int, default=12, help="as fewshot_junk.py --test")
    ap.add_argument("--variant", default="film_without_noise", choices=list(PARTS))
    ap.add_argument("--model", default=None, help="default: the shipped model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    from fewshot import write_set
    from hydrapicker.checkpoint import default_model_path
    from hydrapicker.picker import Picker, configure_torch
    from hydrapicker.simulate import simulate_micrograph
    from hydrapicker.simulate.datasets import clean_version, junk_target_specs

    configure_torch(args.threads)
    spec = {s.name: s for s in junk_target_specs()}[args.target]
    picker = Picker(args.model or str(default_model_path()), device="cpu", log=lambda *a: None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        idx = list(range(1000, 1000 + args.test))
        mics, truth = write_set(spec, tmp / "junk", idx)
        keep = [(i, m) for i, m in zip(idx, mics) if len(truth[m.name])]
        kept = [i for i, _ in keep]
        clean_mics, clean_truth = write_set(clean_version(spec), tmp / "clean", kept)
        with simulator_variant(args.variant):
            var_mics, var_truth = write_set(spec, tmp / "variant", kept)
        junk_ap = ap_per_micrograph(picker, spec, [m for _, m in keep], truth)
        clean_ap = ap_per_micrograph(picker, spec, clean_mics, clean_truth)
        var_ap = ap_per_micrograph(picker, spec, var_mics, var_truth)
        for (i, m), c, v in zip(keep, clean_mics, var_mics):
            info = simulate_micrograph(spec, i).info
            row = {"index": i, "AP_junk": junk_ap[m.name], "AP_clean_twin": clean_ap[c.name],
                   f"AP_{args.variant}": var_ap[v.name], **{k: info.get(k) for k in JUNK_KEYS}}
            rows.append(row)
            print(json.dumps(row, default=str), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
