"""Reading RELION coordinates back: one micrograph's STAR, or a whole coordinates node, through the core's
one reader (:func:`hydrapicker.coords.read_coords`: it detects the node's kind once).

A node is any of: 3.1's ``coords_suffix_<name>.star`` (the files next to it), 4.x/5.x
``autopick.star``/``manualpick.star`` (block ``coordinate_files``), or a particles STAR
(``_rlnMicrographName`` + ``_rlnCoordinateX/Y``). Micrographs without a coordinate file are absent from
the result (unlabelled, which is not the same as "no particles").
"""
from __future__ import annotations

from pathlib import Path

from hydrapicker.errors import StarFileError
from hydrapicker.types import Picks


def read_coord_star(path) -> Picks:
    """Picks from a per-micrograph coordinate STAR (the first block with coordinates, as RELION reads it)."""
    from hydrapicker.coords import read_relion_coords

    return read_relion_coords(path)


def read_coords_node(node: str, micrograph_names) -> dict[str, Picks]:
    """``{micrograph name: Picks}`` for the names that have coordinates in ``node``."""
    from hydrapicker.coords import CoordinateFileError, read_coords

    if not Path(node).exists():
        raise StarFileError(f"coordinates node {node} does not exist; check the 'Input coordinates' field")
    names = [str(n) for n in micrograph_names]
    try:
        found = read_coords(node, names)
    except CoordinateFileError as exc:
        raise StarFileError(f"{node} is not a coordinates node ({exc}): expected coords_suffix_*.star, a "
                            "data_coordinate_files list (autopick.star/manualpick.star) or a particles STAR")
    return {n: found[n] for n in names if n in found}
