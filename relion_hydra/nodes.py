"""The job-level STAR files RELION's pipeline reads: output nodes, coordinate lists, summary.

* ``RELION_OUTPUT_NODES.star``: block ``data_output_nodes`` with ``_rlnPipeLineNodeName``,
  ``_rlnPipeLineNodeType`` (3.1 reads this integer) and ``_rlnPipeLineNodeTypeLabel`` (4.x/5.x read
  this string). 3.1 lists ``coords_suffix_<pickname>.star``; 4.x/5.x list ``autopick.star`` with the
  version's own coordinate label (4.x ``MicrographsCoords...``, 5.x ``MicrographCoordsGroup...``).
* ``coords_suffix_<pickname>.star``: one line, the input micrographs STAR (3.1's coordinates node).
* ``autopick.star``: block ``data_coordinate_files`` (``_rlnMicrographName`` exactly as in the input
  STAR, ``_rlnMicrographCoordinates``), what 4.x/5.x Extract reads with ``--coord_list``.
* ``summary.star``: micrograph name, number of picks, mean FOM.
STAR files are written through ``starfile`` (:func:`hydrapicker.star.write_star`: atomically, with
RELION's ``# version`` line, ``loop_`` and ``#N`` labels); the coords_suffix file is plain text.
"""
from __future__ import annotations

from typing import Optional, Sequence

import pandas as pd

from hydrapicker.atomic import write_text
from hydrapicker.star import write_star

from .paths import coords_suffix_file, job_dir_with_slash

# 3.1 integer node types (pipeline_jobs.h 3.1.3)
NODE_COORDS_31 = 2
NODE_PDF_LOGFILE_31 = 13

COORDS_LABEL = {
    "3.1": "MicrographsCoords.star.relion.autopick",  # ignored by 3.1 (kept for a later upgrade)
    "4": "MicrographsCoords.star.relion.autopick",
    "5": "MicrographCoordsGroup.star.relion.autopick",
}
LOGFILE_LABEL = "LogFile.pdf.relion.autopick"

OUTPUT_NODES = "RELION_OUTPUT_NODES.star"
COORD_LIST = "autopick.star"
SUMMARY = "summary.star"
LOGFILE = "logfile.pdf"


NODE_COLUMNS = ["rlnPipeLineNodeName", "rlnPipeLineNodeType", "rlnPipeLineNodeTypeLabel"]


def output_nodes_frame(nodes: Sequence[tuple[str, int, str]]) -> pd.DataFrame:
    """``data_output_nodes``: (name, 3.1 integer type, 4.x/5.x label) per node."""
    df = pd.DataFrame([tuple(n) for n in nodes], columns=NODE_COLUMNS)
    return df.astype({"rlnPipeLineNodeName": str, "rlnPipeLineNodeType": int,
                      "rlnPipeLineNodeTypeLabel": str})


def pick_output_nodes(job_dir: str, pickname: str, version: str, with_logfile: bool = True) -> list:
    """The nodes a pick job registers for RELION ``version`` ("3.1", "4" or "5")."""
    d = job_dir_with_slash(job_dir)
    if version == "3.1":
        nodes = [(f"{d}coords_suffix_{pickname}.star", NODE_COORDS_31, COORDS_LABEL["3.1"])]
    else:
        nodes = [(f"{d}{COORD_LIST}", NODE_COORDS_31, COORDS_LABEL[version])]
    if with_logfile:
        nodes.append((f"{d}{LOGFILE}", NODE_PDF_LOGFILE_31, LOGFILE_LABEL))
    return nodes


def write_output_nodes(job_dir: str, version: str, nodes) -> str:
    path = job_dir_with_slash(job_dir) + OUTPUT_NODES
    write_star(path, {"output_nodes": output_nodes_frame(nodes)}, 30001 if version != "5" else 50001)
    return path


def write_coords_suffix(job_dir: str, pickname: str, in_mics: str) -> str:
    """3.1's coordinates node: its only content is the micrographs STAR path (for the Display button)."""
    path = coords_suffix_file(job_dir, pickname)
    write_text(path, in_mics + "\n")
    return path


def write_coord_list(path: str, rows: Sequence[tuple[str, str]], star_version: int) -> str:
    """``data_coordinate_files``: (micrograph name as in --in_mics, coordinate STAR path) per row."""
    df = pd.DataFrame([tuple(r) for r in rows], columns=["rlnMicrographName", "rlnMicrographCoordinates"])
    write_star(path, {"coordinate_files": df.astype(str)}, star_version)
    return path


THRESHOLD_LABEL = "hydraThreshold"  # summary.star, threshold = auto: each micrograph's cut-off (no RELION label)


def write_summary(path: str, rows: Sequence[tuple[str, int, float]], star_version: int,
                  thresholds: Optional[dict] = None) -> str:
    """``data_summary``: micrograph name, number of picks (at or above the threshold) and their mean
    FOM, with the labels RELION's own AutoPick uses in its summary.star. ``thresholds`` ({name: threshold},
    ``threshold = auto``) adds ``_hydraThreshold`` (-1 where unknown); RELION has no label for it and reads
    no External job's summary (3.1 readers warn about, and keep, an unknown label)."""
    df = pd.DataFrame({"rlnMicrographName": [str(n) for n, _, _ in rows],
                       "rlnGroupNrParticles": pd.Series([int(k) for _, k, _ in rows], dtype=int),
                       "rlnAutopickFigureOfMerit": pd.Series([float(f) for _, _, f in rows], dtype=float)})
    if thresholds is not None:
        df[THRESHOLD_LABEL] = pd.Series([float(thresholds.get(str(n), -1.0)) for n, _, _ in rows], dtype=float)
    write_star(path, {"summary": df}, star_version)  # floats as %.6f (starfile's default)
    return path
