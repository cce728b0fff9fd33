"""The micrograph simulator: exact truth, determinism, empty micrographs, file formats, CLI."""
import json

import mrcfile
import numpy as np
import pytest

from hydrapicker.simulate import (TARGET_FAMILIES, TRAIN_FAMILIES, DatasetSpec, random_dataset_spec,
                                  simulate_micrograph, source_dataset_specs, target_dataset_specs,
                                  write_dataset)

CLEAN = dict(p_empty=0.0, p_carbon=0.0, contamination=0.0, p_crystalline=0.0, p_aggregate=0.0, junk=0.0,
             ice_gradient=0.0)


def _clean_spec(seed, family, **kw):
    s = random_dataset_spec(seed, families=[family])
    base = dict(diameter_A=24 * 5.0, pixel_size=5.0, shape=(320, 320), snr=(0.5, 0.5), coverage=(0.1, 0.15),
                max_overlap=0.0, pref_kappa=0.0, **CLEAN)
    base.update(kw)
    return s.replace(**base)


def _boxes(img, xy, half):
    out = []
    for x, y in np.round(xy).astype(int):
        if half <= x < img.shape[1] - half and half <= y < img.shape[0] - half:
            out.append(img[y - half:y + half + 1, x - half:x + half + 1])
    return np.array(out)


def _dark_centroid(avg, radius=12):
    """Centre of mass of the dark signal (below the level of the surrounding annulus) within ``radius``
    of the box centre, relative to the box centre."""
    yy, xx = np.mgrid[:avg.shape[0], :avg.shape[1]]
    c = (avg.shape[0] - 1) / 2
    rr = np.hypot(xx - c, yy - c)
    base = avg[(rr > radius) & (rr < radius + 4)].mean()
    w = np.clip(base - avg, 0, None) * (rr <= radius)
    return (w * xx).sum() / w.sum() - c, (w * yy).sum() / w.sum() - c


@pytest.mark.parametrize("family", ["multidomain", "elongated", "ring"])
def test_truth_centres_are_exact(family):
    spec = _clean_spec(11, family)
    boxes, shifted = [], []
    for i in range(3):
        mic = simulate_micrograph(spec, i)
        assert len(mic.xy) > 5
        # boxes at the exact centres (rounded: +-0.5 px jitter that averages out)
        boxes.append(_boxes(mic.image, mic.xy, 20))
        shifted.append(_boxes(mic.image, mic.xy + [3.0, 0.0], 20))
    avg = np.concatenate(boxes).mean(0)
    dx, dy = _dark_centroid(avg)
    assert abs(dx) < 0.5 and abs(dy) < 0.5, (dx, dy)  # within 1 px, with room to spare
    # the same measurement detects a 3 px error in the truth
    sdx, sdy = _dark_centroid(np.concatenate(shifted).mean(0))
    assert sdx < -1.2 and abs(sdy) < 0.5, (sdx, sdy)


def test_particles_are_dark_and_truth_inside_image():
    spec = _clean_spec(5, "globular", coverage=(0.3, 0.3), max_overlap=0.1)
    mic = simulate_micrograph(spec, 0)
    ny, nx = spec.shape
    assert mic.image.dtype == np.float32 and mic.image.shape == (ny, nx)
    assert mic.xy.dtype == np.float64 and mic.xy.shape[1] == 2
    assert np.all((mic.xy >= 0) & (mic.xy <= [nx - 1, ny - 1]))
    # some particles are cut by the edge: rendered, but their centres are outside -> not in the truth
    assert mic.info["n_particles_canvas"] > len(mic.xy)
    from scipy.ndimage import gaussian_filter
    low = gaussian_filter(mic.image, 2)
    at = low[np.round(mic.xy[:, 1]).astype(int), np.round(mic.xy[:, 0]).astype(int)]
    assert np.median(at) < np.median(low) - 0.3 * low.std()


def test_deterministic_and_varied():
    spec = random_dataset_spec(3).replace(shape=(256, 256))
    a, b = simulate_micrograph(spec, 1), simulate_micrograph(spec, 1)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.xy, b.xy)
    c = simulate_micrograph(spec, 2)
    assert not np.array_equal(a.image, c.image)
    assert a.name == f"{spec.name}_001"
    assert random_dataset_spec(3) == random_dataset_spec(3) != random_dataset_spec(4)


def test_empty_micrograph_has_no_truth_and_spec_json_roundtrip(tmp_path):
    spec = _clean_spec(2, "cage", p_empty=1.0, shape=(128, 160))
    mic = simulate_micrograph(spec, 0)
    assert mic.xy.shape == (0, 2) and np.isfinite(mic.image).all() and mic.image.std() > 0
    d = json.loads(json.dumps(spec.to_dict()))
    assert DatasetSpec.from_dict(d) == spec
    out = write_dataset(spec, tmp_path / "empty", 1)
    import starfile
    t = starfile.read(out / "truth" / f"{spec.name}_000.star")
    assert len(t) == 0


def test_write_dataset_formats(tmp_path):
    import emtable
    import starfile
    spec = _clean_spec(7, "flat", shape=(200, 240), p_carbon=1.0, contamination=2.0)
    out = write_dataset(spec, tmp_path / "ds", 2)
    st = starfile.read(out / "micrographs.star")
    assert float(st["optics"]["rlnMicrographPixelSize"][0]) == pytest.approx(spec.pixel_size)
    for col in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                "rlnMicrographOriginalPixelSize", "rlnOpticsGroup"):
        assert col in st["optics"].columns
    mics = st["micrographs"]
    assert list(mics["rlnMicrographName"]) == [f"Micrographs/{spec.name}_{i:03d}.mrc" for i in range(2)]
    assert {"rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnOpticsGroup"} <= set(mics.columns)
    et = emtable.Table(fileName=str(out / "micrographs.star"), tableName="micrographs")
    assert len(et) == 2
    meta = json.loads((out / "meta.json").read_text())
    assert meta["diameter_px"] == pytest.approx(spec.diameter_A / spec.pixel_size)
    assert meta["particle_source"]["family"] == "flat" and meta["particle_source"]["mass_kDa"] > 0
    for i in range(2):
        mic = simulate_micrograph(spec, i)
        with mrcfile.open(out / mics["rlnMicrographName"][i]) as m:
            assert m.voxel_size.x == pytest.approx(spec.pixel_size, rel=1e-4)
            assert np.array_equal(m.data, mic.image)
        name = f"{spec.name}_{i:03d}"
        t = starfile.read(out / "truth" / f"{name}.star")
        np.testing.assert_allclose(t[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(), mic.xy, atol=1e-5)
        te = emtable.Table(fileName=str(out / "truth" / f"{name}.star"), tableName="")
        assert len(te) == len(mic.xy)


def test_dataset_lists():
    src = source_dataset_specs(12)
    tgt = target_dataset_specs()
    assert len(tgt) >= 7 and len({s.name for s in tgt}) == len(tgt)
    assert all(s.family in TRAIN_FAMILIES for s in src)
    assert all(s.family in TARGET_FAMILIES for s in tgt)
    assert not set(TRAIN_FAMILIES) & set(TARGET_FAMILIES)
    for s in src:  # binned training regime
        assert 20 <= s.diameter_px <= 80 and 512 <= min(s.shape) and max(s.shape) <= 1024
        assert 50 <= s.diameter_A <= 500  # the families' ranges, small proteins from 50 A
    from hydrapicker.simulate import particle_model
    small = [s for s in tgt if s.name.startswith("t_small")][0]
    assert 50 <= particle_model(small).mass_kDa <= 110
    full = random_dataset_spec(1, regime="full")
    assert 0.6 <= full.pixel_size <= 2.5 and max(full.shape) <= 4096


def test_full_resolution_regime_runs():
    spec = random_dataset_spec(9, families=["globular"], regime="full").replace(shape=(256, 256))
    mic = simulate_micrograph(spec, 0)
    assert np.isfinite(mic.image).all() and mic.pixel_size <= 2.5


def test_cli(tmp_path, capsys):
    from hydrapicker.cli import main
    assert main(["simulate", "--list"]) == 0
    assert "t_rod" in capsys.readouterr().out
    assert main(["simulate", "--out", str(tmp_path), "--target", "nope"]) == 1
    assert "unknown target" in capsys.readouterr().err
    assert main(["simulate", "--out", str(tmp_path), "--seed", "4", "--family", "ring", "--n-micrographs", "1",
                 "--shape", "160", "192"]) == 0
    written = list(tmp_path.glob("*/Micrographs/*.mrc"))
    assert len(written) == 1 and mrcfile.read(written[0]).shape == (160, 192)


def test_no_truth_under_contamination_or_on_carbon():
    """Particles hidden under (opaque) ice contamination are not placed, so not in the truth; none sit on the
    carbon film either. The coarse occupancy grid used to be built by subsampling the masks with an integer
    step although its cells are d/10 px (non-integer), which shifted the masks by up to a tenth of the canvas
    and put truth centres under contamination blobs."""
    spec = source_dataset_specs(8)[7].replace(contamination=3.0, p_carbon=0.5, p_empty=0.0, shape=(512, 512))
    assert abs(spec.diameter_px / 10 - round(spec.diameter_px / 10)) > 0.1  # a non-integer occupancy cell
    n_blobs = n_carbon = n_truth = 0
    for i in range(4):
        mic = simulate_micrograph(spec, i)
        assert mic.contamination_mask.shape == mic.image.shape
        n_blobs += mic.info["n_contamination"]
        n_truth += len(mic.xy)
        ix = np.round(mic.xy).astype(int)
        assert not np.any(mic.contamination_mask[ix[:, 1], ix[:, 0]] > 0.5)
        if mic.carbon_mask is not None:
            n_carbon += 1
            assert not np.any(mic.carbon_mask[ix[:, 1], ix[:, 0]] > 0.5)
        # and no particle disc is mostly covered by contamination
        r = mic.diameter_px / 2
        yy, xx = np.mgrid[:mic.image.shape[0], :mic.image.shape[1]]
        for x, y in mic.xy:
            disc = (xx - x) ** 2 + (yy - y) ** 2 <= r * r
            assert (mic.contamination_mask[disc] > 0.5).mean() < 0.5
    assert n_blobs >= 4 and n_carbon >= 1 and n_truth > 100  # the test exercises what it checks
    a, b = simulate_micrograph(spec, 0), simulate_micrograph(spec, 0)
    assert np.array_equal(a.xy, b.xy) and np.array_equal(a.contamination_mask, b.contamination_mask)
