"""Coordinate writers: RELION coordinate STAR (through ``starfile``), EMAN BOX, Topaz text, CBOX-like.

Writers take :class:`hydrapicker.types.Picks` and write atomically. Coordinates are pixels of the
micrograph as stored (x = column, y = row, 0-based).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..atomic import write_text
from ..star import write_star
from ..types import Picks

RELION_COORD_COLUMNS = ["rlnCoordinateX", "rlnCoordinateY", "rlnClassNumber",
                        "rlnAutopickFigureOfMerit", "rlnAnglePsi"]


def relion_coords_frame(picks: Picks) -> pd.DataFrame:
    """The table RELION's AutoPick writes: X, Y, ClassNumber 0, FOM, AnglePsi 0.0."""
    return pd.DataFrame({
        "rlnCoordinateX": picks.x.astype(float),
        "rlnCoordinateY": picks.y.astype(float),
        "rlnClassNumber": np.zeros(len(picks), dtype=int),
        "rlnAutopickFigureOfMerit": picks.fom.astype(float),
        "rlnAnglePsi": np.zeros(len(picks), dtype=float),
    }, columns=RELION_COORD_COLUMNS)


def write_relion_star(path, picks: Picks, version: int = 30001) -> None:
    """Per-micrograph coordinate STAR: one ``data_`` block (empty name), written atomically.

    An empty table is still written (with its column labels) so that a continued job knows the
    micrograph was done. ``version`` is the ``# version`` comment (30001 for 3.1/4.x, 50001 for 5.x).
    """
    write_star(path, {"": relion_coords_frame(picks)}, version)


def write_box(path, picks: Picks, box_px: float) -> None:
    """EMAN BOX: lower-left corner x, y, width, height (integers), tab separated."""
    size = int(round(box_px))
    half = size / 2.0  # of the size written, so that corner + size/2 is the centre to within 0.5 px
    lines = [f"{int(round(x - half))}\t{int(round(y - half))}\t{size}\t{size}"
             for x, y in zip(picks.x, picks.y)]
    write_text(path, "\n".join(lines) + ("\n" if lines else ""))


def write_topaz_txt(path, picks_by_name: dict) -> None:
    """Topaz text: ``image_name x_coord y_coord score`` (tab separated), integer pixel coordinates."""
    rows = ["image_name\tx_coord\ty_coord\tscore"]
    for name, picks in picks_by_name.items():
        rows += [f"{name}\t{int(round(x))}\t{int(round(y))}\t{s:.4f}"
                 for x, y, s in zip(picks.x, picks.y, picks.fom)]
    write_text(path, "\n".join(rows) + "\n")


def write_cbox_like(path, picks: Picks, box_px: float) -> None:
    """A CBOX-like STAR (crYOLO style): every pick with its FOM, so thresholds can be chosen later."""
    import starfile

    df = pd.DataFrame({
        "CoordinateX": picks.x - box_px / 2.0, "CoordinateY": picks.y - box_px / 2.0,
        "Width": np.full(len(picks), float(box_px)), "Height": np.full(len(picks), float(box_px)),
        "Confidence": picks.fom,
    })
    write_text(path, starfile.to_string({"cryolo": df}))
