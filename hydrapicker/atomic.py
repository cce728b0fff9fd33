"""Write files atomically: to a temporary file in the same directory, then ``os.replace``.

A job that is killed half-way never leaves a half-written output behind.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

# what atomic_path names its temporary files: "." + target name + ".tmp." + mkstemp's 8 characters + suffix
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.tmp\.[a-z0-9_]{8}(?P<suffix>.*)$")


def _umask() -> int:
    """The process umask, read without changing it where Linux tells (/proc), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    ``suffix`` defaults to the target's suffix, so libraries that pick a format by extension
    (mrcfile, matplotlib, numpy) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp.",
                               suffix=suffix if suffix is not None else path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); give it the mode a plain open() would, so that the
        # rest of a facility's group can read the picks
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def is_temp_name(name: str) -> bool:
    """True for a name :func:`atomic_path` gives its temporary files (and only for those)."""
    m = _TEMP_NAME.match(name)
    return bool(m) and m.group("suffix") == Path(m.group("target")).suffix


def clean_stale_temps(folder) -> int:
    """Remove the temporary files a killed run of ours left under ``folder`` (``kill -9`` during a write);
    call it only when no other run writes there (after taking the folder's lock). Returns how many."""
    n = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            if name.startswith(".") and is_temp_name(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, name))
                    n += 1
    return n
