#!/usr/bin/env python
"""Experiment (issue 18): learn which cell holds a particle's centre, and decode the pick from that cell.

The diagnosis (``benchmarks/centres.py``): the kept pick often comes from a neighbour of the cell that holds
the particle's centre; that neighbour's offsets were never trained for the particle, while the own cell's
offsets were (0.24 strides L1 against 0.73). Taking every matched particle's own cell (``oracle_own``)
recovers most of the gap between AP_D/2 and AP. Teaching the neighbours' offsets made the own cells' worse
(``neighbour_offsets.py``). Here nothing of the head changes: a small branch (two 3 x 3 convolutions on the
head's features and its three output channels) learns, on the cells around each particle, which one holds
its centre ("own cell": 1, its neighbours: 0). At picking, the candidate of each cell keeps its score, but its
position is decoded from the cell of its 3 x 3 neighbourhood that the branch finds most likely to be the own
cell (when that is more likely than its own by ``--margin`` logits). Scores, and so every pick's rank, stay
the same bit for bit.

Data: the cached head features of ``neighbour_offsets.py`` (``--cache``, written by it when absent:
training-family simulated sets, seed 31, a quarter touching, a fifth at very low SNR). Validation: for each
particle of the held-out crops, the cell the frozen scores pick in its 3 x 3 (the winner) and the cell the
branch moves it to, how often each is the own cell, and the decoded centre's error.

Result (2026-12-07, tenth session; not shipped): the branch does not learn it. After 20 epochs (142 s on 2
threads) its BCE is 0.329, hardly below the 0.35 of always answering the prior; on the held-out crops the
winner is the own cell for 44.5 % of the particles and the branch's choice for 42.6-44.6 % (margins 0-2
logits), and the decoded centres get worse (median error 0.57 -> 0.63-0.83 strides). A hand rule (the most
centred offset among the cells scoring within a margin of the winner) is worse too. The classifier's logit is
already trained to peak at the own cell; the head's features hold no more about which cell it is.

  OMP_NUM_THREADS=2 python benchmarks/experiments/own_cell.py --cache /work/bench/s42/nbfeat.npz --out runs/own/branch.pt
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
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))

from hydrapicker.postprocess import OFFSET_RANGE  # noqa: E402


class OwnCellBranch(torch.nn.Module):
    """Logit that a cell holds the centre of the particle around it, from the head's features and outputs."""

    def __init__(self, channels: int, hidden: int = 64):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(channels + 3, hidden, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.Conv2d(hidden, hidden, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.Conv2d(hidden, 1, 1))

    def forward(self, feats, outputs):
        return self.net(torch.cat([feats, outputs], 1))[:, 0]


def switch_cells(logit: np.ndarray, own: np.ndarray, margin: float) -> tuple:
    """For every cell of (..., H, W) maps: the (di, dj) of the cell of its 3 x 3 whose ``own`` logit is highest,
    when it beats the cell's own by ``margin`` (else (0, 0))."""
    H, W = own.shape[-2:]
    pad = np.pad(own, [(0, 0)] * (own.ndim - 2) + [(1, 1), (1, 1)], constant_values=-np.inf)
    best = own + margin
    di = np.zeros(own.shape, np.int64)
    dj = np.zeros(own.shape, np.int64)
    for a in (-1, 0, 1):
        for b in (-1, 0, 1):
            if a == 0 and b == 0:
                continue
            v = pad[..., 1 + a:1 + a + H, 1 + b:1 + b + W]
            better = v > best
            best = np.where(better, v, best)
            di = np.where(better, a, di)
            dj = np.where(better, b, dj)
    return di, dj


def decoded(raw_off: np.ndarray) -> np.ndarray:
    """(n, 2, g, g) raw offsets -> decoded offsets in strides from each cell's centre."""
    return np.tanh(raw_off) * OFFSET_RANGE


def validate(branch, head, data, edge: int, margins=(0.0, 0.5, 1.0, 2.0)) -> dict:
    """Per particle (own cell in the crop's interior): the winner (highest frozen score of the own cell's 3 x 3)
    and where the branch moves it; how often each is the own cell, and the decoded centre's error (strides)."""
    f, lg, tg, kd = data
    with torch.inference_mode():
        outs, owns = [], []
        for b in range(0, len(f), 64):
            x = torch.from_numpy(f[b:b + 64].astype(np.float32))
            o = head.out(x)
            outs.append(o.numpy())
            owns.append(branch(x, o).numpy())
    out, own = np.concatenate(outs), np.concatenate(owns)
    dec = decoded(out[:, :2])
    g = kd.shape[-1]
    n, i, j = np.nonzero(kd == 1)
    keep = (i >= edge) & (i < g - edge) & (j >= edge) & (j < g - edge)
    n, i, j = n[keep], i[keep], j[keep]
    # the winner: highest frozen logit in the own cell's 3 x 3
    best = np.full(len(n), -np.inf)
    wi, wj = i.copy(), j.copy()
    for a in (-1, 0, 1):
        for b in (-1, 0, 1):
            v = lg[n, i + a, j + b]
            better = v > best
            best = np.where(better, v, best)
            wi, wj = np.where(better, i + a, wi), np.where(better, j + b, wj)
    true = np.stack([j + 0.5 + tg[n, 0, i, j], i + 0.5 + tg[n, 1, i, j]], 1)

    def err(ci, cj):
        pos = np.stack([cj + 0.5 + dec[n, 0, ci, cj], ci + 0.5 + dec[n, 1, ci, cj]], 1)
        return np.hypot(*(pos - true).T)

    e0 = err(wi, wj)
    rep = {"particles": int(len(n)), "winner_is_own": round(float(np.mean((wi == i) & (wj == j))), 4),
           "winner_error_median": round(float(np.median(e0)), 4), "winner_error_mean": round(float(e0.mean()), 4),
           "winner_within_half_stride": round(float(np.mean(e0 < 0.5)), 4)}
    for m in margins:
        di, dj = switch_cells(lg * 0, own, m)  # the branch alone decides the move
        ci, cj = wi + di[n, wi, wj], wj + dj[n, wi, wj]
        ci, cj = np.clip(ci, 0, g - 1), np.clip(cj, 0, g - 1)
        e = err(ci, cj)
        rep[f"margin_{m}"] = {"chosen_is_own": round(float(np.mean((ci == i) & (cj == j))), 4),
                              "moved": round(float(np.mean((ci != wi) | (cj != wj))), 4),
                              "error_median": round(float(np.median(e)), 4), "error_mean": round(float(e.mean()), 4),
                              "within_half_stride": round(float(np.mean(e < 0.5)), 4)}
    return rep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", required=True, help="neighbour_offsets.py's npz of head features (made when absent)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", required=True, help="the branch's state dict (.pt) and its record (.json)")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--edge", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args(argv)
    from hydrapicker.checkpoint import load_checkpoint

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    net, meta = load_checkpoint(args.model)
    head = net.heads["generic"].eval()
    if not Path(args.cache).exists():
        import neighbour_offsets

        neighbour_offsets.main(["--out", str(Path(args.out).with_suffix(".nboff.pt")), "--cache", args.cache,
                                "--epochs", "0", "--crops", "8000", "--threads", str(args.threads)])
    z = np.load(args.cache)
    train = tuple(z[f"train{i}"] for i in range(4))
    val = tuple(z[f"val{i}"] for i in range(4))
    from neighbour_offsets import interior_cells

    g = train[3].shape[-1]
    inside = interior_cells(g, args.edge)
    w_all = ((train[3] > 0) & inside[None]).astype(np.float32)
    t_all = (train[3] == 1).astype(np.float32)
    branch = OwnCellBranch(train[0].shape[1], args.hidden)
    before = validate(branch, head, val, args.edge)
    print(json.dumps({"before": before}), flush=True)
    opt = torch.optim.Adam(branch.parameters(), lr=args.lr)
    t0 = time.time()
    for ep in range(args.epochs):
        order = rng.permutation(len(train[0]))
        tot = 0.0
        for b in range(0, len(order), args.batch):
            idx = np.sort(order[b:b + args.batch])
            x = torch.from_numpy(train[0][idx].astype(np.float32))
            with torch.no_grad():
                o = head.out(x)
            logit = branch(x, o)
            w, t = torch.from_numpy(w_all[idx]), torch.from_numpy(t_all[idx])
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(logit, t, reduction="none") * w).sum() \
                / w.sum().clamp_min(1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
        print(f"[own] epoch {ep + 1}: BCE {tot / len(order):.4f} ({time.time() - t0:.0f} s)", flush=True)
    after = validate(branch, head, val, args.edge)
    rec = {"experiment": "own_cell", "argv": sys.argv[1:], "base": meta.get("path"), "before": before,
           "after": after, "seconds": round(time.time() - t0, 1)}
    print(json.dumps({"after": after}), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(branch.state_dict(), args.out)
    Path(args.out).with_suffix(".json").write_text(json.dumps(rec, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
