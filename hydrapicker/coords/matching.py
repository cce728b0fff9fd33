"""Which micrograph a coordinate key belongs to (:func:`match_keys`), and the name rules it uses."""
from __future__ import annotations

from ..errors import UserFacingError

#: Pick names stripped from coordinate-file stems when no micrograph names are given
#: (``mic001_autopick.star`` -> ``mic001``).
PICKNAME_SUFFIXES = ("_autopick", "_manualpick", "_hydra", "_topaz", "_cryolo", "_picks", "_pick",
                     "_coords", "_truth")
#: Extensions removed to form a stem; anything else stays (``May08_03.05.02`` keeps its dots).
KNOWN_EXTENSIONS = (".mrc", ".mrcs", ".tif", ".tiff", ".eer", ".dm4", ".ser", ".spi", ".png", ".jpg",
                    ".jpeg", ".star", ".box", ".cbox", ".txt", ".tsv", ".csv", ".coord", ".cs")
#: Separators allowed between a micrograph stem and a pick name in a coordinate-file stem.
_SEPARATORS = "_-."


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


def strip_pickname(stem: str) -> str:
    """Remove one known pick-name suffix (:data:`PICKNAME_SUFFIXES`) from a stem."""
    for suffix in PICKNAME_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def _tails(path: str) -> list:
    """Trailing parts of a path, longest first: ``a/b/c`` -> ``a/b/c``, ``b/c``, ``c``."""
    parts = [p for p in str(path).replace("\\", "/").split("/") if p not in ("", ".")]
    return ["/".join(parts[i:]) for i in range(len(parts))]


def _match_one(key: str, exact: set, by_tail: dict, by_stem: dict):
    """The micrograph name(s) for one coordinate key, or None (see :func:`match_keys` for the rule)."""
    if key in exact:
        return key
    path = strip_extension(key)
    for p in (path, strip_pickname(path)):
        for tail in _tails(p):
            hits = by_tail.get(tail)
            if hits:
                return hits
    stem = name_stem(key)
    # Longest micrograph stem that the key's stem starts with, followed by a separator.
    for i in range(len(stem) - 1, 0, -1):
        if stem[i] in _SEPARATORS and stem[:i] in by_stem:
            return by_stem[stem[:i]]
    return None


def match_keys(coords: dict, micrograph_names, *, strict: bool = False) -> dict:
    """Re-key ``coords`` ({key: Picks}) by the micrograph names they belong to.

    Rule, first that applies wins, for each key:

    1. the key equals a micrograph name;
    2. the longest trailing part of the key's path without extension (and then without a known
       pick-name suffix) that is a trailing part of micrographs' paths without extension
       (``External/job004/Movies/mic001_autopick.star`` and ``Movies/mic001`` -> the micrograph
       ``MotionCorr/job002/Movies/mic001.mrc``; a bare stem is the shortest such part);
    3. the key's stem starts with a micrograph's stem followed by ``_``, ``-`` or ``.``
       (``mic001_autopick`` -> ``mic001``; the longest such micrograph stem wins, so ``mic_1_x``
       goes to ``mic_1``, never to ``mic``).

    So truth directories (``mic001.star``), Topaz names without extension, RELION coordinate files
    and ``_rlnMicrographName`` all meet. A step that matches several micrographs (the same stem in two
    folders) is an error, as are two keys that land on the same micrograph. Keys that match nothing are
    kept as they are (and are an error when ``strict``).
    """
    names = [str(n) for n in micrograph_names]
    exact = set(names)
    by_tail: dict = {}
    by_stem: dict = {}
    for n in names:
        for tail in _tails(strip_extension(n)):
            by_tail.setdefault(tail, []).append(n)
        by_stem.setdefault(name_stem(n), []).append(n)
    out: dict = {}
    origin: dict = {}
    unmatched = []
    for key, picks in coords.items():
        hit = _match_one(str(key), exact, by_tail, by_stem)
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
