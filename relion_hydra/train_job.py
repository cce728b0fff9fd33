"""relion_hydra_train: train a few-shot HydraPicker head from manual picks, as a RELION External job.

RELION calls (project directory as cwd)::

    relion_hydra_train --o External/job005/ --in_mics Select/job004/micrographs.star \\
        --in_coords ManualPick/job004/coords_suffix_manualpick.star \\
        --particle_diameter 160 --head_name myprotein [--model base.pt] [--epochs 30] [--gpu 0] --j 4

``--in_coords``: 3.1 ``coords_suffix_manualpick.star``, 4.x/5.x ``manualpick.star``/``autopick.star``, or a
particles STAR. Only micrographs that have a coordinate file are used for training. Writes
``<o>model.pt`` (the base model's heads plus the new one): give it to relion_hydra_pick as
``model`` with ``head`` = the new head's name.
"""
from __future__ import annotations

import re
import sys

from hydrapicker.errors import UserFacingError

from .args import Param
from .driver import log, run
from .ranks import device_from_gpu

PROG = "relion_hydra_train"
MODEL_FILE = "model.pt"
PARAMS = (
    Param("in_mics", str, None, True, "micrographs STAR (RELION's 'Input micrographs' field)"),
    Param("in_coords", str, None, True, "manual picks (RELION's 'Input coordinates' field)"),
    Param("particle_diameter", float, None, True, "particle diameter in Angstrom", positive=True),
    Param("head_name", str, None, True, "name of the new head (letters, digits, '_', '-')"),
    Param("model", str, None, False, "base model file (default: the shipped generic model)"),
    Param("epochs", int, None, False, "training epochs (default: the few-shot recipe's)", positive=True),
    Param("gpu", str, "", False, "GPU id, e.g. 0 (empty: first GPU if any, else CPU; 'cpu': CPU)"),
    Param("relion_version", str, None, False, "accepted for symmetry with the pick job; unused"),
)


def train(opts, job, state):
    from hydrapicker.finetune import finetune
    from hydrapicker.micrographs import read_micrographs_star

    from .coordfiles import read_coords_node

    if not re.fullmatch(r"[A-Za-z0-9_\-]+", opts["head_name"]):
        raise UserFacingError(f"--head_name {opts['head_name']!r}: use letters, digits, '_' or '-' only")
    device = device_from_gpu(opts["gpu"])
    if device != "auto":
        extra = " (a few-shot head trains on one GPU: the first listed)" if "," in opts["gpu"] else ""
        log(f"device {device}{extra}")
    mics = read_micrographs_star(opts["in_mics"])
    coords = read_coords_node(opts["in_coords"], [m.name for m in mics])
    labelled = [m for m in mics if m.name in coords]
    n = sum(len(p) for p in coords.values())
    log(f"{PROG}: {len(labelled)} of {len(mics)} micrographs have coordinates in {opts['in_coords']} "
        f"({n} particles)")
    if not labelled or n == 0:
        raise UserFacingError(f"no particle coordinates found in {opts['in_coords']} for the micrographs of "
                              f"{opts['in_mics']}; pick some particles (ManualPick) and give that job's "
                              "coordinates as input")
    out = finetune(opts["model"], labelled, coords, diameter_A=opts["particle_diameter"],
                   head_name=opts["head_name"], epochs=opts["epochs"], out=job.name + MODEL_FILE,
                   log=log, should_stop=job.should_stop, device=device)
    if job.should_stop():
        from .jobdir import JobAborted
        raise JobAborted(job.abort_reason)
    log(f"model written: {out}  (pick job: model = {out}, head = {opts['head_name']})")


def main(argv=None) -> int:
    """Run the train job; returns 0 success, 1 failure, 3 aborted (RELION reads the exit files)."""
    return run(sys.argv[1:] if argv is None else argv, PROG, PARAMS, __doc__.strip().splitlines()[0], train)


def entry_point():
    sys.exit(main())
