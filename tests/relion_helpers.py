"""Helpers for the RELION adapter tests: tiny RELION projects and a picker test double.

Two kinds of project, both laid out as RELION writes them (micrographs under ``MotionCorr/job002/Movies/``,
a 3.1-style ``CtfFind/job003/micrographs_ctf.star`` with optics and CTF columns):

* :func:`make_project`: noise with dark Gaussian blobs on a jittered grid (fast; plumbing tests);
* :func:`make_sim_project`: micrographs from the simulator (``hydrapicker.simulate``), realistic particles
  with CTF, ice, carbon and junk, plus the true particle centres (end-to-end test with the real model).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from unittest import mock
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MICS_STAR = "CtfFind/job003/micrographs_ctf.star"


def blob_micrograph(shape, centres, sigma_px, rng, contrast=3.0):
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    img = rng.normal(0.0, 1.0, shape).astype(np.float32)
    for x, y in centres:
        img -= contrast * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma_px ** 2)).astype(np.float32)
    return img


def grid_centres(shape, spacing, rng, jitter=6.0, margin=None):
    ny, nx = shape
    m = margin if margin is not None else spacing // 2
    pts = [(x + rng.uniform(-jitter, jitter), y + rng.uniform(-jitter, jitter))
           for y in range(m, ny - m + 1, spacing) for x in range(m, nx - m + 1, spacing)]
    return np.array(pts)


def make_project(root, n_mics=3, shape=(512, 512), apix=2.0, spacing=80, sigma_px=9.0, seed=0,
                 pipeline=True, star_version=30001, optics=True):
    """Write micrographs + micrographs STAR under ``root``; returns {name: (N,2) true centres}."""
    import mrcfile

    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "MotionCorr/job002/Movies").mkdir(parents=True, exist_ok=True)
    (root / "CtfFind/job003").mkdir(parents=True, exist_ok=True)
    truth, names = {}, []
    for i in range(n_mics):
        name = f"MotionCorr/job002/Movies/mic{i + 1:03d}.mrc"
        centres = grid_centres(shape, spacing, rng)
        img = blob_micrograph(shape, centres, sigma_px, rng)
        with mrcfile.new(root / name, overwrite=True) as mrc:
            mrc.set_data(img)
            mrc.voxel_size = apix
        truth[name] = centres
        names.append(name)
    write_mics_star(root / MICS_STAR, names, apix, star_version, optics)
    if pipeline:
        write_empty_pipeline(root)
    return truth


def make_sim_project(root, target="t_ribosome", n_mics=3, start=0, pipeline=True):
    """A RELION 3.1 project of ``n_mics`` simulated micrographs of the held-out ``target`` (indices
    ``start``...). Returns (spec, {micrograph name: (N, 2) true centres, x = column, y = row})."""
    import starfile

    from hydrapicker.simulate import get_target, write_dataset

    root = Path(root)
    spec = get_target(target)
    sim = write_dataset(spec, root / "Simulation", n_mics, start=start)
    movies = root / "MotionCorr/job002/Movies"
    movies.mkdir(parents=True, exist_ok=True)
    blocks = starfile.read(sim / "micrographs.star", always_dict=True)
    mics = blocks["micrographs"]
    truth, names = {}, []
    for rel in mics["rlnMicrographName"]:
        stem = Path(rel).stem
        name = f"MotionCorr/job002/Movies/{stem}.mrc"
        os.replace(sim / rel, root / name)
        xy = starfile.read(sim / "truth" / f"{stem}.star")
        truth[name] = np.c_[xy["rlnCoordinateX"], xy["rlnCoordinateY"]] if len(xy) else np.zeros((0, 2))
        names.append(name)
    # what CtfFind adds to MotionCorr's micrographs STAR
    mics["rlnMicrographName"] = names
    mics["rlnCtfImage"] = [f"CtfFind/job003/Movies/{Path(n).stem}.ctf:mrc" for n in names]
    mics["rlnCtfAstigmatism"] = (mics["rlnDefocusU"] - mics["rlnDefocusV"]).abs()
    mics["rlnCtfFigureOfMerit"] = 0.2
    mics["rlnCtfMaxResolution"] = 2.5 * spec.pixel_size
    write_star(root / MICS_STAR, {"optics": blocks["optics"], "micrographs": mics})
    if pipeline:
        write_empty_pipeline(root)
    return spec, truth


def write_star(path, blocks, version=30001):
    """STAR blocks ({name: DataFrame}) with RELION's ``# version`` line before each block."""
    import starfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    starfile.write(blocks, path)
    lines = [ln for ln in path.read_text().splitlines(True) if not ln.startswith("# Created by")]
    path.write_text("".join(f"\n# version {version}\n\n{ln}" if ln.startswith("data_") else ln for ln in lines))


def write_empty_pipeline(root):
    (Path(root) / "default_pipeline.star").write_text(
        "\n# version 30001\n\ndata_pipeline_general\n\n_rlnPipeLineJobCounter                       1\n\n")


def write_mics_star(path, names, apix, star_version=30001, optics=True):
    rows = "\n".join(f"{n} 1 15000.0 14500.0 30.0 4.5" for n in names)
    cols = ("loop_ \n_rlnMicrographName #1 \n_rlnOpticsGroup #2 \n_rlnDefocusU #3 \n_rlnDefocusV #4 \n"
            "_rlnDefocusAngle #5 \n_rlnCtfMaxResolution #6 \n")
    optics_block = (f"\n# version {star_version}\n\ndata_optics\n\nloop_ \n_rlnOpticsGroupName #1 \n"
                    "_rlnOpticsGroup #2 \n_rlnMicrographOriginalPixelSize #3 \n_rlnVoltage #4 \n"
                    "_rlnSphericalAberration #5 \n_rlnAmplitudeContrast #6 \n_rlnMicrographPixelSize #7 \n"
                    f"opticsGroup1 1 {apix} 300.0 2.7 0.1 {apix}\n \n")
    if optics:
        text = optics_block + f"\n# version {star_version}\n\ndata_micrographs\n\n{cols}{rows}\n \n"
    else:  # pre-3.1: one block, pixel size from detector pixel size and magnification
        text = ("\ndata_\n\nloop_ \n_rlnMicrographName #1 \n_rlnDetectorPixelSize #2 \n_rlnMagnification #3 \n"
                + "\n".join(f"{n} 5.0 {5.0 * 1e4 / apix}" for n in names) + "\n \n")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def write_job_star(job_dir, version: str, is_continue=False):
    """A job.star as RELION 3.1 (``_rlnJobType 99``) or 4.x/5.x (``_rlnJobTypeLabel relion.external``) writes it."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    head = "30001" if version in ("3.1", "4") else "50001"
    if version == "3.1":
        general = f"_rlnJobType                             99\n_rlnJobIsContinue                       {int(is_continue)}\n"
    else:
        general = (f"_rlnJobTypeLabel             relion.external\n_rlnJobIsContinue                       "
                   f"{int(is_continue)}\n_rlnJobIsTomo                           0\n")
    (job_dir / "job.star").write_text(
        f"\n# version {head}\n\ndata_job\n\n{general}\n\n# version {head}\n\ndata_joboptions_values\n\nloop_ \n"
        "_rlnJobOptionVariable #1 \n_rlnJobOptionValue #2 \nfn_exe /x/relion_hydra_pick \nnr_threads 1 \n \n")


# ---- picker test double (plumbing tests only) --------------------------------------------------
class FakePicker:
    """Deterministic stand-in for :class:`hydrapicker.picker.Picker`: reads each MRC (so unreadable
    files fail like the real one) and returns picks derived from the micrograph name."""

    def __init__(self, delay=0.0, n=12):
        self.meta = {"heads": ["generic"], "default_threshold": 0.5, "floor": 0.05, "path": "fake.pt"}
        self.device = "cpu"
        self.delay = delay
        self.n = n
        self.picked = []
        self.policies = []  # the policy of every pick() call

    @staticmethod
    def expected(name, n=12):
        from hydrapicker.types import Picks
        k = sum(map(ord, name)) % 5
        x = 5.0 + 9.0 * np.arange(n) + k
        y = 10.0 + 8.0 * np.arange(n)
        fom = np.linspace(0.1, 0.95, n)
        return Picks(x, y, fom)

    def pick(self, micrographs, diameter_A, head="generic", policy=None, should_stop=None):
        import mrcfile

        from fakes import finalized

        from hydrapicker.errors import MicrographError
        from hydrapicker.types import PickResult
        self.policies.append(policy)
        for mic in micrographs:
            if should_stop is not None and should_stop():
                return
            time.sleep(self.delay)
            try:
                with mrcfile.open(mic.path, permissive=False) as mrc:
                    shape = mrc.data.shape
            except Exception as exc:
                yield PickResult(mic, None, MicrographError(f"{mic.path}: cannot read ({exc})"), {})
                continue
            self.picked.append(mic.name)
            yield finalized(mic, self.expected(mic.name, self.n), shape, diameter_A, policy)

    def factory(self, model, device, threads):
        """What ``relion_hydra.pick_job`` calls to make its picker: this fake behind the Picker's spec."""
        from fakes import speced
        from relion_hydra.pick_job import default_picker_factory

        mock.create_autospec(default_picker_factory)(model, device, threads)  # the job's call is valid
        return speced(self)


def run_job_subprocess(project, argv, delay=0.0):
    """Run pick_job.main with the FakePicker in a child process (real signals and files)."""
    code = ("import sys; sys.path[:0] = [%r, %r]\n"
            "from relion_helpers import FakePicker\n"
            "from relion_hydra.pick_job import main\n"
            "sys.exit(main(sys.argv[1:], picker_factory=FakePicker(delay=%r).factory))\n"
            % (str(REPO), str(REPO / "tests"), delay))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    job = Path(project) / argv[argv.index("--o") + 1]
    job.mkdir(parents=True, exist_ok=True)
    out = open(job / "run.out", "a")
    err = open(job / "run.err", "a")
    return subprocess.Popen([sys.executable, "-c", code] + list(argv), cwd=project, stdout=out, stderr=err,
                            env=env)


def wait_for(predicate, timeout=30.0, step=0.1):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return True
        time.sleep(step)
    return False
