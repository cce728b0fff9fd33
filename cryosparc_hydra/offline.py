"""Offline mode: exported ``.cs`` files in, ``.cs`` files out, no server.

``pick``: an exposures ``.cs`` (e.g. ``J12/J12_passthrough_exposures.cs`` or an exported dataset) and the
project directory its paths are relative to -> a particle ``.cs`` with the ``location`` and
``pick_stats`` fields (:data:`cryosparc_hydra.particles.PARTICLE_FIELDS`). Import it into CryoSPARC
with an Import Result Group job, or attach it with ``cryosparc-tools``.
``train``: a particles ``.cs`` (e.g. Manual Picker's) + the exposures ``.cs`` -> a model file with a
new few-shot head.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hydrapicker.atomic import atomic_path
from hydrapicker.class_centres import described
from hydrapicker.errors import UserFacingError

from .exposures import check_readable, exposures_to_micrographs
from .extra import dataset_class
from .particles import build_particles, offline_allocator, particles_to_picks, validate_particles
from .picking import PickOptions, adapted, adapted_centres, at_working_scale, data_set_centred, min_dist_for, pick_micrographs, policy_for


class CsFileError(UserFacingError):
    """A .cs file is missing or unreadable."""


def load_cs(path, what: str):
    path = Path(path)
    if not path.is_file():
        raise CsFileError(f"{what} {path}: no such file")
    try:
        return dataset_class().load(str(path))
    except Exception as exc:
        raise CsFileError(f"{what} {path}: not a CryoSPARC .cs dataset ({exc})") from exc


def save_cs(dset, path) -> None:
    with atomic_path(path, suffix=".cs") as tmp:
        dset.save(str(tmp))


def default_project_dir(exposures_cs) -> str:
    """Paths in a .cs are relative to the project directory; a job's own .cs sits in ``PROJECT/J12/``."""
    return str(Path(exposures_cs).resolve().parent.parent)


def load_micrographs(exposures_cs, project_dir=None):
    exposures = load_cs(exposures_cs, "--exposures-cs")
    pdir = project_dir or default_project_dir(exposures_cs)
    mics = exposures_to_micrographs(exposures, pdir, source=str(exposures_cs))
    if not mics:
        raise CsFileError(f"--exposures-cs {exposures_cs}: the dataset holds no exposures")
    check_readable(mics, pdir, "pass --project-dir with the CryoSPARC project directory the paths are "
                               "relative to")
    return mics


def pick_offline(picker, exposures_cs, out, opts: PickOptions, project_dir=None, log=print) -> dict:
    """Pick every exposure of ``exposures_cs``; write the particles to ``out``. Returns counts.

    ``picker`` is a Picker, or a callable returning one (called after the inputs were checked, so that
    a wrong path fails before the model is loaded).
    """
    mics = load_micrographs(exposures_cs, project_dir)
    if not hasattr(picker, "pick"):
        picker = picker()
    picker = at_working_scale(picker, mics, opts, log)
    picker, opts = adapted(picker, mics, opts, str(Path(out).with_suffix("")) + "_adapted.pt", log)
    picker = adapted_centres(picker, mics, opts, str(Path(out).with_suffix("")) + "_adapted_refiner.pt", log)
    picker = data_set_centred(picker, mics, opts, str(Path(out).with_suffix("")) + "_adapted.pt", log)
    policy = policy_for(picker, opts)
    if policy.class_centres_at is not None:
        log(f"centres: {described(policy.class_centres_at, refs=getattr(picker, 'class_refs', None))}; "
            f"--no-class-centres: off")
    stats = {"micrographs": len(mics), "picks": 0, "failed": [], "empty": []}
    from hydrapicker.qc import qc_indices

    qc_chosen = qc_indices(len(mics), opts.qc)
    qc_dir = Path(str(Path(out).with_suffix("")) + "_qc")  # picks.cs -> picks_qc/<micrograph>.png

    def items():
        for i, rec in enumerate(pick_micrographs(picker, mics, opts), 1):
            cs_path = rec.mic.meta["cs_path"]
            if rec.error is not None:
                stats["failed"].append(cs_path)
                log(f"skipped {cs_path}: {rec.error}")
                continue
            if i - 1 in qc_chosen and rec.local_path:
                _write_qc(qc_dir, rec, opts, log)
            stats["picks"] += len(rec.picks)
            if not len(rec.picks):
                stats["empty"].append(cs_path)
            log(f"[{i}/{len(mics)}] {cs_path}: {len(rec.picks)} picks")
            yield rec.mic, rec.picks, rec.picked_shape, min_dist_for(opts)

    dset, _ = build_particles(items(), offline_allocator, flip_y=opts.flip_y)
    if len(stats["failed"]) == len(mics):
        raise UserFacingError(f"all {len(mics)} micrographs of {exposures_cs} failed; see the messages above")
    validate_particles(dset, [m.meta["uid"] for m in mics])
    save_cs(dset, out)
    log(f"Wrote {len(dset)} picks on {len(mics)} micrographs to {out}"
        + (f" ({len(stats['failed'])} failed)" if stats["failed"] else ""))
    return stats


def _write_qc(qc_dir: Path, rec, opts: PickOptions, log) -> None:
    """``--qc`` offline: the QC image of one micrograph (:func:`.picking.qc_figure`) as
    <out>_qc/<micrograph name>.png (a QC image that cannot be written costs a warning, never the picks)."""
    from hydrapicker.qc import save_figure

    from .picking import qc_figure

    try:
        name, fig = qc_figure(rec, opts)
        save_figure(fig, qc_dir / (Path(name).stem + ".png"))
    except Exception as exc:  # noqa: BLE001
        log(f"warning: no QC image for {rec.mic.meta.get('cs_path')} ({exc})")


def training_set(mics, particles, flip_y=False, source="particles"):
    """Join picks to exposures by ``micrograph_uid``: ``(labelled micrographs, {name: Picks})``."""
    by_uid = {m.meta["uid"]: m for m in mics}
    picks = particles_to_picks(particles, flip_y=flip_y, source=source)
    unknown = [u for u in picks if u not in by_uid]
    if unknown and len(unknown) == len(picks):
        raise UserFacingError(f"{source}: none of the picks' micrograph uids are among the exposures; give "
                              f"the exposures the particles were picked on")
    labelled = [m for m in mics if len(picks.get(m.meta["uid"], ()))]  # exposure order
    coords = {m.name: picks[m.meta["uid"]] for m in labelled}
    return labelled, coords, len(unknown)


def labelled_set(mics, particles, flip_y, particles_ref, exposures_ref, head, log=print) -> tuple:
    """(labelled micrographs, {name: Picks}) of a few-shot training run, reported; an error when none of
    the picks lie on the exposures."""
    labelled, coords, n_unknown = training_set(mics, particles, flip_y, source=str(particles_ref))
    if n_unknown:
        log(f"warning: picks on {n_unknown} micrograph(s) not in {exposures_ref} are ignored")
    if not labelled:
        raise UserFacingError(f"{particles_ref}: no picks on the exposures of {exposures_ref}")
    n = int(np.sum([len(p) for p in coords.values()]))
    log(f"Training head {head!r} from {n} picks on {len(labelled)} micrographs")
    return labelled, coords


def train_offline(particles_cs, exposures_cs, out, diameter_A, head, base_model=None, project_dir=None,
                  epochs=None, flip_y=False, device="auto", log=print):
    from hydrapicker.finetune import finetune

    mics = load_micrographs(exposures_cs, project_dir)
    particles = load_cs(particles_cs, "--particles-cs")
    labelled, coords = labelled_set(mics, particles, flip_y, f"--particles-cs {particles_cs}", exposures_cs,
                                    head, log)
    path = finetune(base_model, labelled, coords, diameter_A, head, epochs=epochs, out=out, log=log,
                    device=device)
    log(f"Wrote {path}")
    return Path(path)

