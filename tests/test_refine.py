"""Centre refinement (hydrapicker.refine): the move rule and its bound, the shipped centre head on touching
particles with exact centres, its place on the picking path (tiles, batches, few-shot heads, --no-refine),
and refusals."""
from pathlib import Path

import numpy as np
import pytest

from hydrapicker.refine import MAX_SHIFT_D, OFFSET_CELLS, SHIPPED, refine_positions

QUIET = {"log": None}


def _cold_map(H=40, W=50):
    cmap = np.zeros((3, H, W), np.float32)
    cmap[0] = -12.0  # no centre anywhere
    return cmap


def test_a_pick_moves_to_the_decoded_centre_of_the_hottest_cell_within_reach():
    stride, extent = 2, 16.0
    cmap = _cold_map()
    cmap[0, 10, 12] = 5.0
    cmap[1, 10, 12] = np.arctanh(0.3 / OFFSET_CELLS)   # +0.3 cell in x
    cmap[2, 10, 12] = np.arctanh(-0.2 / OFFSET_CELLS)  # -0.2 cell in y
    centre = np.array([(12 + 0.5 + 0.3) * stride - 0.5, (10 + 0.5 - 0.2) * stride - 0.5])
    reach = MAX_SHIFT_D * extent
    near = centre + np.array([[0.6 * reach, 0.0], [0.0, -0.5 * reach], [0.3 * reach, 0.3 * reach]])
    far = centre + np.array([[2.5 * reach, 0.0]])
    moved = refine_positions(cmap, stride, np.vstack([near, far]), extent)
    np.testing.assert_allclose(moved[:3], np.repeat(centre[None], 3, 0), atol=1e-6)
    np.testing.assert_allclose(moved[3], far[0])  # nothing hot within reach: the pick stays


def test_no_pick_ever_moves_further_than_the_bound():
    rng = np.random.default_rng(0)
    stride, extent = 2, 16.0
    cmap = rng.normal(0, 3, (3, 60, 70)).astype(np.float32)
    cmap[1:] = rng.choice([-20.0, 20.0], (2, 60, 70))  # offsets at their extremes
    xy = np.stack([rng.uniform(-5, 145, 2000), rng.uniform(-5, 125, 2000)], 1)
    moved = refine_positions(cmap, stride, xy, extent)
    step = np.hypot(*(moved - xy).T)
    assert step.max() <= MAX_SHIFT_D * extent + 1e-9
    assert (step > 0.5 * MAX_SHIFT_D * extent).mean() > 0.2  # the bound is what held them, not a lazy map


def _touching(index=0, snr=(0.5, 0.8)):
    """A crowded simulated micrograph (a training family, a seed used nowhere in training) of touching
    particles with exact centres, stored at 16 px per diameter (the detector's own sampling)."""
    from hydrapicker.simulate import simulate_micrograph
    from hydrapicker.simulate.datasets import random_dataset_spec

    spec = random_dataset_spec(777_001, families=("globular",))
    spec = spec.replace(pixel_size=round(spec.diameter_A / 16.0, 4), shape=(512, 512), coverage=(0.45, 0.55),
                        max_overlap=0.15, snr=snr, p_carbon=0.0, contamination=0.0, p_aggregate=0.0,
                        junk=0.0, p_empty=0.0)
    return simulate_micrograph(spec, index), spec


@pytest.fixture(scope="module")
def picker():
    from hydrapicker.picker import Picker

    assert SHIPPED.exists(), "the shipped centre refiner is part of the package"
    p = Picker(device="cpu", refine="shipped", **QUIET)
    assert p.refiner is not None, "the shipped refiner fits the shipped model"
    return p


def test_the_shipped_refiner_brings_touching_particles_back_to_their_exact_centres(picker):
    from scipy.spatial import cKDTree

    from hydrapicker.preprocess import prepare_t, _cpu_tensor

    sim, spec = _touching()
    d_px = spec.diameter_A / spec.pixel_size
    truth = sim.xy
    assert np.median(cKDTree(truth).query(truth, k=2)[0][:, 1]) < 1.1 * d_px, "neighbours touch"
    prepared = prepare_t(_cpu_tensor(sim.image), spec.pixel_size, spec.diameter_A, picker.extent_px)
    cmap = picker._outputs(prepared.image, "generic").cmap
    rng = np.random.default_rng(3)
    start = truth + rng.uniform(-0.2, 0.2, truth.shape) * d_px  # the size of the detector's wrong-cell errors
    inside = np.all((start > d_px) & (start < np.array(sim.image.shape[::-1]) - d_px), axis=1)
    truth, start = truth[inside], start[inside]
    moved = picker.refiner.refine(cmap, prepared.scale_xy, start)
    before, after = np.hypot(*(start - truth).T), np.hypot(*(moved - truth).T)
    assert np.median(before) > 2.0
    assert np.median(after) <= 1.0, f"median error after refinement {np.median(after):.2f} px"
    assert np.mean(after <= 1.0) >= 0.5
    assert np.mean(after < before) >= 0.8


def _picks_xy(p):
    return np.stack([p.x, p.y], axis=1)


def test_picks_are_refined_on_the_picking_path_and_no_refine_keeps_the_detectors_centres(picker, tmp_path):
    from scipy.spatial import cKDTree

    from conftest import write_mrc
    from hydrapicker.metrics import match_greedy
    from hydrapicker.picker import Picker
    from hydrapicker.types import Micrograph

    sim, spec = _touching(2, snr=(0.1, 0.2))  # moderate SNR: the detector's own centres are off
    mic = Micrograph(str(write_mrc(tmp_path / "touching.mrc", sim.image, apix=spec.pixel_size)),
                     pixel_size=spec.pixel_size)
    plain = Picker(device="cpu", refine=False, **QUIET)
    assert plain.refiner is None
    p0 = plain.pick_one(mic, spec.diameter_A)
    p1 = picker.pick_one(mic, spec.diameter_A)
    d_px = spec.diameter_A / spec.pixel_size

    def matched_errors(p):  # each particle's pick under the D/2 rule, highest FOM first (as AP counts them)
        _, m = match_greedy(p, sim.xy, d_px, centre=True)
        return np.hypot(*(_picks_xy(p)[m[m >= 0]] - sim.xy[m >= 0]).T)
    e0, e1 = matched_errors(p0), matched_errors(p1)
    assert np.median(e1) < 0.95 * np.median(e0)
    assert np.mean(e1 <= d_px / 12) > np.mean(e0 <= d_px / 12)
    # every refined pick is a detector pick moved within the bound; suppression may merge some
    d, _ = cKDTree(_picks_xy(p0)).query(_picks_xy(p1))
    assert d.max() <= MAX_SHIFT_D * d_px * 1.01 + 1e-6
    assert len(p1) <= len(p0)
    # tiles and batches read the same centre map as one whole-image pass
    tiled = Picker(device="cpu", tile=160, refine="shipped", **QUIET).pick_one(mic, spec.diameter_A)
    np.testing.assert_allclose(_picks_xy(tiled), _picks_xy(p1), atol=1e-3)
    two = list(Picker(device="cpu", batch=2, refine="shipped", **QUIET).pick([mic, mic], spec.diameter_A))
    np.testing.assert_allclose(_picks_xy(two[1].picks), _picks_xy(p1), atol=1e-3)


def test_a_fine_tuned_head_is_refined_and_another_body_is_not(tmp_path):
    import torch

    from hydrapicker.checkpoint import load_checkpoint, save_checkpoint
    from hydrapicker.errors import UserFacingError
    from hydrapicker.picker import Picker

    net, meta = load_checkpoint(None)
    net.add_head("mine")  # few-shot and adapted heads keep the body frozen
    net.add_head("adapted")
    meta = {**meta, "finetune": {"mine": {"lambda_loc": 1.0}, "adapted": {"lambda_loc": 0.0, "adaptation": {}}}}
    save_checkpoint(tmp_path / "fewshot.pt", net, meta)
    p = Picker(str(tmp_path / "fewshot.pt"), device="cpu", refine="shipped", **QUIET)
    assert p.refiner is not None
    # a few-shot head taught centres from labelled picks keeps them; the generic and adapted heads are refined
    for head, refined in (("mine", False), ("generic", True), ("adapted", True)):
        assert p._refines(head) is refined, head
        grid, cmap, _ = p._outputs(np.zeros((64, 64), np.float32), head)
        assert (cmap is not None) is refined
    with torch.no_grad():
        next(net.body.parameters()).add_(0.01)  # a body trained elsewhere
    save_checkpoint(tmp_path / "other.pt", net, meta)
    from hydrapicker import defaults

    said = []
    assert Picker(str(tmp_path / "other.pt"), device="cpu", log=said.append).refiner is None  # the default
    assert any("another body" in line for line in said) or not defaults.REFINE_CENTRES
    for asked in ("shipped", str(SHIPPED)):  # asked for by name: an error, not a silent other result
        with pytest.raises(UserFacingError, match="another body"):
            Picker(str(tmp_path / "other.pt"), device="cpu", refine=asked, **QUIET)


def test_a_bad_refiner_file_is_a_one_line_error_naming_it(tmp_path, capsys):
    from conftest import write_mrc
    from hydrapicker.cli import main

    mic = write_mrc(tmp_path / "mic.mrc", np.random.default_rng(0).normal(0, 1, (256, 256)), apix=2.0)
    bad = tmp_path / "bad_refiner.pt"
    bad.write_bytes(b"not a torch file")
    rc = main(["pick", "--mics", str(mic), "--diameter", "60", "--refiner", str(bad), "--device", "cpu",
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and "bad_refiner.pt" in err[0] and "--no-refine" in err[0]
    assert not (tmp_path / "out" / "mic_hydra.star").exists()


def test_tta_merges_the_centre_maps_of_all_views_back_into_the_micrographs_frame():
    """With all eight dihedral views the merged centre map is exactly equivariant: the map of the turned
    micrograph is the turned map, its offsets turned with it (a view mapped back wrongly breaks this)."""
    from hydrapicker.picker import Picker
    from hydrapicker.refine import OFFSET_CELLS

    rng = np.random.default_rng(5)
    img = rng.normal(0, 1, (96, 96)).astype(np.float32)
    p = Picker(device="cpu", tta=8, refine="shipped", **QUIET)
    c1 = p._outputs(img, "generic").cmap
    c2 = p._outputs(np.ascontiguousarray(np.rot90(img)), "generic").cmap
    dec = lambda c: np.tanh(c.astype(np.float64)) * OFFSET_CELLS  # noqa: E731
    np.testing.assert_allclose(c2[0], np.rot90(c1[0]), atol=1e-3)
    # a counter-clockwise quarter turn takes (dx, dy) to (dy, -dx)
    np.testing.assert_allclose(dec(c2[1]), np.rot90(dec(c1[2])), atol=1e-3)
    np.testing.assert_allclose(dec(c2[2]), np.rot90(-dec(c1[1])), atol=1e-3)


@pytest.mark.parametrize("model, refiner", [("default", SHIPPED.name), ("generic", "refiner.pt"),
                                            ("generic-junk-distilled-3", "refiner_junk_distilled_3.pt")])
def test_each_shipped_model_is_refined_by_the_shipped_refiner_made_for_its_body(model, refiner):
    from hydrapicker.picker import Picker
    from hydrapicker.refine import SHIPPED_REFINERS

    assert all(p.exists() for p in SHIPPED_REFINERS), "every shipped refiner is part of the package"
    p = Picker(model, device="cpu", refine="shipped", **QUIET)
    assert p.refiner is not None and p.refiner.fits(p.net, p.meta)
    assert Path(p.refiner.path).name == refiner
