"""Picks <-> CryoSPARC particle datasets (``location`` + ``pick_stats`` slots).

CryoSPARC stores a pick as fractions of the micrograph it sits on: ``center_x_frac = x / nx`` (column)
and ``center_y_frac = y / ny`` (row of the array as stored, no flip), with ``micrograph_shape = [ny, nx]``
and ``micrograph_uid`` = the exposure's ``uid`` (the join key for Inspect Picks and Extract).
The README's CryoSPARC section ("Coordinate conventions") gives the sources of these conventions.

Only ``cryosparc.dataset`` is needed here (no server); it is imported lazily.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import numpy as np

from hydrapicker.errors import UserFacingError
from hydrapicker.types import Picks

#: The fields a particle output with the ``location`` and ``pick_stats`` slots holds (dtypes as the
#: server writes them). With a server, the job asks it for the list (``alloc_output``) instead; this
#: list is for the offline mode and the tests.
PARTICLE_FIELDS = [
    ("location/micrograph_uid", "<u8"),
    ("location/exp_group_id", "<u4"),
    ("location/micrograph_path", "O"),
    ("location/micrograph_shape", "<u4", (2,)),
    ("location/micrograph_psize_A", "<f4"),
    ("location/center_x_frac", "<f4"),
    ("location/center_y_frac", "<f4"),
    ("location/min_dist_A", "<f4"),
    ("pick_stats/ncc_score", "<f4"),
    ("pick_stats/power", "<f4"),
    ("pick_stats/template_idx", "<u4"),
    ("pick_stats/angle_rad", "<f4"),
]

#: The largest float32 below 1: fractions are stored in [0, 1).
_BELOW_ONE = np.nextafter(np.float32(1.0), np.float32(0.0))


class ParticleDatasetError(UserFacingError):
    """A particle dataset is missing fields or holds picks that cannot be placed."""


def pixels_to_fractions(x, y, shape_yx, flip_y: bool = False):
    """Pixel centres (x = column, y = row) -> ``(center_x_frac, center_y_frac)`` as float32 in [0, 1).

    ``shape_yx`` is ``(ny, nx)`` of the image the pixels refer to. ``flip_y`` maps row ``y`` to
    ``ny - 1 - y`` first (the row of the same pixel in an up-down flipped copy), for micrographs that
    were imported flipped relative to the ones picked.
    """
    ny, nx = int(shape_yx[0]), int(shape_yx[1])
    if nx <= 0 or ny <= 0:
        raise ValueError(f"micrograph shape must be positive, got [ny, nx] = [{ny}, {nx}]")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if flip_y:
        y = (ny - 1) - y
    fx = np.clip((x / nx).astype(np.float32), 0.0, _BELOW_ONE)
    fy = np.clip((y / ny).astype(np.float32), 0.0, _BELOW_ONE)
    return fx, fy


def fractions_to_pixels(fx, fy, shape_yx, flip_y: bool = False):
    """The inverse of :func:`pixels_to_fractions`: fractions -> float64 pixel (x, y)."""
    ny, nx = int(shape_yx[0]), int(shape_yx[1])
    x = np.asarray(fx, dtype=np.float64) * nx
    y = np.asarray(fy, dtype=np.float64) * ny
    if flip_y:
        y = (ny - 1) - y
    return x, y


def fill_particles(dset, picks: Picks, mic, *, flip_y: bool = False, min_dist_A: float = 0.0,
                   picked_shape=None) -> list:
    """Fill the rows of an allocated particle dataset (``len(dset) == len(picks)``) for one micrograph.

    ``mic`` is the :class:`hydrapicker.types.Micrograph` built by :mod:`cryosparc_hydra.exposures`;
    its ``meta`` holds the exposure's uid, project-relative path, shape, pixel size and exposure group,
    which are copied verbatim. ``picked_shape`` is the (ny, nx) of the image the picks' pixels refer to
    (default: the exposure's shape). ``uid`` is left as allocated (random, unique).
    Returns the fields of ``dset`` this function does not know (left at their allocated defaults).
    """
    if len(dset) != len(picks):
        raise ValueError(f"dataset has {len(dset)} rows for {len(picks)} picks")
    meta = mic.meta
    shape = tuple(int(v) for v in meta["shape"])
    fx, fy = pixels_to_fractions(picks.x, picks.y, picked_shape or shape, flip_y=flip_y)
    fom = np.asarray(picks.fom, dtype=np.float32)
    values = {
        "location/micrograph_uid": np.uint64(meta["uid"]),
        "location/exp_group_id": meta.get("exp_group_id", 0),
        "location/micrograph_path": meta["cs_path"],
        "location/micrograph_shape": np.asarray(shape, dtype=np.uint32),
        "location/micrograph_psize_A": meta["psize_A"],
        "location/center_x_frac": fx,
        "location/center_y_frac": fy,
        "location/min_dist_A": min_dist_A,
        "pick_stats/ncc_score": fom,
        "pick_stats/power": fom,
        "pick_stats/template_idx": 0,
        "pick_stats/angle_rad": 0.0,
    }
    unknown = []
    for field in dset.fields():
        if field == "uid":
            continue
        if field not in values:
            unknown.append(field)
            continue
        if len(dset):
            dset[field][...] = values[field]
    return unknown


def build_particles(items: Iterable, allocate: Callable[[int], object], *, flip_y: bool = False):
    """One dataset for many micrographs: ``items`` yields ``(mic, picks, picked_shape, min_dist_A)``.

    ``allocate(n)`` returns an empty dataset of ``n`` rows with the output's fields (from the server's
    field list, or :data:`PARTICLE_FIELDS` offline). Returns ``(dataset, unknown_fields)``.
    """
    parts, unknown = [], set()
    for mic, picks, picked_shape, min_dist_A in items:
        part = allocate(len(picks))
        unknown.update(fill_particles(part, picks, mic, flip_y=flip_y, min_dist_A=min_dist_A,
                                      picked_shape=picked_shape))
        parts.append(part)
    if not parts:
        return allocate(0), sorted(unknown)
    return type(parts[0]).append_many(*parts, assert_same_fields=True), sorted(unknown)


def offline_allocator(n: int):
    """Allocate ``n`` rows with :data:`PARTICLE_FIELDS` (random unique uids)."""
    from .extra import dataset_class

    return dataset_class().allocate(n, PARTICLE_FIELDS)


def validate_particles(dset, exposure_uids) -> None:
    """Refuse a dataset CryoSPARC would silently mishandle: duplicate uids, picks on unknown
    micrographs, fractions outside [0, 1)."""
    uids = np.asarray(dset["uid"])
    if len(np.unique(uids)) != len(uids):
        raise ParticleDatasetError("particle uids are not unique (internal error; please report)")
    if not len(dset):
        return
    mic_uids = np.asarray(dset["location/micrograph_uid"])
    unknown = np.setdiff1d(mic_uids, np.asarray(list(exposure_uids), dtype=np.uint64))
    if len(unknown):
        raise ParticleDatasetError(f"{len(unknown)} micrograph uid(s) of the picks are not among the "
                                   f"input exposures (e.g. {int(unknown[0])})")
    for f in ("location/center_x_frac", "location/center_y_frac"):
        v = np.asarray(dset[f])
        if np.any(~np.isfinite(v)) or v.min() < 0 or v.max() >= 1:
            raise ParticleDatasetError(f"{f} outside [0, 1) (internal error; please report)")


def require_location(dset, source: str) -> None:
    need = ["location/micrograph_uid", "location/center_x_frac", "location/center_y_frac",
            "location/micrograph_shape"]
    missing = [f for f in need if f not in dset.fields()]
    if missing:
        raise ParticleDatasetError(
            f"{source}: particle dataset lacks {', '.join(missing)}; give a particles output with a "
            f"'location' slot (e.g. Manual Picker 'particles' or Select 2D 'particles_selected')")


def particles_to_picks(dset, *, flip_y: bool = False, shapes: Optional[dict] = None,
                       source: str = "particles") -> dict:
    """A particle dataset -> ``{micrograph_uid (int): Picks}`` in pixels of the micrograph as stored.

    Pixels are computed from each row's ``micrograph_shape`` unless ``shapes`` maps a micrograph uid to
    the (ny, nx) of the image that will be read. FOM is ``pick_stats/ncc_score`` when present, else 1.
    """
    require_location(dset, source)
    out = {}
    if not len(dset):
        return out
    mic_uids = np.asarray(dset["location/micrograph_uid"]).astype(np.uint64)
    fx = np.asarray(dset["location/center_x_frac"])
    fy = np.asarray(dset["location/center_y_frac"])
    row_shapes = np.asarray(dset["location/micrograph_shape"])
    fom = (np.asarray(dset["pick_stats/ncc_score"], dtype=np.float64)
           if "pick_stats/ncc_score" in dset.fields() else np.ones(len(dset)))
    for uid in np.unique(mic_uids):
        rows = np.flatnonzero(mic_uids == uid)
        shape = (shapes or {}).get(int(uid), tuple(int(v) for v in row_shapes[rows[0]]))
        x, y = fractions_to_pixels(fx[rows], fy[rows], shape, flip_y=flip_y)
        out[int(uid)] = Picks(x, y, fom[rows])
    return out
