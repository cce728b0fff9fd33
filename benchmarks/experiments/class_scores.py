#!/usr/bin/env python
"""Experiment (issues 14 and 17): score every pick by how well it matches its data set's own class average.

Class-average centring (``hydrapicker/class_centres.py``) builds, per micrograph, a class average from the
confident picks. RELION's reference-based autopicking picks with 2D class averages as templates; here the
average is used to *re-rank* the detector's candidates without labels: junk (vesicle rims, ice, carbon
edges, aggregates) matches the particle average worse than a particle does. For every pick (``--all``) the
normalised cross-correlation (NCC) with the average, best over its rotations and shifts within ``--search``
px (at 24 px per D), is recorded beside its FOM; a micrograph refused by class centring (fewer than 30
confident picks, e.g. junk-only ones) takes the average of the micrograph of its set with the most confident
picks. The analysis step combines FOM and NCC and reports AP (IoU rule) against FOM alone.

  OMP_NUM_THREADS=1 python benchmarks/experiments/class_scores.py --sets DIR ... --rows rows.pkl
  OMP_NUM_THREADS=1 python benchmarks/experiments/class_scores.py --analyse rows.pkl [--json J]
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from bench_data import load_dataset, tuning_sets  # noqa: E402


def _ncc(image: np.ndarray, xy: np.ndarray, templates: np.ndarray, mask: np.ndarray, search: int) -> np.ndarray:
    """Best normalised cross-correlation of the crops of ``image`` at ``xy`` (aligned pixels) with any of
    ``templates`` (M, S, S; zero mean and unit norm under ``mask``) within ``search`` px -> (n,); NaN where the
    crop leaves the image."""
    import torch
    import torch.nn.functional as F

    from hydrapicker.class_centres import crops

    S = templates.shape[-1]
    half = S // 2
    big = half + search
    ny, nx = image.shape
    inside = (xy[:, 0] >= big + 1) & (xy[:, 0] <= nx - big - 2) & (xy[:, 1] >= big + 1) & (xy[:, 1] <= ny - big - 2)
    out = np.full(len(xy), np.nan)
    if not inside.any():
        return out
    c = crops(torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None], xy[inside],
              np.zeros(int(inside.sum())), big)
    ct = torch.from_numpy(c)[:, None]
    t = torch.from_numpy(np.ascontiguousarray(templates, np.float32))[:, None]
    m = torch.from_numpy(np.ascontiguousarray(mask, np.float32))[None, None]
    n = float(mask.sum())
    with torch.no_grad():
        num = F.conv2d(ct, t)                                    # (k, M, P, P)
        s1, s2 = F.conv2d(ct, m), F.conv2d(ct * ct, m)           # local sums under the mask
        var = torch.clamp(s2 - s1 * s1 / n, min=1e-6)
        ncc = num / torch.sqrt(var)
    out[inside] = ncc.reshape(len(c), -1).max(1).values.numpy()
    return out


def collect(sets, args) -> list:
    """Per micrograph: FOMs, NCCs, the picks and the truth (class-centred picks, every pick above 0.01)."""
    from hydrapicker import class_centres as cc
    from hydrapicker.picker import Picker
    from hydrapicker.types import Micrograph

    captured = {}
    original_rotated, original_recentred = cc.rotated, cc.recentred_picks

    def rotated(refs, angles):  # the last call of recentre() rotates the final averages
        out = original_rotated(refs, angles)
        captured["templates"] = out
        return out

    def recentred_picks(picks, prepared_image, scale_xy, diameter_px_prepared, reference=None, settings=None):
        captured.clear()
        moved, res = original_recentred(picks, prepared_image, scale_xy, diameter_px_prepared, reference, settings)
        s = settings or cc.DEFAULT_SETTINGS
        scale = s.px_per_d / float(diameter_px_prepared)
        shape = tuple(prepared_image.shape[-2:])
        aligned = cc.alignment_shape(shape, scale)
        f = np.asarray(scale_xy, float) * np.array([aligned[1] / shape[1], aligned[0] / shape[0]])
        captured["result"] = dict(image=cc.alignment_image(prepared_image, scale, s.sigma_px), f=f,
                                  templates=captured.get("templates") if res.classes else None,
                                  confident=res.confident)
        return moved, res

    cc.rotated, cc.recentred_picks = rotated, recentred_picks
    picker = Picker("default", device="cpu", log=None, refine=False)
    s = cc.DEFAULT_SETTINGS
    half = int(np.ceil(s.mask * s.px_per_d)) + 1
    r = np.arange(-half, half + 1)
    mask = np.clip((s.mask * s.px_per_d - np.hypot(*np.meshgrid(r, r, indexing="ij"))) / 2.0 + 0.5, 0, 1)
    rows = []
    for root, kind in sets:
        ds = load_dataset(root, kind=kind)
        pol = picker.policy(ds.diameter_A, threshold=0.01, class_centres=True)
        thr = picker.threshold_for("generic")
        mine = []
        for stem, path in zip(ds.stems, ds.mic_paths):
            captured.clear()
            p = picker.pick_one(Micrograph(str(path), pixel_size=ds.pixel_size, name=stem), ds.diameter_A, policy=pol)
            res = captured.get("result")
            mine.append(dict(set=ds.name, mic=stem, x=p.x, y=p.y, fom=p.fom, truth=ds.truth[stem], box=ds.box_px,
                             threshold=thr, **(res or {})))
        best = max(mine, key=lambda m: m.get("confident", 0) if m.get("templates") is not None else -1)
        for m in mine:
            own = m.get("templates") is not None
            t = m["templates"] if own else best.get("templates")
            if t is None or "image" not in m:
                m["ncc"] = np.full(len(m["fom"]), np.nan)
            else:
                m["ncc"] = _ncc(m["image"], np.stack([m["x"], m["y"]], 1) * m["f"], t, mask, args.search)
            m["own_template"] = own
            m.pop("image", None), m.pop("templates", None)
            rows.append(m)
        print(f"{ds.name}: {len(mine)} micrographs, own averages {sum(m['own_template'] for m in mine)}", flush=True)
    cc.rotated, cc.recentred_picks = original_rotated, original_recentred
    return rows


def _ap(rows, fom_of) -> float:
    from hydrapicker.metrics import evaluate
    from hydrapicker.types import Picks

    picks = {m["mic"]: Picks(m["x"], m["y"], fom_of(m)) for m in rows}
    return float(evaluate(picks, {m["mic"]: m["truth"] for m in rows}, rows[0]["box"], warn=lambda *a: None)["AP"])


def blended(m, w: float, ref: str, down_only: bool = False):
    """logit(FOM) + w x (NCC - reference) / spread, back to (0, 1); NaN NCC (or no reference): the FOM.
    ``down_only``: only picks below the reference lose (junk), none gains."""
    r, spread = m[ref], m["spread"]
    if not (np.isfinite(r) and np.isfinite(spread) and spread > 0):
        return m["fom"]
    f = np.clip(m["fom"], 1e-6, 1 - 1e-6)
    z = np.where(np.isfinite(m["ncc"]), (m["ncc"] - r) / spread, 0.0)
    z = np.minimum(z, 0.0) if down_only else z
    return 1 / (1 + np.exp(-(np.log(f / (1 - f)) + w * z)))


def _auroc(pos, neg) -> float:
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = np.concatenate([pos, neg]).argsort().argsort() + 1
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def separation(rows) -> dict:
    """AUROC of the FOM and of the NCC for picks within D/2 of a particle against the others, overall and
    within FOM bands (does the NCC add what the FOM lacks?)."""
    fom, ncc, found = [], [], []
    for m in rows:
        t = m["truth"].reshape(-1, 2)
        d = np.hypot(m["x"][:, None] - t[None, :, 0], m["y"][:, None] - t[None, :, 1]) if len(t) else \
            np.full((len(m["x"]), 1), np.inf)
        fom.append(m["fom"]), ncc.append(m["ncc"]), found.append(d.min(1) < m["box"] / 2)
    fom, ncc, found = map(np.concatenate, (fom, ncc, found))
    ok = np.isfinite(ncc)
    out = {"picks": int(len(fom)), "with_ncc": float(ok.mean()),
           "auroc_fom": _auroc(fom[found], fom[~found]), "auroc_ncc": _auroc(ncc[ok & found], ncc[ok & ~found])}
    for lo, hi in ((0.05, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 1.01)):
        b = ok & (fom >= lo) & (fom < hi)
        out[f"fom_{lo}_{hi}"] = {"n": int(b.sum()), "found": float(found[b].mean()) if b.any() else None,
                                 "auroc_ncc": _auroc(ncc[b & found], ncc[b & ~found]),
                                 "auroc_fom": _auroc(fom[b & found], fom[b & ~found])}
    print(json.dumps(out))
    return out


def analyse(rows, args) -> dict:
    sep = separation(rows)
    by_set = {}
    for m in rows:
        by_set.setdefault(m["set"], []).append(m)
    for ms in by_set.values():  # references: the median NCC of the confident picks, per micrograph and per set
        conf = np.concatenate([m["ncc"][(m["fom"] >= m["threshold"]) & np.isfinite(m["ncc"])] for m in ms])
        ref_set = float(np.median(conf)) if len(conf) >= 10 else np.nan
        for m in ms:
            c = m["ncc"][(m["fom"] >= m["threshold"]) & np.isfinite(m["ncc"])]
            m["ref_mic"] = float(np.median(c)) if len(c) >= 10 else ref_set
            m["ref_set"] = ref_set
    for ms in by_set.values():  # the NCC's spread over the set's picks (robust), the unit of the blend
        v = np.concatenate([m["ncc"][np.isfinite(m["ncc"])] for m in ms])
        spread = float(1.4826 * np.median(np.abs(v - np.median(v)))) if len(v) >= 10 else np.nan
        for m in ms:
            m["spread"] = spread
    variants = {"fom": lambda m: m["fom"]}
    for ref in ("ref_set", "ref_mic"):
        for w in args.weights:
            variants[f"logit_{ref}_w{w}"] = (lambda m, w=w, ref=ref: blended(m, w, ref))
            variants[f"down_{ref}_w{w}"] = (lambda m, w=w, ref=ref: blended(m, w, ref, down_only=True))
    table = {k: {s: _ap(ms, f) for s, ms in by_set.items()} for k, f in variants.items()}
    base = table["fom"]
    print(f"{'variant':24s} mean dAP   worst     best   up/down(>0.005)")
    summary = {}
    for k, v in table.items():
        d = np.array([v[s] - base[s] for s in base])
        summary[k] = dict(mean=float(d.mean()), worst=float(d.min()), best=float(d.max()),
                          up=int((d > 0.005).sum()), down=int((d < -0.005).sum()))
        print(f"{k:24s} {d.mean():+.4f}  {d.min():+.4f}  {d.max():+.4f}  {summary[k]['up']}/{summary[k]['down']}")
    return {"separation": sep, "per_set": table, "summary": summary}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="*", default=[], help="dataset directories")
    ap.add_argument("--tune", type=int, default=0, help="N training-family tuning sets (seeds 7100+)")
    ap.add_argument("--sim-cache", default="/work/bench/simtune")
    ap.add_argument("--search", type=int, default=2, help="shift search, px at 24 px per D")
    ap.add_argument("--rows", help="write the collected rows (pickle)")
    ap.add_argument("--analyse", nargs="*", default=None, help="analyse these rows files instead of collecting")
    ap.add_argument("--weights", nargs="+", type=float, default=[0.25, 0.5, 1.0, 2.0])
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.analyse is not None:
        rows = sum((pickle.loads(Path(p).read_bytes()) for p in args.analyse), [])
        out = analyse(rows, args)
        if args.json:
            Path(args.json).write_text(json.dumps({"argv": sys.argv, **out}, indent=1))
        return 0
    from hydrapicker.picker import configure_torch

    configure_torch(1)
    sets = [(Path(p), None) for p in args.sets]
    if args.tune:
        sets += tuning_sets(args.tune, Path(args.sim_cache))
    rows = collect(sets, args)
    if args.rows:
        Path(args.rows).write_bytes(pickle.dumps(rows))
    analyse(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
