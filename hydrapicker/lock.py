"""One run per output folder: ``<out>/.hydrapicker.lock`` holds the owner's pid, host and process start.

A second live run on the same folder would pick the same micrographs again and could rewrite the aggregate
files with a subset, so it is refused with a message naming the owner. A lock whose owner is gone (killed,
crashed: same host, and no process with that pid and start time) is stale and taken over. A lock held on
another host cannot be checked from here: it is refused, naming the file to delete once that run is over.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from .errors import UserFacingError

LOCK_NAME = ".hydrapicker.lock"


def _start_ticks(pid: int):
    """The start time of process ``pid`` in clock ticks since boot (/proc), None where unknown."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, ticks) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    now = _start_ticks(pid)
    return ticks is None or now is None or now == ticks  # a reused pid has another start time


class OutputLock:
    """``with OutputLock(folder, what="hydra pick"):`` holds the folder's lock (created with O_EXCL)."""

    def __init__(self, folder, what: str = "hydra pick"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.held = False

    def _describe(self) -> dict:
        try:
            fields = dict(ln.split("=", 1) for ln in self.path.read_text().splitlines() if "=" in ln)
        except (OSError, ValueError):
            return {}
        return fields

    def acquire(self) -> "OutputLock":
        me = os.getpid()
        body = (f"pid={me}\nhost={socket.gethostname()}\nstart_ticks={_start_ticks(me)}\n"
                f"started={time.strftime('%Y-%m-%d %H:%M:%S')}\nwhat={self.what}\n")
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = self._describe()
                if not self._stale(owner):
                    raise UserFacingError(self._refusal(owner)) from None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)  # a dead run's lock: taken over
                continue
            except OSError as exc:
                raise UserFacingError(f"cannot write in the output folder {self.folder}: "
                                      f"{exc.strerror or exc}; choose a writable folder with --out") from None
            try:
                os.write(fd, body.encode())
            except OSError as exc:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                raise UserFacingError(f"cannot write in the output folder {self.folder}: "
                                      f"{exc.strerror or exc}; free space or choose another --out") from None
            os.close(fd)
            self.held = True
            return self
        raise UserFacingError(f"cannot take the lock {self.path}: another run keeps taking it; "
                              "wait for it to finish or use another --out")

    def _stale(self, owner: dict) -> bool:
        if not owner:  # empty or torn (killed while writing it): older than a few seconds means dead
            with contextlib.suppress(OSError):
                return time.time() - self.path.stat().st_mtime > 10
            return True
        if owner.get("host") != socket.gethostname():
            return False
        try:
            pid = int(owner.get("pid", ""))
        except ValueError:
            return True
        ticks = owner.get("start_ticks")
        return not _alive(pid, int(ticks) if ticks and ticks.isdigit() else None)

    def _refusal(self, owner: dict) -> str:
        who = (f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, started {owner.get('started', '?')}"
               if owner else "a run that is starting")
        other_host = owner and owner.get("host") != socket.gethostname()
        hint = (f"if that run is over, delete {self.path}" if other_host
                else "wait for it to finish, or stop it, or use another --out")
        return (f"another {owner.get('what', 'run') if owner else 'run'} ({who}) is writing to {self.folder}: "
                f"{hint}")

    def release(self) -> None:
        if self.held:
            self.held = False
            if self._describe().get("pid") == str(os.getpid()):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
