"""RELION External-job plumbing: arguments, version detection, paths, node files, exit/abort/continue.

The picker is replaced by a deterministic test double here (tests/relion_helpers.FakePicker); the real
picker and the real RELION binaries are exercised in test_relion_pipeline.py.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import starfile
from emtable import Table

from conftest import write_all_but_last
from relion_helpers import (MICS_STAR, REPO, FakePicker, make_project, run_job_subprocess, wait_for,
                            write_job_star, write_mics_star)
from relion_hydra import args as rargs
from relion_hydra import nodes, paths, version
from relion_hydra.coordfiles import read_coord_star, read_coords_node
from relion_hydra.jobdir import DONE_LIST
from relion_hydra.pick_job import PARAMS, main

JOB = "External/job001/"
NAMES = [f"MotionCorr/job002/Movies/mic{i:03d}.mrc" for i in (1, 2, 3)]


@pytest.fixture
def project(tmp_path, monkeypatch):
    make_project(tmp_path, n_mics=3, shape=(256, 256))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pick(argv_extra=(), factory=None, job=JOB):
    fake = FakePicker()
    argv = ["--o", job, "--in_mics", MICS_STAR, "--particle_diameter", "40", *argv_extra, "--j", "1"]
    rc = main(argv, picker_factory=factory or fake.factory)
    return rc, fake


def exit_files(job=JOB):
    return sorted(p.name for p in Path(job).glob("RELION_JOB_EXIT_*"))


def read_both(path, block):
    """A STAR block read with starfile and with emtable; both must agree on labels and row count."""
    sf = starfile.read(path, always_dict=True)[block]
    t = Table(fileName=str(path), tableName=block)
    assert list(sf.columns) == t.getColumnNames()
    assert len(sf) == len(t)
    return sf


# ---- arguments ----------------------------------------------------------------------------------
def test_argv_grouping_flags_multiword_negative_and_both_pipeline_control_spellings():
    raw = rargs.split_argv(["--o", "External/job004/", "--in_mics", "a.star", "--threshold", "-0.5",
                            "--model", "my", "model.pt", "--flag", "--pipeline-control", "External/job004/",
                            "--pipeline_control", "External/job004/", "--j", "2"])
    assert raw["threshold"] == "-0.5"
    assert raw["model"] == "my model.pt"
    assert raw["flag"] is None
    assert raw["pipeline_control"] == "External/job004/"
    opts = rargs.parse(["--o", "J/", "--in_mics", "a.star", "--particle_diameter", "150",
                        "--pipeline-control", "J/", "--j", "3", "--threshold", "0.25"], PARAMS, "prog")
    assert opts["particle_diameter"] == 150.0 and opts["j"] == 3 and opts["threshold"] == 0.25
    with pytest.raises(rargs.ArgumentError, match="--threshold must be from 0 to 1"):  # FOMs are 0-1
        rargs.parse(["--o", "J/", "--in_mics", "a.star", "--particle_diameter", "150", "--threshold", "-0.5"],
                    PARAMS, "prog")
    assert opts["pickname"] == "autopick" and opts["head"] == ""  # empty: the model's own head


def test_unknown_parameters_are_named():
    with pytest.raises(rargs.ArgumentError) as e:
        rargs.parse(["--o", "J/", "--in_mics", "a", "--particle_diameter", "150", "--treshold", "0.3",
                     "--in_parts", "p.star"], PARAMS, "prog")
    assert "--in_parts" in str(e.value) and "--treshold" in str(e.value)


@pytest.mark.parametrize("argv,needle", [
    (["--o", "J/", "--in_mics", "a"], "--particle_diameter is required"),
    (["--o", "J/", "--in_mics", "a", "--particle_diameter"], "--particle_diameter needs a value"),
    (["--o", "J/", "--in_mics", "a", "--particle_diameter", "big"], "must be a number"),
    (["--o", "J/", "--in_mics", "a", "--particle_diameter", "-3"], "must be > 0"),
])
def test_bad_values_give_clear_errors(argv, needle):
    with pytest.raises(rargs.ArgumentError, match=needle):
        rargs.parse(argv, PARAMS, "prog")


# ---- version detection ----------------------------------------------------------------------------
@pytest.mark.parametrize("v", ["3.1", "4", "5"])
def test_version_from_job_star(tmp_path, v):
    write_job_star(tmp_path / "External/job001", v)
    got, why = version.detect(str(tmp_path / "External/job001/"), None, None, project_dir=tmp_path)
    assert got == v and "job.star" in why


def test_version_override_pipeline_and_fallback(tmp_path):
    write_job_star(tmp_path / "J", "5")
    assert version.detect(str(tmp_path / "J"), None, "4.0.2")[0] == "4"
    assert version.detect(str(tmp_path / "J"), None, "3")[0] == "3.1"
    with pytest.raises(Exception, match="relion_version"):
        version.detect(str(tmp_path / "J"), None, "six")
    (tmp_path / "default_pipeline.star").write_text(
        "\n# version 30001\n\ndata_pipeline_processes\n\nloop_\n_rlnPipeLineProcessName #1\n"
        "_rlnPipeLineProcessAlias #2\n_rlnPipeLineProcessTypeLabel #3\n_rlnPipeLineProcessStatusLabel #4\n"
        "Import/job001/ None relion.import.movies Succeeded\n")
    assert version.detect(str(tmp_path / "none"), None, None, project_dir=tmp_path)[0] == "4"
    star = tmp_path / "m.star"
    star.write_text("\n# version 50001\n\ndata_micrographs\n")
    assert version.detect(str(tmp_path / "none"), star, None, project_dir=tmp_path / "x")[0] == "5"
    got, why = version.detect(str(tmp_path / "none"), None, None, project_dir=tmp_path / "x")
    assert got == "3.1" and "relion_version" in why


# ---- paths ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mic,expected", [
    ("MotionCorr/job002/Movies/mic001.mrc", "External/job004/Movies/mic001_autopick.star"),
    ("MotionCorr/job002/mic.tiff", "External/job004/mic_autopick.star"),
    ("raw/mics/a.mrc", "External/job004/raw/mics/a_autopick.star"),
    ("/data/Import/job001/x/b.mrc", "External/job004/x/b_autopick.star"),
    ("job001/c.mrc", "External/job004/job001/c_autopick.star"),  # no "Type/" before it: kept
])
def test_relion_output_path_convention(mic, expected):
    assert paths.coord_path("External/job004", mic, "autopick") == expected


# ---- node files ------------------------------------------------------------------------------------
@pytest.mark.parametrize("v,node,label", [
    ("3.1", "coords_suffix_hydra.star", "MicrographsCoords.star.relion.autopick"),
    ("4", "autopick.star", "MicrographsCoords.star.relion.autopick"),
    ("5", "autopick.star", "MicrographCoordsGroup.star.relion.autopick"),
])
def test_output_nodes_per_version(tmp_path, v, node, label):
    d = str(tmp_path / "External/job004") + "/"
    path = nodes.write_output_nodes(d, v, nodes.pick_output_nodes(d, "hydra", v))
    df = read_both(path, "output_nodes")
    assert df["rlnPipeLineNodeName"].tolist() == [d + node, d + "logfile.pdf"]
    assert df["rlnPipeLineNodeType"].tolist() == [2, 13]
    assert df["rlnPipeLineNodeTypeLabel"].tolist() == [label, "LogFile.pdf.relion.autopick"]
    assert Path(path).read_text().startswith(f"\n# version {50001 if v == '5' else 30001}")


def test_list_file_quotes_names_with_spaces(tmp_path):
    p = nodes.write_coord_list(str(tmp_path / "autopick.star"), [("a b.mrc", "J/a b_autopick.star")], 30001)
    df = read_both(p, "coordinate_files")
    assert df["rlnMicrographName"].tolist() == ["a b.mrc"]


# ---- whole job, in process -------------------------------------------------------------------------
@pytest.mark.parametrize("v", ["3.1", "4", "5"])
def test_pick_job_layout(project, v, capsys):
    write_job_star(JOB, v)
    rc, fake = pick(["--pickname", "hydra"])
    assert rc == 0 and exit_files() == ["RELION_JOB_EXIT_SUCCESS"]
    out = capsys.readouterr().out
    assert "micrograph 3/3" in out and "picks so far" in out and "device cpu" in out
    # per-micrograph files at RELION's path, with the FOM >= default threshold, readable by both readers
    for name in NAMES:
        coord = paths.coord_path(JOB, name, "hydra")
        df = read_both(coord, "")
        exp = FakePicker.expected(name).above(0.5)
        assert len(df) == len(exp) > 0
        assert sorted(df["rlnCoordinateX"]) == sorted(exp.x) and (df["rlnClassNumber"] == 0).all()
        assert (df["rlnAutopickFigureOfMerit"] >= 0.5).all()
        assert Path(coord).read_text().startswith(f"\n# version {50001 if v == '5' else 30001}")
    lst = read_both(JOB + "autopick.star", "coordinate_files")
    assert lst["rlnMicrographName"].tolist() == NAMES  # exactly as in --in_mics
    assert lst["rlnMicrographCoordinates"].tolist() == [paths.coord_path(JOB, n, "hydra") for n in NAMES]
    assert Path(JOB + "coords_suffix_hydra.star").read_text().split() == [MICS_STAR]
    summ = read_both(JOB + "summary.star", "summary")
    assert summ["rlnGroupNrParticles"].tolist() == [len(FakePicker.expected(n).above(0.5)) for n in NAMES]
    onodes = read_both(JOB + "RELION_OUTPUT_NODES.star", "output_nodes")
    first = onodes["rlnPipeLineNodeName"][0]
    assert first == JOB + ("coords_suffix_hydra.star" if v == "3.1" else "autopick.star")
    assert Path(JOB + "logfile.pdf").read_bytes()[:4] == b"%PDF"
    # the reader used by the train job maps both node kinds back to the same picks
    for node in (JOB + "coords_suffix_hydra.star", JOB + "autopick.star"):
        got = read_coords_node(node, NAMES)
        assert sorted(got) == NAMES
        for n in NAMES:  # the written picks: FOM >= 0.5, rounded (RELION truncates at extraction)
            want = FakePicker.expected(n).above(0.5).sorted()  # written highest FOM first
            assert np.array_equal(got[n].x, want.x.round()) and np.array_equal(got[n].y, want.y.round())
            np.testing.assert_allclose(got[n].fom, want.fom, atol=1e-6)


def test_a_refused_adaptation_at_another_working_scale_continues_and_a_scale_change_picks_again(
        project, monkeypatch, capsys):
    """``adapt yes`` refused by its guards picks zero-shot at the data set's working scale: a later cycle on a
    grown micrographs STAR continues (the done list's settings name the model given and the scale, not the
    scaled picker's temporary file); picks at another scale are other picks, so a changed scale picks all
    again."""
    from hydrapicker.adapt import Adaptation

    scale = {"now": 0.75}

    def spy(picker, mics, diameter_A, save_to, head=None, settings=None, reuse=True, log=print, should_stop=None):
        picker.meta = {**picker.meta, "working_scale": scale["now"],
                       "path": f"/tmp/hydra-adapt-{len(mics)}/scale.pt"}  # a temporary file, another each run
        return picker, "generic", Adaptation(False, None, "generic", "too few confident picks", zero_shot=picker)

    monkeypatch.setattr("hydrapicker.adapt.adapted_picker", spy)
    write_all_but_last(MICS_STAR, "first2.star")
    argv = ["--o", JOB, "--particle_diameter", "40", "--adapt", "yes", "--adapt_centres", "no", "--j", "1"]
    assert main(argv + ["--in_mics", "first2.star"], picker_factory=FakePicker().factory) == 0
    capsys.readouterr()
    fake = FakePicker()
    assert main(argv + ["--in_mics", MICS_STAR], picker_factory=fake.factory) == 0
    assert "continuing: 2 micrographs already done" in capsys.readouterr().out and fake.picked == NAMES[-1:]
    for now, picked in ((0.75, []), (1.0, NAMES)):  # the model loaded again (no "nothing new" shortcut)
        (Path(JOB) / ".hydra_settings.json").unlink()
        scale["now"], fake = now, FakePicker()
        assert main(argv + ["--in_mics", MICS_STAR], picker_factory=fake.factory) == 0
        assert fake.picked == picked, now


def test_working_scale_runs_the_cores_rule_and_a_changed_value_picks_again(project, monkeypatch, capsys):
    """``working_scale`` (auto or a number) is :func:`hydrapicker.scale.picker_at_scale` over the job's
    micrographs, as ``hydra pick --working-scale``; the done list knows the value, so a changed one picks all
    again; a bad value or adapt = yes beside it stop the job with the fix."""
    calls = []

    def spy(picker, mics, diameter_A, head, working_scale, log=print):
        calls.append(([m.name for m in mics], diameter_A, working_scale))
        chosen = 0.75 if working_scale == "auto" else float(working_scale)
        picker.meta = {**picker.meta, "working_scale": chosen, "path": "/tmp/hydra-scale-x/model.pt"}
        return picker

    monkeypatch.setattr("hydrapicker.scale.picker_at_scale", spy)
    rc, fake = pick(["--working_scale", "auto"])
    assert rc == 0 and calls == [(NAMES, 40.0, "auto")] and fake.picked == NAMES
    rc, fake = pick(["--working_scale", "auto"])
    assert rc == 0 and fake.picked == [] and "nothing new" in capsys.readouterr().out
    rc, fake = pick(["--working_scale", "0.8"])
    assert rc == 0 and calls[-1][2] == 0.8 and fake.picked == NAMES
    rc, _ = pick(["--working_scale", "big"], job="External/job002/")
    assert rc != 0 and "--working_scale must be a number" in capsys.readouterr().err
    rc, _ = pick(["--working_scale", "0.8", "--adapt", "yes"], job="External/job003/")
    assert rc != 0 and "leave working_scale empty" in capsys.readouterr().err
    assert exit_files("External/job003/") == ["RELION_JOB_EXIT_FAILURE"]


def test_adapt_yes_runs_the_core_adaptation_on_the_job_micrographs(project, monkeypatch):
    """``adapt = yes`` is :func:`hydrapicker.adapt.adapted_picker` and then, by the core's rule (adapt_centres
    empty), :func:`hydrapicker.refine_adapt.picker_with_adapted_refiner` (one implementation for every entry
    point), over the job's micrographs, with the model and refiner kept in the job directory;
    ``adapt_centres no`` keeps the head only."""
    calls = []

    def spy(picker, mics, diameter_A, save_to, head=None, settings=None, reuse=True, log=print, should_stop=None):
        from hydrapicker.adapt import Adaptation

        calls.append(([m.name for m in mics], Path(save_to), diameter_A, head))
        return picker, "generic", Adaptation(False, None, "generic", "refused by the spy")

    def refiner_spy(picker, mics, diameter_A, save_to, head=None, settings=None, reuse=True, log=print,
                    should_stop=None):
        calls.append(([m.name for m in mics], Path(save_to), diameter_A, head))
        return picker, None

    monkeypatch.setattr("hydrapicker.adapt.adapted_picker", spy)
    monkeypatch.setattr("hydrapicker.refine_adapt.picker_with_adapted_refiner", refiner_spy)
    rc, _ = pick(["--adapt", "yes"])
    assert rc == 0 and exit_files() == ["RELION_JOB_EXIT_SUCCESS"]
    assert calls == [(NAMES, Path(JOB) / "adapted_model.pt", 40.0, None),
                     (NAMES, Path(JOB) / "adapted_refiner.pt", 40.0, "generic")]
    calls.clear()
    rc, _ = pick(["--adapt", "yes", "--adapt_centres", "no"], job="External/job003/")
    assert rc == 0 and calls == [(NAMES, Path("External/job003/") / "adapted_model.pt", 40.0, None)]
    calls.clear()
    rc, _ = pick(["--adapt", "no"], job="External/job002/")
    assert rc == 0 and calls == []


def test_refine_centres_reaches_the_picker(project):
    """``refine_centres`` yes/no builds the picker with/without the centre refiner; absent, the default
    (``defaults.REFINE_CENTRES``) needs no word to the factory."""
    from hydrapicker import defaults

    asked = []

    def factory(model, device, threads, **kw):
        asked.append(kw)
        return FakePicker().factory(model, device, threads)

    rc, _ = pick([], factory=factory)
    assert rc == 0 and asked == [{}]
    for k, (word, want) in enumerate((("no", False), ("yes", "shipped"))):
        rc, _ = pick(["--refine_centres", word], factory=factory, job=f"External/job00{k + 2}/")
        assert rc == 0
        assert asked[-1] == ({} if (want is not False) == defaults.REFINE_CENTRES else {"refine": want})
    from relion_hydra.pick_job import default_picker_factory
    import inspect

    assert inspect.signature(default_picker_factory).parameters["refine"].default == "auto"


def test_tta_reaches_the_picker_and_the_done_list(project, capsys):
    """``tta`` absent or the default: no word to the factory (the core's default views) and nothing picked
    again; 1: the factory is asked for one view and it is a new setting for the done list (every micrograph
    is picked again, once); 3 fails with the exit file."""
    from hydrapicker import defaults
    from relion_hydra.pick_job import default_picker_factory

    fake, asked = FakePicker(), []

    def factory(model, device, threads, **kw):
        asked.append(kw)
        return fake.factory(model, device, threads)

    rc, _ = pick([], factory=factory)
    assert rc == 0 and asked == [{}] and sorted(fake.picked) == sorted(NAMES)
    rc, _ = pick(["--tta", str(defaults.TTA)], factory=factory)  # the default asked for by name: nothing new
    assert rc == 0 and asked[-1] == {} and sorted(fake.picked) == sorted(NAMES)
    for _ in range(2):  # the same job continued with one view: all picked again, then nothing new
        rc, _ = pick(["--tta", "1"], factory=factory)
        assert rc == 0 and asked[-1] == {"tta": 1} and sorted(fake.picked) == sorted(NAMES * 2)
    assert default_picker_factory(None, "cpu", 1, tta=1).tta == 1
    assert default_picker_factory(None, "cpu", 1).tta == defaults.TTA
    rc, _ = pick(["--tta", "3"], job="External/job009/")
    assert rc != 0 and exit_files("External/job009/") == ["RELION_JOB_EXIT_FAILURE"]
    assert "--tta must be one of 1, 2, 4, 8, got '3'" in capsys.readouterr().err


def test_micrograph_evidence_reaches_the_pick_policy_and_the_done_list(project):
    """``micrograph_evidence`` absent: the policy weighs FOMs against the default multiple of the head's
    threshold (the core's rule, hydrapicker.postprocess.weigh_by_evidence); 0: raw FOMs; 2: twice the
    threshold's odds; each a new setting for the done list; a negative value fails with the exit file."""
    from hydrapicker import defaults
    from hydrapicker.postprocess import evidence_reference

    rc, fake = pick([])
    assert rc == 0 and fake.policies[0].evidence_ref == evidence_reference(0.5, defaults.EVIDENCE_REFERENCE)
    rc, again = pick([])
    assert rc == 0 and again.picked == []  # all done with these settings
    rc, raw = pick(["--micrograph_evidence", "0"])
    assert rc == 0 and raw.policies[0].evidence_ref is None and raw.picked == NAMES  # new settings: picked again
    rc, strong = pick(["--micrograph_evidence", "2"])
    assert rc == 0 and strong.policies[0].evidence_ref == evidence_reference(0.5, 2.0) and strong.picked == NAMES
    rc, _ = pick(["--micrograph_evidence", "-1"], job="External/job002/")
    assert rc != 0 and exit_files("External/job002/") == ["RELION_JOB_EXIT_FAILURE"]


def test_class_centres_reaches_the_pick_policy_and_the_done_list(project):
    """``class_centres`` absent or no: off; yes: the policy re-centres on class averages of the picks at the
    head's calibrated threshold, a new setting for the done list (the micrographs are picked again)."""
    rc, off = pick([])
    assert rc == 0 and off.policies[0].class_centres_at is None
    rc, on = pick(["--class_centres", "yes"])
    assert rc == 0 and on.policies[0].class_centres_at == 0.5 and on.picked == NAMES
    rc, again = pick(["--class_centres", "yes"])
    assert rc == 0 and again.picked == []
    rc, no = pick(["--class_centres", "no"])
    assert rc == 0 and no.policies[0].class_centres_at is None and no.picked == NAMES


def test_a_job_picking_with_an_adapted_model_class_centres_and_its_done_list_says_so(project, capsys):
    """model = an earlier job's adapted_model.pt (its default head adapted without labels): the picks are
    class-centred with nothing asked, and the done list knows it (the same model with class_centres no is
    another setting: picked again)."""
    adapted = {"heads": ["generic", "adapted"], "default_head": "adapted", "default_threshold": 0.5,
               "floor": 0.05, "path": "fake.pt", "finetune": {"adapted": {"adaptation": {"pseudo_positives": 80}}}}

    def run(extra=()):
        fake = FakePicker()
        fake.meta = dict(adapted)
        rc = main(["--o", JOB, "--in_mics", MICS_STAR, "--particle_diameter", "40", *extra, "--j", "1"],
                  picker_factory=fake.factory)
        return rc, fake

    rc, on = run()
    assert rc == 0 and on.policies[0].class_centres_at == 0.5 and on.picked == NAMES
    assert "class-average centring" in capsys.readouterr().out  # the run log says so
    rc, again = run()
    assert rc == 0 and again.picked == []
    capsys.readouterr()
    rc, off = run(["--class_centres", "no"])
    assert rc == 0 and off.policies[0].class_centres_at is None and off.picked == NAMES
    assert "class-average centring" not in capsys.readouterr().out


def test_class_centres_go_with_a_head_adapted_by_an_earlier_job():
    """Not given: on for a model whose head was adapted to its data set (re-used as 'model'), and with
    adapt = yes (the core's rule, the same as hydra pick's); no: off."""
    from relion_hydra.pick_job import _choice_keys, _class_centres

    meta = {"heads": ["generic", "adapted"], "finetune": {"adapted": {"adaptation": {"pseudo_positives": 80}}}}
    assert _class_centres({}, meta, "adapted") and not _class_centres({}, meta, "generic")
    assert not _class_centres({"class_centres": False}, meta, "adapted")
    assert _class_centres({"adapt": True}) and not _class_centres({"adapt": True, "class_centres": False})
    assert "class centres" in _choice_keys({"adapt": True}) and "class centres" not in _choice_keys({})


def test_user_threshold_and_pre31_star(project):
    write_mics_star(MICS_STAR, NAMES, 2.0, optics=False)
    rc, _ = pick(["--threshold", "0.8"])
    assert rc == 0
    df = starfile.read(paths.coord_path(JOB, NAMES[0], "autopick"))
    assert len(df) == len(FakePicker.expected(NAMES[0]).above(0.8)) and (df["rlnAutopickFigureOfMerit"] >= 0.8).all()


def test_unreadable_micrograph_is_skipped_and_reported(project, capsys):
    Path(NAMES[1]).write_bytes(b"this is not an MRC file")
    rc, _ = pick()
    assert rc == 0 and exit_files() == ["RELION_JOB_EXIT_SUCCESS"]
    err = capsys.readouterr().err
    assert NAMES[1] in err and "skipped" in err
    lst = starfile.read(JOB + "autopick.star")
    assert lst["rlnMicrographName"].tolist() == [NAMES[0], NAMES[2]]
    assert not Path(paths.coord_path(JOB, NAMES[1], "autopick")).exists()
    # a Continue after the file is fixed picks only that one
    make_project(".", n_mics=3, shape=(256, 256))
    rc, fake = pick()
    assert rc == 0 and fake.picked == [NAMES[1]]
    assert starfile.read(JOB + "autopick.star")["rlnMicrographName"].tolist() == NAMES


def test_all_micrographs_unreadable_fails(project, capsys):
    for n in NAMES:
        Path(n).write_bytes(b"junk")
    rc, _ = pick()
    assert rc == 1 and exit_files() == ["RELION_JOB_EXIT_FAILURE"]
    assert "no micrograph" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    # exactly the argv relion_pipeliner gives a job whose Params lack particle_diameter (see note.txt)
    (["--o", JOB, "--in_mics", MICS_STAR, "--threshold", "0.5", "--j", "1", "--pipeline_control", JOB],
     "--particle_diameter is required"),
    (["--o", JOB, "--in_mics", MICS_STAR, "--particle_diameter", "40", "--box", "64", "--j", "1"], "--box"),
    (["--o", JOB, "--in_mics", "nope.star", "--particle_diameter", "40", "--j", "1"], "nope.star"),
    (["--o", JOB, "--in_mics", MICS_STAR, "--particle_diameter", "40", "--head", "x", "--j", "1"], "head"),
])
def test_user_errors_end_in_failure_with_message(project, capsys, argv, needle):
    rc = main(argv, picker_factory=FakePicker().factory)
    assert rc == 1 and exit_files() == ["RELION_JOB_EXIT_FAILURE"]
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_stale_exit_files_are_removed(project):
    Path(JOB).mkdir(parents=True)
    for f in ("RELION_JOB_EXIT_FAILURE", "RELION_JOB_EXIT_ABORTED"):
        (Path(JOB) / f).touch()
    assert pick()[0] == 0 and exit_files() == ["RELION_JOB_EXIT_SUCCESS"]


def test_changed_settings_repick_everything(project):
    assert pick()[0] == 0
    rc, fake = pick()
    assert rc == 0 and fake.picked == []  # continue: nothing left
    rc, fake = pick(["--threshold", "0.7"])
    assert rc == 0 and fake.picked == NAMES


# ---- abort, SIGTERM, kill + continue (child processes, real signals) ---------------------------------
def _argv():
    return ["--o", JOB, "--in_mics", MICS_STAR, "--particle_diameter", "40", "--j", "1"]


def _done_names(project):
    lines = (project / JOB / DONE_LIST).read_text().splitlines()[1:]
    return [ln.split("\t")[0] for ln in lines]


def _n_done(project):
    p = project / JOB / DONE_LIST
    return len(p.read_text().splitlines()) - 1 if p.exists() else 0


@pytest.fixture
def slow_project(tmp_path):
    make_project(tmp_path, n_mics=8, shape=(128, 128))
    return tmp_path


@pytest.mark.parametrize("how", ["abort_file", "sigterm"])
def test_abort_within_seconds_leaves_consistent_job(slow_project, how):
    proc = run_job_subprocess(slow_project, _argv(), delay=1.0)
    try:
        assert wait_for(lambda: _n_done(slow_project) >= 1, timeout=60)
        t0 = time.time()
        if how == "abort_file":
            (slow_project / JOB / "RELION_JOB_ABORT_NOW").touch()
        else:
            proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: (slow_project / JOB / "RELION_JOB_EXIT_ABORTED").exists(), timeout=10)
        elapsed = time.time() - t0
        proc.wait(timeout=10)
    finally:
        proc.kill()
    print(f"abort ({how}) -> EXIT_ABORTED after {elapsed:.2f} s")
    assert elapsed < 5, elapsed
    assert sorted(p.name for p in (slow_project / JOB).glob("RELION_JOB_EXIT_*")) == ["RELION_JOB_EXIT_ABORTED"]
    done = _done_names(slow_project)
    assert 1 <= len(done) < 8
    listed = starfile.read(slow_project / JOB / "autopick.star")["rlnMicrographName"].tolist()
    assert listed == done  # list file == finished micrographs, each with its coordinate file
    on_disk = sorted(str(p.relative_to(slow_project)) for p in (slow_project / JOB).rglob("mic*_autopick.star"))
    assert on_disk == sorted(paths.coord_path(JOB, n, "autopick") for n in done)
    assert not list((slow_project / JOB).rglob(".*.tmp.*"))
    assert "aborting" in (slow_project / JOB / "run.out").read_text()


def test_continue_after_kill_has_no_duplicated_or_lost_picks(slow_project):
    proc = run_job_subprocess(slow_project, _argv(), delay=0.7)
    try:
        assert wait_for(lambda: _n_done(slow_project) >= 3, timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    assert not (slow_project / JOB / "RELION_JOB_EXIT_SUCCESS").exists()
    n_before = _n_done(slow_project)
    proc = run_job_subprocess(slow_project, _argv(), delay=0.0)
    assert proc.wait(timeout=120) == 0
    assert (slow_project / JOB / "RELION_JOB_EXIT_SUCCESS").exists()
    out = (slow_project / JOB / "run.out").read_text()
    assert f"continuing: {n_before} micrographs already done" in out
    names = [f"MotionCorr/job002/Movies/mic{i:03d}.mrc" for i in range(1, 9)]
    done = _done_names(slow_project)
    assert sorted(done) == names  # every micrograph exactly once
    lst = starfile.read(slow_project / JOB / "autopick.star")
    assert lst["rlnMicrographName"].tolist() == names
    for n in names:
        got = read_coord_star(slow_project / paths.coord_path(JOB, n, "autopick"))
        exp = FakePicker.expected(n).above(0.5)
        np.testing.assert_array_equal(np.sort(got.x), np.sort(exp.x))


def test_bin_script_writes_failure_when_dependencies_are_missing(tmp_path):
    py = "/usr/bin/python3"
    if not os.path.exists(py) or subprocess.run([py, "-c", "import numpy"], capture_output=True).returncode == 0:
        pytest.skip("needs a system python3 without numpy")
    argv = [py, str(REPO / "bin/relion_hydra_pick"), "--o", "External/job009/", "--in_mics", "x"]
    # HYDRAPICKER_PYTHON naming the same interpreter: no usable Python at all
    r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "HYDRAPICKER_PYTHON": py})
    assert r.returncode == 1 and "HYDRAPICKER_PYTHON" in r.stderr
    assert (tmp_path / "External/job009/RELION_JOB_EXIT_FAILURE").exists()
    venv_py = REPO / ".venv" / "bin" / "python"
    if venv_py.exists():
        # without it, the script falls back to the repository's .venv (made by run_tests.sh / run_demo.sh)
        (tmp_path / "External/job009/RELION_JOB_EXIT_FAILURE").unlink()
        r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        assert r.returncode != 0 and "particle_diameter is required" in r.stderr
        assert (tmp_path / "External/job009/RELION_JOB_EXIT_FAILURE").exists()


def test_bin_script_help_runs_from_elsewhere(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "bin/relion_hydra_pick"), "--help"], cwd=tmp_path,
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0 and "--particle_diameter" in r.stdout


def test_qc_images_of_n_micrographs_spread_over_the_job(project):
    """``qc`` = 2 of three micrographs: the first and the last get a QC image beside their coordinate file's
    path under <job>/qc/ (a PNG with the picks drawn); 0 (the default) writes none; a negative count fails
    with the exit file."""
    rc, _ = pick(["--qc", "2"])
    assert rc == 0 and exit_files() == ["RELION_JOB_EXIT_SUCCESS"]
    want = [Path(JOB) / "qc" / Path(os.path.relpath(paths.coord_path(JOB, n, "autopick"), JOB)).with_suffix(".png")
            for n in (NAMES[0], NAMES[-1])]
    got = sorted(p for p in (Path(JOB) / "qc").rglob("*") if p.is_file())
    assert got == sorted(want)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in got)
    rc, _ = pick([], job="External/job002/")
    assert rc == 0 and not Path("External/job002/qc").exists()
    rc, _ = pick(["--qc", "-1"], job="External/job003/")
    assert rc != 0 and exit_files("External/job003/") == ["RELION_JOB_EXIT_FAILURE"]
