"""Training the centre refiner (:mod:`hydrapicker.refine`) on simulated micrographs with exact truth.

Samples are windows around *starting points* near true particles, and the target is the offset from the
window's centre pixel to the nearest true centre (diameters). Starting points come from two sources, half
each: the detector's own picks that lie within half a diameter of a particle (the errors the refiner has
to undo: wrong grid cell, shrunk offsets), and the truth moved by a random offset (uniform per axis
within +-0.35 D, or Gaussian of 0.1 D) so every direction and size of error is taught. Windows are
rotated and flipped (the target with them) and get extra noise. Validation: the detector's picks on
held-out simulated micrographs, centre error before and after refinement.

Two short loops (DETR's ``engine.py`` style): :func:`train_one_epoch` and :func:`evaluate`.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .refine import CROP, EXTENT_PX, MAX_SHIFT_D, RefinerNet, refine_positions, save_refiner, windows


@dataclass
class RefineTrainConfig:
    out: str
    detector: Optional[str] = None      # model whose picks give starting points (default: the shipped one)
    datasets: int = 96
    mics_per_dataset: int = 5
    val_datasets: int = 12
    seed: int = 3
    scale_jitter: float = 0.3
    crowded_fraction: float = 0.25       # datasets forced to touching particles
    low_snr_fraction: float = 0.2        # datasets forced to very low SNR
    junk_fraction: float = 0.2
    crop: int = CROP
    width: int = 16
    batch: int = 256
    lr: float = 2e-3
    hours: float = 1.0
    steps_per_epoch: int = 500
    threads: int = 1
    workers: int = 1


def training_specs(n: int, seed: int, crowded: float, low_snr: float, junk: float) -> list:
    """Training datasets (training families only): :func:`source_dataset_specs` with a share forced to
    touching particles and a share to very low SNR (where the detector centres worst)."""
    from .simulate.datasets import source_dataset_specs

    specs = []
    for i, s in enumerate(source_dataset_specs(n, seed=seed, junk_fraction=junk)):
        u = np.random.default_rng([seed, i, 1818]).random()
        if u < crowded:
            s = s.replace(coverage=(0.35, 0.55), max_overlap=0.18, description=s.description + ", touching")
        elif u < crowded + low_snr:
            s = s.replace(snr=(0.015, 0.06), description=s.description + ", very low SNR")
        specs.append(s)
    return specs


def nearest_truth(points: np.ndarray, truth: np.ndarray) -> tuple:
    """(index of the nearest truth, distance) for each point (N, 2)."""
    if len(truth) == 0 or len(points) == 0:
        return np.zeros(len(points), int), np.full(len(points), np.inf)
    from scipy.spatial import cKDTree

    d, i = cKDTree(truth).query(points)
    return i, d


@dataclass
class _Mic:
    image: torch.Tensor          # prepared at the refiner's extent
    xy: np.ndarray               # truth (N, 2) in its pixels
    picks: np.ndarray            # detector picks within D/2 of a particle (starting points)


def detector_picks(net, image: np.ndarray, stride: int, extent_px: float) -> np.ndarray:
    """The detector's picks (every one above the floor) on a prepared image: the picking path's decode,
    ranking and suppression (:func:`hydrapicker.train.predict_prepared`)."""
    from .train import predict_prepared

    p = predict_prepared(net, image, "generic", stride, extent_px)
    return np.stack([p.x, p.y], axis=1) if len(p) else np.zeros((0, 2))


def prepare_mics(sets, detector, stride: int, extent_px: float) -> list:
    out = []
    for s in sets:
        for m in s.mics:
            picks = detector_picks(detector, m.image, stride, extent_px)
            _, d = nearest_truth(picks, m.xy)
            out.append(_Mic(torch.from_numpy(np.ascontiguousarray(m.image)), m.xy, picks[d <= 0.5 * extent_px]))
    return out


def _dihedral(w: torch.Tensor, t: torch.Tensor, rng) -> tuple:
    """Random rotation/flip per window (B, 1, C, C) with its target offsets (B, 2) (x right, y down)."""
    k = rng.integers(0, 4, len(w))
    flip = rng.random(len(w)) < 0.5
    out_w, out_t = w.clone(), t.clone()
    for n in range(len(w)):
        img, dx, dy = w[n, 0], float(t[n, 0]), float(t[n, 1])
        for _ in range(int(k[n])):  # np.rot90 convention (counter-clockwise): x' = y, y' = -x about the centre
            img, dx, dy = torch.rot90(img, 1, (0, 1)), dy, -dx
        if flip[n]:
            img, dx = torch.flip(img, (1,)), -dx
        out_w[n, 0], out_t[n, 0], out_t[n, 1] = img, dx, dy
    return out_w, out_t


def sample_batch(mics: list, batch: int, crop: int, extent_px: float, rng, augment: bool = True) -> tuple:
    """(windows (B, 1, C, C), targets (B, 2) in diameters)."""
    ws, ts = [], []
    per = 16
    for _ in range(-(-batch // per)):
        m = mics[int(rng.integers(0, len(mics)))]
        if len(m.xy) == 0:
            continue
        n_det = per // 2 if len(m.picks) else 0
        starts = []
        if n_det:
            starts.append(m.picks[rng.integers(0, len(m.picks), n_det)])
        n_jit = per - n_det
        base = m.xy[rng.integers(0, len(m.xy), n_jit)]
        uni = rng.uniform(-0.35, 0.35, (n_jit, 2))
        gau = np.clip(rng.normal(0, 0.1, (n_jit, 2)), -0.35, 0.35)
        starts.append(base + np.where(rng.random((n_jit, 1)) < 0.5, uni, gau) * extent_px)
        p = np.rint(np.concatenate(starts))
        ny, nx = m.image.shape
        p[:, 0] = np.clip(p[:, 0], 0, nx - 1)
        p[:, 1] = np.clip(p[:, 1], 0, ny - 1)
        i, _ = nearest_truth(p, m.xy)
        target = np.clip((m.xy[i] - p) / extent_px, -0.97 * MAX_SHIFT_D, 0.97 * MAX_SHIFT_D)
        ws.append(windows(m.image, p, crop))
        ts.append(torch.from_numpy(target.astype(np.float32)))
    w, t = torch.cat(ws)[:batch], torch.cat(ts)[:batch]
    if augment:
        w, t = _dihedral(w, t, rng)
        sigma = torch.from_numpy(rng.uniform(0.0, 0.6, (len(w), 1, 1, 1)).astype(np.float32))
        w = w + torch.randn_like(w) * sigma * (torch.rand(len(w), 1, 1, 1) < 0.5)
    return w, t


def train_one_epoch(net, optimizer, mics, cfg: RefineTrainConfig, rng, extent_px: float) -> dict:
    net.train()
    losses = []
    for _ in range(cfg.steps_per_epoch):
        w, t = sample_batch(mics, cfg.batch, cfg.crop, extent_px, rng)
        loss = torch.nn.functional.smooth_l1_loss(net(w), t, beta=0.02)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return {"loss": float(np.mean(losses))}


def evaluate(net, mics, extent_px: float) -> dict:
    """The detector's matched picks on held-out micrographs: centre error (diameters) before and after."""
    net.eval()
    before, after = [], []
    for m in mics:
        if len(m.picks) == 0:
            continue
        moved = refine_positions(net, m.image, m.picks, extent_px)
        _, d0 = nearest_truth(m.picks, m.xy)
        _, d1 = nearest_truth(moved, m.xy)
        before.append(d0 / extent_px)
        after.append(d1 / extent_px)
    b, a = np.concatenate(before), np.concatenate(after)

    def stats(e):
        return {"median_D": round(float(np.median(e)), 4), "p90_D": round(float(np.quantile(e, 0.9)), 4),
                "frac_le_D12": round(float((e <= 1 / 12).mean()), 4),
                "frac_iou_axis": round(float((e <= 0.25).mean()), 4)}
    return {"n": int(len(b)), "before": stats(b), "after": stats(a)}


def run(cfg: RefineTrainConfig, log: Callable = print) -> Path:
    """Train (resumable from ``<out>/refiner_last.pt``) until ``cfg.hours`` have passed; the best model on
    the validation micrographs (median error after refinement) is ``<out>/refiner.pt``."""
    from .checkpoint import load_checkpoint
    from .train import JsonLog, simulate_sets

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    detector, dmeta = load_checkpoint(cfg.detector)
    detector.eval()
    stride, det_extent = int(dmeta["stride"]), float(dmeta["extent_px"])
    if det_extent != EXTENT_PX:
        raise ValueError(f"detector extent {det_extent} px differs from the refiner's {EXTENT_PX}")
    train_specs = training_specs(cfg.datasets, cfg.seed, cfg.crowded_fraction, cfg.low_snr_fraction,
                                 cfg.junk_fraction)
    val_specs = training_specs(cfg.val_datasets, cfg.seed + 1000, cfg.crowded_fraction,
                               cfg.low_snr_fraction, cfg.junk_fraction)
    t0 = time.time()
    tr = prepare_mics(simulate_sets(train_specs, cfg.mics_per_dataset, EXTENT_PX, cfg.scale_jitter, cfg.seed,
                                    cfg.workers, log=log), detector, stride, EXTENT_PX)
    va = prepare_mics(simulate_sets(val_specs, 2, EXTENT_PX, 0.0, cfg.seed + 1000, cfg.workers, log=log),
                      detector, stride, EXTENT_PX)
    log(f"[refine] {len(tr)} training / {len(va)} validation micrographs ready in {time.time() - t0:.0f} s")
    net = RefinerNet(cfg.crop, cfg.width)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    epoch, best, spent = 0, np.inf, 0.0
    last = out / "refiner_last.pt"
    if last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=True)
        net.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        epoch, best, spent = int(ck["epoch"]), float(ck["meta"]["best"]), float(ck["meta"]["hours_spent"])
        log(f"[refine] resumed at epoch {epoch} ({spent:.2f} h spent)")
    jlog = JsonLog(out / "refine_log.jsonl")
    start = time.time()
    total_h = cfg.hours
    while spent + (time.time() - start) / 3600 < total_h:
        h_now = spent + (time.time() - start) / 3600
        for g in optimizer.param_groups:  # cosine decay over the planned hours
            g["lr"] = cfg.lr * 0.5 * (1 + np.cos(np.pi * min(h_now / total_h, 1.0)))
        stats = train_one_epoch(net, optimizer, tr, cfg, rng, EXTENT_PX)
        epoch += 1
        val = evaluate(net, va, EXTENT_PX)
        h_now = spent + (time.time() - start) / 3600
        meta = {"best": min(best, val["after"]["median_D"]), "hours_spent": h_now, "validation": val,
                "config": asdict(cfg), "detector": str(cfg.detector or "shipped")}
        rec = {"epoch": epoch, "hours": round(h_now, 3), "lr": optimizer.param_groups[0]["lr"], **stats, "val": val}
        jlog.write(**rec)
        log(f"[refine] epoch {epoch} ({h_now:.2f} h) loss {stats['loss']:.4f} val median "
            f"{val['before']['median_D']:.3f} -> {val['after']['median_D']:.3f} D, <= D/12 "
            f"{val['before']['frac_le_D12']:.3f} -> {val['after']['frac_le_D12']:.3f}")
        if val["after"]["median_D"] < best:
            best = val["after"]["median_D"]
            save_refiner(out / "refiner.pt", net, meta, epoch=epoch, args=asdict(cfg))
        save_refiner(last, net, meta, optimizer, epoch, asdict(cfg))
    return out / "refiner.pt"
