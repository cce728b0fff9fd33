"""Demo: simulate micrographs of held-out proteins, pick them with the shipped model, score and draw them.

Simulates a few micrographs of particle types the shipped model never saw in training (or uses a
dataset directory you give, with Micrographs/, micrographs STAR, truth/ and meta.json), picks them through
the same code path as ``hydra pick``, prints AP against the truth and writes an overlay PNG.

Examples:
  hydra demo --out demo/
  hydra demo --out demo/ --targets t_ribosome t_rod --n-micrographs 2
  hydra demo --out demo/ --dataset ../shared/data/real/ribosome80s_empiar10028
"""

DEFAULT_TARGETS = ["t_proteasome", "t_ribosome", "t_ferritin_crowded"]


def add_args(p):
    p.add_argument("--out", default="demo", help="output directory")
    p.add_argument("--targets", nargs="+", default=DEFAULT_TARGETS,
                   help="held-out simulated targets (hydra simulate --list)")
    p.add_argument("--dataset", action="append", default=[],
                   help="a dataset directory with Micrographs/, *.star, truth/, meta.json (repeatable)")
    p.add_argument("--n-micrographs", type=int, default=2)
    p.add_argument("--model", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--threshold", type=float, default=None, help="FOM threshold for the overlay")


def _dataset_from_dir(d):
    import json
    from pathlib import Path

    d = Path(d)
    meta = json.loads((d / "meta.json").read_text())
    star = next(iter(sorted(d.glob("*.star"))))
    return d, star, float(meta.get("diameter_A")), d.name


def main(args):
    import time
    from pathlib import Path

    import numpy as np

    from ..coords import read_coords, write_relion_star
    from ..metrics import evaluate
    from ..micrographs import read_micrographs_star
    from ..picker import Picker

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    datasets = []
    if not args.dataset:
        from ..simulate import get_target, write_dataset

        for name in args.targets:
            spec = get_target(name)
            d = out / "data" / name
            if not (d / "meta.json").exists():
                print(f"[demo] simulating {args.n_micrographs} micrographs of {name}: {spec.description}",
                      flush=True)
                write_dataset(spec, d, args.n_micrographs)
            datasets.append(_dataset_from_dir(d))
    else:
        datasets = [_dataset_from_dir(d) for d in args.dataset]

    picker = Picker(args.model, device=args.device)
    thr = picker.default_threshold if args.threshold is None else args.threshold
    rows, overlays = [], []
    for d, star, diameter, name in datasets:
        mics = read_micrographs_star(star)
        t0 = time.time()
        picks = {}
        for res in picker.pick(mics, diameter):
            if not res.ok:
                print(f"[demo] skipped {res.micrograph.name}: {res.error}")
                continue
            key = Path(res.micrograph.name).stem
            picks[key] = res.picks
            write_relion_star(out / "picks" / name / f"{key}_hydra.star", res.picks.above(thr))
            apix = res.info["pixel_size"]
        secs = time.time() - t0
        truth = {k: v.xy() for k, v in read_coords(d / "truth").items()}
        box = diameter / apix
        r = evaluate(picks, truth, box)
        r_thr = evaluate({k: v.above(thr) for k, v in picks.items()}, truth, box)
        rows.append((name, r["AP"], r["AP_centre"], r["F1"], r_thr["precision"], r_thr["recall"],
                     r_thr["n_picks"], r["n_truth"], secs / max(len(mics), 1)))
        first = mics[0]
        overlays.append((name, first.path, picks.get(Path(first.name).stem), truth.get(Path(first.name).stem),
                         box))
    print(f"\n[demo] shipped model {picker.meta.get('path')} on {picker.device}; threshold {thr:.3f}")
    print(f"{'dataset':24s} {'AP':>6s} {'AP_ctr':>6s} {'maxF1':>6s} {'prec@t':>6s} {'rec@t':>6s} "
          f"{'picks':>6s} {'truth':>6s} {'s/mic':>6s}")
    for row in rows:
        print(f"{row[0]:24s} {row[1]:6.3f} {row[2]:6.3f} {row[3]:6.3f} {row[4]:6.3f} {row[5]:6.3f} "
              f"{row[6]:6d} {row[7]:6d} {row[8]:6.2f}")
    print(f"{'mean':24s} {np.mean([r[1] for r in rows]):6.3f}")
    png = out / "overlay.png"
    _overlay(overlays, thr, png)
    print(f"\n[demo] overlay (green = picks with FOM >= threshold, red circles = truth): {png}")
    print(f"[demo] coordinate STARs: {out / 'picks'}/")
    return 0


def _overlay(items, thr, path):
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone
    import mrcfile
    import numpy as np

    from ..atomic import atomic_path

    n = len(items)
    fig = Figure(figsize=(6 * n, 6))
    axes = fig.subplots(1, n, squeeze=False)
    for ax, (name, mrc, picks, truth, box) in zip(axes[0], items):
        img = mrcfile.read(mrc).astype(np.float32)
        lo, hi = np.percentile(img, [1, 99])
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        if truth is not None and len(truth):
            ax.scatter(truth[:, 0], truth[:, 1], s=(box * 0.5) ** 2 * 0.6, facecolors="none",
                       edgecolors="red", linewidths=0.8)
        if picks is not None:
            p = picks.above(thr)
            ax.plot(p.x, p.y, "+", color="lime", ms=6)
        ax.set_title(name)
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
