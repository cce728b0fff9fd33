"""Where a RELION job runs: RELION's ``gpu`` value, and several ranks (torchrun) for several GPUs.

``gpu`` = ``0,1,...`` (or ``ranks`` > 1) makes the pick job start itself again under torchrun, one rank per
listed GPU (or CPU ranks with gloo); this process waits and guarantees RELION its exit file.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from hydrapicker.errors import UserFacingError

from .args import ArgumentError
from .driver import LAUNCHED_ENV, log
from .jobdir import EXIT_ABORTED, EXIT_FAILURE, EXIT_SUCCESS, START_ENV, JobAborted


def gpu_ids(gpu: str) -> list[str]:
    """The GPU numbers in RELION's ``gpu`` value (``"0,1"`` -> ``["0", "1"]``; empty, auto, cpu -> [])."""
    g = (gpu or "").strip()
    if g.lower() in ("", "auto", "cpu", "-1"):
        return []
    ids = [s.strip() for s in g.split(",") if s.strip()]
    if not ids or not all(s.isdigit() for s in ids):
        raise ArgumentError(f"--gpu {gpu!r} is not understood; give GPU numbers such as 0 or 0,1, or 'cpu', "
                            "or leave the value empty for automatic choice")
    return ids


def device_from_gpu(gpu: str) -> str:
    """The device of a single-process job: auto, cpu or the first listed GPU."""
    g = (gpu or "").strip()
    if g.lower() in ("", "auto"):
        return "auto"
    if g.lower() in ("cpu", "-1"):
        return "cpu"
    return f"cuda:{gpu_ids(g)[0]}"


def ranks_wanted(opts) -> int:
    """How many processes pick: ``ranks`` if given, else one per listed GPU."""
    return opts["ranks"] or max(1, len(gpu_ids(opts["gpu"])))


def rank_device(gpu: str) -> str:
    """Under torchrun: this rank's device (GPU number LOCAL_RANK of the list, auto, or the CPU)."""
    from hydrapicker import distributed

    return distributed.init(",".join(gpu_ids(gpu)) or device_from_gpu(gpu))


def rank_command(argv: list[str], n: int) -> list[str]:
    """The command that runs this job in ``n`` ranks (torchrun, one machine)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
            "-m", "relion_hydra.pick_job", *argv]


def launch_ranks(argv: list[str], opts: dict, job, n: int, prog: str) -> None:
    """Run the job in ``n`` torchrun ranks and wait; returns on success, raises otherwise.

    The ranks write the outputs and (rank 0) the exit file. An abort file is seen by every rank, which then
    writes its finished work; a signal to this process is passed on. If the ranks end without an exit file
    (a rank crashed and torchrun stopped the others), the error raised here makes the driver write
    RELION_JOB_EXIT_FAILURE, so RELION never waits for ever.
    """
    import signal
    import subprocess

    ids = gpu_ids(opts["gpu"])
    if ids:
        import torch

        if not torch.cuda.is_available():
            raise UserFacingError(f"gpu = {opts['gpu']}: CUDA is not available on this machine; leave 'gpu' "
                                  "empty or set it to cpu")
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, LAUNCHED_ENV: "1", START_ENV: repr(job.started),  # abort files older: stale
           "OMP_NUM_THREADS": str(max(1, opts["j"] // n)),
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    cmd = rank_command(argv, n)
    where = f"GPUs {','.join(ids[i % len(ids)] for i in range(n))}" if ids else "CPU"
    log(f"{prog}: picking with {n} ranks on {where}: {' '.join(cmd)}")
    proc = subprocess.Popen(cmd, env=env)
    while True:
        try:
            rc = proc.wait()
            break
        except JobAborted:
            if (job.abort_reason or "").startswith("signal"):
                proc.send_signal(signal.SIGTERM)  # an abort file the ranks see for themselves
            log(f"{prog}: abort: waiting for the ranks to write the finished work")
    if (job.path / EXIT_SUCCESS).exists():
        return
    if (job.path / EXIT_ABORTED).exists():
        raise JobAborted(job.abort_reason or "aborted in the ranks")
    if (job.path / EXIT_FAILURE).exists():
        raise UserFacingError(f"the job failed in its ranks (torchrun exit code {rc}); the error is above")
    raise UserFacingError(f"the {n} ranks ended without finishing the job (torchrun exit code {rc}); the failing "
                          "rank's error is above in run.err")
