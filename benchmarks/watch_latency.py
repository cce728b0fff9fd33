"""Watch mode against its target: a micrograph's picks are written within ``poll + one micrograph's pick
time`` of its file being complete, a half-written file is never read, and the picks equal a batch run's.

A "microscope" (this process) writes ``--n`` simulated micrographs (``hydrapicker.simulate``, the held-out
``t_ribosome`` target at ``--size``) into a folder one after another, each in ``--chunks`` pieces spread over
``--write-seconds`` (as a slow copy would), one every ``--every`` seconds, while ``hydra pick --watch --poll
P`` runs in a child process. For each micrograph: the time its last byte was written and the time its
coordinate STAR was written (its mtime), and the pick time of its batch (from the watcher's log), so
``waited`` = latency - own pick time is compared with the poll. Then ``STOP``; a batch ``hydra pick`` of the same files gives
the per-micrograph pick time (its steady rate) and the reference outputs (byte comparison).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/watch_latency.py --n 8 --size 1024 --poll 2 \
        --json docs/benchmarks/watch_latency_$(date +%F).json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def simulate(n: int, size: int, out: Path, seed: int = 7) -> tuple:
    """``n`` micrographs of ``size``^2 px (bytes of each MRC file), pixel size and diameter."""
    import dataclasses

    from hydrapicker.simulate import get_target, write_dataset

    spec = dataclasses.replace(get_target("t_ribosome"), shape=(size, size))
    d = Path(write_dataset(spec, out, n_micrographs=n, start=seed))
    files = sorted((d / "Micrographs").glob("*.mrc"))
    return [f.read_bytes() for f in files], [f.name for f in files], spec.pixel_size, spec.diameter_A


def hydra(*args):
    return [sys.executable, "-m", "hydrapicker", "pick", *map(str, args)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--size", type=int, default=1024, help="micrograph size (px)")
    ap.add_argument("--poll", type=float, default=2.0)
    ap.add_argument("--every", type=float, default=3.0, help="seconds between micrographs")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--write-seconds", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--adapt", type=int, default=0, metavar="N",
                    help="watch with --adapt --adapt-sample N: picking starts once N micrographs are complete "
                         "(reported: the wait for the first picks); the batch run uses the adapted model")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(a.threads))
    work = Path(tempfile.mkdtemp(prefix="watch_latency_"))
    data, names, apix, diam = simulate(a.n, a.size, work / "sim")
    mics, out, batch = work / "mics", work / "out", work / "batch"
    mics.mkdir()
    common = ["--apix", apix, "--diameter", diam, "--threads", a.threads, "--format", "star", "topaz"]
    adapt = ["--adapt", "--adapt-sample", a.adapt] if a.adapt else []
    proc = subprocess.Popen(hydra(mics, "--out", out, "--watch", "--poll", a.poll, *common, *adapt), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, stamped = [], []

    def read():
        for ln in iter(proc.stdout.readline, ""):
            lines.append(ln)
            stamped.append((time.time(), ln.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    t_start = time.time()  # the first micrograph comes once the watcher runs (model loaded, first look done)
    while not any(ln.startswith("[hydra watch] watching") for ln in list(lines)) and time.time() - t_start < 300:
        time.sleep(0.05)
    time.sleep(a.poll + 0.5)
    complete, picked = {}, {}
    t_first = time.time()
    for blob, name in zip(data, names):
        t0 = time.time()
        step = (len(blob) + a.chunks - 1) // a.chunks
        with open(mics / name, "wb") as f:
            for k in range(a.chunks):
                f.write(blob[k * step:(k + 1) * step])
                f.flush()
                if k < a.chunks - 1:
                    time.sleep(a.write_seconds / max(a.chunks - 1, 1))
        complete[name] = time.time()
        while time.time() - t0 < a.every:
            for n in names:
                if n in complete and n not in picked and (out / (Path(n).stem + "_hydra.star")).exists():
                    picked[n] = time.time()
            time.sleep(0.02)
    deadline = time.time() + 120 + (600 if a.adapt else 0)  # --adapt: the head is learned first
    while len(picked) < len(names) and time.time() < deadline:
        for n in names:
            if n not in picked and (out / (Path(n).stem + "_hydra.star")).exists():
                picked[n] = time.time()
        time.sleep(0.02)
    (out / "STOP").write_text("")
    proc.wait(timeout=120)
    reader.join(timeout=10)
    log = "".join(lines)
    with_model = ["--model", out / "adapted_hydra.pt"] if a.adapt else []
    r = subprocess.run(hydra(mics / "*.mrc", "--out", batch, *common, *with_model), env=env, capture_output=True,
                       text=True)
    rates = [float(m) for m in re.findall(r"([\d.]+) micrographs/s", r.stdout)]
    pick_s = 1.0 / rates[-1] if rates else float("nan")

    def files(d):
        return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
                if p.is_file() and not p.name.startswith(".") and p.name not in ("STOP", "adapted_hydra.pt")}

    # when the picks were written: the coordinate STAR's mtime (written to a temporary file, then renamed)
    for n in names:
        star = out / (Path(n).stem + "_hydra.star")
        if star.exists():
            picked[n] = star.stat().st_mtime
    latency = {n: picked[n] - complete[n] for n in names if n in picked}
    # each batch's own pick time ("[hydra watch] k/m micrographs picked in X s"), in the order picked
    batches = [(int(k), float(x)) for k, x in re.findall(r"\[hydra watch\] (\d+)/\d+ micrographs picked in "
                                                         r"([\d.]+) s", log)]
    own, order = {}, sorted(latency, key=lambda n: picked[n])
    for k, x in batches:
        for _ in range(k):
            if order:
                own[order.pop(0)] = x / k
    waited = {n: latency[n] - own[n] for n in latency if n in own}
    if a.adapt:  # the first N wait for the head; what is compared with the poll is the micrographs after them
        first = set(names[:a.adapt])
        waited = {n: v for n, v in waited.items() if n not in first}
        adapt_s = [float(x) for x in re.findall(r"\[adapt\] adapted head .* in ([\d.]+) s", log)]
    res = {
        "n": a.n, "size_px": a.size, "poll_s": a.poll, "every_s": a.every, "chunks": a.chunks,
        "write_seconds": a.write_seconds, "threads": a.threads, "watch_rc": proc.returncode,
        "latency_s": latency, "latency_max_s": max(latency.values()) if latency else None,
        "latency_median_s": sorted(latency.values())[len(latency) // 2] if latency else None,
        "pick_s_per_micrograph_batch": pick_s, "bound_s": a.poll + pick_s,
        "within_bound": sum(v <= a.poll + pick_s for v in latency.values()),
        "own_pick_s": own, "waited_s": waited,
        "waited_max_s": max(waited.values()) if waited else None,
        "within_poll_plus_own_pick_time": sum(v <= a.poll for v in waited.values()),
        "half_written_read": "skipped" in log or "WARNING" in log,
        "equal_to_batch": files(out) == files(batch),
        **({"adapt_sample": a.adapt, "adapt_seconds": adapt_s[0] if adapt_s else None,
            "first_picks_after_nth_complete_s": round(min(picked[n] for n in names if n in picked)
                                                      - complete[names[a.adapt - 1]], 2),
            "adapted": bool(adapt_s)} if a.adapt else {}),
        "events": sorted([(round(t - t_first, 3), f"complete {n}") for n, t in complete.items()]
                         + [(round(t - t_first, 3), f"picked {n}") for n, t in picked.items()]
                         + [(round(t - t_first, 3), ln[:100]) for t, ln in stamped if t >= t_first]),
    }
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
