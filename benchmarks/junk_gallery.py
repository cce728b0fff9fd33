#!/usr/bin/env python
"""Figure: each kind of simulated junk alone (hydrapicker.simulate.artefacts), truth centres in red, beside
real micrographs of the shared validation sets (a real example where we have one; the shared sets hold no
vesicles, gold or ice crystals, so those panels are simulated only).

  python benchmarks/junk_gallery.py --out docs/figures/junk_gallery.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

KINDS = [("vesicles", dict(vesicles=4.0)), ("ice crystals", dict(ice_crystals=3.0)), ("gold beads", dict(gold=6.0)),
         ("rimmed contamination", dict(rim_contamination=3.0)), ("thin carbon (particles on it)", dict(p_thin_carbon=1.0)),
         ("clumps of other proteins", dict(other_aggregates=4.0)), ("border bands", dict(p_border=1.0)),
         ("gain stripes + hot pixels", dict(p_gain_stripes=1.0, p_hot_pixels=1.0)),
         ("junk only (no particles)", dict(p_junk_only=1.0, vesicles=1.0, ice_crystals=1.0, other_aggregates=2.0))]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/figures/junk_gallery.png")
    args = p.parse_args(argv)
    from matplotlib.figure import Figure

    from hydrapicker.atomic import atomic_path
    from hydrapicker.simulate import simulate_micrograph
    from hydrapicker.simulate.datasets import junk_target_specs

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_data import real_set_dirs

    off = {k: 0.0 for k in ("p_junk_only", "vesicles", "ice_crystals", "gold", "rim_contamination", "p_thin_carbon",
                            "other_aggregates", "p_border", "p_gain_stripes", "p_hot_pixels")}
    base = junk_target_specs()[0].replace(**off, snr=(0.3, 0.3), p_aggregate=0.0, p_carbon=0.0, contamination=0.0,
                                          shape=(512, 512))
    reals = real_set_dirs()
    n = len(KINDS) + len(reals)
    cols = 4
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(4 * cols, 4.2 * rows), dpi=45)
    for i, (title, kw) in enumerate(KINDS):
        ax = fig.add_subplot(rows, cols, i + 1)
        mic = simulate_micrograph(base.replace(**kw), 3)
        lo, hi = np.percentile(mic.image, [1, 99])
        ax.imshow(mic.image, cmap="gray", vmin=lo, vmax=hi)
        ax.plot(mic.xy[:, 0], mic.xy[:, 1], "r.", ms=2)
        ax.set_title(f"simulated: {title}", fontsize=10)
        ax.set_axis_off()
    import mrcfile

    for j, root in enumerate(reals):
        ax = fig.add_subplot(rows, cols, len(KINDS) + j + 1)
        f = sorted((root / "Micrographs").glob("*.mrc"))[0]
        img = mrcfile.read(f).astype(np.float32)
        lo, hi = np.percentile(img, [1, 99])
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(f"real: {root.name}\n{f.name}", fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
