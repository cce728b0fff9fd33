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


class OracleNet(torch.nn.Module):
    """Finds the bright pixels of what it is shown and outputs their exact grid encoding (in the frame of
    the view it was given), so any error in mapping the views back shows up in the decoded centres."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride
        self.views = 0

    def forward(self, t, head):
        self.views += 1
        img = t[0, 0].numpy()
        rows, cols = np.nonzero(img > 0.5)
        gh, gw = img.shape[0] // self.stride, img.shape[1] // self.stride
        cls, off, _ = encode(np.stack([cols, rows], 1).astype(float), (gh, gw), self.stride)
        grid = np.stack([np.arctanh(off[0] / OFFSET_RANGE), np.arctanh(off[1] / OFFSET_RANGE),
                         np.where(cls > 0.5, 8.0, -8.0)])
        return torch.from_numpy(grid.astype(np.float32))[None]


@pytest.fixture
def picker_factory(tmp_path):
    net = build_model("lite")
    path = save_checkpoint(tmp_path / "m.pt", net, make_meta(net, default_threshold=0.5))

    def make(tta):
        p = Picker(path, device="cpu", log=lambda *a: None, tta=tta)
        p.net = OracleNet(p.stride)
        return p
    return make


@pytest.mark.parametrize("tta", [1, 2, 4, 8])
def test_views_map_back_to_the_exact_centres(picker_factory, tta):
    # not square, not a multiple of the stride: padding and rotation must still line the cells up
    img = np.zeros((93, 130), np.float32)
    truth = np.array([[5.0, 7.0], [60.0, 40.0], [127.0, 90.0], [33.0, 88.0]])  # (x, y)
    img[truth[:, 1].astype(int), truth[:, 0].astype(int)] = 1.0
    picker = picker_factory(tta)
    grid = picker._grid(img, "generic")
    assert picker.net.views == tta
    assert grid.shape == (3, -(-93 // picker.stride), -(-130 // picker.stride))
    xy, score = decode_grid(grid, picker.stride, floor=0.5)
    found = xy[np.lexsort((xy[:, 1], xy[:, 0]))]
    np.testing.assert_allclose(found, truth[np.lexsort((truth[:, 1], truth[:, 0]))], atol=1e-3)


def test_merging_averages_disagreeing_views(picker_factory):
    """A net that sees only the left half of what it is shown finds a pixel in 4 of the 8 views."""
    picker = picker_factory(8)
    oracle = picker.net

    class LeftHalf(torch.nn.Module):
        def forward(self, t, head):
            t = t.clone()
            t[..., t.shape[-1] // 2:] = 0
            return oracle(t, head)
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
