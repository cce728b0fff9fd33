"""Few-shot benchmark: a new head from 5 labelled micrographs per held-out simulated target.

For every target of :func:`hydrapicker.simulate.target_dataset_specs` (particle shapes never used in
training) it simulates ``--train`` labelled micrographs and ``--test`` separate test micrographs, then
reports the AP (thesis rule, IoU > 0.6) on the test micrographs of

* the zero-shot ``generic`` head of the base model,
* a fine-tuned head (:func:`hydrapicker.finetune.finetune`) with every particle labelled, and again with a
  random ``--sparse`` share (default 30%) of the particles labelled,
* optionally Topaz fine-tuned from its pretrained ``resnet16_u64`` (``topaz train``) on the same labels
  (``--topaz``; needs the Topaz venv of ``benchmarks/setup_peers.sh``),

and, with ``--timing``, the wall time of fine-tuning 5 micrographs of 2048 x 2048 px on ``--threads``
CPU threads. Prints a table and writes JSON.

Examples:
  OMP_NUM_THREADS=2 python benchmarks/fewshot.py --threads 2 --out fewshot.json
  python benchmarks/fewshot.py --targets t_rod t_virus --test 3 --timing --topaz
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOPAZ_PY = Path(os.environ.get("TOPAZ_VENV", "/work/venv-topaz")) / "bin" / "python"

# `topaz train` imports torchvision only for rotate/hflip/vflip of training crops. Where the Topaz venv has
# no usable CPU torchvision (see setup_peers.sh), this launcher provides those three functions (same
# semantics as torchvision's tensor versions: counter-clockwise degrees about the centre, nearest
# neighbour, zero fill, same size) and then runs Topaz's own train/preprocess/extract commands.
TOPAZ_LAUNCHER = r'''
import sys, types, math
try:
    import torchvision  # noqa: F401
except Exception:
    import torch
    import torch.nn.functional as F
    def rotate(img, angle, *a, **k):
        x = img if img.dim() == 4 else img[None]
        t = math.radians(float(angle))
        c, s = math.cos(t), math.sin(t)
        h, w = x.shape[-2:]
        theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=torch.float32)[None]
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        out = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        return (out if img.dim() == 4 else out[0]).to(img.dtype)
    fn = types.ModuleType("torchvision.transforms.functional")
    fn.rotate, fn.hflip, fn.vflip = rotate, (lambda x: x.flip(-1)), (lambda x: x.flip(-2))
    tr = types.ModuleType("torchvision.transforms"); tr.functional = fn
    tv = types.ModuleType("torchvision"); tv.transforms = tr
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.functional": fn})
import argparse
import topaz.commands.train as train, topaz.commands.preprocess as pre, topaz.commands.extract as ext
p = argparse.ArgumentParser(prog="topaz"); sub = p.add_subparsers(dest="command", required=True)
for m in (train, pre, ext):
    q = sub.add_parser(m.name); m.add_arguments(q); q.set_defaults(func=m.main)
a = p.parse_args(sys.argv[1:]); a.func(a)
'''


def write_set(spec, out: Path, indices, shape=None):
    """Simulate micrographs of ``spec`` as MRC files + a micrographs STAR; returns (mics, truth)."""
    import mrcfile
    import pandas as pd
    import starfile

    from hydrapicker.micrographs import read_micrographs_star
    from hydrapicker.simulate import simulate_micrograph
    from hydrapicker.types import Picks

    if shape is not None:
        spec = spec.replace(shape=tuple(shape))
    (out / "Micrographs").mkdir(parents=True, exist_ok=True)
    names, truth = [], {}
    for i in indices:
        sim = simulate_micrograph(spec, i)
        name = f"Micrographs/{sim.name}.mrc"
        with mrcfile.new(out / name, overwrite=True) as m:
            m.set_data(sim.image.astype(np.float32))
            m.voxel_size = sim.pixel_size
        names.append(name)
        truth[name] = Picks(sim.xy[:, 0], sim.xy[:, 1])
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnMicrographPixelSize": [spec.pixel_size], "rlnVoltage": [spec.voltage_kV],
                           "rlnSphericalAberration": [spec.cs_mm], "rlnAmplitudeContrast": [spec.amp_contrast]})
    starfile.write({"optics": optics, "micrographs": pd.DataFrame({"rlnMicrographName": names,
                                                                   "rlnOpticsGroup": [1] * len(names)})},
                   out / "micrographs.star")
    return read_micrographs_star(out / "micrographs.star"), truth


def ap_of(picker, head, mics, truth, spec, threshold=None, subset=None):
    """AP of ``head``'s picks (every one above 0.01) on ``mics``; with ``threshold``, the precision and recall
    of the picks at it; with ``subset`` (micrograph names), also ``AP_subset``: the AP on those micrographs
    alone, from the same picks."""
    from hydrapicker.metrics import evaluate

    policy = picker.policy(spec.diameter_A, head, threshold=0.01)
    picks = {r.micrograph.name: r.picks for r in picker.pick(mics, spec.diameter_A, head=head, policy=policy)}
    res = evaluate(picks, {k: v.xy() for k, v in truth.items()}, spec.diameter_px)
    out = {"AP": float(res["AP"]), "AP_centre": float(res["AP_centre"])}
    if subset is not None:
        out["AP_subset"] = float(evaluate({k: picks[k] for k in subset if k in picks},
                                          {k: truth[k].xy() for k in subset}, spec.diameter_px)["AP"])
    if threshold is not None:  # how well the calibrated threshold does on the test micrographs
        r2 = evaluate({k: p.above(threshold) for k, p in picks.items()}, {k: v.xy() for k, v in truth.items()},
                      spec.diameter_px)
        out.update(precision_at_thr=float(r2["precision"]), recall_at_thr=float(r2["recall"]))
    return out


# ----------------------------------------------------------------------------------------- Topaz
def topaz_available() -> bool:
    return TOPAZ_PY.exists()


def run_topaz(work: Path, spec, train_mics, train_truth, test_mics, epochs: int, epoch_size: int, threads: int,
              log=print) -> dict:
    """Topaz fine-tuned from resnet16_u64 on the same labels; picks the test micrographs -> {name: Picks}."""
    from hydrapicker.coords import name_stem
    from hydrapicker.types import Picks

    work.mkdir(parents=True, exist_ok=True)
    launcher = work / "topaz_launch_train.py"
    launcher.write_text(TOPAZ_LAUNCHER)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    scale = max(1, int(round(spec.diameter_px / 24.0)))  # particles ~24 px after downsampling
    radius = max(2, int(round(spec.diameter_px / scale / 2 * 0.6)))

    def topaz(*args):
        r = subprocess.run([str(TOPAZ_PY), str(launcher), *map(str, args)], env=env, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"topaz {args[0]} failed: {r.stderr[-2000:]}")
        return r.stdout

    for sub, mics in (("train", train_mics), ("test", test_mics)):
        topaz("preprocess", "-s", scale, "-o", work / sub, *[m.path for m in mics])
    rows = ["image_name\tx_coord\ty_coord"]
    n_per = []
    for m in train_mics:
        p = train_truth[m.name]
        n_per.append(len(p))
        rows += [f"{name_stem(m.name)}\t{int(round(x / scale))}\t{int(round(y / scale))}" for x, y in p.xy()]
    (work / "targets.txt").write_text("\n".join(rows) + "\n")
    # expected particles per micrograph: the labels are sparse, so use the true count estimate from labels
    n_expected = max(1, int(np.mean(n_per) / max(spec_fraction(work), 1e-3)))
    t0 = time.time()
    topaz("train", "--train-images", work / "train", "--train-targets", work / "targets.txt",
          "-n", n_expected, "-r", radius, "--model", "resnet16", "--units", "64", "--num-epochs", epochs,
          "--epoch-size", epoch_size, "--device", "-1", "--num-workers", "0", "--num-threads", threads,
          "--save-prefix", work / "model", "-o", work / "train_log.txt")
    t_train = time.time() - t0
    model = work / f"model_epoch{epochs}.sav"
    out = topaz("extract", "-m", model, "-r", radius, "-x", scale, "-t", "-10", "-d", "-1",
                *[work / "test" / (name_stem(m.path) + ".mrc") for m in test_mics])
    lines = [ln.split() for ln in out.splitlines() if ln.strip()]
    by = {}
    for ln in lines[1:]:
        by.setdefault(ln[0], []).append((float(ln[1]), float(ln[2]), float(ln[3])))
    picks = {}
    for m in test_mics:
        a = np.array(by.get(name_stem(m.path), []), float).reshape(-1, 3)
        picks[m.name] = Picks(a[:, 0], a[:, 1], a[:, 2])
    log(f"[fewshot]   topaz: trained {epochs}x{epoch_size} updates in {t_train:.0f} s")
    return {"picks": picks, "seconds": t_train}


def spec_fraction(work: Path) -> float:
    f = work / "fraction.txt"
    return float(f.read_text()) if f.exists() else 1.0


# ----------------------------------------------------------------------------------------- main
def run_target(spec, args, base, work: Path, log=print) -> dict:
    import torch

    from hydrapicker.finetune import finetune
    from hydrapicker.metrics import evaluate
    from hydrapicker.picker import Picker

    tr_mics, tr_truth = write_set(spec, work / "train", range(args.train))
    te_mics, te_truth = write_set(spec, work / "test", range(1000, 1000 + args.test))
    picker = Picker(base, device="cpu", log=lambda *a: None)
    row = {"target": spec.name, "diameter_px": round(spec.diameter_px, 1),
           "n_train_particles": int(sum(len(p) for p in tr_truth.values())),
           "zero_shot": ap_of(picker, "generic", te_mics, te_truth, spec)["AP"]}
    rng = np.random.default_rng(args.seed)
    for frac in args.fractions:
        labels = tr_truth if frac >= 1 else {k: p.subset(rng.random(len(p)) < frac) for k, p in tr_truth.items()}
        key = "dense" if frac >= 1 else f"sparse{int(round(frac * 100))}"
        t0 = time.time()
        out = finetune(base, tr_mics, labels, spec.diameter_A, "target", out=work / f"{key}.pt",
                       seed=args.seed, mix_generic=args.mix_generic, centre_refiner=not args.no_centre_refiner,
                       log=(lambda *a: None) if not args.verbose else log)
        secs = time.time() - t0
        p2 = Picker(out, device="cpu", log=lambda *a: None)
        info = p2.meta["finetune"]["target"]
        res = ap_of(p2, "target", te_mics, te_truth, spec, threshold=p2.meta["head_thresholds"]["target"])
        row[key] = {**res, "seconds": round(secs, 1), "cpu_seconds": info["cpu_seconds"],
                    "label_fraction": round(info["label_fraction"], 2),
                    "epochs": info["epochs"], "threshold": round(info["threshold"], 3),
                    "n_labels": info["n_picks"]}
        if args.topaz and topaz_available():
            tw = work / f"topaz_{key}"
            tw.mkdir(parents=True, exist_ok=True)
            (tw / "fraction.txt").write_text(str(frac))
            try:
                tz = run_topaz(tw, spec, tr_mics, labels, te_mics, args.topaz_epochs, args.topaz_epoch_size,
                               args.threads, log)
                r = evaluate(tz["picks"], {k: v.xy() for k, v in te_truth.items()}, spec.diameter_px)
                row[f"topaz_{key}"] = {"AP": float(r["AP"]), "seconds": round(tz["seconds"], 1)}
            except Exception as exc:  # report, keep going
                row[f"topaz_{key}"] = {"AP": None, "error": str(exc)[-300:]}
        torch.set_num_threads(args.threads)
    return row


def timing(base, args, work: Path, log=print) -> dict:
    """Fine-tune wall time for 5 micrographs of 2048 x 2048 px (proteasome-like target, 40 px particles)."""
    from hydrapicker.finetune import finetune
    from hydrapicker.simulate import get_target

    spec = get_target("t_proteasome")
    mics, truth = write_set(spec, work / "timing", range(5), shape=(2048, 2048))
    t0 = time.time()
    out = finetune(base, mics, truth, spec.diameter_A, "timing", out=work / "timing.pt",
                   seed=args.seed, log=(lambda *a: None) if not args.verbose else log,
                   centre_refiner=not args.no_centre_refiner)
    secs = time.time() - t0
    import torch

    info = torch.load(out, weights_only=True)["meta"]["finetune"]["timing"]
    return {"seconds": round(secs, 1), "cpu_seconds": info["cpu_seconds"], "threads": args.threads,
            "epochs": info["epochs"],
            "n_picks": info["n_picks"], "validation_AP": info["validation_AP"]}


def fmt(v):
    if v is None:
        return "   -  "
    return f"{v:6.3f}"


def print_table(rows, fractions, topaz):
    keys = ["dense" if f >= 1 else f"sparse{int(round(f * 100))}" for f in fractions]
    head = f"{'target':22s} {'D px':>5s} {'zero':>6s}" + "".join(f" {k:>9s}" for k in keys)
    if topaz:
        head += "".join(f" {'topaz_' + k:>13s}" for k in keys)
    head += "  fine-tune s"
    print(head)
    print("-" * len(head))
    for r in rows:
        line = f"{r['target']:22s} {r['diameter_px']:5.0f} {fmt(r['zero_shot'])}"
        line += "".join(f" {fmt(r[k]['AP']):>9s}" for k in keys)
        if topaz:
            line += "".join(f" {fmt(r.get('topaz_' + k, {}).get('AP')):>13s}" for k in keys)
        line += "  " + "/".join(f"{r[k]['seconds']:.0f}" for k in keys)
        print(line)
    mean = lambda vals: float(np.mean(vals)) if vals else None  # noqa: E731
    line = f"{'mean':22s} {'':5s} {fmt(mean([r['zero_shot'] for r in rows]))}"
    line += "".join(f" {fmt(mean([r[k]['AP'] for r in rows])):>9s}" for k in keys)
    if topaz:
        line += "".join(f" {fmt(mean([r['topaz_' + k]['AP'] for r in rows if r.get('topaz_' + k, {}).get('AP') is not None])):>13s}"
                        for k in keys)
    print(line)
    for k in keys:
        better = sum(r[k]["AP"] > r["zero_shot"] for r in rows)
        print(f"{k}: above zero-shot on {better}/{len(rows)} targets; "
              f"precision/recall at the calibrated threshold (test): "
              + ", ".join(f"{r['target']} {r[k].get('precision_at_thr', float('nan')):.2f}/"
                          f"{r[k].get('recall_at_thr', float('nan')):.2f}" for r in rows))


def main(argv=None):
    from hydrapicker.checkpoint import default_model_path
    from hydrapicker.simulate import target_dataset_specs

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="base model (default: the shipped generic model)")
    p.add_argument("--targets", nargs="*", default=None, help="target names (default: all)")
    p.add_argument("--train", type=int, default=5, help="labelled micrographs per target")
    p.add_argument("--test", type=int, default=5, help="test micrographs per target")
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.3], help="labelled share(s)")
    p.add_argument("--mix-generic", type=float, default=0.0)
    p.add_argument("--no-centre-refiner", action="store_true",
                   help="the heads keep their own centres (hydra finetune --no-refiner): no refiner taught the labels")
    p.add_argument("--topaz", action="store_true", help="also fine-tune Topaz (resnet16_u64) on the same labels")
    p.add_argument("--topaz-epochs", type=int, default=5)
    p.add_argument("--topaz-epoch-size", type=int, default=200)
    p.add_argument("--timing", action="store_true", help="time fine-tuning 5 micrographs of 2048^2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    p.add_argument("--out", default=None, help="JSON results")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    base = Path(args.model) if args.model else default_model_path()
    if not base.exists():
        sys.exit(f"base model {base} does not exist: train one (hydra train) or pass --model")
    specs = target_dataset_specs()
    if args.targets:
        specs = [s for s in specs if s.name in set(args.targets)]
    if args.topaz and not topaz_available():
        print(f"[fewshot] Topaz not found at {TOPAZ_PY}; run benchmarks/setup_peers.sh (skipping Topaz)")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="fewshot_"))
    rows = []
    for spec in specs:
        t0 = time.time()
        rows.append(run_target(spec, args, base, work / spec.name))
        print(f"[fewshot] {spec.name}: zero-shot {rows[-1]['zero_shot']:.3f}, "
              + ", ".join(f"{k} {v['AP']:.3f}" for k, v in rows[-1].items()
                          if isinstance(v, dict) and v.get("AP") is not None)
              + f" ({time.time() - t0:.0f} s)", flush=True)
    print()
    print(f"Few-shot AP (IoU > 0.6) on {args.test} test micrographs per target; {args.train} labelled "
          f"micrographs; base {base}")
    print_table(rows, args.fractions, args.topaz and topaz_available())
    result = {"rows": rows, "args": {k: v for k, v in vars(args).items()}, "base": str(base)}
    if args.timing:
        result["timing"] = timing(base, args, work)
        t = result["timing"]
        print(f"fine-tuning 5 micrographs of 2048^2 on {t['threads']} threads: {t['seconds']:.0f} s wall, "
              f"{t['cpu_seconds']:.0f} CPU-s ({t['epochs']} epochs, {t['n_picks']} picks; target <= 300 s)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
