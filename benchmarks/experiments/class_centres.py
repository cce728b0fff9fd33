#!/usr/bin/env python
"""Experiment (issue 18): re-centre picks by 2D alignment to class averages of the picks themselves.

What 2D classification does to centre particles, done on the picks before extraction, with nothing learned:
the confident picks (FOM at or above the calibrated threshold) are cropped on the micrograph resampled to
about ``--px-per-d`` pixels per diameter, and aligned, in-plane rotation and shift, to ``--classes`` class
averages, ``--iters`` rounds of hard assignment. Unlike ``reference_centres.py`` (one rotationally averaged
reference, which shrinks onto one domain of a multi-domain particle), each class average keeps its shape.
Each class is anchored to where the detector puts the centre *on average* (after every round the mean move
of its members, in the particle's frame, is subtracted): alignment removes the part of the detector's error
that differs from particle to particle. ``--prior L`` subtracts L x (move / D)² from the correlation (the
detector's position as a prior); each variant row ``gate{G}_w{W}`` undoes moves longer than G x D and takes
W of the rest.

How the product's rule (``hydrapicker/class_centres.py``, ``hydra pick --class-centres``) was found, on the
32 training-family tuning sets (README, Centres): references pooled over a data set collapse on multi-domain
particles; ``--prior 30`` and half of each move fix that; references per micrograph (``--per-mic``) from the
network's prepared image (``--prepared --up 1.5``) do best. ``--core`` measures the product's implementation
itself (the pick path with ``PickPolicy.class_centres_at``), ``--setting K=V`` changes its settings for a
run, ``--timing`` times it at the calibrated threshold.

  OMP_NUM_THREADS=1 python benchmarks/experiments/class_centres.py --tune 32 --sim-cache DIR --prior 30 --per-mic --prepared --up 1.5
  OMP_NUM_THREADS=1 python benchmarks/experiments/class_centres.py --sets targets custom real --core
  OMP_NUM_THREADS=1 python benchmarks/experiments/class_centres.py --sets real t_ferritin_crowded t_micelle c_touching_proteasome --core --timing
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))
sys.path.insert(0, str(ROOT))

from bench_data import load_dataset, tuning_sets  # noqa: E402
from centres import errors_of, resolve  # noqa: E402
from reference_centres import _scores  # noqa: E402

from hydrapicker.class_centres import _peaks, _rot, rotated  # noqa: E402  (the product's own pieces)
from hydrapicker.class_centres import crops as sample  # noqa: E402


def _peak(cc):
    """(n, M, P, P) -> best template index (n,), sub-pixel (dx, dy) offsets from the centre (n, 2), peak value."""
    m, d = _peaks(cc)
    return m, d, cc.reshape(len(cc), -1).max(1)


def align(crops, templates, search, penalty=None):
    """Cross-correlation of every crop (n, Sc, Sc) with every template (M, St, St), Sc = St + 2 search, less
    ``penalty`` (2 search + 1, 2 search + 1) for the shift (a prior on the move)."""
    import torch
    import torch.nn.functional as F

    c = torch.from_numpy(np.ascontiguousarray(crops)).float()[:, None]
    t = torch.from_numpy(np.ascontiguousarray(templates)).float()[:, None]
    outs = []
    for k in range(0, len(c), 256):
        with torch.no_grad():
            cc = F.conv2d(c[k:k + 256], t).numpy()
            outs.append(_peak(cc if penalty is None else cc - penalty))
    if not outs:
        return np.zeros(0, int), np.zeros((0, 2)), np.zeros(0)
    return tuple(np.concatenate([o[j] for o in outs]) for j in range(3))


def align_top(crops, templates, search, penalty=None, top=3):
    """As :func:`align`, but the translation search only for each crop's ``top`` templates by the
    correlation at zero shift (coarse to fine: about (K x A) / top times cheaper)."""
    import torch
    import torch.nn.functional as F

    n, Sc, _ = crops.shape
    M, St, _ = templates.shape
    P = 2 * search + 1
    if n == 0:
        return np.zeros(0, int), np.zeros((0, 2)), np.zeros(0)
    c = torch.from_numpy(np.ascontiguousarray(crops)).float()
    t = torch.from_numpy(np.ascontiguousarray(templates)).float().reshape(M, -1)
    centre = c[:, search:search + St, search:search + St].reshape(n, -1)
    idx = torch.topk(centre @ t.T, min(top, M), dim=1).indices  # (n, top)
    ms, ds, vs = [], [], []
    for k in range(0, n, 64):
        cc_ = c[k:k + 64]
        patches = F.unfold(cc_[:, None], St).transpose(1, 2)  # (b, P*P, St*St)
        tt = t[idx[k:k + 64]]  # (b, top, St*St)
        cc = torch.einsum("bps,bqs->bqp", patches, tt).reshape(len(cc_), -1, P, P).numpy()
        m, d, v = _peak(cc if penalty is None else cc - penalty)
        ms.append(idx[k:k + 64].numpy()[np.arange(len(cc_)), m])
        ds.append(d)
        vs.append(v)
    return np.concatenate(ms), np.concatenate(ds), np.concatenate(vs)


def class_centres(image_by_mic: dict, xy: dict, conf: dict, box: float, n_classes=4, n_angles=36, iters=6,
                  reach=0.25, mask_d=0.6, move="all", min_conf=30, seed=0, prior=0.0, top=0, iter_top=0,
                  max_conf=0, prior_final_only=False) -> tuple:
    """New positions {mic: (n, 2)} (binned pixels) and a report dict."""
    import torch

    rng = np.random.default_rng(seed)
    half = int(np.ceil(mask_d * box)) + 1
    search = max(1, int(np.ceil(reach * box)))
    r = np.arange(-half, half + 1)
    rr = np.hypot(*np.meshgrid(r, r, indexing="ij"))
    mask = np.clip((mask_d * box - rr) / 2.0 + 0.5, 0, 1)
    angles = np.arange(n_angles) * 2 * np.pi / n_angles
    o = np.arange(-search, search + 1)
    pen = prior * (np.hypot(*np.meshgrid(o, o, indexing="ij")) / box) ** 2 if prior else None
    mics = list(xy)
    imgs = {m: torch.from_numpy(np.ascontiguousarray(image_by_mic[m], np.float32))[None, None] for m in mics}
    start = {m: np.asarray(xy[m], float).reshape(-1, 2) for m in mics}
    out = {m: v.copy() for m, v in start.items()}
    reachable = half + search + 1  # whole crops only: a zero-padded crop pulls its alignment
    inside = {m: ((start[m] >= reachable) & (start[m] <= np.array(image_by_mic[m].shape[::-1]) - 1 - reachable)).all(1)
              for m in mics}
    conf = {m: conf[m] & inside[m] for m in mics}
    nconf = sum(int(conf[m].sum()) for m in mics)
    if max_conf and nconf > max_conf:  # references from a random subset: bounded cost
        keep_p = max_conf / nconf
        conf = {m: conf[m] & (rng.random(len(conf[m])) < keep_p) for m in mics}
        nconf = sum(int(conf[m].sum()) for m in mics)
    if nconf < min_conf:
        return out, {"refused": nconf}
    # confident picks, pooled
    owner = np.concatenate([[j] * int(conf[m].sum()) for j, m in enumerate(mics)]).astype(int)
    s0 = np.concatenate([start[m][conf[m]] for m in mics])
    big = {m: sample(imgs[m], start[m], np.zeros(len(start[m])), half + search) for m in mics}
    cbig = np.concatenate([big[m][conf[m]] for m in mics])
    K = int(max(1, min(n_classes, nconf // 40)))
    cls = rng.integers(0, K, len(s0))
    ang = np.zeros(len(s0))
    pos = s0.copy()

    def aligned(p, a):
        return np.concatenate([sample(imgs[m], p[owner == j], a[owner == j], half) if (owner == j).any()
                               else np.zeros((0, 2 * half + 1, 2 * half + 1), np.float32)
                               for j, m in enumerate(mics)])

    def order_back(arr):  # aligned() concatenates by micrograph: owner is sorted already (built that way)
        return arr

    def make_refs(cls, p, a):
        crops = order_back(aligned(p, a))
        refs = np.zeros((K, 2 * half + 1, 2 * half + 1))
        for k in range(K):
            if (cls == k).any():
                refs[k] = crops[cls == k].mean(0)
        refs = refs * mask
        refs -= (refs.sum((1, 2)) / mask.sum())[:, None, None] * mask
        refs /= np.sqrt((refs ** 2).sum((1, 2)))[:, None, None] + 1e-12
        return refs

    hist = []
    for it in range(iters):
        refs = make_refs(cls, pos, ang)
        T = rotated(refs, angles)
        pr = None if prior_final_only else pen
        m, d, val = (align_top(cbig, T, search, pr, iter_top) if iter_top and it > 0
                     else align(cbig, T, search, pr))
        cls, ang = m // n_angles, angles[m % n_angles]
        pos = s0 + d
        # anchor: per class, the mean move in the particle frame is removed
        e = np.einsum("nji,nj->ni", _rot(ang), d)  # R^T d
        for k in range(K):
            sel = cls == k
            if sel.sum() >= 3:
                mk = e[sel].mean(0)
                pos[sel] -= np.einsum("nij,j->ni", _rot(ang[sel]), mk)
        hist.append({"it": it, "mean_cc": round(float(val.mean()), 4),
                     "median_move_D": round(float(np.median(np.hypot(*(pos - s0).T))) / box, 4),
                     "sizes": np.bincount(cls, minlength=K).tolist()})
    refs = make_refs(cls, pos, ang)
    # class anchors from the confident picks' final alignment
    T = rotated(refs, angles)
    m, d, _ = align(cbig, T, search, pen)
    cls_c, ang_c = m // n_angles, angles[m % n_angles]
    e = np.einsum("nji,nj->ni", _rot(ang_c), d)
    anchor = np.array([e[cls_c == k].mean(0) if (cls_c == k).sum() >= 3 else np.zeros(2) for k in range(K)])
    t_final = time.process_time()
    for mname in mics:
        sel = conf[mname] if move == "conf" else inside[mname]
        if not sel.any():
            continue
        if top:
            mm, dd, _ = align_top(big[mname][sel], T, search, pen, top)
        else:
            mm, dd, _ = align(big[mname][sel], T, search, pen)
        kk, aa = mm // n_angles, angles[mm % n_angles]
        dd = dd - np.einsum("nij,nj->ni", _rot(aa), anchor[kk])
        out[mname][sel] = start[mname][sel] + dd
    return out, {"classes": K, "confident": nconf, "history": hist,
                 "final_cpu_s": round(time.process_time() - t_final, 3),
                 "final_picks": int(sum(int(inside[m].sum()) for m in mics))}


VARIANTS = [(0.08, 1.0), (0.16, 1.0), (1.0, 0.3), (1.0, 0.5), (1.0, 0.7), (0.16, 0.5)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=["targets", "custom", "real"])
    ap.add_argument("--n-sim", type=int, default=5)
    ap.add_argument("--sim-cache", default="/tmp/hydra_bench/sim")
    ap.add_argument("--picks-cache", default="/tmp/hydra_bench/class_centres")
    ap.add_argument("--px-per-d", type=float, default=24.0)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--reach", type=float, default=0.25)
    ap.add_argument("--mask", type=float, default=0.6)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--angles", type=int, default=36)
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--move", choices=["all", "conf"], default="all")
    ap.add_argument("--setting", nargs="*", default=[], metavar="K=V",
                    help="with --core: hydrapicker.class_centres.ClassCentreSettings fields changed for this run")
    ap.add_argument("--figure", default=None, help="with --core: centre-error histograms per set (PNG)")
    ap.add_argument("--timing", action="store_true", help="with --core: at the calibrated threshold (what is "
                    "written by default), each picking done twice, the second timed")
    ap.add_argument("--adapt-centres", action="store_true", help="with --core: the refiner adapted to each set "
                    "first (as hydra pick --adapt), a column without and one with class centring")
    ap.add_argument("--core", action="store_true", help="measure the product's implementation (the pick path "
                    "with PickPolicy class_centres, every pick above 0.01) against the same path without it")
    ap.add_argument("--prior-final-only", action="store_true", help="the prior in the final alignment only")
    ap.add_argument("--per-mic", action="store_true", help="class references from each micrograph alone")
    ap.add_argument("--iter-top", type=int, default=0, help="as --top, for the reference rounds after the first")
    ap.add_argument("--max-conf", type=int, default=0, help="references from at most N confident picks")
    ap.add_argument("--up", type=float, default=1.0, help="with --prepared: resample it by this factor")
    ap.add_argument("--prepared", action="store_true", help="align on the network's prepared image (16 px per D)")
    ap.add_argument("--top", type=int, default=0, help="final alignment: translation search for the N best "
                    "templates at zero shift only (0: every template)")
    ap.add_argument("--prior", type=float, default=0.0,
                    help="penalty on the move: this many CC units per D² (0: none)")
    ap.add_argument("--tune", type=int, default=0, help="N training-family tuning sets (seeds 7100+) instead of --sets")
    ap.add_argument("--start", type=int, default=0, help="with --tune: skip the first N sets")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    import mrcfile
    from scipy.ndimage import gaussian_filter, zoom

    from hydrapicker.picker import Picker, configure_torch
    from hydrapicker.types import Micrograph, Picks

    configure_torch(1)
    if args.tune:
        sets = tuning_sets(args.tune, Path(args.sim_cache))[args.start:]
    else:
        sets = resolve(args.sets, args.n_sim, Path(args.sim_cache))
    cache = Path(args.picks_cache)
    cache.mkdir(parents=True, exist_ok=True)
    picker = None
    results = []
    if args.core:  # the product's implementation: the pick path with class_centres on, against it off
        return _core(sets, args, threshold=None if args.timing else 0.01, repeats=2 if args.timing else 1)
    for root, kind in sets:
        ds = load_dataset(root, kind=kind)
        box = ds.box_px
        cpath = cache / f"{ds.name}_{len(ds.stems)}.pkl"
        if cpath.exists():
            picks, thr = pickle.loads(cpath.read_bytes())
        else:
            if picker is None:
                picker = Picker("default", device="cpu", log=None, refine=False)
            thr = picker.threshold_for("generic")
            mics = [Micrograph(str(p), pixel_size=ds.pixel_size, name=s) for s, p in zip(ds.stems, ds.mic_paths)]
            pol = picker.policy(ds.diameter_A, threshold=0.01)
            picks = {r.micrograph.name: r.picks for r in picker.pick(mics, ds.diameter_A, policy=pol)}
            cpath.write_bytes(pickle.dumps((picks, thr)))
        images = {}
        t0 = time.process_time()
        for s, p in zip(ds.stems, ds.mic_paths):
            im = mrcfile.read(p).astype(np.float64)
            if args.prepared:  # the network's own input: Fourier-rescaled to 16 px per D, high-passed, clipped
                from hydrapicker.preprocess import prepare

                pp = prepare(im.astype(np.float32), ds.pixel_size, ds.diameter_A, 16.0)
                images[s], f = pp.image.astype(np.float64), np.asarray(pp.scale_xy, float)
                if args.up != 1.0:  # the prepared image resampled to 16 x up px per D, then low-passed as below
                    images[s] = zoom(images[s], args.up, order=1)
                    f = f * np.array(images[s].shape[::-1]) / np.array(pp.image.shape[::-1])
                    images[s] = gaussian_filter(images[s], args.sigma) if args.sigma > 0 else images[s]
                    images[s] = (images[s] - images[s].mean()) / (images[s].std() + 1e-12)
                continue
            f = min(1.0, args.px_per_d / box)
            im = zoom(im, f, order=1) if f < 1 else im
            im = gaussian_filter(im, args.sigma) if args.sigma > 0 else im
            images[s] = (im - im.mean()) / (im.std() + 1e-12)
        f = np.broadcast_to(np.asarray(f, float), (2,))
        xy = {s: p.xy() * f for s, p in picks.items()}
        conf = {s: p.fom >= thr for s, p in picks.items()}
        kw = dict(n_classes=args.classes, n_angles=args.angles, iters=args.iters, reach=args.reach,
                  mask_d=args.mask, move=args.move, prior=args.prior, top=args.top, iter_top=args.iter_top,
                  max_conf=args.max_conf, prior_final_only=args.prior_final_only)
        if args.per_mic:  # references from each micrograph's own picks
            new, rep = {}, {"final_cpu_s": 0.0, "refused_mics": 0}
            for s_ in images:
                n1, r1 = class_centres({s_: images[s_]}, {s_: xy[s_]}, {s_: conf[s_]}, box * f.mean(), **kw)
                new.update(n1)
                rep["final_cpu_s"] += r1.get("final_cpu_s", 0.0)
                rep["refused_mics"] += int("refused" in r1)
                rep["history"] = r1.get("history", rep.get("history", []))
        else:
            new, rep = class_centres(images, xy, conf, box * f.mean(), **kw)
        cpu = time.process_time() - t0
        moved = {s: Picks(v[:, 0] / f[0], v[:, 1] / f[1], picks[s].fom) for s, v in new.items()}
        row = {"set": ds.name, "box_px": round(box, 2), "bin": round(1 / f.mean(), 3),
               "detector": _scores(picks, ds.truth, box),
               "class": {**_scores(moved, ds.truth, box), "cpu_s_per_mic": round(cpu / len(picks), 2)},
               "report": {k: v for k, v in rep.items() if k != "history"},
               "history": rep.get("history", [])[-1:]}
        for gate, w in VARIANTS:  # moves longer than gate x D undone; the rest taken by the fraction w
            var = {}
            for s, v in new.items():
                mv = v - xy[s]
                keep = np.hypot(*mv.T) <= gate * box * f.mean()
                u = xy[s] + w * mv * keep[:, None]
                var[s] = Picks(u[:, 0] / f[0], u[:, 1] / f[1], picks[s].fom)
            row[f"gate{gate}_w{w}"] = _scores(var, ds.truth, box)
        results.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(f"{'set':26s} | {'AP det / class':>15s} | {'AP_D2 det/class':>15s} | {'med D det/class':>15s}")
    for r in results:
        d, c = r["detector"], r["class"]
        print(f"{r['set']:26s} | {d['AP']:6.3f} {c['AP']:7.3f} | {d['AP_D2']:6.3f} {c['AP_D2']:7.3f} | "
              f"{d['median_D'] or 0:6.3f} {c['median_D'] or 0:7.3f}")
    for key in ["class"] + [f"gate{g}_w{w}" for g, w in VARIANTS]:
        da = [r[key]["AP"] - r["detector"]["AP"] for r in results]
        dm = [(r[key]["median_D"] or 0) - (r["detector"]["median_D"] or 0) for r in results]
        if da:
            print(f"{key:16s} mean dAP {np.mean(da):+.4f}  worst {min(da):+.4f}  best {max(da):+.4f}  "
                  f"n>+0.005 {sum(x > 0.005 for x in da)}  n<-0.005 {sum(x < -0.005 for x in da)}  "
                  f"mean d median_D {np.mean(dm):+.4f}")
    da = []
    if da:
        print(f"mean dAP {np.mean(da):+.4f}  worst {min(da):+.4f}  best {max(da):+.4f}  "
              f"n>+0.005 {sum(x > 0.005 for x in da)}  n<-0.005 {sum(x < -0.005 for x in da)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "results": results}, indent=1))
    return 0


def _core(sets, args, threshold=0.01, repeats=1) -> int:
    """``threshold`` None: the head's calibrated threshold (what users write; ``--timing``)."""
    from dataclasses import replace

    from hydrapicker import class_centres as core
    from hydrapicker.picker import Picker
    from hydrapicker.types import Micrograph

    if args.setting:  # e.g. step=1: the core's settings changed for this run
        core.DEFAULT_SETTINGS = replace(core.DEFAULT_SETTINGS, **{k: type(getattr(core.DEFAULT_SETTINGS, k))(v)
                                                                  for k, v in (a.split("=") for a in args.setting)})
        print(f"settings: {core.DEFAULT_SETTINGS}", flush=True)
    picker = Picker("default", device="cpu", log=None, refine=False)
    results = []
    for root, kind in sets:
        ds = load_dataset(root, kind=kind)
        mics = [Micrograph(str(p), pixel_size=ds.pixel_size, name=s) for s, p in zip(ds.stems, ds.mic_paths)]
        row = {"set": ds.name}
        errors = {}
        variants = (("detector", picker, False), ("class", picker, True))
        if args.adapt_centres:  # as hydra pick --adapt centres: the refiner adapted to the set, then class centring
            import tempfile

            from hydrapicker.refine_adapt import picker_with_adapted_refiner

            with tempfile.TemporaryDirectory() as tmp:
                adapted, ra = picker_with_adapted_refiner(picker, mics, ds.diameter_A, Path(tmp) / "refiner.pt",
                                                          reuse=False, log=lambda *a: None)
                row["adapted_refiner"] = {"accepted": ra.accepted, "reason": ra.reason}
            variants = (("detector", picker, False), ("adapted", adapted, False), ("class", adapted, True))
        for name, who, on in variants * repeats:  # the last repeat counts
            t0 = time.process_time()
            pol = who.policy(ds.diameter_A, threshold="model" if threshold is None else threshold,
                             class_centres=on)
            picks = {r.micrograph.name: r.picks for r in who.pick(mics, ds.diameter_A, policy=pol)}
            row[name] = {**_scores(picks, ds.truth, ds.box_px),
                         "cpu_s_per_mic": round((time.process_time() - t0) / len(mics), 3),
                         "picks_per_mic": round(sum(len(p) for p in picks.values()) / len(mics), 1)}
            e, _ = errors_of(picks, ds.truth, ds.box_px)
            errors[name] = np.hypot(e[:, 0], e[:, 1])[~np.isnan(e[:, 0])] / ds.box_px
        row["errors_D_hist"] = {k: np.histogram(v, bins=np.linspace(0, 0.5, 41))[0].tolist() for k, v in errors.items()}
        results.append(row)
        print(json.dumps(row), flush=True)
    da = [r["class"]["AP"] - r["detector"]["AP"] for r in results]
    print(f"core: mean dAP {np.mean(da):+.4f}  worst {min(da):+.4f}  best {max(da):+.4f}  "
          f"n>+0.005 {sum(x > 0.005 for x in da)}  n<-0.005 {sum(x < -0.005 for x in da)}")
    for r in results:
        d, c = r["detector"], r["class"]
        if "adapted" in r:
            print(f"{r['set']:26s} adapted refiner: AP {r['adapted']['AP']:.3f} AP_D2 {r['adapted']['AP_D2']:.3f} "
                  f"median D {r['adapted']['median_D'] or 0:.3f}")
        print(f"{r['set']:26s} AP {d['AP']:.3f} -> {c['AP']:.3f}  AP_D2 {d['AP_D2']:.3f} -> {c['AP_D2']:.3f}  "
              f"median D {d['median_D'] or 0:.3f} -> {c['median_D'] or 0:.3f}  CPU x{c['cpu_s_per_mic'] / max(d['cpu_s_per_mic'], 1e-9):.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "results": results}, indent=1))
    if args.figure:
        _figure(results, Path(args.figure))
    return 0


def _figure(results, path: Path) -> None:
    """Centre-error histogram per set: the detector's centres (black line) and class-centred (bars)."""
    from matplotlib.figure import Figure

    from hydrapicker.atomic import atomic_path

    cols, n = 4, len(results)
    fig = Figure(figsize=(3.2 * cols, 2.5 * max(1, -(-n // cols))), dpi=110)
    edges = np.linspace(0, 0.5, 41)
    for k, r in enumerate(results):
        ax = fig.add_subplot(max(1, -(-n // cols)), cols, k + 1)
        h = {name: np.asarray(v, float) for name, v in r["errors_D_hist"].items()}
        ax.bar(edges[:-1], h["class"] / max(h["class"].sum(), 1), width=edges[1] - edges[0], align="edge",
               color="tab:blue", alpha=0.7, label="class-centred")
        ax.step(edges, np.r_[h["detector"] / max(h["detector"].sum(), 1), 0], where="post", color="k", lw=1.0,
                label="detector")
        ax.axvline(1 / 12, color="k", ls=":", lw=0.8)
        ax.axvline(0.25, color="tab:red", ls="--", lw=0.8)
        d, c = r["detector"], r["class"]
        ax.set_title(f"{r['set']}\nAP {d['AP']:.2f} -> {c['AP']:.2f}, median {d['median_D'] or 0:.3f} -> "
                     f"{c['median_D'] or 0:.3f} D", fontsize=7.5)
        ax.tick_params(labelsize=7)
        if k == 0:
            ax.legend(fontsize=6, loc="upper right")
        if k >= n - cols:
            ax.set_xlabel("centre error / D  (dotted D/12, dashed D/4)", fontsize=7)
    fig.suptitle("Centre errors of matched picks (D/2 rule), every pick kept: detector -> class-average centring",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)


if __name__ == "__main__":
    sys.exit(main())
