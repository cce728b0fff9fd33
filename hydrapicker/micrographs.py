"""Turn what users give (micrographs STARs, MRC files, globs, @lists) into :class:`Micrograph` lists.

RELION 3.1+ STARs carry the pixel size in the optics table (``_rlnMicrographPixelSize``); pre-3.1 STARs
carry ``_rlnDetectorPixelSize`` (um) and ``_rlnMagnification``. Relative paths are resolved from the
current directory (RELION's project directory) first, then from the STAR file's directory.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

from .errors import StarFileError, UserFacingError
from .types import Micrograph

CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfMaxResolution",
               "rlnCtfFigureOfMerit", "rlnPhaseShift", "rlnVoltage", "rlnSphericalAberration",
               "rlnAmplitudeContrast")


def _read_star(path):
    import starfile

    path = Path(path)
    if not path.exists():
        raise StarFileError(f"micrographs STAR {path} does not exist")
    if path.stat().st_size == 0:
        raise StarFileError(f"micrographs STAR {path} is empty: select some micrographs first")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:
        raise StarFileError(f"cannot parse {path} as a STAR file ({exc}); is it a RELION micrographs "
                            f"STAR (data_optics + data_micrographs)?") from exc
    return blocks


def _resolve(name: str, star_dir: Path) -> str:
    p = Path(name)
    if p.is_absolute() or p.exists():
        return str(p)
    alt = star_dir / p
    if alt.exists():
        return str(alt)
    return str(p)  # reported as missing when read, naming both places tried


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
            apix_by_group[str(row["rlnOpticsGroup"])] = value
            if "rlnOpticsGroupName" in optics.columns:
                apix_by_group[str(row["rlnOpticsGroupName"])] = value
    star_dir = star_path.parent
    mics = []
    for _, row in table.iterrows():
        name = str(row["rlnMicrographName"])
        px = None
        if "rlnOpticsGroup" in table.columns and apix_by_group:
            px = apix_by_group.get(str(row["rlnOpticsGroup"]))
        elif "rlnDetectorPixelSize" in table.columns and "rlnMagnification" in table.columns:
            px = float(row["rlnDetectorPixelSize"]) * 1e4 / float(row["rlnMagnification"])
        if apix is not None:
            px = float(apix)
        meta = {c: row[c] for c in CTF_COLUMNS if c in table.columns}
        if "rlnOpticsGroup" in table.columns:
            meta["optics_group"] = row["rlnOpticsGroup"]
        meta["star"] = str(star_path)
        mics.append(Micrograph(path=_resolve(name, star_dir), pixel_size=px, name=name, meta=meta))
    return mics


def _expand_one(item: str) -> list[str]:
    if item.startswith("@"):
        listing = Path(item[1:])
        if not listing.exists():
            raise UserFacingError(f"list file {listing} does not exist")
        out = []
        for line in listing.read_text().splitlines():
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
    mics = []
    for item in inputs:
        for path in _expand_one(str(item)):
            if path.endswith(".star"):
                mics.extend(read_micrographs_star(path, apix=apix))
            else:
                mics.append(Micrograph(path=os.path.normpath(path), pixel_size=apix, name=path))
    if not mics:
        raise UserFacingError("no micrographs given")
    return mics
