"""Run each picker on a dataset as its users would (one process per step), timed, with peak RSS.

* Topaz 0.3.20 ``resnet16_u64`` with RELION's binning rule (``../shared/reference/peers_and_users.md``):
  ``S = max(4, round(2 D / P / 71))`` (``S = 1`` when ``P >= 3`` A: already binned), ``R = round(D / (2 P S))``;
  ``topaz preprocess -s S``; ``topaz extract -m resnet16_u64 -r R -x S -t -10``.
* RELION 3.1 LoG: ``relion_autopick --LoG`` with diameters 0.8 D .. 1.2 D, the GUI's ``--shrink 0
  --lowpass 20``, and a permissive ``--LoG_adjust_threshold`` so that every local maximum is kept with
  its FOM (AP ranks them), in a scratch RELION-style project.
* HydraPicker: ``hydra pick --mics STAR --diameter D --all`` (every pick above the floor, with its FOM).

Every run returns a :class:`Run`: picks by micrograph stem, wall seconds of all its processes (start-up
included), peak RSS of the largest process, the commands, and an error string when it failed.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench_data import REPO, Dataset, make_project

HERE = Path(__file__).resolve().parent
TOPAZ_VENV = Path(os.environ.get("TOPAZ_VENV", "/work/venv-topaz"))
LOG_ADJUST_THRESHOLD = -10.0   # mean - 10 sigma of the FOM map: keeps every local maximum


@dataclass
class Run:
    picker: str
    picks: dict = field(default_factory=dict)
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    cpu_s: float = 0.0         # user + system CPU seconds of all its processes (robust on a shared machine)
    commands: list = field(default_factory=list)
    error: str = ""
    info: dict = field(default_factory=dict)


def thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    return env


def run_timed(cmd, cwd, env, log_path: Path, timeout=None) -> tuple:
    """Run ``cmd``; return (returncode, wall seconds, peak RSS in MB, CPU seconds) of it and its
    waited-for children."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(("$ " + shlex.join(map(str, cmd)) + "\n").encode())
        log.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = None if timeout is None else t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline and time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime


def _tail(path: Path, n=15) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-n:])
    except OSError:
        return ""


def _read(run: Run, source, names) -> None:
    """``run.picks`` from a coordinate source, or ``run.error`` saying why not."""
    from hydrapicker.coords import read_coords

    try:
        run.picks = read_coords(source, micrograph_names=names)
    except Exception as exc:  # noqa: BLE001 - a picker that wrote nothing usable is a failed run
        run.error = f"{type(exc).__name__}: {exc}"


def _steps(run: Run, steps, cwd, env, log_path, timeout) -> bool:
    """Run the commands in order, adding up wall time; False (with ``run.error``) at the first failure."""
    for cmd in steps:
        run.commands.append(shlex.join(map(str, cmd)))
        rc, wall, rss, cpu = run_timed(cmd, cwd, env, log_path, timeout)
        run.wall_s += wall
        run.cpu_s += cpu
        run.info.setdefault("step_wall_s", []).append(round(wall, 3))
        run.peak_rss_mb = max(run.peak_rss_mb, rss)
        if rc != 0:
            run.error = f"exit {rc} from {Path(str(cmd[0])).name}; log {log_path}:\n{_tail(log_path)}"
            return False
    return True


# ------------------------------------------------------------------------------------------- Topaz
def topaz_scale_radius(diameter_A: float, pixel_size: float) -> tuple:
    """RELION's rule for Topaz: binning S and extraction radius R (pixels of the binned micrograph)."""
    s = 1 if pixel_size >= 3.0 else max(4, round(2 * diameter_A / pixel_size / 71))
    r = round(diameter_A / (2 * pixel_size * s))
    return int(s), int(r)


_topaz_cmd = None


def topaz_command() -> list:
    """``topaz`` of the Topaz venv when its entry point works, else our launcher (see topaz_launch.py)."""
    global _topaz_cmd
    if _topaz_cmd is None:
        exe = TOPAZ_VENV / "bin" / "topaz"
        py = TOPAZ_VENV / "bin" / "python"
        if not py.exists():
            raise FileNotFoundError(f"no Topaz venv at {TOPAZ_VENV}: run benchmarks/setup_peers.sh "
                                    "(or set TOPAZ_VENV)")
        ok = exe.exists() and subprocess.run([str(exe), "--version"], capture_output=True,
                                             env=thread_env(1)).returncode == 0
        _topaz_cmd = [str(exe)] if ok else [str(py), str(HERE / "topaz_launch.py")]
    return list(_topaz_cmd)


def run_topaz(ds: Dataset, work: Path, threads=1, device="cpu", timeout=None) -> Run:
    run = Run("topaz")
    s, r = topaz_scale_radius(ds.diameter_A, ds.pixel_size)
    run.info = {"scale": s, "radius": r, "model": "resnet16_u64"}
    try:
        topaz = topaz_command()
    except FileNotFoundError as exc:
        run.error = str(exc)
        return run
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    dev = "-1" if device == "cpu" else (device.split(":")[1] if ":" in device else "0")
    common = ["-d", dev, "-j", str(threads)]
    steps = [topaz + ["preprocess", "-s", str(s), *common, "-o", "proc/", *map(str, ds.mic_paths)],
             topaz + ["extract", "-m", "resnet16_u64", "-r", str(r), "-x", str(s), "-t", "-10", *common,
                      "-o", "picks.txt", *[f"proc/{st}.mrc" for st in ds.stems]]]
    if _steps(run, steps, work, thread_env(threads), work / "log.txt", timeout):
        _read(run, work / "picks.txt", ds.stems)
    return run


# ------------------------------------------------------------------------------------------- RELION LoG
def run_log(ds: Dataset, work: Path, threads=1, timeout=None, adjust=LOG_ADJUST_THRESHOLD) -> Run:
    run = Run("log")
    exe = shutil.which("relion_autopick")
    if not exe:
        run.error = "relion_autopick not on PATH (Debian relion: scripts/setup_env.sh)"
        return run
    if work.exists():
        shutil.rmtree(work)
    star = make_project(work, ds)
    odir = "AutoPick/job001/"
    (work / odir).mkdir(parents=True)
    d = ds.diameter_A
    run.info = {"diam_min_A": 0.8 * d, "diam_max_A": 1.2 * d, "adjust_threshold": adjust}
    cmd = [exe, "--i", star.name, "--odir", odir, "--pickname", "autopick", "--LoG",
           "--LoG_diam_min", f"{0.8 * d:.2f}", "--LoG_diam_max", f"{1.2 * d:.2f}", "--shrink", "0",
           "--lowpass", "20", "--LoG_adjust_threshold", str(adjust), "--LoG_upper_threshold", "99999",
           "--angpix", f"{ds.pixel_size:.4f}"]
    if _steps(run, [cmd], work, thread_env(threads), work / "log.txt", timeout):
        _read(run, work / odir, ds.stems)
    return run


# ------------------------------------------------------------------------------------------- HydraPicker
def hydra_command() -> list:
    """The ``hydra`` console script, else its equivalent (``python -m hydrapicker`` drops the exit status)."""
    exe = shutil.which("hydra")
    return [exe] if exe else [sys.executable, "-c", "import sys; from hydrapicker.cli import main; sys.exit(main())"]


def run_hydra(ds: Dataset, work: Path, model=None, threads=1, device="cpu", timeout=None, tta=None, extra=()) -> Run:
    """``tta`` None: ``hydra pick``'s default views (``hydrapicker.defaults.TTA``)."""
    from hydrapicker import defaults

    tta = defaults.TTA if tta is None else int(tta)
    run = Run("hydra")
    if work.exists():
        shutil.rmtree(work)
    star = make_project(work, ds)
    cmd = hydra_command() + ["pick", "--mics", star.name, "--diameter", f"{ds.diameter_A:g}", "--out", "picks",
                             "--all", "--overwrite", "--quiet", "--device", device, "-j", str(threads)]
    if model:
        # a file is passed by absolute path (the pick runs in its own folder); a shipped model's name as it is
        cmd += ["--model", str(Path(model).resolve()) if Path(model).exists() else str(model)]
    cmd += ["--tta", str(tta)]
    cmd += list(extra)
    run.info = {"model": str(model) if model else "shipped default", "tta": tta, "extra": list(extra)}
    env = thread_env(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if _steps(run, [cmd], work, env, work / "log.txt", timeout):
        _read(run, work / "picks", ds.stems)
    return run


PICKERS = {"topaz": run_topaz, "log": run_log, "hydra": run_hydra}
