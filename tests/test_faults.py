"""Faults and hostile input (issue 19): each test injects the fault instead of describing it, and failed
before its fix. Users get one line naming the file and the fix, never a traceback, and nothing is lost."""
import os
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import write_mrc
from relion_helpers import MICS_STAR, make_project, run_job_subprocess, wait_for

JOB = "External/job001/"


def _job_argv(job=JOB):
    return ["--o", job, "--in_mics", MICS_STAR, "--particle_diameter", "40", "--j", "1"]


# ---- 3: a RELION abort in the first seconds -------------------------------------------------------
@pytest.mark.slow
def test_relion_abort_in_the_first_moment_is_not_lost(tmp_path):
    """The GUI's abort touched 0.3 s after the job started (before our imports finished) ends ABORTED."""
    make_project(tmp_path, n_mics=6, shape=(128, 128))
    proc = run_job_subprocess(tmp_path, _job_argv(), delay=0.5)
    try:
        time.sleep(0.3)
        (tmp_path / JOB / "RELION_JOB_ABORT_NOW").touch()
        assert wait_for(lambda: any((tmp_path / JOB).glob("RELION_JOB_EXIT_*")), timeout=60)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert sorted(p.name for p in (tmp_path / JOB).glob("RELION_JOB_EXIT_*")) == ["RELION_JOB_EXIT_ABORTED"]


def test_relion_stale_abort_file_from_an_earlier_run_is_removed(tmp_path, monkeypatch):
    """An abort file older than the job (left by an earlier, aborted run) does not abort a Continue."""
    from relion_helpers import FakePicker
    from relion_hydra.pick_job import main

    make_project(tmp_path, n_mics=2, shape=(128, 128))
    monkeypatch.chdir(tmp_path)
    stale = tmp_path / JOB / "RELION_JOB_ABORT_NOW"
    stale.parent.mkdir(parents=True)
    stale.touch()
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert main(_job_argv(), picker_factory=FakePicker().factory) == 0
    assert (tmp_path / JOB / "RELION_JOB_EXIT_SUCCESS").exists() and not stale.exists()


def test_relion_abort_file_newer_than_the_job_start_aborts_at_once(tmp_path, monkeypatch):
    """The job's start is the process's start: a file touched after it but before the job cleaned up aborts."""
    from relion_helpers import FakePicker
    from relion_hydra import jobdir
    from relion_hydra.pick_job import main

    make_project(tmp_path, n_mics=2, shape=(128, 128))
    monkeypatch.chdir(tmp_path)
    abort = tmp_path / JOB / "RELION_JOB_ABORT_NOW"
    abort.parent.mkdir(parents=True)
    abort.touch()
    assert jobdir.process_start_time() <= abort.stat().st_mtime
    fake = FakePicker()
    assert main(_job_argv(), picker_factory=fake.factory) == 3
    assert fake.picked == []
    assert sorted(p.name for p in (tmp_path / JOB).glob("RELION_JOB_EXIT_*")) == ["RELION_JOB_EXIT_ABORTED"]


# ---- 2: aggregate outputs describe every micrograph done, whichever run did it -----------------------
def _noise_micrographs(folder, n=3, shape=(256, 256), apix=4.0):
    from conftest import blob_micrograph

    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        centres = rng.uniform(30, shape[0] - 30, (12, 2))
        paths.append(write_mrc(Path(folder) / f"mic{i}.mrc", blob_micrograph(shape, centres, sigma=6.0, seed=i),
                               apix=apix))
    return paths


def test_topaz_file_after_an_interrupted_run_and_a_resume_lists_every_micrograph(tmp_path):
    from hydrapicker.cli import main as hydra

    _noise_micrographs(tmp_path / "mics")
    args = ["pick", str(tmp_path / "mics" / "*.mrc"), "--diameter", "60", "--all", "--quiet",
            "--format", "star", "topaz"]
    assert hydra(args + ["--out", str(tmp_path / "whole")]) == 0
    whole = (tmp_path / "whole" / "picks_hydra.txt").read_bytes()
    assert {ln.split(b"\t")[0] for ln in whole.splitlines()[1:]} == {b"mic0", b"mic1", b"mic2"}
    # a run killed before its last micrograph (the coordinate STAR is written last), then resumed
    assert hydra(args + ["--out", str(tmp_path / "part")]) == 0
    (tmp_path / "part" / "mic2_hydra.star").unlink()
    (tmp_path / "part" / "picks_hydra.txt").unlink()
    assert hydra(args + ["--out", str(tmp_path / "part")]) == 0
    assert (tmp_path / "part" / "picks_hydra.txt").read_bytes() == whole
    # and a resume with nothing left to do rewrites it whole too
    assert hydra(args + ["--out", str(tmp_path / "part")]) == 0
    assert (tmp_path / "part" / "picks_hydra.txt").read_bytes() == whole
