"""Test-time augmentation: dihedral views of a micrograph are mapped back to its own frame exactly."""
import numpy as np
import pytest
import torch

from hydrapicker.checkpoint import make_meta, save_checkpoint
from hydrapicker.criterion import encode
from hydrapicker.errors import UserFacingError
from hydrapicker.model import build_model
from hydrapicker.picker import Picker
from hydrapicker.postprocess import OFFSET_RANGE, decode_grid


class OracleHead(torch.nn.Module):
    """Finds the bright pixels of the image behind the features it is given and outputs their exact grid
    encoding (in the frame of the view it was given), so any error in mapping the views (or the half-cell
    grid) back shows up in the decoded centres."""

    def __init__(self, stride, counter):
        super().__init__()
        self.stride, self.counter = stride, counter

    def forward(self, f):
        self.counter["calls"] += 1
        img = torch.nn.functional.pixel_shuffle(f, 2)[0, 0].numpy()  # the body's features back to the image
        rows, cols = np.nonzero(img > 0.5)
        gh, gw = img.shape[0] // self.stride, img.shape[1] // self.stride
        cls, off, _ = encode(np.stack([cols, rows], 1).astype(float), (gh, gw), self.stride)
        grid = np.stack([np.arctanh(off[0] / OFFSET_RANGE), np.arctanh(off[1] / OFFSET_RANGE),
                         np.where(cls > 0.5, 8.0, -8.0)])
        return torch.from_numpy(grid.astype(np.float32))[None]


class OracleNet(torch.nn.Module):
    """A body at the lite preset's stride 2 that loses nothing (pixel unshuffle) and an oracle head."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride
        self.counter = {"calls": 0}
        self.heads = torch.nn.ModuleDict({"generic": OracleHead(stride, self.counter)})

    def body(self, t):
        return torch.nn.functional.pixel_unshuffle(t, 2)

    def forward(self, t, head):
        return self.heads[head](self.body(t))

    @property
    def views(self):  # the head's calls per view: the grid and, when on, the half-cell grid
        return self.counter["calls"]


@pytest.fixture
def picker_factory(tmp_path):
    net = build_model("lite")
    path = save_checkpoint(tmp_path / "m.pt", net, make_meta(net, default_threshold=0.5))

    def make(tta, half_cell=False):
        p = Picker(path, device="cpu", log=lambda *a: None, tta=tta, half_cell=half_cell)
        p.net = OracleNet(p.stride)
        return p
    return make


@pytest.mark.parametrize("half_cell", [False, True])
@pytest.mark.parametrize("tta", [1, 2, 4, 8])
def test_views_map_back_to_the_exact_centres(picker_factory, tta, half_cell):
    # not square, not a multiple of the stride: padding and rotation must still line the cells up
    img = np.zeros((93, 130), np.float32)
    truth = np.array([[5.0, 7.0], [60.0, 40.0], [127.0, 90.0], [33.0, 88.0], [2.0, 91.0]])  # (x, y)
    img[truth[:, 1].astype(int), truth[:, 0].astype(int)] = 1.0
    picker = picker_factory(tta, half_cell)
    out = picker._outputs(img, "generic")
    assert picker.net.views == tta * (2 if half_cell else 1)
    s, gh, gw = picker.stride, -(-93 // picker.stride), -(-130 // picker.stride)
    assert out.grid.shape == (3, gh, gw)
    want = truth[np.lexsort((truth[:, 1], truth[:, 0]))]
    for grid, origin in ((out.grid, 0.0), (out.half_cell, -s / 2)) if half_cell else ((out.grid, 0.0),):
        # the half-cell grid: cells centred on the grid's cell corners, one more along each axis
        assert grid.shape == (3, gh + (origin != 0), gw + (origin != 0))
        xy, score = decode_grid(grid, s, floor=0.5, origin=origin)
        found = xy[np.lexsort((xy[:, 1], xy[:, 0]))]
        np.testing.assert_allclose(found, want, atol=1e-3)
    if not half_cell:
        assert out.half_cell is None


def test_the_half_cell_grid_is_the_network_on_the_image_shifted_by_half_a_cell():
    """The head on the body's padded features equals the whole network on the image shifted by half a cell
    (away from the borders, where padding differs), for the shipped lite body."""
    p = Picker(device="cpu", log=lambda *a: None, tta=1, refine=False, half_cell=True)
    assert p.half_cell_pad == 2  # stride 8, body stride 2
    assert Picker(device="cpu", log=lambda *a: None).half_cell_pad == 0  # off by default (defaults.HALF_CELL_GRID)
    img = np.random.default_rng(0).standard_normal((256, 320)).astype(np.float32)
    half = p._outputs(img, "generic").half_cell
    h = p.stride // 2
    shifted = Picker(device="cpu", log=lambda *a: None, tta=1, refine=False, half_cell=False)._grid(img[h:, h:].copy(), "generic")
    e = 6  # cells kept away from the borders (the receptive field)
    # half-cell cell m is centred at m s - 0.5, the shifted image's cell m - 1 at (m - 0.5) s - 0.5 + h: the same
    np.testing.assert_allclose(half[:, 1 + e:31 - e, 1 + e:39 - e], shifted[:, e:30 - e, e:38 - e], atol=1e-4)
    # and a particle near a cell border of one grid sits near a cell centre of the other
    assert half.shape == (3, 256 // 8 + 1, 320 // 8 + 1)


def test_merging_averages_disagreeing_views(picker_factory):
    """A net that sees only the left half of what it is shown finds a pixel in 4 of the 8 views."""
    picker = picker_factory(8)
    oracle = picker.net

    class LeftHalf(torch.nn.Module):
        heads = oracle.heads

        def body(self, t):
            t = t.clone()
            t[..., t.shape[-1] // 2:] = 0
            return oracle.body(t)
    picker.net = LeftHalf()
    img = np.zeros((64, 64), np.float32)
    img[20, 10] = 1.0
    grid = picker._grid(img, "generic")
    logit = grid[2, 20 // picker.stride, 10 // picker.stride]
    assert logit == pytest.approx(0.0, abs=1e-5)  # (4 * 8 + 4 * -8) / 8
    # the centre comes from the views that saw the particle, not diluted by those that did not
    xy, _ = decode_grid(grid, picker.stride, floor=0.4)
    np.testing.assert_allclose(xy, [[10.0, 20.0]], atol=1e-3)


def test_bad_tta_is_refused(picker_factory):
    with pytest.raises(UserFacingError, match="tta"):
        picker_factory(3)


def test_the_default_is_two_views_and_the_log_says_how_many():
    from hydrapicker import defaults

    lines = []
    p = Picker(device="cpu", log=lines.append)
    assert p.tta == defaults.TTA == 2
    assert any("2 test-time views per micrograph" in line for line in lines)
    lines.clear()
    assert Picker(device="cpu", log=lines.append, tta=1).tta == 1
    assert any("1 test-time view per micrograph" in line for line in lines)


def test_decode_joins_the_half_cell_grid_without_its_outer_ring():
    from hydrapicker.postprocess import decode

    s = 8
    grid = np.full((3, 4, 5), 0.0, np.float32)
    grid[2] = -20.0
    grid[2, 1, 2] = 20.0  # a cell of the grid: centred at (2.5 s - 0.5, 1.5 s - 0.5)
    half = np.full((3, 5, 6), 0.0, np.float32)
    half[2] = -20.0
    half[2, 2, 3] = 20.0  # a half-cell: centred on the grid's corner (3 s - 0.5, 2 s - 0.5)
    half[2, 0, 0] = 20.0  # the outer ring reads padding: never a candidate
    c = decode(grid, s, floor=0.5, scale_xy=(0.5, 0.5), half_cell=half)
    np.testing.assert_allclose(c.xy, [[(2.5 * s - 0.5) / 0.5, (1.5 * s - 0.5) / 0.5],
                                      [(3 * s - 0.5) / 0.5, (2 * s - 0.5) / 0.5]])
    assert len(decode(grid, s, floor=0.5).xy) == 1
