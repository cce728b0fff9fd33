"""The simulator's junk (hydrapicker.simulate.artefacts): never in the truth, on its own random stream."""
import numpy as np
import pytest

from hydrapicker.simulate import simulate_micrograph
from hydrapicker.simulate.datasets import (clean_version, junk_fields, junk_target_specs, source_dataset_specs,
                                           target_dataset_specs)

ARTEFACTS_OFF = dict(p_junk_only=0.0, vesicles=0.0, ice_crystals=0.0, gold=0.0, rim_contamination=0.0,
                     p_thin_carbon=0.0, other_aggregates=0.0, p_border=0.0, p_gain_stripes=0.0, p_hot_pixels=0.0)


def _small(spec, **kw):
    return spec.replace(shape=(384, 384), **kw)


def test_specs_without_artefacts_are_unchanged_by_the_artefact_stream():
    """A junk spec with every artefact switched off simulates exactly its artefact-free base spec: the
    artefacts draw from their own random stream and touch nothing when off."""
    base = _small(target_dataset_specs()[4])
    junk = _small(junk_target_specs()[0]).replace(**ARTEFACTS_OFF, p_aggregate=base.p_aggregate,
                                                  p_empty=base.p_empty, name=base.name,
                                                  description=base.description)
    a, b = simulate_micrograph(base, 1), simulate_micrograph(junk, 1)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.xy, b.xy)


def test_opaque_junk_never_covers_a_truth_centre_and_junk_only_micrographs_have_no_truth():
    spec = _small(junk_target_specs()[0], ice_crystals=4.0, gold=4.0, rim_contamination=4.0, p_junk_only=0.3)
    seen = {"ice_crystals": 0, "gold": 0, "rim_contamination": 0, "junk_only": 0, "with_particles": 0}
    for i in range(8):
        mic = simulate_micrograph(spec, i)
        for k in ("ice_crystals", "gold", "rim_contamination"):
            seen[k] += mic.info[k]
        if mic.info["junk_only"]:
            seen["junk_only"] += 1
            assert len(mic.xy) == 0
            continue
        seen["with_particles"] += len(mic.xy) > 0
        ix = np.clip(np.round(mic.xy).astype(int), 0, [mic.image.shape[1] - 1, mic.image.shape[0] - 1])
        assert not np.any(mic.contamination_mask[ix[:, 1], ix[:, 0]] > 0.5)
    assert min(seen.values()) > 0, seen  # every kind was drawn at least once, so the checks ran


@pytest.mark.parametrize("kind", ["flat", "smeared", "striped"])
def test_border_bands_replace_their_pixels_and_their_particles_leave_the_truth(kind, monkeypatch):
    from hydrapicker.simulate import artefacts

    spec = _small(junk_target_specs()[0], **{**ARTEFACTS_OFF, "p_border": 1.0}, coverage=(0.3, 0.3))
    monkeypatch.setattr(artefacts, "BORDER_KINDS", (kind,))
    mic = simulate_micrograph(spec, 0)
    twin = simulate_micrograph(clean_version(spec), 0)
    bands = mic.info["border_bands"]
    assert bands and all(b[0] == kind for b in bands)
    ny, nx = mic.image.shape
    m = max(b[2] for b in bands)  # leave out the corners, where two bands overlap
    for _, edge, depth in bands:
        band = [mic.image[:depth], mic.image[ny - depth:], mic.image[:, :depth].T, mic.image[:, nx - depth:].T][edge]
        inner = [mic.image[depth:2 * depth], mic.image[ny - 2 * depth:ny - depth],
                 mic.image[:, depth:2 * depth].T, mic.image[:, nx - 2 * depth:nx - depth].T][edge]
        band, inner = band[:, m:-m], inner[:, m:-m]
        if kind == "flat":
            assert band.std() < 0.05 * inner.std()
        else:  # every line along the band is (nearly) the same line: smeared or striped padding
            along = np.corrcoef(band[0], band[-1])[0, 1] if kind == "striped" else \
                np.corrcoef(band[-1] - band[-1].mean(), band[-2] - band[-2].mean())[0, 1]
            assert along > 0.9
        xy = mic.xy
        coord = [xy[:, 1], ny - 1 - xy[:, 1], xy[:, 0], nx - 1 - xy[:, 0]][edge]
        assert np.all(coord > depth - 1)
        marked = [mic.artefact_mask[:depth], mic.artefact_mask[ny - depth:], mic.artefact_mask[:, :depth],
                  mic.artefact_mask[:, nx - depth:]][edge]
        assert marked.min() == 1.0  # the training weights' mask holds the band
    # the clean twin keeps the same particles, plus those the bands hid
    assert len(twin.xy) > len(mic.xy)
    d = np.hypot(*(mic.xy[:, None, :] - twin.xy[None, :, :]).transpose(2, 0, 1)).min(1)
    assert np.all(d < 1e-9)


def test_clean_twin_has_the_same_particles_and_no_junk():
    spec = _small(junk_target_specs()[1], p_border=0.0)
    for i in range(4):
        mic, twin = simulate_micrograph(spec, i), simulate_micrograph(clean_version(spec), i)
        assert np.array_equal(mic.xy, twin.xy)
        assert mic.info["junk_only"] == twin.info["junk_only"]
        if not mic.info["junk_only"]:
            assert not np.array_equal(mic.image, twin.image)


def test_training_junk_fraction_marks_about_that_many_datasets():
    specs = source_dataset_specs(40, seed=5, junk_fraction=0.7)
    n = sum("junk" in s.description for s in specs)
    assert 20 <= n <= 36
    plain = source_dataset_specs(40, seed=5)
    for s, p in zip(specs, plain):  # the junk draws do not change the rest of a spec
        assert (s.family, s.diameter_A, s.pixel_size, s.shape) == (p.family, p.diameter_A, p.pixel_size, p.shape)
    f = junk_fields(7)
    assert set(f) <= set(specs[0].to_dict())


def test_junk_clumps_put_particle_sized_clumps_on_every_junk_dataset_and_change_nothing_else(monkeypatch):
    from hydrapicker.simulate import artefacts

    specs = source_dataset_specs(12, seed=5, junk_fraction=0.7, junk_clumps=True)
    plain = source_dataset_specs(12, seed=5, junk_fraction=0.7)
    assert any("junk" in s.description for s in specs) and any("junk" not in s.description for s in specs)
    for s, p in zip(specs, plain):
        if "junk" in s.description:
            assert s.other_aggregates >= 1.0 and s.clump_diameters == (0.7, 2.0)
            assert s.replace(other_aggregates=p.other_aggregates, clump_diameters=p.clump_diameters,
                             description=p.description) == p
        else:
            assert s == p
    # the clumps drawn are clump_diameters particle diameters across
    sizes = []
    real = artefacts.other_protein_clump

    def spy(layers, rng, cx, cy, R_px, d_px):
        sizes.append(2 * R_px / d_px)
        return real(layers, rng, cx, cy, R_px, d_px)

    monkeypatch.setattr(artefacts, "other_protein_clump", spy)
    spec = _small(junk_target_specs()[1], **{**ARTEFACTS_OFF, "other_aggregates": 3.0})
    for i in range(3):
        simulate_micrograph(spec.replace(clump_diameters=(0.7, 2.0)), i)
    assert len(sizes) > 3 and min(sizes) >= 0.7 and max(sizes) <= 2.0


def test_small_fraction_makes_more_datasets_small_and_changes_no_other_draw():
    plain = source_dataset_specs(48, seed=15, junk_fraction=0.8)
    small = source_dataset_specs(48, seed=15, junk_fraction=0.8, small_fraction=0.7)
    n_plain = sum(s.diameter_A <= 90 for s in plain)
    n_small = sum(s.diameter_A <= 90 for s in small)
    assert n_small >= 2 * n_plain and n_small >= 8
    for s, p in zip(small, plain):
        assert s.family == p.family
        if s.diameter_A == p.diameter_A:  # only which datasets hold a small protein changes
            assert s == p
        else:
            assert s.diameter_A <= 90 and s.family in ("globular", "multidomain", "flat")
            assert s.replace(diameter_A=p.diameter_A, pixel_size=p.pixel_size) == p


def test_artefact_mask_marks_each_kind_of_junk_and_nothing_on_a_micrograph_without_any():
    """The training weights' mask (SimMicrograph.artefact_mask): vesicles, clumps of other proteins and
    opaque junk are marked where they are drawn; a micrograph without junk has an empty mask."""
    base = _small(junk_target_specs()[0]).replace(**ARTEFACTS_OFF, contamination=0.0, p_carbon=0.0,
                                                 p_aggregate=0.0)
    assert not simulate_micrograph(base, 0).artefact_mask.any()
    for kind in ("vesicles", "other_aggregates", "gold"):
        spec = base.replace(**{kind: 6.0})
        mics = [simulate_micrograph(spec, i) for i in range(3)]
        assert any(m.info[{"other_aggregates": "other_clumps"}.get(kind, kind)] for m in mics)
        marked = [(m.artefact_mask > 0.5).mean() for m in mics]
        drawn = [m.info[{"other_aggregates": "other_clumps"}.get(kind, kind)] for m in mics]
        for frac, n in zip(marked, drawn):
            assert (frac > 0) == (n > 0), (kind, marked, drawn)


def test_junk_weights_weigh_junk_and_half_a_particle_around_it():
    from hydrapicker.train import junk_weights

    mask = np.zeros((200, 200), np.float32)
    mask[80:120, 80:120] = 1.0
    w = junk_weights(mask, (100, 100), 16.0, 3.0)  # prepared at half the size: the junk at 40..59
    assert w.shape == (100, 100) and set(np.unique(w)) == {1.0, 3.0}
    assert w[50, 50] == 3.0 and w[50, 40 - 8] == 3.0 and w[50, 40 - 9] == 1.0 and w[50, 59 + 9] == 1.0
    assert w[10, 10] == 1.0
    assert junk_weights(np.zeros((50, 50), np.float32), (25, 25), 16.0, 3.0) is None
    assert junk_weights(None, (25, 25), 16.0, 3.0) is None


def _layers(shape=(160, 160)):
    from hydrapicker.simulate.artefacts import CanvasLayers

    z = lambda: np.zeros(shape, np.float32)  # noqa: E731
    return CanvasLayers(background_amp=z(), phase_extra=z(), struct_amp=np.ones(shape, np.float32), contam=z(),
                        occupied=z(), marks=z())


def test_thin_carbon_and_vesicle_parts_left_out_change_only_that_part():
    """junk_variants.py's parts: thin carbon without its noise keeps the film's phase and amplitude exactly,
    without the film keeps its noise exactly; a vesicle without caps keeps its ring and marks; the same
    draws in each case (the generator ends in the same state)."""
    from hydrapicker.simulate.artefacts import thin_carbon, vesicle

    def run(fn, **kw):
        layers, rng = _layers(), np.random.default_rng(3)
        fn(layers, rng, **kw)
        return layers, rng.random()

    (full, r0), (film, r1), (noise, r2) = (run(lambda L, g, **k: thin_carbon(L, g, 1.5, **k), **kw)
                                           for kw in ({}, {"noise": False}, {"film": False}))
    assert r0 == r1 == r2
    assert full.struct_amp.max() > 1.1 and full.phase_extra.max() > 10
    assert np.array_equal(film.phase_extra, full.phase_extra) and np.array_equal(film.background_amp, full.background_amp)
    assert np.all(film.struct_amp == 1.0)
    assert np.array_equal(noise.struct_amp, full.struct_amp)
    assert not noise.phase_extra.any() and not noise.background_amp.any()

    (ves, r0), (ring, r1) = (run(lambda L, g, **k: vesicle(L, g, 80.0, 80.0, 60.0, 2.0, **k), **kw)
                             for kw in ({}, {"caps": False}))
    assert r0 == r1 and np.array_equal(ves.marks, ring.marks)
    yy, xx = np.mgrid[:160, :160]
    r = np.hypot(xx - 80.0, yy - 80.0)
    inside, membrane = r < 60 - 20 - 5, r > 60 - 15
    assert ves.phase_extra[inside].min() > 0 and not ring.phase_extra[inside].any()
    assert np.array_equal(ring.phase_extra[membrane], ves.phase_extra[membrane])
