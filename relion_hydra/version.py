"""Which RELION runs us: 3.1, 4.x or 5.x (they want different output node types).

Evidence, in order: an explicit ``--relion_version`` parameter; the job directory's ``job.star``
(``_rlnJobType`` = 3.1, ``_rlnJobTypeLabel`` = 4.x/5.x, told apart by its ``# version 50001`` line);
the project's ``default_pipeline.star`` (same markers); the input STAR's ``# version`` line (50001 =
5.x). 3.1 and 4.x both write ``# version 30001``, so without a ``job.star`` they cannot be told
apart from the inputs alone: then 3.1 is assumed and said so.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from hydrapicker.errors import UserFacingError

VERSIONS = ("3.1", "4", "5")
_VERSION_LINE = re.compile(r"^#\s*version\s+(\d+)")


def normalise(text: str) -> str:
    """``"3"``, ``"3.1.3"`` -> ``"3.1"``; ``"4.0.2"``, ``"4.x"`` -> ``"4"``; ``"5.0"`` -> ``"5"``."""
    t = str(text).strip().lower().lstrip("v")
    major = t.split(".")[0]
    if major == "3":
        return "3.1"
    if major in ("4", "5"):
        return major
    raise UserFacingError(f"--relion_version {text!r} is not understood; use 3.1, 4 or 5 "
                          "(or leave it out to detect it from the job's job.star)")


def star_version_line(path) -> Optional[int]:
    """The number in a STAR file's ``# version NNNNN`` comment (within its first lines), or None."""
    try:
        with open(path, errors="replace") as fh:
            for _, line in zip(range(20), fh):
                m = _VERSION_LINE.match(line.strip())
                if m:
                    return int(m.group(1))
    except OSError:
        return None
    return None


def _from_relion_star(path, type_int_label: str, type_str_label: str) -> Optional[str]:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None
    has_label = re.search(rf"_{type_str_label}\b", text) is not None
    has_int = re.search(rf"_{type_int_label}\b", text) is not None
    if has_label:
        return "5" if (star_version_line(path) or 0) >= 50000 else "4"
    if has_int:
        return "3.1"
    return None


def detect(job_dir, in_star=None, override: Optional[str] = None, project_dir=".") -> tuple[str, str]:
    """Return ``(version, reason)`` with version one of ``"3.1"``, ``"4"``, ``"5"``."""
    if override:
        return normalise(override), "from the relion_version parameter"
    job_star = Path(job_dir) / "job.star"
    v = _from_relion_star(job_star, "rlnJobType", "rlnJobTypeLabel")
    if v:
        return v, f"detected from {job_star}"
    pipeline = Path(project_dir) / "default_pipeline.star"
    v = _from_relion_star(pipeline, "rlnPipeLineProcessType", "rlnPipeLineProcessTypeLabel")
    if v:
        return v, f"detected from {pipeline}"
    if in_star is not None and (star_version_line(in_star) or 0) >= 50000:
        return "5", f"detected from the '# version' line of {in_star}"
    return "3.1", ("assumed: no job.star or default_pipeline.star to detect it from; "
                   "set the parameter relion_version to 4 or 5 if that is wrong")


def star_version_number(version: str) -> int:
    """The ``# version`` number RELION writes in its STAR files."""
    return 50001 if version == "5" else 30001
