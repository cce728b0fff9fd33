"""Coordinates in and out: :func:`read_coords` (every supported source, one entry point), the writers,
and :func:`match_keys` (which micrograph a coordinate key belongs to).

``readers`` (format detection and the format readers behind it), ``writers`` (RELION STAR, BOX, Topaz,
CBOX-like) and ``matching`` (name rules). Coordinates are pixels of the micrograph as stored
(x = column, y = row, 0-based).
"""
from ..star import write_star  # noqa: F401  (STAR blocks with RELION's version line)
from .matching import (KNOWN_EXTENSIONS, PICKNAME_SUFFIXES, match_keys, name_stem,  # noqa: F401
                       strip_extension, strip_pickname)
from .readers import (CoordinateFileError, CoordsWarning, read_box, read_cbox_like,  # noqa: F401
                      read_coordinate_list, read_coords, read_coords_suffix, read_cryosparc_cs,
                      read_micrograph_names, read_particles_star, read_relion_coords, read_topaz_txt)
from .writers import (RELION_COORD_COLUMNS, relion_coords_frame, write_box, write_cbox_like,  # noqa: F401
                      write_relion_star, write_topaz_txt)
