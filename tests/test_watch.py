"""Watch mode: the core (hydrapicker/watch.py) and ``hydra pick --watch`` end to end."""
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, blob_micrograph, write_mrc
from hydrapicker.watch import Completeness, StableStems, StopFlag, WatchSource, mrc_expected_size, watch


def _halves(src: Path, dst: Path):
    """Write ``src``'s bytes to ``dst`` in two halves; returns a function writing the second half."""
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])

    def finish():
        with open(dst, "ab") as f:
            f.write(data[len(data) // 2:])
    return finish


# ---- core ----------------------------------------------------------------------------------------------
def test_a_file_written_in_two_halves_is_complete_only_when_whole_and_stable(tmp_path):
    whole = write_mrc(tmp_path / "src" / "a.mrc", np.zeros((64, 80), np.float32))
    assert mrc_expected_size(whole) == whole.stat().st_size == 1024 + 64 * 80 * 4
    dst = tmp_path / "a.mrc"
    finish = _halves(whole, dst)
    c = Completeness()
    assert not c.check(dst)  # first sight
    assert not c.check(dst) and not c.settling  # stable, but shorter than its header says
    finish()
    assert not c.check(dst)  # grew since the last poll ...
    assert str(dst) in c.settling  # ... to its header's size: looked at again soon
    assert c.check(dst) and not c.settling  # stable and whole
    (tmp_path / "tiny.mrc").write_bytes(b"x" * 100)  # not even a header
    assert mrc_expected_size(tmp_path / "tiny.mrc") is None
    assert not c.check(tmp_path / "missing.mrc")


def test_a_whole_file_whose_last_write_is_older_than_settle_is_complete_at_first_sight(tmp_path):
    """Its size has been stable for `settle` s already: no second look (a micrograph waits at most one poll
    after its last byte); a fresh or half-written one still needs one, and a non-MRC file always does."""
    whole = write_mrc(tmp_path / "a.mrc", np.zeros((64, 80), np.float32))
    c = Completeness(settle=0.5)
    assert not c.check(whole) and str(whole) in c.settling  # just written: looked at again soon
    old = time.time() - 0.6
    os.utime(whole, (old, old))
    c2 = Completeness(settle=0.5)
    assert c2.check(whole) and not c2.settling
    assert not Completeness(settle=1.0).check(whole)  # younger than that settle
    half = tmp_path / "b.mrc"
    _halves(whole, half)
    os.utime(half, (old, old))
    assert not c2.check(half) and str(half) not in c2.settling  # stale, but shorter than its header says
    other = tmp_path / "c.tif"
    other.write_bytes(b"x" * 2048)
    os.utime(other, (old, old))
    assert not c2.check(other) and c2.check(other)  # no header to check: two looks


def test_source_lists_a_folder_a_glob_and_a_star_rewritten_by_another_program(tmp_path):
    d = tmp_path / "mics"
    write_mrc(d / "b.mrc", np.zeros((8, 8)))
    write_mrc(d / "a.mrc", np.zeros((8, 8)))
    (d / "notes.txt").write_text("x")
    assert [m.name for m in WatchSource([str(d)]).list()] == [str(d / "a.mrc"), str(d / "b.mrc")]
    assert [Path(m.path).name for m in WatchSource([str(d / "*.mrc")]).list()] == ["a.mrc", "b.mrc"]
    assert WatchSource([str(tmp_path / "none" / "*.mrc")]).list() == []  # nothing yet is fine
    star = tmp_path / "mics.star"
    src = WatchSource([str(star)], apix=1.0)
    assert src.list() == []  # not written yet
    from relion_helpers import write_mics_star

    write_mics_star(star, [str(d / "a.mrc")], 1.0)
    assert [m.name for m in src.list()] == [str(d / "a.mrc")]
    star.write_text("data_optics\nloop_\n_rlnOpti")  # caught half-rewritten: the last good listing
    assert [m.name for m in src.list()] == [str(d / "a.mrc")]
    write_mics_star(star, [str(d / "a.mrc"), str(d / "b.mrc")], 1.0)
    assert [m.name for m in src.list()] == [str(d / "a.mrc"), str(d / "b.mrc")]


def test_stems_stay_once_given_across_restarts_and_new_folders(tmp_path):
    s = StableStems(tmp_path / "stems.json")
    assert s.assign(["g1/x.mrc", "g1/y.mrc"]) == {"g1/x.mrc": "x", "g1/y.mrc": "y"}
    again = StableStems(tmp_path / "stems.json")  # a restart
    got = again.assign(["g1/x.mrc", "g2/x.mrc"])
    assert got["g1/x.mrc"] == "x" and got["g2/x.mrc"] == "g2/x"  # the root moved up; x keeps its stem


def _fake_process(out, log):
    def process(mics):
        for m in mics:
            assert os.path.getsize(m.path) == mrc_expected_size(m.path)  # never half-written
            (out / (Path(m.path).stem + ".done")).write_text("1")
            log.append(Path(m.path).name)
        return 10 * len(mics)
    return process


def test_watch_picks_each_micrograph_once_and_stops_on_the_stop_file(tmp_path):
    src, mics, out = tmp_path / "src", tmp_path / "mics", tmp_path / "out"
    out.mkdir()
    write_mrc(mics / "a.mrc", blob_micrograph((64, 64)))
    b = write_mrc(src / "b.mrc", blob_micrograph((64, 64), seed=1))
    picked, lines = [], []
    is_done = lambda m: (out / (Path(m.path).stem + ".done")).exists()  # noqa: E731

    def microscope():
        time.sleep(0.5)
        finish = _halves(b, mics / "b.mrc")
        time.sleep(0.6)  # at least one poll sees the half
        finish()
        deadline = time.time() + 10
        while not (out / "b.done").exists() and time.time() < deadline:
            time.sleep(0.05)
        (out / "STOP").write_text("")

    t = threading.Thread(target=microscope)
    t.start()
    res = watch(WatchSource([str(mics)]), _fake_process(out, picked), is_done, out, poll=0.2,
                log=lines.append)
    t.join()
    assert picked == ["a.mrc", "b.mrc"] and res["micrographs"] == 2 and res["picks"] == 20
    assert "STOP" in res["reason"] and any("backlog" in ln and "micrographs/s" in ln for ln in lines)
    # a restart: nothing again; the idle timeout stops it
    (out / "STOP").unlink()
    res = watch(WatchSource([str(mics)]), _fake_process(out, picked), is_done, out, poll=0.1, idle_timeout=0.5,
                log=lines.append)
    assert picked == ["a.mrc", "b.mrc"] and res["micrographs"] == 0 and "no new micrograph" in res["reason"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_flag_turns_sigterm_and_sigint_into_a_clean_stop_and_restores_the_handlers(tmp_path, sig):
    before = signal.getsignal(sig)
    flag = StopFlag(tmp_path)
    with flag.handling():
        os.kill(os.getpid(), sig)
        time.sleep(0.05)
        assert flag() and signal.Signals(sig).name in flag.reason
    assert signal.getsignal(sig) is before


# ---- hydra pick --watch, end to end (shipped model, 256 px micrographs) -------------------------------
APIX, DIAM = 2.0, 40.0
CENTRES = [(60, 60), (180, 70), (70, 190), (190, 190), (128, 128)]


def _mic(path, seed):
    return write_mrc(path, blob_micrograph((256, 256), CENTRES, sigma=5.0, seed=seed), apix=APIX)


def _args(src, out, *extra):
    return ["pick", str(src), "--apix", str(APIX), "--diameter", str(DIAM), "--out", str(out),
            "--format", "star", "topaz", "--threads", "1", *extra]


def _outputs(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(Path(out).rglob("*"))
            if p.is_file() and not p.name.startswith(".") and p.name != "STOP"}


def test_watch_a_growing_folder_stop_file_restart_and_the_same_picks_as_a_batch_run(tmp_path, capsys):
    from hydrapicker.cli import main as hydra

    staging, mics, out = tmp_path / "staging", tmp_path / "mics", tmp_path / "out"
    _mic(mics / "m1.mrc", 1)
    for i in (2, 3, 4):
        _mic(staging / f"m{i}.mrc", i)
    seen = {}

    def microscope():
        for i in (2, 3):
            time.sleep(0.4)
            finish = _halves(staging / f"m{i}.mrc", mics / f"m{i}.mrc")
            time.sleep(1.0)  # several polls see the half-written file
            finish()
            seen[f"m{i}"] = time.time()
            star = out / f"m{i}_hydra.star"
            deadline = time.time() + 120
            while not star.exists() and time.time() < deadline:
                time.sleep(0.05)
            seen[f"m{i}_picked"] = time.time()
        (out / "STOP").write_text("")

    t = threading.Thread(target=microscope)
    t.start()
    assert hydra(_args(mics, out, "--watch", "--poll", "0.3")) == 0
    t.join()
    cap = capsys.readouterr()
    assert "skipped" not in cap.err and "WARNING" not in cap.err  # never read half-written
    assert "[hydra watch] stopped" in cap.out and "STOP" in cap.out and "backlog" in cap.out
    assert sorted(p.name for p in out.glob("*_hydra.star")) == ["m1_hydra.star", "m2_hydra.star", "m3_hydra.star"]
    with capsys.disabled():  # the latency (a benchmark number, not asserted)
        for i in (2, 3):
            print(f"\nm{i}: picks written {seen[f'm{i}_picked'] - seen[f'm{i}']:.2f} s after the file was "
                  f"complete (poll 0.3 s)")
    # restart in the middle: m1-m3 are not picked again, m4 is; the idle timeout ends it
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*_hydra.star")}
    (out / "STOP").unlink()
    shutil.copyfile(staging / "m4.mrc", mics / "m4.mrc")
    assert hydra(_args(mics, out, "--watch", "--poll", "0.3", "--idle-timeout", "2")) == 0
    cap = capsys.readouterr().out
    assert "no new micrograph for 2 s" in cap and "m4.mrc" in cap
    assert not any(f"m{i}.mrc:" in cap for i in (1, 2, 3))
    assert {n: (out / n).stat().st_mtime_ns for n in mtimes} == mtimes
    # the same files picked in one batch run: the same bytes (coordinates, Topaz text, summary)
    batch = tmp_path / "batch"
    assert hydra(["pick", str(mics / "*.mrc"), *_args(mics, batch, "--quiet")[2:]]) == 0
    got, want = _outputs(out), _outputs(batch)
    assert sorted(got) == sorted(want) and got == want
    summary = (out / "summary_hydra.tsv").read_text().splitlines()
    assert summary[0].startswith("micrograph\tcoordinates\tpicks\tthreshold") and len(summary) == 5


def test_watch_stops_cleanly_on_sigterm(tmp_path):
    mics, out = tmp_path / "mics", tmp_path / "out"
    _mic(mics / "m1.mrc", 1)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "hydrapicker", *_args(mics, out, "--watch", "--poll", "0.3")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while not (out / "summary_hydra.tsv").exists() and time.time() < deadline:
            time.sleep(0.1)
        assert (out / "m1_hydra.star").exists()
        proc.send_signal(signal.SIGTERM)
        text, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, text
    assert "stopped (signal SIGTERM)" in text
    assert not list(out.glob(".*tmp*"))  # no half-written file


def test_watch_a_micrographs_star_that_another_program_rewrites(tmp_path, monkeypatch, capsys):
    from hydrapicker.cli import main as hydra
    from relion_helpers import write_mics_star

    monkeypatch.chdir(tmp_path)
    names = [f"MotionCorr/job002/Movies/m{i}.mrc" for i in (1, 2)]
    for i, n in enumerate(names, 1):
        _mic(tmp_path / n, i)
    star = "CtfFind/job003/micrographs_ctf.star"
    write_mics_star(star, names[:1], APIX)

    def preprocessing():
        time.sleep(1.0)
        tmp = Path(star + ".tmp")
        write_mics_star(tmp, names, APIX)
        os.replace(tmp, star)  # how RELION rewrites its STARs
        deadline = time.time() + 120
        while not (tmp_path / "out" / "m2_hydra.star").exists() and time.time() < deadline:
            time.sleep(0.05)
        (tmp_path / "out" / "STOP").write_text("")

    t = threading.Thread(target=preprocessing)
    t.start()
    assert hydra(["pick", "--mics", star, "--diameter", str(DIAM), "--out", "out", "--watch", "--poll", "0.3",
                  "--threads", "1", "--quiet"]) == 0
    t.join()
    rows = (tmp_path / "out" / "summary_hydra.tsv").read_text().splitlines()[1:]
    assert [r.split("\t")[0] for r in rows] == names  # as named in the STAR, in its order


# ---- hydra pick --watch --adapt: one adapted head for the whole session ----------------------------------
def _crowded_mic(path, seed):
    """512² of 36 blobs on a 6 x 6 grid (jittered): enough confident picks on a few micrographs to adapt."""
    rng = np.random.default_rng(seed)
    centres = [(x + rng.uniform(-8, 8), y + rng.uniform(-8, 8)) for x in range(40, 492, 72) for y in range(40, 492, 72)]
    return write_mrc(path, blob_micrograph((512, 512), centres, sigma=5.0, noise=1.0, seed=seed), apix=APIX)


def _wait_for(path, seconds=180):
    deadline = time.time() + seconds
    while not Path(path).exists() and time.time() < deadline:
        time.sleep(0.05)


@pytest.mark.slow
def test_watch_adapt_learns_from_the_first_micrographs_and_picks_the_session_with_that_head(tmp_path, capsys):
    """--adapt-sample 3: nothing is picked until 3 micrographs are complete; a STOP before leaves them to the
    next run; then the head is learned from the first 3 and picks them and every later one, as a batch run with
    the adapted model does (same bytes); a restart re-uses the model at once."""
    from hydrapicker.cli import main as hydra

    staging, mics, out = tmp_path / "staging", tmp_path / "mics", tmp_path / "out"
    for i in range(5):
        _crowded_mic((mics if i < 2 else staging) / f"m{i}.mrc", i)
    args = _args(mics, out, "--watch", "--poll", "0.3", "--adapt", "--no-adapt-centres", "--adapt-sample", "3")

    threading.Timer(1.5, lambda: (out / "STOP").write_text("")).start()
    assert hydra(args) == 0  # 2 of 3: waits, then stops on the STOP file with nothing picked
    cap = capsys.readouterr().out
    assert "2 of 3 micrographs complete" in cap and "not picked: run the same command again" in cap
    assert not list(out.glob("*_hydra.star")) and not (out / "adapted_hydra.pt").exists()

    (out / "STOP").unlink()

    def microscope():
        time.sleep(0.5)
        shutil.copyfile(staging / "m2.mrc", mics / "m2.mrc")  # the third: the head is learned, m0-m2 picked
        _wait_for(out / "m2_hydra.star")
        shutil.copyfile(staging / "m3.mrc", mics / "m3.mrc")  # picked with the adapted head as it comes

    t = threading.Thread(target=microscope)
    t.start()
    assert hydra(args + ["--idle-timeout", "3"]) == 0
    t.join()
    cap = capsys.readouterr().out
    model = out / "adapted_hydra.pt"
    assert "adapted head 'adapted'" in cap and model.exists()
    assert sorted(p.name for p in out.glob("*_hydra.star")) == [f"m{i}_hydra.star" for i in range(4)]
    batch = tmp_path / "batch"
    assert hydra(["pick", str(mics / "*.mrc"), *_args(mics, batch, "--quiet", "--model", str(model))[2:]]) == 0
    got, want = _outputs(out), _outputs(batch)
    assert sorted(k for k in got if k != "adapted_hydra.pt") == sorted(want)
    assert all(got[k] == want[k] for k in want)

    # a restart re-uses the adapted model at once: the new micrograph is picked, the others are not again
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*_hydra.star")}
    shutil.copyfile(staging / "m4.mrc", mics / "m4.mrc")
    assert hydra(args + ["--idle-timeout", "2"]) == 0
    cap = capsys.readouterr().out
    assert "re-using the adapted model" in cap and (out / "m4_hydra.star").exists()
    assert {n: (out / n).stat().st_mtime_ns for n in mtimes} == mtimes


@pytest.mark.slow
def test_watch_adapt_ending_on_idle_timeout_learns_from_what_came(tmp_path, capsys):
    """Fewer micrographs than --adapt-sample by the idle timeout: the head is learned from those and picks them."""
    from hydrapicker.cli import main as hydra

    mics, out = tmp_path / "mics", tmp_path / "out"
    for i in range(3):
        _crowded_mic(mics / f"m{i}.mrc", 10 + i)
    assert hydra(_args(mics, out, "--watch", "--poll", "0.3", "--adapt", "--no-adapt-centres", "--adapt-sample", "5",
                       "--idle-timeout", "1")) == 0
    cap = capsys.readouterr().out
    assert "picked the 3 micrograph(s) that waited for --adapt" in cap
    model = out / "adapted_hydra.pt"
    assert model.exists()
    batch = tmp_path / "batch"
    assert hydra(["pick", str(mics / "*.mrc"), *_args(mics, batch, "--quiet", "--model", str(model))[2:]]) == 0
    want = _outputs(batch)
    assert all(_outputs(out)[k] == want[k] for k in want)


@pytest.mark.slow
def test_watch_adapt_learns_head_and_refiner_from_the_first_micrographs(tmp_path, capsys):
    """--watch --adapt (its centre refiner on by default, as --adapt-centres): the refiner is learned right after
    the head, from the same first micrographs; the session's picks equal a batch run with both files; a
    restart re-uses both at once."""
    from hydrapicker.cli import main as hydra

    mics, out = tmp_path / "mics", tmp_path / "out"
    for i in range(3):
        _crowded_mic(mics / f"m{i}.mrc", 20 + i)
    args = _args(mics, out, "--watch", "--poll", "0.3", "--adapt", "--adapt-sample", "3")
    assert hydra(args + ["--idle-timeout", "1"]) == 0
    cap = capsys.readouterr().out
    model, refiner = out / "adapted_hydra.pt", out / "adapted_refiner_hydra.pt"
    assert "adapted head 'adapted'" in cap and model.exists()
    assert "adapted centre refiner saved" in cap and refiner.exists()
    assert sorted(p.name for p in out.glob("*_hydra.star")) == [f"m{i}_hydra.star" for i in range(3)]

    _crowded_mic(mics / "m3.mrc", 23)  # a restart: both re-used at once, the new micrograph picked
    assert hydra(args + ["--idle-timeout", "1"]) == 0
    cap = capsys.readouterr().out
    assert "re-using the adapted model" in cap and "re-using the adapted centre refiner" in cap
    batch = tmp_path / "batch"
    assert hydra(["pick", str(mics / "*.mrc"), *_args(mics, batch, "--quiet", "--model", str(model),
                                                       "--refiner", str(refiner))[2:]]) == 0
    got, want = _outputs(out), _outputs(batch)
    assert sorted(k for k in got if not k.endswith(".pt")) == sorted(want)
    assert all(got[k] == want[k] for k in want)
    # the adapted model names its refiner (beside it): --model alone re-centres with it
    from hydrapicker.checkpoint import read_checkpoint

    assert read_checkpoint(model)["meta"]["refiner"] == refiner.name
    alone = tmp_path / "alone"
    assert hydra(["pick", str(mics / "*.mrc"), *_args(mics, alone, "--model", str(model))[2:]]) == 0
    assert f"centres refined by {refiner} (adapted with this model)" in capsys.readouterr().out
    assert _outputs(alone) == want
