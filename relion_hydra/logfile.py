"""``logfile.pdf`` for the pick job (RELION lists it as an output node; the GUI opens it).

Page 1: FOM histogram of the written picks (with the threshold) and picks per micrograph.
Next pages: a few micrographs with their picks drawn as circles of the particle diameter.
matplotlib Figures drawn without pyplot (no display needed, no backend switched). Written atomically.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from hydrapicker.atomic import atomic_path


def _display_image(path: str, max_side: int = 1024):
    """The micrograph block-averaged to at most ``max_side`` pixels, and the binning factor used."""
    import mrcfile

    with mrcfile.open(path, permissive=True, mode="r") as mrc:
        img = np.asarray(mrc.data, dtype=np.float32)
    if img.ndim == 3:
        img = img[0]
    b = max(1, int(np.ceil(max(img.shape) / max_side)))
    ny, nx = (img.shape[0] // b) * b, (img.shape[1] // b) * b
    img = img[:ny, :nx].reshape(ny // b, b, nx // b, b).mean(axis=(1, 3))
    return img, b


def write_logfile(path: str, names: Sequence[str], foms: Sequence[np.ndarray], threshold: float,
                  examples: Sequence[tuple] = (), all_foms: Optional[np.ndarray] = None,
                  title: str = "HydraPicker") -> str:
    """``names``/``foms``: every micrograph and the FOMs of its written picks.
    ``examples``: (name, image path, Picks, radius_px) to overlay. ``all_foms``: optional permissive
    FOMs (including those below the threshold) for the histogram."""
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone
    from matplotlib.collections import EllipseCollection

    counts = np.array([len(f) for f in foms], dtype=int)
    written = np.concatenate([np.asarray(f, float) for f in foms]) if len(foms) else np.zeros(0)
    with atomic_path(path) as tmp, PdfPages(tmp) as pdf:
        fig = Figure(figsize=(8.27, 11.0))
        ax1, ax2 = fig.subplots(2, 1)
        fig.suptitle(f"{title}: {counts.sum()} picks on {len(names)} micrographs "
                     f"(FOM >= {threshold:.3g})")
        bins = np.linspace(0.0, 1.0, 51) if written.size == 0 or (written.min() >= 0 and written.max() <= 1) else 50
        if all_foms is not None and len(all_foms):
            ax1.hist(all_foms, bins=bins, color="0.8", label="all candidates (this run)")
        ax1.hist(written, bins=bins, color="tab:blue", label="written picks")
        ax1.axvline(threshold, color="tab:red", ls="--", label=f"threshold {threshold:.3g}")
        ax1.set_xlabel("figure of merit (higher = better)")
        ax1.set_ylabel("picks")
        ax1.legend(loc="upper left")
        ax2.bar(np.arange(len(counts)), counts, color="tab:blue", width=1.0)
        ax2.set_xlabel("micrograph index (order of the input STAR)")
        ax2.set_ylabel("picks")
        ax2.set_title(f"picks per micrograph (mean {counts.mean() if len(counts) else 0:.1f})")
        fig.subplots_adjust(left=0.1, right=0.95, bottom=0.06, top=0.93, hspace=0.25)  # tight_layout: slow
        pdf.savefig(fig)
        for name, image_path, picks, radius_px in examples:
            try:
                img, b = _display_image(image_path)
            except Exception as exc:  # a log page is not worth failing the job for
                print(f"logfile: cannot display {image_path}: {exc}")
                continue
            lo, hi = np.percentile(img, [1, 99])
            fig = Figure(figsize=(8.27, 8.27))
            ax = fig.add_axes([0.02, 0.02, 0.96, 0.93])
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="upper", interpolation="nearest")
            if len(picks):  # x = column, y = row of the stored image; circles of the particle diameter
                d = np.full(len(picks), 2.0 * radius_px / b)
                ax.add_collection(EllipseCollection(d, d, np.zeros(len(picks)), units="xy",
                                                    offsets=np.c_[picks.x, picks.y] / b,
                                                    offset_transform=ax.transData, facecolors="none",
                                                    edgecolors="lime", linewidths=0.8))
            ax.set_title(f"{name}: {len(picks)} picks", fontsize=9)
            ax.set_axis_off()
            pdf.savefig(fig)
        return str(path)
