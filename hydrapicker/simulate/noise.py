"""Everything in a micrograph that is not a particle: ice, carbon, contamination, gradients, noise spectra.

All maps are float32 images of the canvas shape. Masks are soft (0..1). Sizes are in pixels.
"""
from __future__ import annotations

import numpy as np


def smooth_field(shape, rng, n_waves=6, min_wavelength=None) -> np.ndarray:
    """A smooth random field (sum of low-frequency plane waves), zero mean, unit std."""
    ny, nx = shape
    min_wavelength = min_wavelength or 0.3 * max(ny, nx)
    y = np.arange(ny, dtype=np.float32)[:, None]
    x = np.arange(nx, dtype=np.float32)[None, :]
    f = np.zeros(shape, np.float32)
    for _ in range(n_waves):
        lam = rng.uniform(min_wavelength, 3 * max(ny, nx))
        a = rng.uniform(0, 2 * np.pi)
        kx, ky = np.cos(a) * 2 * np.pi / lam, np.sin(a) * 2 * np.pi / lam
        # separable: cos(kx x + ky y + p) = cos(kx x + p) cos(ky y) - sin(kx x + p) sin(ky y)
        p = rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(0.3, 1.0)
        f += amp * (np.cos(kx * x + p) * np.cos(ky * y) - np.sin(kx * x + p) * np.sin(ky * y))
    f -= f.mean()
    return f / (f.std() + 1e-6)


def linear_gradient(shape, rng) -> np.ndarray:
    """A plane ramp with a random direction, values in about [-1, 1]."""
    ny, nx = shape
    a = rng.uniform(0, 2 * np.pi)
    y = (np.arange(ny, dtype=np.float32)[:, None] - ny / 2) / max(ny, nx) * 2
    x = (np.arange(nx, dtype=np.float32)[None, :] - nx / 2) / max(ny, nx) * 2
    return (np.cos(a) * x + np.sin(a) * y).astype(np.float32)


def carbon_mask(shape, rng, edge_px=3.0) -> np.ndarray:
    """Carbon support (1) around the edge of a circular hole (0), or a straight edge, soft over ``edge_px``."""
    ny, nx = shape
    y = np.arange(ny, dtype=np.float32)[:, None]
    x = np.arange(nx, dtype=np.float32)[None, :]
    if rng.random() < 0.75:  # a hole of radius 0.6-2.5 image sizes, centre off to one side
        r = rng.uniform(0.6, 2.5) * max(ny, nx)
        a = rng.uniform(0, 2 * np.pi)
        d = r + rng.uniform(-0.45, 0.3) * max(ny, nx)  # distance of the centre from the image centre
        cx, cy = nx / 2 + d * np.cos(a), ny / 2 + d * np.sin(a)
        dist = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) - r  # > 0 on the carbon
    else:
        a = rng.uniform(0, 2 * np.pi)
        off = rng.uniform(0.1, 0.4) * max(ny, nx)
        dist = (x - nx / 2) * np.cos(a) + (y - ny / 2) * np.sin(a) - off
    return (1.0 / (1.0 + np.exp(-dist / edge_px))).astype(np.float32)


def blob_mask(shape, rng, cx, cy, radius, irregularity=0.25, edge_px=2.0) -> tuple:
    """A soft irregular blob (contamination, aggregate outline); returns (mask, (y0, y1, x0, x1)) where
    mask covers only that bounding box of the canvas."""
    ny, nx = shape
    R = radius * (1 + 2 * irregularity) + 3 * edge_px
    y0, y1 = int(max(0, np.floor(cy - R))), int(min(ny, np.ceil(cy + R) + 1))
    x0, x1 = int(max(0, np.floor(cx - R))), int(min(nx, np.ceil(cx + R) + 1))
    if y1 <= y0 or x1 <= x0:
        return np.zeros((0, 0), np.float32), (0, 0, 0, 0)
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
    th = np.arctan2(yy, xx)
    rr = np.ones_like(th)
    for k in range(2, 7):
        rr += irregularity / k ** 0.7 * rng.uniform(-1, 1) * np.cos(k * th + rng.uniform(0, 2 * np.pi))
    d = np.sqrt(xx * xx + yy * yy) - radius * rr
    return (1.0 / (1.0 + np.exp(d / edge_px))).astype(np.float32), (y0, y1, x0, x1)


def ice_spectrum_filter(k, pixel_size, alpha, k0_A=None) -> np.ndarray:
    """Amplitude filter of structural (ice/solvent) noise: ~ 1/(k + k0)^(alpha/2) in power, unit RMS."""
    k0 = 1.0 / (k0_A or 200.0)
    f = (k + k0) ** (-alpha / 2.0)
    f = f / np.sqrt(np.mean(f * f))
    return f.astype(np.float32)


def crystalline_ice(shape, rng, pixel_size) -> np.ndarray:
    """Lattice fringes of hexagonal ice (3.9 A) where the pixel size resolves them, else mottled patches."""
    ny, nx = shape
    y = np.arange(ny, dtype=np.float32)[:, None]
    x = np.arange(nx, dtype=np.float32)[None, :]
    if pixel_size < 1.8:
        per = 3.9 / pixel_size
        out = np.zeros(shape, np.float32)
        a0 = rng.uniform(0, np.pi)
        for j in range(3):
            a = a0 + j * np.pi / 3
            out += np.cos(2 * np.pi / per * (np.cos(a) * x + np.sin(a) * y) + rng.uniform(0, 2 * np.pi))
        return out / 3
    return smooth_field(shape, rng, n_waves=12, min_wavelength=0.05 * max(ny, nx))
