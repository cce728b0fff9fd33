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


def coord_path(job_dir: str, mic_name: str, pickname: str) -> str:
    """Where RELION expects the coordinates of ``mic_name`` (relative to the project directory)."""
    return job_dir_with_slash(job_dir) + without_extension(strip_job_prefix(mic_name)) + f"_{pickname}.star"


def coords_suffix_file(job_dir: str, pickname: str) -> str:
    """3.1's coordinates node of a pick job: ``<job dir>coords_suffix_<pickname>.star``."""
    return job_dir_with_slash(job_dir) + f"coords_suffix_{pickname}.star"
