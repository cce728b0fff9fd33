"""Decode network grids to coordinates, suppress duplicates, exclude edges.

Decoding is the exact inverse of :func:`hydrapicker.criterion.encode`.
"""
from __future__ import annotations

import numpy as np

from .criterion import OFFSET_RANGE
from .types import Picks


def decode_grid(grid: np.ndarray, stride: int, temperature: float = 1.0, floor: float = 0.0):
    """(3, H, W) raw outputs -> (xy (N, 2) in rescaled px, score (N,)) for cells with score >= floor.

    score = sigmoid(logit / temperature): a calibrated probability (higher = better).
    """
    H, W = grid.shape[1:]
    logit = grid[2].astype(np.float64) / float(temperature)
    score = 1.0 / (1.0 + np.exp(-np.clip(logit, -60, 60)))
    i, j = np.nonzero(score >= floor)
    dx = np.tanh(grid[0, i, j].astype(np.float64)) * OFFSET_RANGE
    dy = np.tanh(grid[1, i, j].astype(np.float64)) * OFFSET_RANGE
    x = (j + 0.5 + dx) * stride - 0.5
    y = (i + 0.5 + dy) * stride - 0.5
    return np.stack([x, y], axis=1), score[i, j]


def merge_orientations(grids) -> np.ndarray:
    """Average raw outputs of several dihedral views of one (stride-padded) image in its own frame.

    ``grids``: ``[(k, flip, grid)]`` where the view was ``np.rot90(fliplr(image) if flip else image, k)``
    and ``grid`` (3, H, W) its raw outputs. Logits are averaged; the centre offsets are decoded, rotated
    back to the image's frame, averaged (weighted by each view's probability) and re-encoded, so :func:`decode_grid` reads the result as usual.
    """
    logits, dxs, dys = [], [], []
    for k, flip, grid in grids:
        logit = grid[2].astype(np.float64)
        dx = np.tanh(grid[0].astype(np.float64)) * OFFSET_RANGE
        dy = np.tanh(grid[1].astype(np.float64)) * OFFSET_RANGE
        for _ in range(k % 4):
            # one counter-clockwise quarter turn took (dx, dy) to (dy, -dx); undo it
            logit, dx, dy = np.rot90(logit, -1), np.rot90(-dy, -1), np.rot90(dx, -1)
        if flip:
            logit, dx, dy = np.fliplr(logit), -np.fliplr(dx), np.fliplr(dy)
        logits.append(logit)
        dxs.append(dx)
        dys.append(dy)
    logits = np.stack(logits)
    w = 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60))) + 1e-9
    lim = OFFSET_RANGE * (1 - 1e-6)
    dx = np.clip((w * np.stack(dxs)).sum(0) / w.sum(0), -lim, lim)
    dy = np.clip((w * np.stack(dys)).sum(0) / w.sum(0), -lim, lim)
    out = np.stack([np.arctanh(dx / OFFSET_RANGE), np.arctanh(dy / OFFSET_RANGE), logits.mean(0)])
    return out.astype(np.float32)


def suppress_duplicates(xy: np.ndarray, score: np.ndarray, min_distance: float) -> np.ndarray:
    """Greedy non-maximum suppression by distance: indices kept, highest score first.

    A pick is dropped when a kept pick with a higher score (ties: the earlier one) lies closer than
    ``min_distance``. Kept picks are bucketed in cells of ``min_distance``, so each candidate is compared
    with the kept picks of 3 x 3 cells only (no scipy import on the picking path: it costs start-up time).
    """
    n = len(score)
    order = np.argsort(-score, kind="stable")
    if n == 0 or min_distance <= 0:
        return order
    r2 = (min_distance - 1e-9) ** 2
    xs, ys = xy[:, 0].tolist(), xy[:, 1].tolist()
    cells = np.floor(xy / min_distance).astype(np.int64).tolist()
    kept_in: dict = {}
    keep = []
    for idx in order.tolist():
        x, y = xs[idx], ys[idx]
        cx, cy = cells[idx]
        if not any((xs[k] - x) ** 2 + (ys[k] - y) ** 2 <= r2
                   for dx in (-1, 0, 1) for dy in (-1, 0, 1) for k in kept_in.get((cx + dx, cy + dy), ())):
            keep.append(idx)
            kept_in.setdefault((cx, cy), []).append(idx)
    return np.asarray(keep, dtype=int)


def to_picks(xy_rescaled: np.ndarray, score: np.ndarray, scale_xy, shape, min_distance_px: float,
             edge_px: float = 0.0) -> Picks:
    """Rescaled coordinates -> Picks in pixels of the micrograph as stored, NMS'ed, edges excluded.

    ``scale_xy`` = (rescaled nx / nx, rescaled ny / ny). Fourier rescaling keeps sample 0 in place, so
    x_original = x_rescaled / scale_x exactly.
    """
    ny, nx = shape
    x = xy_rescaled[:, 0] / scale_xy[0]
    y = xy_rescaled[:, 1] / scale_xy[1]
    inside = (x >= edge_px) & (x <= nx - 1 - edge_px) & (y >= edge_px) & (y <= ny - 1 - edge_px)
    x, y, score = x[inside], y[inside], score[inside]
    keep = suppress_duplicates(np.stack([x, y], 1), score, min_distance_px)
    return Picks(x[keep], y[keep], score[keep])
