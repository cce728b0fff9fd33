"""The job directory's life cycle: exit files, abort (file or SIGTERM), the done list for Continue.

RELION considers an External job finished only when ``RELION_JOB_EXIT_SUCCESS``, ``..._FAILURE`` or
``..._ABORTED`` appears in the job directory (the exit code is ignored; without one of them the job
stays "Running" forever). The GUI aborts by touching ``RELION_JOB_ABORT_NOW``; a scheduler or a user
may send SIGTERM. Both end in ``RELION_JOB_EXIT_ABORTED``: a watcher thread polls the abort file every
``poll_s`` seconds and interrupts the main thread, so even a long micrograph is left within seconds.
An abort file counts only if it is not older than the job (the process's start, or the launching
process's for torchrun ranks): one left by an earlier aborted run is removed at start, one the user
touched in the job's first moments (before our imports finished) aborts it.
Outputs are written atomically, so an interrupted job directory is always consistent.

Continue: RELION reruns the same command in the same directory, so the job is incremental. Each
finished micrograph is appended to ``done_mics.txt`` (after its coordinate file was written) together
with a fingerprint of the pick settings; a rerun skips micrographs that are listed *and* whose
coordinate file exists. If the settings changed, everything is picked again. When several ranks pick
(torchrun), rank R > 0 appends to ``done_mics.rankR.txt`` instead (one writer per file); every reader
merges those files, and rewriting the done list folds them back into it.
"""
from __future__ import annotations

import _thread
import contextlib
import os
import signal
import threading
import time
from pathlib import Path

from .paths import job_dir_with_slash

EXIT_SUCCESS = "RELION_JOB_EXIT_SUCCESS"
EXIT_FAILURE = "RELION_JOB_EXIT_FAILURE"
EXIT_ABORTED = "RELION_JOB_EXIT_ABORTED"
ABORT_NOW = "RELION_JOB_ABORT_NOW"
DONE_LIST = "done_mics.txt"
RANK_DONE = "done_mics.rank{rank}.txt"
RANK_DONE_GLOB = "done_mics.rank*.txt"
START_ENV = "HYDRAPICKER_RELION_JOB_START"  # the launching process's start, for its torchrun ranks
_IMPORTED_AT = time.time()


def process_start_time() -> float:
    """When this job started (seconds since the epoch): the launcher's start for a torchrun rank
    (``START_ENV``), else this process's start from /proc (boot time, whole seconds, + start ticks; never
    later than the true start), else when this module was imported."""
    env = os.environ.get(START_ENV)
    if env:
        with contextlib.suppress(ValueError):
            return float(env)
    try:
        btime = next(int(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines()
                     if ln.startswith("btime "))
        fields = Path(f"/proc/{os.getpid()}/stat").read_text().rpartition(")")[2].split()
        return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


class JobAborted(Exception):
    """Raised in the main thread when the user aborts (abort file or SIGTERM)."""


class JobDir:
    def __init__(self, path: str, poll_s: float = 0.5, started: float | None = None):
        self.name = job_dir_with_slash(path)
        self.path = Path(self.name)
        self.poll_s = poll_s
        self.started = process_start_time() if started is None else float(started)
        self.abort_reason = None
        self._interruptible = False
        self._stop = threading.Event()
        self._watcher = None
        self._old_handler = None

    # ---- exit files -------------------------------------------------------------------------
    def start(self) -> None:
        """Create the directory and remove exit files left by an earlier run (RELION does too), an abort
        file older than this job (a newer one is the user's abort of this job and stays) and the
        temporary files of a killed run."""
        self.path.mkdir(parents=True, exist_ok=True)
        for name in (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED):
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        if self._abort_mtime() is not None and not self.abort_file_present():
            with contextlib.suppress(FileNotFoundError):
                (self.path / ABORT_NOW).unlink()
        from hydrapicker.atomic import clean_stale_temps

        clean_stale_temps(self.path)  # a killed run's half-written files (RELION runs one job per directory)

    def finish(self, status: str) -> Path:
        """Touch exactly one exit file: ``status`` is EXIT_SUCCESS, EXIT_FAILURE or EXIT_ABORTED."""
        for name in (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED):
            if name != status:
                with contextlib.suppress(FileNotFoundError):
                    (self.path / name).unlink()
        target = self.path / status
        target.touch()
        return target

    # ---- abort ------------------------------------------------------------------------------
    def _abort_mtime(self):
        try:
            return (self.path / ABORT_NOW).stat().st_mtime
        except OSError:
            return None

    def abort_file_present(self) -> bool:
        """An abort file touched since this job started (an older one is an earlier run's)."""
        mtime = self._abort_mtime()
        return mtime is not None and mtime >= self.started

    def should_stop(self) -> bool:
        """For polling between work items: an abort was asked for (file or signal)."""
        if self.abort_reason is None and self.abort_file_present():
            self.abort_reason = f"{ABORT_NOW} found"
        return self.abort_reason is not None

    def _on_signal(self, signum, frame):
        if self.abort_reason is None:
            self.abort_reason = (f"{ABORT_NOW} found" if signum == signal.SIGINT and self.abort_file_present()
                                 else f"signal {signal.Signals(signum).name}")
        if self._interruptible:
            self._interruptible = False  # raise once; the caller cleans up without interruption
            raise JobAborted(self.abort_reason)

    def _watch(self):
        while not self._stop.wait(self.poll_s):
            if self.abort_file_present():
                if self.abort_reason is None:
                    self.abort_reason = f"{ABORT_NOW} found"
                if self._interruptible:
                    _thread.interrupt_main(signal.SIGINT)
                return

    @contextlib.contextmanager
    def interruptible(self):
        """Within this block, SIGTERM/SIGINT or the abort file raise :class:`JobAborted` at once.

        Outside it (while final outputs are written) they only set :attr:`abort_reason`.
        """
        if threading.current_thread() is not threading.main_thread():  # signals need the main thread
            yield
            return
        if self._old_handler is None:
            self._old_handler = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="relion-abort-watcher", daemon=True)
        self._interruptible = True
        self._watcher.start()
        try:
            if self.should_stop():
                raise JobAborted(self.abort_reason)
            yield
        finally:
            self._interruptible = False
            self._stop.set()
            self._watcher.join(timeout=2)
            # signals keep being caught (flag only) until restore_signals(), so cleanup finishes

    @contextlib.contextmanager
    def critical(self):
        """Inside :meth:`interruptible`: a block that an abort must not cut in half (e.g. writing a
        coordinate file and recording it as done). The abort takes effect right after the block."""
        was = self._interruptible
        self._interruptible = False
        try:
            yield
        finally:
            self._interruptible = was
        if was and self.should_stop():
            self._interruptible = False
            raise JobAborted(self.abort_reason)

    def restore_signals(self) -> None:
        if self._old_handler:
            for s, h in self._old_handler.items():
                signal.signal(s, h)
            self._old_handler = None

    # ---- continue ---------------------------------------------------------------------------
    def _done_files(self) -> list[Path]:
        return [self.path / DONE_LIST] + sorted(self.path.glob(RANK_DONE_GLOB))

    def read_done(self, fingerprint: str) -> dict[str, str]:
        """``{micrograph name: coordinate file}`` finished by earlier runs with the same settings."""
        done = {}
        for path in self._done_files():
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            lines = text.split("\n")
            if not lines or lines[0] != f"# settings {fingerprint}":
                continue
            for line in lines[1:-1]:  # the last element is "" or a line torn by a kill: ignored
                name, sep, coord = line.partition("\t")
                if sep and coord and Path(coord).exists():
                    done[name] = coord
        return done

    def start_done_list(self, fingerprint: str, keep: dict[str, str]) -> None:
        """Rewrite the done list with ``keep`` (atomically), under the current settings; fold in (remove)
        the per-rank lists of an earlier multi-rank run."""
        from hydrapicker.atomic import write_text
        body = "".join(f"{n}\t{c}\n" for n, c in keep.items())
        write_text(self.path / DONE_LIST, f"# settings {fingerprint}\n{body}")
        for extra in self._done_files()[1:]:
            with contextlib.suppress(FileNotFoundError):
                extra.unlink()

    def start_rank_list(self, fingerprint: str, rank: int) -> None:
        """Rank ``rank`` > 0 of a multi-rank run: its own (empty) done list under the current settings."""
        from hydrapicker.atomic import write_text
        write_text(self.path / RANK_DONE.format(rank=rank), f"# settings {fingerprint}\n")

    def mark_done(self, name: str, coord: str, rank: int = 0) -> None:
        path = self.path / (RANK_DONE.format(rank=rank) if rank else DONE_LIST)
        with open(path, "a") as fh:
            fh.write(f"{name}\t{coord}\n")
            fh.flush()
            os.fsync(fh.fileno())


def is_continue(job_dir: str) -> bool:
    """``_rlnJobIsContinue 1`` in the job's job.star (the GUI's Continue button); informational."""
    try:
        text = (Path(job_dir_with_slash(job_dir)) / "job.star").read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "_rlnJobIsContinue":
            return parts[1].strip() == "1"
    return False
