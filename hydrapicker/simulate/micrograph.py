"""Assemble one simulated micrograph: place particles, project, add support/ice/contamination, CTF, noise.

Image formation (weak-phase object, everything in "protein thickness" units):
    phi   = projected pseudo-atoms (+ junk, aggregates, carbon film, contamination)
    image = background(x, y) + irfft(H * rfft(phi)) + structural noise (CTF-filtered, ~1/f) + shot noise
with H = CTF x pseudo-atom Gaussian x B-factor envelope x pixel integration. The noise level is set from the
per-pixel SNR: the mean signal power of an isolated particle inside its disc, over the noise variance.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import fft as sfft

from . import artefacts as art
from . import noise as nz
from .ctf import ctf_2d, freq_grid, gaussian_ft
from .particles import ParticleModel, build_particle
from .projection import footprint_cells, orientation, orientations, splat


@dataclass
class SimMicrograph:
    image: np.ndarray          # float32 (ny, nx)
    xy: np.ndarray             # float64 (N, 2) true centres inside the image, x = column, y = row
    pixel_size: float
    diameter_A: float
    name: str
    info: dict = field(default_factory=dict)
    contamination_mask: np.ndarray | None = None  # float32 (ny, nx) soft 0..1: opaque ice contamination
    artefact_mask: np.ndarray | None = None       # float32 (ny, nx) 0..1: every non-particle (:func:`artefact_mask`)
                                                  # and the border bands
    carbon_mask: np.ndarray | None = None         # float32 (ny, nx) soft 0..1: carbon film (None: no carbon)

    @property
    def diameter_px(self) -> float:
        return self.diameter_A / self.pixel_size


def particle_model(spec) -> ParticleModel:
    return build_particle(spec.family, spec.particle, spec.diameter_A, spec.pixel_size)


def _rotations(rng, n, kappa):
    return orientations(rng, n, kappa)


def _transfer(shape, px, ctf_kw, sigma_A, grid=None):
    kx, ky = grid if grid is not None else freq_grid(shape, px)
    k2 = kx * kx + ky * ky
    h = ctf_2d(shape, px, grid=(kx, ky), **ctf_kw)
    h = h * gaussian_ft(k2, sigma_A) * np.sinc(kx * px) * np.sinc(ky * px)  # atoms, pixel integration
    return h.astype(np.float32), np.sqrt(k2)


def _reference_power(model, px, ctf_kw, rng, n=3) -> float:
    """Mean signal power per pixel inside the disc of an isolated particle (random views)."""
    d = model.diameter_A / px
    b = sfft.next_fast_len(int(2 * d) + 24)
    h, _ = _transfer((b, b), px, ctf_kw, model.sigma_A)
    yy, xx = np.mgrid[:b, :b]
    disc = (xx - b / 2) ** 2 + (yy - b / 2) ** 2 <= (d / 2) ** 2
    p = 0.0
    for _ in range(n):
        r = orientation(rng, 0.0)
        xy = model.xyz @ (r[:2].T / px)
        img = splat((b, b), xy[:, 0] + b / 2, xy[:, 1] + b / 2, model.weight / px ** 2)
        s = sfft.irfft2(sfft.rfft2(img) * h, s=(b, b))
        p += float(np.mean(s[disc] ** 2))
    return p / n


def _junk_atoms(rng, radius_px, n_atoms, thickness_scale):
    """An irregular small lump of density (denatured protein, fragments): points in a random ellipsoid."""
    r = radius_px * rng.uniform(0.5, 1.0, 3)
    p = rng.standard_normal((n_atoms, 3))
    p = p / np.linalg.norm(p, axis=1, keepdims=True) * rng.random((n_atoms, 1)) ** (1 / 3) * r
    vol_px = 4 / 3 * np.pi * np.prod(r)
    return p[:, :2], np.full(n_atoms, thickness_scale * vol_px / n_atoms, np.float32)


class _Occupancy:
    """Occupancy on a coarse grid of cells of a tenth of a diameter (particles avoid carbon, contamination
    and each other)."""

    def __init__(self, canvas, d):
        Ny, Nx = canvas
        self.cell = max(1.0, d / 10)
        self.gshape = (int(np.ceil(Ny / self.cell)), int(np.ceil(Nx / self.cell)))
        self.cells = np.zeros(self.gshape[0] * self.gshape[1], bool)
        # first canvas pixel of each coarse cell: pixel j lies in cell floor(j / cell), as in footprint_cells
        self.row0 = np.flatnonzero(np.diff(np.floor(np.arange(Ny) / self.cell).astype(np.int64), prepend=-1))
        self.col0 = np.flatnonzero(np.diff(np.floor(np.arange(Nx) / self.cell).astype(np.int64), prepend=-1))

    def mask(self, mask, thr=0.5):
        """Mark every coarse cell that has any pixel of ``mask`` above ``thr``. (Subsampling the mask with a
        step of int(cell) px misplaced it by up to a tenth of the canvas whenever cell was not an integer,
        so particles were placed under contamination and on carbon.)"""
        small = np.logical_or.reduceat(np.logical_or.reduceat(mask > thr, self.row0, axis=0), self.col0, axis=1)
        gy, gx = self.gshape
        occ = np.zeros(self.gshape, bool)
        occ[:min(gy, small.shape[0]), :min(gx, small.shape[1])] = small[:gy, :gx]
        np.logical_or(self.cells, occ.ravel(), out=self.cells)


@dataclass
class _Scene:
    """Everything drawn for one micrograph before image formation (canvas-shaped maps, pseudo-atoms)."""

    spec: object
    model: ParticleModel
    rng: np.random.Generator
    arng: np.random.Generator     # the artefacts' own stream
    px: float
    d: float                      # diameter in px
    margin: int
    canvas: tuple
    ctf_kw: dict
    snr: float
    empty: bool
    junk_only: bool
    info: dict
    occ: _Occupancy = None
    background_amp: np.ndarray = None  # in units of the noise std, added after the CTF
    phase_extra: np.ndarray = None     # non-particle phase objects (protein-thickness A)
    struct_amp: np.ndarray = None      # local amplitude of structural noise
    contam: np.ndarray = None          # soft opaque mask (ice contamination, crystals, gold)
    marks: np.ndarray = None           # where other non-particles lie (vesicles, own-particle aggregates)
    carbon: np.ndarray = None
    layers: object = None              # artefacts.CanvasLayers when the spec has artefacts
    xs: list = field(default_factory=list)
    ys: list = field(default_factory=list)
    ws: list = field(default_factory=list)
    truth: list = field(default_factory=list)

    def add_particle(self, rot, cx, cy):
        xy = self.model.xyz @ (rot[:2].T / self.px)
        self.xs.append(xy[:, 0] + cx)
        self.ys.append(xy[:, 1] + cy)
        self.ws.append(self.model.weight / self.px ** 2)


def _new_scene(spec, index) -> _Scene:
    """Imaging parameters of micrograph ``index`` (the first draws of its random stream) and empty maps."""
    rng = np.random.default_rng([int(spec.seed), int(index), 20240611])
    model = particle_model(spec)
    px = float(spec.pixel_size)
    d = spec.diameter_A / px
    ny, nx = spec.shape
    margin = int(np.ceil(0.6 * d)) + 8
    canvas = (sfft.next_fast_len(ny + 2 * margin, real=True), sfft.next_fast_len(nx + 2 * margin, real=True))
    df = rng.uniform(*spec.defocus_um) * 1e4
    astig = rng.uniform(0, spec.astig_um) * 1e4
    ctf_kw = dict(defocus_u_A=df + astig / 2, defocus_v_A=df - astig / 2, angle_deg=rng.uniform(-180, 180),
                  voltage_kV=spec.voltage_kV, cs_mm=spec.cs_mm, amp_contrast=spec.amp_contrast,
                  phase_shift_deg=(rng.uniform(60, 120) if spec.phase_plate else 0.0),
                  bfactor=rng.uniform(*spec.bfactor))
    snr = float(np.exp(rng.uniform(*np.log(spec.snr))))
    empty = rng.random() < spec.p_empty
    arng = art.artefact_rng(spec.seed, index)  # artefacts: their own stream (none drawn: same micrograph)
    junk_only = bool(spec.p_junk_only and arng.random() < spec.p_junk_only)
    empty = empty or junk_only
    info = {"defocus_u_A": ctf_kw["defocus_u_A"], "defocus_v_A": ctf_kw["defocus_v_A"],
            "defocus_angle": ctf_kw["angle_deg"], "phase_shift_deg": ctf_kw["phase_shift_deg"],
            "bfactor": ctf_kw["bfactor"], "snr": snr, "empty": bool(empty), "junk_only": junk_only}
    return _Scene(spec, model, rng, arng, px, d, margin, canvas, ctf_kw, snr, bool(empty), junk_only, info,
                  occ=_Occupancy(canvas, d), background_amp=np.zeros(canvas, np.float32),
                  phase_extra=np.zeros(canvas, np.float32), struct_amp=np.ones(canvas, np.float32),
                  contam=np.zeros(canvas, np.float32), marks=np.zeros(canvas, np.float32))


def _mark_disc(marks, cx, cy, r):
    """Record a disc of radius r (px) in ``marks`` (no random draws: the micrograph does not change)."""
    got = art._box(marks.shape, cx, cy, r)
    if got is not None:
        sl, xx, yy = got
        np.maximum(marks[sl], (xx * xx + yy * yy <= r * r).astype(np.float32), out=marks[sl])


def artefact_mask(sc) -> np.ndarray:
    """Where the scene holds non-particles (canvas-shaped, 0..1): opaque contamination, crystals and gold,
    carbon film, clumps of other proteins, contamination rims, vesicles and aggregates of the dataset's own
    particles; not continuous thin carbon (it may cover the whole field, particles on it are real)."""
    out = np.maximum(sc.contam, sc.marks)
    if sc.carbon is not None:
        np.maximum(out, sc.carbon, out=out)
    if sc.layers is not None:
        np.maximum(out, sc.layers.occupied, out=out)
    return out


def _draw_support(sc: _Scene) -> None:
    """Ice thickness, carbon film, contamination, the artefacts' objects and crystalline ice."""
    spec, rng, canvas, d, px = sc.spec, sc.rng, sc.canvas, sc.d, sc.px
    Ny, Nx = canvas
    # ice thickness: gradient + smooth variations -> darker and noisier where thicker
    thick = spec.ice_gradient * rng.uniform(0, 1) * (0.6 * nz.linear_gradient(canvas, rng)
                                                     + 0.4 * nz.smooth_field(canvas, rng, n_waves=4))
    sc.background_amp -= thick
    sc.struct_amp *= np.sqrt(np.clip(1 + 0.3 * thick, 0.3, None))

    if rng.random() < spec.p_carbon:
        sc.carbon = nz.carbon_mask(canvas, rng, edge_px=max(1.0, 0.3 * 100 / px))
        sc.background_amp -= rng.uniform(0.5, 2.5) * sc.carbon
        sc.phase_extra += rng.uniform(100, 400) * sc.carbon  # film thickness (protein-equivalent A)
        sc.struct_amp += rng.uniform(0.5, 1.5) * sc.carbon
        sc.occ.mask(sc.carbon, 0.2)
    sc.info["carbon"] = sc.carbon is not None

    n_cont = int(rng.poisson(spec.contamination))
    for _ in range(n_cont):
        cx, cy = rng.uniform(0, Nx), rng.uniform(0, Ny)
        rad = 0.5 * d * np.exp(rng.uniform(np.log(0.6), np.log(8.0)))
        m, (y0, y1, x0, x1) = nz.blob_mask(canvas, rng, cx, cy, rad, irregularity=rng.uniform(0.05, 0.4),
                                           edge_px=rng.uniform(0.7, 3.0))
        if m.size == 0:
            continue
        sc.background_amp[y0:y1, x0:x1] -= rng.uniform(2.0, 10.0) * m
        sc.phase_extra[y0:y1, x0:x1] += rng.uniform(50, 400) * m
        np.maximum(sc.contam[y0:y1, x0:x1], m, out=sc.contam[y0:y1, x0:x1])
    if n_cont:
        sc.occ.mask(sc.contam, 0.1)
    sc.info["n_contamination"] = n_cont
    if art.any_objects(spec):
        drawn = (sc.background_amp, sc.phase_extra, sc.struct_amp) if spec.render_artefacts else \
            tuple(np.zeros(canvas, np.float32) for _ in range(3))  # the clean twin: same placement only
        sc.layers = art.CanvasLayers(*drawn, sc.contam, np.zeros(canvas, np.float32), marks=sc.marks)
        art.add_objects(spec, sc.arng, sc.layers, px, d, sc.junk_only)
        sc.occ.mask(sc.contam, 0.1)
        sc.occ.mask(sc.layers.occupied, 0.5)
        sc.info.update(sc.layers.counts)

    sc.info["crystalline_ice"] = bool(rng.random() < spec.p_crystalline)
    if sc.info["crystalline_ice"]:
        patch = np.zeros(canvas, np.float32)
        m, (y0, y1, x0, x1) = nz.blob_mask(canvas, rng, rng.uniform(0, Nx), rng.uniform(0, Ny),
                                           rng.uniform(0.2, 0.6) * max(Ny, Nx), 0.3, 20.0)
        patch[y0:y1, x0:x1] = m
        sc.background_amp += rng.uniform(0.3, 1.2) * patch * nz.crystalline_ice(canvas, rng, px)


def _place_particles(sc: _Scene) -> None:
    """Aggregates of the dataset's own particles (not picked), the particles (the truth), junk lumps."""
    spec, rng, model, px, d, occ = sc.spec, sc.rng, sc.model, sc.px, sc.d, sc.occ
    Ny, Nx = sc.canvas
    # no particle centre under thick contamination (opaque: nothing there can be seen) or on the carbon
    # film; occupancy alone does not guarantee it (a particle may overlap masked cells up to max_overlap)
    hidden = sc.contam if sc.carbon is None else np.maximum(sc.contam, sc.carbon)
    sub = model.xyz[:: max(1, len(model.xyz) // 200)]
    probe = _rotations(rng, 4, spec.pref_kappa)
    area_cells = np.mean([_footprint_area(sub @ (r[:2].T / px), occ.cell) for r in probe])
    mean_area = max(area_cells * occ.cell * occ.cell, 1.0)

    n_agg = int(rng.poisson(1.5)) if (rng.random() < spec.p_aggregate and (sc.junk_only or not sc.empty)) else 0
    for _ in range(n_agg):  # clumps of overlapping particles: not picked
        ax, ay = rng.uniform(0, Nx), rng.uniform(0, Ny)
        k = int(rng.integers(3, 12))
        spread = 0.35 * d * np.sqrt(k)
        _mark_disc(sc.marks, ax, ay, 2 * spread + 0.5 * d)
        for _ in range(k):
            cx, cy = ax + rng.normal(0, spread), ay + rng.normal(0, spread)
            rot = orientation(rng, 0.0)
            sc.add_particle(rot, cx, cy)
            occ.cells[footprint_cells(sub @ (rot[:2].T / px), cx, cy, occ.cell, occ.gshape)] = True
    sc.info["n_aggregates"] = n_agg

    if not sc.empty:
        coverage = rng.uniform(*spec.coverage)
        n_target = int(coverage * Ny * Nx / mean_area)
        tries, chunk = 0, 256
        while len(sc.truth) < n_target and tries < 3 * n_target + 50:
            rots = _rotations(rng, chunk, spec.pref_kappa)
            pos = rng.random((chunk, 2)) * [Nx, Ny]
            subs = np.einsum("mk,njk->nmj", sub, rots[:, :2, :] / px)
            for i in range(chunk):
                if len(sc.truth) >= n_target:
                    break
                tries += 1
                cx, cy = pos[i]
                if hidden[min(int(round(cy)), Ny - 1), min(int(round(cx)), Nx - 1)] > 0.5:
                    continue
                cells = footprint_cells(subs[i], cx, cy, occ.cell, occ.gshape)
                if len(cells) == 0 or occ.cells[cells].mean() > spec.max_overlap:
                    continue
                occ.cells[cells] = True
                sc.add_particle(rots[i], cx, cy)
                sc.truth.append((cx - sc.margin, cy - sc.margin))

    n_junk = int(rng.poisson(spec.junk * max(len(sc.truth), 20 if sc.junk_only else 5)))
    for _ in range(n_junk):
        jxy, jw = _junk_atoms(rng, 0.5 * d * rng.uniform(0.15, 0.45), 60, rng.uniform(0.6, 1.0))
        cx, cy = rng.uniform(0, Nx), rng.uniform(0, Ny)
        sc.xs.append(jxy[:, 0] + cx)
        sc.ys.append(jxy[:, 1] + cy)
        sc.ws.append(jw)
    sc.info["n_junk"] = n_junk
    for lx, ly, lw in (sc.layers.lumps if sc.layers is not None and spec.render_artefacts else ()):
        sc.xs.append(lx)
        sc.ys.append(ly)
        sc.ws.append(lw)


def _form_image(sc: _Scene) -> np.ndarray:
    """Projected density through the CTF, structural and shot noise, background; the stored image."""
    spec, rng, px, canvas, ctf_kw = sc.spec, sc.rng, sc.px, sc.canvas, sc.ctf_kw
    Ny, Nx = canvas
    ny, nx = spec.shape
    if sc.xs:
        phi = splat(canvas, np.concatenate(sc.xs), np.concatenate(sc.ys), np.concatenate(sc.ws).astype(np.float32))
    else:
        phi = np.zeros(canvas, np.float32)
    phi += sc.phase_extra
    h, kmag = _transfer(canvas, px, ctf_kw, sc.model.sigma_A)
    # final low-pass of the whole image (detector MTF / binning filter): amplitude a at Nyquist
    lp = np.exp(np.log(rng.uniform(*spec.nyquist_attenuation)) * (kmag * 2 * px) ** 2).astype(np.float32)
    signal = sfft.irfft2(sfft.rfft2(phi, workers=1) * (h * lp), s=canvas, workers=1)

    sig_power = _reference_power(sc.model, px, ctf_kw, rng)
    sigma_n = np.sqrt(sig_power / sc.snr)
    f_struct = rng.uniform(*spec.structural_fraction)
    # noise made directly in Fourier space: structural (ice/solvent: ~1/f, mostly CTF-modulated, which
    # gives the Thon rings) + shot noise (white), both through the final low-pass; unit variance each
    ice_f = nz.ice_spectrum_filter(kmag, px, rng.uniform(*spec.ice_alpha), k0_A=spec.diameter_A)
    hs = ctf_2d(canvas, px, grid=freq_grid(canvas, px), **ctf_kw)
    c = rng.uniform(0.6, 0.95)
    hs = np.sqrt(c) * hs * np.sqrt(2) + np.sqrt(1 - c)  # CTF-modulated (mean-square ~1) and plain parts
    f_noise = _unit_rms(ice_f * hs * lp, Nx) * np.float32(np.sqrt(f_struct))
    f_shot = _unit_rms(lp, Nx) * np.float32(np.sqrt(1 - f_struct))
    g = rng.standard_normal((2, 2) + f_noise.shape, dtype=np.float32) * np.float32(np.sqrt(Ny * Nx / 2))
    spec_noise = f_noise * (g[0, 0] + 1j * g[0, 1]) + f_shot * (g[1, 0] + 1j * g[1, 1])
    noise = sfft.irfft2(spec_noise, s=canvas, workers=1)

    m = sc.margin
    sl = (slice(m, m + ny), slice(m, m + nx))
    img = signal[sl] + sigma_n * (sc.struct_amp[sl] * noise[sl] + spec.background_scale * sc.background_amp[sl])
    gain = np.exp(rng.uniform(np.log(0.5), np.log(2.0))) / sigma_n
    sc.info.update(structural_fraction=f_struct, signal_power=sig_power, sigma_noise=float(sigma_n))
    return (img * gain + rng.uniform(-2, 10)).astype(np.float32)


def simulate_micrograph(spec, index: int) -> SimMicrograph:
    """Simulate micrograph ``index`` of dataset ``spec`` (deterministic in (spec, index))."""
    sc = _new_scene(spec, index)
    _draw_support(sc)
    _place_particles(sc)
    img = _form_image(sc)
    ny, nx = spec.shape
    xy = np.asarray(sc.truth, np.float64).reshape(-1, 2)
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= nx - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= ny - 1)
    xy = xy[inside]
    m = sc.margin
    sl = (slice(m, m + ny), slice(m, m + nx))
    junk = artefact_mask(sc)[sl].copy()
    if art.any_defects(spec) and spec.render_artefacts:
        band = art.add_detector_defects(spec, sc.arng, img, sc.d, sc.info)
        ix = np.clip(np.round(xy).astype(np.int64), 0, [nx - 1, ny - 1])
        xy = xy[~band[ix[:, 1], ix[:, 0]]]  # a band overwrote these particles: nothing left to pick
        junk[band] = 1.0
    sc.info.update(n_particles=int(len(xy)), n_particles_canvas=len(sc.truth))
    return SimMicrograph(img, xy, sc.px, float(spec.diameter_A), f"{spec.name}_{int(index):03d}", sc.info,
                         contamination_mask=sc.contam[sl].copy(), artefact_mask=junk,
                         carbon_mask=None if sc.carbon is None else sc.carbon[sl].copy())


def _unit_rms(f, nx):
    """Scale an rfft2-domain filter (of an image nx wide) so that filtered unit white noise keeps unit
    variance."""
    w = np.full(f.shape[1], 2.0, np.float32)
    w[0] = 1.0
    if nx % 2 == 0:
        w[-1] = 1.0
    ms = float((f * f * w).sum() / (f.shape[0] * nx))
    return (f / np.sqrt(ms)).astype(np.float32)


def _footprint_area(xy, cell) -> int:
    ix = np.floor(xy[:, 0] / cell).astype(np.int64)
    iy = np.floor(xy[:, 1] / cell).astype(np.int64)
    return len(np.unique((iy - iy.min()) * (ix.max() - ix.min() + 1) + (ix - ix.min())))
