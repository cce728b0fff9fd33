"""Faults and hostile input (issue 19): each test injects the fault instead of describing it, and failed
before its fix. Users get one line naming the file and the fix, never a traceback, and nothing is lost."""
import os
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import write_mrc
from relion_helpers import MICS_STAR, make_project, run_job_subprocess, wait_for

JOB = "External/job001/"


def _job_argv(job=JOB):
    return ["--o", job, "--in_mics", MICS_STAR, "--particle_diameter", "40", "--j", "1"]


# ---- 3: a RELION abort in the first seconds -------------------------------------------------------
@pytest.mark.slow
def test_relion_abort_in_the_first_moment_is_not_lost(tmp_path):
    """The GUI's abort touched 0.3 s after the job started (before our imports finished) ends ABORTED."""
    make_project(tmp_path, n_mics=6, shape=(128, 128))
    proc = run_job_subprocess(tmp_path, _job_argv(), delay=0.5)
    try:
        time.sleep(0.3)
        (tmp_path / JOB / "RELION_JOB_ABORT_NOW").touch()
        assert wait_for(lambda: any((tmp_path / JOB).glob("RELION_JOB_EXIT_*")), timeout=60)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert sorted(p.name for p in (tmp_path / JOB).glob("RELION_JOB_EXIT_*")) == ["RELION_JOB_EXIT_ABORTED"]


def test_relion_stale_abort_file_from_an_earlier_run_is_removed(tmp_path, monkeypatch):
    """An abort file older than the job (left by an earlier, aborted run) does not abort a Continue."""
    from relion_helpers import FakePicker
    from relion_hydra.pick_job import main

    make_project(tmp_path, n_mics=2, shape=(128, 128))
    monkeypatch.chdir(tmp_path)
    stale = tmp_path / JOB / "RELION_JOB_ABORT_NOW"
    stale.parent.mkdir(parents=True)
    stale.touch()
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert main(_job_argv(), picker_factory=FakePicker().factory) == 0
    assert (tmp_path / JOB / "RELION_JOB_EXIT_SUCCESS").exists() and not stale.exists()


def test_relion_abort_file_newer_than_the_job_start_aborts_at_once(tmp_path, monkeypatch):
    """The job's start is the process's start: a file touched after it but before the job cleaned up aborts."""
    from relion_helpers import FakePicker
    from relion_hydra import jobdir
    from relion_hydra.pick_job import main

    make_project(tmp_path, n_mics=2, shape=(128, 128))
    monkeypatch.chdir(tmp_path)
    abort = tmp_path / JOB / "RELION_JOB_ABORT_NOW"
    abort.parent.mkdir(parents=True)
    abort.touch()
    assert jobdir.process_start_time() <= abort.stat().st_mtime
    fake = FakePicker()
    assert main(_job_argv(), picker_factory=fake.factory) == 3
    assert fake.picked == []
    assert sorted(p.name for p in (tmp_path / JOB).glob("RELION_JOB_EXIT_*")) == ["RELION_JOB_EXIT_ABORTED"]


# ---- 2: aggregate outputs describe every micrograph done, whichever run did it -----------------------
def _noise_micrographs(folder, n=3, shape=(256, 256), apix=4.0):
    from conftest import blob_micrograph

    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        centres = rng.uniform(30, shape[0] - 30, (12, 2))
        paths.append(write_mrc(Path(folder) / f"mic{i}.mrc", blob_micrograph(shape, centres, sigma=6.0, seed=i),
                               apix=apix))
    return paths


def test_topaz_file_after_an_interrupted_run_and_a_resume_lists_every_micrograph(tmp_path):
    from hydrapicker.cli import main as hydra

    _noise_micrographs(tmp_path / "mics")
    args = ["pick", str(tmp_path / "mics" / "*.mrc"), "--diameter", "60", "--all", "--quiet",
            "--format", "star", "topaz"]
    assert hydra(args + ["--out", str(tmp_path / "whole")]) == 0
    whole = (tmp_path / "whole" / "picks_hydra.txt").read_bytes()
    assert {ln.split(b"\t")[0] for ln in whole.splitlines()[1:]} == {b"mic0", b"mic1", b"mic2"}
    # a run killed before its last micrograph (the coordinate STAR is written last), then resumed
    assert hydra(args + ["--out", str(tmp_path / "part")]) == 0
    (tmp_path / "part" / "mic2_hydra.star").unlink()
    (tmp_path / "part" / "picks_hydra.txt").unlink()
    assert hydra(args + ["--out", str(tmp_path / "part")]) == 0
    assert (tmp_path / "part" / "picks_hydra.txt").read_bytes() == whole
    # and a resume with nothing left to do rewrites it whole too
    assert hydra(args + ["--out", str(tmp_path / "part")]) == 0
    assert (tmp_path / "part" / "picks_hydra.txt").read_bytes() == whole


# ---- 8: a model file cannot exhaust memory, and torch's unsafe advice is never printed --------------
def _crafted_model(path, **changes):
    import torch

    from hydrapicker.checkpoint import default_model_path

    ck = torch.load(default_model_path(), map_location="cpu", weights_only=True)
    meta = dict(ck["meta"])
    params = dict(meta["preset_params"])
    for k, v in changes.items():
        if k in params:
            params[k] = v
        else:
            meta[k] = v
    meta["preset_params"] = params
    ck["meta"] = meta
    torch.save(ck, path)
    return path


@pytest.mark.parametrize("change, words", [
    ({"n_blocks": 10 ** 7}, "n_blocks"),
    ({"body_channels": 4096, "n_blocks": 64}, "parameters"),
    ({"stem_channels": [16] * 10 ** 6}, "stem_channels"),
    ({"head_channels": "abc"}, "head_channels"),
    ({"norm": "weird"}, "norm"),
    ({"heads": ["generic"] * 100000}, "heads"),
    ({"preset_params": {"n_blocks": 2, "mystery": 1}}, "mystery"),
    ({"stride": 3}, "stride"),
    ({"default_threshold": float("nan")}, "default_threshold"),
])
def test_crafted_model_metadata_is_refused_before_the_network_is_built(tmp_path, capsys, change, words):
    import resource

    from hydrapicker.cli import main as hydra

    path = tmp_path / "crafted.pt"
    if "preset_params" in change:
        import torch
        _crafted_model(path)
        ck = torch.load(path, weights_only=True)
        ck["meta"]["preset_params"] = {**ck["meta"]["preset_params"], **change["preset_params"]}
        torch.save(ck, path)
    else:
        _crafted_model(path, **change)
    write_mrc(tmp_path / "m.mrc", np.random.rand(128, 128), apix=4.0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.time()
    for argv in (["info", str(path)], ["pick", str(tmp_path / "m.mrc"), "--diameter", "60", "--model", str(path),
                                       "--out", str(tmp_path / "o")]):
        assert hydra(argv) == 1
        err = capsys.readouterr().err
        assert str(path) in err and words in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert time.time() - t0 < 30
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 500_000  # kB


def test_pickled_code_in_a_model_is_refused_without_torchs_unsafe_advice(tmp_path, capsys):
    import torch

    from hydrapicker.cli import main as hydra

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"model": {}, "meta": Evil()}, tmp_path / "evil.pt")
    assert hydra(["info", str(tmp_path / "evil.pt")]) == 1
    err = capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()
    assert "evil.pt" in err and "weights_only=False" not in err and "weights_only` set to `False" not in err, err
    assert "os.system" in err or "posix.system" in err or "system" in err
    assert len(err.strip().splitlines()) == 1, err


# ---- 7: apostrophes in STAR names -----------------------------------------------------------------
def test_apostrophes_in_micrograph_names_survive_reading_a_star(tmp_path, monkeypatch):
    """RELION reads ``it's.mrc`` literally (relion_star_printtable 3.1.3 prints it unchanged); starfile turns
    it into ``it"s.mrc``. Quoted tokens keep working."""
    import pandas as pd

    from hydrapicker.micrographs import read_micrographs_star
    from hydrapicker.star import read_blocks, to_text

    monkeypatch.chdir(tmp_path)
    names = ["Movies/it's_a.mrc", "Movies/don't\"x.mrc", "Movies/end'", "Movies/plain.mrc"]
    rows = "\n".join(f"{n} 1" for n in names)
    (tmp_path / "mics.star").write_text(
        "\n# version 30001\n\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnMicrographPixelSize #2\n1 1.5\n\n"
        "# version 30001\n\ndata_micrographs\n\nloop_\n_rlnMicrographName #1\n_rlnOpticsGroup #2\n"
        f"{rows}\n'Movies/quoted name.mrc' 1\n\ndata_general\n\n_rlnNote o'clock\n")
    mics = read_micrographs_star(tmp_path / "mics.star")
    assert [m.name for m in mics] == names + ["Movies/quoted name.mrc"]
    assert [m.pixel_size for m in mics] == [1.5] * 5
    assert read_blocks(tmp_path / "mics.star")["general"]["rlnNote"].tolist() == ["o'clock"]
    # what we write reads back the same (the coordinate list files carry micrograph names)
    frame = pd.DataFrame({"rlnMicrographName": names, "rlnMicrographCoordinates": [f"x/{i}'s.star" for i in range(4)]})
    (tmp_path / "list.star").write_text(to_text({"coordinate_files": frame}))
    back = read_blocks(tmp_path / "list.star")["coordinate_files"]
    assert back["rlnMicrographName"].tolist() == names
    assert back["rlnMicrographCoordinates"].tolist() == [f"x/{i}'s.star" for i in range(4)]


# ---- 6: the RELION job writes inside its job directory only --------------------------------------------
def test_relion_job_keeps_outputs_of_dotdot_micrograph_names_inside_its_job_directory(tmp_path, monkeypatch):
    import starfile

    from relion_helpers import FakePicker, write_mics_star
    from relion_hydra.pick_job import main

    proj = tmp_path / "a" / "b" / "proj"
    names = ["../../x/m.mrc", "Movies/../../y/m.mrc", "MotionCorr/job002/Movies/m.mrc", "../../x/m.tif.mrc",
             str(tmp_path / "z" / "m.mrc")]
    for n in names:
        write_mrc(proj / n if not n.startswith("/") else Path(n), np.random.rand(128, 128), apix=2.0)
    write_mics_star(proj / MICS_STAR, names, 2.0)
    monkeypatch.chdir(proj)
    before = {p for p in tmp_path.rglob("*") if proj not in p.parents and p != proj}
    fake = FakePicker()
    assert main(_job_argv(), picker_factory=fake.factory) == 0
    after = {p for p in tmp_path.rglob("*") if proj not in p.parents and p != proj}
    assert after == before, sorted(map(str, after - before))  # nothing written outside the project
    lst = starfile.read(proj / JOB / "autopick.star")
    assert lst["rlnMicrographName"].tolist() == names
    coords = lst["rlnMicrographCoordinates"].tolist()
    assert len(set(coords)) == len(names)
    for c in coords:
        full = (proj / c).resolve()
        assert (proj / JOB).resolve() in full.parents, c
        assert full.exists()
    assert coords[2] == JOB + "Movies/m_autopick.star"  # RELION's own rule where it stays inside
    assert fake.picked == names
    # and a Continue finds them all done
    fake = FakePicker()
    assert main(_job_argv(), picker_factory=fake.factory) == 0 and fake.picked == []


# ---- 9: stale temporary files of a killed run ---------------------------------------------------------
def test_relion_continue_removes_temporary_files_a_killed_run_left(tmp_path, monkeypatch):
    from relion_helpers import FakePicker
    from relion_hydra.pick_job import main

    make_project(tmp_path, n_mics=2, shape=(128, 128))
    monkeypatch.chdir(tmp_path)
    job = tmp_path / JOB
    (job / "Movies").mkdir(parents=True)
    stale = [job / "Movies" / ".mic001_autopick.star.tmp.k3j_9xa0.star", job / ".autopick.star.tmp.abcdefgh.star",
             job / ".logfile.pdf.tmp.0123abcd.pdf"]
    for p in stale:
        p.write_bytes(b"")
    mine = [job / ".notes.tmp", job / "Movies" / ".x.tmp.short.star", job / "keep.tmp.abcdefgh.star"]
    for p in mine:
        p.write_text("user's")
    assert main(_job_argv(), picker_factory=FakePicker().factory) == 0
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in mine)


def test_hydra_pick_removes_temporary_files_a_killed_run_left(tmp_path):
    from hydrapicker.cli import main as hydra

    _noise_micrographs(tmp_path / "mics", n=1)
    out = tmp_path / "o"
    out.mkdir()
    stale = out / ".mic0_hydra.star.tmp.q1w2e3r4.star"
    stale.write_bytes(b"")
    assert hydra(["pick", str(tmp_path / "mics" / "mic0.mrc"), "--diameter", "60", "--quiet", "--out", str(out)]) == 0
    assert not stale.exists() and not list(out.rglob(".*.tmp.*"))


# ---- 11: one hydra pick per --out ---------------------------------------------------------------------
def _lock_of(pid, host=None, ticks=None):
    import socket

    from hydrapicker.lock import _start_ticks

    ticks = _start_ticks(pid) if ticks is None else ticks
    return f"pid={pid}\nhost={host or socket.gethostname()}\nstart_ticks={ticks}\nstarted=earlier\nwhat=hydra pick\n"


def test_second_live_hydra_pick_on_one_out_is_refused(tmp_path, capsys, monkeypatch):
    import subprocess

    from hydrapicker.cli import main as hydra
    from hydrapicker.picker import Picker

    _noise_micrographs(tmp_path / "mics", n=1)
    out = tmp_path / "o"
    out.mkdir()
    live = subprocess.Popen(["sleep", "60"])
    try:
        (out / ".hydrapicker.lock").write_text(_lock_of(live.pid))
        monkeypatch.setattr(Picker, "__init__", lambda *a, **k: pytest.fail("the model was loaded"))
        assert hydra(["pick", str(tmp_path / "mics" / "mic0.mrc"), "--diameter", "60", "--out", str(out)]) == 1
    finally:
        live.kill()
        live.wait()
    err = capsys.readouterr().err
    assert f"pid {live.pid}" in err and str(out) in err and "another hydra pick" in err, err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == [".hydrapicker.lock"]  # the owner's lock is left alone


def test_stale_lock_of_a_dead_run_is_taken_over_and_released(tmp_path):
    import subprocess

    from hydrapicker.cli import main as hydra

    _noise_micrographs(tmp_path / "mics", n=1)
    out = tmp_path / "o"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / ".hydrapicker.lock").write_text(_lock_of(dead.pid, ticks=12345))
    assert hydra(["pick", str(tmp_path / "mics" / "mic0.mrc"), "--diameter", "60", "--quiet", "--out", str(out)]) == 0
    assert (out / "mic0_hydra.star").exists() and not (out / ".hydrapicker.lock").exists()


def test_lock_reused_pid_with_another_start_time_is_stale(tmp_path):
    from hydrapicker.lock import OutputLock

    (tmp_path / ".hydrapicker.lock").write_text(_lock_of(os.getpid(), ticks=1))  # this pid, another process
    with OutputLock(tmp_path) as lock:
        assert lock.held and f"pid={os.getpid()}" in (tmp_path / ".hydrapicker.lock").read_text()
    assert not (tmp_path / ".hydrapicker.lock").exists()


def test_lock_held_on_another_host_is_refused_naming_the_file(tmp_path):
    from hydrapicker.errors import UserFacingError
    from hydrapicker.lock import OutputLock

    (tmp_path / ".hydrapicker.lock").write_text(_lock_of(1, host="elsewhere-node07"))
    with pytest.raises(UserFacingError, match="elsewhere-node07.*delete .*hydrapicker.lock"):
        OutputLock(tmp_path).acquire()


# ---- 5: read-only --out, disk full, bad @lists, over-long names -----------------------------------------
@pytest.fixture
def small_mount(tmp_path):
    """A tmpfs mounted for the test (root and a permissive container only; skipped otherwise)."""
    import subprocess

    mounted = []

    def mount(name, options):
        where = tmp_path / name
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()})")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_read_only_out_is_reported_before_the_model_is_loaded(tmp_path, small_mount, capsys, monkeypatch):
    from hydrapicker.cli import main as hydra
    from hydrapicker.picker import Picker

    _noise_micrographs(tmp_path / "mics", n=1)
    ro = small_mount("ro", "ro,size=64k")
    monkeypatch.setattr(Picker, "__init__", lambda *a, **k: pytest.fail("the model was loaded first"))
    for out in (ro, ro / "sub"):
        assert hydra(["pick", str(tmp_path / "mics" / "mic0.mrc"), "--diameter", "60", "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert str(out) in err and "Read-only" in err and "--out" in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1


def test_disk_full_stops_with_a_clear_message_and_nothing_half_written(tmp_path, small_mount, capsys):
    from hydrapicker.cli import main as hydra

    _noise_micrographs(tmp_path / "mics", n=3)
    out = small_mount("full", "size=64k")
    (out / "filler").write_bytes(b"\0" * (64 - 8) * 1024)  # two pages left: the lock and one more file
    rc = hydra(["pick", str(tmp_path / "mics" / "*.mrc"), "--diameter", "60", "--all", "--quiet",
                "--format", "star", "box", "topaz", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "No space left" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    left = sorted(p.name for p in out.iterdir() if p.name != "filler")
    assert not [n for n in left if ".tmp." in n], left  # no temporary files
    for p in out.glob("*.star"):  # what is there is whole
        import starfile
        assert len(starfile.read(p)) >= 0 and p.stat().st_size > 0
    assert ".hydrapicker.lock" not in left


def test_list_file_that_is_a_directory_or_binary_is_one_line(tmp_path, capsys):
    from hydrapicker.cli import main as hydra

    (tmp_path / "adir").mkdir()
    (tmp_path / "bin.txt").write_bytes(bytes(range(256)) * 4)
    for listing, words in ((tmp_path / "adir", "is a directory"), (tmp_path / "bin.txt", "not a text file")):
        assert hydra(["pick", f"@{listing}", "--diameter", "60", "--out", str(tmp_path / "o")]) == 1
        err = capsys.readouterr().err
        assert str(listing) in err and words in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1


def test_micrograph_name_over_255_bytes_is_skipped_like_an_unreadable_one(tmp_path, capsys, monkeypatch):
    from hydrapicker.cli import main as hydra

    _noise_micrographs(tmp_path / "mics", n=1)
    monkeypatch.chdir(tmp_path)
    long_name = "mics/" + "x" * 300 + ".mrc"
    (tmp_path / "list.txt").write_text(f"mics/mic0.mrc\n{long_name}\n")
    (tmp_path / "mics.star").write_text("data_\nloop_\n_rlnMicrographName\nmics/mic0.mrc\n" + long_name + "\n")
    for inp in ("@list.txt", "mics.star"):
        out = tmp_path / f"o_{inp[-4:]}"
        assert hydra(["pick", inp, "--apix", "4", "--diameter", "60", "--quiet", "--out", str(out)]) == 0
        err = capsys.readouterr().err
        assert "skipped" in err and "x" * 40 in err and "Traceback" not in err, err
        assert [p.name for p in out.glob("*.star")] == ["mic0_hydra.star"]


# ---- 4: a pixel size of exactly 1.0 (or 0) from an MRC header is not used silently --------------------
@pytest.mark.parametrize("header", [1.0, 0.0])
def test_unknown_pixel_size_in_the_mrc_header_stops_the_job(tmp_path, capsys, header):
    from hydrapicker.cli import main as hydra

    for i in range(2):
        write_mrc(tmp_path / f"m{i}.mrc", np.random.rand(256, 256), apix=header)
    rc = hydra(["pick", str(tmp_path / "m*.mrc"), "--diameter", "60", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "MRC header" in err and "--apix" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err  # stopped at the first one: not one warning per micrograph
    assert not list((tmp_path / "o").glob("*.star"))


def test_apix_zero_is_blamed_on_apix_not_on_the_star(tmp_path, capsys):
    from hydrapicker.cli import main as hydra

    write_mrc(tmp_path / "m.mrc", np.random.rand(256, 256), apix=2.0)
    assert hydra(["pick", str(tmp_path / "m.mrc"), "--apix", "0", "--diameter", "60", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "--apix 0" in err and "STAR" not in err and len(err.strip().splitlines()) == 1, err


def test_every_job_prints_the_pixel_size_it_used_and_its_source(tmp_path, capsys, monkeypatch):
    from hydrapicker.cli import main as hydra
    from relion_helpers import FakePicker
    from relion_hydra.pick_job import main as relion_pick

    write_mrc(tmp_path / "one.mrc", np.random.rand(256, 256), apix=1.0)
    write_mrc(tmp_path / "two.mrc", np.random.rand(256, 256), apix=3.5)
    assert hydra(["pick", str(tmp_path / "one.mrc"), "--apix", "1.0", "--diameter", "60", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "pixel size 1 A/px (--apix)" in out, out
    assert hydra(["pick", str(tmp_path / "two.mrc"), "--diameter", "60", "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "pixel size 3.5 A/px (MRC header" in out, out
    make_project(tmp_path / "proj", n_mics=2, shape=(128, 128), apix=2.0)
    monkeypatch.chdir(tmp_path / "proj")
    assert relion_pick(_job_argv(), picker_factory=FakePicker().factory) == 0
    out = capsys.readouterr().out
    assert out.count("pixel size 2 A/px") == 1 and f"optics group 1" in out and MICS_STAR in out, out


# ---- 10: messages that say what is wrong ------------------------------------------------------------
def test_missing_micrograph_of_a_star_names_both_places_tried(tmp_path, capsys, monkeypatch):
    from hydrapicker.cli import main as hydra

    write_mrc(tmp_path / "s" / "Movies" / "ok.mrc", np.random.rand(256, 256), apix=4.0)
    (tmp_path / "s" / "mics.star").write_text("data_\nloop_\n_rlnMicrographName\nMovies/ok.mrc\nMovies/gone.mrc\n")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert hydra(["pick", "--mics", str(tmp_path / "s" / "mics.star"), "--diameter", "60", "--quiet",
                  "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "gone.mrc" in ln and "skipped" in ln)
    assert str(tmp_path / "cwd") in line and str(tmp_path / "s") in line, line


def test_a_directory_given_as_a_micrograph_is_called_a_directory(tmp_path, capsys):
    from hydrapicker.cli import main as hydra

    write_mrc(tmp_path / "ok.mrc", np.random.rand(256, 256), apix=4.0)
    (tmp_path / "folder.mrc").mkdir()
    assert hydra(["pick", str(tmp_path / "ok.mrc"), str(tmp_path / "folder.mrc"), "--diameter", "60", "--quiet",
                  "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "folder.mrc" in ln and "skipped" in ln)
    assert "is a directory" in line and "motion correction" not in line, line


@pytest.mark.parametrize("argv, words", [(["-j", "0"], "--threads"), (["--threshold", "2"], "--threshold"),
                                         (["--threshold", "-0.1"], "--threshold")])
def test_hydra_pick_refuses_zero_threads_and_thresholds_outside_0_1(tmp_path, capsys, argv, words):
    from hydrapicker.cli import main as hydra

    write_mrc(tmp_path / "m.mrc", np.random.rand(256, 256), apix=4.0)
    with pytest.raises(SystemExit) as e:
        hydra(["pick", str(tmp_path / "m.mrc"), "--diameter", "60", "--out", str(tmp_path / "o"), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, words", [(["--j", "0"], "--j"), (["--threshold", "2"], "--threshold")])
def test_relion_job_refuses_zero_threads_and_thresholds_outside_0_1(tmp_path, capsys, monkeypatch, argv, words):
    from relion_helpers import FakePicker
    from relion_hydra.pick_job import main

    make_project(tmp_path, n_mics=1, shape=(128, 128))
    monkeypatch.chdir(tmp_path)
    fake = FakePicker()
    base = [a for a in _job_argv() if a not in ("--j", "1")]
    assert main(base + argv, picker_factory=fake.factory) == 1
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and fake.picked == [], err
    assert (tmp_path / JOB / "RELION_JOB_EXIT_FAILURE").exists()


# ---- 13: CryoSPARC: a refused set-up, a saved login with a trailing slash, the slots loaded -------------
@pytest.fixture
def cs_server(monkeypatch, tmp_path):
    pytest.importorskip("cryosparc.tools")
    import test_cryosparc_adapter as T

    return T.server.__wrapped__(monkeypatch, tmp_path) if hasattr(T.server, "__wrapped__") else \
        T.server.__pytest_wrapped__.obj(monkeypatch, tmp_path)


@pytest.mark.parametrize("refused", ["connect", "add_external_output"])
def test_cryosparc_job_refused_by_the_server_is_marked_failed_and_reported_in_one_line(cs_server, refused):
    import test_cryosparc_adapter as T
    from cryosparc_hydra.job import run_pick_job
    from hydrapicker.errors import UserFacingError

    api = cs_server["api"]
    getattr(api.jobs, refused).side_effect = RuntimeError("422: output type mismatch\n(server detail)")
    with pytest.raises(UserFacingError, match="J9.*422: output type mismatch") as e:
        run_pick_job(cs_server["cs"], "P1", "W1", "J3.exposures", T.FakePicker(), T._opts(), log=lambda *a: None)
    assert "\n" not in str(e.value)
    api.jobs.mark_failed.assert_called_once()
    assert "output type mismatch" in api.jobs.mark_failed.call_args.kwargs["error"]
    assert cs_server["state"]["job"].status == "failed"  # not left "building"


def test_cryosparc_input_is_loaded_with_the_optional_slots_named(cs_server):
    import test_cryosparc_adapter as T
    from cryosparc_hydra.job import run_pick_job

    api = cs_server["api"]
    run_pick_job(cs_server["cs"], "P1", "W1", "J3.exposures", T.FakePicker(), T._opts(), log=lambda *a: None)
    slots = api.jobs.load_input.call_args.kwargs.get("slots")
    assert [s if isinstance(s, str) else getattr(s, "name", s) for s in slots] == \
        ["micrograph_blob", "mscope_params", "ctf"], api.jobs.load_input.call_args


def test_cryosparc_saved_login_made_with_a_trailing_slash_is_found(monkeypatch):
    pytest.importorskip("cryosparc.tools")
    from cryosparc_hydra import connect as C

    class Sessions:
        @staticmethod
        def load():
            return Sessions()

        def find(self, url, email):
            return object() if url == "http://host:39000/" else None

    monkeypatch.setattr(C, "require", lambda name: type("M", (), {"InstanceAuthSessions": Sessions}))
    monkeypatch.setattr(C.compat, "is_v4", lambda: False)
    url = C.resolve_url("http://host:39000/")
    assert C.resolve_credentials(url, interactive=False) == (None, None)  # the saved login, no prompt
    assert C.saved_login_url(url, None) == "http://host:39000/"


# ---- kill -9 at random points, then resume: the outputs of an uninterrupted run --------------------------
@pytest.mark.slow
def test_hydra_pick_killed_at_random_points_then_resumed_equals_an_uninterrupted_run(tmp_path):
    import random
    import signal
    import subprocess
    import sys

    _noise_micrographs(tmp_path / "mics", n=8)
    base = [sys.executable, "-m", "hydrapicker", "pick", str(tmp_path / "mics" / "*.mrc"), "--diameter", "60",
            "--all", "--format", "star", "box", "topaz", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    assert subprocess.run(base + ["--out", str(tmp_path / "whole")], env=env).returncode == 0
    rng = random.Random(19)
    out = tmp_path / "killed"
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen(base + ["--out", str(out)], env=env)
        n0 = len(list(out.glob("*_hydra.star"))) if out.exists() else 0
        wait_for(lambda: proc.poll() is not None or len(list(out.glob("*_hydra.star"))) > n0, timeout=60, step=0.02)
        time.sleep(rng.uniform(0.0, 0.4))  # somewhere in the next micrograph or its writes
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
    assert kills >= 1
    assert subprocess.run(base + ["--out", str(out)], env=env).returncode == 0
    whole = {p.relative_to(tmp_path / "whole"): p.read_bytes() for p in (tmp_path / "whole").rglob("*") if p.is_file()}
    got = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert sorted(map(str, got)) == sorted(map(str, whole))  # no stray files (temporary files, the lock)
    for rel, data in whole.items():  # coordinates, BOX, Topaz text and summary: the same bytes
        assert got[rel] == data, rel


# ---- 12: what a new user tripped on ----------------------------------------------------------------
def test_hydra_help_has_no_sphinx_markup(capsys):
    from hydrapicker.cli import main as hydra

    with pytest.raises(SystemExit):
        hydra(["--help"])
    out = capsys.readouterr().out
    assert ":mod:" not in out and "``" not in out, out


def test_relion_errors_do_not_repeat_the_program_name(tmp_path, capsys, monkeypatch):
    from relion_helpers import FakePicker
    from relion_hydra.pick_job import main

    make_project(tmp_path, n_mics=1, shape=(128, 128))
    monkeypatch.chdir(tmp_path)
    assert main(_job_argv() + ["--treshold", "0.3"], picker_factory=FakePicker().factory) == 1
    assert main(["--o", JOB, "--j", "1"], picker_factory=FakePicker().factory) == 1
    err = capsys.readouterr().err
    assert "relion_hydra_pick: error: relion_hydra_pick:" not in err and "relion_hydra_pick: error:" in err, err


def test_hydra_info_of_a_fine_tuned_model_describes_its_new_head(tmp_path, capsys):
    import torch

    from hydrapicker.checkpoint import default_model_path
    from hydrapicker.cli import main as hydra

    ck = torch.load(default_model_path(), map_location="cpu", weights_only=True)
    meta = dict(ck["meta"])
    head = "fewshot_abc"
    meta["heads"] = list(meta["heads"]) + [head]
    meta["default_head"] = head
    meta["default_threshold"] = 0.41
    meta["head_thresholds"] = {**(meta.get("head_thresholds") or {}), head: 0.41}
    meta["finetune"] = {head: {"base_model": "generic.pt", "diameter_A": 140.0, "micrographs": ["a", "b", "c"],
                               "validation_AP": 0.777, "threshold": 0.41, "n_picks": 123}}
    state = dict(ck["model"])
    state.update({k.replace("heads.generic.", f"heads.{head}."): v for k, v in ck["model"].items()
                  if k.startswith("heads.generic.")})
    torch.save({**ck, "meta": meta, "model": state}, tmp_path / "ft.pt")
    assert hydra(["info", str(tmp_path / "ft.pt")]) == 0
    out = capsys.readouterr().out
    assert head in out and "0.777" in out and "123" in out and "3 micrographs" in out, out
    ap_lines = [ln for ln in out.splitlines() if "validation AP" in ln]
    assert all("generic" in ln or head in ln for ln in ap_lines), out  # whose AP each one is
    assert "self-adapted" not in out  # a few-shot head learnt from labels
    # a head adapted by hydra pick --adapt: info says so, and that its picks are class-centred by default
    meta["finetune"][head]["adaptation"] = {"pseudo_positives": 80}
    torch.save({**ck, "meta": meta, "model": state}, tmp_path / "ad.pt")
    assert hydra(["info", str(tmp_path / "ad.pt")]) == 0
    assert "class-centred by default" in capsys.readouterr().out


# ---- 5, RELION side: an over-long micrograph name is skipped; a full disk is one line -----------------------
def test_relion_job_skips_a_micrograph_whose_name_is_too_long_for_the_file_system(tmp_path, capsys, monkeypatch):
    from relion_helpers import FakePicker, write_mics_star
    from relion_hydra.pick_job import main

    make_project(tmp_path, n_mics=2, shape=(128, 128))
    long_name = "MotionCorr/job002/Movies/" + "y" * 300 + ".mrc"
    names = ["MotionCorr/job002/Movies/mic001.mrc", long_name, "MotionCorr/job002/Movies/mic002.mrc"]
    write_mics_star(tmp_path / MICS_STAR, names, 2.0)
    monkeypatch.chdir(tmp_path)
    fake = FakePicker()
    assert main(_job_argv(), picker_factory=fake.factory) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "y" * 40 in err, err
    assert (tmp_path / JOB / "RELION_JOB_EXIT_SUCCESS").exists()
    import starfile
    assert starfile.read(tmp_path / JOB / "autopick.star")["rlnMicrographName"].tolist() == [names[0], names[2]]


def test_relion_job_on_a_full_disk_fails_in_one_line(tmp_path, small_mount, capsys, monkeypatch):
    from relion_helpers import FakePicker
    from relion_hydra.pick_job import main

    make_project(tmp_path, n_mics=3, shape=(128, 128))
    ext = small_mount("External", "size=64k")
    (ext / "filler").write_bytes(b"\0" * (64 - 12) * 1024)
    monkeypatch.chdir(tmp_path)
    assert main(_job_argv(), picker_factory=FakePicker().factory) == 1
    err = capsys.readouterr().err
    assert "No space left" in err and "Traceback" not in err, err
    assert not [p for p in (tmp_path / JOB).rglob("*") if ".tmp." in p.name]


def test_watch_mode_names_apix_as_the_pixel_size_source(tmp_path):
    from hydrapicker.watch import WatchSource

    write_mrc(tmp_path / "m.mrc", np.random.rand(64, 64), apix=1.0)
    (mic,) = WatchSource([str(tmp_path)], apix=1.3).list()
    assert mic.pixel_size == 1.3 and mic.meta.get("apix_source") == "--apix"


@pytest.mark.slow
def test_two_hydra_picks_started_together_on_one_out_one_is_refused(tmp_path):
    import subprocess
    import sys

    _noise_micrographs(tmp_path / "mics", n=4)
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "hydrapicker", "pick", str(tmp_path / "mics" / "*.mrc"), "--diameter", "60",
           "--all", "--quiet", "--format", "star", "topaz", "--out", str(tmp_path / "o")]
    procs = [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 1], results
    refused = next(err for rc, err in results if rc == 1)
    # the owner is named once it has written its lock; a run refused in that instant is told one is starting
    assert ("another hydra pick" in refused or "a run that is starting" in refused), refused
    assert "Traceback" not in refused and len(refused.strip().splitlines()) == 1, refused
    topaz = (tmp_path / "o" / "picks_hydra.txt").read_text()
    assert {ln.split("\t")[0] for ln in topaz.splitlines()[1:]} == {f"mic{i}" for i in range(4)}
    assert not (tmp_path / "o" / ".hydrapicker.lock").exists()


def test_cryosparc_job_prints_the_pixel_size_per_exposure_group(cs_server):
    import test_cryosparc_adapter as T
    from cryosparc_hydra.job import run_pick_job

    lines = []
    run_pick_job(cs_server["cs"], "P1", "W1", "J3.exposures", T.FakePicker(), T._opts(), log=lines.append)
    said = [ln for ln in lines if "pixel size" in ln]
    assert said and all("psize_A" in ln and "exposure group" in ln for ln in said), lines


def test_relion_job_whose_list_files_hit_a_full_disk_fails_in_one_line(tmp_path, capsys, monkeypatch):
    import errno

    from relion_helpers import FakePicker
    from relion_hydra import nodes
    from relion_hydra.pick_job import main

    make_project(tmp_path, n_mics=2, shape=(128, 128))
    monkeypatch.chdir(tmp_path)

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(nodes, "write_coord_list", full)  # the disk fills after the coordinate files
    assert main(_job_argv(), picker_factory=FakePicker().factory) == 1
    err = capsys.readouterr().err
    assert "No space left" in err and "Traceback" not in err and "Continue" in err, err
    assert (tmp_path / JOB / "RELION_JOB_EXIT_FAILURE").exists()


def test_relion_31_run_out_says_the_node_type_label_warning_is_expected(tmp_path, capsys, monkeypatch):
    from relion_helpers import FakePicker
    from relion_hydra.pick_job import main

    make_project(tmp_path, n_mics=1, shape=(128, 128))
    monkeypatch.chdir(tmp_path)
    assert main(_job_argv() + ["--relion_version", "3.1"], picker_factory=FakePicker().factory) == 0
    out = capsys.readouterr().out
    assert "rlnPipeLineNodeTypeLabel" in out and "expected" in out, out
    assert main(["--o", "External/job002/", "--in_mics", MICS_STAR, "--particle_diameter", "40", "--j", "1",
                 "--relion_version", "4"], picker_factory=FakePicker().factory) == 0
    assert "rlnPipeLineNodeTypeLabel" not in capsys.readouterr().out
