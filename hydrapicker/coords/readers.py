"""Coordinate readers: one entry point, :func:`read_coords`, that recognises a source once by its name and
content and returns ``{key: Picks}``; the format readers sit behind it.

Keys are what the source says about the micrograph (a file stem, ``_rlnMicrographName``, a Topaz
``image_name``, a CryoSPARC ``micrograph_path``); :func:`~hydrapicker.coords.matching.match_keys` maps
them onto the names of a micrograph list.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import StarFileError, UserFacingError
from ..micrographs import resolve
from ..star import is_empty as _is_empty_star
from ..star import read_blocks
from ..types import Picks
from .matching import match_keys, name_stem, strip_extension, strip_pickname


class CoordinateFileError(UserFacingError):
    """A coordinate file cannot be read (missing, unknown format, missing columns)."""


class CoordsWarning(UserWarning):
    """Something in a coordinate source was skipped or guessed; reading went on."""


def _warn(msg: str) -> None:
    warnings.warn(msg, CoordsWarning, stacklevel=3)


# ---------------------------------------------------------------- helpers

def _read_star(path) -> dict:
    return read_blocks(path, "is it a valid STAR file?")


def _bases(path: Path) -> list:
    """Where a list's relative paths are looked for after the current directory: the list's folder and
    every folder above it (a RELION project directory among them)."""
    return [path.parent, *path.parent.resolve().parents]


def _require_file(path: Path, what: str = "coordinate file") -> Path:
    if not path.exists():
        raise CoordinateFileError(f"{what} '{path}' does not exist; check the path")
    return path


def _has(df, *cols) -> bool:
    return all(c in df.columns for c in cols)


def _picks_from_frame(df, x="rlnCoordinateX", y="rlnCoordinateY", fom="rlnAutopickFigureOfMerit",
                      path=None) -> Picks:
    try:
        xs = pd.to_numeric(df[x]).to_numpy(dtype=float)
        ys = pd.to_numeric(df[y]).to_numpy(dtype=float)
        f = pd.to_numeric(df[fom]).to_numpy(dtype=float) if fom and fom in df.columns else None
    except (ValueError, TypeError) as exc:
        raise CoordinateFileError(f"'{path}': non-numeric coordinates ({exc}); fix or regenerate the file")
    return Picks(xs, ys, f)


def _group_picks(keys, x, y, fom) -> dict:
    """{key: Picks} from flat arrays, in first-appearance order of the keys."""
    keys = np.asarray(keys, dtype=object).astype(str)
    uniq, first, inv = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    bounds = np.searchsorted(inv[order], np.arange(len(uniq) + 1))
    out = {}
    for u in np.argsort(first):
        idx = order[bounds[u]:bounds[u + 1]]
        out[str(uniq[u])] = Picks(x[idx], y[idx], None if fom is None else fom[idx])
    return out


# ---------------------------------------------------------------- single formats

def read_relion_coords(path, blocks=None) -> Picks:
    """One per-micrograph RELION coordinate STAR (any columns; only X and Y are required).

    RELION reads the first data block; if that block has no coordinates but a later one has, the later
    one is used with a warning (RELION itself would read junk from such a file). ``blocks``: the file's
    blocks when the caller has parsed it already.
    """
    path = _require_file(Path(path))
    blocks = _read_star(path) if blocks is None else blocks
    if not blocks:
        if _is_empty_star(path):  # empty file, or data_ headers only: nothing picked
            return Picks.empty()
        raise CoordinateFileError(f"'{path}' is not a STAR file (no data_ block); is it a coordinate file?")
    for i, (name, df) in enumerate(blocks.items()):
        if _has(df, "rlnCoordinateX", "rlnCoordinateY"):
            if i:
                _warn(f"'{path}': coordinates are in block data_{name}, not in the first block; "
                      "RELION reads only the first block, so fix this file before using it in RELION")
            return _picks_from_frame(df, path=path)
    raise CoordinateFileError(
        f"'{path}' has no _rlnCoordinateX/_rlnCoordinateY columns; give a RELION coordinate STAR")


def read_particles_star(path, blocks=None) -> dict:
    """A particles STAR (3.1+ with a data_optics block, or older): {_rlnMicrographName: Picks}.

    Coordinates are ``_rlnCoordinateX/Y`` as written (micrograph pixels); origin offsets are ignored.
    """
    path = _require_file(Path(path))
    for df in (_read_star(path) if blocks is None else blocks).values():
        if _has(df, "rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"):
            p = _picks_from_frame(df, path=path)
            return _group_picks(df["rlnMicrographName"].astype(str).to_numpy(), p.x, p.y,
                                p.fom if "rlnAutopickFigureOfMerit" in df.columns else None)
    raise CoordinateFileError(f"'{path}' has no block with _rlnMicrographName and _rlnCoordinateX/Y")


def read_coordinate_list(path, blocks=None) -> dict:
    """RELION 4/5 ``autopick.star`` / ``manualpick.star``: {_rlnMicrographName: Picks}.

    Each ``_rlnMicrographCoordinates`` path is resolved from the current directory (a RELION project
    directory), then from the list's directory, then from each folder above it.
    Rows whose coordinate file is missing are skipped with a warning.
    """
    path = _require_file(Path(path))
    blocks = _read_star(path) if blocks is None else blocks
    df = blocks.get("coordinate_files")
    if df is None:
        df = next((b for b in blocks.values() if _has(b, "rlnMicrographName", "rlnMicrographCoordinates")),
                  None)
    if df is None or not _has(df, "rlnMicrographName", "rlnMicrographCoordinates"):
        raise CoordinateFileError(
            f"'{path}' has no data_coordinate_files block with _rlnMicrographName and "
            "_rlnMicrographCoordinates; give RELION's autopick.star/manualpick.star")
    out = {}
    missing = []
    for mic, rel in zip(df["rlnMicrographName"].astype(str), df["rlnMicrographCoordinates"].astype(str)):
        f = resolve(rel, *_bases(path))
        if f is None:
            missing.append(rel)
            continue
        out[mic] = read_relion_coords(f)
    if missing:
        _warn(f"'{path}': {len(missing)} coordinate file(s) not found (e.g. '{missing[0]}'); "
              "run from the RELION project directory. Those micrographs were skipped")
    return out


def read_micrograph_names(path) -> list:
    """``_rlnMicrographName`` of a micrographs STAR (block ``micrographs``, else the first that has it)."""
    path = _require_file(Path(path), "micrographs STAR")
    blocks = _read_star(path)
    df = blocks.get("micrographs")
    if df is None or "rlnMicrographName" not in df.columns:
        df = next((b for b in blocks.values() if "rlnMicrographName" in b.columns), None)
    if df is None:
        raise StarFileError(f"'{path}' has no _rlnMicrographName column; give a micrographs STAR")
    return [str(n) for n in df["rlnMicrographName"]]


def read_coords_suffix(path) -> dict:
    """RELION 3.1 ``coords_suffix_<name>.star`` node: {_rlnMicrographName: Picks}.

    Every ``*_<name>.star`` under the node's directory is read (keyed by its path there, without the
    suffix) and matched to the micrographs of the STAR the node names (:func:`match_keys`: the file
    ``Movies/mic001_autopick.star`` belongs to ``MotionCorr/job002/Movies/mic001.mrc``). When that STAR
    cannot be found, the files' own keys are returned (warning). Micrographs without a coordinate file
    are skipped (RELION's Extract does the same); RELION's exact path rule is in ``relion_hydra.paths``.
    """
    path = _require_file(Path(path))
    suffix = path.name[len("coords_suffix"):]  # "_autopick.star"
    if not path.name.startswith("coords_suffix_") or not suffix.endswith(".star"):
        raise CoordinateFileError(f"'{path}' is not named coords_suffix_<pickname>.star")
    words = path.read_text(errors="replace").split()
    mics_star = resolve(words[0], *_bases(path)) if words else None
    root = path.parent
    found = {str(f.relative_to(root))[: -len(suffix)]: read_relion_coords(f)
             for f in sorted(root.rglob(f"*{suffix}")) if not f.name.startswith("coords_suffix")}
    if mics_star is None:
        _warn(f"'{path}': micrographs STAR '{words[0] if words else ''}' not found (run from the RELION "
              f"project directory); returning every *{suffix} under {root} by its own name")
        return found
    names = read_micrograph_names(mics_star)
    matched = match_keys(found, names)
    out = {n: matched[n] for n in names if n in matched}
    if len(out) < len(names):
        _warn(f"'{path}': {len(names) - len(out)} micrograph(s) of '{mics_star}' have no *{suffix} file; "
              "skipped")
    return out


def read_box(path) -> Picks:
    """EMAN BOX (``x y w h`` lower-left corner, whitespace separated): centres ``x + w/2, y + h/2``."""
    path = _require_file(Path(path))
    text = path.read_text(errors="replace")
    rows = [ln.split() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not rows:
        return Picks.empty()
    try:
        a = np.array([[float(v) for v in r[:4]] for r in rows])
    except ValueError as exc:
        raise CoordinateFileError(f"'{path}' is not an EMAN BOX file ({exc}); expected 'x y w h' lines")
    if a.ndim != 2 or a.shape[1] < 4:
        raise CoordinateFileError(f"'{path}': every BOX line needs 4 numbers (x y width height)")
    return Picks(a[:, 0] + a[:, 2] / 2.0, a[:, 1] + a[:, 3] / 2.0)


def read_cbox_like(path, blocks=None) -> Picks:
    """A CBOX-like STAR (crYOLO style; :func:`write_cbox_like`): corner + size -> centre, Confidence -> FOM."""
    path = _require_file(Path(path))
    for df in (_read_star(path) if blocks is None else blocks).values():
        if _has(df, "CoordinateX", "CoordinateY", "Width", "Height"):
            p = _picks_from_frame(df, "CoordinateX", "CoordinateY", "Confidence", path=path)
            w = pd.to_numeric(df["Width"]).to_numpy(float)
            h = pd.to_numeric(df["Height"]).to_numpy(float)
            return Picks(p.x + w / 2.0, p.y + h / 2.0, p.fom if "Confidence" in df.columns else None)
    raise CoordinateFileError(f"'{path}' has no block with CoordinateX/CoordinateY/Width/Height")


def read_topaz_txt(path) -> dict:
    """Topaz text (``image_name x_coord y_coord [score]``, header line, whitespace separated)."""
    path = _require_file(Path(path))
    try:
        df = pd.read_csv(path, sep=r"\s+", dtype={"image_name": str})
    except pd.errors.EmptyDataError:
        return {}
    if not _has(df, "image_name", "x_coord", "y_coord"):
        raise CoordinateFileError(
            f"'{path}' lacks the Topaz header 'image_name x_coord y_coord [score]'; give a Topaz picks file")
    if not len(df):
        return {}
    p = _picks_from_frame(df, "x_coord", "y_coord", "score", path=path)
    return _group_picks(df["image_name"].astype(str).to_numpy(), p.x, p.y,
                        p.fom if "score" in df.columns else None)


def read_cryosparc_cs(path) -> dict:
    """CryoSPARC particles ``.cs``: {location/micrograph_path: Picks}.

    x = ``center_x_frac * nx``, y = ``center_y_frac * ny`` with ``micrograph_shape = [ny, nx]`` (no flip).
    FOM = ``pick_stats/ncc_score``, unless it is absent or constant (crYOLO's dummy 0.5) and
    ``pick_stats/power`` varies (CryoSPARC's Topaz wrapper), then ``power``; else none.
    """
    path = _require_file(Path(path))
    try:
        from cryosparc.dataset import Dataset
    except ImportError:
        raise UserFacingError(f"reading '{path}' needs cryosparc-tools: pip install 'hydrapicker[cryosparc]'")
    try:
        ds = Dataset.load(str(path))
    except Exception as exc:
        raise CoordinateFileError(f"cannot read CryoSPARC dataset '{path}': {exc}") from exc
    need = ["location/center_x_frac", "location/center_y_frac", "location/micrograph_shape"]
    lacking = [f for f in need if f not in ds.fields()]
    if lacking:
        raise CoordinateFileError(f"'{path}' lacks {', '.join(lacking)}; give a CryoSPARC particles/picks .cs")
    if not len(ds):
        return {}
    shape = np.asarray(ds["location/micrograph_shape"], dtype=float).reshape(len(ds), 2)
    x = np.asarray(ds["location/center_x_frac"], dtype=float) * shape[:, 1]
    y = np.asarray(ds["location/center_y_frac"], dtype=float) * shape[:, 0]
    fom = None
    for field in ("pick_stats/ncc_score", "pick_stats/power"):
        if field in ds.fields():
            v = np.asarray(ds[field], dtype=float)
            if fom is None or np.ptp(fom) == 0 and np.ptp(v) > 0:
                fom = v
    if "location/micrograph_path" in ds.fields():
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in ds["location/micrograph_path"]]
    else:
        keys = [str(int(u)) for u in ds["location/micrograph_uid"]]
    return _group_picks(np.array(keys, dtype=object), x, y, fom)


# ---------------------------------------------------------------- dispatch

def _star_kind(path: Path, blocks: dict) -> str:
    """'list', 'particles', 'coords', 'cbox' or 'other' from a STAR file's blocks."""
    for df in blocks.values():
        if _has(df, "rlnMicrographName", "rlnMicrographCoordinates"):
            return "list"
        if _has(df, "rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"):
            return "particles"
    for df in blocks.values():
        if _has(df, "rlnCoordinateX", "rlnCoordinateY"):
            return "coords"
        if _has(df, "CoordinateX", "CoordinateY", "Width", "Height"):
            return "cbox"
    if not blocks and _is_empty_star(path):
        return "coords"  # an empty coordinate file
    return "other"


def _read_file(path: Path, per_micrograph_only: bool = False) -> tuple:
    """(kind, {key: Picks}) for one file; per-micrograph formats are keyed by the file's stem.
    ``per_micrograph_only``: a STAR that is not a coordinate file gives ("skip", {})."""
    name = path.name.lower()
    if name.startswith("coords_suffix_") and name.endswith(".star"):
        return "multi", read_coords_suffix(path)
    if name.endswith(".cs"):
        return "multi", read_cryosparc_cs(path)
    if name.endswith(".box"):
        return "single", {name_stem(path.name): read_box(path)}
    if name.endswith(".star") or name.endswith(".cbox"):
        blocks = _read_star(path)  # parsed once: its kind, then its picks
        kind = _star_kind(path, blocks)
        if per_micrograph_only and kind not in ("coords", "cbox"):
            return "skip", {}
        if kind == "list":
            return "multi", read_coordinate_list(path, blocks)
        if kind == "particles":
            return "multi", read_particles_star(path, blocks)
        if kind == "cbox":
            return "single", {name_stem(path.name): read_cbox_like(path, blocks)}
        if kind == "coords":
            return "single", {name_stem(path.name): read_relion_coords(path, blocks)}
        raise CoordinateFileError(
            f"'{path}' is a STAR file without coordinates (no _rlnCoordinateX/Y, no coordinate_files "
            "block); give a coordinate STAR, a particles STAR or autopick.star")
    with open(path, "r", errors="replace") as fh:
        head = fh.readline().split()
    if head[:1] == ["image_name"]:
        return "multi", read_topaz_txt(path)
    raise CoordinateFileError(
        f"'{path}': unknown coordinate format; give a RELION coordinate/particles STAR, autopick.star, "
        "coords_suffix_*.star, EMAN .box, Topaz text (header 'image_name x_coord y_coord score') or a "
        "CryoSPARC .cs")


def _read_directory(root: Path, strip: bool) -> dict:
    """Every per-micrograph coordinate file (``*.star``, ``*.box``, ``*.cbox``) under ``root``."""
    files = sorted(f for ext in ("*.star", "*.box", "*.cbox") for f in root.rglob(ext)
                   if not f.name.startswith(("coords_suffix_", ".")))
    found = []
    for f in files:
        kind, d = _read_file(f, per_micrograph_only=True)
        if kind == "single":  # lists, particles, micrograph STARs and summaries are not per-micrograph files
            found.append((f, next(iter(d.values()))))
    if not found:
        raise CoordinateFileError(
            f"directory '{root}' holds no coordinate files (*.star with _rlnCoordinateX/Y, *.box, *.cbox)")
    stems = [name_stem(f.name) for f, _ in found]
    unique = len(set(stems)) == len(stems)
    out, origin = {}, {}
    for (f, picks), stem in zip(found, stems):
        key = stem if unique else strip_extension(str(f.relative_to(root)).replace("\\", "/"))
        if strip:
            key = strip_pickname(key)
        if key in out:
            raise CoordinateFileError(
                f"'{origin[key]}' and '{f}' are both coordinates of micrograph '{key}'; keep one pick name "
                "per directory")
        out[key], origin[key] = picks, f
    return out


def read_coords(path, micrograph_names=None) -> dict:
    """Read any supported coordinate source into ``{key: Picks}``.

    Sources: a per-micrograph RELION coordinate STAR (key: the file's stem); a directory of them
    (also ``*.box``/``*.cbox``, searched recursively); ``autopick.star``/``manualpick.star`` lists and
    ``coords_suffix_<name>.star`` nodes (key: ``_rlnMicrographName``); a particles STAR (key:
    ``_rlnMicrographName``); EMAN ``.box`` (key: stem); a CBOX-like STAR; Topaz text (key:
    ``image_name``); a CryoSPARC ``.cs`` (key: ``location/micrograph_path``).

    Without ``micrograph_names``, stems from files lose a known pick-name suffix
    (:data:`PICKNAME_SUFFIXES`: ``mic001_autopick.star`` -> ``mic001``). With them, keys are mapped
    onto those names by :func:`match_keys` (a coordinate file belongs to a micrograph when its stem
    starts with the micrograph's stem), which also handles any other pick name.
    """
    path = Path(path)
    if not path.exists():
        raise CoordinateFileError(f"coordinate source '{path}' does not exist; check the path")
    strip = micrograph_names is None
    if path.is_dir():
        out = _read_directory(path, strip)
    else:
        kind, out = _read_file(path)
        if kind == "single" and strip:
            out = {strip_pickname(k): v for k, v in out.items()}
    if micrograph_names is not None:
        out = match_keys(out, micrograph_names)
    return out
