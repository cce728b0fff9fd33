"""The one step from candidates to picks (:func:`hydrapicker.postprocess.finalize`) and its policy."""
import numpy as np
import pytest

from hydrapicker import defaults
from hydrapicker.postprocess import Candidates, PickPolicy, decode, finalize, rank


def _cands(xy, score, shape=(100, 200), apix=2.0):
    return Candidates(np.asarray(xy, float), np.asarray(score, float), shape, apix)


def test_threshold_floor_distance_and_order():
    c = _cands([[10, 10], [14, 10], [60, 50], [120, 80], [150, 20]], [0.6, 0.9, 0.3, 0.04, 0.55])
    policy = PickPolicy(min_distance_A=20.0, threshold=0.5)  # 10 px at 2 A/px
    p = finalize(c, policy)
    # (10, 10) lies 4 px from the better (14, 10): suppressed; 0.3 and 0.04 under the threshold
    assert p.xy().tolist() == [[14, 10], [150, 20]] and p.fom.tolist() == [0.9, 0.55]
    every = finalize(c, PickPolicy(min_distance_A=20.0))  # threshold None: all above the floor
    assert every.fom.tolist() == [0.9, 0.55, 0.3]  # 0.04 < the floor


def test_a_threshold_below_the_floor_lowers_the_floor():
    c = _cands([[20, 20], [80, 60]], [0.03, 0.2])
    policy = PickPolicy(min_distance_A=10.0, threshold=0.01, floor=0.05)
    assert policy.decode_floor == 0.01
    assert finalize(c, policy).fom.tolist() == [0.2, 0.03]
    assert PickPolicy(min_distance_A=10.0, threshold=0.3).decode_floor == defaults.FLOOR


def test_edges_bounds_and_rounding():
    c = _cands([[-0.4, 10], [199.2, 50], [3.0, 50], [50.6, 49.4], [100, 98.8]], [0.9] * 5)
    inside = finalize(c, PickPolicy(min_distance_A=0.0, threshold=0.5))
    assert inside.xy().tolist() == [[3.0, 50], [50.6, 49.4], [100, 98.8]]  # outside [0, n - 1] dropped
    edged = finalize(c, PickPolicy(min_distance_A=0.0, threshold=0.5, edge_A=10.0))  # 5 px
    assert edged.xy().tolist() == [[50.6, 49.4]]
    rounded = finalize(c, PickPolicy(min_distance_A=0.0, threshold=0.5, round_to_pixel=True))
    assert rounded.xy().tolist() == [[3, 50], [51, 49], [100, 99]]


def test_invalid_regions_and_their_margin_drop_picks_before_suppression():
    invalid = np.zeros((100, 200), bool)
    invalid[:, 150:] = True  # e.g. a carbon edge on the right
    c = _cands([[160, 50], [140, 50], [100, 50], [130, 50]], [0.95, 0.9, 0.8, 0.7])
    p = finalize(c, PickPolicy(min_distance_A=30.0, threshold=0.5), invalid)
    # (160, 50) is inside: dropped, and it suppresses nothing; (130, 50) lies 10 px from (140, 50)
    assert p.xy().tolist() == [[140, 50], [100, 50]]
    margin = finalize(c, PickPolicy(min_distance_A=30.0, threshold=0.5, invalid_margin_A=24.0), invalid)
    assert margin.xy().tolist() == [[100, 50], [130, 50]]  # 140 is within 12 px of column 150; 130 is not
    assert len(finalize(c, PickPolicy(min_distance_A=0.0, threshold=0.5), np.ones((100, 200), bool))) == 0


def test_for_model_reads_the_model_and_resolves_the_defaults():
    meta = {"default_threshold": 0.42, "floor": 0.07, "head_thresholds": {"prot": 0.3}}
    p = PickPolicy.for_model(meta, 150.0)
    assert (p.threshold, p.floor, p.min_distance_A) == (0.42, 0.07, 75.0)
    assert PickPolicy.for_model(meta, 150.0, head="prot").threshold == 0.3
    assert PickPolicy.for_model(meta, 150.0, threshold=None).threshold is None
    bare = PickPolicy.for_model({}, 100.0, threshold="model", min_distance_A=20.0)
    assert (bare.threshold, bare.floor, bare.min_distance_A) == (defaults.THRESHOLD, defaults.FLOOR, 20.0)
    with pytest.raises(Exception):
        p.threshold = 0.1  # frozen: built once at the edge


def test_decode_maps_rescaled_cells_to_micrograph_pixels():
    grid = np.full((3, 4, 4), -20.0, np.float32)
    grid[:2] = 0.0
    grid[2, 1, 2] = 20.0  # one confident cell: centre ((2 + 0.5) * 8 - 0.5, (1 + 0.5) * 8 - 0.5)
    c = decode(grid, 8, floor=0.5, scale_xy=(0.5, 0.25), shape=(128, 64), pixel_size=3.0)
    assert c.xy.tolist() == [[19.5 / 0.5, 11.5 / 0.25]] and c.shape == (128, 64) and c.pixel_size == 3.0
    assert len(rank(c, PickPolicy(min_distance_A=1.0))) == 1


def test_micrograph_evidence_scales_a_weak_micrographs_foms_and_keeps_their_order():
    from hydrapicker.postprocess import evidence_factor, weigh_by_evidence
    from hydrapicker.types import Picks

    strong = np.r_[np.full(25, 0.9), np.linspace(0.3, 0.06, 40)]
    assert evidence_factor(strong, 0.5) == 1.0  # its 20 best average 0.9 >= the reference
    weak = np.linspace(0.35, 0.06, 60)
    m = np.sort(weak)[-20:].mean()
    P = defaults.EVIDENCE_POWER
    assert evidence_factor(weak, 0.5) == pytest.approx((m / 0.5) ** P)
    assert evidence_factor(weak, 0.5, power=1.0) == pytest.approx(m / 0.5)
    assert evidence_factor(np.array([0.8, 0.6]), 0.5) == pytest.approx((1.4 / 20 / 0.5) ** P)  # lacking ones count 0
    assert evidence_factor(np.array([]), 0.5) == 0.0
    assert evidence_factor(weak, 0.0) == 1.0  # a head calibrated at 0: nothing to weigh against
    ranked = Picks(np.arange(60.0), np.zeros(60), weak)
    policy = PickPolicy(min_distance_A=1.0, threshold=0.2, evidence_ref=0.5)
    info = {}
    got = weigh_by_evidence(ranked, policy, info)
    assert info["evidence"] == pytest.approx((m / 0.5) ** P) and got.x.tolist() == ranked.x.tolist()
    assert np.allclose(got.fom, weak * (m / 0.5) ** P)
    assert len(got.above(0.2)) < len(ranked.above(0.2))  # fewer picks pass the same threshold
    off = PickPolicy(min_distance_A=1.0, threshold=0.2)
    assert weigh_by_evidence(ranked, off) is ranked  # None: off
    c = _cands(np.c_[np.linspace(5, 195, 60), np.full(60, 50.0)], weak)
    assert np.allclose(finalize(c, PickPolicy(min_distance_A=0.0, evidence_ref=0.5)).fom, np.sort(weak)[::-1] * (m / 0.5) ** P)


def test_for_model_weighs_by_evidence_relative_to_the_heads_threshold_unless_told_not_to():
    from hydrapicker.postprocess import evidence_reference

    meta = {"default_threshold": 0.3, "head_thresholds": {"prot": 0.2}}
    R = defaults.EVIDENCE_REFERENCE
    assert PickPolicy.for_model(meta, 150.0).evidence_ref == pytest.approx(evidence_reference(0.3, R))
    assert PickPolicy.for_model(meta, 150.0, head="prot", threshold=None).evidence_ref == \
        pytest.approx(evidence_reference(0.2, R))
    assert PickPolicy.for_model(meta, 150.0, evidence=False).evidence_ref is None
    assert PickPolicy.for_model(meta, 150.0, evidence=0).evidence_ref is None
    assert PickPolicy.for_model(meta, 150.0, evidence=2.0).evidence_ref == pytest.approx(evidence_reference(0.3, 2.0))
    with pytest.raises(ValueError):
        PickPolicy.for_model(meta, 150.0, evidence=-1)
    assert PickPolicy.for_prepared(20.0).evidence_ref is None  # validation on prepared images: raw FOMs


def test_the_evidence_reference_multiplies_the_thresholds_odds_and_stays_below_1():
    from hydrapicker.postprocess import evidence_reference

    ref = evidence_reference(0.25, 3.0)  # odds 1/3 -> 1: FOM 0.5
    assert ref == pytest.approx(0.5)
    assert evidence_reference(0.25, 1.0) == pytest.approx(0.25)
    for t in (0.3, 0.6, 0.8, 0.95):  # a few-shot or adapted head's high threshold: never asks for 1 or more
        assert t < evidence_reference(t, 2.0) < 1.0
