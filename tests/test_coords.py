"""hydrapicker.coords: every reader, round-tripped through our writers and through files laid out the
way RELION (starfile) and CryoSPARC (Dataset) write them; key matching by micrograph stem."""
import warnings

import numpy as np
import pandas as pd
import pytest
import starfile

from hydrapicker.coords import (CoordinateFileError, CoordsWarning, match_keys, name_stem, read_coords,
                                write_box, write_cbox_like, write_relion_star, write_topaz_txt)
from hydrapicker.errors import UserFacingError
from hydrapicker.types import Picks

RNG = np.random.default_rng(7)


def _random_picks(n=12, fom=True):
    x = RNG.uniform(0, 900, n).round(2)
    y = RNG.uniform(0, 700, n).round(2)
    return Picks(x, y, RNG.uniform(0, 1, n).round(4) if fom else None)


def _same(a: Picks, b: Picks, tol=1e-6, fom=True):
    assert len(a) == len(b)
    np.testing.assert_allclose(a.x, b.x, atol=tol)
    np.testing.assert_allclose(a.y, b.y, atol=tol)
    if fom:
        np.testing.assert_allclose(a.fom, b.fom, atol=1e-6)


def _coord_star(path, x, y, extra=None, version="30001"):
    """A coordinate STAR as RELION writes it: '# version', a data_ block with an empty name first."""
    df = pd.DataFrame({"rlnCoordinateX": np.asarray(x, float), "rlnCoordinateY": np.asarray(y, float),
                       **(extra or {})})
    starfile.write({"": df}, path)
    return path


# ---------------------------------------------------------------- per-micrograph STAR

def test_relion_star_round_trip_and_emtable_reads_it(tmp_path):
    from emtable import Table

    p = _random_picks()
    f = tmp_path / "mic001_autopick.star"
    write_relion_star(f, p)
    text = f.read_text()
    assert text.lstrip().startswith("# version 30001") and "\ndata_\n" in text
    got = read_coords(f)
    assert list(got) == ["mic001"]  # the pick name is stripped from the stem
    _same(got["mic001"], p)
    rows = list(Table(fileName=str(f), tableName=""))
    np.testing.assert_allclose([r.rlnCoordinateX for r in rows], p.x)
    np.testing.assert_allclose([r.rlnAutopickFigureOfMerit for r in rows], p.fom)
    assert {r.rlnClassNumber for r in rows} == {0}
    # an empty table (a micrograph with nothing picked) reads back as no picks
    write_relion_star(tmp_path / "empty.star", Picks.empty(), version=50001)
    assert "# version 50001" in (tmp_path / "empty.star").read_text()
    assert len(read_coords(tmp_path / "empty.star")["empty"]) == 0


def test_two_column_star_single_row_and_block_order(tmp_path):
    f = _coord_star(tmp_path / "a.star", [10.5, 20.0], [30.0, 40.25])
    p = read_coords(f)["a"]
    np.testing.assert_allclose(p.xy(), [[10.5, 30.0], [20.0, 40.25]])
    assert np.all(p.fom == 0)  # no FOM column: zeros
    # one particle: starfile writes a key/value block, still read
    one = tmp_path / "one.star"
    one.write_text("data_\n\n_rlnCoordinateX 5\n_rlnCoordinateY 6\n")
    np.testing.assert_allclose(read_coords(one)["one"].xy(), [[5, 6]])
    # coordinates in a later block: read, with a warning that RELION reads only the first block
    late = tmp_path / "late.star"
    starfile.write({"general": pd.DataFrame({"rlnImageSizeX": [100]}),
                    "": pd.DataFrame({"rlnCoordinateX": [1.0], "rlnCoordinateY": [2.0]})}, late)
    with pytest.warns(CoordsWarning, match="first block"):
        np.testing.assert_allclose(read_coords(late)["late"].xy(), [[1, 2]])
    # a zero-byte file means no picks
    (tmp_path / "zero.star").write_text("")
    assert len(read_coords(tmp_path / "zero.star")["zero"]) == 0


def test_errors_name_the_file(tmp_path):
    with pytest.raises(CoordinateFileError, match="nope.star' does not exist"):
        read_coords(tmp_path / "nope.star")
    mics = tmp_path / "micrographs.star"
    starfile.write({"micrographs": pd.DataFrame({"rlnMicrographName": ["a.mrc"]})}, mics)
    with pytest.raises(CoordinateFileError, match="micrographs.star' is a STAR file without coordinates"):
        read_coords(mics)
    weird = tmp_path / "x.dat"
    weird.write_text("hello world\n")
    with pytest.raises(CoordinateFileError, match="unknown coordinate format"):
        read_coords(weird)
    bad_box = tmp_path / "b.box"
    bad_box.write_text("1 2 three 4\n")
    with pytest.raises(CoordinateFileError, match="b.box"):
        read_coords(bad_box)


# ---------------------------------------------------------------- directories and matching

def test_directory_of_stars_matched_by_stem(tmp_path):
    names = ["Micrographs/May08_03.05.02.mrc", "Micrographs/mic_1.mrc", "Micrographs/mic_10.mrc"]
    picks = {n: _random_picks() for n in names}
    d = tmp_path / "out"
    for n, p in picks.items():
        write_relion_star(d / "Movies" / f"{name_stem(n)}_hydra.star", p)
    (d / "coords_suffix_hydra.star").write_text("CtfFind/job003/micrographs_ctf.star\n")  # skipped
    starfile.write({"coordinate_files": pd.DataFrame({"rlnMicrographName": ["x"],
                                                      "rlnMicrographCoordinates": ["y"]})},
                   d / "autopick.star")  # a list is not a per-micrograph file: skipped
    plain = read_coords(d)
    assert sorted(plain) == ["May08_03.05.02", "mic_1", "mic_10"]  # dots kept, _hydra stripped
    named = read_coords(d, micrograph_names=names)
    assert sorted(named) == sorted(names)
    for n in names:  # mic_10_hydra goes to mic_10, never to mic_1
        _same(named[n], picks[n])


def test_match_keys_rules():
    names = ["MotionCorr/job002/Movies/mic_1.mrc", "MotionCorr/job002/Movies/mic_10.mrc",
             "MotionCorr/job002/Movies/May08_03.05.02.mrc"]
    coords = {"mic_1_manualpick": Picks([1], [1]), "Movies/mic_10_autopick": Picks([2], [2]),
              "May08_03.05.02": Picks([3], [3]), "other": Picks([4], [4])}
    out = match_keys(coords, names)
    assert out[names[0]].x[0] == 1 and out[names[1]].x[0] == 2 and out[names[2]].x[0] == 3
    assert "other" in out  # unmatched keys are kept as they are
    with pytest.raises(UserFacingError, match="match no micrograph"):
        match_keys(coords, names, strict=True)
    with pytest.raises(UserFacingError, match="both belong to micrograph"):
        match_keys({"mic_1_a": Picks(), "mic_1_b": Picks()}, names)
    with pytest.raises(UserFacingError, match="several micrographs"):
        match_keys({"a": Picks()}, ["x/a.mrc", "y/a.mrc"])
    # a folder in the key disambiguates the same stem in two folders
    assert list(match_keys({"y/a_autopick": Picks()}, ["x/a.mrc", "y/a.mrc"])) == ["y/a.mrc"]
    # a RELION coordinate file's path meets its micrograph on their common trailing folders
    mics = ["MotionCorr/job002/Movies/a.mrc", "MotionCorr/job002/Other/a.mrc"]
    assert list(match_keys({"External/job004/Movies/a_autopick.star": Picks()}, mics)) == [mics[0]]
    assert list(match_keys({"Other/a": Picks()}, mics)) == [mics[1]]


# ---------------------------------------------------------------- RELION lists and nodes

def _relion_project(tmp_path, pickname="autopick"):
    """A RELION project: micrographs STAR, per-micrograph STARs under AutoPick/job004/Movies/."""
    proj = tmp_path / "proj"
    mics = [f"MotionCorr/job002/Movies/mic{i:03d}.mrc" for i in range(1, 4)]
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnMicrographPixelSize": [1.0]})
    (proj / "CtfFind/job003").mkdir(parents=True)
    starfile.write({"optics": optics, "micrographs": pd.DataFrame(
        {"rlnMicrographName": mics, "rlnOpticsGroup": [1] * 3})}, proj / "CtfFind/job003/micrographs_ctf.star")
    job = proj / "AutoPick/job004"
    picks = {}
    for m in mics[:2]:  # the third micrograph has no coordinate file
        picks[m] = _random_picks()
        write_relion_star(job / "Movies" / f"{name_stem(m)}_{pickname}.star", picks[m])
    return proj, job, mics, picks


def test_autopick_star_list_resolved_from_cwd_or_project(tmp_path, monkeypatch):
    proj, job, mics, picks = _relion_project(tmp_path)
    lst = job / "autopick.star"
    starfile.write({"coordinate_files": pd.DataFrame({
        "rlnMicrographName": mics,
        "rlnMicrographCoordinates": [f"AutoPick/job004/Movies/{name_stem(m)}_autopick.star" for m in mics]})},
        lst)
    monkeypatch.chdir(proj)  # as RELION runs: paths relative to the project directory
    with pytest.warns(CoordsWarning, match="1 coordinate file"):
        got = read_coords("AutoPick/job004/autopick.star")
    assert sorted(got) == mics[:2]
    for m in mics[:2]:
        _same(got[m], picks[m])
    monkeypatch.chdir(tmp_path)  # elsewhere: found through the list's project directory
    with pytest.warns(CoordsWarning):
        got = read_coords(lst)
    assert sorted(got) == mics[:2]


def test_manualpick_list_with_paths_relative_to_list(tmp_path, monkeypatch):
    d = tmp_path / "picks"
    p = _random_picks()
    write_relion_star(d / "a_manualpick.star", p)
    starfile.write({"coordinate_files": pd.DataFrame({"rlnMicrographName": ["Movies/a.mrc"],
                                                      "rlnMicrographCoordinates": ["a_manualpick.star"]})},
                   d / "manualpick.star")
    monkeypatch.chdir(tmp_path)
    got = read_coords(d / "manualpick.star")
    _same(got["Movies/a.mrc"], p)


def test_coords_suffix_node(tmp_path, monkeypatch):
    proj, job, mics, picks = _relion_project(tmp_path)
    node = job / "coords_suffix_autopick.star"
    node.write_text("CtfFind/job003/micrographs_ctf.star\n")
    monkeypatch.chdir(proj)
    with pytest.warns(CoordsWarning, match="1 micrograph"):
        got = read_coords("AutoPick/job004/coords_suffix_autopick.star")
    assert sorted(got) == mics[:2]
    for m in mics[:2]:
        _same(got[m], picks[m])
    # the micrographs STAR out of reach: every *_autopick.star under the node's directory instead
    (proj / "CtfFind/job003/micrographs_ctf.star").unlink()
    with pytest.warns(CoordsWarning, match="not found"):
        got = read_coords(node)
    got = match_keys(got, mics)
    for m in mics[:2]:
        _same(got[m], picks[m])


def test_particles_star_with_optics(tmp_path):
    mics = ["MotionCorr/job002/Movies/a.mrc"] * 3 + ["MotionCorr/job002/Movies/b.mrc"] * 2
    x, y = RNG.uniform(0, 500, 5), RNG.uniform(0, 500, 5)
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnImagePixelSize": [2.0], "rlnImageSize": [64], "rlnImageDimensionality": [2]})
    parts = pd.DataFrame({"rlnCoordinateX": x, "rlnCoordinateY": y, "rlnAutopickFigureOfMerit": np.arange(5.0),
                          "rlnImageName": [f"{i:06d}@Extract/job005/a.mrcs" for i in range(1, 6)],
                          "rlnMicrographName": mics, "rlnOpticsGroup": [1] * 5})
    f = tmp_path / "particles.star"
    starfile.write({"optics": optics, "particles": parts}, f)
    got = read_coords(f)
    assert list(got) == ["MotionCorr/job002/Movies/a.mrc", "MotionCorr/job002/Movies/b.mrc"]
    _same(got[mics[0]], Picks(x[:3], y[:3], [0, 1, 2]))
    _same(got[mics[3]], Picks(x[3:], y[3:], [3, 4]))
    # pre-3.1: one block, no optics
    old = tmp_path / "old.star"
    starfile.write({"": parts.drop(columns=["rlnOpticsGroup"])}, old)
    assert sorted(read_coords(old)) == sorted(got)


# ---------------------------------------------------------------- BOX, CBOX, Topaz, CryoSPARC

def test_box_round_trip(tmp_path):
    p = _random_picks(fom=False)
    write_box(tmp_path / "mic.box", p, box_px=64)
    got = read_coords(tmp_path / "mic.box")["mic"]
    _same(got, p, tol=0.5 + 1e-9, fom=False)  # BOX stores integer corners
    # an odd box size: corner = round(x - 16.5), centre = corner + 16.5
    write_box(tmp_path / "odd.box", Picks([100.5], [50.5]), box_px=33)
    np.testing.assert_allclose(read_coords(tmp_path / "odd.box")["odd"].xy(), [[100.5, 50.5]])
    # a fractional box size is written rounded; the centre still comes back within 0.5 px
    write_box(tmp_path / "frac.box", p, box_px=33.4)
    _same(read_coords(tmp_path / "frac.box")["frac"], p, tol=0.5 + 1e-9, fom=False)
    write_box(tmp_path / "none.box", Picks.empty(), box_px=64)
    assert len(read_coords(tmp_path / "none.box")["none"]) == 0


def test_cbox_like_round_trip(tmp_path):
    p = _random_picks()
    write_cbox_like(tmp_path / "mic.cbox", p, box_px=40)
    _same(read_coords(tmp_path / "mic.cbox")["mic"], p)


def test_topaz_round_trip_and_matching(tmp_path):
    names = {"May08_03.05.02": _random_picks(), "mic_2": _random_picks(), "empty": Picks.empty()}
    f = tmp_path / "picks.txt"
    write_topaz_txt(f, names)
    got = read_coords(f)
    assert sorted(got) == ["May08_03.05.02", "mic_2"]  # a name without picks has no rows
    for k in got:
        _same(got[k], names[k], tol=0.5 + 1e-9, fom=False)
        np.testing.assert_allclose(got[k].fom, names[k].fom, atol=5e-5)
    matched = read_coords(f, micrograph_names=["Micrographs/May08_03.05.02.mrc", "Micrographs/mic_2.mrc"])
    assert sorted(matched) == ["Micrographs/May08_03.05.02.mrc", "Micrographs/mic_2.mrc"]
    # Topaz training labels have no score column
    lab = tmp_path / "labels.txt"
    lab.write_text("image_name\tx_coord\ty_coord\nm1\t10\t20\nm1\t30\t40\n")
    np.testing.assert_allclose(read_coords(lab)["m1"].xy(), [[10, 20], [30, 40]])


def test_cryosparc_cs(tmp_path):
    Dataset = pytest.importorskip("cryosparc.dataset").Dataset
    fields = [("location/micrograph_uid", "<u8"), ("location/exp_group_id", "<u4"),
              ("location/micrograph_path", "O"), ("location/micrograph_shape", "<u4", (2,)),
              ("location/micrograph_psize_A", "<f4"), ("location/center_x_frac", "<f4"),
              ("location/center_y_frac", "<f4"), ("location/min_dist_A", "<f4"),
              ("pick_stats/ncc_score", "<f4"), ("pick_stats/power", "<f4"),
              ("pick_stats/template_idx", "<u4"), ("pick_stats/angle_rad", "<f4")]
    ds = Dataset.allocate(4, fields)
    ds["location/micrograph_uid"] = [11, 11, 12, 11]
    ds["location/micrograph_path"] = ["J2/motioncorrected/a.mrc", "J2/motioncorrected/a.mrc",
                                      "J2/motioncorrected/b.mrc", "J2/motioncorrected/a.mrc"]
    ds["location/micrograph_shape"] = [[600, 800]] * 4  # [ny, nx]: not square, so a swap shows
    ds["location/center_x_frac"] = [0.5, 0.25, 0.125, 0.75]
    ds["location/center_y_frac"] = [0.5, 0.1, 0.25, 0.9]
    ds["pick_stats/ncc_score"] = [0.9, 0.2, 0.4, 0.6]
    ds["pick_stats/power"] = [5.0, 6.0, 7.0, 8.0]
    f = tmp_path / "picks.cs"
    ds.save(str(f))
    got = read_coords(f)
    assert list(got) == ["J2/motioncorrected/a.mrc", "J2/motioncorrected/b.mrc"]
    _same(got["J2/motioncorrected/a.mrc"], Picks([400, 200, 600], [300, 60, 540], [0.9, 0.2, 0.6]), tol=1e-3)
    _same(got["J2/motioncorrected/b.mrc"], Picks([100], [150], [0.4]), tol=1e-3)
    # crYOLO-style dummy ncc_score (constant): the varying power is the FOM
    ds["pick_stats/ncc_score"] = [0.5] * 4
    ds.save(str(f))
    np.testing.assert_allclose(read_coords(f)["J2/motioncorrected/a.mrc"].fom, [5, 6, 8])
    matched = read_coords(f, micrograph_names=["a.mrc", "b.mrc"])
    assert sorted(matched) == ["a.mrc", "b.mrc"]


def test_readers_agree_on_one_set_of_picks(tmp_path):
    """The same integer picks through four formats read back identically (up to the FOM)."""
    p = Picks(RNG.integers(50, 800, 20).astype(float), RNG.integers(50, 600, 20).astype(float))
    write_relion_star(tmp_path / "star" / "m.star", p)
    write_box(tmp_path / "box" / "m.box", p, box_px=40)
    write_cbox_like(tmp_path / "cbox" / "m.cbox", p, box_px=40)
    write_topaz_txt(tmp_path / "m.txt", {"m": p})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for src in (tmp_path / "star", tmp_path / "box", tmp_path / "cbox", tmp_path / "m.txt"):
            _same(read_coords(src)["m"], p, fom=False)


def test_star_files_carry_relions_version_line_not_starfiles_banner(tmp_path):
    from hydrapicker.star import write_star

    picks = Picks([1.5, 20.0], [3.0, 4.25], [0.9, 0.2])
    write_relion_star(tmp_path / "a.star", picks, version=50001)
    text = (tmp_path / "a.star").read_text()
    assert text.startswith("\n# version 50001\n") and "Created by" not in text
    back = starfile.read(tmp_path / "a.star")
    assert back["rlnCoordinateX"].tolist() == [1.5, 20.0] and back["rlnAutopickFigureOfMerit"].tolist() == [0.9, 0.2]
    write_star(tmp_path / "two.star", {"optics": pd.DataFrame({"rlnOpticsGroup": [1]}),
                                        "micrographs": pd.DataFrame({"rlnMicrographName": ["m.mrc"]})})
    both = starfile.read(tmp_path / "two.star", always_dict=True)
    assert list(both) == ["optics", "micrographs"] and not list(tmp_path.glob(".*tmp*"))
