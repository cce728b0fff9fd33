"""relion_hydra_pick: HydraPicker as a RELION External job that picks particles.

RELION calls (project directory as cwd)::

    relion_hydra_pick --o External/job004/ --in_mics CtfFind/job003/micrographs_ctf.star \\
        --particle_diameter 160 [--threshold 0.5] [--model M.pt] [--head generic] [--gpu 0] \\
        [--pickname autopick] [--min_distance 120] [--relion_version 4] [--ranks 2] --j 4

Several GPUs (``gpu`` = ``0,1,...``) or ``ranks`` > 1: the job starts one process per GPU (or that many
CPU processes sharing the threads) with torchrun; each picks every N-th micrograph, rank 0 writes the list
files after all have finished, and this process writes the exit file if the ranks could not.

Writes, in the job directory: one coordinate STAR per micrograph at RELION's path convention (also when
nothing was picked), ``coords_suffix_<pickname>.star`` (3.1 node), ``autopick.star`` (4.x/5.x node),
``summary.star``, ``logfile.pdf``, ``RELION_OUTPUT_NODES.star`` and one exit file. Per-micrograph
errors are reported (run.out and run.err) and skipped; the job succeeds when at least one micrograph
has coordinates, and a Continue picks the skipped ones again.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import sys
import time
from pathlib import Path

from hydrapicker import defaults
from hydrapicker.class_centres import DEFAULT_SETTINGS as CLASS_CENTRES
from hydrapicker.class_centres import class_centring_on, data_set_classes, described
from hydrapicker.checkpoint import default_head
from hydrapicker.scale import parse_working_scale
from hydrapicker.errors import UserFacingError
from hydrapicker.postprocess import PickPolicy

from . import nodes
from .args import ArgumentError, Param
from .driver import LAUNCHED_ENV, log, run, warn
from .jobdir import JobAborted, JobDir, is_continue
from .paths import ESCAPED_DIR, coord_path, escapes
from .ranks import device_from_gpu, launch_ranks, rank_device, ranks_wanted


def threshold_value(raw: str):
    """The ``threshold`` parameter's value: ``"auto"`` (any case) or a number (ValueError otherwise)."""
    word = str(raw).strip()
    return "auto" if word.lower() == "auto" else float(word)


PROG = "relion_hydra_pick"
PARAMS = (
    Param("in_mics", str, None, True, "micrographs STAR (RELION's 'Input micrographs' field)"),
    Param("particle_diameter", float, None, True, "particle diameter in Angstrom", positive=True),
    Param("threshold", threshold_value, None, False,
          "FOM threshold, 0-1, higher = fewer picks, or 'auto' (each micrograph's own, from its FOM distribution, "
          "around the model's); default: the model's", between=(0.0, 1.0)),
    Param("model", str, None, False, "model file (default: the shipped generic model)"),
    Param("head", str, "", False, "which head of the model picks (empty: the model's own: the few-shot "
                                  "head of a fine-tuned model, else generic)"),
    Param("gpu", str, "", False, "GPU ids, e.g. 0 or 0,1 (one rank per GPU); empty: first GPU if any, else CPU; "
                                "'cpu': CPU"),
    Param("pickname", str, "autopick", False, "name in the coordinate files: <mic>_<pickname>.star"),
    Param("min_distance", float, None, False, "minimum distance between picks in Angstrom", positive=True),
    Param("relion_version", str, None, False, "3.1, 4 or 5 (default: detected from job.star)"),
    Param("adapt", bool, False, False, "yes: self-adaptation without labels: a head learned from this data set's "
                                       "own confident zero-shot picks picks it (kept as adapted_model.pt in the "
                                       "job; the zero-shot picks when the pseudo-labels are too few or "
                                       "inconsistent), and the centre refiner too (adapt_centres); its picks are "
                                       "class-centred (class_centres)"),
    Param("adapt_centres", bool, None, False,
          "yes: the centre refiner is taught this data set's particles from its own confident picks (no labels; "
          "kept as adapted_refiner.pt in the job) and re-centres every pick (the centres stay as without it when "
          "there are too few confident picks); not given: yes when adapt = yes; no: adapt teaches the head only"),
    Param("refine_centres", bool, defaults.REFINE_CENTRES, False,
          "yes: every pick is re-centred by the shipped centre refiner (a move of at most 0.3 diameters); no: the "
          f"centres as the detector's grid decodes them (default {'yes' if defaults.REFINE_CENTRES else 'no'})"),
    Param("class_centres", bool, None, False,
          "yes: every pick moves towards where 2D alignment to class averages of its micrograph's own confident "
          f"picks puts it (no training; at most {CLASS_CENTRES.reach:g} diameters; micrographs with fewer than "
          f"{CLASS_CENTRES.min_confident} confident picks keep theirs); not given: yes when adapt = yes or the model "
          "was adapted by it (not at a smaller working scale), else no; no: off"),
    Param("working_scale", parse_working_scale, None, False,
          "particle extent the network sees, as a fraction of the diameter (empty: as given; auto: 4 micrographs "
          "are picked at 0.85 and 0.75 too and a smaller scale is taken only when the best candidates score clearly "
          "higher there, for elongated particles whose length is the diameter; adapt = yes chooses it itself)"),
    Param("tta", int, None, False,
          "test-time views averaged per micrograph: 1 (fastest), 2 (and turned by 180 degrees), 4 or 8 (empty: "
          f"{defaults.TTA})", choices=(1, 2, 4, 8)),
    Param("micrograph_evidence", float, None, False,
          "micrograph evidence R: each micrograph's FOMs are weighed by how sure its best candidates are (against "
          f"R times the threshold's odds), so micrographs of junk, ice or carbon alone yield fewer picks (empty: "
          f"{defaults.EVIDENCE_REFERENCE:g}; more for junk-heavy sessions; 0: off)", between=(0.0, 100.0)),
    Param("qc", int, 0, False, "QC images of this many micrographs spread over the job (qc/<path>_<pickname>.png in "
                               "the job: the picks coloured by FOM, the excluded border bands and dead areas in red); "
                               "0: none", between=(0, 10 ** 9)),
    Param("ranks", int, None, False, "processes picking in parallel (torchrun): default one per GPU listed in "
                                     "'gpu'; with gpu = cpu, CPU processes sharing the threads", positive=True),
)
N_EXAMPLES = 3
SETTINGS = ".hydra_settings.json"  # the last run's options -> done-list fingerprint, head, threshold


def _refine_centres(o) -> bool:
    return bool(o.get("refine_centres", defaults.REFINE_CENTRES))


def _tta(o) -> int:
    """The test-time views asked for (empty: the core's default)."""
    return int(o.get("tta") or defaults.TTA)


def _evidence(o):
    """The evidence multiple asked for (None: the default)."""
    return o.get("micrograph_evidence")


def _choice_keys(o) -> tuple:
    """The done list's words for refine_centres, micrograph_evidence, tta, working_scale, adapt_centres and
    class_centres: nothing for the defaults (older done lists stay valid); class_centres no is a word too, as
    a model adapted by an earlier job would class-centre without it."""
    refine = _refine_centres(o)
    return (() if refine == defaults.REFINE_CENTRES else ("refined" if refine else "unrefined",)) + \
        (() if _evidence(o) is None else (f"evidence {float(_evidence(o)):g}",)) + \
        (() if _tta(o) == defaults.TTA else (f"views {_tta(o)}",)) + \
        (() if o.get("working_scale") is None else (f"working scale {o['working_scale']}",)) + \
        (("adapted centres",) if o.get("adapt_centres") else ()) + \
        (("class centres",) if _class_centres(o) else ("no class centres",) if o.get("class_centres") is False else ())


def _class_centres(o, meta=None, head=None) -> bool:
    """Whether the picks are class-centred: the core's rule, as hydra pick (``refine_centres`` no is the
    default here, not a choice); with the model's ``meta`` and ``head`` a head adapted by an earlier job
    counts too."""
    return class_centring_on(o.get("class_centres"), bool(o.get("adapt")), _refine_centres(o) or None, meta, head)


def default_picker_factory(model, device, threads, refine="auto", tta=None):
    from hydrapicker.picker import Picker, configure_torch

    picker = Picker(model=model, device=device, log=log, refine=refine, tta=tta)
    configure_torch(threads, picker.device)  # the job's own process: its settings
    return picker


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
        self.thresholds: dict[str, float] = {}    # name -> threshold chosen (this run, threshold auto)
        self.quick = False                        # nothing new: no model loaded, the logfile kept
        self.version = None
        self.prepared = False
        from hydrapicker import distributed
        self.rank, self.world = distributed.rank_world()
        self.say = log if self.rank == 0 else (lambda *a: None)  # rank 0 reports for the job

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
        escaping = [n for n in self.names if escapes(n)]
        if escaping and self.rank == 0:
            warn(f"{len(escaping)} micrograph name(s) lead outside the job directory (e.g. {escaping[0]}): their "
                 f"coordinates are written under {self.job.name}{ESCAPED_DIR} instead, as the list file says"
                 + ("; RELION 3.1's Extract looks for them by name and will not find them"
                    if str(self.version).startswith("3") else ""))
        self.device = rank_device(o["gpu"]) if self.world > 1 else device_from_gpu(o["gpu"])
        groups: dict = {}
        for m in self.mics:
            key = (str(m.meta.get("optics_group", "-")), m.pixel_size, m.meta.get("apix_source"))
            groups[key] = groups.get(key, 0) + 1
        for (group, px, source), n in groups.items():
            self.say(f"pixel size {px:g} A/px ({source}) for optics group {group}: {n} micrograph(s)" if px else
                     f"optics group {group}: no pixel size in {o['in_mics']}: each micrograph's MRC header is used "
                     f"({n} micrograph(s); a header with 0 or exactly 1.0 stops the job)")
        self.say(f"{PROG}: {len(self.mics)} micrographs in {o['in_mics']}; RELION {self.version} "
            f"({why}); job.star continue flag: {int(is_continue(self.job.name))}")

    def _fingerprint(self, model_desc: str, threshold) -> str:
        o = self.o
        thr = threshold if isinstance(threshold, str) else round(threshold, 6)  # "auto" or a number
        key = repr((model_desc, o["head"], thr, o["particle_diameter"], o["min_distance"],
                    o["pickname"]) + _choice_keys(o))
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    # A cycle with nothing new (a Scheme's next round, a repeated Continue) loads no model: the settings of
    # the last run are kept with the options they came from (the job's options + the model file's identity),
    # so an unchanged set of options gives the done list's fingerprint without the model.
    def _options_key(self) -> str:
        from hydrapicker.checkpoint import default_model_path

        o = self.o
        model = o["model"] or str(default_model_path())
        try:
            st = os.stat(model)
            ident = f"{Path(model).resolve()}:{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            ident = str(model)
        key = repr((ident, o["head"], o["threshold"], o["particle_diameter"], o["min_distance"], o["pickname"],
                    bool(o.get("adapt"))) + _choice_keys(o))
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    def _remember_settings(self, fp: str) -> None:
        import json

        from hydrapicker.atomic import write_text
        policy = self.policy
        write_text(self.job.path / SETTINGS, json.dumps({
            "options": self.options_key, "fingerprint": fp, "head": self.o["head"],
            "threshold": policy.threshold, "calibrated": policy.calibrated}) + "\n")

    def nothing_new(self) -> bool:
        """True (and the run's state set) when the last run had these options and every micrograph of the
        input STAR is in the done list: nothing to pick, so no model is loaded."""
        import json

        if self.world > 1:
            return False
        try:
            saved = json.loads((self.job.path / SETTINGS).read_text())
        except (OSError, ValueError):
            return False
        if saved.get("options") != self.options_key:
            return False
        done = self.job.read_done(saved["fingerprint"])
        if not done or any(n not in done for n in self.names):
            return False
        if len(self.job._done_files()) > 1:  # an earlier multi-rank run's lists: fold them into the one
            self.job.start_done_list(saved["fingerprint"], done)
        self.coords = {n: done[n] for n in self.names}
        self.o["head"] = saved.get("head") or self.o["head"]
        self.threshold = saved.get("threshold")
        self.policy = None
        self.calibrated = saved.get("calibrated")
        self.prepared = self.quick = True
        self.say(f"nothing new: all {len(self.names)} micrographs are done with these settings (no model "
                 "loaded); rewriting the list files")
        return True

    def _policy(self, picker):
        """The pick policy of the job's options and the model (also kept as ``self.policy``)."""
        o = self.o
        meta = getattr(picker, "meta", {}) or {}
        o["head"] = o["head"] or default_head(meta)
        policy = PickPolicy.for_model(meta, o["particle_diameter"], o["head"],
                                      "model" if o["threshold"] is None else o["threshold"],
                                      min_distance_A=o["min_distance"], round_to_pixel=True,  # RELION truncates
                                      evidence=_evidence(o), class_centres=_class_centres(o, meta, o["head"]))
        self.threshold = policy.threshold
        self.policy = policy
        heads = meta.get("heads")
        if heads and o["head"] not in heads:
            raise ArgumentError(f"--head {o['head']!r} is not in the model ({', '.join(heads)}); "
                                "fix the 'head' value in the Params tab")
        return policy

    def _fingerprint_and_model(self, picker, policy) -> tuple:
        """The done list's settings fingerprint for ``policy`` and the model file as it is now (an adapted
        model after the data set's class averages were written into it), and the model path."""
        o = self.o
        meta = getattr(picker, "meta", {}) or {}
        model_path = o["model"] or meta.get("path") or "shipped"
        try:
            model_desc = f"{Path(model_path).resolve()}:{os.path.getsize(model_path)}"
        except OSError:
            model_desc = str(model_path)
        scale = float(meta.get("working_scale", 1.0))
        if scale != 1.0:  # picks made at another particle extent are other picks (hydrapicker.scale)
            model_desc += f" at working scale {scale:g}"
        if policy.class_centres_at is not None and not _class_centres(o):  # the model's adapted head asks for it
            model_desc += " class-centred"
        return self._fingerprint(model_desc, policy.threshold), model_path

    def _adapted(self, picker):
        """``adapt yes``: :func:`hydrapicker.adapt.adapted_picker` over the job's micrographs (its model
        ``<job>/adapted_model.pt`` re-used by Continue and by a Scheme's later cycles)."""
        from hydrapicker.adapt import adapted_picker

        o = self.o
        if self.world > 1:
            raise ArgumentError("adapt = yes runs in one process: set 'ranks' to 1 (or adapt in one job, then "
                                "give its adapted_model.pt as 'model' to a job with more ranks)")
        base_path = (getattr(picker, "meta", None) or {}).get("path", o["model"])
        picker, head, result = adapted_picker(picker, self.mics, o["particle_diameter"],
                                              self.job.path / "adapted_model.pt", o["head"] or None, log=log,
                                              should_stop=self.job.should_stop)
        o["head"] = head
        # the adapted model file, else the model given (a refused adaptation's zero-shot picker may hold it at
        # another working scale, which the fingerprint adds)
        o["model"] = str(result.model) if result.accepted else base_path
        return picker

    def _adapted_centres(self, picker):
        """``adapt_centres yes``: :func:`hydrapicker.refine_adapt.picker_with_adapted_refiner` over the job's
        micrographs (its refiner ``<job>/adapted_refiner.pt`` re-used by Continue and a Scheme's later cycles)."""
        from hydrapicker.refine_adapt import picker_with_adapted_refiner

        o = self.o
        if self.world > 1:
            raise ArgumentError("adapt_centres = yes runs in one process: set 'ranks' to 1")
        picker, _ = picker_with_adapted_refiner(picker, self.mics, o["particle_diameter"],
                                                self.job.path / "adapted_refiner.pt", o["head"] or None, log=log,
                                                should_stop=self.job.should_stop)
        return picker

    def pick(self):
        from hydrapicker import distributed

        from hydrapicker.refine_adapt import adapts_centres

        self.o["adapt_centres"] = adapts_centres(self.o.get("adapt"), self.o.get("adapt_centres"),
                                                 _refine_centres(self.o) or None)  # the core's rule, as hydra pick
        self.options_key = self._options_key()  # of the options as given (before the model resolves them)
        if self.nothing_new():
            return
        o, rank, world = self.o, self.rank, self.world
        threads = max(1, o["j"] // world)  # ranks share the job's threads
        refine = _refine_centres(o)
        picker = self.factory(o["model"], self.device, threads,  # the defaults need no word (any factory takes them)
                              **({} if refine == defaults.REFINE_CENTRES else {"refine": "shipped" if refine else False}),
                              **({} if _tta(o) == defaults.TTA else {"tta": _tta(o)}))
        if o.get("working_scale") is not None:
            if o.get("adapt"):
                raise ArgumentError("adapt = yes chooses its working scale itself: leave working_scale empty")
            from hydrapicker.scale import picker_at_scale

            o["model"] = o["model"] or (getattr(picker, "meta", None) or {}).get("path")  # not the scaled copy's
            picker = picker_at_scale(picker, self.mics, o["particle_diameter"], o["head"] or None,
                                     o["working_scale"], log)
        if o.get("adapt"):
            picker = self._adapted(picker)
        if o.get("adapt_centres"):
            picker = self._adapted_centres(picker)
        policy = self._policy(picker)
        if o.get("adapt"):  # as hydra pick --adapt: class averages of the job's sample, kept in the adapted model
            from hydrapicker.adapt import AdaptSettings

            picker = data_set_classes(picker, self.mics, o["particle_diameter"], o["head"], policy,
                                      AdaptSettings().sample, log, keep_in=self.job.path / "adapted_model.pt")
        fp, model_path = self._fingerprint_and_model(picker, policy)  # of the model file as kept
        done = self.job.read_done(fp)
        done = {n: c for n, c in done.items() if n in set(self.names)}
        distributed.barrier()  # every rank has read the done list before rank 0 rewrites it
        if rank == 0:
            if done:
                log(f"continuing: {len(done)} micrographs already done with these settings are skipped")
            elif (self.job.path / "done_mics.txt").exists():
                log("settings differ from the earlier run (or no micrograph was finished): picking all again")
            self.job.start_done_list(fp, done)
            self._remember_settings(fp)
        distributed.barrier()
        if rank > 0:
            self.job.start_rank_list(fp, rank)
        self.coords = dict(done)
        self.prepared = True
        todo = [m for m in self.mics if m.name not in done]
        n_total = len(self.mics)
        self.say(f"model {model_path}, head {o['head']}, device {getattr(picker, 'device', self.device)}, "
                 f"particle diameter {o['particle_diameter']:g} A, threshold {self._thr_text()}, "
                 f"{len(todo)} micrographs to pick" + (f" by {world} ranks, {threads} threads each"
                                                       if world > 1 else "")
                 + (f"; {described(self.policy.class_centres_at, refs=getattr(picker, 'class_refs', None))} "
                    f"(class_centres)" if self.policy is not None
                    and self.policy.class_centres_at is not None else ""))
        mine = distributed.shard(todo)
        who = f"rank {rank}/{world}: " if world > 1 else ""
        t0 = time.time()
        n_picks = 0
        kwargs = dict(diameter_A=o["particle_diameter"], head=o["head"], policy=policy,
                      should_stop=self.job.should_stop)
        from hydrapicker.qc import qc_indices

        qc_chosen = {self.names[i] for i in qc_indices(len(self.names), int(o.get("qc") or 0))}
        for i, res in enumerate(picker.pick(mine, **kwargs), start=1):
            name = res.micrograph.name
            idx = len(done) + i if world == 1 else i
            of = n_total if world == 1 else len(mine)
            if not res.ok:
                self.failed[name] = str(res.error)
                warn(f"{who}micrograph {idx}/{of} {name} skipped: {res.error}")
                continue
            kept = res.picks
            coord = coord_path(self.job.name, name, o["pickname"])
            try:
                with self.job.critical():  # coordinate file + done record + memory: all or nothing
                    self._write_coords(coord, kept)
                    self.job.mark_done(name, coord, rank)
                    self.coords[name] = coord
                    self.picks[name] = kept
                    self.candidate_foms.append(res.candidates.fom)
            except OSError as exc:
                if exc.errno == errno.ENAMETOOLONG:  # this micrograph's name only: skipped like unreadable ones
                    self.failed[name] = f"cannot write {coord}: {exc.strerror}"
                    warn(f"{who}micrograph {idx}/{of} {name} skipped: {self.failed[name]}")
                    continue
                raise UserFacingError(f"cannot write {exc.filename or coord}: {exc.strerror or exc}; nothing "
                                      "half-written is left: free space (or fix the folder) and Continue the "
                                      "job, which picks only the rest") from None
            if name in qc_chosen:
                self._write_qc(res, coord, policy)
            n_picks += len(kept)
            dt = time.time() - t0
            rate = i / dt if dt > 0 else float("inf")
            thr = res.info.get("threshold")
            if policy.is_auto and thr is not None:
                self.thresholds[name] = float(thr)
            thr_txt = f" (auto threshold {thr:.3f})" if policy.is_auto and thr is not None else ""
            if res.info.get("invalid_text"):  # border bands / dead areas: no picks there
                thr_txt += f" ({res.info['invalid_text']})"
            log(f"{who}micrograph {idx}/{of}: {name}: {len(kept)} picks{thr_txt}; {n_picks} picks so far; "
                f"{rate:.2f} micrographs/s; device {getattr(picker, 'device', self.device)}")
        if self.job.should_stop():
            raise JobAborted(self.job.abort_reason)

    def gather_ranks(self) -> bool:
        """Under torchrun: collect every rank's finished work on rank 0 (a collective call); True on the
        rank that writes the job's outputs."""
        from hydrapicker import distributed

        if self.world == 1:
            return True
        parts = distributed.gather_objects((self.coords, self.picks, self.candidate_foms, self.failed,
                                            self.prepared))
        if self.rank != 0:
            return False
        for coords, picks, foms, failed, _ in parts[1:]:
            self.coords.update(coords)
            self.picks.update(picks)
            self.candidate_foms.extend(foms)
            self.failed.update(failed)
        self.prepared = all(p[4] for p in parts)
        return True

    def _thr_number(self) -> float:
        """A number for the logfile's histogram line: the threshold, or the calibrated one under auto."""
        policy = getattr(self, "policy", None)
        if policy is not None and policy.is_auto:
            return float(policy.calibrated)
        thr = getattr(self, "threshold", None)
        return float(getattr(self, "calibrated", None) or 0.0) if isinstance(thr, str) else float(thr or 0.0)

    def _thr_text(self) -> str:
        policy = getattr(self, "policy", None)
        if policy is not None and policy.is_auto:
            chosen = list(self.thresholds.values())
            rng = f", {min(chosen):.3f}-{max(chosen):.3f} this run" if chosen else ""
            return f"auto (per micrograph, around {float(policy.calibrated):.3f}{rng})"
        thr = getattr(self, "threshold", None)
        if isinstance(thr, str):
            return thr
        return "nan" if thr is None else f"{thr:g}"

    @staticmethod
    def _earlier_summary(path) -> dict:
        """{name: (picks, mean FOM, the file's mtime_ns, threshold or -1)} from an earlier run's summary.star
        ({} if none)."""
        try:
            from hydrapicker.star import read_blocks

            mtime = os.stat(path).st_mtime_ns
            df = read_blocks(path, "summary.star")["summary"]
            thr = (df[nodes.THRESHOLD_LABEL] if nodes.THRESHOLD_LABEL in df.columns else [-1.0] * len(df))
            return {str(n): (int(k), float(f), mtime, float(t)) for n, k, f, t in
                    zip(df["rlnMicrographName"], df["rlnGroupNrParticles"], df["rlnAutopickFigureOfMerit"], thr)}
        except Exception:  # missing, empty or foreign: read the coordinate files instead
            return {}

    def _write_qc(self, res, coord: str, policy) -> None:
        """The QC image of one micrograph (``qc``): <job>/qc/<its coordinate file's path in the job>.png; a
        QC image that cannot be written is reported and the job goes on."""
        from hydrapicker.qc import write_micrograph_qc

        target = Path(self.job.name) / "qc" / Path(os.path.relpath(coord, self.job.name)).with_suffix(".png")
        try:
            write_micrograph_qc(target, res.micrograph.path, res.picks, self.o["particle_diameter"], res.info,
                                policy.find_invalid, name=res.micrograph.name, pixel_size=res.micrograph.pixel_size)
        except Exception as exc:  # noqa: BLE001  (a QC image is never worth the job)
            warn(f"no QC image for {res.micrograph.name}: {exc}")

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

        def picks_of(n, c):  # this run's, else read back once
            if n not in all_picks:
                all_picks[n] = self.picks[n] if n in self.picks else read_coord_star(c)
            return all_picks[n]

        # the summary rows of micrographs picked by earlier runs come from the earlier summary (no re-reading
        # of thousands of coordinate files each cycle) when their file is not newer than it
        earlier = self._earlier_summary(d + nodes.SUMMARY)
        counts = {}
        for n, c in rows:
            if n not in self.picks and n in earlier and _mtime(c) <= earlier[n][2]:
                counts[n] = earlier[n][:2]
            else:
                p = picks_of(n, c)
                counts[n] = (len(p), float(p.fom.mean()) if len(p) else 0.0)
        nodes.write_coords_suffix(d, o["pickname"], o["in_mics"])
        nodes.write_coord_list(d + nodes.COORD_LIST, rows, self.star_version)
        auto = getattr(self, "threshold", None) == "auto"
        thresholds = None
        if auto:  # each micrograph's cut-off: this run's, else the earlier summary's
            thresholds = {n: earlier[n][3] for n, _ in rows if n in earlier and earlier[n][3] >= 0}
            thresholds.update(self.thresholds)
        nodes.write_summary(d + nodes.SUMMARY, [(n, *counts[n]) for n, _ in rows], self.star_version,
                            thresholds=thresholds)
        if aborted:
            with_log = os.path.exists(d + nodes.LOGFILE)
            log(f"{d}{nodes.LOGFILE} is not redrawn after an abort (a Continue redraws it)")
        elif self.quick and os.path.exists(d + nodes.LOGFILE):
            with_log = True  # nothing picked: the logfile of the run that picked stays
        else:
            with_log = True
            try:
                for n, c in rows:
                    picks_of(n, c)
                by_name = {m.name: m for m in self.mics}
                examples = [(n, by_name[n].path, p,
                             o["particle_diameter"] / 2.0 / (by_name[n].pixel_size or 1.0))
                            for n, p in list(all_picks.items())[:N_EXAMPLES]]
                import numpy as np
                write_logfile(d + nodes.LOGFILE, list(all_picks), [p.fom for p in all_picks.values()],
                              self._thr_number(), examples,
                              all_foms=np.concatenate(self.candidate_foms) if self.candidate_foms else None,
                              title=f"HydraPicker {d}")
            except Exception as exc:  # the log is a convenience; never fail the picks for it
                with_log = os.path.exists(d + nodes.LOGFILE)
                warn(f"could not write {d}{nodes.LOGFILE}: {exc}")
        nodes.write_output_nodes(d, self.version,
                                 nodes.pick_output_nodes(d, o["pickname"], self.version, with_log))
        if str(self.version).startswith("3"):
            log(f"{d}RELION_OUTPUT_NODES.star carries 3.1's node type and 4.x/5.x's label: RELION 3.1's "
                "'WARNING: will ignore (but maintain) values for the unknown label: rlnPipeLineNodeTypeLabel' "
                "is expected and harmless")
        total = sum(k for k, _ in counts.values())
        log(f"{len(rows)}/{len(self.names)} micrographs have coordinates; {total} picks in total "
            f"(FOM >= {self._thr_text()})")
        if rows and total == 0:
            warn("no picks at or above the threshold: Extract would give 0 particles; lower 'threshold' "
                 "or check 'particle_diameter'")
        if self.failed:
            warn(f"{len(self.failed)} micrograph(s) failed and have no coordinates (a Continue retries "
                 f"them): " + "; ".join(f"{n}: {e}" for n, e in list(self.failed.items())[:5]))
        return len(rows)


def _mtime(path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 1 << 62  # unknown: never older than the summary


def main(argv=None, picker_factory=None) -> int:
    """Run the pick job; returns 0 success, 1 failure, 3 aborted (RELION reads the exit files)."""
    from hydrapicker import distributed

    argv = sys.argv[1:] if argv is None else list(argv)

    def work(opts, job, state):
        n = ranks_wanted(opts)
        if n > 1 and not distributed.is_distributed():
            launch_ranks(argv, opts, job, n, PROG)
            return
        pr = PickRun(opts, job, picker_factory)
        pr.prepare()

        def finish(aborted):
            if not pr.gather_ranks():
                return True  # rank > 0: rank 0 writes the job's outputs
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

    try:
        rc = run(argv, PROG, PARAMS, __doc__.strip().splitlines()[0], work)
        if rc == 3 and distributed.is_distributed() and os.environ.get(LAUNCHED_ENV):
            rc = 0  # an abort is no rank failure: the exit file says ABORTED; torchrun would report a crash
        return rc
    finally:
        try:
            distributed.finish()
        except Exception:  # a rank that died took the process group with it; the exit file is written
            pass


def entry_point():
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
