"""Training the centre head (:mod:`hydrapicker.refine`) on simulated micrographs with exact truth.

The detector stays frozen: random crops of prepared training micrographs (rotated, flipped, intensity
augmented as in detector training) go through its body, and the centre head learns, at the body's
stride, a heat map of true centres (a Gaussian of ``sigma_cells`` around each, CenterNet's
penalty-reduced focal loss) and the offset to the nearest centre on the 3 x 3 cells around each (L1).
Cells within ``edge_cells`` of a crop's border are not taught (their features saw zero padding).

Validation: the detector's picks (every one above the floor) on held-out simulated micrographs, before
and after refinement: AP under the IoU rule and within D/2 (``hydrapicker.metrics.evaluate``) and the
centre error of matched picks. The best head by mean AP is kept. Two short loops (DETR's ``engine.py``
style): :func:`train_one_epoch` and :func:`evaluate`.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .refine import OFFSET_CELLS, CentreHead, body_checksum, refine_positions, save_refiner


@dataclass
class RefineTrainConfig:
    out: str
    detector: Optional[str] = None      # the model whose body the head reads (default: the shipped one)
    datasets: int = 96
    mics_per_dataset: int = 5
    val_datasets: int = 12
    seed: int = 3
    scale_jitter: float = 0.3
    crowded_fraction: float = 0.25       # datasets forced to touching particles
    low_snr_fraction: float = 0.2        # datasets forced to very low SNR
    junk_fraction: float = 0.2
    width: int = 64
    down: int = 1                        # 1: the centre map at twice the body's stride (CentreHead)
    crop: int = 96                       # rescaled px (a multiple of the detector's stride)
    batch: int = 16
    sigma_cells: float = 0.5             # the heat target's Gaussian (cells; 0.5 at stride 4 = D/8)
    edge_cells: int = 2
    lr: float = 2e-3
    hours: float = 1.0
    steps_per_epoch: int = 300
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


def encode_centres(xy: np.ndarray, shape, stride: int, sigma: float) -> tuple:
    """Targets on a (H, W) grid at ``stride`` for centres ``xy`` (N, 2) in pixels: heat (H, W) in [0, 1]
    (1 on the cell holding a centre), offsets (2, H, W) in cells from each cell's centre to the nearest
    centre among those whose 3 x 3 cells it is in, and that mask (H, W)."""
    H, W = shape
    heat = np.zeros((H, W), np.float32)
    off = np.zeros((2, H, W), np.float32)
    best = np.full((H, W), np.inf)
    r = int(np.ceil(3 * sigma))
    for x, y in np.asarray(xy, np.float64).reshape(-1, 2):
        u, v = (x + 0.5) / stride, (y + 0.5) / stride
        j0, i0 = int(np.floor(u)), int(np.floor(v))
        i_lo, i_hi, j_lo, j_hi = max(i0 - r, 0), min(i0 + r + 1, H), max(j0 - r, 0), min(j0 + r + 1, W)
        if i_lo >= i_hi or j_lo >= j_hi:
            continue
        ii, jj = np.mgrid[i_lo:i_hi, j_lo:j_hi]
        g = np.exp(-((jj + 0.5 - u) ** 2 + (ii + 0.5 - v) ** 2) / (2 * sigma ** 2)).astype(np.float32)
        heat[i_lo:i_hi, j_lo:j_hi] = np.maximum(heat[i_lo:i_hi, j_lo:j_hi], g)
        if 0 <= i0 < H and 0 <= j0 < W:
            heat[i0, j0] = 1.0
        for i in range(max(i0 - 1, 0), min(i0 + 2, H)):
            for j in range(max(j0 - 1, 0), min(j0 + 2, W)):
                dx, dy = u - (j + 0.5), v - (i + 0.5)
                d = dx * dx + dy * dy
                if d < best[i, j]:
                    best[i, j] = d
                    off[0, i, j], off[1, i, j] = dx, dy
    return heat, off, np.isfinite(best)


def centre_loss(out, heat, off, off_mask, weight) -> tuple:
    """CenterNet's penalty-reduced focal loss on the heat channel + L1 on the decoded offsets."""
    p = torch.sigmoid(out[:, 0]).clamp(1e-6, 1 - 1e-6)
    pos = heat >= 1.0
    l_pos = -((1 - p) ** 2 * torch.log(p))[pos & (weight > 0)].sum()
    l_neg = -(((1 - heat) ** 4) * p ** 2 * torch.log(1 - p) * weight)[~pos].sum()
    n_pos = max(float((pos & (weight > 0)).sum()), 1.0)
    m = off_mask & (weight > 0)
    dec = torch.tanh(out[:, 1:]) * OFFSET_CELLS
    l_off = (dec - off).abs().sum(1)[m].sum() / max(float(m.sum()), 1.0)
    l_heat = (l_pos + l_neg) / n_pos
    return l_heat + l_off, {"heat": float(l_heat.detach()), "off": float(l_off.detach())}


def augmented_crop(sets, crop: int, stride: int, rng) -> tuple:
    """(image (crop, crop) float32, truth xy (N, 2) in its px): a random crop of a random micrograph of a random
    set, its origin on the stride's grid (a micrograph smaller than the crop is padded), rotated, flipped and
    half of the time intensity-augmented as in detector training."""
    from .data import _rot_flip, augment_intensity

    s = sets[int(rng.integers(0, len(sets)))]
    m = s.mics[int(rng.integers(0, len(s.mics)))]
    img = m.image
    h, w = img.shape
    if h < crop or w < crop:
        img = np.pad(img, ((0, max(0, crop - h)), (0, max(0, crop - w))))
        h, w = img.shape
    y0 = int(rng.integers(0, (h - crop) // stride + 1)) * stride
    x0 = int(rng.integers(0, (w - crop) // stride + 1)) * stride
    out = img[y0:y0 + crop, x0:x0 + crop]
    xy = m.xy - np.array([x0, y0])[None, :] if len(m.xy) else np.zeros((0, 2))
    out, xy, _ = _rot_flip(out, xy, None, int(rng.integers(0, 4)), bool(rng.integers(0, 2)))
    if rng.random() < 0.5:
        out = augment_intensity(out, rng)
    return np.ascontiguousarray(out, np.float32), xy


def sample_batch(sets, cfg: RefineTrainConfig, stride: int, rng) -> tuple:
    """(images (B, 1, crop, crop), heat (B, h, w), off (B, 2, h, w), off_mask (B, h, w), weight (B, h, w))."""
    g = cfg.crop // stride
    imgs, heats, offs, masks = [], [], [], []
    for _ in range(cfg.batch):
        crop, xy = augmented_crop(sets, cfg.crop, stride, rng)
        heat, off, mask = encode_centres(xy, (g, g), stride, cfg.sigma_cells)
        imgs.append(crop)
        heats.append(heat)
        offs.append(off)
        masks.append(mask)
    weight = np.zeros((g, g), np.float32)
    e = cfg.edge_cells
    weight[e:g - e, e:g - e] = 1.0
    B = len(imgs)
    return (torch.from_numpy(np.stack(imgs))[:, None], torch.from_numpy(np.stack(heats)),
            torch.from_numpy(np.stack(offs)), torch.from_numpy(np.stack(masks)),
            torch.from_numpy(np.broadcast_to(weight, (B, g, g)).copy()))


def train_one_epoch(head, detector, optimizer, sets, cfg: RefineTrainConfig, stride: int, rng) -> dict:
    head.train()
    rec = []
    for _ in range(cfg.steps_per_epoch):
        x, heat, off, mask, weight = sample_batch(sets, cfg, stride, rng)
        with torch.no_grad():
            f = detector.body(x)
        loss, parts = centre_loss(head(f), heat, off, mask, weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rec.append((float(loss.detach()), parts["heat"], parts["off"]))
    r = np.mean(rec, axis=0)
    return {"loss": float(r[0]), "heat": float(r[1]), "off": float(r[2])}


def centre_map(head, detector, image: np.ndarray, stride_body: int) -> np.ndarray:
    """The centre map (3, H/s, W/s) of a whole prepared image (padded to whole cells of the detector)."""
    s = int(detector.stride)
    ph, pw = (-image.shape[0]) % s, (-image.shape[1]) % s
    img = np.pad(image, ((0, ph), (0, pw))) if (ph or pw) else image
    with torch.inference_mode():
        c = head(detector.body(torch.from_numpy(np.ascontiguousarray(img))[None, None]))[0].numpy()
    return c[:, :-(-image.shape[0] // stride_body), :-(-image.shape[1] // stride_body)]


def evaluate(head, detector, val_sets, stride: int, extent_px: float) -> dict:
    """Mean over held-out sets of AP / AP_D/2 / matched centre error (D), detector centres vs refined."""
    from .metrics import evaluate as ap_eval, match_greedy
    from .train import predict_prepared
    from .types import Picks

    head.eval()
    out = {"before": [], "after": []}
    err = {"before": [], "after": []}
    for s in val_sets:
        picks = {"before": {}, "after": {}}
        truth = {}
        for k, m in enumerate(s.mics):
            p = predict_prepared(detector, m.image, "generic", int(detector.stride), extent_px)
            cmap = centre_map(head, detector, m.image, stride)
            moved = refine_positions(cmap, stride, np.stack([p.x, p.y], 1), extent_px)
            picks["before"][k] = p
            picks["after"][k] = Picks(moved[:, 0], moved[:, 1], p.fom)
            truth[k] = m.xy
        for key in ("before", "after"):
            r = ap_eval(picks[key], truth, extent_px, warn=lambda msg: None)
            out[key].append((r["AP"], r["AP_centre"]))
            for k, pk in picks[key].items():
                _, mm = match_greedy(pk, truth[k], extent_px, centre=True)
                if (mm >= 0).any():
                    err[key].append(np.hypot(*(pk.xy()[mm[mm >= 0]] - truth[k][mm >= 0]).T) / extent_px)
    res = {}
    for key in ("before", "after"):
        a = np.asarray(out[key], float)
        e = np.concatenate(err[key]) if err[key] else np.zeros(0)
        res[key] = {"AP": round(float(np.nanmean(a[:, 0])), 4), "AP_D2": round(float(np.nanmean(a[:, 1])), 4),
                    "median_D": round(float(np.median(e)), 4) if len(e) else None,
                    "frac_le_D12": round(float((e <= 1 / 12).mean()), 4) if len(e) else None}
    return res


def run(cfg: RefineTrainConfig, log: Callable = print) -> Path:
    """Train (resumable from ``<out>/refiner_last.pt``) until ``cfg.hours`` have passed in total; the best
    head on the validation micrographs (mean AP after refinement) is ``<out>/refiner.pt``, the last epoch's
    (without the optimizer state) ``<out>/refiner_final.pt``."""
    from .checkpoint import load_checkpoint
    from .train import JsonLog, simulate_sets

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    detector, dmeta = load_checkpoint(cfg.detector)
    detector.eval()
    for p in detector.parameters():
        p.requires_grad_(False)
    stride, extent = int(detector.preset.body_stride) * 2 ** int(cfg.down), float(dmeta["extent_px"])
    if cfg.crop % int(detector.stride):
        raise ValueError(f"crop {cfg.crop} must be a multiple of the detector stride {detector.stride}")
    t0 = time.time()
    train_sets = simulate_sets(training_specs(cfg.datasets, cfg.seed, cfg.crowded_fraction, cfg.low_snr_fraction,
                                              cfg.junk_fraction), cfg.mics_per_dataset, extent, cfg.scale_jitter,
                               cfg.seed, cfg.workers, log=log)
    val_sets = simulate_sets(training_specs(cfg.val_datasets, cfg.seed + 1000, cfg.crowded_fraction,
                                            cfg.low_snr_fraction, cfg.junk_fraction), 2, extent, 0.0,
                             cfg.seed + 1000, cfg.workers, log=log)
    train_sets = [s for s in train_sets if any(len(m.xy) for m in s.mics)]
    log(f"[refine] {sum(len(s.mics) for s in train_sets)} training / {sum(len(s.mics) for s in val_sets)} "
        f"validation micrographs ready in {time.time() - t0:.0f} s")
    head = CentreHead(detector.body.out_channels, cfg.width, cfg.down)
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=1e-4)
    base_meta = {"body_checksum": body_checksum(detector), "stride": stride, "extent_px": extent,
                 "detector": str(cfg.detector or "shipped generic model"), "config": asdict(cfg)}
    epoch, best, spent = 0, -np.inf, 0.0
    last = out / "refiner_last.pt"
    if last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=True)
        head.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        epoch, best, spent = int(ck["epoch"]), float(ck["meta"]["best"]), float(ck["meta"]["hours_spent"])
        log(f"[refine] resumed at epoch {epoch} ({spent:.2f} h spent)")
    jlog = JsonLog(out / "refine_log.jsonl")
    start = time.time()
    while spent + (time.time() - start) / 3600 < cfg.hours:
        h_now = spent + (time.time() - start) / 3600
        for g in optimizer.param_groups:  # cosine decay over the planned hours
            g["lr"] = float(cfg.lr * 0.5 * (1 + np.cos(np.pi * min(h_now / cfg.hours, 1.0))))  # no numpy in the file
        stats = train_one_epoch(head, detector, optimizer, train_sets, cfg, stride, rng)
        epoch += 1
        val = evaluate(head, detector, val_sets, stride, extent)
        h_now = spent + (time.time() - start) / 3600
        score = val["after"]["AP"]
        meta = {**base_meta, "best": max(best, score), "hours_spent": h_now, "validation": val}
        jlog.write(epoch=epoch, hours=round(h_now, 3), lr=optimizer.param_groups[0]["lr"], **stats, val=val)
        log(f"[refine] epoch {epoch} ({h_now:.2f} h) loss {stats['loss']:.4f} (heat {stats['heat']:.3f}, off "
            f"{stats['off']:.3f}) val AP {val['before']['AP']:.3f} -> {val['after']['AP']:.3f}, AP_D/2 "
            f"{val['before']['AP_D2']:.3f} -> {val['after']['AP_D2']:.3f}, median {val['before']['median_D']} -> "
            f"{val['after']['median_D']} D")
        if score > best:
            best = score
            save_refiner(out / "refiner.pt", head, meta, epoch=epoch, args=asdict(cfg))
        save_refiner(last, head, meta, optimizer, epoch, asdict(cfg))
        save_refiner(out / "refiner_final.pt", head, meta, epoch=epoch, args=asdict(cfg))  # the last, to ship
    return out / "refiner.pt"
