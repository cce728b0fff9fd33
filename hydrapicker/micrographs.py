"""Turn what users give (micrographs STARs, MRC files, globs, @lists) into :class:`Micrograph` lists.

RELION 3.1+ STARs carry the pixel size in the optics table (``_rlnMicrographPixelSize``); pre-3.1 STARs
carry ``_rlnDetectorPixelSize`` (um) and ``_rlnMagnification``. Relative paths are resolved from the
current directory (RELION's project directory) first, then from the STAR file's directory.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Optional

from .errors import StarFileError, UserFacingError
from .types import Micrograph

CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfMaxResolution",
               "rlnCtfFigureOfMerit", "rlnPhaseShift", "rlnVoltage", "rlnSphericalAberration",
               "rlnAmplitudeContrast")


def _read_star(path):
    from .star import read_blocks

    path = Path(path)
    if not path.exists():
        raise StarFileError(f"micrographs STAR {path} does not exist")
    if path.stat().st_size == 0:
        raise StarFileError(f"micrographs STAR {path} is empty: select some micrographs first")
    return read_blocks(path, "is it a RELION micrographs STAR (data_optics + data_micrographs)?")


def resolve(rel, *bases) -> Optional[Path]:
    """The first existing of ``rel`` (absolute, or from the current directory) and ``base/rel`` for each
    base in order; None when none exists."""
    def exists(q):
        try:
            return q.exists()
        except OSError:  # e.g. a name too long for the file system: reported when the file is read
            return False

    p = Path(rel)
    if p.is_absolute() or exists(p):
        return p if exists(p) else None
    for base in bases:
        if base is not None and exists(Path(base) / p):
            return Path(base) / p
    return None


def _group_key(value) -> str:
    """An optics group number as text: ``1``, ``1.0`` (a row of an all-numeric optics table, read through
    pandas' ``iterrows``) and ``"1"`` are one group."""
    try:
        f = float(value)
        if f.is_integer():
            return str(int(f))
    except (TypeError, ValueError):
        pass
    return str(value)


def read_micrographs_star(star_path, apix=None) -> list[Micrograph]:
    """Read a RELION micrographs STAR (3.1+ optics layout or pre-3.1 single block)."""
    import pandas as pd

    star_path = Path(star_path)
    blocks = _read_star(star_path)
    table = blocks.get("micrographs")
    if not isinstance(table, pd.DataFrame):
        table = next((b for b in blocks.values()
                      if isinstance(b, pd.DataFrame) and "rlnMicrographName" in b.columns), None)
    if table is None or "rlnMicrographName" not in table.columns:
        raise StarFileError(f"{star_path} has no _rlnMicrographName column: give a micrographs STAR "
                            f"(e.g. CtfFind/jobNNN/micrographs_ctf.star), not a particles or coordinates file")
    if len(table) == 0:
        raise StarFileError(f"{star_path} lists no micrographs")
    optics = blocks.get("optics")
    apix_by_group = {}
    if isinstance(optics, pd.DataFrame) and "rlnOpticsGroup" in optics.columns:
        for _, row in optics.iterrows():
            value = None
            for col in ("rlnMicrographPixelSize", "rlnImagePixelSize", "rlnMicrographOriginalPixelSize"):
                if col in optics.columns and pd.notna(row[col]):
                    value = float(row[col])
                    break
            apix_by_group[_group_key(row["rlnOpticsGroup"])] = value
            if "rlnOpticsGroupName" in optics.columns:
                apix_by_group[str(row["rlnOpticsGroupName"])] = value
    star_dir = star_path.parent
    mics = []
    for _, row in table.iterrows():
        name = str(row["rlnMicrographName"])
        px = None
        if "rlnOpticsGroup" in table.columns and apix_by_group:
            px = apix_by_group.get(_group_key(row["rlnOpticsGroup"]))
        elif "rlnDetectorPixelSize" in table.columns and "rlnMagnification" in table.columns:
            px = float(row["rlnDetectorPixelSize"]) * 1e4 / float(row["rlnMagnification"])
        meta = {c: row[c] for c in CTF_COLUMNS if c in table.columns}
        if apix is not None:
            px = float(apix)
            meta["apix_source"] = "--apix"
        elif px is not None:
            meta["apix_source"] = f"the micrographs STAR {star_path}"
        if "rlnOpticsGroup" in table.columns:
            meta["optics_group"] = row["rlnOpticsGroup"]
        meta["star"] = str(star_path)
        path = resolve(name, star_dir)
        if path is None:  # a missing file is reported when read, naming both places looked in
            path = name
            meta["looked_in"] = [os.getcwd(), os.path.abspath(star_dir)]
        mics.append(Micrograph(path=str(path), pixel_size=px, name=name, meta=meta))
    return mics


def _expand_one(item: str) -> list[str]:
    if item.startswith("@"):
        listing = Path(item[1:])
        if not listing.exists():
            raise UserFacingError(f"list file {listing} does not exist")
        if listing.is_dir():
            raise UserFacingError(f"list file {listing} is a directory: give @<text file with one micrograph "
                                  f"path per line>, or the folder's micrographs as a quoted glob '{listing}/*.mrc'")
        try:
            raw = listing.read_bytes()
            if b"\0" in raw:
                raise UnicodeDecodeError("utf-8", raw[:1], 0, 1, "NUL byte")
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UserFacingError(f"list file {listing} is not a text file (binary content): give @<text file "
                                  "with one micrograph path per line>") from None
        except OSError as exc:
            raise UserFacingError(f"cannot read list file {listing}: {exc.strerror or exc}") from None
        out = []
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                out.extend(_expand_one(line))
        return out
    if any(ch in item for ch in "*?["):
        found = sorted(glob.glob(item))
        if not found:
            raise UserFacingError(f"no file matches {item!r}")
        return found
    return [item]


def collect_micrographs(inputs, apix=None) -> list[Micrograph]:
    """STAR files, MRC files, globs (quoted, expanded here) and @list.txt files -> Micrographs."""
    import math

    if apix is not None and not (math.isfinite(apix) and apix > 0):
        raise UserFacingError(f"--apix {apix:g} is not a pixel size: give the micrographs' pixel size in A/px, "
                              "e.g. --apix 1.06")
    given = {"apix_source": "--apix"} if apix is not None else {}
    mics = []
    for item in inputs:
        for path in _expand_one(str(item)):
            if path.endswith(".star"):
                mics.extend(read_micrographs_star(path, apix=apix))
            else:
                mics.append(Micrograph(path=os.path.normpath(path), pixel_size=apix, name=path, meta=dict(given)))
    if not mics:
        raise UserFacingError("no micrographs given")
    return mics


def sample_micrographs(mics: list, n: int) -> list:
    """``n`` micrographs spread evenly over ``mics``, the first and the last included (all of them when there
    are fewer)."""
    import numpy as np

    if len(mics) <= n:
        return list(mics)
    idx = np.unique(np.round(np.linspace(0, len(mics) - 1, n)).astype(int))
    return [mics[i] for i in idx]
