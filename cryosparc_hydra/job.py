"""The External-job flow: HydraPicker picks land in a CryoSPARC workspace as a ``particle`` output.

1. resolve ``J12.exposures`` (must be an ``exposure`` output of a completed job);
2. create an External job in the workspace; input ``micrographs`` (exposure; slots
   ``micrograph_blob``, ``?mscope_params``, ``?ctf``) connected to it; output ``particles``
   (``location`` + ``pick_stats``, no passthrough: a particle output cannot pass an exposure input through);
3. ``with job.run()``: load the input, pick each micrograph with the core, fill every field of the
   server's field list, log progress and plots, save; the job ends *completed*, or *failed* with the
   error. External jobs are never queued.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Optional

from hydrapicker.class_centres import described
from hydrapicker.errors import UserFacingError

from . import compat, plots
from .exposures import Downloader, exposures_to_micrographs, visible_locally
from .particles import build_particles, validate_particles
from .picking import PickOptions, adapted, adapted_centres, at_working_scale, data_set_centred, head_for, min_dist_for, pick_micrographs, policy_for, qc_figure, threshold_for

INPUT_NAME = "micrographs"
OUTPUT_NAME = "particles"
INPUT_SLOTS = ["micrograph_blob", "?mscope_params", "?ctf"]
OUTPUT_SLOTS = ["location", "pick_stats"]
PROGRESS_EVERY_S = 2.0  # the progress line is updated in place, at most this often (and at the end)


class SourceError(UserFacingError):
    """The exposures given with --exposures cannot be used."""


class PickInterrupted(Exception):
    """Ctrl-C during a job: an ``Exception`` so that ``job.run()`` marks the job failed."""


class NothingPicked(UserFacingError):
    """Every micrograph failed."""


class JobSetupError(UserFacingError):
    """The server refused to set up the External job (its input, connection or output)."""


def parse_output_ref(ref: str, what: str = "--exposures"):
    """``"J12.exposures"`` -> ``("J12", "exposures")``."""
    job_uid, _, output = ref.partition(".")
    if not job_uid.upper().startswith("J") or not output:
        raise SourceError(f"{what} {ref!r}: give JOB.OUTPUT, e.g. J12.exposures (Patch CTF) or "
                          f"J15.exposures_accepted (Curate Exposures)")
    return "J" + job_uid[1:], output


def resolve_source(project, ref: str, datatype: str = "exposure", what: str = "--exposures"):
    """Check that ``ref`` names a ``datatype`` output of a completed job; returns ``(job_uid, output)``."""
    job_uid, output = parse_output_ref(ref, what)
    try:
        src = project.find_job(job_uid)
    except Exception as exc:
        raise SourceError(f"{what} {ref}: job {job_uid} not found in project {project.uid} ({exc})") from exc
    outputs = compat.job_outputs(src)
    if output not in outputs or outputs[output] != datatype:
        usable = [n for n, t in outputs.items() if t == datatype]
        raise SourceError(f"{what} {ref}: job {job_uid} has no {datatype} output named {output!r}; "
                          f"its {datatype} outputs: {', '.join(usable) or 'none'}")
    status = compat.job_status(src)
    if status != "completed":
        raise SourceError(f"{what} {ref}: job {job_uid} is {status}, not completed; wait for it to finish")
    return job_uid, output


@dataclass
class PickSummary:
    job_uid: str
    n_micrographs: int = 0
    n_picks: int = 0
    failed: list = field(default_factory=list)   # (cs_path, message)
    empty: list = field(default_factory=list)    # cs_path of micrographs with no picks
    unknown_fields: list = field(default_factory=list)
    seconds: float = 0.0
    started: float = 0.0
    read_mode: str = "file"

    def lines(self):
        yield (f"{self.job_uid}: {self.n_picks} picks on {self.n_micrographs} micrographs "
               f"in {self.seconds:.1f} s (micrographs read by {self.read_mode})")
        if self.empty:
            yield f"{len(self.empty)} micrograph(s) with no picks, e.g. {self.empty[0]}"
        for path, msg in self.failed[:10]:
            yield f"failed: {path}: {msg}"
        if len(self.failed) > 10:
            yield f"... and {len(self.failed) - 10} more failed micrographs"


def job_description(picker, opts: PickOptions, ref: str) -> str:
    meta = getattr(picker, "meta", {}) or {}
    return (f"HydraPicker picks of {ref}: diameter {opts.diameter_A:g} A, head {head_for(picker, opts)}, "
            f"threshold {threshold_for(picker, opts):g}, model {meta.get('path', meta.get('preset', '?'))} "
            f"(hydrapicker {meta.get('hydrapicker_version', '?')}), flip_y={opts.flip_y}"
            + (" (self-adapted to these exposures: the head and threshold the job log names)" if opts.adapt else ""))


def create_pick_job(project, workspace_uid: str, source_job: str, source_output: str, title: str, desc: str):
    """Create the External job, its connected exposure input and its particle output.

    A server that refuses the input, the connection or the output would leave the job "building" for ever
    with no error: the job is then run just long enough to be marked failed with the server's message,
    and the user gets that message in one line."""
    job = project.create_external_job(workspace_uid, title=title, desc=desc)
    step = "add its input"
    try:
        job.add_input("exposure", name=INPUT_NAME, min=1, slots=compat.input_slots(INPUT_SLOTS),
                      title="Micrographs picked")
        step = f"connect {source_job}.{source_output}"
        job.connect(INPUT_NAME, source_job, source_output)
        step = "add its particle output"
        job.add_output("particle", name=OUTPUT_NAME, slots=OUTPUT_SLOTS, title="HydraPicker particles")
    except Exception as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        message = f"CryoSPARC refused to {step} for External job {job.uid}: {text}"
        try:
            with job.run():
                raise JobSetupError(message)
        except JobSetupError:
            pass
        except Exception as mark_exc:  # the job could not even be marked failed: say so
            message += f" (and marking {job.uid} failed did not work either: {mark_exc}; delete it in CryoSPARC)"
        raise JobSetupError(message) from None
    return job


def choose_reader(mics, read: str):
    """``"file"`` (shared filesystem) or ``"download"`` (through the API), per ``--read``."""
    if read not in ("auto", "file", "download"):
        raise UserFacingError(f"--read {read}: choose auto, file or download")
    if read == "auto":
        return "file" if visible_locally(mics) else "download"
    if read == "file" and not visible_locally(mics):
        raise UserFacingError(
            f"--read file: micrograph {mics[0].meta['cs_path']} not found at {mics[0].path}; mount the "
            f"project directory here, pass --project-dir where it is mounted, or use --read download")
    return read


def run_pick_job(cs, project_uid: str, workspace_uid: str, exposures_ref: str, picker, opts: PickOptions, *,
                 read: str = "auto", project_dir: Optional[str] = None, title: str = "HydraPicker picks",
                 log=print, plot_overlay: bool = True) -> PickSummary:
    """The whole flow; returns a :class:`PickSummary`. Raises after marking the job failed."""
    project = cs.find_project(project_uid)
    src_job, src_output = resolve_source(project, exposures_ref)
    job = create_pick_job(project, workspace_uid, src_job, src_output, title,
                          job_description(picker, opts, exposures_ref))
    log(f"Created External job {project_uid}-{job.uid} in {workspace_uid}; input {src_job}.{src_output}")
    summary = PickSummary(job_uid=f"{project_uid}-{job.uid}", started=time.time())
    with job.run():
        try:
            _pick_into_job(cs, project, job, picker, opts, summary, read, project_dir, log, plot_overlay)
        except KeyboardInterrupt:
            raise PickInterrupted("interrupted by the user (Ctrl-C)") from None
    return summary


def _pick_into_job(cs, project, job, picker, opts, summary, read, project_dir, log, plot_overlay):
    exposures = compat.load_exposures_input(job, INPUT_NAME)
    pdir = project_dir or str(project.dir)
    mics = exposures_to_micrographs(exposures, pdir, source=f"input {INPUT_NAME} of {job.uid}")
    if not mics:
        raise SourceError("the connected exposures are empty")
    summary.n_micrographs = len(mics)
    summary.read_mode = choose_reader(mics, read)
    groups: dict = {}  # the pixel size used per exposure group, and where it comes from
    for m in mics:
        key = (m.meta.get("exp_group_id"), m.pixel_size)
        groups[key] = groups.get(key, 0) + 1
    for (group, px), n in groups.items():
        line = (f"pixel size {px:g} A/px (the exposures' micrograph_blob/psize_A) for exposure group {group}: "
                f"{n} micrograph(s)" if px else
                f"exposure group {group}: no psize_A in the exposures: each micrograph's MRC header is used "
                f"({n} micrograph(s); a header with 0 or exactly 1.0 stops the job)")
        log(line)
        compat.log(job, line)
    if opts.working_scale is not None:
        if opts.working_scale == "auto" and summary.read_mode != "file":
            raise UserFacingError("--working-scale auto reads a few micrographs from the project directory: run "
                                  "where it is mounted (--read file, --project-dir), or give a number")
        picker = at_working_scale(picker, mics, opts, log)
    if opts.adapt:
        if summary.read_mode != "file":
            raise UserFacingError("--adapt reads a sample of the micrographs from the project directory: run "
                                  "where it is mounted (--read file, --project-dir)")
        picker, opts = adapted(picker, mics, opts, f"hydra_adapted_{project.uid}_{job.uid}.pt", log)
        compat.log(job, f"HydraPicker: picking with head {opts.head} of {picker.meta.get('path')}")
    if opts.adapt_centres:
        if summary.read_mode != "file":
            raise UserFacingError("--adapt-centres reads a sample of the micrographs from the project directory: "
                                  "run where it is mounted (--read file, --project-dir)")
        picker = adapted_centres(picker, mics, opts, f"hydra_adapted_refiner_{project.uid}_{job.uid}.pt", log)
        compat.log(job, "HydraPicker: centres " + (f"refined by {picker.refiner.path}" if picker.refiner is not None
                                                   else "as the detector decodes them (the refiner was not adapted)"))
    picker = data_set_centred(picker, mics, opts, f"hydra_adapted_{project.uid}_{job.uid}.pt", log)  # --adapt
    policy = policy_for(picker, opts)
    threshold = policy.threshold
    compat.log(job, f"HydraPicker: {len(mics)} micrographs (read by {summary.read_mode}), diameter "
                    f"{opts.diameter_A:g} A, threshold {threshold:g}, device {getattr(picker, 'device', '?')}"
                    + (f"; {described(policy.class_centres_at, refs=getattr(picker, 'class_refs', None))} "
                       f"(--class-centres)"
                       if policy.class_centres_at is not None else ""))

    fields = [f for f in job.alloc_output(OUTPUT_NAME, 0).descr() if f[0] != "uid"]  # server's field list
    dataset_class = type(exposures)

    def allocate(n):
        return dataset_class.allocate(n, fields)

    overlay_fig = [None]
    last_log = [0.0]
    from hydrapicker.qc import qc_indices

    qc_chosen, qc_figs = qc_indices(len(mics), opts.qc), []

    def records():
        with contextlib.ExitStack() as stack:
            downloader = (stack.enter_context(Downloader(cs.download_file, project.uid))
                          if summary.read_mode == "download" else None)
            for i, rec in enumerate(pick_micrographs(picker, mics, opts, downloader=downloader), 1):
                cs_path = rec.mic.meta["cs_path"]
                if rec.error is not None:
                    summary.failed.append((cs_path, str(rec.error)))
                    compat.log(job, f"skipped {cs_path}: {rec.error}", level="warning")
                else:
                    summary.n_picks += len(rec.picks)
                    if not len(rec.picks):
                        summary.empty.append(cs_path)
                    if plot_overlay and overlay_fig[0] is None and len(rec.picks) and rec.local_path:
                        overlay_fig[0] = _overlay(rec, opts, log)
                    if i - 1 in qc_chosen and rec.local_path:  # drawn now: a downloaded file goes after this
                        qc_figs.append(_qc_figure(rec, opts, log))
                    yield rec.mic, rec.picks, rec.picked_shape, min_dist_for(opts)
                if i == len(mics) or time.time() - last_log[0] >= PROGRESS_EVERY_S:
                    last_log[0] = time.time()
                    compat.log(job, f"Picked {i}/{len(mics)} micrographs, {summary.n_picks} picks "
                                    f"({len(summary.failed)} failed)", name="progress")

    dset, unknown = build_particles(records(), allocate, flip_y=opts.flip_y)
    summary.unknown_fields = unknown
    if unknown:
        compat.log(job, f"fields left at their defaults (unknown to this version): {', '.join(unknown)}",
                   level="warning")
    if len(summary.failed) == len(mics):
        raise NothingPicked(f"all {len(mics)} micrographs failed; first error: {summary.failed[0][1]}")
    validate_particles(dset, [m.meta["uid"] for m in mics])

    fom = dset["pick_stats/ncc_score"] if len(dset) else []
    hist = plots.fom_histogram(fom, threshold)
    compat.save_output(job, OUTPUT_NAME, dset, image=overlay_fig[0] or hist)
    try:  # the picks are saved; a plot that cannot be uploaded only costs a warning
        job.log_plot(hist, "FOM histogram of the saved picks", formats=["png"])
        if overlay_fig[0] is not None:
            job.log_plot(overlay_fig[0], "Picks on the first micrograph with picks", formats=["png"])
        for title, fig in (f for f in qc_figs if f is not None):
            job.log_plot(fig, title, formats=["png"])
    except Exception as exc:
        compat.log(job, f"could not upload the plots: {exc}", level="warning")
    summary.seconds = time.time() - summary.started
    for line in summary.lines():
        compat.log(job, line)
        log(line)


def _qc_figure(rec, opts, log):
    """(title, figure) of ``--qc`` for one picked micrograph (:func:`.picking.qc_figure`), or None with a
    warning: a plot must never fail the job."""
    try:
        name, fig = qc_figure(rec, opts)
        return f"QC: {name}", fig
    except Exception as exc:
        log(f"warning: no QC image for {rec.mic.meta.get('cs_path')} ({exc})")
        return None


def _overlay(rec, opts, log):
    try:
        image = plots.read_image(rec.local_path)
        psize = rec.mic.meta.get("psize_A") or 1.0
        scale = image.shape[-1] / rec.picked_shape[1] if rec.picked_shape else 1.0
        from hydrapicker.types import Picks
        shown = Picks(rec.picks.x * scale, rec.picks.y * scale, rec.picks.fom)
        return plots.overlay(image, shown, opts.diameter_A / psize,
                             title=os.path.basename(rec.mic.meta["cs_path"]))
    except Exception as exc:  # a plot must never fail the job
        log(f"warning: no overlay plot ({exc})")
        return None
