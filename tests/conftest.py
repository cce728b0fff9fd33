import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MPLBACKEND", "Agg")


def write_mrc(path, data, apix=None):
    import mrcfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.asarray(data, dtype=np.float32))
        if apix is not None:
            m.voxel_size = apix
    return path


def write_simulated_set(spec, out, indices):
    """Simulated micrographs as a RELION project would hold them: MRCs + a micrographs STAR
    -> (micrographs read back from the STAR, {name: Picks of the true centres})."""
    import pandas as pd
    import starfile

    from hydrapicker.micrographs import read_micrographs_star
    from hydrapicker.simulate import simulate_micrograph
    from hydrapicker.types import Picks

    out = Path(out)
    names, truth = [], {}
    for i in indices:
        sim = simulate_micrograph(spec, i)
        name = f"Micrographs/{sim.name}.mrc"
        write_mrc(out / name, sim.image, apix=sim.pixel_size)
        names.append(name)
        truth[name] = Picks(sim.xy[:, 0], sim.xy[:, 1])
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnMicrographPixelSize": [spec.pixel_size], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    starfile.write({"optics": optics, "micrographs": pd.DataFrame({"rlnMicrographName": names,
                                                                   "rlnOpticsGroup": [1] * len(names)})},
                   out / "micrographs.star")
    return read_micrographs_star(out / "micrographs.star"), truth


def blob_micrograph(shape=(512, 512), centres=(), sigma=4.0, amp=-3.0, noise=0.3, seed=0):
    """Dark Gaussian blobs at given (x, y) centres on a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    img = rng.normal(0, noise, shape).astype(np.float32)
    for x, y in centres:
        img += amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
    return img.astype(np.float32)


def write_all_but_last(star, out) -> None:
    """``star``'s micrographs but its last one, written to ``out``: a Scheme's earlier cycle of a growing
    micrographs STAR."""
    import starfile

    blocks = starfile.read(star, always_dict=True)
    starfile.write({"optics": blocks["optics"], "micrographs": blocks["micrographs"].iloc[:-1]}, out)


@pytest.fixture
def tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


#: The slow tests (RELION through relion_pipeliner, torchrun ranks, real training and fine-tuning), in one
#: place: `pytest -m "not slow"` is the fast loop, CI (`./run_tests.sh`) runs everything.
SLOW_MODULES = {"test_relion_pipeline", "test_distributed", "test_relion_distributed", "test_finetune"}
SLOW_TESTS = {"test_tiny_run_lowers_the_loss", "test_stopped_run_resumes_where_it_stopped_and_finishes_phase_2",
              "test_init_lineage_survives_a_resumed_run", "test_init_copies_body_and_generic_head_and_records_the_source",
              "test_init_with_another_preset_is_refused",
              "test_simulation_workers_do_not_hang_after_torch_ran_in_parallel",
              "test_train_then_pick_with_the_new_head"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in SLOW_MODULES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
