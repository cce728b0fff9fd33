"""Where ``hydra pick`` writes the picks of each micrograph: one rule, and it cannot collide.

A micrograph's output stem is its path relative to the deepest folder that holds every micrograph of the
run, without the extension: ``Micrographs/x.mrc`` -> ``x``, but ``a/x.mrc`` and ``b/x.mrc`` (one run) ->
``a/x`` and ``b/x``. Micrographs of one folder (the usual case) keep their bare stem; names with dots
(``May08_03.05.02.mrc``) lose only the last suffix; two files that differ only in their extension keep it. Inside a RELION project the RELION job uses RELION's
own rule instead (:mod:`relion_hydra.paths`).
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath


def output_stems(names) -> dict:
    """{micrograph name: output stem (posix, relative)} for every name of one run."""
    names = list(dict.fromkeys(names))
    if not names:
        return {}
    full = {n: os.path.normpath(os.path.abspath(n)) for n in names}
    root = os.path.commonpath([os.path.dirname(p) for p in full.values()])
    rel = {n: PurePosixPath(*Path(os.path.relpath(p, root)).parts) for n, p in full.items()}
    stems = {n: str(r.with_name(r.stem)) if r.suffix else str(r) for n, r in rel.items()}
    taken = [s for s in stems.values()]
    # x.mrc next to x.tif: both keep their extension
    return {n: (str(rel[n]) if taken.count(s) > 1 else s) for n, s in stems.items()}


def output_path(out_dir, stem: str, suffix: str, ext: str) -> Path:
    """``<out>/<stem>_<suffix><ext>`` for a stem of :func:`output_stems`."""
    return Path(out_dir) / f"{stem}_{suffix}{ext}"
