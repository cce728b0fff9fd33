"""Few-shot training honours the device it is given: every entry point passes it to ``finetune``
(checked with an autospec fake of the real function), and ``finetune`` itself uses it."""
import numpy as np
import pytest
import torch

from conftest import write_mrc
from hydrapicker.cli import main as hydra
from hydrapicker.coords import write_relion_star
from hydrapicker.errors import UserFacingError
from hydrapicker.types import Picks


def _labelled(tmp_path):
    write_mrc(tmp_path / "m.mrc", np.random.default_rng(0).normal(size=(128, 128)), apix=4.0)
    write_relion_star(tmp_path / "m_manualpick.star", Picks([30, 60, 90], [40, 70, 100]))
    return ["finetune", "--mics", str(tmp_path / "m.mrc"), "--coords", str(tmp_path / "m_manualpick.star"),
            "--diameter", "60", "--name", "p", "--out", str(tmp_path / "p.pt"), "--quiet"]


@pytest.mark.parametrize("device", ["cpu", "cuda:1", "auto"])
def test_hydra_finetune_passes_its_device(tmp_path, monkeypatch, device):
    from fakes import fake_finetune

    calls = fake_finetune(monkeypatch)
    assert hydra(_labelled(tmp_path) + ["--device", device]) == 0
    (call,) = calls
    assert call["device"] == device and call["head_name"] == "p" and len(call["coords"]) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of CUDA where it is missing")
def test_finetune_on_a_missing_gpu_is_refused_not_run_on_the_cpu(tmp_path, capsys):
    from hydrapicker.finetune import finetune
    from hydrapicker.types import Micrograph

    args = _labelled(tmp_path)
    with pytest.raises(UserFacingError, match="CUDA is not usable"):
        finetune(None, [Micrograph(str(tmp_path / "m.mrc"))], {str(tmp_path / "m.mrc"): Picks([30], [40])},
                 60.0, "p", out=tmp_path / "p.pt", device="cuda")
    assert hydra(args + ["--device", "cuda"]) == 1
    assert "CUDA is not usable" in capsys.readouterr().err and not (tmp_path / "p.pt").exists()
