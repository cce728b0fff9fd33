"""torchrun with 2 CPU ranks (gloo) gives exactly the single-process output."""
import os
import shutil
import subprocess
import sys

import pytest
import starfile


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    from hydrapicker.simulate import get_target, write_dataset

    out = tmp_path_factory.mktemp("dist")
    write_dataset(get_target("t_ribosome"), out, n_micrographs=3)
    return out


def _run(cmd, cwd):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")
def test_torchrun_two_cpu_ranks_equals_single_process(small_set):
    from hydrapicker.simulate import get_target

    d = str(get_target("t_ribosome").diameter_A)
    common = ["pick", "--mics", "micrographs.star", "--diameter", d, "--device", "cpu", "--all",
              "--format", "star", "topaz", "-j", "1"]
    _run([sys.executable, "-m", "hydrapicker", *common, "--out", "single"], small_set)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    r = _run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "hydrapicker", *common, "--out", "multi"],
             small_set)
    single = sorted((small_set / "single").glob("*.star"))
    multi = sorted((small_set / "multi").glob("*.star"))
    assert [p.name for p in single] == [p.name for p in multi] and len(single) == 3
    for a, b in zip(single, multi):
        da, db = starfile.read(a), starfile.read(b)
        assert len(da) == len(db)
        assert (da.values == db.values).all()
    # rank 0 wrote the list file holding every micrograph's picks
    assert (small_set / "multi" / "picks_hydra.txt").read_text() == \
        (small_set / "single" / "picks_hydra.txt").read_text()
    assert "picked 3 micrographs" in r.stdout
