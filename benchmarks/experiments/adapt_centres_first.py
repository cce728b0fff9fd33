#!/usr/bin/env python
"""Experiment (issue 17): the centre refiner first, then the head, against today's order.

Today ``hydra pick --adapt`` learns the head from the zero-shot picks (the detector's centres), then the
centre refiner from the adapted head's confident picks. Here the refiner is learned first, from the zero-shot
head's confident picks (:func:`hydrapicker.refine_adapt.picker_with_adapted_refiner`), and the head then
learns from picks that refiner has re-centred (:func:`hydrapicker.adapt.adapt` on the refining picker, so the
pseudo-labels' positions are the refined ones); the adapted head picks with that refiner. The same cost.

  OMP_NUM_THREADS=1 python benchmarks/experiments/adapt_centres_first.py --draw 1 --setting scale_micrographs=0 --sets ...

(The scale step makes model copies at other extents, which the refiner learned first does not fit: off here,
so elongated sets are left out.)

Compare with ``benchmarks/adapt.py --no-fewshot --centres`` on the same draw (its ``adapt_centres`` column).
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

import adapt as bench  # noqa: E402  (benchmarks/adapt.py: the sets and the scoring)


def run_set(item, args, work: Path) -> dict:
    from hydrapicker.adapt import adapt
    from hydrapicker.picker import Picker
    from hydrapicker.refine_adapt import picker_with_adapted_refiner

    name, kind, mics, truth, diameter_A, box_px, _ = item
    base = Picker(args.model, log=None)
    row = {"set": name, "zero_shot": bench._score(base, base.default_head, mics, truth, diameter_A, box_px,
                                                  base.default_threshold)}
    t0 = time.time()
    refining, ra = picker_with_adapted_refiner(base, mics, diameter_A, work / f"{name}_refiner.pt", base.default_head,
                                               reuse=False, log=lambda *a: None)
    a = adapt(refining, mics, diameter_A, work / f"{name}_adapted.pt", settings=bench._settings(args), log=lambda *a: None)
    if a.accepted:
        picker = refining.with_model(a.model)
    else:
        picker = a.zero_shot or refining
    row["centres_first"] = bench._score(picker, a.head, mics, truth, diameter_A, box_px, picker.threshold_for(a.head))
    row["centres_first"].update(seconds=round(time.time() - t0, 1), refiner_accepted=ra.accepted,
                                head_accepted=a.accepted, reason=a.reason,
                                pseudo_positives=a.record.get("pseudo_positives"))
    return row


def main(argv=None) -> int:
    from hydrapicker.picker import configure_torch

    args = bench.parse_args(argv)
    configure_torch(args.threads)
    work = Path(tempfile.mkdtemp(prefix="hydra_centres_first_"))
    rows = []
    for item in bench._sets(args.sets, args):
        rows.append(run_set(item, args, work))
        r = rows[-1]
        print(f"[first] {r['set']}: zero {r['zero_shot']['AP']:.3f} centres-first {r['centres_first']['AP']:.3f} "
              f"(refiner {r['centres_first']['refiner_accepted']}, head {r['centres_first']['reason']})", flush=True)
    out = {"meta": {"command": "python benchmarks/experiments/adapt_centres_first.py "
                    + " ".join(argv if argv is not None else sys.argv[1:]), "draw": args.draw}, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
