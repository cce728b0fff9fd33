"""The frame both External-job programs share: help, ``--o``, exit files, abort, error reporting.

Whatever happens, exactly one of RELION's exit files is written (otherwise the job would stay
"Running" for ever): user errors print one clear line to run.err, bugs a traceback, aborts end in
``RELION_JOB_EXIT_ABORTED`` after the outputs of the finished work have been written.

Under torchrun only rank 0 touches the exit files (and, unless a launcher process already did, clears
the old ones); the other ranks report errors and end with their exit code, which torchrun passes on.
"""
from __future__ import annotations

import errno
import os
import sys
import time
import traceback

from hydrapicker.errors import UserFacingError

from .args import ArgumentError, parse, split_argv, usage, wants_help
from .jobdir import EXIT_ABORTED, EXIT_FAILURE, EXIT_SUCCESS, JobAborted, JobDir


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
LAUNCHED_ENV = "HYDRAPICKER_RELION_LAUNCHED"  # set by a job that started its ranks itself (torchrun)


def log(*parts):
    print(*parts, flush=True)


def warn(msg):
    print(f"WARNING: {msg}", flush=True)
    print(f"WARNING: {msg}", file=sys.stderr, flush=True)


def _peek_job_dir(argv) -> str | None:
    try:
        return split_argv(argv).get("o")
    except ArgumentError:
        for a, b in zip(argv, argv[1:]):
            if a == "--o":
                return b
    return None


def run(argv, prog, params, summary, work) -> int:
    """Shared driver of both RELION programs: help, exit files, abort, error reporting.

    ``work(opts, job, state)`` does the job; it may put ``state["finish"] = finish`` where
    ``finish(aborted) -> bool`` writes the final outputs (also after an abort; False = the job failed).
    Returns 0 success, 1 failure, 3 aborted; rank 0 writes the exit file."""
    argv = list(argv)
    if wants_help(argv):
        print(usage(params, prog, summary))
        return 0
    job_dir = _peek_job_dir(argv)
    if not job_dir:
        print(f"{prog}: error: --o <job directory> is required (RELION sets it)", file=sys.stderr)
        return 2
    job = JobDir(job_dir)
    from hydrapicker.distributed import rank_world

    rank = rank_world()[0]
    if rank == 0 and not os.environ.get(LAUNCHED_ENV):
        job.start()
    if rank == 0:
        log(f"{prog} started {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {' '.join(argv)}")
    state = {}
    try:
        try:
            with job.interruptible():
                opts = parse(argv, params, prog)
                work(opts, job, state)
            status = EXIT_SUCCESS
        except JobAborted as exc:
            log(f"aborting: {exc}")
            status = EXIT_ABORTED
        finish = state.get("finish")
        if finish is not None:
            ok = finish(aborted=status == EXIT_ABORTED)
            if status == EXIT_SUCCESS and not ok:
                status = EXIT_FAILURE
    except UserFacingError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        log(f"{prog}: error: {exc}")
        status = EXIT_FAILURE
    except OSError as exc:
        if exc.errno in _STORAGE_ERRNOS:  # the file system, not a bug: one line
            msg = (f"cannot write {exc.filename or 'in the job directory'}: {exc.strerror or exc}; nothing "
                   "half-written is left: free space (or fix the folder) and Continue the job")
        else:
            traceback.print_exc(file=sys.stderr)
            msg = f"{type(exc).__name__}: {exc}"
        print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)
        log(f"{prog}: error: {msg}")
        status = EXIT_FAILURE
    except Exception as exc:  # a bug or an environment problem: full traceback in run.err
        traceback.print_exc(file=sys.stderr)
        print(f"{prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        status = EXIT_FAILURE
    if rank == 0:
        job.finish(status)
    job.restore_signals()
    if rank == 0:
        log(f"{prog} finished: {status}")
    return {EXIT_SUCCESS: 0, EXIT_FAILURE: 1, EXIT_ABORTED: 3}[status]


