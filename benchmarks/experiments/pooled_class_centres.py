#!/usr/bin/env python
"""Class-average centring with one reference per data set against one per micrograph (issues 17 and 18).

Per set of the adapt benchmark (its test micrographs, ``benchmarks/adapt.py``'s sets and draws): AP (IoU
0.6) and AP_D/2 of the zero-shot picks, every pick kept, with no class centring, with each micrograph's own
class averages (``--class-centres``), and with class averages built over the set's micrographs
(:meth:`hydrapicker.picker.Picker.class_references`). ``--setting`` changes
:class:`hydrapicker.class_centres.ClassCentreSettings` for both, ``--pooled-setting`` for the data set's
(e.g. ``weight=1``).

  OMP_NUM_THREADS=1 python benchmarks/experiments/pooled_class_centres.py --sets j_small80kda t_small80kda
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import adapt as bench  # noqa: E402


def score(picker, head, mics, truth, diameter_A, box_px, policy) -> dict:
    from hydrapicker.metrics import evaluate

    picks = {r.micrograph.name: r.picks for r in picker.pick(mics, diameter_A, head=head, policy=policy) if r.ok}
    res = evaluate(picks, {k: truth[k] for k in picks}, box_px)
    return {"AP": round(float(res["AP"]), 4), "AP_centre": round(float(res["AP_centre"]), 4)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sets", nargs="+", required=True)
    p.add_argument("--draw", type=int, default=0)
    p.add_argument("--n-sim", type=int, default=12)
    p.add_argument("--cache", default="/tmp/hydra_bench_adapt")
    p.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                   help="ClassCentreSettings fields for both columns, e.g. weight=1 (repeatable)")
    p.add_argument("--pooled-setting", action="append", default=[], metavar="KEY=VALUE",
                   help="fields changed for the pooled column only")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.half_cell = False
    from hydrapicker import class_centres
    from hydrapicker.picker import Picker

    def settings(given, base):
        over = {}
        for kv in given:
            k, v = kv.split("=", 1)
            over[k] = type(getattr(base, k))(float(v))
        return replace(base, **over)

    own_settings = settings(args.setting, class_centres.DEFAULT_SETTINGS)
    pooled_settings = settings(args.pooled_setting, own_settings)

    rows = []
    for item in bench._sets(args.sets, args):
        name, kind, mics, truth, diameter_A, box_px, _ = item
        base = Picker(None, log=None)
        head = base.default_head
        plain = base.policy(diameter_A, head, threshold=None)
        own = base.policy(diameter_A, head, threshold=None, class_centres=True)
        class_centres.DEFAULT_SETTINGS = own_settings
        row = {"set": name, "none": score(base, head, mics, truth, diameter_A, box_px, plain),
               "own": score(base, head, mics, truth, diameter_A, box_px, own)}
        class_centres.DEFAULT_SETTINGS = pooled_settings
        t0 = time.time()
        refs, _ = base.class_references(mics, diameter_A, head, own)
        secs = time.time() - t0
        if refs is None:
            row["data_set"] = {"refused": True}
        else:
            row["data_set"] = {**score(base.with_class_references(refs), head, mics, truth, diameter_A, box_px, own),
                               "confident": refs.confident, "micrographs": refs.micrographs, "seconds": round(secs, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "own": own_settings.__dict__,
                                               "pooled": pooled_settings.__dict__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
