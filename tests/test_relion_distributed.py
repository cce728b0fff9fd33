"""The RELION pick job in several ranks (torchrun): gpu = 0,1,... or ranks = N starts one process per GPU
(CPU ranks with gloo here); the result equals the single-process job, Continue works across rank counts,
and the launching process writes the exit file when the ranks could not."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import starfile

from relion_helpers import MICS_STAR, REPO, make_sim_project
from relion_hydra import pick_job
from relion_hydra import ranks as rank_mod
from relion_hydra.jobdir import DONE_LIST

PICK = os.path.join(REPO, "bin", "relion_hydra_pick")


def _job(project, job, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, PICK, "--o", job, "--in_mics", MICS_STAR, "--particle_diameter", "290",
                        "--gpu", "cpu", *extra], cwd=project, env=env, capture_output=True, text=True,
                       timeout=300)
    exits = sorted(p.name for p in (project / job).glob("RELION_JOB_EXIT_*"))
    return r, exits


def _coords(project, job):
    lst = starfile.read(project / job / "autopick.star")
    return {m: starfile.read(project / c) for m, c in zip(lst["rlnMicrographName"], lst["rlnMicrographCoordinates"])}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("relion_ranks")
    make_sim_project(root, n_mics=3)
    return root


def test_two_cpu_ranks_equal_one_process_and_continue_across_rank_counts(project):
    r1, ex1 = _job(project, "External/job011/", "--j", "1")
    r2, ex2 = _job(project, "External/job012/", "--ranks", "2", "--j", "2")
    assert ex1 == ex2 == ["RELION_JOB_EXIT_SUCCESS"], r2.stdout + r2.stderr
    assert "picking with 2 ranks on CPU" in r2.stdout and "by 2 ranks, 1 threads each" in r2.stdout
    assert "rank 0/2: micrograph" in r2.stdout and "rank 1/2: micrograph" in r2.stdout
    single, multi = _coords(project, "External/job011/"), _coords(project, "External/job012/")
    assert list(single) == list(multi) == starfile.read(project / MICS_STAR)["micrographs"]["rlnMicrographName"].tolist()
    for name in single:
        a, b = single[name], multi[name]
        assert len(a) > 0 and a.equals(b), name
    summ = starfile.read(project / "External/job012/summary.star")
    assert summ["rlnGroupNrParticles"].tolist() == [len(single[n]) for n in single]
    # each rank kept its own done list; a Continue with 2 ranks, then with 1, picks nothing again
    job = project / "External/job012"
    assert (job / "done_mics.rank1.txt").exists()
    r3, ex3 = _job(project, "External/job012/", "--ranks", "2", "--j", "2")
    assert ex3 == ["RELION_JOB_EXIT_SUCCESS"] and "0 micrographs to pick" in r3.stdout, r3.stdout + r3.stderr
    r4, ex4 = _job(project, "External/job012/", "--j", "1")
    # one process with nothing new takes the quick path (no model loaded), which still folds the rank lists
    assert ex4 == ["RELION_JOB_EXIT_SUCCESS"] and "nothing new" in r4.stdout, r4.stdout + r4.stderr
    assert not (job / "done_mics.rank1.txt").exists()  # folded back into the one done list
    assert len((job / DONE_LIST).read_text().splitlines()) == 1 + 3
    assert {n: d.equals(single[n]) for n, d in _coords(project, "External/job012/").items()} == \
        {n: True for n in single}


def test_ranks_that_end_without_an_exit_file_leave_a_failure(project, monkeypatch, capsys):
    """A rank crashed and torchrun stopped the others: the launching process still gives RELION its exit file."""
    monkeypatch.chdir(project)
    monkeypatch.setattr(rank_mod, "rank_command", lambda argv, n: [sys.executable, "-c", "import sys; sys.exit(7)"])
    rc = pick_job.main(["--o", "External/job013/", "--in_mics", MICS_STAR, "--particle_diameter", "290",
                        "--gpu", "cpu", "--ranks", "2", "--j", "2"])
    assert rc == 1
    assert sorted(p.name for p in Path("External/job013").glob("RELION_JOB_EXIT_*")) == ["RELION_JOB_EXIT_FAILURE"]
    assert "ended without finishing the job (torchrun exit code 7)" in capsys.readouterr().err


@pytest.mark.skipif(pytest.importorskip("torch").cuda.is_available(), reason="this machine has CUDA")
def test_gpu_list_without_cuda_is_a_clear_failure(project):
    r = subprocess.run([sys.executable, PICK, "--o", "External/job014/", "--in_mics", MICS_STAR,
                        "--particle_diameter", "290", "--gpu", "0,1"], cwd=project, capture_output=True,
                       text=True, timeout=120)
    assert sorted(p.name for p in (project / "External/job014").glob("RELION_JOB_EXIT_*")) == \
        ["RELION_JOB_EXIT_FAILURE"]
    assert "gpu = 0,1: CUDA is not available" in r.stderr


@pytest.mark.parametrize("gpu,ranks,ids,n", [("", None, [], 1), ("cpu", None, [], 1), ("0", None, ["0"], 1),
                                              ("0,1", None, ["0", "1"], 2), (" 2, 3 ", None, ["2", "3"], 2),
                                              ("cpu", 3, [], 3), ("0", 2, ["0"], 2)])
def test_gpu_value_to_ranks(gpu, ranks, ids, n):
    assert rank_mod.gpu_ids(gpu) == ids
    assert rank_mod.ranks_wanted({"gpu": gpu, "ranks": ranks}) == n


def test_bad_gpu_value_is_named():
    with pytest.raises(rank_mod.ArgumentError, match="'0;1' is not understood"):
        rank_mod.gpu_ids("0;1")
