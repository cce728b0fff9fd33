"""End-to-end ``hydra pick`` with the shipped model on small simulated micrographs."""
import shutil

import numpy as np
import pytest
import starfile
from emtable import Table

from conftest import write_mrc
from hydrapicker.checkpoint import default_model_path
from hydrapicker.cli import main as hydra


@pytest.fixture(scope="module")
def sim_dataset(tmp_path_factory):
    from hydrapicker.simulate import get_target, write_dataset

    out = tmp_path_factory.mktemp("sim")
    spec = get_target("t_ribosome")  # 512 x 512 micrographs: quick
    write_dataset(spec, out, n_micrographs=3)
    return out, spec


def _read_truth(out):
    from hydrapicker.coords import read_coords

    return {k: v.xy() for k, v in read_coords(out / "truth").items()}


def test_pick_star_input_writes_relion_coordinates_that_match_truth(sim_dataset, tmp_path, monkeypatch):
    out, spec = sim_dataset
    monkeypatch.chdir(out)
    rc = hydra(["pick", "--mics", "micrographs.star", "--diameter", str(spec.diameter_A),
                "--out", str(tmp_path / "picks"), "--all", "--quiet", "--format", "star", "box", "topaz"])
    assert rc == 0
    files = sorted((tmp_path / "picks").glob("*_hydra.star"))
    assert len(files) == 3
    df = starfile.read(files[0])
    assert list(df.columns) == ["rlnCoordinateX", "rlnCoordinateY", "rlnClassNumber",
                                "rlnAutopickFigureOfMerit", "rlnAnglePsi"]
    t = Table(fileName=str(files[0]), tableName="")  # RELION-compatible reader
    assert len(t) == len(df)
    assert (tmp_path / "picks" / "picks_hydra.txt").exists()
    assert len(list((tmp_path / "picks").glob("*.box"))) == 3

    from hydrapicker.coords import read_coords
    from hydrapicker.metrics import evaluate

    picks = {}
    for f in files:
        picks.update(read_coords(f))
    truth = _read_truth(out)
    res = evaluate({k.replace("_hydra", ""): v for k, v in picks.items()}, truth,
                   spec.diameter_A / spec.pixel_size)
    # the shipped generic model has never seen this particle shape (held-out target)
    assert res["AP"] > 0.5, res["AP"]


def test_pick_resumes_and_survives_one_bad_micrograph(sim_dataset, tmp_path, monkeypatch, capsys):
    out, spec = sim_dataset
    work = tmp_path / "w"
    shutil.copytree(out, work)
    monkeypatch.chdir(work)
    mrcs = sorted((work / "Micrographs").glob("*.mrc"))
    (work / "Micrographs" / "broken.mrc").write_bytes(b"garbage" * 10)
    (work / "list.txt").write_text("\n".join(str(p.relative_to(work)) for p in mrcs[:2])
                                   + "\nMicrographs/broken.mrc\n")
    args = ["pick", "@list.txt", "--diameter", str(spec.diameter_A), "--out", "picks", "--apix",
            str(spec.pixel_size)]
    assert hydra(args) == 0
    err = capsys.readouterr().err
    assert "broken.mrc" in err and "skipped" in err
    done = sorted((work / "picks").glob("*_hydra.star"))
    assert len(done) == 2
    mtimes = [p.stat().st_mtime_ns for p in done]
    assert hydra(args + ["--quiet"]) == 0  # resume: nothing re-picked
    assert [p.stat().st_mtime_ns for p in done] == mtimes
    assert not list((work / "picks").glob(".*tmp*"))  # no half-written files


def test_pick_errors_are_clear(tmp_path, capsys):
    write_mrc(tmp_path / "nopix.mrc", np.random.rand(128, 128))
    assert hydra(["pick", str(tmp_path / "nopix.mrc"), "--diameter", "100", "--out",
                  str(tmp_path / "o")]) == 1
    assert "no pixel size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        hydra(["pick", str(tmp_path / "nopix.mrc")])  # --diameter is required
    assert hydra(["pick", "--mics", str(tmp_path / "none.star"), "--diameter", "100"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_unknown_head_and_cuda_request_fail_loudly(tmp_path, capsys):
    import torch

    write_mrc(tmp_path / "m.mrc", np.random.rand(128, 128), apix=2.0)
    assert hydra(["pick", str(tmp_path / "m.mrc"), "--diameter", "60", "--head", "nope",
                  "--out", str(tmp_path / "o")]) == 1
    assert "no head 'nope'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert hydra(["pick", str(tmp_path / "m.mrc"), "--diameter", "60", "--device", "cuda",
                      "--out", str(tmp_path / "o")]) == 1
        assert "CUDA is not usable" in capsys.readouterr().err


def test_info_describes_the_shipped_model(capsys):
    assert default_model_path().exists()
    assert hydra(["info"]) == 0
    out = capsys.readouterr().out
    assert "generic" in out and "particle extent" in out


def test_micrograph_names_with_dots_keep_their_whole_stem(tmp_path):
    # e.g. EPU/SerialEM names like May08_03.05.02.mrc: the output must not collapse to May08_03.05
    for name in ("May08_03.05.02.mrc", "May08_03.05.07.mrc"):
        write_mrc(tmp_path / name, np.random.default_rng(0).normal(size=(256, 256)), apix=4.0)
    assert hydra(["pick", str(tmp_path / "May08_*.mrc"), "--diameter", "120", "--all", "--quiet",
                  "--out", str(tmp_path / "o")]) == 0
    assert sorted(p.name for p in (tmp_path / "o").glob("*.star")) == [
        "May08_03.05.02_hydra.star", "May08_03.05.07_hydra.star"]


@pytest.mark.parametrize("tta", [1, 2, 4])
@pytest.mark.parametrize("half_cell", [False, True])
def test_batched_forward_passes_and_parallel_readers_give_the_same_picks_in_order(sim_dataset, tmp_path, tta,
                                                                                  half_cell):
    """What the GPU path does (several micrographs of one shape per forward pass, one per test-time view,
    several reader threads) gives the picks of one-at-a-time picking, in the input order, an unreadable
    micrograph included."""
    from hydrapicker.picker import Picker
    from hydrapicker.types import Micrograph

    out, spec = sim_dataset
    mrcs = sorted((out / "Micrographs").glob("*.mrc"))
    bad = tmp_path / "broken.mrc"
    bad.write_bytes(b"not an MRC file")
    mics = [Micrograph(str(mrcs[0]), spec.pixel_size), Micrograph(str(mrcs[1]), spec.pixel_size),
            Micrograph(str(bad), spec.pixel_size), Micrograph(str(mrcs[2]), spec.pixel_size),
            Micrograph(str(mrcs[0]), spec.pixel_size)]
    one = list(Picker(device="cpu", log=None, tta=tta, half_cell=half_cell).pick(mics, spec.diameter_A))
    many = list(Picker(device="cpu", log=None, tta=tta, batch=4, readers=3, half_cell=half_cell).pick(mics, spec.diameter_A))
    assert [r.micrograph.path for r in many] == [m.path for m in mics]
    assert [r.ok for r in many] == [True, True, False, True, True] and "broken.mrc" in str(many[2].error)
    assert [r.info.get("batch") for r in many] == [2, 2, None, 2, 2]
    for a, b in zip(one, many):
        if a.ok:
            assert len(a.picks) == len(b.picks) > 10
            np.testing.assert_allclose(b.picks.xy(), a.picks.xy(), atol=0.05)
            np.testing.assert_allclose(b.picks.fom, a.picks.fom, atol=1e-4)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_path_picks_what_the_cpu_picks(sim_dataset):
    """On a GPU (preparation on the device, bf16, batches of 8, reader threads) the picks match the CPU's."""
    from hydrapicker.picker import Picker
    from hydrapicker.types import Micrograph

    out, spec = sim_dataset
    mics = [Micrograph(str(p), spec.pixel_size) for p in sorted((out / "Micrographs").glob("*.mrc"))] * 3
    cpu = list(Picker(device="cpu", log=None).pick(mics, spec.diameter_A))
    gpu = list(Picker(device="cuda", log=None).pick(mics, spec.diameter_A))
    assert all(r.ok for r in gpu) and {r.info["batch"] for r in gpu} == {8, 1}
    thr = Picker(device="cpu", log=None).default_threshold
    for a, b in zip(cpu, gpu):
        pa, pb = a.picks.above(thr), b.picks.above(thr)
        assert abs(len(pa) - len(pb)) <= max(2, 0.05 * len(pa))  # bf16: a few borderline picks may differ
        d = np.linalg.norm(pa.xy()[:, None] - pb.xy()[None], axis=2).min(1)
        assert np.median(d) < 1.0


def test_same_named_micrographs_in_two_folders_both_keep_their_picks_and_resume_finds_both(
        sim_dataset, tmp_path, monkeypatch, capsys):
    import starfile

    out, spec = sim_dataset
    first, second = sorted((out / "Micrographs").glob("*.mrc"))[:2]
    for folder, src in (("a", first), ("b", second)):
        (tmp_path / folder).mkdir()
        shutil.copy(src, tmp_path / folder / "x.mrc")
    monkeypatch.chdir(tmp_path)
    args = ["pick", "a/x.mrc", "b/x.mrc", "--apix", str(spec.pixel_size), "--diameter", str(spec.diameter_A),
            "--all", "--out", "picks"]
    assert hydra(args) == 0
    got = {f: starfile.read(tmp_path / "picks" / f / "x_hydra.star") for f in ("a", "b")}
    for folder, src in (("a", first), ("b", second)):  # each file holds its own micrograph's picks
        alone = tmp_path / f"alone_{folder}"
        assert hydra(["pick", str(src), "--apix", str(spec.pixel_size), "--diameter", str(spec.diameter_A),
                      "--all", "--quiet", "--out", str(alone)]) == 0
        want = starfile.read(alone / f"{src.stem}_hydra.star")
        assert len(want) > 10 and np.allclose(got[folder][["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(),
                                              want[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy())
    assert len(got["a"]) != len(got["b"]) or not np.allclose(got["a"]["rlnCoordinateX"], got["b"]["rlnCoordinateX"])
    capsys.readouterr()
    mtimes = [(tmp_path / "picks" / f / "x_hydra.star").stat().st_mtime_ns for f in ("a", "b")]
    assert hydra(args) == 0  # resume: both are found, neither is picked again
    assert "2 of 2 micrographs already picked" in capsys.readouterr().out
    assert [(tmp_path / "picks" / f / "x_hydra.star").stat().st_mtime_ns for f in ("a", "b")] == mtimes


def test_output_stems_are_relative_to_the_common_folder():
    from hydrapicker.outputs import output_stems

    assert output_stems(["M/May08_03.05.02.mrc", "M/y.mrc"]) == {"M/May08_03.05.02.mrc": "May08_03.05.02",
                                                                  "M/y.mrc": "y"}
    assert output_stems(["a/x.mrc", "b/x.mrc"]) == {"a/x.mrc": "a/x", "b/x.mrc": "b/x"}
    assert output_stems(["d/x.mrc", "d/x.tif"]) == {"d/x.mrc": "x.mrc", "d/x.tif": "x.tif"}
    assert output_stems(["top.mrc", "s/deep/y.mrc"]) == {"top.mrc": "top", "s/deep/y.mrc": "s/deep/y"}


def test_qc_images_show_the_picks_and_the_excluded_band_for_n_micrographs_spread_over_the_run(sim_dataset, tmp_path):
    """``--qc 2`` of three micrographs: QC images of the first and the last (spread over the run), each with
    the written picks drawn (coloured circles at their coordinates) and a border band tinted red; ``--qc 0``
    (the default) writes none; a resumed run does not redo them; nothing temporary is left."""
    import mrcfile
    from matplotlib.image import imread

    from hydrapicker.coords import read_coords

    out, spec = sim_dataset
    src = sorted((out / "Micrographs").glob("*.mrc"))
    mics = tmp_path / "mics"
    mics.mkdir()
    for p in src:
        shutil.copy(p, mics / p.name)
    last = mics / src[-1].name  # a flat band on the last micrograph's left
    with mrcfile.open(last, "r+") as m:
        d = m.data.copy()
        d[:, :40] = float(np.median(d))
        m.set_data(d)
    args = ["pick", str(mics / "*.mrc"), "--apix", str(spec.pixel_size), "--diameter", str(spec.diameter_A),
            "--quiet"]
    assert hydra(args + ["--out", str(tmp_path / "none")]) == 0
    assert not (tmp_path / "none" / "qc").exists()
    assert hydra(args + ["--out", str(tmp_path / "p"), "--qc", "2"]) == 0
    qc = tmp_path / "p" / "qc"
    names = sorted(p.name for p in qc.iterdir())
    assert names == [f"{src[0].stem}_hydra.png", f"{src[-1].stem}_hydra.png"]
    pix = imread(qc / names[1])[..., :3]
    h, w = pix.shape[:2]
    ny, nx = mrcfile.read(last).shape
    band = pix[h // 4: 3 * h // 4, 2: int(w * 30 / nx)]
    assert band[..., 0].mean() > band[..., 1].mean() + 0.15            # the band is tinted red
    picks = read_coords(tmp_path / "p" / f"{src[-1].stem}_hydra.star")
    p = next(iter(picks.values()))
    assert len(p) > 5
    r = 0.5 * spec.diameter_A / spec.pixel_size
    hits = 0
    for x, y in zip(p.x[:20], p.y[:20]):  # a circle's rim: yellow to green (red/green high, blue low)
        xs, ys = int((x + r) * w / nx), int(y * h / ny)
        ring = pix[max(0, ys - 2): ys + 3, max(0, xs - 2): xs + 3]
        hits += bool(((ring[..., 1] > 0.6) & (ring[..., 2] < 0.35)).any())
    assert hits >= 15
    assert hydra(args + ["--out", str(tmp_path / "p"), "--qc", "2"]) == 0  # resume: nothing to redo
    assert sorted(p.name for p in qc.iterdir()) == names
    assert hydra(args + ["--out", str(tmp_path / "bad"), "--qc", "-1"]) == 1
