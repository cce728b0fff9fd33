"""Dataset specs (one particle type + its imaging settings) and the on-disk dataset writer.

A written dataset::

    out_dir/Micrographs/<name>_NNN.mrc     float32, pixel size in the header
    out_dir/micrographs.star               RELION 3.1 (data_optics + data_micrographs with CTF columns)
    out_dir/truth/<name>_NNN.star          data_ block, _rlnCoordinateX/_rlnCoordinateY (0-based pixels)
    out_dir/meta.json                      spec, diameter_A/px, pixel size, particle source, per-micrograph info
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import defaults
from .particles import FAMILY_DIAMETER_A, TRAIN_FAMILIES, random_family_params

_TUPLES = ("shape", "defocus_um", "bfactor", "snr", "coverage", "structural_fraction", "ice_alpha",
           "nyquist_attenuation", "clump_diameters")


@dataclass
class DatasetSpec:
    """One simulated dataset. Ranges (lo, hi) are sampled per micrograph."""

    name: str
    seed: int
    family: str
    particle: dict                       # generator parameters (with the generator's own seed)
    diameter_A: float
    pixel_size: float                    # A/px of the written micrographs
    shape: tuple = (768, 768)            # (ny, nx)
    voltage_kV: float = 300.0
    cs_mm: float = 2.7
    amp_contrast: float = 0.1
    defocus_um: tuple = (0.8, 3.0)
    astig_um: float = 0.1               # maximum |dfU - dfV|
    bfactor: tuple = (40.0, 150.0)
    phase_plate: bool = False
    snr: tuple = (0.03, 0.2)            # per-pixel SNR inside an isolated particle's disc
    coverage: tuple = (0.05, 0.35)      # fraction of the area covered by particle footprints
    max_overlap: float = 0.08           # fraction of a particle's footprint that may overlap others
    pref_kappa: float = 0.0             # preferred orientation strength (0 = uniform views)
    p_empty: float = 0.03
    p_carbon: float = 0.2
    contamination: float = 0.4          # mean number of ice contamination blobs per micrograph
    p_crystalline: float = 0.05
    p_aggregate: float = 0.2
    junk: float = 0.1                   # junk lumps per particle
    structural_fraction: tuple = (0.1, 0.5)
    ice_alpha: tuple = (0.0, 1.0)
    ice_gradient: float = 0.7
    nyquist_attenuation: tuple = (0.4, 1.0)  # final low-pass (detector MTF, binning): amplitude at Nyquist
    background_scale: float = 1.0
    # artefacts of hydrapicker.simulate.artefacts (all 0: none; never in the truth)
    p_junk_only: float = 0.0            # micrographs that hold junk and no particles
    vesicles: float = 0.0               # mean lipid vesicles per micrograph (200-2000 A, some nested)
    ice_crystals: float = 0.0           # mean sharp-edged ice crystals per micrograph
    gold: float = 0.0                   # mean gold beads per micrograph
    rim_contamination: float = 0.0      # mean contamination blobs with a bright/dark rim
    p_thin_carbon: float = 0.0          # continuous thin carbon with particles on it
    other_aggregates: float = 0.0       # mean clumps of other proteins per micrograph
    clump_diameters: tuple = (1.0, 5.0)  # size range of those clumps, in particle diameters
    p_border: float = 0.0               # motion-correction border bands (flat, smeared, striped)
    p_gain_stripes: float = 0.0         # gain-reference stripes
    p_hot_pixels: float = 0.0           # hot and dead pixels
    render_artefacts: bool = True       # False: artefacts drawn (same particle placement) but not shown
    description: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def diameter_px(self) -> float:
        return self.diameter_A / self.pixel_size

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in _TUPLES:
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"DatasetSpec.from_dict: unknown keys {sorted(unknown)}")
        d = dict(d)
        for k in _TUPLES:
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def replace(self, **kw) -> "DatasetSpec":
        return dataclasses.replace(self, **kw)


def _loguniform(rng, lo, hi):
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def random_dataset_spec(seed: int, families=None, regime: str = "binned", name=None,
                        small_fraction: float = defaults.SMALL_FRACTION) -> DatasetSpec:
    """A random training dataset: random particle of one of ``families`` (default: the training families)
    and random imaging settings. ``regime='binned'`` (default): particle 20-80 px, micrographs 512-1024 px;
    ``regime='full'``: pixel size 0.6-2.5 A, micrographs up to 4096 px. ``small_fraction``: the share of the
    globular, multidomain and flat datasets that hold a small protein (50-90 A, 50-150 kDa); the same random
    stream whatever its value, so only which datasets are small changes."""
    rng = np.random.default_rng([int(seed), 911])
    families = tuple(families) if families else TRAIN_FAMILIES
    family = str(rng.choice(families))
    params = random_family_params(family, rng)
    lo, hi = FAMILY_DIAMETER_A.get(family, (60, 400))
    if rng.random() < small_fraction and family in ("globular", "multidomain", "flat"):
        lo, hi = 50, 90  # small proteins (50-150 kDa)
    diameter_A = _loguniform(rng, lo, hi)
    if regime == "binned":
        d_px = _loguniform(rng, 20, 80)
        pixel_size = diameter_A / d_px
        side = int(rng.integers(16, 33)) * 32
        aspect = rng.uniform(1.0, 1.4)
        shape = (side, int(min(1024, round(side * aspect / 32) * 32)))
        if rng.random() < 0.5:
            shape = shape[::-1]
    elif regime == "full":
        pixel_size = rng.uniform(0.6, 2.5)
        side = int(rng.choice([2048, 3072, 4096]))
        shape = (side, side) if rng.random() < 0.5 else (int(side * 0.75) // 32 * 32, side)
    else:
        raise ValueError(f"regime must be 'binned' or 'full', not {regime!r}")
    crowded = rng.random() < 0.2
    kappa = 0.0
    if rng.random() < 0.25 or family in ("flat",) and rng.random() < 0.6:
        kappa = _loguniform(rng, 0.5, 8.0)
    pp = bool(rng.random() < 0.1)
    spec = DatasetSpec(
        name=name or f"sim{int(seed):05d}_{family}",
        seed=int(seed), family=family, particle=params, diameter_A=round(diameter_A, 2),
        pixel_size=round(pixel_size, 4), shape=tuple(int(s) for s in shape),
        voltage_kV=float(rng.choice([300.0, 200.0], p=[0.75, 0.25])),
        cs_mm=float(rng.choice([2.7, 2.0, 0.01], p=[0.7, 0.2, 0.1])),
        amp_contrast=float(rng.uniform(0.07, 0.1)),
        defocus_um=tuple(sorted((rng.uniform(0.5, 1.5), rng.uniform(1.8, 3.5)))) if not pp else (0.3, 1.0),
        astig_um=float(rng.uniform(0.0, 0.3)),
        bfactor=(float(rng.uniform(20, 80)), float(rng.uniform(100, 250))),
        phase_plate=pp,
        # binned micrographs have a higher per-pixel SNR than raw ones (real 10.7 A/px ribosomes: ~0.5)
        snr=(tuple(sorted((_loguniform(rng, 0.02, 0.15), _loguniform(rng, 0.2, 1.5)))) if regime == "binned"
             else tuple(sorted((_loguniform(rng, 0.01, 0.05), _loguniform(rng, 0.08, 0.2))))),
        coverage=(0.3, 0.5) if crowded else tuple(sorted((rng.uniform(0.02, 0.1), rng.uniform(0.15, 0.4)))),
        max_overlap=float(rng.uniform(0.1, 0.25) if crowded else rng.uniform(0.0, 0.1)),
        pref_kappa=round(kappa, 3),
        p_empty=float(rng.uniform(0.0, 0.08)),
        p_carbon=float(rng.choice([0.0, 0.2, 0.5], p=[0.4, 0.4, 0.2])),
        contamination=float(_loguniform(rng, 0.05, 2.0)),
        p_crystalline=float(rng.choice([0.0, 0.1], p=[0.8, 0.2])),
        p_aggregate=float(rng.uniform(0.0, 0.4)),
        junk=float(_loguniform(rng, 0.02, 0.4)),
        structural_fraction=tuple(sorted((rng.uniform(0.05, 0.3), rng.uniform(0.3, 0.6)))),
        ice_alpha=tuple(sorted((rng.uniform(0.0, 0.7), rng.uniform(0.7, 1.5)))),
        ice_gradient=float(rng.uniform(0.1, 1.5)),
        nyquist_attenuation=((float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.8, 1.0))) if regime == "binned"
                             else (0.5, 1.0)),
        description=f"training set: {family}" + (", crowded" if crowded else ""),
    )
    return spec


def junk_fields(seed: int, level: float = 1.0) -> dict:
    """Random artefact settings for a junk-laden dataset (its own random stream: the rest of the spec drawn
    from ``seed`` is unchanged). ``level`` scales every rate (1 = about as much junk as a bad real grid)."""
    rng = np.random.default_rng([int(seed), 913])
    on = rng.random(10) < 0.6  # each kind present in about 60 % of the junk datasets
    L = float(level)
    return dict(
        p_junk_only=float(rng.uniform(0.1, 0.35)),
        vesicles=float(on[0] * L * _loguniform(rng, 0.3, 4.0)),
        ice_crystals=float(on[1] * L * _loguniform(rng, 0.2, 3.0)),
        gold=float(on[2] * 0.5 * L * _loguniform(rng, 0.3, 6.0)),
        rim_contamination=float(on[3] * L * _loguniform(rng, 0.2, 3.0)),
        p_thin_carbon=float(on[4] * rng.uniform(0.2, 0.8)),
        other_aggregates=float(on[5] * L * _loguniform(rng, 0.3, 4.0)),
        p_border=float(on[6] * rng.uniform(0.3, 1.0)),
        p_gain_stripes=float(on[7] * rng.uniform(0.2, 0.8)),
        p_hot_pixels=float(on[8] * rng.uniform(0.2, 1.0)),
        p_aggregate=float(rng.uniform(0.2, 0.8)),
        junk=float(_loguniform(rng, 0.05, 0.6)),
        contamination=float(_loguniform(rng, 0.1, 3.0)),
        p_carbon=float(rng.choice([0.0, 0.3, 0.6])),
        p_crystalline=float(rng.choice([0.0, 0.2])),
        ice_gradient=float(rng.uniform(0.3, 2.5)),
    )


def source_dataset_specs(n: int = 32, seed: int = 0, junk_fraction: float = 0.0, junk_clumps: bool = False,
                         small_fraction: float = defaults.SMALL_FRACTION) -> list:
    """``n`` random training datasets (training families only; seeds disjoint from the targets); a
    ``junk_fraction`` of them (chosen by seed) carry the artefacts of :func:`junk_fields`. ``junk_clumps``:
    every one of those also carries 1-4 clumps of other proteins per micrograph, 0.7-2 particle diameters
    across (:func:`clump_fields`). ``small_fraction``: see :func:`random_dataset_spec`."""
    specs = []
    for i in range(n):
        s = seed * 100003 + i
        spec = random_dataset_spec(s, small_fraction=small_fraction)
        if junk_fraction and np.random.default_rng([s, 914]).random() < junk_fraction:
            spec = spec.replace(description=spec.description + ", junk", **junk_fields(s))
            if junk_clumps:
                spec = spec.replace(description=spec.description + ", particle-sized clumps", **clump_fields(s))
        specs.append(spec)
    return specs


def clump_fields(seed: int) -> dict:
    """Clumps of other proteins about a particle's size (the junk a generic head confuses with particles most:
    a zero-shot pick at FOM 0.79 on a particle-free micrograph of j_ribosome), on their own random stream."""
    rng = np.random.default_rng([int(seed), 915])
    return dict(other_aggregates=float(_loguniform(rng, 1.0, 4.0)), clump_diameters=(0.7, 2.0))


def junk_target_specs(level: float = 1.0) -> list:
    """Held-out junk targets: held-out particle shapes (never trained on) with every kind of artefact, a
    third of the micrographs particle-free. Render each with :func:`clean_version` for its clean twin:
    the same particles at the same places (artefacts have their own random stream)."""
    base = {s.name: s for s in target_dataset_specs()}
    out = []
    for i, name in enumerate(("t_proteasome", "t_ribosome", "t_small80kda", "t_dumbbell_pp", "t_micelle")):
        t = base[name]
        jf = dict(p_junk_only=1 / 3, vesicles=1.5 * level, ice_crystals=0.8 * level, gold=0.5 * level,
                  rim_contamination=0.8 * level, p_thin_carbon=0.3, other_aggregates=1.5 * level, p_border=0.6,
                  p_gain_stripes=0.3, p_hot_pixels=0.5)
        out.append(t.replace(name="j" + name[1:], p_empty=0.0, p_aggregate=max(t.p_aggregate, 0.5),
                             description=t.description + "; with junk", **jf))
    return out


def clean_version(spec: DatasetSpec) -> DatasetSpec:
    """The clean twin of a junk dataset: the artefacts of :mod:`.artefacts` are drawn (so particles are
    placed exactly as in the junk micrographs: the same particles at the same places) but not shown. A
    particle-free micrograph's twin is an empty clean micrograph; particles under a border band are in the
    twin's truth (nothing hides them there)."""
    return spec.replace(name=spec.name + "_clean", render_artefacts=False)


def _target(name, family, diameter_A, d_px, desc, shape=(768, 768), **kw) -> DatasetSpec:
    rng = np.random.default_rng([4242, *map(ord, name)])
    params = random_family_params(family, rng)
    return DatasetSpec(name=name, seed=10_000_000 + sum(ord(c) * (i + 1) for i, c in enumerate(name)),
                       family=family, particle=params, diameter_A=float(diameter_A),
                       pixel_size=round(diameter_A / d_px, 4), shape=shape, description=desc, **kw)


def target_dataset_specs() -> list:
    """The held-out target datasets: particle shapes from generators never used for training."""
    return [
        _target("t_small80kda", "t_small", 80.0, 26, "small ~80 kDa two-lobed protein, low contrast",
                snr=(0.03, 0.1), coverage=(0.1, 0.3), contamination=0.3),
        _target("t_rod", "t_rod", 300.0, 64, "elongated: thin 30x300 A rod with a head",
                snr=(0.08, 0.25), coverage=(0.05, 0.2), pref_kappa=2.0),
        _target("t_ferritin_crowded", "t_ferritin", 122.0, 30, "crowded hollow 24-mer (apoferritin-like)",
                snr=(0.1, 0.4), coverage=(0.3, 0.45), max_overlap=0.15, contamination=1.0),
        _target("t_ribosome", "t_ribosome", 290.0, 28, "ribosome-like two-subunit particle, carbon edges",
                snr=(0.2, 0.6), coverage=(0.1, 0.35), p_carbon=0.5, shape=(512, 512)),
        _target("t_proteasome", "t_proteasome", 160.0, 40, "D7 barrel, preferred top views",
                snr=(0.08, 0.25), coverage=(0.1, 0.3), pref_kappa=4.0),
        _target("t_micelle", "t_micelle", 150.0, 36, "membrane protein in a detergent micelle",
                snr=(0.05, 0.15), coverage=(0.1, 0.3), p_aggregate=0.4, junk=0.3),
        _target("t_virus", "t_virus", 450.0, 72, "icosahedral virus with filled core, sparse",
                snr=(0.2, 0.6), coverage=(0.05, 0.2), shape=(1024, 1024), p_carbon=0.3),
        _target("t_dumbbell_pp", "t_dumbbell", 180.0, 45, "two-domain dumbbell, phase plate, low defocus",
                snr=(0.05, 0.2), coverage=(0.1, 0.3), phase_plate=True, defocus_um=(0.3, 0.8)),
    ]


def get_target(name: str) -> DatasetSpec:
    for s in target_dataset_specs():
        if s.name == name:
            return s
    raise KeyError(name)


# ------------------------------------------------------------------------------------------------ writer
def write_dataset(spec: DatasetSpec, out_dir, n_micrographs: int, start: int = 0, log=None) -> Path:
    """Simulate ``n_micrographs`` micrographs of ``spec`` and write them (MRC + STARs + meta.json)."""
    import mrcfile
    import pandas as pd

    from ..atomic import atomic_path, write_text
    from ..coords import write_star
    from .micrograph import particle_model, simulate_micrograph

    out = Path(out_dir)
    (out / "Micrographs").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    rows, per_mic = [], []
    for i in range(start, start + n_micrographs):
        mic = simulate_micrograph(spec, i)
        rel = f"Micrographs/{mic.name}.mrc"
        with atomic_path(out / rel) as tmp:
            with mrcfile.new(tmp, overwrite=True) as m:
                m.set_data(mic.image)
                m.voxel_size = mic.pixel_size
        truth = pd.DataFrame({"rlnCoordinateX": mic.xy[:, 0].astype(float),
                              "rlnCoordinateY": mic.xy[:, 1].astype(float)})
        write_star(out / "truth" / f"{mic.name}.star", {"": truth})
        inf = mic.info
        rows.append((rel, 1, float(inf["defocus_u_A"]), float(inf["defocus_v_A"]), float(inf["defocus_angle"]),
                     float(inf["phase_shift_deg"])))
        per_mic.append({"name": mic.name, **{k: (float(v) if isinstance(v, (np.floating, float)) else v)
                                             for k, v in inf.items()}})
        if log:
            log(f"  {rel}: {len(mic.xy)} particles")
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnMicrographOriginalPixelSize": [float(spec.pixel_size)],
                           "rlnVoltage": [float(spec.voltage_kV)], "rlnSphericalAberration": [float(spec.cs_mm)],
                           "rlnAmplitudeContrast": [float(spec.amp_contrast)],
                           "rlnMicrographPixelSize": [float(spec.pixel_size)]})
    mics = pd.DataFrame(rows, columns=["rlnMicrographName", "rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV",
                                       "rlnDefocusAngle", "rlnPhaseShift"])
    write_star(out / "micrographs.star", {"optics": optics, "micrographs": mics})
    model = particle_model(spec)
    meta = {"spec": spec.to_dict(), "name": spec.name, "diameter_A": float(spec.diameter_A),
            "diameter_px": float(spec.diameter_px), "pixel_size": float(spec.pixel_size),
            "shape": list(spec.shape), "particle_source": model.describe(), "micrographs": per_mic,
            "coordinate_frame": "x=column, y=row of the MRC data array, 0-based pixels",
            "simulator": "hydrapicker.simulate"}
    write_text(out / "meta.json", json.dumps(meta, indent=1))
    return out
