"""QC images of picked micrographs (``hydra pick --qc N``): what was picked, and where nothing could be.

One PNG per chosen micrograph: the micrograph in grey (binned to at most ``max_px`` on its long side and
low-passed to a tenth of the particle diameter),
its border bands and dead areas in translucent red (no pick is kept there), and every written pick as a
circle of the particle's diameter, coloured by FOM (yellow = just over the threshold, green = sure). The
title line says how many picks, at which threshold, how much area was excluded and the micrograph-evidence
factor, so junk-only micrographs and band-laden ones are seen at a glance (BoxNet and MicrographCleaner
write similar masks). Coordinates are those of the micrograph as stored (x = column, y = row).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

#: subdirectory of the pick output folder that holds the QC images
QC_DIR = "qc"


def qc_indices(n_total: int, n_qc: int) -> set:
    """Indices (0-based) of ``n_qc`` micrographs spread evenly over ``n_total`` (all when n_qc >= n_total)."""
    if n_qc <= 0 or n_total <= 0:
        return set()
    if n_qc >= n_total:
        return set(range(n_total))
    return {int(round(v)) for v in np.linspace(0, n_total - 1, n_qc)}


def _fom_colours(fom: np.ndarray, threshold: Optional[float]):
    """Yellow at the threshold (or the lowest FOM shown) to green at FOM 1."""
    fom = np.asarray(fom, dtype=np.float64)
    lo = float(threshold) if threshold is not None else (float(fom.min()) if fom.size else 0.0)
    t = np.clip((fom - lo) / max(1.0 - lo, 1e-6), 0.0, 1.0)[:, None]
    return (1.0 - t) * np.array([1.0, 0.9, 0.0]) + t * np.array([0.1, 0.9, 0.1])


def qc_png(path, image: np.ndarray, mask=None, picks=None, radius_px: Optional[float] = None,
           threshold: Optional[float] = None, title: Optional[str] = None, max_px: int = 1024,
           lowpass_px: float = 0.0) -> None:
    """Write the QC image of one micrograph (:func:`qc_figure`) to ``path`` atomically."""
    save_figure(qc_figure(image, mask, picks, radius_px, threshold, title, max_px, lowpass_px), path)


def save_figure(fig, path) -> None:
    """A QC figure as the PNG ``path``, written atomically (temporary file + rename)."""
    from .atomic import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)


def qc_figure(image: np.ndarray, mask=None, picks=None, radius_px: Optional[float] = None,
              threshold: Optional[float] = None, title: Optional[str] = None, max_px: int = 1024,
              lowpass_px: float = 0.0):
    """The QC figure of one micrograph (a matplotlib Figure, no pyplot): ``image`` as stored (binned to at
    most ``max_px``, low-passed by a Gaussian of ``lowpass_px`` original px so particles show), ``mask``
    (bool, the area where no pick is kept; None = none) in red, ``picks``
    (:class:`~hydrapicker.types.Picks`, original px) as circles of ``radius_px`` coloured by FOM against
    ``threshold``."""
    from matplotlib.collections import EllipseCollection
    from matplotlib.figure import Figure

    image = np.asarray(image, dtype=np.float32)
    step = max(1, int(np.ceil(max(image.shape) / max_px)))
    ny, nx = (image.shape[0] // step) * step, (image.shape[1] // step) * step
    img = image[:ny, :nx].reshape(ny // step, step, nx // step, step).mean(axis=(1, 3))  # binned: less noise
    if lowpass_px and lowpass_px / step > 0.5:
        from scipy.ndimage import gaussian_filter

        img = gaussian_filter(img, lowpass_px / step, mode="reflect")
    m = None if mask is None else np.asarray(mask, dtype=bool)[:ny, :nx][::step, ::step]
    finite = img[np.isfinite(img) & (True if m is None else ~m)]
    lo, hi = 0.0, 1.0
    if finite.size:  # median +- 3.5 robust sd: contamination or carbon does not flatten the particles' contrast
        med = float(np.median(finite))
        sd = 1.4826 * float(np.median(np.abs(finite - med)))
        lo, hi = (med - 3.5 * sd, med + 3.5 * sd) if sd > 0 else tuple(np.percentile(finite, [1, 99]))
    fig = Figure(figsize=(6, 6 * img.shape[0] / img.shape[1]), dpi=max(100, int(img.shape[1] / 6)))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
    if m is not None and m.any():
        overlay = np.zeros(m.shape + (4,), np.float32)
        overlay[m] = (1.0, 0.0, 0.0, 0.45)
        ax.imshow(overlay, interpolation="nearest")
    if picks is not None and len(picks) and radius_px:
        # binned pixel k covers original pixels k*step .. k*step + step - 1: x -> (x + 0.5) / step - 0.5
        d = 2.0 * float(radius_px) / step
        xy = (np.column_stack([picks.x, picks.y]) + 0.5) / step - 0.5
        ax.add_collection(EllipseCollection(np.full(len(picks), d), np.full(len(picks), d), np.zeros(len(picks)),
                                            units="xy", offsets=xy,
                                            offset_transform=ax.transData, facecolors="none",
                                            edgecolors=_fom_colours(picks.fom, threshold), linewidths=1.0))
    ax.set_xlim(-0.5, img.shape[1] - 0.5)
    ax.set_ylim(img.shape[0] - 0.5, -0.5)
    ax.set_axis_off()
    if title:
        ax.text(0.01, 0.99, title, transform=ax.transAxes, va="top", ha="left", color="yellow", fontsize=8,
                bbox=dict(facecolor="black", alpha=0.5, lw=0))
    return fig


def qc_title(name: str, n_picks: int, threshold: Optional[float], excluded: Optional[float],
             evidence: Optional[float]) -> str:
    """The title line of a QC image."""
    parts = [f"{name}: {n_picks} picks" + (f" (FOM >= {threshold:.3f})" if threshold is not None else "")]
    if excluded:
        parts.append(f"{100 * excluded:.1f}% excluded (red)")
    if evidence is not None and evidence < 1.0:
        parts.append(f"FOMs x{evidence:.2f} (weak micrograph evidence)")
    return "; ".join(parts)


def write_micrograph_qc(path, micrograph_path, picks, diameter_A: float, info: dict, find_invalid: bool,
                        name: Optional[str] = None, pixel_size: Optional[float] = None) -> None:
    """Read one micrograph again and write its QC image (:func:`micrograph_qc_figure`) to ``path``."""
    save_figure(micrograph_qc_figure(micrograph_path, picks, diameter_A, info, find_invalid, name, pixel_size), path)


def micrograph_qc_figure(micrograph_path, picks, diameter_A: float, info: dict, find_invalid: bool,
                         name: Optional[str] = None, pixel_size: Optional[float] = None):
    """Read one micrograph again -> its QC figure: its invalid area (when the picks excluded it) and
    ``picks`` (original px). ``info``: the pick's info (:class:`~hydrapicker.types.PickResult`: the pixel
    size and threshold used, the excluded area, the evidence); ``pixel_size`` where it has none."""
    from .preprocess import read_mrc

    info = info or {}
    data, _ = read_mrc(micrograph_path)
    image = np.asarray(data, dtype=np.float32)
    mask = None
    if find_invalid:
        from .regions import find_regions

        mask = find_regions(image).mask()
    diameter_px = float(diameter_A) / float(info.get("pixel_size") or pixel_size or 1.0)
    threshold = info.get("threshold")
    inv = info.get("invalid") or {}
    return qc_figure(image, mask, picks, radius_px=0.5 * diameter_px, threshold=threshold,
                     title=qc_title(Path(name or micrograph_path).name, len(picks), threshold,
                                    inv.get("excluded_fraction"), info.get("evidence")),
                     lowpass_px=diameter_px / 10.0)
