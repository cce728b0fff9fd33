"""Orientations and projection: rotate pseudo-atoms, keep (x, y), splat them onto a pixel grid.

Splatting is bilinear (``np.bincount``), so the projected centre of mass of a particle lands exactly on its
true centre; the Gaussian shape of the pseudo-atoms is applied later, in Fourier space, with the CTF.
"""
from __future__ import annotations

import numpy as np

from .particles import axis_angle, random_rotation


def orientation(rng, kappa: float = 0.0) -> np.ndarray:
    """A random rotation. ``kappa`` > 0 biases the model's z axis towards the beam (von Mises-Fisher
    concentration on the viewing direction; 0 = uniform)."""
    if kappa <= 0:
        return random_rotation(rng)
    # cos(theta) ~ vMF on the sphere, both hemispheres (a view and its flip are equally likely)
    u = rng.random()
    cos_t = 1.0 + np.log(u + (1 - u) * np.exp(-2 * kappa)) / kappa
    cos_t *= rng.choice([-1.0, 1.0])
    tilt = np.arccos(np.clip(cos_t, -1, 1))
    return (axis_angle([0, 0, 1], rng.uniform(0, 2 * np.pi)) @ axis_angle([0, 1, 0], tilt)
            @ axis_angle([0, 0, 1], rng.uniform(0, 2 * np.pi)))


def orientations(rng, n: int, kappa: float = 0.0) -> np.ndarray:
    """``n`` random rotations (n, 3, 3), vectorised; same distribution as :func:`orientation`."""
    if n == 0:
        return np.zeros((0, 3, 3))
    if kappa <= 0:
        q = rng.standard_normal((n, 4))
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        w, x, y, z = q.T
        return np.stack([np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
                         np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
                         np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)],
                        axis=1)
    u = rng.random(n)
    cos_t = (1.0 + np.log(u + (1 - u) * np.exp(-2 * kappa)) / kappa) * rng.choice([-1.0, 1.0], n)
    tilt = np.arccos(np.clip(cos_t, -1, 1))
    return _rz(rng.uniform(0, 2 * np.pi, n)) @ _ry(tilt) @ _rz(rng.uniform(0, 2 * np.pi, n))


def _rz(a):
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], axis=1)


def _ry(a):
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], axis=1)


def project_xy(xyz: np.ndarray, rot: np.ndarray, pixel_size: float) -> np.ndarray:
    """(M, 2) projected (x, y) of the rotated pseudo-atoms, in pixels relative to the particle centre."""
    return (xyz @ (rot[:2].T / pixel_size)).astype(np.float32)


def splat(shape, x, y, w) -> np.ndarray:
    """Bilinear splat of weights ``w`` at float pixel positions (x=col, y=row); points outside are dropped."""
    ny, nx = shape
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = (x - x0).astype(np.float32)
    fy = (y - y0).astype(np.float32)
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    # splat onto a grid padded by one pixel on each side, so no per-corner bounds checks are needed
    ok = (x0 >= -1) & (x0 < nx) & (y0 >= -1) & (y0 < ny)
    x0, y0, fx, fy, w = x0[ok] + 1, y0[ok] + 1, fx[ok], fy[ok], w[ok].astype(np.float32)
    W = nx + 2
    i00 = y0 * W + x0
    wy0, wy1 = w * (1 - fy), w * fy
    idx = np.concatenate([i00, i00 + 1, i00 + W, i00 + W + 1])
    wts = np.concatenate([wy0 * (1 - fx), wy0 * fx, wy1 * (1 - fx), wy1 * fx])
    out = np.bincount(idx, weights=wts, minlength=(ny + 2) * W).reshape(ny + 2, W)
    return out[1:-1, 1:-1].astype(np.float32)


def footprint_cells(xy: np.ndarray, cx: float, cy: float, cell: float, grid_shape) -> np.ndarray:
    """Flat indices of the coarse cells (size ``cell`` px) covered by a projected particle at (cx, cy).
    Indices repeat (one per pseudo-atom), so ``occupied[cells].mean()`` is a density-weighted overlap."""
    gy, gx = grid_shape
    ix = np.floor((xy[:, 0] + cx) / cell).astype(np.int64)
    iy = np.floor((xy[:, 1] + cy) / cell).astype(np.int64)
    ok = (ix >= 0) & (ix < gx) & (iy >= 0) & (iy < gy)
    return iy[ok] * gx + ix[ok]
