"""Train a few-shot head from a CryoSPARC particles output (e.g. Manual Picker, Select 2D) and the
exposures it was picked on. The new model file is written locally; nothing is saved to the project.
"""
from __future__ import annotations

from .exposures import Downloader, exposures_to_micrographs, visible_locally
from .job import resolve_source
from .offline import labelled_set


def train_from_project(cs, project_uid, particles_ref, exposures_ref, out, diameter_A, head, *,
                       base_model=None, epochs=None, flip_y=False, read="auto", project_dir=None, device="auto",
                       log=print):
    from hydrapicker.finetune import finetune

    project = cs.find_project(project_uid)
    p_job, p_out = resolve_source(project, particles_ref, "particle", "--particles")
    e_job, e_out = resolve_source(project, exposures_ref, "exposure", "--exposures")
    particles = project.find_job(p_job).load_output(p_out)
    exposures = project.find_job(e_job).load_output(e_out)
    pdir = project_dir or str(project.dir)
    mics = exposures_to_micrographs(exposures, pdir, source=exposures_ref)
    labelled, coords = labelled_set(mics, particles, flip_y, particles_ref, exposures_ref, head, log)
    kw = dict(epochs=epochs, out=out, log=log, device=device)
    if read == "download" or (read == "auto" and not visible_locally(labelled)):
        with Downloader(cs.download_file, project.uid) as dl:
            local = [dl.get(m) for m in labelled]
            return finetune(base_model, local, coords, diameter_A, head, **kw)
    return finetune(base_model, labelled, coords, diameter_A, head, **kw)
