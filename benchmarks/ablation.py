"""The thesis' ablations for a trained run.

1. Generic vs specialised (dataset) heads on the source datasets' validation micrographs (read from the
   final model's metadata, measured at the end of training by ``hydra train``).
2. Multi-head (phase 2, generic head) vs single-head (phase 1) on the held-out simulated targets.

Usage:
  python benchmarks/ablation.py --run runs/generic --n-micrographs 4 [--json ablation.json]
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def pick_and_score(picker, data_dir, head="generic"):
    from hydrapicker.coords import read_coords
    from hydrapicker.metrics import evaluate
    from hydrapicker.micrographs import read_micrographs_star

    meta = json.loads((data_dir / "meta.json").read_text())
    mics = read_micrographs_star(data_dir / "micrographs.star")
    picks = {}
    for res in picker.pick(mics, meta["diameter_A"], head=head):
        picks[Path(res.micrograph.name).stem] = res.picks
    truth = {k: v.xy() for k, v in read_coords(data_dir / "truth").items()}
    return evaluate(picks, truth, meta["diameter_A"] / meta["pixel_size"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/generic", help="training run directory")
    ap.add_argument("--single", default=None, help="single-head model (default: RUN/phase1.pt or phase1_end.pt)")
    ap.add_argument("--multi", default=None, help="multi-head model (default: RUN/model.pt)")
    ap.add_argument("--n-micrographs", type=int, default=4)
    ap.add_argument("--work", default="/tmp/hydra_ablation")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hydrapicker.checkpoint import read_checkpoint
    from hydrapicker.picker import Picker
    from hydrapicker.simulate import target_dataset_specs, write_dataset

    run = Path(args.run)
    single = args.single or next(str(p) for p in (run / "phase1.pt", run / "phase1_end.pt") if p.exists())
    multi = args.multi or str(run / "model.pt")
    meta = read_checkpoint(multi)["meta"]
    out = {"single": single, "multi": multi}

    print("1. Source validation micrographs: generic head vs the dataset's own head (AP, thesis rule)")
    gen, own = meta.get("validation_AP", {}), meta.get("validation_AP_dataset_heads", {})
    if gen and own:
        g, o = np.mean(list(gen.values())), np.mean([own[k] for k in gen])
        print(f"   mean over {len(gen)} source datasets: generic {g:.3f}, specialised {o:.3f}")
        out["source_generic_AP"], out["source_specialised_AP"] = float(g), float(o)
    else:
        print("   (model has no dataset-head validation: phase 2 did not run)")

    print("2. Held-out targets: single-head (phase 1) vs multi-head (phase 2) generic head")
    work = Path(args.work)
    rows = []
    p_single = Picker(single, device="cpu", log=lambda *a: None)
    p_multi = Picker(multi, device="cpu", log=lambda *a: None)
    for spec in target_dataset_specs():
        d = work / spec.name
        if not (d / "meta.json").exists():
            write_dataset(spec, d, args.n_micrographs)
        t0 = time.time()
        a = pick_and_score(p_single, d)["AP"]
        b = pick_and_score(p_multi, d)["AP"]
        rows.append((spec.name, a, b))
        print(f"   {spec.name:22s} single {a:.3f}  multi {b:.3f}  ({time.time() - t0:.0f} s)", flush=True)
    ms, mm = np.mean([r[1] for r in rows]), np.mean([r[2] for r in rows])
    print(f"   {'mean':22s} single {ms:.3f}  multi {mm:.3f}")
    out["targets"] = {r[0]: {"single": r[1], "multi": r[2]} for r in rows}
    out["targets_mean"] = {"single": float(ms), "multi": float(mm)}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
