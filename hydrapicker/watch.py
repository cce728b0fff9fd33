"""Watch mode (``hydra pick --watch``): pick micrographs as another program writes them.

:class:`WatchSource` lists the micrographs of the inputs now: a folder (its ``*.mrc``), a glob, a micrographs
STAR that another program rewrites (RELION's on-the-fly preprocessing; a STAR caught half-written keeps its
last good listing), plain files and ``@list.txt`` files (re-read each poll).

:class:`Completeness` says when a file is complete: its size is the same at two consecutive polls **and**, for
an MRC file, the size its header announces (1024 + extended header + nx*ny*nz*bytes of the mode, read with
mrcfile) is the file's size. A file written in two halves has the right header from the first write but not
the size, so it is never read half-written.

:func:`watch` is the loop: every ``poll`` seconds list the source, pass the complete micrographs not yet done
to ``process`` (one call per batch), and stop cleanly when a file named ``STOP`` appears in the output folder,
on SIGINT/SIGTERM (the micrograph being picked is finished first) or after ``idle_timeout`` seconds without a
new micrograph. What is done is the caller's (``hydra pick``: the micrograph's coordinate STAR exists), so it
survives restarts. :class:`StableStems` keeps each micrograph's output stem once given (saved in the output
folder), so micrographs arriving later in another folder never rename the earlier ones' outputs.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

from .errors import StarFileError, UserFacingError
from .types import Micrograph

STOP_FILE = "STOP"
MRC_SUFFIXES = (".mrc", ".mrcs")


# -- what is there ---------------------------------------------------------------------------------
class WatchSource:
    """The micrographs that ``inputs`` name now (see the module docstring); ``list()`` each poll."""

    def __init__(self, inputs: Iterable[str], apix: Optional[float] = None):
        self.inputs = [str(i) for i in inputs]
        self.apix = apix
        self._last_star: dict = {}  # STAR path -> its last good listing

    def _one(self, item: str) -> list:
        from .micrographs import collect_micrographs, read_micrographs_star

        if item.startswith("@"):
            listing = Path(item[1:])
            if not listing.exists():
                return []
            out = []
            for line in listing.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    out.extend(self._one(line))
            return out
        if os.path.isdir(item):
            return [self._file(p) for p in sorted(glob.glob(os.path.join(glob.escape(item), "*")))
                    if p.lower().endswith(MRC_SUFFIXES) and os.path.isfile(p)]
        if any(ch in item for ch in "*?["):
            return [self._file(p) for p in sorted(glob.glob(item)) if os.path.isfile(p)]
        if item.endswith(".star"):
            try:
                mics = read_micrographs_star(item, apix=self.apix)
            except (StarFileError, UserFacingError, OSError, ValueError, KeyError):
                mics = self._last_star.get(item, [])  # missing, empty or caught while being rewritten
            self._last_star[item] = mics
            return list(mics)
        if not os.path.exists(item):
            return []
        return collect_micrographs([item], apix=self.apix)

    def _file(self, path: str) -> Micrograph:
        path = os.path.normpath(path)
        return Micrograph(path=path, pixel_size=self.apix, name=path,
                          meta={"apix_source": "--apix"} if self.apix is not None else {})

    def list(self) -> list:
        """Every micrograph the inputs name now, once each (by name), in the inputs' order."""
        seen, out = set(), []
        for item in self.inputs:
            for m in self._one(item):
                if m.name not in seen:
                    seen.add(m.name)
                    out.append(m)
        return out


# -- is it complete ------------------------------------------------------------------------------------
def mrc_expected_size(path) -> Optional[int]:
    """The file size an MRC file's header announces, or None when the header cannot be read yet (a file
    shorter than its 1024-byte header, or no valid MRC header)."""
    import warnings

    import mrcfile
    from mrcfile.utils import data_dtype_from_header

    try:
        if os.path.getsize(path) < 1024:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # permissive mode warns about what it tolerates
            with mrcfile.open(path, mode="r", header_only=True, permissive=True) as m:
                h = m.header
                if h is None:
                    return None
                nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
                ext = int(h.nsymbt)
                mode = int(h.mode)
                if mode == 101:  # 4-bit, two pixels per byte, each row padded to a whole byte
                    return 1024 + ext + (nx + 1) // 2 * ny * nz
                itemsize = data_dtype_from_header(h).itemsize
    except (OSError, ValueError, EOFError):
        return None
    if min(nx, ny, nz) <= 0:
        return None
    return 1024 + ext + nx * ny * nz * itemsize


class Completeness:
    """Tracks file sizes across polls: :meth:`check` is True once the size did not change since the
    previous poll (and is > 0) and, for MRC files, matches the header's. ``settling``: the files whose size
    already matches their header (or, for other files, is > 0) but was seen once only; :func:`watch` looks
    again at them after a short ``settle`` instead of a whole poll.

    An MRC file seen for the first time at its header's size whose last write (mtime) is already ``settle``
    seconds old is complete at once: its size has been stable for that long, which is what a second look
    ``settle`` s later would show. So a micrograph is picked within one poll of its last byte (two looks
    would make it a poll plus ``settle``). A clock ahead of ours on a file server only brings back the
    second look."""

    def __init__(self, settle: float = 0.5):
        self._size: dict = {}
        self.settling: set = set()
        self.settle = float(settle)

    def _whole(self, path: str, size: int) -> bool:
        if size == 0:
            return False
        if path.lower().endswith(MRC_SUFFIXES):
            return mrc_expected_size(path) == size
        return True

    def check(self, path) -> bool:
        path = str(path)
        self.settling.discard(path)
        try:
            st = os.stat(path)
        except OSError:
            self._size.pop(path, None)
            return False
        size = st.st_size
        before = self._size.get(path)
        self._size[path] = size
        if before is None or before != size:
            if not self._whole(path, size):
                return False
            if path.lower().endswith(MRC_SUFFIXES) and time.time() - st.st_mtime >= self.settle:
                return True  # at its header's size and unchanged for `settle` s already
            self.settling.add(path)
            return False
        return self._whole(path, size)

    def forget(self, path) -> None:
        self._size.pop(str(path), None)
        self.settling.discard(str(path))


# -- stems that never change ---------------------------------------------------------------------------
class StableStems:
    """Output stems (:func:`hydrapicker.outputs.output_stems`) kept once given, saved to ``path`` (JSON), so a
    restart or micrographs arriving in another folder never rename earlier outputs. New names get the stem
    :func:`~hydrapicker.outputs.output_stems` gives over every name seen; one already taken by another
    micrograph keeps its extension instead (then a counter)."""

    def __init__(self, path):
        self.path = Path(path)
        self.stems: dict = {}
        if self.path.exists():
            with contextlib.suppress(OSError, ValueError):
                self.stems = dict(json.loads(self.path.read_text()))

    def assign(self, names) -> dict:
        from .atomic import write_text
        from .outputs import output_stems

        names = list(dict.fromkeys(names))
        new = [n for n in names if n not in self.stems]
        if new:
            proposed = output_stems(list(self.stems) + new)
            taken = set(self.stems.values())
            for n in new:
                s = proposed[n]
                if s in taken:
                    base = s + os.path.splitext(n)[1]
                    s, k = base, 1
                    while s in taken:
                        s, k = f"{base}.{k}", k + 1
                self.stems[n] = s
                taken.add(s)
            write_text(self.path, json.dumps(self.stems, indent=0))
        return {n: self.stems[n] for n in names}


# -- the loop ----------------------------------------------------------------------------------------------
class StopFlag:
    """Set by SIGINT/SIGTERM (while :meth:`handling`), by a ``STOP`` file in ``out`` or by :meth:`set`."""

    def __init__(self, out):
        self.stop_file = Path(out) / STOP_FILE
        self.reason: Optional[str] = None

    def set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    def __call__(self) -> bool:
        if self.reason is None and self.stop_file.exists():
            self.set(f"{self.stop_file} exists")
        return self.reason is not None

    @contextlib.contextmanager
    def handling(self):
        """SIGINT and SIGTERM set the flag instead of killing the process (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {}

        def handler(signum, frame):
            self.set(f"signal {signal.Signals(signum).name}")

        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
        try:
            yield self
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)


def watch(source: WatchSource, process: Callable[[list], int], is_done: Callable[[Micrograph], bool],
          out, poll: float = 5.0, idle_timeout: Optional[float] = None, log: Callable = print,
          stop: Optional[StopFlag] = None, batch_max: Optional[int] = None,
          on_new: Optional[Callable[[list], None]] = None, settle: float = 0.5) -> dict:
    """Pick what ``source`` lists as it appears, until stopped; returns counts and the stop reason
    (``idle_timeout``: True when the run ended because nothing new came).

    ``process(mics)`` picks a batch (and rewrites the aggregate outputs) and returns its number of picks, or
    (micrographs picked, micrographs tried, picks) when it holds micrographs back or picks earlier ones;
    ``is_done(mic)`` says whether a micrograph was picked before (by this or an earlier run). ``on_new(mics)``
    sees each micrograph the first time it is listed (before it is complete), e.g. to give it its stem.
    ``batch_max``: at most this many micrographs per call (default: every complete one). The first poll looks
    again after ``min(poll, 1)`` s, so the micrographs present at start are not kept waiting a whole poll;
    a file that looked whole for the first time is looked at again after ``min(poll, settle)`` s (its size
    must still be the same) unless its last write is already ``settle`` s old (:class:`Completeness`), so a
    micrograph waits at most one poll after its last byte (for ``poll >= 2 settle``), not two.
    """
    stop = stop or StopFlag(out)
    done: set = set()          # names handled (picked now, picked before, or failed now)
    known: set = set()
    sizes = Completeness(settle)
    t_start = time.time()
    t_new = t_start            # when the last new micrograph was listed
    n_mics = n_picks = 0
    t_busy = 0.0
    first = True
    idle = False
    with stop.handling():
        while not stop():
            listed = source.list()
            fresh = [m for m in listed if m.name not in known]
            if fresh:
                known.update(m.name for m in fresh)
                t_new = time.time()
                if on_new is not None:
                    on_new(fresh)
                for m in fresh:
                    if is_done(m):
                        done.add(m.name)
            waiting = [m for m in listed if m.name not in done]
            ready = [m for m in waiting if sizes.check(m.path)]
            if batch_max:
                ready = ready[:batch_max]
            if ready:
                t0 = time.time()
                got = process(ready)
                dt = time.time() - t0
                t_busy += dt
                t_new = max(t_new, time.time())  # idle time is counted while waiting, not while picking
                for m in ready:  # a failed one is not retried in this run (a restart retries it)
                    done.add(m.name)
                    sizes.forget(m.path)
                if isinstance(got, tuple):  # (picked, tried, picks): the caller held some back or picked more
                    n_ok, n_tried, picks = got
                else:
                    n_ok, n_tried, picks = sum(1 for m in ready if is_done(m)), len(ready), got
                n_mics += n_ok
                n_picks += int(picks or 0)
                backlog = len(waiting) - len(ready)
                if n_tried:  # (none tried: the caller holds them back and says why)
                    log(f"[hydra watch] {n_ok}/{n_tried} micrographs picked in {dt:.1f} s "
                        f"({n_ok / max(dt, 1e-9):.2f} micrographs/s), {int(picks or 0)} picks; "
                        f"total {n_mics} micrographs, {n_picks} picks; backlog {backlog}")
                if not stop():
                    continue  # look again at once: picking took the time of a poll, more may be complete
            if stop():
                break
            if idle_timeout is not None and time.time() - t_new >= idle_timeout:
                stop.set(f"no new micrograph for {idle_timeout:g} s")
                idle = True
                break
            _sleep(min(poll, 1.0) if first else (min(poll, settle) if sizes.settling else poll), stop)
            first = False
    wall = time.time() - t_start
    log(f"[hydra watch] stopped ({stop.reason}): {n_mics} micrographs, {n_picks} picks in {wall:.1f} s "
        f"({t_busy:.1f} s picking)")
    return {"micrographs": n_mics, "picks": n_picks, "seconds": wall, "reason": stop.reason,
            "idle_timeout": idle}


def _sleep(seconds: float, stop: StopFlag, step: float = 0.2) -> None:
    """Sleep ``seconds``, waking early when ``stop`` is set (checked every ``step`` s)."""
    end = time.time() + seconds
    while not stop():
        left = end - time.time()
        if left <= 0:
            return
        time.sleep(min(step, left))
