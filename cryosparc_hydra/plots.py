"""Figures for the job's event log: the FOM histogram and picks drawn on a micrograph.

Drawn with matplotlib's Agg backend (no display needed). The overlay uses ``imshow(origin="lower")``
like CryoSPARC's own displays, with the picks at (column, row) of the array as stored.
"""
from __future__ import annotations

import numpy as np


def _figure(size=(5, 3.5)):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    return Figure(figsize=size, dpi=100)


def fom_histogram(fom, threshold=None, title="HydraPicker FOM of saved picks"):
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    fom = np.asarray(fom, dtype=float)
    ax.hist(fom, bins=50, range=(0.0, 1.0) if fom.size == 0 or fom.max() <= 1 else None, color="tab:blue")
    if threshold is not None:
        ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.3g}")
        ax.legend(loc="upper right")
    ax.set_xlabel("FOM (pick_stats/ncc_score)")
    ax.set_ylabel("picks")
    ax.set_title(f"{title} (n={fom.size})")
    fig.tight_layout()
    return fig


def binned(image, max_side: int = 1024):
    """Average-bin a 2D image so its longer side is <= ``max_side``; returns (image, bin factor)."""
    image = np.asarray(image, dtype=np.float32)
    b = max(1, int(np.ceil(max(image.shape) / max_side)))
    if b == 1:
        return image, 1
    ny, nx = (image.shape[0] // b) * b, (image.shape[1] // b) * b
    return image[:ny, :nx].reshape(ny // b, b, nx // b, b).mean(axis=(1, 3)), b


def overlay(image, picks, diameter_px: float, title: str = ""):
    """The micrograph (binned for display) with a circle of the particle diameter at each pick."""
    from matplotlib.patches import Circle

    img, b = binned(image)
    lo, hi = np.percentile(img, [1, 99]) if img.size else (0, 1)
    fig = _figure((6, 6 * img.shape[0] / max(img.shape[1], 1) + 0.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(img, cmap="gray", origin="lower", vmin=lo, vmax=hi if hi > lo else lo + 1)
    for x, y in zip(picks.x, picks.y):
        ax.add_patch(Circle(((x + 0.5) / b - 0.5, (y + 0.5) / b - 0.5), diameter_px / (2 * b),
                            fill=False, color="lime", linewidth=0.8))
    ax.set_axis_off()
    ax.set_title(f"{title} ({len(picks)} picks)", fontsize=9)
    fig.tight_layout()
    return fig


def read_image(path):
    """The first 2D image of an MRC file (for the overlay)."""
    import mrcfile

    with mrcfile.open(path, permissive=True) as mrc:
        data = np.asarray(mrc.data)
    return data[0] if data.ndim == 3 else data
