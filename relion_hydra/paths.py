"""RELION's output path convention for per-micrograph coordinate files.

``<job dir><micrograph name without its leading "Type/jobNNN/" and without extension>_<pickname>.star``
e.g. ``MotionCorr/job002/Movies/mic001.mrc`` -> ``External/job004/Movies/mic001_autopick.star``.
This mirrors RELION's ``decomposePipelineFileName`` + ``withoutExtension`` (what ``relion_autopick``
writes and what ``relion_preprocess --coord_dir/--coord_suffix`` looks for), so it is plain string
concatenation, exactly like RELION's, not path joining.
"""
from __future__ import annotations

import re

# A path component "jobNNN" after some "Type/": RELION checks "/job" + three digits.
_JOB_COMPONENT = re.compile(r"/job\d{3}")


def job_dir_with_slash(job_dir: str) -> str:
    return job_dir if job_dir.endswith("/") else job_dir + "/"


def strip_job_prefix(mic_name: str) -> str:
    """Drop everything up to and including the first ``.../jobNNN.../`` component (kept whole if none)."""
    m = _JOB_COMPONENT.search(mic_name, 0)
    while m is not None:
        if m.start() > 0:  # RELION starts looking after position 0
            end = mic_name.find("/", m.start() + 6)
            if end < 0:
                return mic_name
            return mic_name[end + 1:]
        m = _JOB_COMPONENT.search(mic_name, m.start() + 1)
    return mic_name


def without_extension(name: str) -> str:
    """RELION's ``FileName::withoutExtension``: cut at the last dot, wherever it is."""
    dot = name.rfind(".")
    return name if dot < 0 else name[:dot]


ESCAPED_DIR = "outside_project/"  # coordinates of micrographs whose name leaves the job directory


def escapes(mic_name: str) -> bool:
    """True when RELION's rule would put the coordinates of ``mic_name`` outside the job directory (a
    ``..`` component in the part of the name that is kept)."""
    return ".." in without_extension(strip_job_prefix(mic_name)).split("/")


def coord_path(job_dir: str, mic_name: str, pickname: str) -> str:
    """Where RELION expects the coordinates of ``mic_name`` (relative to the project directory).

    A name whose kept part has ``..`` components (``../../x/m.mrc``) would leave the job directory:
    its file goes to ``<job dir>outside_project/<the name without them>.<8 hex digits of the name's
    SHA-1>_<pickname>.star`` instead, inside the job directory and distinct for distinct names (the
    list file names it, which is how RELION 4.x/5.x find coordinates)."""
    rel = without_extension(strip_job_prefix(mic_name))
    if escapes(mic_name):
        import hashlib

        kept = "/".join(p for p in rel.split("/") if p not in ("", ".", ".."))
        rel = f"{ESCAPED_DIR}{kept}.{hashlib.sha1(mic_name.encode()).hexdigest()[:8]}"
    return job_dir_with_slash(job_dir) + rel + f"_{pickname}.star"


def coords_suffix_file(job_dir: str, pickname: str) -> str:
    """3.1's coordinates node of a pick job: ``<job dir>coords_suffix_<pickname>.star``."""
    return job_dir_with_slash(job_dir) + f"coords_suffix_{pickname}.star"
