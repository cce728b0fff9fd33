"""Opt-in test against a real CryoSPARC server (skipped unless configured).

Set CRYOSPARC_URL, CRYOSPARC_EMAIL, CRYOSPARC_PASSWORD, and CRYOSPARC_TEST_PROJECT, CRYOSPARC_TEST_WORKSPACE,
CRYOSPARC_TEST_EXPOSURES (e.g. P3, W1, J12.exposures; a few micrographs only). It creates a real External
job named "HydraPicker live test" in that workspace. Uses the shipped model (or CRYOSPARC_TEST_MODEL).
"""
import os

import pytest

NEEDED = ["CRYOSPARC_URL", "CRYOSPARC_EMAIL", "CRYOSPARC_PASSWORD", "CRYOSPARC_TEST_PROJECT",
          "CRYOSPARC_TEST_WORKSPACE", "CRYOSPARC_TEST_EXPOSURES"]

pytestmark = pytest.mark.skipif(not all(os.environ.get(v) for v in NEEDED),
                                reason="live CryoSPARC test: set " + ", ".join(NEEDED))


def test_live_pick_job_saves_particles():
    pytest.importorskip("cryosparc.tools")
    from cryosparc_hydra.connect import connect
    from cryosparc_hydra.job import OUTPUT_NAME, run_pick_job
    from cryosparc_hydra.picking import PickOptions
    from hydrapicker.picker import Picker

    cs = connect(os.environ["CRYOSPARC_URL"], interactive=False)
    picker = Picker(model=os.environ.get("CRYOSPARC_TEST_MODEL"), device="auto")
    summary = run_pick_job(cs, os.environ["CRYOSPARC_TEST_PROJECT"], os.environ["CRYOSPARC_TEST_WORKSPACE"],
                           os.environ["CRYOSPARC_TEST_EXPOSURES"], picker,
                           PickOptions(diameter_A=float(os.environ.get("CRYOSPARC_TEST_DIAMETER", "150"))),
                           title="HydraPicker live test")
    project_uid, job_uid = summary.job_uid.split("-")
    job = cs.find_job(project_uid, job_uid)
    assert str(job.status) == "completed"
    saved = job.load_output(OUTPUT_NAME)
    assert len(saved) == summary.n_picks
    assert {"location/micrograph_uid", "location/center_x_frac", "pick_stats/ncc_score"} <= set(saved.fields())
