#!/usr/bin/env python
"""Experiment (issues 18 and 17): teach the centre refiner a data set's own particles, with no labels
(shipped as ``hydra pick --adapt-centres``, :mod:`hydrapicker.refine_adapt`; this script scores it per set).

The shipped centre head (:mod:`hydrapicker.refine`) was trained on simulated particles of the training
families. Here it is fine-tuned on the data set's own micrographs, its targets the data set's confident
picks (FOM ``--positives`` logit above the calibrated threshold, as ``--adapt``'s) as the shipped refiner centres them. Those centres are wrong by
the detector's error, but the error differs from particle to particle while the particle stays the same:
a head that must map every (rotated, flipped) view of the particle to one centre cannot fit the random
part of the errors, so what it learns is their mean, the particle's centre (the Noise2Noise argument, here
for positions). Only the neighbourhood of each confident pick (``--radius`` diameters) is taught: where
the centre lies near a particle, not what is a particle (the uncertain particles around would otherwise
be taught as background). The head then refines every pick, as the shipped one does.

Scored as ``reference_centres.py`` (AP under the IoU rule, AP_D/2, median centre error of matched picks,
every pick kept): the detector, the shipped refiner, the adapted refiner.

  OMP_NUM_THREADS=1 python benchmarks/experiments/adapted_refiner.py [--sets targets custom real] [--n-sim 5]
  OMP_NUM_THREADS=1 python benchmarks/experiments/adapted_refiner.py --tune 32 --sim-cache /work/bench/simtune
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))
sys.path.insert(0, str(ROOT))

from bench_data import load_dataset, tuning_sets  # noqa: E402
from centres import resolve  # noqa: E402
from reference_centres import _scores  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=["targets", "custom", "real"])
    ap.add_argument("--n-sim", type=int, default=5)
    ap.add_argument("--sim-cache", default="/tmp/hydra_bench/sim")
    ap.add_argument("--tune", type=int, default=0, help="N training-family tuning sets (seeds 7100+) instead of --sets")
    ap.add_argument("--start", type=int, default=0, help="skip the first sets (a run stopped there goes on)")
    ap.add_argument("--positives", type=float, default=1.1,
                    help="picks teach when their FOM's logit is this far above the calibrated threshold's "
                         "(1.1: --adapt's positives, 0.75 on the threshold's 0.5 scale)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--radius", type=float, default=0.5, help="taught neighbourhood of a pick, diameters")
    ap.add_argument("--min-positives", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    import torch

    from hydrapicker.picker import Picker, configure_torch
    from hydrapicker.preprocess import _cpu_tensor, prepare_t, read_mrc
    from hydrapicker.refine import save_refiner
    from hydrapicker.refine_adapt import RefinerAdaptSettings, finetune_head
    from hydrapicker.types import Micrograph

    configure_torch(1)
    torch.manual_seed(args.seed)
    sets = tuning_sets(args.tune, Path(args.sim_cache)) if args.tune else resolve(args.sets, args.n_sim,
                                                                                   Path(args.sim_cache))
    sets = sets[args.start:]
    detector = Picker("default", device="cpu", log=None, refine=False)
    shipped = Picker("default", device="cpu", log=None, refine="shipped")
    work = Path(tempfile.mkdtemp(prefix="adapted_refiner_"))
    rows = []
    for root, kind in sets:
        ds = load_dataset(root, kind=kind)
        box = ds.box_px
        mics = [Micrograph(str(p), pixel_size=ds.pixel_size, name=s) for s, p in zip(ds.stems, ds.mic_paths)]
        row = {"set": ds.name}
        picks = {}
        for name, picker in (("detector", detector), ("refined", shipped)):
            pol = picker.policy(ds.diameter_A, threshold=0.01)
            picks[name] = {r.micrograph.name: r.picks for r in picker.pick(mics, ds.diameter_A, policy=pol)}
            row[name] = _scores(picks[name], ds.truth, box)
        t0 = time.process_time()
        thr = shipped.threshold_for("generic")
        cut = 1 / (1 + np.exp(-(np.log(thr / (1 - thr)) + args.positives)))
        teach = []
        for m in mics:
            data, _ = read_mrc(m.path)
            prep = prepare_t(_cpu_tensor(data), ds.pixel_size, ds.diameter_A, shipped.extent_px)
            p = picks["refined"][m.name]
            keep = p.fom >= cut
            s = np.array(prep.scale_xy, np.float64)[None, :]
            if keep.any():
                teach.append(SimpleNamespace(image=prep.image.numpy(), xy=p.xy()[keep] * s))
        n_pos = sum(len(t.xy) for t in teach)
        row["positives"] = n_pos
        if n_pos < args.min_positives:
            row["adapted"] = {**row["refined"], "refused": True}
        else:
            settings = RefinerAdaptSettings(steps=args.steps, lr=args.lr, batch=args.batch, crop=args.crop,
                                            radius_D=args.radius, seed=args.seed)
            head, (l0, l1) = finetune_head(shipped.refiner, shipped.net, teach, settings, shipped.extent_px)
            path = save_refiner(work / f"{ds.name}.pt", head, dict(shipped.refiner.meta))
            adapted = Picker("default", device="cpu", log=None, refine=str(path))
            pol = adapted.policy(ds.diameter_A, threshold=0.01)
            got = {r.micrograph.name: r.picks for r in adapted.pick(mics, ds.diameter_A, policy=pol)}
            row["adapted"] = {**_scores(got, ds.truth, box), "loss_first_last": [round(l0, 4), round(l1, 4)],
                              "cpu_s_train": round(time.process_time() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'set':26s} | {'AP det / refined / adapted':>28s} | {'AP_D2 refined / adapted':>24s} | "
          f"{'median D refined / adapted':>27s}")
    for r in rows:
        d, q, a = r["detector"], r["refined"], r["adapted"]
        print(f"{r['set']:26s} | {d['AP']:.3f} / {q['AP']:.3f} / {a['AP']:.3f} | {q['AP_D2']:.3f} / {a['AP_D2']:.3f}"
              f" | {q['median_D']} / {a['median_D']}")
    gain = [r["adapted"]["AP"] - r["refined"]["AP"] for r in rows]
    print(f"mean AP adapted - refined: {np.mean(gain):+.4f}, worst {min(gain):+.4f}, best {max(gain):+.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
