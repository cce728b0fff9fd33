"""Watch mode: the core (hydrapicker/watch.py) and ``hydra pick --watch`` end to end."""
import os
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
    assert not c.check(dst)  # stable, but shorter than its header says
    finish()
    assert not c.check(dst)  # grew since the last poll
    assert c.check(dst)      # stable and whole
    (tmp_path / "tiny.mrc").write_bytes(b"x" * 100)  # not even a header
    assert mrc_expected_size(tmp_path / "tiny.mrc") is None
    assert not c.check(tmp_path / "missing.mrc")


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


def test_stop_flag_turns_sigterm_into_a_clean_stop(tmp_path):
    flag = StopFlag(tmp_path)
    with flag.handling():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert flag() and "SIGTERM" in flag.reason
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))
