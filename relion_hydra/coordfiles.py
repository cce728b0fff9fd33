"""Reading RELION coordinates back: one micrograph's STAR, or a whole coordinates node.

A node is any of: 3.1's ``coords_suffix_<name>.star`` (files found by RELION's path convention next to
it), 4.x/5.x ``autopick.star``/``manualpick.star`` (block ``coordinate_files``), or a particles STAR
(``_rlnMicrographName`` + ``_rlnCoordinateX/Y``). Micrographs without a coordinate file are absent from
the result (unlabelled, which is not the same as "no particles").
"""
from __future__ import annotations

import os
from pathlib import Path

from hydrapicker.errors import StarFileError
from hydrapicker.types import Picks

from .paths import strip_job_prefix, without_extension


def _read_blocks(path):
    import starfile
    try:
        return starfile.read(path, always_dict=True)
    except Exception as exc:
        raise StarFileError(f"cannot read {path} as a STAR file ({exc}); is it a RELION coordinates file?") from exc


def read_coord_star(path) -> Picks:
    """Picks from a per-micrograph coordinate STAR (first data block, as RELION reads it)."""
    if os.path.getsize(path) == 0:
        return Picks.empty()
    blocks = _read_blocks(path)
    if not blocks:
        return Picks.empty()
    df = next(iter(blocks.values()))
    if not hasattr(df, "columns") or len(df) == 0:
        return Picks.empty()
    if "rlnCoordinateX" not in df or "rlnCoordinateY" not in df:
        raise StarFileError(f"{path} has no _rlnCoordinateX/_rlnCoordinateY columns in its first block; "
                            "give a RELION coordinates file")
    fom = df["rlnAutopickFigureOfMerit"].to_numpy(float) if "rlnAutopickFigureOfMerit" in df else None
    return Picks(df["rlnCoordinateX"].to_numpy(float), df["rlnCoordinateY"].to_numpy(float), fom)


def read_coords_node(node: str, micrograph_names) -> dict[str, Picks]:
    """``{micrograph name: Picks}`` for the names that have coordinates in ``node``."""
    if not Path(node).exists():
        raise StarFileError(f"coordinates node {node} does not exist; check the 'Input coordinates' field")
    base = os.path.basename(node)
    out: dict[str, Picks] = {}
    if base.startswith("coords_suffix"):
        coord_dir = node[: len(node) - len(base)]
        suffix = base[len("coords_suffix"):]
        for name in micrograph_names:
            f = coord_dir + without_extension(strip_job_prefix(name)) + suffix
            if os.path.exists(f):
                out[name] = read_coord_star(f)
        return out
    blocks = _read_blocks(node)
    if "coordinate_files" in blocks:
        df = blocks["coordinate_files"]
        wanted = set(micrograph_names)
        for name, f in zip(df["rlnMicrographName"].astype(str), df["rlnMicrographCoordinates"].astype(str)):
            if name in wanted and os.path.exists(f):
                out[name] = read_coord_star(f)
        return out
    for df in blocks.values():
        if hasattr(df, "columns") and {"rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"} <= set(df.columns):
            wanted = set(micrograph_names)
            for name, g in df.groupby(df["rlnMicrographName"].astype(str)):
                if name in wanted:
                    out[name] = Picks(g["rlnCoordinateX"].to_numpy(float), g["rlnCoordinateY"].to_numpy(float))
            return out
    raise StarFileError(f"{node} is not a coordinates node: expected coords_suffix_*.star, a "
                        "data_coordinate_files list (autopick.star/manualpick.star) or a particles STAR")
