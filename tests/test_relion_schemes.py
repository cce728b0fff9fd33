"""A Scheme's cycles (RELION 4.x/5.x) and repeated Continues (3.1): the pick job re-run on a grown
micrographs STAR picks only the new micrographs, leaves the old coordinate files untouched and lists every
micrograph in its coordinate node; a cycle with nothing new loads no model."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import starfile

from relion_helpers import MICS_STAR, REPO, FakePicker, make_project, write_mics_star
from relion_hydra import paths
from relion_hydra.pick_job import main

JOB = "External/job001/"
NAMES = [f"MotionCorr/job002/Movies/mic{i:03d}.mrc" for i in (1, 2, 3, 4)]


def _mtimes(job, names, pickname="autopick"):
    return {n: os.stat(paths.coord_path(job, n, pickname)).st_mtime_ns for n in names}


def test_grown_star_picks_only_the_new_micrographs_and_nothing_new_loads_no_model(tmp_path, monkeypatch, capsys):
    make_project(tmp_path, n_mics=4, shape=(256, 256))
    monkeypatch.chdir(tmp_path)
    write_mics_star(MICS_STAR, NAMES[:2], 2.0)
    argv = ["--o", JOB, "--in_mics", MICS_STAR, "--particle_diameter", "40", "--j", "1"]
    fake = FakePicker()
    assert main(argv, picker_factory=fake.factory) == 0 and fake.picked == NAMES[:2]
    before = _mtimes(JOB, NAMES[:2])
    write_mics_star(MICS_STAR, NAMES, 2.0)  # the next cycle: two more micrographs
    time.sleep(0.01)
    fake = FakePicker()
    assert main(argv, picker_factory=fake.factory) == 0 and fake.picked == NAMES[2:]
    assert _mtimes(JOB, NAMES[:2]) == before
    assert starfile.read(JOB + "autopick.star")["rlnMicrographName"].tolist() == NAMES
    capsys.readouterr()
    all_before = _mtimes(JOB, NAMES)
    log_before = os.stat(JOB + "logfile.pdf").st_mtime_ns

    def no_model(*a, **k):
        raise AssertionError("a cycle with nothing new loaded the model")

    assert main(argv, picker_factory=no_model) == 0
    assert "nothing new" in capsys.readouterr().out
    assert _mtimes(JOB, NAMES) == all_before and os.stat(JOB + "logfile.pdf").st_mtime_ns == log_before
    assert starfile.read(JOB + "autopick.star")["rlnMicrographName"].tolist() == NAMES
    assert sorted(p.name for p in Path(JOB).glob("RELION_JOB_EXIT_*")) == ["RELION_JOB_EXIT_SUCCESS"]
    # the summary (earlier rows reused, not re-read) still counts what the coordinate files hold
    summary = starfile.read(JOB + "summary.star")
    assert summary["rlnMicrographName"].tolist() == NAMES
    assert summary["rlnGroupNrParticles"].tolist() == [len(FakePicker.expected(n).above(0.5)) for n in NAMES]
    # a coordinate file newer than the summary is read again, not taken from it
    from hydrapicker.coords import write_relion_star
    write_relion_star(paths.coord_path(JOB, NAMES[0], "autopick"), FakePicker.expected(NAMES[0]).above(0.9))
    assert main(argv, picker_factory=no_model) == 0
    assert starfile.read(JOB + "summary.star")["rlnGroupNrParticles"].tolist()[0] == \
        len(FakePicker.expected(NAMES[0]).above(0.9))
    # other options (a new threshold) are other settings: the model is loaded and everything re-picked
    fake = FakePicker()
    assert main(argv[:-2] + ["--threshold", "0.7", "--j", "1"], picker_factory=fake.factory) == 0
    assert fake.picked == NAMES


# ---- the real pipeliner ------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("relion_pipeliner") is None, reason="relion_pipeliner not on PATH")
def test_repeated_run_on_a_grown_star_through_the_pipeliner(tmp_path):
    from relion_versions import pipeliner_names

    relion = pipeliner_names()
    make_project(tmp_path, n_mics=4, shape=(256, 256))
    write_mics_star(tmp_path / MICS_STAR, NAMES[:2], 2.0)
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")

    def pipeliner(*args):
        r = subprocess.run(["relion_pipeliner", *args], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300, env=env)
        assert r.returncode == 0, f"relion_pipeliner {args}:\n{r.stdout}\n{r.stderr}"

    def run_cycle():
        t0 = time.time()
        pipeliner("--RunJobs", relion.run_jobs_arg((JOB,)), "--sec_wait_after", "1")
        procs = starfile.read(tmp_path / "default_pipeline.star", always_dict=True)["pipeline_processes"]
        status = dict(zip(procs["rlnPipeLineProcessName"], procs[relion.status_column]))[JOB]
        assert status == relion.succeeded, (tmp_path / JOB / "run.err").read_text()
        return time.time() - t0

    pipeliner("--addJob", "External", "--addJobOptions",
              f"fn_exe == {REPO / 'bin' / 'relion_hydra_pick'};in_mic == {MICS_STAR};"
              "param1_label == particle_diameter;param1_value == 30;nr_threads == 1")
    t_first = run_cycle()
    job = tmp_path / JOB
    old = {n: os.stat(job.parent.parent / paths.coord_path(JOB, n, "autopick")).st_mtime_ns for n in NAMES[:2]}
    write_mics_star(tmp_path / MICS_STAR, NAMES, 2.0)
    t_grown = run_cycle()
    coord = {n: tmp_path / paths.coord_path(JOB, n, "autopick") for n in NAMES}
    assert {n: os.stat(coord[n]).st_mtime_ns for n in NAMES[:2]} == old  # old files untouched
    assert all(coord[n].exists() for n in NAMES)
    assert starfile.read(job / "autopick.star")["rlnMicrographName"].tolist() == NAMES
    assert (tmp_path / relion.node_file(JOB)).exists()
    out = (job / "run.out").read_text()
    assert "continuing: 2 micrographs already done" in out and "2 micrographs to pick" in out
    every = {n: os.stat(coord[n]).st_mtime_ns for n in NAMES}
    t_none = run_cycle()
    assert {n: os.stat(coord[n]).st_mtime_ns for n in NAMES} == every
    assert "nothing new: all 4 micrographs" in (job / "run.out").read_text()
    print(f"\npipeliner cycles: first (2 micrographs) {t_first:.1f} s, grown (+2) {t_grown:.1f} s, "
          f"nothing new {t_none:.1f} s")


def test_summary_can_carry_each_micrographs_auto_threshold(tmp_path):
    from emtable import Table

    from relion_hydra import nodes

    p = nodes.write_summary(str(tmp_path / "summary.star"), [("a.mrc", 3, 0.5), ("b.mrc", 0, 0.0)], 30001,
                            thresholds={"a.mrc": 0.281})
    df = starfile.read(p)
    assert df[nodes.THRESHOLD_LABEL].tolist() == [0.281, -1.0]  # -1: unknown
    assert Table(fileName=p, tableName="summary").getColumnNames()[-1] == nodes.THRESHOLD_LABEL
    plain = starfile.read(nodes.write_summary(str(tmp_path / "s2.star"), [("a.mrc", 3, 0.5)], 30001))
    assert list(plain.columns) == ["rlnMicrographName", "rlnGroupNrParticles", "rlnAutopickFigureOfMerit"]
