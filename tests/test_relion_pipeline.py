"""End to end with the real RELION 3.1.3 binaries: our pick job, Extract and Class2D through
``relion_pipeliner`` exactly as the GUI runs them, on a small synthetic project.

Skipped (with the reason) when the RELION binaries or the shipped model are absent. Runtime: about a
minute on 2 CPU cores (3 micrographs of 512^2, Class2D with 3 iterations).
"""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from relion_helpers import MICS_STAR, REPO, make_project

RELION_BINS = ("relion_pipeliner", "relion_preprocess", "relion_refine")
missing = [b for b in RELION_BINS if shutil.which(b) is None]
pytestmark = pytest.mark.skipif(bool(missing), reason=f"RELION binaries not found on PATH: {missing}")

PICK = str(REPO / "bin" / "relion_hydra_pick")
APIX, DIAMETER_A, BOX = 2.0, 80.0, 64


def model_path():
    """The shipped model; HYDRA_TEST_MODEL may point at another one (e.g. before the first release)."""
    p = os.environ.get("HYDRA_TEST_MODEL")
    if p:
        return Path(p)
    from hydrapicker.checkpoint import default_model_path
    return default_model_path()


def pipeliner(project, *args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    r = subprocess.run(["relion_pipeliner", *args], cwd=project, capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert r.returncode == 0, f"relion_pipeliner {args} failed:\n{r.stdout}\n{r.stderr}"
    return r


def statuses(project):
    procs = starfile.read(Path(project) / "default_pipeline.star", always_dict=True)["pipeline_processes"]
    return dict(zip(procs["rlnPipeLineProcessName"], procs["rlnPipeLineProcessStatus"]))


def add_pick_job(project, extra=""):
    opts = (f"fn_exe == {PICK};in_mic == {MICS_STAR};param1_label == particle_diameter;"
            f"param1_value == {DIAMETER_A:g};nr_threads == 2{extra}")
    if os.environ.get("HYDRA_TEST_MODEL"):
        opts += f";param2_label == model;param2_value == {model_path()}"
    if os.environ.get("HYDRA_TEST_THRESHOLD"):
        opts += f";param3_label == threshold;param3_value == {os.environ['HYDRA_TEST_THRESHOLD']}"
    pipeliner(project, "--addJob", "External", "--addJobOptions", opts)


def centre_of_mass(img):
    w = np.clip(img - np.median(img), 0, None)
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    return float((w * xx).sum() / w.sum()), float((w * yy).sum() / w.sum())


@pytest.fixture(scope="module")
def pipeline_project(tmp_path_factory):
    if not model_path().exists():
        pytest.skip(f"the shipped model {model_path()} is not there yet (train it, or set HYDRA_TEST_MODEL)")
    project = tmp_path_factory.mktemp("relion_e2e")
    make_project(project, n_mics=3, shape=(512, 512), apix=APIX, spacing=80, sigma_px=9.0, seed=3)
    t0 = time.time()
    add_pick_job(project)
    pipeliner(project, "--addJob", "Extract", "--addJobOptions",
              f"star_mics == {MICS_STAR};coords_suffix == External/job001/coords_suffix_autopick.star;"
              f"extract_size == {BOX};do_invert == Yes;do_norm == Yes;bg_diameter == -1")
    pipeliner(project, "--addJob", "Class2D", "--addJobOptions",
              f"fn_img == Extract/job002/particles.star;nr_classes == 2;nr_iter == 3;"
              f"particle_diameter == {DIAMETER_A:g};nr_threads == 2")
    # trailing space: RELION 3.1's --RunJobs drops the last job otherwise
    pipeliner(project, "--RunJobs", "External/job001/ Extract/job002/ Class2D/job003/ ", timeout=600)
    print(f"RELION pipeline (pick + extract + Class2D) took {time.time() - t0:.1f} s")
    return project


def test_pick_job_succeeds_through_the_pipeliner(pipeline_project):
    st = statuses(pipeline_project)
    job = pipeline_project / "External/job001"
    assert st["External/job001/"] == 2, (job / "run.err").read_text()
    assert (job / "RELION_JOB_EXIT_SUCCESS").exists()
    # 'relion_' in the executable path makes RELION append --pipeline_control; it was accepted
    assert "--pipeline_control External/job001/" in (job / "note.txt").read_text()
    assert (pipeline_project / ".Nodes/2/External/job001/coords_suffix_autopick.star").exists()
    out = (job / "run.out").read_text()
    assert "micrograph 3/3" in out and "picks so far" in out and "device" in out


def test_extracted_count_equals_written_picks(pipeline_project):
    assert statuses(pipeline_project)["Extract/job002/"] == 2
    summ = starfile.read(pipeline_project / "External/job001/summary.star")
    n_picks = int(summ["rlnGroupNrParticles"].sum())
    parts = starfile.read(pipeline_project / "Extract/job002/particles.star", always_dict=True)["particles"]
    print(f"picks written (FOM >= threshold): {n_picks}; particles extracted: {len(parts)}; "
          f"per micrograph {summ['rlnGroupNrParticles'].tolist()}")
    assert n_picks > 0, "the picker found nothing on the synthetic micrographs"
    assert len(parts) == n_picks
    assert "rlnAutopickFigureOfMerit" in parts  # the FOM travels into particles.star


def test_extracted_average_is_centred(pipeline_project):
    parts = starfile.read(pipeline_project / "Extract/job002/particles.star", always_dict=True)["particles"]
    stacks = {}
    total, n = np.zeros((BOX, BOX)), 0
    for ref in parts["rlnImageName"]:
        idx, stack = ref.split("@")
        if stack not in stacks:
            with mrcfile.open(pipeline_project / stack, permissive=True) as m:
                stacks[stack] = np.asarray(m.data, dtype=np.float64)
        total += stacks[stack][int(idx) - 1]
        n += 1
    avg = total / n
    cx, cy = centre_of_mass(avg)  # extraction inverted the contrast: the dark blobs are now bright
    print(f"centre of mass of the average of {n} particles: ({cx:.2f}, {cy:.2f}); box centre {BOX // 2}")
    assert abs(cx - BOX // 2) <= 2 and abs(cy - BOX // 2) <= 2


def test_class2d_ends(pipeline_project):
    assert statuses(pipeline_project)["Class2D/job003/"] == 2
    assert (pipeline_project / "Class2D/job003/run_it003_model.star").exists()


def test_pipeliner_records_failure_for_missing_diameter(tmp_path):
    """Without particle_diameter the job must end (FAILURE) instead of hanging, with a clear run.err."""
    make_project(tmp_path, n_mics=1, shape=(128, 128))
    opts = f"fn_exe == {PICK};in_mic == {MICS_STAR};param1_label == threshold;param1_value == 0.5;nr_threads == 1"
    pipeliner(tmp_path, "--addJob", "External", "--addJobOptions", opts)
    pipeliner(tmp_path, "--RunJobs", "External/job001/ ", timeout=120)
    assert statuses(tmp_path)["External/job001/"] == 3
    err = (tmp_path / "External/job001/run.err").read_text()
    assert "--particle_diameter is required" in err and "Traceback" not in err
