"""Coordinate files: RELION coordinate STAR (written through ``starfile``), EMAN BOX, Topaz text, CBOX-like.

Writers take :class:`hydrapicker.types.Picks` and write atomically. Coordinates are pixels of the
micrograph as stored (x = column, y = row, 0-based).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path, write_text
from .types import Picks

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


def write_star(path, blocks: dict, version: int = 30001) -> None:
    """STAR blocks ({name: DataFrame}) through ``starfile``, atomically, with RELION's ``# version`` line
    in place of starfile's banner (30001 for 3.1/4.x, 50001 for 5.x)."""
    import starfile

    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp)
        lines = Path(tmp).read_text().splitlines(keepends=True)
        body = [ln for ln in lines if not ln.startswith("# Created by the starfile")]
        Path(tmp).write_text(f"\n# version {version}\n" + "".join(body))


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
    with atomic_path(path) as tmp:
        starfile.write({"cryolo": df}, tmp)


# ----------------------------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------------------------
#
# ``read_coords(path, micrograph_names=None) -> {key: Picks}`` recognises every source by its name
# and content (see its docstring). Keys are what the source says about the micrograph (a file stem,
# ``_rlnMicrographName``, a Topaz ``image_name``, a CryoSPARC ``micrograph_path``); ``match_keys``
# maps them onto the names of a micrograph list.

import re  # noqa: E402
import warnings  # noqa: E402

from .errors import StarFileError, UserFacingError  # noqa: E402

#: Pick names stripped from coordinate-file stems when no micrograph names are given
#: (``mic001_autopick.star`` -> ``mic001``).
PICKNAME_SUFFIXES = ("_autopick", "_manualpick", "_hydra", "_topaz", "_cryolo", "_picks", "_pick",
                     "_coords", "_truth")
#: Extensions removed to form a stem; anything else stays (``May08_03.05.02`` keeps its dots).
KNOWN_EXTENSIONS = (".mrc", ".mrcs", ".tif", ".tiff", ".eer", ".dm4", ".ser", ".spi", ".png", ".jpg",
                    ".jpeg", ".star", ".box", ".cbox", ".txt", ".tsv", ".csv", ".coord", ".cs")
#: Separators allowed between a micrograph stem and a pick name in a coordinate-file stem.
_SEPARATORS = "_-."
_JOB_PREFIX = re.compile(r"^(?:.*?/)?job\d{3}/")


class CoordinateFileError(UserFacingError):
    """A coordinate file cannot be read (missing, unknown format, missing columns)."""


class CoordsWarning(UserWarning):
    """Something in a coordinate source was skipped or guessed; reading went on."""


def _warn(msg: str) -> None:
    warnings.warn(msg, CoordsWarning, stacklevel=3)


def strip_extension(name: str) -> str:
    """``name`` without a known image/coordinate extension (``a/b.mrc`` -> ``a/b``; ``x.05.02`` kept)."""
    name = str(name)
    low = name.lower()
    for ext in KNOWN_EXTENSIONS:
        if low.endswith(ext):
            return name[: -len(ext)]
    return name


def name_stem(name: str) -> str:
    """Base name without directory and known extension: ``MotionCorr/job002/Movies/a.mrc`` -> ``a``."""
    return strip_extension(str(name).replace("\\", "/").rsplit("/", 1)[-1])


def strip_job_prefix(name: str) -> str:
    """RELION's ``decomposePipelineFileName``: drop everything up to the first ``jobNNN/`` component.

    ``MotionCorr/job002/Movies/mic001.mrc`` -> ``Movies/mic001.mrc``; a path without one is kept.
    """
    return _JOB_PREFIX.sub("", str(name).replace("\\", "/"), count=1)


def strip_pickname(stem: str) -> str:
    """Remove one known pick-name suffix (:data:`PICKNAME_SUFFIXES`) from a stem."""
    for suffix in PICKNAME_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


# ---------------------------------------------------------------- key matching

def _match_one(key: str, exact: set, by_path: dict, by_stem: dict):
    """The micrograph name for one coordinate key, or None (see :func:`match_keys` for the rule)."""
    if key in exact:
        return key
    path = strip_job_prefix(strip_extension(key))
    for p in (path, strip_pickname(path)):
        hits = by_path.get(p)
        if hits:
            return hits
    stem = name_stem(key)
    hits = by_stem.get(stem)
    if hits:
        return hits
    # Longest micrograph stem that the key's stem starts with, followed by a separator.
    for i in range(len(stem) - 1, 0, -1):
        if stem[i] in _SEPARATORS and stem[:i] in by_stem:
            return by_stem[stem[:i]]
    return None


def match_keys(coords: dict, micrograph_names, *, strict: bool = False) -> dict:
    """Re-key ``coords`` ({key: Picks}) by the micrograph names they belong to.

    Rule, first that applies wins, for each key:

    1. the key equals a micrograph name;
    2. the key's path without extension (and without RELION's ``Type/jobNNN/`` prefix, and without a
       known pick-name suffix) equals a micrograph's path so treated;
    3. the key's stem (base name without a known extension) equals a micrograph's stem;
    4. the key's stem starts with a micrograph's stem followed by ``_``, ``-`` or ``.``
       (``mic001_autopick`` -> ``mic001``; the longest such micrograph stem wins, so ``mic_1_x``
       goes to ``mic_1``, never to ``mic``).

    So truth directories (``mic001.star``), Topaz names without extension, RELION coordinate files
    (``Movies/mic001_autopick.star``) and ``_rlnMicrographName`` all meet. A step that matches several
    micrographs (the same stem in two folders) is an error, as are two keys that land on the same
    micrograph. Keys that match nothing are kept as they are (and are an error when ``strict``).
    """
    names = [str(n) for n in micrograph_names]
    exact = set(names)
    by_path: dict = {}
    by_stem: dict = {}
    for n in names:
        by_path.setdefault(strip_job_prefix(strip_extension(n)), []).append(n)
        by_stem.setdefault(name_stem(n), []).append(n)
    out: dict = {}
    origin: dict = {}
    unmatched = []
    for key, picks in coords.items():
        hit = _match_one(str(key), exact, by_path, by_stem)
        if isinstance(hit, list):
            if len(set(hit)) > 1:
                raise UserFacingError(
                    f"coordinates '{key}' match several micrographs ({', '.join(sorted(set(hit))[:4])}); "
                    "give coordinate files whose names include the micrograph's folder, or rename them")
            hit = hit[0]
        if hit is None:
            unmatched.append(str(key))
            hit = str(key)
        if hit in out:
            raise UserFacingError(
                f"coordinates '{origin[hit]}' and '{key}' both belong to micrograph '{hit}'; "
                "keep one coordinate file per micrograph (e.g. one pick name)")
        out[hit] = picks
        origin[hit] = key
    if unmatched and strict:
        raise UserFacingError(
            f"{len(unmatched)} coordinate key(s) match no micrograph (e.g. '{unmatched[0]}'); "
            "coordinate file stems must start with the micrograph's stem")
    return out


# ---------------------------------------------------------------- helpers

def _require_file(path: Path, what: str = "coordinate file") -> Path:
    if not path.exists():
        raise CoordinateFileError(f"{what} '{path}' does not exist; check the path")
    return path


_LAST_STAR: list = [None, None]  # (path, mtime, size) and blocks of the last STAR read: sniff + read once


def _read_star(path) -> dict:
    """All blocks of a STAR file as DataFrames (single-row key/value blocks become one-row frames)."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
    if _LAST_STAR[0] == key:
        return _LAST_STAR[1]
    out = _parse_star(path)
    _LAST_STAR[:] = [key, out]
    return out


def _parse_star(path) -> dict:
    import starfile

    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises plain exceptions on malformed input
        raise StarFileError(f"cannot read STAR file '{path}': {exc}; is it a valid STAR file?") from exc
    out = {}
    for name, block in blocks.items():
        if isinstance(block, dict):
            block = pd.DataFrame({k: [v] for k, v in block.items()})
        out[name] = block
    return out


def _is_empty_star(path: Path) -> bool:
    """True for a file with nothing but comments, blank lines and ``data_``/``loop_`` headers."""
    for ln in Path(path).read_text(errors="replace").splitlines():
        ln = ln.strip()
        if ln and not ln.startswith("#") and not ln.startswith("data_") and ln != "loop_":
            return False
    return True


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


def _resolve(rel: str, *bases) -> Path | None:
    """First existing ``base/rel`` (the cwd first), or None."""
    p = Path(rel)
    if p.is_absolute():
        return p if p.exists() else None
    for base in (Path.cwd(), *bases):
        if base is None:
            continue
        cand = Path(base) / p
        if cand.exists():
            return cand
    return None


def _project_dir(path: Path) -> Path | None:
    """The RELION project directory of a file inside ``<project>/<Type>/jobNNN/``, if it is one."""
    parts = path.resolve().parts
    for i in range(len(parts) - 1, 0, -1):
        if re.fullmatch(r"job\d{3}", parts[i]) and i >= 2:
            return Path(*parts[: i - 1])
    return None


# ---------------------------------------------------------------- single formats

def read_relion_coords(path) -> Picks:
    """One per-micrograph RELION coordinate STAR (any columns; only X and Y are required).

    RELION reads the first data block; if that block has no coordinates but a later one has, the later
    one is used with a warning (RELION itself would read junk from such a file).
    """
    path = _require_file(Path(path))
    blocks = _read_star(path)
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


def read_particles_star(path) -> dict:
    """A particles STAR (3.1+ with a data_optics block, or older): {_rlnMicrographName: Picks}.

    Coordinates are ``_rlnCoordinateX/Y`` as written (micrograph pixels); origin offsets are ignored.
    """
    path = _require_file(Path(path))
    for df in _read_star(path).values():
        if _has(df, "rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"):
            p = _picks_from_frame(df, path=path)
            return _group_picks(df["rlnMicrographName"].astype(str).to_numpy(), p.x, p.y,
                                p.fom if "rlnAutopickFigureOfMerit" in df.columns else None)
    raise CoordinateFileError(f"'{path}' has no block with _rlnMicrographName and _rlnCoordinateX/Y")


def read_coordinate_list(path) -> dict:
    """RELION 4/5 ``autopick.star`` / ``manualpick.star``: {_rlnMicrographName: Picks}.

    Each ``_rlnMicrographCoordinates`` path is resolved from the current directory (a RELION project
    directory), then from the list's directory, then from the project directory the list lives in.
    Rows whose coordinate file is missing are skipped with a warning.
    """
    path = _require_file(Path(path))
    blocks = _read_star(path)
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
        f = _resolve(rel, path.parent, _project_dir(path))
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

    The node's content is the micrographs STAR path; each micrograph's coordinates are
    ``<node dir>/<mic path without Type/jobNNN/ and extension>_<name>.star``. When the micrographs STAR
    cannot be found, every ``*_<name>.star`` under the node's directory is read instead (warning).
    Micrographs without a coordinate file are skipped (RELION's Extract does the same).
    """
    path = _require_file(Path(path))
    suffix = path.name[len("coords_suffix"):]  # "_autopick.star"
    if not path.name.startswith("coords_suffix_") or not suffix.endswith(".star"):
        raise CoordinateFileError(f"'{path}' is not named coords_suffix_<pickname>.star")
    words = path.read_text(errors="replace").split()
    mics_star = _resolve(words[0], path.parent, _project_dir(path)) if words else None
    root = path.parent
    out = {}
    if mics_star is None:
        _warn(f"'{path}': micrographs STAR '{words[0] if words else ''}' not found (run from the RELION "
              f"project directory); reading every *{suffix} under {root} instead")
        for f in sorted(root.rglob(f"*{suffix}")):
            if f.name.startswith("coords_suffix"):
                continue
            out[str(f.relative_to(root))[: -len(suffix)]] = read_relion_coords(f)
        return out
    missing = 0
    for mic in read_micrograph_names(mics_star):
        f = root / (strip_extension(strip_job_prefix(mic)) + suffix)
        if f.exists():
            out[mic] = read_relion_coords(f)
        else:
            missing += 1
    if missing:
        _warn(f"'{path}': {missing} micrograph(s) of '{mics_star}' have no *{suffix} file; skipped")
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


def read_cbox_like(path) -> Picks:
    """A CBOX-like STAR (crYOLO style; :func:`write_cbox_like`): corner + size -> centre, Confidence -> FOM."""
    path = _require_file(Path(path))
    for df in _read_star(path).values():
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

def _star_kind(path: Path) -> str:
    """'list', 'particles', 'coords', 'cbox' or 'other' from a STAR file's blocks."""
    blocks = _read_star(path)
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


def _read_file(path: Path) -> tuple:
    """(kind, {key: Picks}) for one file; per-micrograph formats are keyed by the file's stem."""
    name = path.name.lower()
    if name.startswith("coords_suffix_") and name.endswith(".star"):
        return "multi", read_coords_suffix(path)
    if name.endswith(".cs"):
        return "multi", read_cryosparc_cs(path)
    if name.endswith(".box"):
        return "single", {name_stem(path.name): read_box(path)}
    if name.endswith(".star") or name.endswith(".cbox"):
        kind = _star_kind(path)
        if kind == "list":
            return "multi", read_coordinate_list(path)
        if kind == "particles":
            return "multi", read_particles_star(path)
        if kind == "cbox":
            return "single", {name_stem(path.name): read_cbox_like(path)}
        if kind == "coords":
            return "single", {name_stem(path.name): read_relion_coords(path)}
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
        if f.suffix.lower() == ".star":
            kind = _star_kind(f)
            if kind not in ("coords", "cbox"):
                continue  # lists, particles, micrograph STARs and summaries are not per-micrograph files
        _, d = _read_file(f)
        (picks,) = d.values()
        found.append((f, picks))
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
