"""Reading, rescaling and normalising micrographs; micrographs STARs; bad input."""
import numpy as np
import pandas as pd
import pytest
import starfile

from conftest import blob_micrograph, write_mrc
from hydrapicker.errors import MicrographError, StarFileError, UserFacingError
from hydrapicker.micrographs import collect_micrographs, read_micrographs_star
from hydrapicker.preprocess import (fourier_rescale, prepare, read_mrc, rescaled_shape,
                                    resolve_pixel_size, tiles)


@pytest.mark.parametrize("new", [(200, 150), (256, 300), (513, 401)])
def test_fourier_rescale_keeps_positions(new):
    # a smooth blob at (x, y) lands at (x * new_nx / nx, y * new_ny / ny)
    img = blob_micrograph((400, 300), [(120.0, 250.0)], sigma=8.0, amp=1.0, noise=0.0)
    out = fourier_rescale(img, new)
    sx, sy = new[1] / 300, new[0] / 400
    yy, xx = np.mgrid[0:new[0], 0:new[1]]
    w = np.clip(out, 0, None) ** 2
    cx, cy = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
    assert abs(cx - 120 * sx) < 0.3 and abs(cy - 250 * sy) < 0.3
    assert out.mean() == pytest.approx(img.mean(), abs=1e-4)


def test_prepare_rescales_to_the_model_extent_and_normalises():
    img = blob_micrograph((600, 800), [(100, 100)], noise=1.0) * 50 + 1000
    p = prepare(img, pixel_size=2.0, diameter_A=100.0, extent_px=16.0)
    # 100 A = 50 px -> 16 px: scale 0.32
    assert p.image.shape == (192, 256)
    assert p.scale_xy == pytest.approx((256 / 800, 192 / 600))
    assert abs(float(np.median(p.image))) < 0.1 and 0.7 < float(p.image.std()) < 1.5
    assert rescaled_shape((600, 800), 2.0, 100.0, 16.0)[1] == pytest.approx(0.32)


def test_tiles_cover_every_pixel_once():
    cover = np.zeros((300, 250), int)
    for y0, y1, x0, x1, cy0, cy1, cx0, cx1 in tiles((300, 250), 128, 32, 8):
        assert y0 <= cy0 and cy1 <= y1 and x0 <= cx0 and cx1 <= x1
        cover[cy0:cy1, cx0:cx1] += 1
    assert (cover == 1).all()


def test_bad_micrographs_get_clear_errors(tmp_path):
    with pytest.raises(MicrographError, match="does not exist"):
        read_mrc(tmp_path / "nope.mrc")
    junk = tmp_path / "junk.mrc"
    junk.write_bytes(b"\0" * 100)
    with pytest.raises(MicrographError, match="junk.mrc"):
        read_mrc(junk)
    stack = write_mrc(tmp_path / "stack.mrc", np.zeros((3, 64, 64)))
    with pytest.raises(MicrographError, match="not a 2D micrograph"):
        read_mrc(stack)
    nan = np.ones((64, 64), np.float32)
    nan[3, 4] = np.nan
    with pytest.raises(MicrographError, match="NaN"):
        prepare(nan, 1.0, 20.0, 16.0, path="nan.mrc")
    with pytest.raises(MicrographError, match="constant"):
        prepare(np.ones((64, 64), np.float32), 1.0, 20.0, 16.0, path="c.mrc")
    with pytest.raises(MicrographError, match="diameter"):
        prepare(np.random.rand(64, 64).astype(np.float32), 1.0, 5000.0, 16.0, path="d.mrc")


def test_pixel_size_resolution():
    assert resolve_pixel_size("m", 1.5, None) == 1.5
    assert resolve_pixel_size("m", None, 2.0) == 2.0
    assert resolve_pixel_size("m", 1.5, 2.0, explicit_apix=3.0) == 3.0
    with pytest.raises(MicrographError, match="no pixel size"):
        resolve_pixel_size("m.mrc", None, None)
    with pytest.raises(MicrographError, match="not positive"):
        resolve_pixel_size("m.mrc", 0.0, 1.0)
    with pytest.warns(UserWarning, match="2.5 A in the MRC"):
        assert resolve_pixel_size("m.mrc", 1.5, 2.5) == 1.5


def _star_31(path, names, apix=1.25):
    starfile.write({
        "optics": pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                                "rlnMicrographOriginalPixelSize": [apix / 2], "rlnVoltage": [300.0],
                                "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                                "rlnMicrographPixelSize": [apix]}),
        "micrographs": pd.DataFrame({"rlnMicrographName": names, "rlnOpticsGroup": [1] * len(names),
                                     "rlnDefocusU": [15000.0] * len(names)}),
    }, path)


def test_read_relion31_star_resolves_paths_from_cwd_then_star_dir(tmp_cwd):
    write_mrc(tmp_cwd / "MotionCorr/job002/Movies/a.mrc", np.random.rand(64, 64))
    write_mrc(tmp_cwd / "sub/Micrographs/b.mrc", np.random.rand(64, 64))
    _star_31(tmp_cwd / "sub/mics.star", ["MotionCorr/job002/Movies/a.mrc", "Micrographs/b.mrc"])
    mics = read_micrographs_star("sub/mics.star")
    assert [m.name for m in mics] == ["MotionCorr/job002/Movies/a.mrc", "Micrographs/b.mrc"]
    assert mics[0].path == "MotionCorr/job002/Movies/a.mrc"
    assert mics[1].path.endswith("sub/Micrographs/b.mrc")
    assert all(m.pixel_size == 1.25 for m in mics)
    assert mics[0].meta["rlnDefocusU"] == 15000.0


def test_read_pre31_star_uses_magnification(tmp_path):
    starfile.write(pd.DataFrame({"rlnMicrographName": ["x.mrc"], "rlnDetectorPixelSize": [5.0],
                                 "rlnMagnification": [50000.0]}), tmp_path / "old.star")
    (m,) = read_micrographs_star(tmp_path / "old.star")
    assert m.pixel_size == pytest.approx(1.0)


def test_bad_star_files(tmp_path):
    empty = tmp_path / "empty.star"
    empty.write_text("")
    with pytest.raises(StarFileError, match="empty"):
        read_micrographs_star(empty)
    with pytest.raises(StarFileError, match="does not exist"):
        read_micrographs_star(tmp_path / "missing.star")
    starfile.write(pd.DataFrame({"rlnCoordinateX": [1.0], "rlnCoordinateY": [2.0]}), tmp_path / "c.star")
    with pytest.raises(StarFileError, match="_rlnMicrographName"):
        read_micrographs_star(tmp_path / "c.star")


def test_collect_from_globs_and_list_files(tmp_cwd):
    for i in range(3):
        write_mrc(tmp_cwd / f"m/mic{i}.mrc", np.random.rand(64, 64), apix=1.0)
    (tmp_cwd / "list.txt").write_text("# my micrographs\nm/mic0.mrc\nm/mic2.mrc\n")
    assert len(collect_micrographs(["m/*.mrc"])) == 3
    assert [m.path for m in collect_micrographs(["@list.txt"], apix=1.1)] == ["m/mic0.mrc", "m/mic2.mrc"]
    with pytest.raises(UserFacingError, match="no file matches"):
        collect_micrographs(["z/*.mrc"])


def _reference_prepare(img, pixel_size, diameter_A, extent_px):
    """The numpy/scipy preparation the first models were trained with (float64 FFT, scipy's Gaussian)."""
    from scipy.ndimage import gaussian_filter

    (my, mx), _ = rescaled_shape(img.shape, pixel_size, diameter_A, extent_px)
    ny, nx = img.shape
    F = np.fft.rfft2(img)
    out = np.zeros((my, mx // 2 + 1), F.dtype)
    ky, kx = min(ny, my) // 2, min(nx // 2 + 1, mx // 2 + 1)
    out[:ky, :kx], out[my - ky:, :kx] = F[:ky, :kx], F[ny - ky:, :kx]
    small = (np.fft.irfft2(out, s=(my, mx)) * (my * mx) / (ny * nx)).astype(np.float32)
    small = small - gaussian_filter(small, 4.0 * extent_px, mode="reflect")
    med = np.median(small)
    mad = np.median(np.abs(small - med)) * 1.4826
    return np.clip((small - med) / mad, -5, 5)


@pytest.mark.parametrize("shape,apix,diameter", [((1000, 1200), 1.0, 150.0), ((333, 257), 2.0, 60.0),
                                                 ((640, 480), 1.0, 300.0)])
def test_torch_preparation_equals_the_numpy_scipy_reference(shape, apix, diameter):
    """One torch implementation (GPU in the picker, CPU elsewhere) equals what the models were trained on:
    scipy's reflect-mode Gaussian (also when the kernel is wider than the image) and numpy's median."""
    import torch

    from hydrapicker.preprocess import gaussian_blur_t, prepare_t

    rng = np.random.default_rng(3)
    img = (rng.normal(size=shape) + np.linspace(0, 4, shape[1])[None]).astype(np.float32) * 20 + 300
    ref = _reference_prepare(img, apix, diameter, 16.0)
    got = prepare(img, apix, diameter, 16.0).image
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=2e-4)
    t = prepare_t(torch.from_numpy(img), apix, diameter, 16.0)
    assert isinstance(t.image, torch.Tensor) and np.array_equal(t.image.numpy(), got)
    from scipy.ndimage import gaussian_filter
    for sigma in (2.0, 0.75 * min(ref.shape), 3.0 * max(ref.shape)):
        np.testing.assert_allclose(gaussian_blur_t(torch.from_numpy(ref), sigma).numpy(),
                                   gaussian_filter(ref, sigma, mode="reflect"), atol=2e-5)


def test_hot_and_dead_pixels_are_replaced_before_rescaling_but_bands_and_blobs_are_kept():
    """An isolated extreme pixel (hot, also two side by side; or a dead 0 in a bright image without dark
    areas) takes its neighbours' median, so Fourier rescaling does not ring it into a particle-sized spot;
    a zero-padded border band, a dark gold-like disc (and the noise inside them) and a micrograph without
    extremes come back untouched."""
    import torch

    from hydrapicker.preprocess import remove_hot_pixels_t

    rng = np.random.default_rng(5)
    clean = torch.from_numpy(rng.normal(300, 20, (400, 500)).astype(np.float32))
    out, n = remove_hot_pixels_t(clean)
    assert n == 0 and out is clean

    img = clean.clone()
    img[:, :30] = 0.0                                   # flat padding band: an outlier area
    yy, xx = np.mgrid[0:400, 0:500]
    disc = torch.from_numpy((xx - 250) ** 2 + (yy - 300) ** 2 < 8 ** 2)
    img[disc] = torch.from_numpy(rng.normal(-400, 60, int(disc.sum())).astype(np.float32))  # gold, noisy
    hot = [(50, 100), (51, 100), (200, 400)]
    for y, x in hot:
        img[y, x] = 300 + 40 * 20                       # 40 sigma
    out, n = remove_hot_pixels_t(img)
    assert n == 3
    for y, x in hot:
        assert abs(float(out[y, x]) - 300) < 3 * 20
    untouched = torch.ones_like(img, dtype=torch.bool)
    for y, x in hot:
        untouched[y, x] = False
    assert torch.equal(out[untouched], img[untouched])  # band, disc and every other pixel as they were

    dead = clean.clone()
    dead[120, 320] = 0.0                                # 15 sigma under the median, neighbours ordinary
    out, n = remove_hot_pixels_t(dead, inplace=True)
    assert n == 1 and out is dead and abs(float(dead[120, 320]) - 300) < 3 * 20

    # the spike no longer rings in the prepared micrograph
    spike = clean.clone()
    spike[200, 250] = 300 + 200 * 20
    a = prepare(spike.numpy(), 1.0, 150.0, 16.0).image
    b = prepare(clean.numpy(), 1.0, 150.0, 16.0).image
    np.testing.assert_allclose(a, b, atol=0.05)


def test_gain_stripes_are_removed_but_particles_bands_and_edges_are_not_stripes():
    """Whole rows/columns offset from their neighbours (gain-reference stripes, 1-3 lines wide, either sign)
    lose their offset before rescaling; a micrograph without stripes comes back as it is (the same tensor),
    also with dense particles, a dark contamination disc, a carbon-like step and a striped border band
    (each covers part of the lines only)."""
    import torch

    from conftest import blob_micrograph
    from hydrapicker.preprocess import remove_stripes_t

    rng = np.random.default_rng(11)
    centres = rng.uniform(20, 580, (150, 2))
    base = blob_micrograph((600, 600), centres, sigma=5.0, amp=-2.0, noise=1.0, seed=11)
    yy, xx = np.mgrid[0:600, 0:600]
    base[(xx - 420) ** 2 + (yy - 200) ** 2 < 60 ** 2] -= 4.0          # contamination
    base[:, 450:] += 1.5                                             # carbon edge: a step along columns
    base[:40, :] += np.tile(rng.normal(0, 2.0, 600).astype(np.float32), (40, 1))  # striped border band
    clean = torch.from_numpy(base.copy())
    out, n_rows, n_cols = remove_stripes_t(clean)
    assert (n_rows, n_cols) == (0, 0) and out is clean

    striped = base.copy()
    stripes = {("col", 100, 2): 0.8, ("col", 300, 1): -1.2, ("row", 250, 3): 0.6, ("row", 500, 1): -2.0}
    for (axis, start, width), amp in stripes.items():
        if axis == "col":
            striped[:, start:start + width] += amp
        else:
            striped[start:start + width] += amp
    out, n_rows, n_cols = remove_stripes_t(torch.from_numpy(striped))
    assert (n_rows, n_cols) == (4, 3)
    residual = out.numpy() - base
    for (axis, start, width), amp in stripes.items():
        line = residual[:, start:start + width] if axis == "col" else residual[start:start + width]
        assert abs(float(line.mean())) < 0.15 * abs(amp)
    untouched = np.ones_like(base, dtype=bool)
    untouched[:, [100, 101, 300]] = False
    untouched[[250, 251, 252, 500]] = False
    assert np.abs(residual[untouched]).max() < 1e-5  # no other pixel moved
