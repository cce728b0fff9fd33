"""Border bands and dead areas (hydrapicker.regions): found where they are, nothing lost where none is."""
import zlib

import numpy as np
import pytest
from scipy import ndimage

from hydrapicker import regions as R

EDGES = ("top", "bottom", "left", "right")


# ------------------------------------------------------------------------------------------ micrographs
def micrograph(kind="noise", shape=(512, 512), seed=0):
    """Clean micrographs of several kinds, in detector-like units (mean 100, std ~3)."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    w = rng.normal(0, 1, shape)
    yy, xx = np.mgrid[0:ny, 0:nx]
    if kind == "noise":
        img = w
    elif kind == "lowpass":             # scipy's default (reflecting) boundary
        img = ndimage.gaussian_filter(w, 2.0)
        img /= img.std()
    elif kind == "lowpass3":
        img = ndimage.gaussian_filter(w, 3.0)
        img /= img.std()
    elif kind == "reallike":            # correlated structure + shot noise, like the real sets
        img = ndimage.gaussian_filter(w, 1.2)
        img = img / img.std() + 0.8 * rng.normal(0, 1, shape)
    elif kind == "gradient":            # ice thickness: a strong smooth ramp and curvature
        img = w + 5.0 * xx / nx + 4.0 * (yy / ny - 0.3) ** 2
    elif kind == "particles":           # dark blobs, some cut by the edges
        img = w.copy()
        for _ in range(80):
            cy, cx = rng.uniform(-10, ny + 10), rng.uniform(-10, nx + 10)
            r = rng.uniform(6, 16)
            y0, y1 = max(0, int(cy - 4 * r)), min(ny, int(cy + 4 * r) + 1)
            x0, x1 = max(0, int(cx - 4 * r)), min(nx, int(cx + 4 * r) + 1)
            if y1 > y0 and x1 > x0:
                win = (slice(y0, y1), slice(x0, x1))
                img[win] -= 2.5 * np.exp(-((yy[win] - cy) ** 2 + (xx[win] - cx) ** 2) / (2 * r * r))
    elif kind == "carbon":              # carbon film over a curved edge: darker, more texture
        edge = (xx - 0.35 * nx) + 40 * np.sin(yy / ny * 5) > 0
        tex = ndimage.gaussian_filter(rng.normal(0, 1, shape), 4) * 6
        img = w + np.where(edge, -3.0 + tex, 0.0)
    elif kind == "carbon_edge_parallel":  # carbon covering the top quarter, its edge along the rows
        tex = ndimage.gaussian_filter(rng.normal(0, 1, shape), 4) * 6
        img = w + np.where(yy < 0.25 * ny, -2.5 + tex, 0.0)
    elif kind == "contamination":       # an opaque-ish blob touching the right edge
        blob = ((yy - 0.5 * ny) ** 2 + (xx - nx) ** 2) < (0.3 * ny) ** 2
        img = w * np.where(blob, 0.6, 1.0) + np.where(blob, -8.0, 0.0)
    else:
        raise ValueError(kind)
    return (img * 3.0 + 100.0).astype(np.float32)


def band_fill(kind, depth, length, edge_line, rng, sd, mean):
    """Band pixels (depth x length; row 0 is the outermost line), as motion correction leaves them."""
    if kind == "flat":
        return np.full((depth, length), mean) + rng.normal(0, 0.01 * sd, (depth, length))
    if kind == "zero":
        return np.zeros((depth, length))
    if kind == "smeared":               # the last valid line repeated outwards, fading to the mean
        fade = np.linspace(1.0, rng.uniform(0.0, 1.0), depth)[::-1, None]
        return mean + (edge_line[None, :] - mean) * fade
    if kind == "striped":               # a short random pattern, the same on every line, faint noise
        period = int(rng.integers(2, 24))
        pattern = rng.normal(mean, sd * rng.uniform(0.3, 1.5), period)
        return np.resize(pattern, length)[None, :] + rng.normal(0, 0.05 * sd, (depth, length))
    raise ValueError(kind)


def add_band(img, edge, depth, kind, rng):
    ny, nx = img.shape
    sd, mean = float(img.std()), float(img.mean())
    if edge == "top":
        img[:depth] = band_fill(kind, depth, nx, img[depth], rng, sd, mean)
    elif edge == "bottom":
        img[ny - depth:] = band_fill(kind, depth, nx, img[ny - depth - 1], rng, sd, mean)[::-1]
    elif edge == "left":
        img[:, :depth] = band_fill(kind, depth, ny, img[:, depth], rng, sd, mean).T
    else:
        img[:, nx - depth:] = band_fill(kind, depth, ny, img[:, nx - depth - 1], rng, sd, mean).T[:, ::-1]
    return img


# ---------------------------------------------------------------------------------------------- bands
@pytest.mark.parametrize("kind", ["flat", "zero", "smeared", "striped"])
@pytest.mark.parametrize("edge", EDGES)
def test_band_found_on_each_edge(kind, edge):
    rng = np.random.default_rng(zlib.crc32(f"{kind}-{edge}".encode()))  # str hash() varies per process
    for depth in (4, 13, 40, 90):
        img = add_band(micrograph("reallike", (512, 544), seed=depth), edge, depth, kind, rng)
        r = R.find_regions(img)
        w = r.band_widths()
        # a smeared band's first valid line repeats the band: one line more is expected there
        assert depth <= w[edge] <= depth + 2 if kind == "smeared" else abs(w[edge] - depth) <= 1, (depth, w)
        assert all(v == 0 for e, v in w.items() if e != edge), (depth, w)
        m = r.mask()
        ny, nx = img.shape
        assert abs(m.sum() - depth * (nx if edge in ("top", "bottom") else ny)) <= 2 * max(ny, nx)


@pytest.mark.parametrize("background", ["noise", "gradient", "particles", "lowpass"])
def test_bands_on_several_edges_at_once(background):
    rng = np.random.default_rng(7)
    img = micrograph(background, (600, 620), seed=3)
    truth = {"top": 17, "bottom": 6, "left": 33, "right": 0}
    add_band(img, "top", 17, "striped", rng)
    add_band(img, "bottom", 6, "flat", rng)
    add_band(img, "left", 33, "smeared", rng)
    w = R.find_regions(img).band_widths()
    for e in EDGES:
        assert truth[e] <= w[e] <= truth[e] + 2, (e, w)


def test_empiar_like_striped_padding():
    """MotionCor2-style padding as in EMPIAR micrographs: a short random pattern (a few px) repeated across
    the band, the same on every line, with faint noise; on a correlated, particle-laden micrograph with
    hot pixels (which must not break the band)."""
    rng = np.random.default_rng(10028)
    img = micrograph("reallike", (1024, 1024), seed=5)
    img += micrograph("particles", (1024, 1024), seed=6) - 100.0
    ny, nx = img.shape
    sd, mean = img.std(), img.mean()
    for edge, depth, period in (("top", 37, 5), ("right", 22, 11)):
        pattern = rng.normal(mean, 0.8 * sd, period)
        length = nx if edge == "top" else ny
        band = np.resize(pattern, length)[None, :] + rng.normal(0, 0.03 * sd, (depth, length))
        if edge == "top":
            img[:depth] = band
        else:
            img[:, nx - depth:] = band.T
    hot = rng.integers(0, ny, 60), rng.integers(0, nx, 60)
    img[hot] = mean + 40 * sd
    r = R.find_regions(img)
    w = r.band_widths()
    assert abs(w["top"] - 37) <= 1 and abs(w["right"] - 22) <= 1, w
    assert w["bottom"] == 0 and w["left"] == 0, w
    assert r.kinds["top"] == "repeat" and r.kinds["right"] == "repeat"
    expected = (37 * nx + 22 * (ny - 37)) / (ny * nx)
    assert r.excluded_fraction() == pytest.approx(expected, abs=2 * 1024 / (ny * nx))


def test_flat_band_with_hot_pixels_is_whole():
    rng = np.random.default_rng(3)
    img = add_band(micrograph("noise", (768, 768), seed=1), "right", 23, "flat", rng)
    img[rng.integers(0, 768, 200), rng.integers(0, 768, 200)] = 100 + 150.0
    assert R.find_regions(img).band_widths()["right"] == 23


def test_band_on_an_integer_micrograph():
    rng = np.random.default_rng(4)
    img = add_band(micrograph("reallike", (512, 512), seed=2), "bottom", 20, "striped", rng)
    img8 = np.clip(np.rint((img - 100) * 4 + 128), 0, 255).astype(np.uint8)
    assert abs(R.find_regions(img8).band_widths()["bottom"] - 20) <= 1


# ------------------------------------------------------------------------------------- clean: no loss
@pytest.mark.parametrize("kind", ["noise", "lowpass", "lowpass3", "reallike", "gradient", "particles",
                                  "carbon", "carbon_edge_parallel", "contamination"])
@pytest.mark.parametrize("shape", [(512, 512), (600, 620), (1024, 960)])
def test_clean_micrograph_loses_no_area(kind, shape):
    for seed in range(3):
        img = micrograph(kind, shape, seed=seed)
        r = R.find_regions(img)
        assert r.band_widths() == {e: 0 for e in EDGES}, (seed, r.describe())
        assert r.dead_px == 0, (seed, r.describe())
        assert r.excluded_fraction() == 0.0
        assert not R.find_invalid_regions(img).any()


def test_clean_with_hot_pixels_and_gain_stripes_loses_no_area():
    rng = np.random.default_rng(0)
    img = micrograph("reallike", (768, 768), seed=9)
    img[rng.integers(0, 768, 150), rng.integers(0, 768, 150)] = 100 + 120.0   # hot pixels, some on edges
    img[0, ::97] = 100 + 200.0
    img[300:302] += 4.0                 # gain-reference stripes, one of them on an edge line
    img[:, 766:768] -= 3.0
    assert R.find_regions(img).excluded_fraction() == 0.0


def test_tiny_or_constant_micrographs():
    assert not R.find_invalid_regions(np.zeros((32, 40), np.float32)).any()  # too small to analyse
    m = R.find_invalid_regions(np.full((256, 256), 7.0, np.float32))
    assert m.all()                      # all of it is constant: nothing to pick


# ------------------------------------------------------------------------------------------ dead areas
def test_dead_block_found_and_tight():
    img = micrograph("reallike", (1024, 1024), seed=11)
    y0, y1, x0, x1 = 300, 420, 517, 690
    img[y0:y1, x0:x1] = 0.0
    r = R.find_regions(img)
    assert r.band_widths() == {e: 0 for e in EDGES}
    m = r.mask()
    block = np.zeros_like(m)
    block[y0:y1, x0:x1] = True
    assert m[block].mean() > 0.9                          # most of the block found
    outside = m & ~ndimage.binary_dilation(block, iterations=8)
    assert outside.sum() == 0                             # nothing more than a fine cell beyond it
    assert r.dead_px == pytest.approx(block.sum(), rel=0.15)


def test_dead_block_at_an_edge_is_not_a_band():
    img = micrograph("noise", (768, 768), seed=2)
    img[:60, 300:420] = 100.0           # a dead patch touching the top edge in the middle
    r = R.find_regions(img)
    assert r.top == 0                   # the rest of the top rows is fine
    assert r.mask()[:56, 304:416].all()  # every 8x8 cell wholly inside the patch
    assert r.mask()[:, :250].sum() == 0 and r.mask()[:, 470:].sum() == 0


def test_non_finite_values_are_invalid():
    img = micrograph("noise", (512, 512), seed=4)
    img[100:164, 200:264] = np.nan
    img[400, 400] = np.inf
    r = R.find_regions(img)
    m = r.mask()
    assert m[100:164, 200:264].all()
    assert m[400, 400]
    assert m.mean() < 0.05


# --------------------------------------------------------------------------------- distances, summary
def test_near_bands_is_exact():
    r = R.InvalidRegions(shape=(200, 300), top=10, right=20)
    x = np.array([150.0, 150.0, 150.0, 279.0, 274.0, 273.0, 150.0])
    y = np.array([9.0, 15.0, 16.0, 100.0, 100.0, 100.0, 199.0])
    # top rows 0..9 and columns 280..299 invalid; distance 6
    assert r.near(x, y, 6).tolist() == [True, True, False, True, True, False, False]
    assert r.near(x, y, 0).tolist() == [True, False, False, False, False, False, False]
    assert R.near_invalid(r, x, y, 6).tolist() == R.near_invalid(r.mask(), x, y, 6).tolist()
    d = R.dilate_invalid(r, 6)
    assert d[:16].all() and not d[16:, :274].any() and d[:, 274:].all()
    assert np.array_equal(d, R.dilate_invalid(r.mask(), 6))


def test_near_dead_area():
    img = micrograph("noise", (512, 512), seed=8)
    img[200:264, 200:264] = 0.0
    r = R.find_regions(img)
    x = np.array([230.0, 280.0, 300.0, 330.0])          # inside; 16, 36 and 66 px right of the block
    y = np.full(4, 230.0)
    assert r.near(x, y, 0).tolist() == [True, False, False, False]
    assert r.near(x, y, 20).tolist() == [True, True, False, False]
    assert r.near(x, y, 40).tolist() == [True, True, True, False]
    # the full-mask path agrees (the fine grid errs by at most a cell towards exclusion)
    assert R.near_invalid(r.mask(), x, y, 20).tolist() == [True, True, False, False]
    grown = R.dilate_invalid(r, 20)
    assert grown[230, 283] and not grown[230, 300]


def test_excluded_fraction_and_summary():
    r = R.InvalidRegions(shape=(100, 100), top=10)
    assert r.excluded_fraction() == pytest.approx(0.10)
    r.left = 10
    assert r.excluded_fraction() == pytest.approx(0.19)
    assert R.excluded_fraction(r.mask()) == pytest.approx(0.19)
    assert r.excluded_fraction(distance_px=5) == pytest.approx(1 - 0.85 * 0.85)
    s = r.summary()
    assert s["top"] == 10 and s["left"] == 10 and s["dead_px"] == 0
    assert s["excluded_fraction"] == pytest.approx(0.19)
    assert "19.00%" in r.describe()


def test_save_mask_png(tmp_path):
    rng = np.random.default_rng(1)
    img = add_band(micrograph("noise", (300, 280), seed=1), "left", 20, "flat", rng)
    r = R.find_regions(img)
    out = tmp_path / "qc" / "mic_mask.png"
    R.save_mask_png(out, img, r, title="left 20 px")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["mic_mask.png"]   # no temporary left
    from matplotlib.image import imread
    pix = imread(out)
    h, w = pix.shape[:2]
    left, right = pix[h // 2, : w * 5 // 280, :3].mean(axis=0), pix[h // 2, w // 2, :3]
    assert left[0] > left[1] + 0.2                       # the band is tinted red
    assert abs(right[0] - right[1]) < 0.05               # the interior is grey


def test_the_network_region_is_the_rectangle_inside_the_bands_when_it_holds_two_diameters():
    from hydrapicker import defaults
    from hydrapicker.regions import InvalidRegions, to_region

    r = InvalidRegions(shape=(300, 400), top=20, left=35, right=5)
    rows, cols = r.network_region(diameter_px=50)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (20, 300, 35, 395) and defaults.CROP_BANDS
    assert r.network_region(diameter_px=141) is None          # 280 rows < two diameters: all of it
    assert InvalidRegions(shape=(300, 400)).network_region(10) is None   # no bands
    xy = np.array([[34.4, 100.0], [34.6, 100.0], [394.4, 299.4], [394.6, 50.0], [200.0, 19.6]])
    assert np.allclose(to_region(xy, (rows, cols)), [[-0.4, 80.0], [359.4, 279.4], [165.0, -0.4]])
