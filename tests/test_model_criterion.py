"""Network, anchor encoding/decoding, losses and model files."""
import numpy as np
import pytest
import torch

from hydrapicker.checkpoint import load_checkpoint, make_meta, save_checkpoint
from hydrapicker.criterion import Criterion, distillation_loss, encode, focal_loss, head_bias_loss
from hydrapicker.model import PRESETS, build_model, count_parameters
from hydrapicker.postprocess import decode_grid, suppress_duplicates


def perfect_grid(xy, shape, stride):
    """Raw outputs that a perfect network would produce for truth ``xy``."""
    cls, off, pos = encode(xy, shape, stride)
    grid = np.zeros((3,) + shape, np.float32)
    grid[2] = np.where(pos, 20.0, -20.0)
    grid[:2] = np.arctanh(np.clip(off / 0.75, -0.999999, 0.999999))
    return grid


@pytest.mark.parametrize("stride", [8, 16])
def test_encode_decode_are_inverses(stride):
    rng = np.random.default_rng(1)
    shape = (20, 24)
    # well separated centres (at most one per cell), anywhere inside the image, including borders
    xy = []
    while len(xy) < 60:
        p = rng.uniform(-0.49, [shape[1] * stride - 0.51, shape[0] * stride - 0.51])
        if all(np.hypot(*(p - q)) > 1.5 * stride for q in xy):
            xy.append(p)
    xy = np.array(xy)
    dec, score = decode_grid(perfect_grid(xy, shape, stride), stride, floor=0.5)
    assert len(dec) == len(xy)
    # match each truth to its nearest decoded point
    d = np.linalg.norm(dec[:, None] - xy[None], axis=2).min(axis=0)
    assert d.max() < 0.5
    assert d.max() < 1e-3  # exact inverse up to float precision


def test_encode_keeps_nearest_when_two_share_a_cell():
    cls, off, pos = encode(np.array([[3.0, 3.0], [6.0, 6.0]]), (4, 4), 8)
    assert pos.sum() == 1
    # cell centre is at 3.5: (3, 3) is nearer than (6, 6)
    assert np.allclose(off[:, 0, 0], [-0.5 / 8, -0.5 / 8])


def test_assignment_reach_teaches_the_neighbour_cells_near_a_particle_to_decode_its_centre():
    stride = 8
    # cell (1, 1) covers px 8..15, centre 11.5; a particle at x = 14.5 is 3/8 stride right of it, at y = 11.5
    xy = np.array([[14.5, 11.5]])
    own, _, _ = encode(xy, (4, 4), stride)  # default: the cell holding the centre only
    assert own.sum() == 1 and own[1, 1] == 1
    wide, off, pos = encode(xy, (4, 4), stride, reach=0.7)
    assert sorted(zip(*np.nonzero(pos))) == [(1, 1), (1, 2)]  # the right neighbour's centre is 5/8 stride away
    grid = np.zeros((3, 4, 4), np.float32)
    grid[2] = np.where(pos, 20.0, -20.0)
    grid[:2] = np.arctanh(np.clip(off / 0.75, -0.999999, 0.999999))
    dec, _ = decode_grid(grid, stride, floor=0.5)
    assert np.allclose(dec, xy, atol=1e-3)  # both cells decode the particle's centre
    # a particle near the middle of its cell teaches that cell only; 0.5 reproduces the old rule exactly
    rng = np.random.default_rng(3)
    many = rng.uniform(0, 64, (30, 2))
    for a, b in zip(encode(many, (8, 8), stride), encode(many, (8, 8), stride, reach=0.5)):
        assert np.array_equal(a, b)
    assert encode(np.array([[11.5, 11.5]]), (4, 4), stride, reach=0.7)[0].sum() == 1
    with pytest.raises(ValueError):
        encode(xy, (4, 4), stride, reach=0.8)  # beyond the offsets' range


def test_focal_loss_prefers_correct_predictions():
    target = torch.tensor([1.0, 0.0, 0.0])
    good = focal_loss(torch.tensor([4.0, -4.0, -4.0]), target)
    bad = focal_loss(torch.tensor([-4.0, 4.0, 4.0]), target)
    assert good < bad
    # gamma = 0, alpha = 0.5 is half the binary cross-entropy
    x = torch.tensor([0.3, -1.2, 2.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, target, reduction="sum")
    assert torch.isclose(focal_loss(x, target, alpha=0.5, gamma=0.0), 0.5 * bce)
    # ignored cells (weight 0) contribute nothing
    w = torch.tensor([1.0, 0.0, 0.0])
    assert torch.isclose(focal_loss(torch.tensor([4.0, 9.0, 9.0]), target, w),
                         focal_loss(torch.tensor([4.0]), torch.tensor([1.0])))


def test_head_bias_loss_is_zero_for_identical_heads_and_grows_with_distance():
    net = build_model("lite", ["generic", "a", "b"])
    with torch.no_grad():
        for name in ("a", "b"):
            for p, q in zip(net.heads[name].parameters(), net.heads["generic"].parameters()):
                p.copy_(q)
    assert float(head_bias_loss(net, ["a", "b"])) < 1e-4
    with torch.no_grad():
        next(net.heads["a"].parameters()).add_(1.0)
    n = next(net.heads["a"].parameters()).numel()
    # ||W_a - W_g|| = sqrt(n); averaged over 2 heads
    assert float(head_bias_loss(net, ["a", "b"])) == pytest.approx(np.sqrt(n) / 2, rel=1e-3)


def test_criterion_counts_localisation_only_on_positives():
    crit = Criterion()
    out = torch.zeros(1, 3, 4, 4)
    cls = torch.zeros(1, 4, 4)
    off = torch.zeros(1, 2, 4, 4)
    cls[0, 1, 2] = 1
    off[0, :, 1, 2] = torch.tensor([0.25, -0.25])
    _, parts = crit(out, cls, off)
    assert parts["loc"] == pytest.approx(0.5)
    off[0, :, 0, 0] = 5.0  # offset on a negative cell is ignored
    _, parts2 = crit(out, cls, off)
    assert parts2["loc"] == pytest.approx(0.5)


def test_thesis_preset_matches_published_configuration():
    p = PRESETS["thesis"]
    net = build_model("thesis")
    assert p.stride == 16 and p.body_stride == 1
    assert p.head_channels == (128, 256, 512, 1024)
    # "about 6.3 M parameters per head"
    assert 6.0e6 < count_parameters(net.heads["generic"]) < 6.6e6
    assert any(isinstance(m, torch.nn.GroupNorm) for m in net.modules())
    x = torch.zeros(1, 1, 64, 64)
    assert net(x).shape == (1, 3, 4, 4)


def test_checkpoint_round_trip_weights_only(tmp_path):
    net = build_model("lite", ["generic", "mine"])
    for p in net.parameters():
        p.data.normal_()
    meta = make_meta(net, default_threshold=0.42, training={"datasets": [{"name": "x"}]})
    path = save_checkpoint(tmp_path / "m.pt", net, meta)
    ck = torch.load(path, weights_only=True)  # no pickled code needed
    assert set(ck) >= {"model", "optimizer", "epoch", "args", "meta"}
    net2, meta2 = load_checkpoint(path)
    assert meta2["heads"] == ["generic", "mine"] and meta2["default_threshold"] == 0.42
    assert meta2["extent_px"] == PRESETS["lite"].extent_px
    x = torch.randn(1, 1, 64, 64)
    net.eval()
    assert torch.allclose(net(x, "mine"), net2(x, "mine"), atol=1e-5)


def test_loading_garbage_gives_a_clear_error(tmp_path):
    from hydrapicker.errors import UserFacingError

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(UserFacingError, match="bad.pt"):
        load_checkpoint(bad)
    with pytest.raises(UserFacingError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_suppress_duplicates_keeps_best_of_close_pairs():
    xy = np.array([[0, 0], [3, 0], [20, 0], [22, 0]], float)
    score = np.array([0.5, 0.9, 0.3, 0.2])
    keep = suppress_duplicates(xy, score, 10.0)
    assert sorted(keep.tolist()) == [1, 2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_suppress_duplicates_equals_brute_force_greedy(seed):
    """The bucketed NMS keeps exactly what the O(N^2) greedy definition keeps (ties in score included)."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 400, size=(1500, 2))
    xy[:100] = xy[100:200] + rng.normal(0, 2, size=(100, 2))   # near-duplicates
    score = rng.choice(np.linspace(0.05, 1, 40), size=len(xy))  # many ties
    d = 11.0
    order = np.argsort(-score, kind="stable")
    removed, expected = np.zeros(len(xy), bool), []
    for i in order:
        if removed[i]:
            continue
        expected.append(i)
        removed |= np.hypot(*(xy - xy[i]).T) < d
    assert suppress_duplicates(xy, score, d).tolist() == expected


def test_distillation_loss_is_zero_at_the_teacher_and_pulls_the_student_to_it():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 6, 6, generator=g) * 3
    assert float(distillation_loss(teacher.clone(), teacher)) == pytest.approx(0.0, abs=1e-5)
    student = torch.zeros(2, 6, 6, requires_grad=True)
    first = float(distillation_loss(student, teacher))
    assert first > 0.1
    opt = torch.optim.SGD([student], lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        distillation_loss(student, teacher).backward()
        opt.step()
    assert float(distillation_loss(student, teacher)) < 0.01 * first
    assert torch.allclose(torch.sigmoid(student), torch.sigmoid(teacher), atol=0.02)
    weight = torch.zeros(2, 6, 6)
    assert float(distillation_loss(torch.zeros(2, 6, 6), teacher, weight)) == 0.0  # ignored cells teach nothing
