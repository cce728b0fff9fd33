"""End to end with the real RELION binaries: our pick job, Extract and Class2D through
``relion_pipeliner`` exactly as the GUI runs them, on a small simulated project.

Written for whichever ``relion_pipeliner`` is on PATH: the test reads its version (``--version``) and uses
that version's option, status and node names (:mod:`relion_versions`: 3.1 integer statuses,
``nr_iter`` and ``.Nodes/2/.../coords_suffix_autopick.star``; 4.x/5.x status labels, ``nr_iter_em`` and
``.Nodes/<label prefix>/.../autopick.star``). Run here on Debian's RELION 3.1.3; the 4.x/5.x names are
unit-tested in ``test_relion_versions.py``.

The project: 3 simulated micrographs (512^2, 10.4 A/px) of the held-out ``t_ribosome`` target (a shape
the model never saw in training; CTF, ice, carbon edges, junk), laid out as MotionCorr + CtfFind outputs.
The shipped model picks them, RELION extracts and classifies; the extracted coordinates are checked
against the simulator's true particle centres, which proves RELION got x = column, y = row.

One pipeliner run serves every test (module fixture): pick, Extract, Class2D (K=2, 2 iterations, 48 px
box), the same pick in 2 CPU ranks (torchrun, what ``gpu = 0,1`` does on a GPU machine) and, last, a pick
job without ``particle_diameter`` that must end as failed instead of hanging.
``--sec_wait_after 1`` replaces the pipeliner's default 10-second polling. Skipped (with the reason) when
the RELION binaries or the shipped model are absent. ``HYDRA_TEST_MODEL=<file>`` runs it with another
model, ``HYDRA_TEST_THRESHOLD`` with another threshold.
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

from relion_helpers import MICS_STAR, REPO, make_sim_project
from relion_versions import pipeliner_names

RELION_BINS = ("relion_pipeliner", "relion_preprocess", "relion_refine")
missing = [b for b in RELION_BINS if shutil.which(b) is None]
pytestmark = pytest.mark.skipif(bool(missing), reason=f"RELION binaries not found on PATH: {missing}")

PICK = str(REPO / "bin" / "relion_hydra_pick")
TARGET, FIRST_MIC, N_MICS = "t_ribosome", 2, 3   # micrographs 2-4: 395 particles, one with carbon
BOX = 48                                          # px; the particle is 28 px (290 A at 10.36 A/px)
# A permissive threshold, as the README suggests for RELION 3.1 (no FOM cut at extraction): the interim
# shipped model is under-confident on this held-out target (at 0.5 it finds ~20% of the particles).
THRESHOLD = float(os.environ.get("HYDRA_TEST_THRESHOLD", "0.3"))
JOBS = ("External/job001/", "Extract/job002/", "Class2D/job003/", "External/job004/", "External/job005/")


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


@pytest.fixture(scope="module")
def relion():
    """The installed pipeliner's version-dependent names."""
    try:
        names = pipeliner_names()
    except ValueError as exc:
        pytest.fail(f"cannot tell the RELION version: {exc}")
    print(f"\nrelion_pipeliner version {'.'.join(map(str, names.version))}")
    return names


def statuses(project, relion):
    procs = starfile.read(Path(project) / "default_pipeline.star", always_dict=True)["pipeline_processes"]
    return dict(zip(procs["rlnPipeLineProcessName"], procs[relion.status_column]))


def add_job(project, kind, **options):
    pipeliner(project, "--addJob", kind, "--addJobOptions", ";".join(f"{k} == {v}" for k, v in options.items()))


def read_stack_average(project, image_names):
    stacks, total = {}, 0.0
    for ref in image_names:
        idx, stack = ref.split("@")
        if stack not in stacks:
            with mrcfile.open(project / stack, permissive=True) as m:
                stacks[stack] = np.asarray(m.data, dtype=np.float64)
        total = total + stacks[stack][int(idx) - 1]
    return total / len(image_names)


def bright_centre_of_mass(img, sigma=1.5):
    """Centre of mass of the part of the low-passed image above its median: robust to CTF fringes and
    noise (extraction inverted the contrast, so the dark particles are bright)."""
    from scipy.ndimage import gaussian_filter
    a = gaussian_filter(img, sigma)
    w = np.clip(a - np.median(a), 0, None)
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    return float((w * xx).sum() / w.sum()), float((w * yy).sum() / w.sum())


def fraction_within(a_xy, b_xy, radius):
    """Share of the points ``a_xy`` that have a point of ``b_xy`` within ``radius``."""
    from scipy.spatial import cKDTree
    if not len(a_xy) or not len(b_xy):
        return 0.0
    d, _ = cKDTree(b_xy).query(a_xy)
    return float((d <= radius).mean())


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, relion):
    if not model_path().exists():
        pytest.skip(f"the shipped model {model_path()} is not there yet (train it, or set HYDRA_TEST_MODEL)")
    project = tmp_path_factory.mktemp("relion_e2e")
    t0 = time.time()
    spec, truth = make_sim_project(project, TARGET, n_mics=N_MICS, start=FIRST_MIC)
    t_sim = time.time() - t0
    pick = dict(fn_exe=PICK, in_mic=MICS_STAR, param1_label="particle_diameter",
                param1_value=f"{spec.diameter_A:g}", param2_label="threshold", param2_value=f"{THRESHOLD:g}",
                nr_threads=2)
    if os.environ.get("HYDRA_TEST_MODEL"):
        pick.update(param3_label="model", param3_value=model_path())
    add_job(project, "External", **pick)
    add_job(project, "Extract", star_mics=MICS_STAR, coords_suffix=relion.coords_node("External/job001/"),
            extract_size=BOX, do_invert="Yes", do_norm="Yes", bg_diameter=-1)
    # minimal Class2D: GUI psi_sampling 7.5 and offset_step 1 become --psi_step 15 --offset_step 2
    add_job(project, "Class2D", fn_img="Extract/job002/particles.star", nr_classes=2,
            **relion.class2d_iterations(2), particle_diameter=f"{spec.diameter_A + 10:g}", psi_sampling=7.5,
            offset_range=3, offset_step=1, nr_threads=2)
    # the same pick, shared out over 2 CPU ranks
    add_job(project, "External", **{**pick, "param4_label": "gpu", "param4_value": "cpu",
                                    "param5_label": "ranks", "param5_value": 2})
    # last (the pipeliner stops at a failed job): no particle_diameter, must end as failed, not hang
    add_job(project, "External", fn_exe=PICK, in_mic=MICS_STAR, param1_label="threshold", param1_value=0.5,
            nr_threads=1)
    t1 = time.time()
    # (3.1/4.0: with a trailing space, else --RunJobs drops the last job)
    pipeliner(project, "--RunJobs", relion.run_jobs_arg(JOBS), "--sec_wait_after", "1", timeout=600)
    print(f"\nsimulated project: {t_sim:.1f} s; RELION pipeline (pick + Extract + Class2D + 2-rank pick + "
          f"failing job): "
          f"{time.time() - t1:.1f} s")
    return dict(project=project, spec=spec, truth=truth)


def test_pick_job_succeeds_through_the_pipeliner(e2e, relion):
    project = e2e["project"]
    job = project / "External/job001"
    assert statuses(project, relion)["External/job001/"] == relion.succeeded, (job / "run.err").read_text()
    assert (job / "RELION_JOB_EXIT_SUCCESS").exists()
    # 'relion_' in the executable path makes RELION append --pipeline_control; it was accepted
    assert "--pipeline_control External/job001/" in (job / "note.txt").read_text()
    assert (project / relion.node_file("External/job001/")).exists()
    out = (job / "run.out").read_text()
    assert f"micrograph {N_MICS}/{N_MICS}" in out and "picks so far" in out and "device" in out


def written_picks(e2e, job="External/job001/"):
    """{micrograph: (N, 3) x, y, FOM} from a pick job's coordinate files, read independently."""
    from relion_hydra.paths import coord_path
    out = {}
    for name in e2e["truth"]:
        df = starfile.read(e2e["project"] / coord_path(job, name, "autopick"))
        out[name] = (df[["rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit"]].to_numpy(float)
                     if len(df) else np.zeros((0, 3)))
    return out


def test_extracted_particles_are_exactly_the_written_picks(e2e, relion):
    project = e2e["project"]
    assert statuses(project, relion)["Extract/job002/"] == relion.succeeded
    picks = written_picks(e2e)
    ny, nx = e2e["spec"].shape
    half = BOX / 2
    n_expected = 0
    for name, p in picks.items():
        assert (p[:, 2] >= THRESHOLD).all()  # only picks at or above the threshold are written
        # RELION 3.1 extracts every box that overlaps the micrograph (the rest of the box is edge-filled)
        overlaps = (p[:, 0] > -half) & (p[:, 0] < nx + half) & (p[:, 1] > -half) & (p[:, 1] < ny + half)
        n_expected += int(overlaps.sum())
    parts = starfile.read(project / "Extract/job002/particles.star", always_dict=True)["particles"]
    summ = starfile.read(project / "External/job001/summary.star")
    print(f"picks written (FOM >= {THRESHOLD:g}): {sum(map(len, picks.values()))}, per micrograph "
          f"{summ['rlnGroupNrParticles'].tolist()}; particles extracted: {len(parts)}")
    assert n_expected > 0, "the picker found nothing on the simulated micrographs"
    assert len(parts) == n_expected == int(summ["rlnGroupNrParticles"].sum())
    for name, p in picks.items():  # the same coordinates, micrograph by micrograph
        got = parts.loc[parts["rlnMicrographName"] == name, ["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)
        np.testing.assert_array_equal(np.array(sorted(map(tuple, got))), np.array(sorted(map(tuple, p[:, :2]))))
    assert "rlnAutopickFigureOfMerit" in parts and "rlnDefocusU" in parts  # FOM and CTF travel along


def test_extracted_coordinates_match_the_simulated_truth(e2e):
    """RELION's particles sit on true particles: x = column, y = row, no flip (swapped would not pass)."""
    parts = starfile.read(e2e["project"] / "Extract/job002/particles.star", always_dict=True)["particles"]
    tol = e2e["spec"].diameter_px / 4
    ny = e2e["spec"].shape[0]
    n_truth = hits = on_truth = swapped = flipped = 0
    for name, t in e2e["truth"].items():
        xy = parts.loc[parts["rlnMicrographName"] == name, ["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)
        n_truth += len(t)
        hits += fraction_within(t, xy, tol) * len(t)
        on_truth += fraction_within(xy, t, tol) * len(xy)
        swapped += fraction_within(xy[:, ::-1], t, tol) * len(xy)
        flipped += fraction_within(np.c_[xy[:, 0], ny - 1 - xy[:, 1]], t, tol) * len(xy)
    recall, precision = hits / n_truth, on_truth / len(parts)
    print(f"{n_truth} true particles; {len(parts)} extracted; within D/4 = {tol:.1f} px: recall {recall:.2f}, "
          f"precision {precision:.2f} (x/y swapped: {swapped / len(parts):.2f}, y flipped: "
          f"{flipped / len(parts):.2f})")
    assert recall >= 0.5 and precision >= 0.7
    assert swapped / len(parts) < 0.3 and flipped / len(parts) < 0.3  # the check tells orientations apart


def test_extracted_average_is_centred(e2e):
    parts = starfile.read(e2e["project"] / "Extract/job002/particles.star", always_dict=True)["particles"]
    avg = read_stack_average(e2e["project"], list(parts["rlnImageName"]))
    cx, cy = bright_centre_of_mass(avg)
    sx, _ = bright_centre_of_mass(np.roll(avg, 3, axis=1))  # the measure does see a 3 px offset
    print(f"centre of mass of the average of {len(parts)} particles: ({cx:.2f}, {cy:.2f}); box centre "
          f"{BOX // 2}; shifted by 3 px: x {sx:.2f}")
    assert abs(cx - BOX // 2) <= 2 and abs(cy - BOX // 2) <= 2
    assert sx - cx > 1.5


def test_class2d_ends(e2e, relion):
    project = e2e["project"]
    assert statuses(project, relion)["Class2D/job003/"] == relion.succeeded, \
        (project / "Class2D/job003/run.err").read_text()
    assert (project / "Class2D/job003/run_it002_model.star").exists()
    with mrcfile.open(project / "Class2D/job003/run_it002_classes.mrcs", permissive=True) as m:
        assert m.data.shape == (2, BOX, BOX)


def test_two_rank_pick_job_through_the_pipeliner_writes_the_same_picks(e2e, relion):
    project = e2e["project"]
    job = project / "External/job004"
    assert statuses(project, relion)["External/job004/"] == relion.succeeded, (job / "run.err").read_text()
    assert sorted(p.name for p in job.glob("RELION_JOB_EXIT_*")) == ["RELION_JOB_EXIT_SUCCESS"]
    assert (project / relion.node_file("External/job004/")).exists()
    out = (job / "run.out").read_text()
    assert "picking with 2 ranks on CPU" in out and "rank 1/2: micrograph" in out
    one, two = written_picks(e2e), written_picks(e2e, "External/job004/")
    assert all(len(one[n]) > 0 and np.array_equal(one[n], two[n]) for n in one)


def test_pipeliner_records_failure_for_missing_diameter(e2e, relion):
    """Without particle_diameter the job must end (FAILURE) instead of hanging, with a clear run.err."""
    project = e2e["project"]
    assert statuses(project, relion)["External/job005/"] == relion.failed
    assert (project / "External/job005/RELION_JOB_EXIT_FAILURE").exists()
    err = (project / "External/job005/run.err").read_text()
    assert "--particle_diameter is required" in err and "Traceback" not in err
