#!/usr/bin/env python
"""Experiment (issue 18): teach the generic head's offsets on the neighbour cells of every particle.

The diagnosis (``benchmarks/centres.py``): the kept pick often comes from a neighbour of the cell that holds
the particle's centre. Training taught offsets only on that cell (``criterion.encode``), so a neighbour's
offsets point somewhere inside the neighbour, 0.14-0.33 D off. Wider assignment (``--assign-reach 0.7``)
taught the neighbours as positives too and cost small particles their detection.

Here only the two offset rows of the generic head's output convolution learn again: the body, the head's
features and its classification row are frozen, so every score, and so every pick and its rank, stays the
same bit for bit; only where a pick lands changes. Targets: on the cell that holds a centre, the exact
offset; on its 8 neighbours whose centres lie within ``--reach`` cells of the particle along both axes,
the offset towards it, clipped to the range the decoding can express (``postprocess.OFFSET_RANGE``). A cell
near two particles serves the nearer. Data: training-family simulated sets (``refine_train.training_specs``:
a quarter touching, a fifth at very low SNR, some junk), seeds no tuning set or target uses; crops rotated,
flipped and intensity-augmented as in training; the head's features are computed once and cached, and the
offset rows (a 3 x 3 convolution on them) are fitted with Adam on the L1 of decoded centres.

``--branch H`` instead adds a correction to the offsets: a branch of two 3 x 3 convolutions (H channels) on
the head's features (``--context``: and on the output conv's three channels, the scores around each cell),
its last convolution starting at zero. Its model files need the network to know the branch:
``git apply benchmarks/experiments/neighbour_offsets_branch.patch`` first (``Preset.offset_branch``).

Writes a model file with the new offsets (``--out``); judge it with ``compare_models.py`` on the tuning sets
and the centre benchmark, never on the real sets. Result (2026-12-07, not shipped): the offsets of the
neighbour cells improve (validation L1 0.73 -> 0.47-0.60 strides), those of the cells holding a centre get
worse (0.24 -> 0.26-0.31), and no variant gains on the tuning sets (mean AP -0.021 to +0.0004;
``--train-head``, the whole head trained with its scores distilled, is the best)
(``docs/benchmarks/neighbour_offsets_tune_not_shipped_2026-12-07.json``; docs/results/centres.md).

  OMP_NUM_THREADS=1 python benchmarks/experiments/neighbour_offsets.py --out runs/nboff/model.pt
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hydrapicker.postprocess import OFFSET_RANGE  # noqa: E402


def neighbour_targets(xy: np.ndarray, g: int, stride: int, reach: float, clip: float) -> tuple:
    """(offsets (2, g, g) in strides, weight class (g, g): 0 none, 1 own cell, 2 neighbour) for centres
    ``xy`` (N, 2) in px of a crop whose grid has g x g cells of ``stride`` px."""
    off = np.zeros((2, g, g), np.float32)
    kind = np.zeros((g, g), np.int8)
    best = np.full((g, g), np.inf)
    for x, y in np.asarray(xy, np.float64).reshape(-1, 2):
        u, v = (x + 0.5) / stride, (y + 0.5) / stride
        j0, i0 = int(np.floor(u)), int(np.floor(v))
        for i in range(max(i0 - 1, 0), min(i0 + 2, g)):
            for j in range(max(j0 - 1, 0), min(j0 + 2, g)):
                dx, dy = u - (j + 0.5), v - (i + 0.5)
                own = i == i0 and j == j0
                if not own and (abs(dx) >= reach or abs(dy) >= reach):
                    continue
                d = dx * dx + dy * dy
                if d < best[i, j]:
                    best[i, j] = d
                    off[0, i, j], off[1, i, j] = np.clip(dx, -clip, clip), np.clip(dy, -clip, clip)
                    kind[i, j] = 1 if own else 2
    return off, kind


def cached_features(net, sets, n_crops: int, crop: int, stride: int, reach: float, clip: float, rng,
                    batch: int = 32, body: bool = False) -> tuple:
    """(features (n, C, g, g), cls logits (n, g, g), targets (n, 2, g, g), kind (n, g, g)) of random crops: the
    head's features (the output conv's input), or with ``body`` the body's (the head's input)."""
    from hydrapicker.refine_train import augmented_crop

    head = net.heads["generic"]
    g = crop // stride
    feats, logits, offs, kinds = [], [], [], []
    done = 0
    while done < n_crops:
        imgs, tg, kd = [], [], []
        for _ in range(min(batch, n_crops - done)):
            c, xy = augmented_crop(sets, crop, stride, rng)
            o, k = neighbour_targets(xy, g, stride, reach, clip)
            imgs.append(c)
            tg.append(o)
            kd.append(k)
        x = torch.from_numpy(np.stack(imgs))[:, None]
        with torch.inference_mode():
            fb = net.body(x)
            f = fb if body else head.features(fb)
            out = head(fb)
        feats.append(f.numpy().astype(np.float16))
        logits.append(out[:, 2].numpy())
        offs.append(np.stack(tg))
        kinds.append(np.stack(kd))
        done += len(imgs)
    return np.concatenate(feats), np.concatenate(logits), np.concatenate(offs), np.concatenate(kinds)


def interior_cells(g: int, edge: int) -> np.ndarray:
    """(g, g) bool: the cells at least ``edge`` cells from a crop's border (their features saw no padding)."""
    inside = np.zeros((g, g), bool)
    inside[edge:g - edge, edge:g - edge] = True
    return inside


def cell_weights(kd: np.ndarray, edge: int, w_neigh: float) -> np.ndarray:
    """Per-cell loss weights: 1 on a particle's own cell, ``w_neigh`` on its neighbours, 0 elsewhere and at the
    crop's border."""
    w = np.where(kd == 1, 1.0, np.where(kd == 2, w_neigh, 0.0)) * interior_cells(kd.shape[-1], edge)[None]
    return w.astype(np.float32)


def offset_report(dec: np.ndarray, data, edge: int) -> dict:
    """Mean L1 (strides) of the decoded centres ``dec`` (n, 2, g, g) on own cells, neighbour cells, and
    neighbour cells that fire (frozen score above 0.1), with their counts."""
    _, lg, tg, kd = data
    err = np.abs(dec - tg).sum(1)
    firing = 1 / (1 + np.exp(-lg)) > 0.1
    inside = interior_cells(kd.shape[-1], edge)[None]
    out = {}
    for name, m in (("own", kd == 1), ("neighbour", kd == 2), ("neighbour_firing", (kd == 2) & firing)):
        m = m & inside
        out[name] = round(float(err[m].mean()), 4) if m.any() else None
        out["n_" + name] = int(m.sum())
    return out


def applied(module, f: np.ndarray, batch: int = 64) -> np.ndarray:
    """``module`` on the cached features ``f`` (float16), in batches, as a float32 array."""
    with torch.inference_mode():
        return np.concatenate([module(torch.from_numpy(f[b:b + batch].astype(np.float32))).numpy()
                               for b in range(0, len(f), batch)])


def fit_head(head, data, edge: int, w_neigh: float, distill: float, epochs: int, lr: float, batch: int, rng,
             log=print):
    """The whole head trained (eval mode: batch-norm statistics and dropout as at picking) on the body's cached
    features: weighted L1 of decoded offsets + ``distill`` x the Bernoulli KL of its scores from the frozen
    head's (which keeps every score close to the shipped one)."""
    from hydrapicker.criterion import distillation_loss

    f, lg, tg, kd = data
    n = len(f)
    interior = interior_cells(kd.shape[-1], edge)
    w = cell_weights(kd, edge, w_neigh)
    head.eval()
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    recs = []
    for ep in range(epochs):
        order = rng.permutation(n)
        tot = kl_tot = 0.0
        for b in range(0, n, batch):
            idx = order[b:b + batch]
            out = head(torch.from_numpy(f[idx].astype(np.float32)))
            t, ww = torch.from_numpy(tg[idx]), torch.from_numpy(w[idx])
            dec = torch.tanh(out[:, :2]) * OFFSET_RANGE
            l_off = ((dec - t).abs().sum(1) * ww).sum() / max(float(ww.sum()), 1.0)
            teacher = torch.from_numpy(lg[idx])
            cells = torch.from_numpy(np.broadcast_to(interior, teacher.shape).astype(np.float32))
            l_kl = distillation_loss(out[:, 2], teacher, cells) / max(float(cells.sum()), 1.0)
            loss = l_off + distill * l_kl
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(l_off.detach()) * len(idx)
            kl_tot += float(l_kl.detach()) * len(idx)
        recs.append((round(tot / n, 5), round(kl_tot / n, 6)))
        log(f"[nboff] epoch {ep + 1}: weighted L1 {tot / n:.4f} strides, KL {kl_tot / n:.5f} per cell", flush=True)
    return recs


def head_report(head, data, edge: int) -> dict:
    """:func:`offset_report` of a whole head on body features, and how far its scores moved (mean |logit change|
    on the crops' interior cells)."""
    out = applied(head, data[0], 32)
    rep = offset_report(np.tanh(out[:, :2]) * OFFSET_RANGE, data, edge)
    inside = interior_cells(data[3].shape[-1], edge)
    rep["mean_abs_logit_change"] = round(float(np.abs(out[:, 2] - data[1])[:, inside].mean()), 4)
    return rep


def fit(conv, data, edge: int, w_neigh: float, fire: float, epochs: int, lr: float, batch: int, rng, log=print):
    """Adam on the weighted L1 of decoded offsets; returns the per-epoch records."""
    f, lg, tg, kd = data
    n = len(f)
    w = cell_weights(kd, edge, w_neigh)
    if fire > 0:  # neighbours that fire matter: weigh them by the score the (frozen) classifier gives them
        p = 1 / (1 + np.exp(-lg))
        w = np.where(kd == 2, w * np.minimum(1.0, p / fire), w).astype(np.float32)
    opt = torch.optim.Adam([q for q in conv.parameters() if q.requires_grad], lr=lr)
    recs = []
    for ep in range(epochs):
        order = rng.permutation(n)
        tot = 0.0
        for b in range(0, n, batch):
            idx = order[b:b + batch]
            x = torch.from_numpy(f[idx].astype(np.float32))
            t = torch.from_numpy(tg[idx])
            ww = torch.from_numpy(w[idx])
            dec = torch.tanh(conv(x)) * OFFSET_RANGE
            loss = ((dec - t).abs().sum(1) * ww).sum() / max(float(ww.sum()), 1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
        recs.append(round(tot / n, 5))
        log(f"[nboff] epoch {ep + 1}: weighted L1 {tot / n:.4f} strides")
    return recs


def l1_report(conv, data, edge: int) -> dict:
    """:func:`offset_report` of an offset module (two channels, before the tanh) on head features."""
    return offset_report(np.tanh(applied(conv, data[0])) * OFFSET_RANGE, data, edge)


class Residual(torch.nn.Module):
    """The head's output conv (frozen) with its offsets corrected by a branch whose last conv starts at zero:
    the product's ``Head`` with ``offset_branch``. With ``context`` the branch also reads the output conv's three
    channels, so it sees the scores of the cells around each cell (the own cell of a particle outscores its
    neighbours)."""

    def __init__(self, out, hidden: int, context: bool):
        super().__init__()
        self.out, self.context = out, context
        for q in self.out.parameters():
            q.requires_grad_(False)
        cin = out.in_channels + (out.out_channels if context else 0)
        self.branch = torch.nn.Sequential(torch.nn.Conv2d(cin, hidden, 3, padding=1),
                                          torch.nn.ReLU(), torch.nn.Conv2d(hidden, 2, 3, padding=1))
        with torch.no_grad():
            self.branch[2].weight.zero_()
            self.branch[2].bias.zero_()

    def forward(self, h):
        o = self.out(h)
        return o[:, :2] + self.branch(torch.cat([h, o], 1) if self.context else h)


def with_branch(net, meta: dict, branch) -> tuple:
    """(net, meta) of a model whose generic head's offsets come from ``branch`` (the preset's ``offset_branch``);
    every other weight is ``net``'s."""
    from dataclasses import replace

    from hydrapicker.model import HydraNet, preset_dict

    preset = replace(net.preset, offset_branch=int(branch[0].out_channels),
                     offset_context=int(branch[0].in_channels) > int(net.heads["generic"].out.in_channels))
    new = HydraNet(preset, tuple(net.head_names))
    missing, unexpected = new.load_state_dict(net.state_dict(), strict=False)
    if unexpected or any(".offsets." not in k for k in missing):
        raise RuntimeError(f"weights do not fit: {missing[:3]} {unexpected[:3]}")
    for name in new.head_names:  # every head gets the branch (a later head is a copy of the generic one)
        new.heads[name].offsets.load_state_dict(branch.state_dict())
    new.eval()
    return new, {**meta, "preset_params": preset_dict(preset)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model file (default: the shipped default)")
    ap.add_argument("--out", required=True, help="model file to write")
    ap.add_argument("--datasets", type=int, default=48)
    ap.add_argument("--mics", type=int, default=4)
    ap.add_argument("--val-datasets", type=int, default=12)
    ap.add_argument("--seed", type=int, default=31)
    ap.add_argument("--crops", type=int, default=4000)
    ap.add_argument("--val-crops", type=int, default=800)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--reach", type=float, default=1.0, help="neighbour cells within this many strides of the "
                    "particle along both axes are taught (0.5: the own cell only)")
    ap.add_argument("--clip", type=float, default=0.72, help="target offsets clipped to +-this (strides)")
    ap.add_argument("--neighbour-weight", type=float, default=1.0)
    ap.add_argument("--fire", type=float, default=0.0,
                    help="neighbour weights x min(1, p / FIRE), p the frozen score (0: off)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--edge", type=int, default=2, help="cells at the crop's border not taught (padding)")
    ap.add_argument("--branch", type=int, default=0,
                    help="H > 0: a new offset branch (3x3 conv to H channels, ReLU, 3x3 conv to 2) on the head's "
                         "features instead of refitting the output conv's offset rows (0)")
    ap.add_argument("--train-head", action="store_true",
                    help="train the whole generic head on the body's cached features, its scores distilled "
                         "towards the frozen head's (--distill)")
    ap.add_argument("--distill", type=float, default=10.0)
    ap.add_argument("--context", action="store_true", help="the branch also reads the output conv's channels")
    ap.add_argument("--cache", default=None, help="npz of the crops' features and targets (written once, then read)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    from hydrapicker.model import Preset

    if args.branch and "offset_branch" not in Preset.__dataclass_fields__:
        ap.error("--branch needs the network to know the branch: git apply "
                 "benchmarks/experiments/neighbour_offsets_branch.patch")

    from hydrapicker.checkpoint import load_checkpoint, save_checkpoint
    from hydrapicker.refine_train import training_specs
    from hydrapicker.train import simulate_sets

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    net, meta = load_checkpoint(args.model)
    stride, extent = int(net.stride), float(meta["extent_px"])
    t0 = time.time()
    train_sets = val_sets = []
    if not (args.cache and Path(args.cache).exists()):
        train_sets = simulate_sets(training_specs(args.datasets, args.seed, 0.25, 0.2, 0.3), args.mics, extent,
                                   0.3, args.seed, 1, log=print)
        val_sets = simulate_sets(training_specs(args.val_datasets, args.seed + 1000, 0.25, 0.2, 0.3), 2, extent,
                                 0.3, args.seed + 1000, 1, log=print)
        train_sets = [s for s in train_sets if any(len(m.xy) for m in s.mics)]
        val_sets = [s for s in val_sets if any(len(m.xy) for m in s.mics)]
    t_sim = time.time() - t0
    print(f"[nboff] simulated in {t_sim:.0f} s", flush=True)
    if args.cache and Path(args.cache).exists():
        z = np.load(args.cache)
        train = tuple(z[f"train{i}"] for i in range(4))
        val = tuple(z[f"val{i}"] for i in range(4))
    else:
        train = cached_features(net, train_sets, args.crops, args.crop, stride, args.reach, args.clip, rng,
                                body=args.train_head)
        val = cached_features(net, val_sets, args.val_crops, args.crop, stride, args.reach, args.clip,
                              np.random.default_rng(args.seed + 1), body=args.train_head)
        if args.cache:
            np.savez(args.cache, **{f"train{i}": a for i, a in enumerate(train)},
                     **{f"val{i}": a for i, a in enumerate(val)})
    t_feat = time.time() - t0 - t_sim
    print(f"[nboff] features of {len(train[0])} + {len(val[0])} crops in {t_feat:.0f} s", flush=True)
    head = net.heads["generic"]
    if args.train_head:
        import copy

        student = copy.deepcopy(head)
        before = head_report(student, val, args.edge)
        print(f"[nboff] validation before: {before}", flush=True)
        recs = fit_head(student, train, args.edge, args.neighbour_weight, args.distill, args.epochs, args.lr,
                        args.batch, rng)
        after = head_report(student, val, args.edge)
        print(f"[nboff] validation after: {after}", flush=True)
        head.load_state_dict(student.state_dict())
    else:
        conv = torch.nn.Conv2d(head.out.in_channels, 2, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(head.out.weight[:2])
            conv.bias.copy_(head.out.bias[:2])
        before = l1_report(conv, val, args.edge)
        if args.branch:
            conv = Residual(head.out, args.branch, args.context)
        print(f"[nboff] validation before: {before}", flush=True)
        recs = fit(conv, train, args.edge, args.neighbour_weight, args.fire, args.epochs, args.lr, args.batch, rng)
        after = l1_report(conv, val, args.edge)
        print(f"[nboff] validation after: {after}", flush=True)
        if not args.branch:
            with torch.no_grad():
                head.out.weight[:2].copy_(conv.weight)
                head.out.bias[:2].copy_(conv.bias)
        else:
            net, meta = with_branch(net, meta, conv.branch)
    record = {"experiment": "neighbour_offsets", "argv": sys.argv[1:], "base": meta.get("path"),
              "validation_L1_strides": {"before": before, "after": after}, "train_L1": recs,
              "seconds": round(time.time() - t0, 1)}
    meta = {k: v for k, v in meta.items() if k != "path"}
    meta["training"] = {**meta.get("training", {}), "neighbour_offsets": record}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.out, net, meta)
    Path(args.out).with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
