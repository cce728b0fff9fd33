"""STAR files, once: reading every block through ``starfile`` (bad files give one-line errors) and writing
atomically with RELION's ``# version`` line in place of starfile's banner."""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

from .errors import StarFileError


def read_blocks(path, hint: str = "is it a valid STAR file?") -> dict:
    """All blocks of a STAR file: {name: DataFrame}; key/value blocks become one-row frames.

    A file that starfile cannot parse raises :class:`StarFileError` naming the file and ``hint``.
    """
    import pandas as pd
    import starfile

    try:
        with _literal_apostrophes(path) as readable:
            blocks = starfile.read(readable, always_dict=True)
    except StarFileError:
        raise
    except Exception as exc:  # starfile raises plain exceptions on malformed input
        raise StarFileError(f"cannot read STAR file '{path}': {exc}; {hint}") from exc
    blocks = {name: pd.DataFrame({k: [v] for k, v in b.items()}) if isinstance(b, dict) else b
              for name, b in blocks.items()}
    if readable != path:
        blocks = {name: _restore_apostrophes(b) for name, b in blocks.items()}
    return blocks


_APOSTROPHE = "\ue000"  # a private-use character standing in for a literal ' while starfile parses
_QUOTED = re.compile(r"(?:(?<=\s)|^)'.*?'(?=\s|$)")  # a token quoted with ': STAR's quoting


def _protect_line(line: str) -> str:
    """``line`` with every apostrophe that is not a STAR quote replaced by :data:`_APOSTROPHE`."""
    out, pos = [], 0
    for m in _QUOTED.finditer(line):
        out.append(line[pos:m.start()].replace("'", _APOSTROPHE))
        out.append(m.group(0))
        pos = m.end()
    out.append(line[pos:].replace("'", _APOSTROPHE))
    return "".join(out)


@contextlib.contextmanager
def _literal_apostrophes(path):
    """Yield a path starfile reads correctly: ``path`` itself, or for a file with apostrophes a temporary
    copy in which those inside names are protected. starfile turns every ``'`` into ``"`` (``it's.mrc`` ->
    ``it"s.mrc``, or a "No closing quotation" error); RELION reads them literally."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise StarFileError(f"cannot read STAR file '{path}': {exc.strerror or exc}") from exc
    if b"'" not in raw:
        yield path
        return
    text = raw.decode("utf-8", errors="surrogateescape")
    if _APOSTROPHE in text:
        yield path  # cannot protect; starfile's reading as it is
        return
    protected = "\n".join(_protect_line(ln) for ln in text.split("\n"))
    fd, tmp = tempfile.mkstemp(prefix=".hydrapicker-star.", suffix=".star")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write(protected)
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _restore_apostrophes(df):
    import pandas as pd

    for col in df.columns:
        if not pd.api.types.is_numeric_dtype(df[col]):
            df[col] = [v.replace(_APOSTROPHE, "'") if isinstance(v, str) else v for v in df[col]]
    return df


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
