"""The half-cell grid (hydra pick --half-cell): the head also reads the grid shifted by half a cell, and both
grids' candidates are ranked together. Its geometry (views, tiles, batches map back exactly) is tested with an
oracle network in test_tta.py and test_pick.py; that it centres better is a benchmark (README, Centres)."""


def test_hydra_pick_half_cell_flag_reaches_the_picks(tmp_path, capsys):
    import starfile
    from conftest import write_mrc
    from test_refine import _touching

    from hydrapicker.cli import main as hydra

    sim, spec = _touching(0, snr=(0.3, 0.5))
    mrc = write_mrc(tmp_path / "touching.mrc", sim.image, apix=spec.pixel_size)
    picks = {}
    for name, extra in (("one", []), ("half", ["--half-cell"])):
        out = tmp_path / name
        assert hydra(["pick", "--mics", str(mrc), "--diameter", str(spec.diameter_A), "--out", str(out),
                      "--device", "cpu", "--no-evidence"] + extra) == 0
        log = capsys.readouterr().out
        assert ("two grids half a cell apart" in log) is (name == "half")
        df = starfile.read(next(out.rglob("*.star")))
        picks[name] = df[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    one, half = picks["one"], picks["half"]
    assert len(one) > 100 and abs(len(half) - len(one)) < 0.2 * len(one)  # the same particles, found
    # some picks now come from the shifted grid: positions the one grid did not give
    from scipy.spatial import cKDTree

    moved = cKDTree(one).query(half)[0] > 0.5
    assert 0.02 < moved.mean() < 0.8
