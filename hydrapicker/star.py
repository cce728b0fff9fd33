"""STAR files, once: reading every block through ``starfile`` (bad files give one-line errors) and writing
atomically with RELION's ``# version`` line in place of starfile's banner."""
from __future__ import annotations

from pathlib import Path

from .errors import StarFileError


def read_blocks(path, hint: str = "is it a valid STAR file?") -> dict:
    """All blocks of a STAR file: {name: DataFrame}; key/value blocks become one-row frames.

    A file that starfile cannot parse raises :class:`StarFileError` naming the file and ``hint``.
    """
    import pandas as pd
    import starfile

    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises plain exceptions on malformed input
        raise StarFileError(f"cannot read STAR file '{path}': {exc}; {hint}") from exc
    return {name: pd.DataFrame({k: [v] for k, v in b.items()}) if isinstance(b, dict) else b
            for name, b in blocks.items()}


def is_empty(path) -> bool:
    """True for a file with nothing but comments, blank lines and ``data_``/``loop_`` headers."""
    for ln in Path(path).read_text(errors="replace").splitlines():
        ln = ln.strip()
        if ln and not ln.startswith("#") and not ln.startswith("data_") and ln != "loop_":
            return False
    return True


def to_text(blocks: dict, version: int = 30001) -> str:
    """STAR text of ``blocks`` ({name: DataFrame}) with RELION's ``# version`` line (30001 for 3.1/4.x,
    50001 for 5.x) instead of starfile's banner."""
    import starfile

    text = starfile.to_string(blocks)
    first, _, rest = text.partition("\n")
    body = rest if first.startswith("# Created by the starfile") else text
    return f"\n# version {version}\n" + body


def write_star(path, blocks: dict, version: int = 30001) -> None:
    """:func:`to_text` of ``blocks``, written atomically."""
    from .atomic import write_text

    write_text(path, to_text(blocks, version))
