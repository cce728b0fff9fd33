"""The non-particles real micrographs carry: vesicles, ice crystals, gold, rimmed contamination, thin carbon,
clumps of other proteins, border bands, gain stripes, hot and dead pixels. None of them is ever in the truth.

Every artefact is drawn from its own random stream ``[seed, index, 31337]``, so a spec whose artefact fields
are all zero simulates exactly the micrographs it did before these artefacts existed.

Two stages, called by :func:`hydrapicker.simulate.micrograph.simulate_micrograph`:

* :func:`add_objects` (before particles are placed, on the padded canvas): phase objects (through the CTF)
  and amplitude objects (added after it), the opaque ones marked in the contamination mask so that no
  particle is placed under them.
* :func:`add_detector_defects` (on the final image): motion-correction border bands (flat, a smeared edge
  line, striped padding), gain-reference stripes, hot and dead pixels; returns the mask of the pixels the
  bands overwrote, so that truth centres in them are dropped.

Sizes: vesicles 200-2000 A across (bilayer 40 A with two dense head-group layers), gold beads 50-200 A,
ice crystals 0.5-6 particle diameters (hexagonal or irregular polygons, sharp edges), contamination
1-10 diameters with a bright or dark rim 1-4 px wide, clumps of other proteins 1-5 diameters.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import noise as nz

STREAM = 31337
BORDER_KINDS = ("flat", "smeared", "striped")


def artefact_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), STREAM])


def any_objects(spec) -> bool:
    return bool(spec.vesicles or spec.ice_crystals or spec.gold or spec.p_thin_carbon or spec.rim_contamination
                or spec.other_aggregates)


def any_defects(spec) -> bool:
    return bool(spec.p_border or spec.p_gain_stripes or spec.p_hot_pixels)


def is_clean(spec) -> bool:
    """No artefact of this module and no junk-only micrographs (the base simulator's contamination and
    aggregates may be there)."""
    return not (any_objects(spec) or any_defects(spec) or spec.p_junk_only)


@dataclass
class CanvasLayers:
    """The maps :func:`add_objects` adds to (all canvas-shaped float32, modified in place)."""

    background_amp: np.ndarray   # amplitude in noise-std units, after the CTF (negative = darker)
    phase_extra: np.ndarray      # phase objects in protein-equivalent thickness (A)
    struct_amp: np.ndarray       # local amplitude of the structural noise
    contam: np.ndarray           # soft opaque mask: no particle centre where > 0.5
    occupied: np.ndarray         # soft mask: particles avoid it (but it is not opaque)
    lumps: list = field(default_factory=list)  # (x, y, w) pseudo-atom arrays of other proteins' clumps
    counts: dict = field(default_factory=dict)
    marks: np.ndarray = None     # optional record of where non-opaque objects lie (vesicle shells); read only
                                 # for training weights (:func:`hydrapicker.simulate.micrograph.artefact_mask`)


def _box(shape, cx, cy, R):
    ny, nx = shape
    y0, y1 = int(max(0, np.floor(cy - R))), int(min(ny, np.ceil(cy + R) + 1))
    x0, x1 = int(max(0, np.floor(cx - R))), int(min(nx, np.ceil(cx + R) + 1))
    if y1 <= y0 or x1 <= x0:
        return None
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
    return (slice(y0, y1), slice(x0, x1)), xx, yy


def _shell(r, R, t):
    """Projected path length through a spherical shell of outer radius R and thickness t at radius r."""
    outer = np.sqrt(np.clip(R * R - r * r, 0, None))
    inner = np.sqrt(np.clip((R - t) ** 2 - r * r, 0, None))
    return outer - inner


def vesicle(layers, rng, cx, cy, R_px, px, nested_ok=True, caps=True):
    """A lipid bilayer vesicle: two head-group shells (10 A) 30 A apart; sometimes a second one inside.
    ``caps=False`` (an experiment's: ``benchmarks/experiments/junk_variants.py``): the membrane ring alone, not
    the bilayer's face-on caps inside it; the same random draws and marks."""
    got = _box(layers.phase_extra.shape, cx, cy, R_px + 2)
    if got is None:
        return 0
    sl, xx, yy = got
    r = np.sqrt(xx * xx + yy * yy)
    head, gap = 10.0 / px, 30.0 / px
    dens = rng.uniform(0.5, 1.2)
    proj = 2 * (_shell(r, R_px, head) + _shell(r, R_px - gap, head)) * px  # in A of path length
    proj += 0.3 * 2 * _shell(r, R_px - head, max(gap - head, 0.5 / px)) * px
    if layers.marks is not None:
        np.maximum(layers.marks[sl], (proj > 0).astype(np.float32), out=layers.marks[sl])
    if not caps:
        proj[r < R_px - gap - head] = 0.0
    layers.phase_extra[sl] += (dens * proj).astype(np.float32)
    n = 1
    if nested_ok and rng.random() < 0.3 and R_px * px > 400:
        Ri = R_px * rng.uniform(0.4, 0.8)
        off = (R_px - Ri) * rng.uniform(0, 0.8)
        a = rng.uniform(0, 2 * np.pi)
        n += vesicle(layers, rng, cx + off * np.cos(a), cy + off * np.sin(a), Ri, px, nested_ok=False, caps=caps)
    return n


def _polygon_mask(xx, yy, verts, edge_px):
    """Soft mask of a convex polygon (vertices counter-clockwise around the origin)."""
    d = np.full(xx.shape, -np.inf, np.float32)
    for (x0, y0), (x1, y1) in zip(verts, np.roll(verts, -1, axis=0)):
        nxv, nyv = y1 - y0, -(x1 - x0)  # outward normal of a counter-clockwise edge
        nrm = np.hypot(nxv, nyv) + 1e-9
        d = np.maximum(d, ((xx - x0) * nxv + (yy - y0) * nyv) / nrm)
    return 1.0 / (1.0 + np.exp(np.clip(d / edge_px, -50, 50)))


def ice_crystal(layers, rng, cx, cy, R_px):
    """A sharp-edged, strongly scattering ice crystal: a hexagon or an irregular convex polygon."""
    if rng.random() < 0.5:
        a = rng.uniform(0, np.pi / 3) + np.arange(6) * np.pi / 3
        rad = R_px * rng.uniform(0.85, 1.0, 6)
    else:
        k = int(rng.integers(4, 9))
        a = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = R_px * rng.uniform(0.5, 1.0, k)
    verts = np.stack([rad * np.cos(a), rad * np.sin(a)], 1)
    got = _box(layers.phase_extra.shape, cx, cy, R_px + 4)
    if got is None:
        return 0
    sl, xx, yy = got
    m = _polygon_mask(xx, yy, verts, rng.uniform(0.4, 1.2)).astype(np.float32)
    # bend contours inside the crystal: smooth stripes of changing diffraction contrast
    ang = rng.uniform(0, np.pi)
    stripes = np.cos((xx * np.cos(ang) + yy * np.sin(ang)) * 2 * np.pi / max(3.0, R_px * rng.uniform(0.2, 0.8)))
    sign = -1.0 if rng.random() < 0.85 else 1.0
    layers.background_amp[sl] += (sign * rng.uniform(3.0, 12.0) * m * (1 + 0.3 * stripes)).astype(np.float32)
    layers.phase_extra[sl] += (rng.uniform(100, 500) * m).astype(np.float32)
    np.maximum(layers.contam[sl], m, out=layers.contam[sl])
    return 1


def gold_bead(layers, rng, cx, cy, R_px):
    """A dense colloidal gold sphere: opaque, with the CTF's fringes around it (strong phase object)."""
    got = _box(layers.phase_extra.shape, cx, cy, R_px + 3)
    if got is None:
        return 0
    sl, xx, yy = got
    r = np.sqrt(xx * xx + yy * yy)
    m = (1.0 / (1.0 + np.exp(np.clip((r - R_px) / 0.5, -50, 50)))).astype(np.float32)
    layers.background_amp[sl] -= (rng.uniform(8.0, 20.0) * m).astype(np.float32)
    layers.phase_extra[sl] += (8.0 * 2 * np.sqrt(np.clip(R_px ** 2 - r * r, 0, None))).astype(np.float32)
    np.maximum(layers.contam[sl], m, out=layers.contam[sl])
    return 1


def rimmed_contamination(layers, rng, cx, cy, R_px):
    """Ice contamination with a bright or dark rim (Fresnel fringe / thinner ice around it)."""
    shape = layers.phase_extra.shape
    m, (y0, y1, x0, x1) = nz.blob_mask(shape, rng, cx, cy, R_px, irregularity=rng.uniform(0.05, 0.4),
                                       edge_px=rng.uniform(0.5, 2.0))
    if m.size == 0:
        return 0
    w = rng.uniform(1.0, 4.0)
    sl = (slice(y0, y1), slice(x0, x1))
    # the rim: a band just outside the blob's edge, from the blob's own mask blurred outwards
    from scipy.ndimage import gaussian_filter
    halo = np.clip(gaussian_filter(m, w) * 2.0, 0, 1) - m
    rim = np.clip(halo, 0, 1).astype(np.float32)
    layers.background_amp[sl] -= (rng.uniform(2.0, 10.0) * m).astype(np.float32)
    layers.background_amp[sl] += (rng.choice([-1.0, 1.0]) * rng.uniform(1.0, 4.0) * rim).astype(np.float32)
    layers.phase_extra[sl] += (rng.uniform(50, 400) * m).astype(np.float32)
    np.maximum(layers.contam[sl], m, out=layers.contam[sl])
    np.maximum(layers.occupied[sl], rim, out=layers.occupied[sl])
    return 1


def thin_carbon(layers, rng, px, film=True, noise=True):
    """Continuous thin carbon (20-100 A) over all or part of the field: particles sit on it and are real
    particles; it adds granular structural noise and a soft step where it ends. ``film=False`` or
    ``noise=False`` (an experiment's: ``benchmarks/experiments/junk_variants.py``): without the film's phase
    and amplitude, or without its noise; the same random draws."""
    shape = layers.phase_extra.shape
    if rng.random() < 0.5:
        region = np.ones(shape, np.float32)
    else:
        with np.errstate(over="ignore"):
            region = nz.carbon_mask(shape, rng, edge_px=rng.uniform(0.5, 3.0))
    t = rng.uniform(20, 100)
    texture = nz.smooth_field(shape, rng, n_waves=16, min_wavelength=0.02 * max(shape))
    amplitude, extra_noise = rng.uniform(0.1, 0.6), rng.uniform(0.2, 0.8)
    if film:
        layers.phase_extra += (t * region * (1 + 0.2 * texture)).astype(np.float32)
        layers.background_amp -= (amplitude * region).astype(np.float32)
    if noise:
        layers.struct_amp += (extra_noise * region).astype(np.float32)
    return 1


def other_protein_clump(layers, rng, cx, cy, R_px, d_px):
    """A clump of other, smaller proteins and denatured material (1-5 particle diameters): pseudo-atoms."""
    k = int(rng.integers(5, 40))
    for _ in range(k):
        r = 0.5 * d_px * rng.uniform(0.15, 0.5)
        n_at = 60
        p = rng.standard_normal((n_at, 3))
        p = p / np.linalg.norm(p, axis=1, keepdims=True) * rng.random((n_at, 1)) ** (1 / 3) * r
        ox, oy = rng.normal(0, R_px / 2, 2)
        w = np.full(n_at, rng.uniform(0.6, 1.2) * 4 / 3 * np.pi * r ** 3 / n_at, np.float32)
        layers.lumps.append((p[:, 0] + cx + ox, p[:, 1] + cy + oy, w))
    got = _box(layers.occupied.shape, cx, cy, R_px * 1.5)
    if got is not None:
        sl, xx, yy = got
        layers.occupied[sl] = np.maximum(layers.occupied[sl],
                                         (xx * xx + yy * yy <= (R_px * 1.2) ** 2).astype(np.float32))
    return 1


def add_objects(spec, rng, layers: CanvasLayers, px: float, d_px: float, junk_only: bool) -> None:
    """Draw this micrograph's non-particle objects onto the canvas layers (before particles are placed)."""
    Ny, Nx = layers.phase_extra.shape
    boost = 2.0 if junk_only else 1.0
    c = layers.counts

    def centre():
        return rng.uniform(0, Nx), rng.uniform(0, Ny)

    c["vesicles"] = sum(vesicle(layers, rng, *centre(), np.exp(rng.uniform(np.log(100), np.log(1000))) / px, px)
                        for _ in range(rng.poisson(spec.vesicles * boost)))
    c["ice_crystals"] = sum(ice_crystal(layers, rng, *centre(), 0.5 * d_px * np.exp(rng.uniform(0, np.log(6))))
                            for _ in range(rng.poisson(spec.ice_crystals * boost)))
    n_gold = rng.poisson(spec.gold * boost)
    gold_xy = [centre() for _ in range(n_gold)]
    if n_gold and rng.random() < 0.3:  # a cluster
        x0, y0 = gold_xy[0]
        gold_xy = [(x0 + rng.normal(0, 3 * d_px), y0 + rng.normal(0, 3 * d_px)) for _ in gold_xy]
    c["gold"] = sum(gold_bead(layers, rng, x, y, rng.uniform(25, 100) / px) for x, y in gold_xy)
    c["rim_contamination"] = sum(rimmed_contamination(layers, rng, *centre(),
                                                      0.5 * d_px * np.exp(rng.uniform(0, np.log(10))))
                                 for _ in range(rng.poisson(spec.rim_contamination * boost)))
    c["thin_carbon"] = int(rng.random() < spec.p_thin_carbon) and thin_carbon(layers, rng, px)
    c["other_clumps"] = sum(other_protein_clump(layers, rng, *centre(), 0.5 * d_px * rng.uniform(*spec.clump_diameters),
                                                d_px)
                            for _ in range(rng.poisson(spec.other_aggregates * boost)))


# ------------------------------------------------------------------------------------ detector defects
def _band_fill(kind, band_shape, edge_line, rng, sd, mean):
    """Pixels of one border band (rows x cols along the edge), given the image's last valid line."""
    depth, length = band_shape
    if kind == "flat":
        value = mean if rng.random() < 0.6 else rng.choice([0.0, mean + rng.uniform(-3, 3) * sd])
        return np.full(band_shape, value, np.float32) + rng.normal(0, 0.01 * sd, band_shape).astype(np.float32)
    if kind == "smeared":  # the edge line repeated outwards, fading towards the mean
        fade = np.linspace(1.0, rng.uniform(0.0, 1.0), depth, dtype=np.float32)[:, None]
        return (mean + (edge_line[None, :] - mean) * fade).astype(np.float32)
    # striped padding: a short random pattern along the edge, the same on every line, with faint noise
    period = int(rng.integers(2, 24))
    pattern = rng.normal(mean, sd * rng.uniform(0.3, 1.5), period).astype(np.float32)
    line = np.resize(pattern, length)
    return (line[None, :] + rng.normal(0, 0.05 * sd, band_shape)).astype(np.float32)


def add_detector_defects(spec, rng, img: np.ndarray, d_px: float, counts: dict) -> np.ndarray:
    """Border bands, gain stripes, hot and dead pixels on the final image (in place). Returns the bool
    mask of the pixels a border band replaced."""
    ny, nx = img.shape
    band = np.zeros(img.shape, bool)
    sd, mean = float(img.std()), float(img.mean())
    counts["border_bands"] = []
    if rng.random() < spec.p_border:
        kind = str(rng.choice(list(BORDER_KINDS)))
        n_edges = int(rng.integers(1, 5))
        for edge in rng.permutation(4)[:n_edges]:
            depth = int(np.clip(rng.uniform(0.1, 2.0) * d_px, 4, 0.25 * min(ny, nx)))
            if edge == 0:    # top rows
                img[:depth] = _band_fill(kind, (depth, nx), img[depth], rng, sd, mean)
                band[:depth] = True
            elif edge == 1:  # bottom rows
                img[ny - depth:] = _band_fill(kind, (depth, nx), img[ny - depth - 1], rng, sd, mean)[::-1]
                band[ny - depth:] = True
            elif edge == 2:  # left columns
                img[:, :depth] = _band_fill(kind, (depth, ny), img[:, depth], rng, sd, mean).T[:, ::-1]
                band[:, :depth] = True
            else:            # right columns
                img[:, nx - depth:] = _band_fill(kind, (depth, ny), img[:, nx - depth - 1], rng, sd, mean).T
                band[:, nx - depth:] = True
            counts["border_bands"].append([kind, int(edge), depth])
    counts["gain_stripes"] = 0
    if rng.random() < spec.p_gain_stripes:
        k = int(rng.integers(1, 12))
        for _ in range(k):
            w = int(rng.integers(1, 4))
            amp = rng.uniform(0.3, 2.0) * sd * rng.choice([-1.0, 1.0])
            if rng.random() < 0.5:
                r0 = int(rng.integers(0, ny - w))
                img[r0:r0 + w] += np.float32(amp)
            else:
                c0 = int(rng.integers(0, nx - w))
                img[:, c0:c0 + w] += np.float32(amp)
        counts["gain_stripes"] = k
    counts["hot_pixels"] = 0
    if rng.random() < spec.p_hot_pixels:
        n = int(rng.integers(5, 200))
        iy, ix = rng.integers(0, ny, n), rng.integers(0, nx, n)
        img[iy, ix] = (mean + rng.uniform(8, 50, n) * sd).astype(np.float32)
        dead = int(rng.integers(0, 50))
        img[rng.integers(0, ny, dead), rng.integers(0, nx, dead)] = np.float32(min(0.0, mean - 5 * sd))
        counts["hot_pixels"] = n + dead
    return band
