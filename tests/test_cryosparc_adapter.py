"""CryoSPARC adapter: dataset conversions, the External-job flow against a mocked API client, offline mode.

The mocked server follows cryosparc-tools' own 5.x tests: ``APIClient.__call__`` patched (no
``/openapi.json`` fetch), ``MagicMock`` class attributes for the endpoint groups (set with monkeypatch so
they do not leak), real pydantic models returned from the endpoints.
"""
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

pytest.importorskip("cryosparc.dataset")

from cryosparc.dataset import Dataset  # noqa: E402

from cryosparc_hydra import particles as P  # noqa: E402
from cryosparc_hydra.exposures import ExposureDatasetError, exposures_to_micrographs  # noqa: E402
from hydrapicker.types import Micrograph, PickResult, Picks  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# dtypes as the server writes them (reference notes 2.1)
EXPOSURE_FIELDS = [
    ("micrograph_blob/path", "O"), ("micrograph_blob/idx", "<u4"), ("micrograph_blob/shape", "<u4", (2,)),
    ("micrograph_blob/psize_A", "<f4"), ("micrograph_blob/format", "O"),
    ("micrograph_blob/is_background_subtracted", "<u4"), ("micrograph_blob/vmin", "<f4"),
    ("micrograph_blob/vmax", "<f4"), ("micrograph_blob/import_sig", "<u8"),
    ("mscope_params/accel_kv", "<f4"), ("mscope_params/cs_mm", "<f4"),
    ("mscope_params/total_dose_e_per_A2", "<f4"), ("mscope_params/phase_plate", "<u4"),
    ("mscope_params/neg_stain", "<u4"), ("mscope_params/exp_group_id", "<u4"),
    ("mscope_params/defect_path", "O"),
    ("ctf/type", "O"), ("ctf/exp_group_id", "<u4"), ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"),
    ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"),
]
# what the server's get_output_fields returns for a particle output with location + pick_stats
SERVER_FIELDS = [("location/micrograph_uid", "<u8"), ("location/exp_group_id", "<u4"),
                 ("location/micrograph_path", "O"), ("location/micrograph_shape", "2u4"),
                 ("location/micrograph_psize_A", "<f4"), ("location/center_x_frac", "<f4"),
                 ("location/center_y_frac", "<f4"), ("location/min_dist_A", "<f4"),
                 ("pick_stats/ncc_score", "<f4"), ("pick_stats/power", "<f4"),
                 ("pick_stats/template_idx", "<u4"), ("pick_stats/angle_rad", "<f4")]


def write_mrc(path, shape, seed=0, psize=2.0, blobs=()):
    import mrcfile

    rng = np.random.default_rng(seed)
    img = rng.normal(0, 1, shape).astype(np.float32)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for x, y, r in blobs:
        img -= 3.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * (r / 2.0) ** 2)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(img)
        m.voxel_size = psize


def make_project(tmp_path, shapes=((60, 80), (72, 64)), psize=2.0, write=True, blobs=()):
    """A project directory with motion-corrected micrographs and the exposures dataset listing them."""
    project = tmp_path / "CS-test"
    n = len(shapes)
    ds = Dataset.allocate(n, EXPOSURE_FIELDS)
    for i, shape in enumerate(shapes):
        rel = f"J3/motioncorrected/{int(ds['uid'][i]):021d}_mic{i}_patch_aligned_doseweighted.mrc"
        ds["micrograph_blob/path"][i] = rel
        ds["micrograph_blob/shape"][i] = shape
        if write:
            write_mrc(project / rel, shape, seed=i, psize=psize, blobs=blobs)
    ds["micrograph_blob/psize_A"] = psize
    ds["micrograph_blob/format"] = "MRC/2"
    ds["mscope_params/accel_kv"] = 300
    ds["mscope_params/exp_group_id"] = np.arange(n) + 1
    ds["ctf/type"] = "spline"
    return project, ds


# ---------------------------------------------------------------- conversions

def test_fractions_are_index_over_size_without_offset():
    # CryoSPARC's T20S fixture: Blob Picker on a 580x600 grid wrote 0.22586207 = 131/580
    fx, fy = P.pixels_to_fractions([131.0], [61.0], (600, 580))
    assert fx.dtype == np.float32 and fx[0] == np.float32(131 / 580) == np.float32(0.22586207)
    assert fy[0] == np.float32(61 / 600)


def test_fractions_clip_to_half_open_unit_interval_and_flip():
    fx, fy = P.pixels_to_fractions([-3.0, 79.9999999, 80.5], [0.0, 59.0, 10.0], (60, 80))
    assert fx[0] == 0 and fx.max() < 1 and fy.max() < 1
    fx2, fy2 = P.pixels_to_fractions([10.0], [0.0], (60, 80), flip_y=True)
    assert fy2[0] == np.float32(59 / 60)  # row 0 of a flipped copy is row ny-1
    x, y = P.fractions_to_pixels(fx2, fy2, (60, 80), flip_y=True)
    assert np.allclose([x[0], y[0]], [10.0, 0.0], atol=1e-4)
    with pytest.raises(ValueError):
        P.pixels_to_fractions([1.0], [1.0], (0, 80))


def test_exposures_to_micrographs_reads_server_dtypes(tmp_path):
    project, ds = make_project(tmp_path, write=False)
    path = tmp_path / "exposures.cs"
    ds.save(str(path))
    mics = exposures_to_micrographs(Dataset.load(str(path)), project, source=str(path))
    assert [m.meta["uid"] for m in mics] == [int(u) for u in ds["uid"]]
    assert mics[0].shape == (60, 80) and mics[1].shape == (72, 64)  # [ny, nx] as stored
    assert mics[0].path == str(project / ds["micrograph_blob/path"][0])
    assert mics[0].meta["cs_path"] == ds["micrograph_blob/path"][0]
    assert mics[1].meta["exp_group_id"] == 2 and mics[0].pixel_size == pytest.approx(2.0)
    assert mics[0].name == str(int(ds["uid"][0]))
    with pytest.raises(ExposureDatasetError, match="exposures_accepted"):
        exposures_to_micrographs(ds.filter_prefixes(["mscope_params"]), project, source="x.cs")


def _mic(uid, shape, path="J3/motioncorrected/a.mrc", group=4, psize=1.5):
    return Micrograph(path, psize, str(uid), shape,
                      {"uid": uid, "cs_path": path, "shape": shape, "psize_A": psize, "exp_group_id": group})


def test_build_particles_fills_every_field_with_server_dtypes(tmp_path):
    mic_a, mic_b = _mic(11, (60, 80)), _mic(2 ** 63 + 5, (72, 64), path="J3/b.mrc", group=1)
    picks_a = Picks([10.0, 70.5], [5.0, 59.0], [0.9, 0.6])
    picks_b = Picks([32.0], [36.0], [0.75])
    dset, unknown = P.build_particles(
        [(mic_a, picks_a, None, 40.0), (mic_b, picks_b, None, 50.0), (mic_a, Picks(), None, 40.0)],
        P.offline_allocator)
    assert unknown == []
    out = tmp_path / "picks.cs"
    dset.save(str(out))
    back = Dataset.load(str(out))
    expected = [("uid", "<u8")] + [(f[0], np.dtype(f[1]).str if f[1] != "O" else "|O") + tuple(f[2:])
                                   for f in P.PARTICLE_FIELDS]
    assert back.descr() == expected
    assert len(back) == 3 and len(np.unique(back["uid"])) == 3
    assert list(back["location/micrograph_uid"]) == [11, 11, 2 ** 63 + 5]
    assert list(back["location/micrograph_path"]) == ["J3/motioncorrected/a.mrc"] * 2 + ["J3/b.mrc"]
    assert back["location/micrograph_shape"].tolist() == [[60, 80], [60, 80], [72, 64]]
    assert np.allclose(back["location/center_x_frac"], [10 / 80, 70.5 / 80, 32 / 64])
    assert np.allclose(back["location/center_y_frac"], [5 / 60, 59 / 60, 36 / 72])
    assert np.allclose(back["pick_stats/ncc_score"], [0.9, 0.6, 0.75])
    assert np.allclose(back["pick_stats/power"], back["pick_stats/ncc_score"])
    assert back["location/exp_group_id"].tolist() == [4, 4, 1]
    assert np.allclose(back["location/min_dist_A"], [40, 40, 50])
    assert np.allclose(back["location/micrograph_psize_A"], 1.5)
    P.validate_particles(back, [11, 2 ** 63 + 5])
    with pytest.raises(P.ParticleDatasetError, match="not among the input exposures"):
        P.validate_particles(back, [11])
    # the core's own .cs reader places them at the same pixels
    from hydrapicker.coords import read_cryosparc_cs

    by_path = read_cryosparc_cs(out)
    assert np.allclose(by_path["J3/b.mrc"].xy(), [[32.0, 36.0]], atol=1e-4)


def test_unknown_server_fields_are_reported_not_dropped():
    fields = P.PARTICLE_FIELDS + [("location/some_future_field", "<f4")]
    dset, unknown = P.build_particles([(_mic(1, (60, 80)), Picks([1.0], [2.0], [0.5]), None, 10.0)],
                                      lambda n: Dataset.allocate(n, fields))
    assert unknown == ["location/some_future_field"]
    assert "location/some_future_field" in dset.fields() and len(dset) == 1


@pytest.mark.parametrize("flip_y", [False, True])
def test_relion_star_cs_round_trip(tmp_path, flip_y):
    """RELION coordinate STAR -> .cs fractions -> .cs file -> pixels -> STAR again, same coordinates."""
    from hydrapicker.coords import read_relion_coords, write_relion_star

    shape = (3838, 3710)  # [ny, nx]; deliberately not square
    rng = np.random.default_rng(1)
    orig = Picks(rng.uniform(0, 3709, 50).round(), rng.uniform(0, 3837, 50).round(), rng.uniform(0, 1, 50))
    star = tmp_path / "mic_autopick.star"
    write_relion_star(star, orig)
    picks = read_relion_coords(star)
    dset, _ = P.build_particles([(_mic(7, shape), picks, None, 60.0)], P.offline_allocator, flip_y=flip_y)
    dset.save(str(tmp_path / "p.cs"))
    back = P.particles_to_picks(Dataset.load(str(tmp_path / "p.cs")), flip_y=flip_y)[7]
    write_relion_star(tmp_path / "again.star", back)
    again = read_relion_coords(tmp_path / "again.star")
    # float32 fractions of ~4k-pixel micrographs are exact to ~1e-3 px
    assert np.allclose(again.x, orig.x, atol=2e-3) and np.allclose(again.y, orig.y, atol=2e-3)
    assert np.allclose(again.fom, orig.fom, atol=1e-6)
    stored_y = np.asarray(dset["location/center_y_frac"], dtype=float) * shape[0]
    expected_y = (shape[0] - 1 - orig.y) if flip_y else orig.y
    assert np.allclose(stored_y, expected_y, atol=2e-3)


def test_particles_to_picks_requires_location():
    ds = Dataset.allocate(2, [("blob/path", "O")])
    with pytest.raises(P.ParticleDatasetError, match="location"):
        P.particles_to_picks(ds, source="J20.particles")


# ---------------------------------------------------------------- optional extra

def test_core_and_cli_help_do_not_import_cryosparc():
    code = ("import sys, hydrapicker, cryosparc_hydra.cli as c; c.build_parser().format_help();"
            "bad=[m for m in sys.modules if m.split('.')[0] in ('cryosparc','torch')]; print(bad); "
            "sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([sys.executable, str(REPO / "bin" / "cryosparc_hydra"), "pick", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--exposures-cs" in r.stdout


def test_missing_extra_gives_install_hint(monkeypatch, tmp_path, capsys):
    from cryosparc_hydra import cli
    from cryosparc_hydra.extra import MissingExtraError, require

    monkeypatch.setitem(sys.modules, "cryosparc.tools", None)
    with pytest.raises(MissingExtraError, match=r'pip install "hydrapicker\[cryosparc\]"'):
        require("cryosparc.tools")
    rc = cli.main(["pick", "--url", "http://x:39000", "--project", "P1", "--workspace", "W1",
                   "--exposures", "J3.exposures", "--diameter", "100"])
    err = capsys.readouterr().err
    assert rc == 1 and 'pip install "hydrapicker[cryosparc]"' in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- mocked server

class _FakePicker:
    """Stands in for hydrapicker.picker.Picker: reads each file's shape, returns fixed candidates."""

    def __init__(self, fail_on=None):
        self.meta = {"heads": ["generic"], "default_threshold": 0.5, "path": "fake.pt"}
        self.device = "cpu"
        self.fail_on = fail_on
        self.seen = []

    def pick(self, micrographs, diameter_A, head="generic", policy=None, should_stop=None):
        import mrcfile

        from fakes import finalized

        for mic in micrographs:
            self.seen.append(mic.path)
            if self.fail_on == "all" or (self.fail_on and self.fail_on in mic.path):
                yield PickResult(mic, None, OSError(f"cannot read {mic.path}"), {})
                continue
            with mrcfile.open(mic.path, permissive=True) as m:
                ny, nx = m.data.shape
            picks = Picks([5.0, nx / 2, nx - 1.0], [4.0, ny / 2, ny - 1.0], [0.9, 0.7, 0.2])
            yield finalized(mic, picks, (ny, nx), diameter_A, policy)


def FakePicker(**kw):
    """The fake behind the real Picker's spec (a call the Picker would refuse fails)."""
    from fakes import speced

    return speced(_FakePicker(**kw))


@pytest.fixture
def server(monkeypatch, tmp_path):
    """A mocked CryoSPARC 5.0 server holding project P1 with exposures J3.exposures."""
    pytest.importorskip("cryosparc.tools")
    from cryosparc.api import APIClient
    from cryosparc.models.job import Job
    from cryosparc.models.job_spec import (Connection, Input, JobSpec, Output, OutputResult, Outputs,
                                           Params, ResourceSpec)
    from cryosparc.models.project import Project
    from cryosparc.models.user import User

    monkeypatch.setattr(APIClient, "__call__", mock.Mock(return_value=None))
    for group in ("users", "config", "projects", "workspaces", "jobs", "assets"):
        monkeypatch.setattr(APIClient, group, mock.MagicMock(), raising=False)
    api = APIClient
    api.users.me.return_value = User(_id="6372a35e821ed2b71d9fe4e3", name="test", first_name="T",
                                      last_name="U", emails=[{"address": "test@example.org", "verified": True}])
    api.config.get_version.return_value = "v5.0.3"
    project_dir, exposures = make_project(tmp_path)
    now = datetime.now(timezone.utc)
    api.projects.find_one.return_value = Project(
        _id="6372a35e821ed2b71d9fe4e4", uid="P1", uid_num=1, project_dir=str(project_dir),
        owner_user_id="6372a35e821ed2b71d9fe4e3", title="Test", size_last_updated=now)
    api.projects.get_directory.return_value = str(project_dir)

    def job_model(uid, type_, status, outputs=None):
        return Job(_id="6372a35e821ed2b71d9fe4f" + uid[-1], uid=uid, uid_num=int(uid[1:]), project_uid="P1",
                   project_uid_num=1, workspace_uids=["W1"], job_dir=uid, title=uid, status=status,
                   status_num=0, build_errors=[], job_dir_size_last_updated=now,
                   spec=JobSpec(type=type_, params=Params(), ui_tile_width=1, ui_tile_height=1,
                                resource_spec=ResourceSpec(), outputs=Outputs(outputs or {})))

    source = job_model("J3", "patch_ctf_estimation_multi", "completed", {
        "exposures": Output(type="exposure", title="Exposures", results=[
            OutputResult(name="micrograph_blob", dtype="micrograph_blob"),
            OutputResult(name="mscope_params", dtype="mscope_params")]),
        "micrographs_incomplete": Output(type="exposure", title="Incomplete"),
    })
    state = {"job": job_model("J9", "snowflake", "building")}

    def update(**changes):
        state["job"] = state["job"].model_copy(update=changes, deep=True)
        return state["job"]

    def find_one(project_uid, job_uid):
        return {"J3": source, "J9": state["job"]}[job_uid]

    def add_input(project_uid, job_uid, name, spec):
        job = state["job"].model_copy(deep=True)
        job.spec.inputs.root[name] = Input(type=spec.type, title=spec.title, count_min=spec.count_min)
        state["job"] = job
        return job

    def connect(project_uid, job_uid, target_input, *, source_job_uid, source_output_name):
        job = state["job"].model_copy(deep=True)
        job.spec.inputs.root[target_input].connections.append(Connection(job_uid=source_job_uid,
                                                                         output=source_output_name))
        state["job"] = job
        return job

    def add_output(project_uid, job_uid, name, spec):
        job = state["job"].model_copy(deep=True)
        job.spec.outputs.root[name] = Output(type=spec.type, title=spec.title)
        state["job"] = job
        return job

    def save_output(project_uid, job_uid, name, dataset, version=0):
        assert state["job"].status == "running", "5.x refuses saves unless running/waiting"
        state["saved"] = dataset
        return state["job"]

    api.jobs.find_one.side_effect = find_one
    api.jobs.create.side_effect = lambda *a, **k: state["job"]
    api.jobs.add_external_input.side_effect = add_input
    api.jobs.connect.side_effect = connect
    api.jobs.add_external_output.side_effect = add_output
    api.jobs.get_output_fields.return_value = SERVER_FIELDS
    api.jobs.load_input.return_value = exposures
    api.jobs.save_output.side_effect = save_output
    api.jobs.mark_running.side_effect = lambda *a, status: update(status=status)
    api.jobs.mark_completed.side_effect = lambda *a: update(status="completed")
    api.jobs.mark_failed.side_effect = lambda *a, error=None: update(status="failed")
    api.jobs.add_event_log.side_effect = lambda *a, **k: mock.MagicMock(id=f"ev{api.jobs.add_event_log.call_count}")
    api.jobs.update_event_log.side_effect = lambda pu, ju, eid, *a, **k: mock.MagicMock(id=eid)
    api.jobs.add_image_log.return_value = mock.MagicMock(id="img")
    api.jobs.set_output_image.side_effect = lambda *a, **k: state["job"]

    from cryosparc.tools import CryoSPARC

    cs = CryoSPARC("https://cryosparc.example.org", email="test@example.org", password="pw",
                   host=None, base_port=None)
    return dict(api=api, cs=cs, state=state, exposures=exposures, project_dir=project_dir)


def _opts(**kw):
    from cryosparc_hydra.picking import PickOptions

    return PickOptions(diameter_A=kw.pop("diameter_A", 20.0), **kw)


def test_pick_job_flow_against_mocked_server(server):
    from cryosparc.models.job_spec import InputSlot, InputSpec, OutputSlot, OutputSpec

    from cryosparc_hydra.job import run_pick_job

    api, exposures = server["api"], server["exposures"]
    picker = FakePicker()
    summary = run_pick_job(server["cs"], "P1", "W1", "J3.exposures", picker, _opts(), log=lambda *a: None)

    api.jobs.create.assert_called_once()
    assert api.jobs.create.call_args.args == ("P1", "W1") and api.jobs.create.call_args.kwargs["type"] == "snowflake"
    api.jobs.add_external_input.assert_called_once_with("P1", "J9", "micrographs", InputSpec(
        type="exposure", title="Micrographs picked", description="",
        slots=[InputSlot(name="micrograph_blob", dtype="micrograph_blob", required=True),
               InputSlot(name="mscope_params", dtype="mscope_params", required=False),
               InputSlot(name="ctf", dtype="ctf", required=False)], count_min=1, count_max="inf"))
    api.jobs.connect.assert_called_once_with("P1", "J9", "micrographs", source_job_uid="J3",
                                             source_output_name="exposures")
    api.jobs.add_external_output.assert_called_once_with("P1", "J9", "particles", OutputSpec(
        type="particle", title="HydraPicker particles",
        slots=[OutputSlot(name="location", dtype="location"), OutputSlot(name="pick_stats", dtype="pick_stats")],
        passthrough=None))
    api.jobs.mark_running.assert_called_once_with("P1", "J9", status="running")
    api.jobs.mark_completed.assert_called_once_with("P1", "J9")
    api.jobs.mark_failed.assert_not_called()
    api.jobs.enqueue.assert_not_called()  # external jobs are never queued
    assert server["state"]["job"].status == "completed"

    saved = server["state"]["saved"]
    assert set(saved.fields()) == {"uid"} | {f[0] for f in SERVER_FIELDS}
    assert len(saved) == 4 and summary.n_picks == 4  # 2 of 3 picks per micrograph are above 0.5
    uids = [int(u) for u in exposures["uid"]]
    assert sorted(set(int(u) for u in saved["location/micrograph_uid"])) == sorted(uids)
    first = saved.query({"location/micrograph_uid": exposures["uid"][0]})
    assert first["location/micrograph_path"].tolist() == [exposures["micrograph_blob/path"][0]] * 2
    assert first["location/micrograph_shape"].tolist() == [[60, 80]] * 2
    assert np.allclose(first["location/center_x_frac"], [5 / 80, 40 / 80])
    assert np.allclose(first["location/center_y_frac"], [4 / 60, 30 / 60])
    assert np.allclose(first["pick_stats/ncc_score"], [0.9, 0.7])
    assert first["location/exp_group_id"].tolist() == [1, 1]
    assert np.allclose(saved["location/min_dist_A"], 10.0)  # default NMS radius: half the diameter
    # progress is one line updated in place; two plots; the micrographs were read from the project dir
    assert api.jobs.update_event_log.call_count >= 1
    assert any("Picked 2/2 micrographs" in str(c) for c in api.jobs.update_event_log.call_args_list)
    assert api.jobs.add_image_log.call_count == 2
    assert all(p.startswith(str(server["project_dir"])) for p in picker.seen)
    assert summary.read_mode == "file" and summary.failed == []


def test_pick_job_failure_marks_job_failed_with_error(server):
    from cryosparc_hydra.job import NothingPicked, run_pick_job

    api = server["api"]
    with pytest.raises(NothingPicked, match="all 2 micrographs failed"):
        run_pick_job(server["cs"], "P1", "W1", "J3.exposures", FakePicker(fail_on="all"), _opts(),
                     log=lambda *a: None)
    api.jobs.mark_running.assert_called_once_with("P1", "J9", status="running")
    api.jobs.mark_failed.assert_called_once()
    assert "all 2 micrographs failed" in api.jobs.mark_failed.call_args.kwargs["error"]
    api.jobs.mark_completed.assert_not_called()
    api.jobs.save_output.assert_not_called()
    api.jobs.enqueue.assert_not_called()


def test_pick_job_skips_a_bad_micrograph_and_reports_it(server):
    from cryosparc_hydra.job import run_pick_job

    summary = run_pick_job(server["cs"], "P1", "W1", "J3.exposures", FakePicker(fail_on="mic1"), _opts(),
                           log=lambda *a: None)
    assert len(summary.failed) == 1 and "mic1" in summary.failed[0][0]
    assert len(server["state"]["saved"]) == 2
    server["api"].jobs.mark_completed.assert_called_once()
    assert any(c.kwargs.get("type") == "warning" for c in server["api"].jobs.add_event_log.call_args_list)


def test_pick_job_interrupt_marks_failed(server):
    from cryosparc_hydra.job import PickInterrupted, run_pick_job

    interrupting = FakePicker()
    interrupting.pick.side_effect = KeyboardInterrupt
    with pytest.raises(PickInterrupted):
        run_pick_job(server["cs"], "P1", "W1", "J3.exposures", interrupting, _opts(), log=lambda *a: None)
    server["api"].jobs.mark_failed.assert_called_once()
    server["api"].jobs.mark_completed.assert_not_called()


@pytest.mark.parametrize("ref,match", [("J3.particles", "no exposure output named 'particles'.*exposures"),
                                       ("J3", "JOB.OUTPUT")])
def test_bad_source_is_refused_before_any_job_is_created(server, ref, match):
    from cryosparc_hydra.job import SourceError, run_pick_job

    with pytest.raises(SourceError, match=match):
        run_pick_job(server["cs"], "P1", "W1", ref, FakePicker(), _opts(), log=lambda *a: None)
    server["api"].jobs.create.assert_not_called()


def test_pick_job_downloads_when_project_dir_is_not_mounted(server, tmp_path, monkeypatch):
    import shutil

    from cryosparc_hydra.job import run_pick_job

    hidden = tmp_path / "elsewhere"
    shutil.move(str(server["project_dir"]), str(hidden))  # the project dir is not visible here any more
    fetched = []

    def download_file(project_uid, path, target):
        fetched.append(path)
        shutil.copy(hidden / path, target)
        return target

    monkeypatch.setattr(server["cs"], "download_file", download_file)
    picker = FakePicker()
    summary = run_pick_job(server["cs"], "P1", "W1", "J3.exposures", picker, _opts(), log=lambda *a: None)
    assert summary.read_mode == "download"
    assert fetched == list(server["exposures"]["micrograph_blob/path"])
    assert all(not os.path.exists(p) for p in picker.seen)  # scratch copies were removed
    assert len(server["state"]["saved"]) == 4


def test_connect_checks_versions_and_credentials(server, monkeypatch):
    from cryosparc_hydra import connect as C

    cs = C.connect("cryosparc.example.org:39000", "test@example.org", "pw", log=lambda *a: None)
    assert cs.base_url == "http://cryosparc.example.org:39000"  # scheme added
    server["api"].config.get_version.return_value = "v4.7.1"
    with pytest.raises(C.VersionMismatchError, match=r'pip install "cryosparc-tools~=4.7.0"'):
        C.connect("http://h:39000", "test@example.org", "pw", log=lambda *a: None)
    server["api"].config.get_version.return_value = "develop"  # not a release: no check
    C.connect("http://h:39000", "test@example.org", "pw", log=lambda *a: None)
    for var in ("CRYOSPARC_EMAIL", "CRYOSPARC_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(C, "_saved_login", lambda url, email: False)
    with pytest.raises(C.ConnectionSetupError, match="cryosparc.tools login --url http://h:39000"):
        C.connect("http://h:39000", interactive=False, log=lambda *a: None)
    monkeypatch.delenv("CRYOSPARC_URL", raising=False)
    monkeypatch.delenv("CRYOSPARC_BASE_URL", raising=False)
    monkeypatch.delenv("CRYOSPARC_MASTER_HOSTNAME", raising=False)
    with pytest.raises(C.ConnectionSetupError, match="--url"):
        C.connect(None, "a", "b", log=lambda *a: None)


def test_connect_failure_is_a_user_facing_error(server):
    from cryosparc_hydra import connect as C

    server["api"].users.me.side_effect = RuntimeError("401 Unauthorized")
    with pytest.raises(C.ConnectionSetupError, match="could not connect to CryoSPARC at http://h:39000"):
        C.connect("http://h:39000", "test@example.org", "wrong", log=lambda *a: None)


# ---------------------------------------------------------------- offline mode with the real core

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained 'lite' model with floor 0 (so that it picks something); pick quality is not tested."""
    torch = pytest.importorskip("torch")
    from hydrapicker.checkpoint import make_meta, save_checkpoint
    from hydrapicker.model import build_model

    torch.manual_seed(0)
    net = build_model("lite")
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, net, make_meta(net, floor=0.0, default_threshold=0.0))
    return path


def test_offline_pick_end_to_end_matches_the_core(tmp_path, tiny_model, monkeypatch):
    from cryosparc_hydra import cli
    from hydrapicker.coords import read_cryosparc_cs
    from hydrapicker.picker import Picker

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    project, ds = make_project(tmp_path, shapes=((96, 128), (128, 112)), psize=4.0,
                               blobs=[(30, 30, 8), (80, 60, 8)])
    (project / "J4").mkdir()
    exp_cs = project / "J4" / "J4_exposures.cs"
    ds.save(str(exp_cs))
    out = tmp_path / "out" / "picks.cs"
    rc = cli.main(["pick", "--exposures-cs", str(exp_cs), "--out", str(out), "--model", str(tiny_model),
                   "--diameter", "64", "--device", "cpu", "--threads", "1", "--qc", "1"])  # project dir: default
    assert rc == 0
    qc = sorted(p.name for p in (tmp_path / "out" / "picks_qc").iterdir())  # --qc 1: the first micrograph
    assert len(qc) == 1 and qc[0].endswith(".png") and (tmp_path / "out" / "picks_qc" / qc[0]).read_bytes()[:4] == b"\x89PNG"
    picks = Dataset.load(str(out))
    assert [f[0] for f in picks.descr()] == ["uid"] + [f[0] for f in P.PARTICLE_FIELDS]
    assert len(picks) > 0
    P.validate_particles(picks, [int(u) for u in ds["uid"]])
    # the same micrographs picked directly by the core give the same pixels
    core = Picker(model=tiny_model, device="cpu", log=lambda *a: None)
    mics = exposures_to_micrographs(ds, project)
    direct = {r.micrograph.meta["cs_path"]: r.picks.above(0.0) for r in core.pick(mics, diameter_A=64)}
    from_cs = read_cryosparc_cs(out)
    assert sum(len(p) for p in direct.values()) == len(picks)
    for path, p in direct.items():
        if len(p):
            got = from_cs[path]
            assert np.allclose(np.sort(got.x), np.sort(p.x), atol=1e-3)
            assert np.allclose(np.sort(got.y), np.sort(p.y), atol=1e-3)


@pytest.mark.parametrize("flags, kept", [
    (["--adapt"], ["picks_adapted.pt", "picks_adapted_refiner.pt"]),
    (["--adapt", "--no-adapt-centres"], ["picks_adapted.pt"]),
    (["--adapt-centres"], ["picks_adapted_refiner.pt"]),
])
def test_offline_pick_adapt_options_run_the_cores_adaptation(flags, kept, tmp_path, tiny_model, monkeypatch, capsys):
    """``--adapt`` is :func:`hydrapicker.adapt.adapted_picker` and then (by default, the core's rule)
    :func:`hydrapicker.refine_adapt.picker_with_adapted_refiner` over the exposures, as in hydra pick and the
    RELION job; ``--no-adapt-centres`` keeps the head only, ``--adapt-centres`` alone the refiner only. The
    adapted model and refiner go next to the output by default; with --adapt the log says the picks are
    class-centred."""
    from cryosparc_hydra import cli

    calls = []

    def spy(returned):
        def core(picker, mics, diameter_A, save_to, head=None, settings=None, reuse=True, log=print,
                 should_stop=None):
            calls.append((sorted(m.meta["cs_path"] for m in mics), Path(save_to).name, diameter_A))
            return (picker, *returned)
        return core

    monkeypatch.setattr("hydrapicker.adapt.adapted_picker", spy(("generic", None)))
    monkeypatch.setattr("hydrapicker.refine_adapt.picker_with_adapted_refiner", spy((None,)))
    project, ds = make_project(tmp_path, shapes=((96, 128), (128, 112)), psize=4.0, blobs=[(30, 30, 8)])
    (project / "J4").mkdir()
    exp_cs = project / "J4" / "J4_exposures.cs"
    ds.save(str(exp_cs))
    out = tmp_path / "out" / "picks.cs"
    rc = cli.main(["pick", "--exposures-cs", str(exp_cs), "--out", str(out), "--model", str(tiny_model),
                   "--diameter", "64", "--device", "cpu", "--threads", "1", *flags])
    assert rc == 0 and out.exists()
    paths = sorted(str(p) for p in ds["micrograph_blob/path"])
    assert calls == [(paths, name, 64.0) for name in kept]
    assert ("class-average centring" in capsys.readouterr().out) is ("--adapt" in flags)


def test_offline_pick_working_scale_is_the_cores_and_equals_a_model_at_that_scale(tmp_path, tiny_model, capsys):
    """``--working-scale 0.8`` picks what a model file at 0.8 x picks (the core's
    :func:`hydrapicker.scale.picker_at_scale`, as hydra pick and the RELION job); with --adapt it is refused."""
    from cryosparc.dataset import Dataset

    from cryosparc_hydra import cli
    from hydrapicker.scale import model_at_scale

    project, ds = make_project(tmp_path, shapes=((96, 128), (128, 112)), psize=4.0, blobs=[(30, 30, 8)])
    (project / "J4").mkdir()
    exp_cs = project / "J4" / "J4_exposures.cs"
    ds.save(str(exp_cs))
    base = ["pick", "--exposures-cs", str(exp_cs), "--diameter", "64", "--device", "cpu", "--threads", "1",
            "--threshold", "0.01"]
    scaled = model_at_scale(tiny_model, 0.8, tmp_path / "scaled.pt")
    assert cli.main(base + ["--model", str(tiny_model), "--working-scale", "0.8", "--out", str(tmp_path / "a.cs")]) == 0
    assert "working scale 0.8" in capsys.readouterr().out
    assert cli.main(base + ["--model", str(scaled), "--out", str(tmp_path / "b.cs")]) == 0
    a, b = Dataset.load(str(tmp_path / "a.cs")), Dataset.load(str(tmp_path / "b.cs"))
    assert len(a) == len(b) > 0
    assert np.allclose(a["location/center_x_frac"], b["location/center_x_frac"])
    assert np.allclose(a["location/center_y_frac"], b["location/center_y_frac"])
    rc = cli.main(base + ["--model", str(tiny_model), "--working-scale", "0.8", "--adapt", "--out",
                          str(tmp_path / "c.cs")])
    assert rc != 0 and "leave out --working-scale" in capsys.readouterr().err


def test_offline_pick_names_missing_micrograph_and_fix(tmp_path, capsys):
    from cryosparc_hydra import cli

    project, ds = make_project(tmp_path, write=False)
    exp_cs = tmp_path / "exposures.cs"
    ds.save(str(exp_cs))
    rc = cli.main(["pick", "--exposures-cs", str(exp_cs), "--project-dir", str(project), "--out",
                   str(tmp_path / "p.cs"), "--diameter", "100"])
    err = capsys.readouterr().err
    assert rc == 1 and "not found" in err and "--project-dir" in err
    assert not (tmp_path / "p.cs").exists()


# ---------------------------------------------------------------- train (few-shot) path

def _manual_picks(exposures, per_mic):
    """A Manual-Picker-like particles dataset (location slot only) on the given exposures."""
    rows = []
    for i, n in enumerate(per_mic):
        ny, nx = (int(v) for v in exposures["micrograph_blob/shape"][i])
        for k in range(n):
            rows.append((int(exposures["uid"][i]), exposures["micrograph_blob/path"][i], (ny, nx),
                         (10.0 + 7 * k) / nx, (12.0 + 5 * k) / ny))
    ds = Dataset.allocate(len(rows), [("location/micrograph_uid", "<u8"), ("location/exp_group_id", "<u4"),
                                      ("location/micrograph_path", "O"), ("location/micrograph_shape", "<u4", (2,)),
                                      ("location/center_x_frac", "<f4"), ("location/center_y_frac", "<f4"),
                                      ("location/min_dist_A", "<f4")])
    for j, (uid, path, shape, fx, fy) in enumerate(rows):
        ds["location/micrograph_uid"][j] = uid
        ds["location/micrograph_path"][j] = path
        ds["location/micrograph_shape"][j] = shape
        ds["location/center_x_frac"][j] = fx
        ds["location/center_y_frac"][j] = fy
    return ds


@pytest.fixture
def fake_finetune(monkeypatch):
    from fakes import fake_finetune

    def files_readable(arguments):  # the files must be readable when training runs
        for m in arguments["micrographs"]:
            assert os.path.isfile(m.path), m.path

    return fake_finetune(monkeypatch, files_readable)


def test_offline_train_joins_picks_to_exposures(tmp_path, fake_finetune):
    from cryosparc_hydra import cli

    project, ds = make_project(tmp_path, shapes=((60, 80), (72, 64), (50, 50)))
    exp_cs, part_cs = tmp_path / "exposures.cs", tmp_path / "particles.cs"
    ds.save(str(exp_cs))
    _manual_picks(ds, [3, 0, 2]).save(str(part_cs))
    rc = cli.main(["train", "--exposures-cs", str(exp_cs), "--particles-cs", str(part_cs), "--project-dir",
                   str(project), "--diameter", "40", "--head", "mine", "--out", str(tmp_path / "m.pt"),
                   "--device", "cuda:3"])
    assert rc == 0 and (tmp_path / "m.pt").exists()
    (call,) = fake_finetune
    # only micrographs with picks are training examples; coordinates back in pixels
    assert [m.meta["uid"] for m in call["micrographs"]] == [int(ds["uid"][0]), int(ds["uid"][2])]
    first = call["coords"][str(int(ds["uid"][0]))]
    assert np.allclose(first.x, [10, 17, 24], atol=1e-3) and np.allclose(first.y, [12, 17, 22], atol=1e-3)
    assert call["head_name"] == "mine" and call["diameter_A"] == 40 and call["device"] == "cuda:3"


def test_train_from_project_against_mocked_server(server, fake_finetune, tmp_path):
    from cryosparc.models.job_spec import Output

    from cryosparc_hydra.train import train_from_project

    api, exposures = server["api"], server["exposures"]
    source = api.jobs.find_one("P1", "J3")
    manual = source.model_copy(update={"uid": "J5"}, deep=True)
    manual.spec.outputs.root.clear()
    manual.spec.outputs.root["particles"] = Output(type="particle", title="Particles")
    api.jobs.find_one.side_effect = lambda pu, ju: {"J3": source, "J5": manual}[ju]
    particles = _manual_picks(exposures, [0, 4])
    api.jobs.load_output.side_effect = lambda pu, ju, name, **kw: {"J5": particles, "J3": exposures}[ju]
    path = train_from_project(server["cs"], "P1", "J5.particles", "J3.exposures", tmp_path / "m.pt", 40.0,
                              "mine", log=lambda *a: None)
    assert path.exists()
    (call,) = fake_finetune
    assert [m.meta["uid"] for m in call["micrographs"]] == [int(exposures["uid"][1])]
    assert len(call["coords"][str(int(exposures["uid"][1]))]) == 4
    api.jobs.create.assert_not_called()  # training saves nothing to the project
    from cryosparc_hydra.job import SourceError

    with pytest.raises(SourceError, match="no particle output"):
        train_from_project(server["cs"], "P1", "J3.exposures", "J3.exposures", tmp_path / "n.pt", 40.0, "x")


def test_pick_job_with_the_real_core_against_mocked_server(server, tiny_model):
    from cryosparc_hydra.job import run_pick_job
    from hydrapicker.picker import Picker

    picker = Picker(model=tiny_model, device="cpu", log=lambda *a: None)
    summary = run_pick_job(server["cs"], "P1", "W1", "J3.exposures", picker, _opts(diameter_A=16.0),
                           log=lambda *a: None)
    saved = server["state"]["saved"]
    assert summary.n_picks == len(saved) > 0 and summary.failed == []
    P.validate_particles(saved, [int(u) for u in server["exposures"]["uid"]])
    server["api"].jobs.mark_completed.assert_called_once_with("P1", "J9")
    server["api"].jobs.enqueue.assert_not_called()


def test_refine_options_build_the_picker_with_or_without_the_centre_refiner():
    from cryosparc_hydra.cli import _picker, build_parser
    from hydrapicker import defaults

    base = ["pick", "--diameter", "150", "--device", "cpu"]
    for extra, refined in (([], defaults.REFINE_CENTRES), (["--refine"], True), (["--no-refine"], False)):
        assert (_picker(build_parser().parse_args(base + extra)).refiner is not None) is refined, extra


def test_tta_option_sets_the_pickers_views():
    from cryosparc_hydra.cli import _picker, build_parser
    from hydrapicker import defaults

    base = ["pick", "--diameter", "150", "--device", "cpu"]
    for extra, views in (([], defaults.TTA), (["--tta", "1"], 1), (["--tta", "4"], 4)):
        assert _picker(build_parser().parse_args(base + extra)).tta == views, extra
    with pytest.raises(SystemExit):
        build_parser().parse_args(base + ["--tta", "3"])


def test_no_evidence_option_reaches_the_pick_policy():
    from cryosparc_hydra.cli import _options, build_parser
    from cryosparc_hydra.picking import policy_for
    from hydrapicker import defaults
    from hydrapicker.postprocess import evidence_reference

    class _Model:  # what policy_for reads of a picker
        meta = {"default_threshold": 0.3, "heads": ["generic"]}

    base = ["pick", "--diameter", "150", "--device", "cpu"]
    on = policy_for(_Model(), _options(build_parser().parse_args(base)))
    assert on.evidence_ref == evidence_reference(0.3, defaults.EVIDENCE_REFERENCE)
    assert policy_for(_Model(), _options(build_parser().parse_args(base + ["--no-evidence"]))).evidence_ref is None
    two = policy_for(_Model(), _options(build_parser().parse_args(base + ["--evidence", "2"])))
    assert two.evidence_ref == evidence_reference(0.3, 2.0)


def test_pick_job_logs_qc_images_of_n_micrographs(server):
    """``qc`` = 2 (``--qc 2``): besides the FOM histogram and the overlay, the job's event log gets the core's
    QC image (hydrapicker.qc) of both micrographs; 0 (the default) adds none."""
    from cryosparc_hydra.job import run_pick_job

    api = server["api"]
    run_pick_job(server["cs"], "P1", "W1", "J3.exposures", FakePicker(), _opts(qc=2), log=lambda *a: None)
    assert api.jobs.add_image_log.call_count == 4
    titles = [str(c) for c in api.jobs.add_image_log.call_args_list]
    assert sum("QC: " in t for t in titles) == 2
