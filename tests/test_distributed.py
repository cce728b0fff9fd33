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


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")
def test_torchrun_training_keeps_two_cpu_ranks_in_sync_and_writes_once(tmp_path):
    """DistributedDataParallel over 2 gloo ranks: each rank draws its own batches, yet both end with the same
    weights (checksums gathered at the end); the log and the model are written once, by rank 0; a wall-time
    budget (which each rank would hit at a different step) ends both phases on the same step everywhere."""
    import json

    from hydrapicker.checkpoint import load_checkpoint

    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    r = _run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "hydrapicker", "train", "--out", "run",
              "--datasets", "3", "--mics-per-dataset", "2", "--val-mics", "1", "--crop", "96", "--batch", "4",
              "--log-every", "1", "--val-every", "0", "--workers", "1", "--device", "cpu",
              "--steps", "100000", "--phase2-steps", "100000", "--hours", "0.002"], tmp_path)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [rec["step"] for rec in log if "loss" in rec]
    assert steps == list(range(1, len(steps) + 1)), "every step logged exactly once"
    assert {rec["phase"] for rec in log if "loss" in rec} == {1, 2}, "the budget ended phase 1, then phase 2"
    final = log[-1]
    assert final["final"] and final["world_size"] == 2 and final["ranks_in_sync"]
    assert final["parameter_checksums"][0] == final["parameter_checksums"][1]
    assert r.stdout.count("[train] done") == 1 and r.stdout.count("phase 2: 3 dataset heads") == 1
    net, meta = load_checkpoint(tmp_path / "run" / "model.pt")
    assert meta["training"]["world_size"] == 2 and meta["training"]["step"] == final["step"]
    assert sorted(meta["heads"]) == ["ds00", "ds01", "ds02", "generic"]
