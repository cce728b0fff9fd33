"""relion_hydra_train: coordinates nodes in, model file out, RELION exit files.

The plumbing tests replace ``hydrapicker.finetune`` by a recorder (test double); the last test runs
the real few-shot training when the core provides it, and picks with the resulting head.
"""
from pathlib import Path

import numpy as np
import pytest

from relion_helpers import MICS_STAR, make_project, write_job_star
from relion_hydra import paths
from relion_hydra.train_job import main as train_main

JOB = "External/job005/"
NAMES = [f"MotionCorr/job002/Movies/mic{i:03d}.mrc" for i in (1, 2, 3)]


@pytest.fixture
def project(tmp_path, monkeypatch):
    truth = make_project(tmp_path, n_mics=3, shape=(256, 256))
    monkeypatch.chdir(tmp_path)
    return truth


def write_manual_picks(truth, layout):
    """Manual picks for the first two micrographs, as 3.1 ManualPick or 4.x/5.x ManualPick writes them."""
    from hydrapicker.coords import write_relion_star
    from hydrapicker.types import Picks
    from relion_hydra import nodes

    d = "ManualPick/job004/"
    rows = []
    for n in NAMES[:2]:
        c = paths.coord_path(d, n, "manualpick")
        write_relion_star(c, Picks(truth[n][:, 0], truth[n][:, 1]))
        rows.append((n, c))
    if layout == "3.1":
        nodes.write_coords_suffix(d, "manualpick", MICS_STAR)
        return d + "coords_suffix_manualpick.star"
    nodes.write_coord_list(d + "manualpick.star", rows, 30001)
    return d + "manualpick.star"


@pytest.fixture
def fake_finetune(monkeypatch):
    from fakes import fake_finetune

    return fake_finetune(monkeypatch)


@pytest.mark.parametrize("layout", ["3.1", "4"])
def test_train_job_reads_manual_picks_and_writes_model(project, fake_finetune, layout):
    write_job_star(JOB, layout)
    node = write_manual_picks(project, layout)
    rc = train_main(["--o", JOB, "--in_mics", MICS_STAR, "--in_coords", node, "--particle_diameter", "40",
                     "--head_name", "mine", "--epochs", "3", "--pipeline_control", JOB, "--j", "1"])
    assert rc == 0 and (Path(JOB) / "RELION_JOB_EXIT_SUCCESS").exists()
    (call,) = fake_finetune
    assert [m.name for m in call["micrographs"]] == NAMES[:2]  # the unlabelled third micrograph is not used
    assert call["head_name"] == "mine" and call["epochs"] == 3 and call["diameter_A"] == 40.0
    assert call["out"] == JOB + "model.pt" and (Path(JOB) / "model.pt").exists()
    for n in NAMES[:2]:
        np.testing.assert_allclose(np.sort(call["coords"][n].x), np.sort(project[n][:, 0]), atol=1e-4)


@pytest.mark.parametrize("gpu,device", [("", "auto"), ("cpu", "cpu"), ("1", "cuda:1"), ("2,3", "cuda:2")])
def test_train_job_trains_on_the_gpu_it_is_given(project, fake_finetune, gpu, device):
    write_job_star(JOB, "4")
    node = write_manual_picks(project, "4")
    rc = train_main(["--o", JOB, "--in_mics", MICS_STAR, "--in_coords", node, "--particle_diameter", "40",
                     "--head_name", "mine", "--gpu", gpu, "--j", "1"])
    assert rc == 0
    (call,) = fake_finetune
    assert call["device"] == device


@pytest.mark.parametrize("argv,needle", [
    (["--in_coords", "ManualPick/job004/coords_suffix_manualpick.star", "--particle_diameter", "40",
      "--head_name", "mine"], "ManualPick/job004/coords_suffix_manualpick.star does not exist"),
    (["--particle_diameter", "40", "--head_name", "mine"], "--in_coords is required"),
    (["--in_coords", "x", "--particle_diameter", "40", "--head_name", "a b"], "head_name"),
])
def test_train_job_errors(project, fake_finetune, capsys, argv, needle):
    rc = train_main(["--o", JOB, "--in_mics", MICS_STAR, *argv, "--j", "1"])
    assert rc == 1 and (Path(JOB) / "RELION_JOB_EXIT_FAILURE").exists()
    assert needle in capsys.readouterr().err and not fake_finetune


def test_train_job_without_any_picks_fails(project, fake_finetune, capsys):
    from relion_hydra import nodes
    nodes.write_coords_suffix("ManualPick/job004/", "manualpick", MICS_STAR)
    rc = train_main(["--o", JOB, "--in_mics", MICS_STAR, "--in_coords",
                     "ManualPick/job004/coords_suffix_manualpick.star", "--particle_diameter", "40",
                     "--head_name", "mine", "--j", "1"])
    assert rc == 1 and "no particle coordinates" in capsys.readouterr().err


def test_train_then_pick_with_the_new_head(project, capsys):
    """Real few-shot training, kept small: 2 epochs on the 2 labelled 256^2 micrographs, then the pick
    job uses the new head on all 3 without being told (a fine-tuned model's default head)."""
    from hydrapicker.checkpoint import default_model_path, load_checkpoint
    if not default_model_path().exists():
        pytest.skip(f"the shipped model {default_model_path()} is not there yet")
    from relion_hydra.pick_job import main as pick_main
    node = write_manual_picks(project, "3.1")
    rc = train_main(["--o", JOB, "--in_mics", MICS_STAR, "--in_coords", node, "--particle_diameter", "40",
                     "--head_name", "mine", "--epochs", "2", "--gpu", "cpu", "--j", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and (Path(JOB) / "RELION_JOB_EXIT_SUCCESS").exists(), out
    assert "epoch 2" in out and "epoch 3" not in out  # --epochs reached the training
    _, meta = load_checkpoint(JOB + "model.pt")
    assert list(meta["heads"]) == ["generic", "mine"]  # the base model's head plus the new one
    rc = pick_main(["--o", "External/job006/", "--in_mics", MICS_STAR, "--particle_diameter", "40",
                    "--model", JOB + "model.pt", "--gpu", "cpu", "--j", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and (Path("External/job006") / "RELION_JOB_EXIT_SUCCESS").exists(), out
    assert f"model {JOB}model.pt, head mine" in out and f"threshold {meta['head_thresholds']['mine']:g}," in out
    for n in NAMES:  # every micrograph has its coordinate file (the third one was never labelled)
        assert Path(paths.coord_path("External/job006/", n, "autopick")).exists()
