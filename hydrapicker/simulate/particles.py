"""Random pseudo-atomic particle models: clouds of Gaussian pseudo-atoms filling a union of ellipsoids.

A model is built from *blobs* (ellipsoids with a relative density; a negative density carves a cavity),
optionally replicated by a point group (C_n, D_n, T, O, I). Pseudo-atoms are sampled uniformly inside the
union, so the mass follows the volume at protein density (0.81 Da/A^3). Every generator is a pure function
of its parameter dict (which holds its own seed), so a model is reproducible from the dataset metadata.

Training families (``TRAIN_FAMILIES``) and held-out target families (``TARGET_FAMILIES``) use different
generators: the shapes of the held-out targets are never produced by a training generator.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

import numpy as np

PROTEIN_DA_PER_A3 = 0.81  # 1.35 g/cm^3
RESIDUE_DA = 110.0

TRAIN_FAMILIES = ("globular", "multidomain", "elongated", "flat", "ring", "dihedral", "cage", "shell")
TARGET_FAMILIES = ("t_small", "t_rod", "t_ferritin", "t_ribosome", "t_proteasome", "t_micelle",
                   "t_virus", "t_dumbbell")

# typical diameter ranges (A) per training family: (lo, hi)
FAMILY_DIAMETER_A = {
    "globular": (60, 220), "multidomain": (90, 300), "elongated": (120, 450), "flat": (90, 300),
    "ring": (100, 300), "dihedral": (100, 320), "cage": (100, 350), "shell": (200, 500),
}


@dataclass
class ParticleModel:
    """Pseudo-atoms in A, centred on the centre of mass (weighted), z = preferred-view axis."""

    xyz: np.ndarray          # (M, 3) float32, A
    weight: np.ndarray       # (M,) float32, protein-equivalent volume per pseudo-atom (A^3)
    sigma_A: float           # Gaussian width of one pseudo-atom (A)
    diameter_A: float
    volume_A3: float
    family: str
    params: dict = field(default_factory=dict)

    @property
    def mass_kDa(self) -> float:
        return self.volume_A3 * PROTEIN_DA_PER_A3 / 1000.0

    def describe(self) -> dict:
        return {"kind": "pseudo-atomic generator (hydrapicker.simulate.particles)",
                "family": self.family, "params": self.params, "n_pseudo_atoms": int(len(self.xyz)),
                "pseudo_atom_sigma_A": round(float(self.sigma_A), 3),
                "diameter_A": round(float(self.diameter_A), 2),
                "volume_A3": round(float(self.volume_A3), 1), "mass_kDa": round(self.mass_kDa, 1)}


# --------------------------------------------------------------------------------------------- rotations
def axis_angle(axis, angle) -> np.ndarray:
    a = np.asarray(axis, float)
    a = a / np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def random_rotation(rng) -> np.ndarray:
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _closure(gens) -> list:
    ops = [np.eye(3)]
    keys = {tuple(np.round(np.eye(3), 4).ravel())}
    frontier = [np.eye(3)]
    while frontier:
        new = []
        for a in frontier:
            for g in gens:
                b = g @ a
                k = tuple(np.round(b, 4).ravel())
                if k not in keys:
                    keys.add(k)
                    ops.append(b)
                    new.append(b)
        frontier = new
    return ops


@functools.lru_cache(maxsize=64)
def point_group(name: str) -> tuple:
    """Rotation matrices of a point group: 'C7', 'D4', 'T', 'O', 'I' (symmetry axis along z)."""
    if name[0] == "C":
        n = int(name[1:])
        return tuple(axis_angle([0, 0, 1], 2 * np.pi * i / n) for i in range(n))
    if name[0] == "D":
        n = int(name[1:])
        c = [axis_angle([0, 0, 1], 2 * np.pi * i / n) for i in range(n)]
        flip = axis_angle([1, 0, 0], np.pi)
        return tuple(c + [m @ flip for m in c])
    phi = (1 + 5 ** 0.5) / 2
    gens = {"T": [axis_angle([0, 0, 1], np.pi), axis_angle([1, 1, 1], 2 * np.pi / 3)],
            "O": [axis_angle([0, 0, 1], np.pi / 2), axis_angle([1, 1, 1], 2 * np.pi / 3)],
            "I": [axis_angle([0, 0, 1], np.pi), axis_angle([1, 1, 1], 2 * np.pi / 3),
                  axis_angle([0, 1, phi], 2 * np.pi / 5)]}[name]
    return tuple(_closure(gens))


# --------------------------------------------------------------------------------------------- blobs
def _blob(center, radii, rot=None, density=1.0):
    return (np.asarray(center, float), np.asarray(radii, float),
            np.eye(3) if rot is None else np.asarray(rot, float), float(density))


def _symmetrize(blobs, group):
    out = []
    for op in point_group(group):
        for c, r, q, d in blobs:
            out.append((op @ c, r, op @ q, d))
    return out


def _sample_blobs(blobs, n_points, rng, max_tries=60):
    """Uniform points in the union of positive blobs minus negative ones; returns xyz, density, volume."""
    pos = [b for b in blobs if b[3] > 0]
    lo = np.min([c - r.max() for c, r, _, _ in pos], axis=0)
    hi = np.max([c + r.max() for c, r, _, _ in pos], axis=0)
    box_vol = float(np.prod(hi - lo))
    kept, dens, tried, n_in = [], [], 0, 0
    batch = max(4 * n_points, 4096)
    for _ in range(max_tries):
        p = lo + (hi - lo) * rng.random((batch, 3))
        d = np.zeros(batch)
        carved = np.zeros(batch, bool)
        for c, r, q, w in blobs:
            u = ((p - c) @ q) / r
            inside = np.einsum("ij,ij->i", u, u) < 1.0
            if w > 0:
                d = np.where(inside & (d == 0), w, d)
            else:
                carved |= inside
        ok = (d > 0) & ~carved
        tried += batch
        n_in += int(ok.sum())
        kept.append(p[ok])
        dens.append(d[ok])
        if n_in >= n_points:
            break
    xyz = np.concatenate(kept)[:n_points]
    den = np.concatenate(dens)[:n_points]
    volume = box_vol * n_in / tried
    return xyz, den, volume


# --------------------------------------------------------------------------------------------- generators
# Each returns (blobs, group or None, pref_axis_mode) in arbitrary units; the model is rescaled later.
def _lobes(rng, center, scale, k, spread=(0.45, 0.8), size=(0.3, 0.55), density=(0.85, 1.15)):
    out = []
    for _ in range(k):
        v = rng.standard_normal(3)
        v /= np.linalg.norm(v)
        out.append(_blob(center + scale * rng.uniform(*spread) * v,
                         scale * rng.uniform(*size) * rng.uniform(0.7, 1.0, 3),
                         random_rotation(rng), rng.uniform(*density)))
    return out


def _gen_globular(p, rng):
    main = _blob([0, 0, 0], [1.0, rng.uniform(0.7, 1.0), rng.uniform(0.55, 0.95)], random_rotation(rng))
    return [main] + _lobes(rng, np.zeros(3), 1.0, p["n_lobes"]), None


def _gen_multidomain(p, rng):
    blobs, pos = [], np.zeros(3)
    prev_r = rng.uniform(0.5, 1.0)
    for i in range(p["n_domains"]):
        r = rng.uniform(0.45, 1.0)
        if i:
            v = rng.standard_normal(3)
            v /= np.linalg.norm(v)
            pos = pos + v * (prev_r + r) * rng.uniform(0.6, 0.9)
        blobs.append(_blob(pos, r * rng.uniform(0.7, 1.0, 3), random_rotation(rng), rng.uniform(0.85, 1.2)))
        blobs += _lobes(rng, pos, r, int(rng.integers(1, 4)))
        prev_r = r
    return blobs, None


def _gen_elongated(p, rng):
    n, aspect = p["n_segments"], p["aspect"]
    width = 1.0
    step = aspect * width / n
    pos, direction, blobs = np.zeros(3), np.array([1.0, 0, 0]), []
    for _ in range(n):
        blobs.append(_blob(pos, [step * 0.75, width * rng.uniform(0.4, 0.6), width * rng.uniform(0.35, 0.55)],
                           _frame(direction, rng), rng.uniform(0.85, 1.15)))
        bend = rng.standard_normal(3) * p["bend"]
        direction = direction + bend
        direction /= np.linalg.norm(direction)
        pos = pos + direction * step
    return blobs, None


def _frame(direction, rng):
    """A rotation whose first column is ``direction``."""
    d = direction / np.linalg.norm(direction)
    t = rng.standard_normal(3)
    t -= d * (t @ d)
    t /= np.linalg.norm(t)
    return np.stack([d, t, np.cross(d, t)], axis=1)


def _gen_flat(p, rng):
    th = p["thickness"]
    blobs = [_blob([0, 0, 0], [1.0, rng.uniform(0.6, 1.0), th], axis_angle([0, 0, 1], rng.uniform(0, np.pi)))]
    for _ in range(p["n_lobes"]):
        a = rng.uniform(0, 2 * np.pi)
        rr = rng.uniform(0.4, 0.8)
        blobs.append(_blob([rr * np.cos(a), rr * np.sin(a), rng.uniform(-0.3, 0.3) * th],
                           [rng.uniform(0.25, 0.45), rng.uniform(0.2, 0.4), th * rng.uniform(0.8, 1.3)],
                           axis_angle([0, 0, 1], rng.uniform(0, np.pi)), rng.uniform(0.85, 1.15)))
    return blobs, None


def _ring_au(p, rng, radius, height):
    n = p["n"]
    sub = 0.9 * np.pi * radius / n  # half of the arc per subunit, slightly overlapping neighbours
    au = [_blob([radius, 0, 0], [rng.uniform(0.5, 0.8) * radius * 0.5, sub * rng.uniform(0.9, 1.2), height],
                axis_angle([0, 0, 1], rng.uniform(-0.4, 0.4)), 1.0)]
    if rng.random() < 0.6:  # an extra domain per subunit (inner or outer)
        au.append(_blob([radius * rng.uniform(0.6, 1.4), 0, height * rng.uniform(-0.6, 0.6)],
                        [radius * 0.22, sub * 0.7, height * 0.6], random_rotation(rng), rng.uniform(0.9, 1.1)))
    return au


def _gen_ring(p, rng):
    return _symmetrize(_ring_au(p, rng, 1.0, p["height"]), f"C{p['n']}"), f"C{p['n']}"


def _gen_dihedral(p, rng):
    au = [(c + np.array([0, 0, p["height"] * 1.1]), r, q, d) for c, r, q, d in _ring_au(p, rng, 1.0, p["height"])]
    return _symmetrize(au, f"D{p['n']}"), f"D{p['n']}"


def _gen_cage(p, rng):
    g = p["group"]
    v = rng.standard_normal(3)
    v /= np.linalg.norm(v)
    n_sub = len(point_group(g))
    sub = 1.9 / np.sqrt(n_sub)  # lateral size so that subunits tile the sphere
    au = [_blob(v, [p["thickness"], sub * rng.uniform(0.8, 1.1), sub * rng.uniform(0.7, 1.0)],
                _frame(v, rng), 1.0)]
    if rng.random() < 0.5:
        w = v + 0.3 * rng.standard_normal(3)
        au.append(_blob(w / np.linalg.norm(w) * (1 + p["thickness"] * 0.8),
                        [p["thickness"] * 0.6, sub * 0.5, sub * 0.4], random_rotation(rng), 1.0))
    return _symmetrize(au, g), g


def _gen_shell(p, rng):
    t = p["thickness"]
    if p["filled"]:  # packaged nucleic acid: a lower-density core (first blob wins where they overlap)
        blobs = [_blob([0, 0, 0], [1 - t] * 3, None, 0.6), _blob([0, 0, 0], [1, 1, 1], None, 1.0)]
    else:
        blobs = [_blob([0, 0, 0], [1, 1, 1], None, 1.0), _blob([0, 0, 0], [1 - t] * 3, None, -1.0)]
    capsomers = _symmetrize([_blob(np.array([0, 0.526, 0.851]) * (1 + t * 0.3), [t * 0.7, 0.16, 0.16])], "I")
    return blobs + capsomers, "I"


# ---- held-out target generators (never used for training) ----
def _gen_t_small(p, rng):  # kidney-shaped small protein (two lobes + a cleft)
    return [_blob([-0.35, 0, 0], [0.6, 0.55, 0.45], random_rotation(rng)),
            _blob([0.4, 0.1, 0], [0.5, 0.45, 0.42], random_rotation(rng)),
            _blob([0.0, 0.45, 0.1], [0.3, 0.25, 0.25], None, 1.1)], None


def _gen_t_rod(p, rng):  # a thin, slightly bent coiled-coil shaft with a globular head
    blobs, n = [], 14
    for i in range(n):
        x = -1 + 2 * i / (n - 1)
        blobs.append(_blob([x, 0.04 * np.sin(3 * x), 0.03 * np.cos(2 * x)], [0.1, 0.085, 0.08]))
    blobs.append(_blob([1.02, 0.05, 0], [0.2, 0.17, 0.15], random_rotation(rng), 1.1))
    return blobs, None


def _gen_t_ferritin(p, rng):  # octahedral 24-mer of four-helix bundles: a hollow sphere
    v = np.array([0.0, 0.55, 0.83])
    v /= np.linalg.norm(v)
    fr = _frame(np.cross(v, [1, 0, 0]), rng)
    au = []
    for k in range(4):  # 2 x 2 helices, radial thickness ~0.3 of the radius
        off = fr[:, 1] * (k % 2 - 0.5) * 0.22 + v * (k // 2 - 0.5) * 0.2
        au.append(_blob(v * 0.8 + off, [0.3, 0.12, 0.12], fr, 1.0))
    return _symmetrize(au, "O"), "O"


def _gen_t_ribosome(p, rng):  # large subunit with protuberances + flatter small subunit, RNA-dense
    return [_blob([0, 0, -0.2], [0.75, 0.7, 0.55], None, 1.25),
            _blob([0.55, 0.35, 0.0], [0.25, 0.2, 0.3], None, 1.2),
            _blob([-0.5, 0.45, -0.1], [0.22, 0.3, 0.25], None, 1.2),
            _blob([0.1, -0.55, -0.35], [0.3, 0.2, 0.25], None, 1.1),
            _blob([0.1, 0.1, 0.55], [0.6, 0.45, 0.28], axis_angle([0, 0, 1], 0.5), 1.2),
            _blob([0.55, 0.0, 0.6], [0.22, 0.2, 0.2], None, 1.1)], None


def _gen_t_proteasome(p, rng):  # 4 stacked heptameric rings (D7 barrel)
    blobs = []
    for z, r in ((-0.75, 0.85), (-0.25, 0.95), (0.25, 0.95), (0.75, 0.85)):
        blobs += _symmetrize([_blob([r, 0, z], [0.22, 0.36, 0.24])], "C7")
    return blobs, "D7"


def _gen_t_micelle(p, rng):  # membrane protein in a detergent belt (low density) + soluble domain
    return [_blob([0, 0, 0], [1.0, 0.9, 0.45], None, 0.45),            # micelle
            _blob([0, 0, 0], [0.55, 0.5, 0.5], None, 1.0),            # TM domain
            _blob([0.1, 0, 0.85], [0.55, 0.5, 0.4], random_rotation(rng), 1.05),
            _blob([-0.3, 0.2, 1.15], [0.3, 0.3, 0.25], None, 1.0)], None


def _gen_t_virus(p, rng):  # icosahedral capsid with protruding trimers and a filled core
    blobs = [_blob([0, 0, 0], [0.85] * 3, None, 0.65), _blob([0, 0, 0], [1.0] * 3, None, 1.0)]
    tri = _symmetrize([_blob(np.array([0.577, 0.577, 0.577]) * 1.07, [0.1, 0.1, 0.1])], "I")
    return blobs + tri, "I"


def _gen_t_dumbbell(p, rng):  # two globules joined by a thin linker
    return [_blob([-0.6, 0, 0], [0.4, 0.38, 0.35], random_rotation(rng)),
            _blob([0.6, 0, 0], [0.36, 0.33, 0.3], random_rotation(rng), 1.1),
            _blob([0, 0, 0], [0.4, 0.07, 0.07])], None


GENERATORS = {
    "globular": _gen_globular, "multidomain": _gen_multidomain, "elongated": _gen_elongated,
    "flat": _gen_flat, "ring": _gen_ring, "dihedral": _gen_dihedral, "cage": _gen_cage, "shell": _gen_shell,
    "t_small": _gen_t_small, "t_rod": _gen_t_rod, "t_ferritin": _gen_t_ferritin,
    "t_ribosome": _gen_t_ribosome, "t_proteasome": _gen_t_proteasome, "t_micelle": _gen_t_micelle,
    "t_virus": _gen_t_virus, "t_dumbbell": _gen_t_dumbbell,
}


def random_family_params(family: str, rng) -> dict:
    """Generator parameters for ``family`` (they include the generator's own seed)."""
    if family not in GENERATORS:
        raise ValueError(f"unknown particle family {family!r}; known: {', '.join(GENERATORS)}")
    p = {"seed": int(rng.integers(0, 2**31 - 1))}
    if family == "globular":
        p["n_lobes"] = int(rng.integers(2, 9))
    elif family == "multidomain":
        p["n_domains"] = int(rng.integers(2, 6))
    elif family == "elongated":
        p.update(n_segments=int(rng.integers(4, 12)), aspect=float(rng.uniform(2.5, 7.0)),
                 bend=float(rng.uniform(0.0, 0.35)))
    elif family == "flat":
        p.update(thickness=float(rng.uniform(0.18, 0.4)), n_lobes=int(rng.integers(1, 6)))
    elif family in ("ring", "dihedral"):
        p.update(n=int(rng.integers(3, 15) if family == "ring" else rng.integers(2, 9)),
                 height=float(rng.uniform(0.2, 0.6)))
    elif family == "cage":
        p.update(group=str(rng.choice(["T", "O", "I"], p=[0.3, 0.4, 0.3])),
                 thickness=float(rng.uniform(0.12, 0.3)))
    elif family == "shell":
        p.update(thickness=float(rng.uniform(0.08, 0.25)), filled=bool(rng.random() < 0.5))
    return p


def _principal_frame(xyz, w):
    c = xyz - np.average(xyz, axis=0, weights=w)
    cov = (c * w[:, None]).T @ c / w.sum()
    evals, evecs = np.linalg.eigh(cov)  # ascending: smallest variance first
    r = evecs[:, [2, 1, 0]]  # x = longest, z = shortest extent
    if np.linalg.det(r) < 0:
        r[:, 2] *= -1
    return c @ r


def n_pseudo_atoms(volume_A3: float, diameter_px: float, cap: int = 20000) -> int:
    """Residue count, capped by what the pixel size can show (~1 per projected pixel) and for speed."""
    n_res = volume_A3 * PROTEIN_DA_PER_A3 / RESIDUE_DA
    return int(np.clip(min(n_res, 1.0 * diameter_px ** 2), 300, cap))


def _build(family: str, params: dict, diameter_A: float, pixel_size: float) -> ParticleModel:
    rng = np.random.default_rng(params["seed"])
    blobs, group = GENERATORS[family](params, rng)
    # first pass: shape and volume in generator units
    xyz, den, vol = _sample_blobs(blobs, 6000, np.random.default_rng(params["seed"] + 1))
    r = np.linalg.norm(xyz - np.average(xyz, axis=0, weights=den), axis=1)
    extent = 2 * np.quantile(r, 0.995)
    s = diameter_A / extent
    volume = float(vol * s ** 3)
    n = n_pseudo_atoms(volume, diameter_A / pixel_size)
    xyz, den, _ = _sample_blobs(blobs, n, np.random.default_rng(params["seed"] + 2))
    xyz = xyz * s
    w = den * (volume / len(xyz))  # each pseudo-atom carries its share of the protein volume
    if group is None:
        xyz = _principal_frame(xyz, w)
    else:  # keep the symmetry axis along z (preferred views are the top views)
        xyz = xyz - np.average(xyz, axis=0, weights=w)
    spacing = (volume / len(xyz)) ** (1 / 3)
    sigma = max(0.5 * spacing, 1.0)
    return ParticleModel(xyz.astype(np.float32), w.astype(np.float32), float(sigma), float(diameter_A),
                         volume, family, dict(params))


@functools.lru_cache(maxsize=256)
def _build_cached(family, params_json, diameter_A, pixel_size):
    return _build(family, json.loads(params_json), diameter_A, pixel_size)


def build_particle(family: str, params: dict, diameter_A: float, pixel_size: float) -> ParticleModel:
    """The pseudo-atomic model of one particle type (cached; deterministic in its arguments)."""
    return _build_cached(family, json.dumps(params, sort_keys=True), float(diameter_A), float(pixel_size))
