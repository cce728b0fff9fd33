"""relion_hydra_pick: HydraPicker as a RELION External job that picks particles.

RELION calls (project directory as cwd)::

    relion_hydra_pick --o External/job004/ --in_mics CtfFind/job003/micrographs_ctf.star \\
        --particle_diameter 160 [--threshold 0.5] [--model M.pt] [--head generic] [--gpu 0] \\
        [--pickname autopick] [--min_distance 120] [--relion_version 4] --j 4

Writes, in the job directory: one coordinate STAR per micrograph at RELION's path convention (also when
nothing was picked), ``coords_suffix_<pickname>.star`` (3.1 node), ``autopick.star`` (4.x/5.x node),
``summary.star``, ``logfile.pdf``, ``RELION_OUTPUT_NODES.star`` and one exit file. Per-micrograph
errors are reported (run.out and run.err) and skipped; the job succeeds when at least one micrograph
has coordinates, and a Continue picks the skipped ones again.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from pathlib import Path

from hydrapicker.checkpoint import default_head, threshold_for
from hydrapicker.errors import UserFacingError

from . import nodes
from .args import ArgumentError, Param
from .driver import log, run, warn
from .jobdir import JobAborted, JobDir, is_continue
from .paths import coord_path

PROG = "relion_hydra_pick"
PARAMS = (
    Param("in_mics", str, None, True, "micrographs STAR (RELION's 'Input micrographs' field)"),
    Param("particle_diameter", float, None, True, "particle diameter in Angstrom", positive=True),
    Param("threshold", float, None, False, "FOM threshold, 0-1, higher = fewer picks (default: the model's)"),
    Param("model", str, None, False, "model file (default: the shipped generic model)"),
    Param("head", str, "", False, "which head of the model picks (empty: the model's own: the few-shot "
                                  "head of a fine-tuned model, else generic)"),
    Param("gpu", str, "", False, "GPU id, e.g. 0 (empty: first GPU if any, else CPU; 'cpu': CPU)"),
    Param("pickname", str, "autopick", False, "name in the coordinate files: <mic>_<pickname>.star"),
    Param("min_distance", float, None, False, "minimum distance between picks in Angstrom", positive=True),
    Param("relion_version", str, None, False, "3.1, 4 or 5 (default: detected from job.star)"),
)
N_EXAMPLES = 3


def device_from_gpu(gpu: str) -> str:
    g = (gpu or "").strip()
    if g in ("", "auto"):
        return "auto"
    if g.lower() in ("cpu", "-1"):
        return "cpu"
    ids = [s.strip() for s in g.split(",") if s.strip()]
    if not ids or not all(s.isdigit() for s in ids):
        raise ArgumentError(f"--gpu {gpu!r} is not understood; give a GPU number such as 0, or 'cpu', "
                            "or leave the value empty for automatic choice")
    if len(ids) > 1:
        log(f"note: one GPU per pick job; using GPU {ids[0]} of {g}")
    return f"cuda:{ids[0]}"


def default_picker_factory(model, device, threads):
    from hydrapicker.picker import Picker
    return Picker(model=model, device=device, threads=threads, log=log)


class PickRun:
    """One execution of the pick job in a job directory (fresh or continued)."""

    def __init__(self, opts: dict, job: JobDir, picker_factory=None):
        self.o = opts
        self.job = job
        self.factory = picker_factory or default_picker_factory
        self.names: list[str] = []
        self.mics = []
        self.coords: dict[str, str] = {}          # name -> coordinate file (done, any run)
        self.picks: dict = {}                     # name -> Picks written (this run)
        self.candidate_foms = []                  # permissive FOMs of this run (for the histogram)
        self.failed: dict[str, str] = {}
        self.version = None
        self.prepared = False

    # ---------------------------------------------------------------------------------------
    def prepare(self):
        from hydrapicker.micrographs import read_micrographs_star
        from .version import detect, star_version_number

        o = self.o
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", o["pickname"]):
            raise ArgumentError(f"--pickname {o['pickname']!r}: use letters, digits, '_' or '-' only")
        self.version, why = detect(self.job.name, o["in_mics"], o["relion_version"])
        self.star_version = star_version_number(self.version)
        self.mics = read_micrographs_star(o["in_mics"])
        if not self.mics:
            raise UserFacingError(f"{o['in_mics']} lists no micrographs; select some micrographs first")
        self.names = [m.name for m in self.mics]
        self.device = device_from_gpu(o["gpu"])
        log(f"{PROG}: {len(self.mics)} micrographs in {o['in_mics']}; RELION {self.version} "
            f"({why}); job.star continue flag: {int(is_continue(self.job.name))}")

    def _fingerprint(self, model_desc: str, threshold: float) -> str:
        o = self.o
        key = repr((model_desc, o["head"], round(threshold, 6), o["particle_diameter"], o["min_distance"],
                    o["pickname"]))
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    def pick(self):
        o = self.o
        picker = self.factory(o["model"], self.device, o["j"])
        meta = getattr(picker, "meta", {}) or {}
        o["head"] = o["head"] or default_head(meta)
        threshold = o["threshold"] if o["threshold"] is not None else threshold_for(meta, o["head"])
        self.threshold = threshold
        heads = meta.get("heads")
        if heads and o["head"] not in heads:
            raise ArgumentError(f"--head {o['head']!r} is not in the model ({', '.join(heads)}); "
                                "fix the 'head' value in the Params tab")
        model_path = o["model"] or meta.get("path") or "shipped"
        try:
            model_desc = f"{Path(model_path).resolve()}:{os.path.getsize(model_path)}"
        except OSError:
            model_desc = str(model_path)
        fp = self._fingerprint(model_desc, threshold)
        done = self.job.read_done(fp)
        done = {n: c for n, c in done.items() if n in set(self.names)}
        if done:
            log(f"continuing: {len(done)} micrographs already done with these settings are skipped")
        elif (self.job.path / "done_mics.txt").exists():
            log("settings differ from the earlier run (or no micrograph was finished): picking all again")
        self.job.start_done_list(fp, done)
        self.coords = dict(done)
        self.prepared = True
        todo = [m for m in self.mics if m.name not in done]
        n_total = len(self.mics)
        log(f"model {model_path}, head {o['head']}, device {getattr(picker, 'device', self.device)}, "
            f"particle diameter {o['particle_diameter']:g} A, threshold {threshold:g}, "
            f"{len(todo)} micrographs to pick")
        floor = None
        if meta.get("floor") is not None and threshold < float(meta["floor"]):
            floor = threshold
        t0 = time.time()
        n_picks = 0
        kwargs = dict(diameter_A=o["particle_diameter"], head=o["head"], floor=floor,
                      min_distance_A=o["min_distance"], should_stop=self.job.should_stop)
        for i, res in enumerate(picker.pick(todo, **kwargs), start=1):
            name = res.micrograph.name
            idx = len(done) + i
            if not res.ok:
                self.failed[name] = str(res.error)
                warn(f"micrograph {idx}/{n_total} {name} skipped: {res.error}")
                continue
            kept = self._in_bounds(res.picks.above(threshold), res.info.get("shape"))
            kept = type(kept)(kept.x.round(), kept.y.round(), kept.fom).sorted()  # RELION truncates
            coord = coord_path(self.job.name, name, o["pickname"])
            with self.job.critical():  # coordinate file + done record + memory: all or nothing
                self._write_coords(coord, kept)
                self.job.mark_done(name, coord)
                self.coords[name] = coord
                self.picks[name] = kept
                self.candidate_foms.append(res.picks.fom)
            n_picks += len(kept)
            dt = time.time() - t0
            rate = i / dt if dt > 0 else float("inf")
            log(f"micrograph {idx}/{n_total}: {name}: {len(kept)} picks; {n_picks} picks so far; "
                f"{rate:.2f} micrographs/s; device {getattr(picker, 'device', self.device)}")
        if self.job.should_stop():
            raise JobAborted(self.job.abort_reason)

    @staticmethod
    def _in_bounds(picks, shape):
        if not shape:
            return picks
        ny, nx = shape[-2], shape[-1]
        keep = (picks.x >= 0) & (picks.y >= 0) & (picks.x <= nx - 1) & (picks.y <= ny - 1)
        return picks.subset(keep)

    def _write_coords(self, path, picks):
        from hydrapicker.coords import write_relion_star
        write_relion_star(path, picks, version=self.star_version)

    # ---------------------------------------------------------------------------------------
    def write_outputs(self, aborted: bool = False) -> int:
        """List files, summary, logfile, output nodes; returns the number of micrographs with coordinates.

        After an abort the logfile (the slow part) is not redrawn, so the job stops quickly."""
        from .coordfiles import read_coord_star
        from .logfile import write_logfile

        o, d = self.o, self.job.name
        rows = [(n, self.coords[n]) for n in self.names if n in self.coords]
        all_picks = {}
        for n, c in rows:
            all_picks[n] = self.picks[n] if n in self.picks else read_coord_star(c)
        nodes.write_coords_suffix(d, o["pickname"], o["in_mics"])
        nodes.write_coord_list(d + nodes.COORD_LIST, rows, self.star_version)
        nodes.write_summary(d + nodes.SUMMARY,
                            [(n, len(p), float(p.fom.mean()) if len(p) else 0.0) for n, p in all_picks.items()],
                            self.star_version)
        if aborted:
            with_log = os.path.exists(d + nodes.LOGFILE)
            log(f"{d}{nodes.LOGFILE} is not redrawn after an abort (a Continue redraws it)")
        else:
            with_log = True
            try:
                by_name = {m.name: m for m in self.mics}
                examples = [(n, by_name[n].path, p,
                             o["particle_diameter"] / 2.0 / (by_name[n].pixel_size or 1.0))
                            for n, p in list(all_picks.items())[:N_EXAMPLES]]
                import numpy as np
                write_logfile(d + nodes.LOGFILE, list(all_picks), [p.fom for p in all_picks.values()],
                              getattr(self, "threshold", 0.0), examples,
                              all_foms=np.concatenate(self.candidate_foms) if self.candidate_foms else None,
                              title=f"HydraPicker {d}")
            except Exception as exc:  # the log is a convenience; never fail the picks for it
                with_log = os.path.exists(d + nodes.LOGFILE)
                warn(f"could not write {d}{nodes.LOGFILE}: {exc}")
        nodes.write_output_nodes(d, self.version,
                                 nodes.pick_output_nodes(d, o["pickname"], self.version, with_log))
        total = sum(len(p) for p in all_picks.values())
        log(f"{len(rows)}/{len(self.names)} micrographs have coordinates; {total} picks in total "
            f"(FOM >= {getattr(self, 'threshold', float('nan')):g})")
        if rows and total == 0:
            warn("no picks at or above the threshold: Extract would give 0 particles; lower 'threshold' "
                 "or check 'particle_diameter'")
        if self.failed:
            warn(f"{len(self.failed)} micrograph(s) failed and have no coordinates (a Continue retries "
                 f"them): " + "; ".join(f"{n}: {e}" for n, e in list(self.failed.items())[:5]))
        return len(rows)


def main(argv=None, picker_factory=None) -> int:
    """Run the pick job; returns 0 success, 1 failure, 3 aborted (RELION reads the exit files)."""

    def work(opts, job, state):
        pr = PickRun(opts, job, picker_factory)
        pr.prepare()

        def finish(aborted):
            if not pr.prepared:
                return False
            n = pr.write_outputs(aborted)
            if n == 0 and not aborted:
                first = next(iter(pr.failed.items()), None)
                detail = f"; first error: {first[0]}: {first[1]}" if first else ""
                raise UserFacingError(f"no micrograph of {opts['in_mics']} could be picked{detail}")
            return True

        state["finish"] = finish
        pr.pick()

    return run(sys.argv[1:] if argv is None else argv, PROG, PARAMS, __doc__.strip().splitlines()[0], work)


def entry_point():
    sys.exit(main())
