"""Model soups (`hydrapicker.soup`): the weight average of fine-tunes of one model, calibrated again."""
import pytest
import torch

from hydrapicker.checkpoint import load_checkpoint, make_meta, save_checkpoint
from hydrapicker.model import build_model
from hydrapicker.simulate.datasets import source_dataset_specs
from hydrapicker.soup import SoupError, soup
from hydrapicker.train import calibrate_threshold, simulate_sets

RECIPE = {"datasets": 2, "seed": 5, "junk_fraction": 0.5}  # tiny: two source datasets, one with junk


def _model(path, seed, preset="lite", recipe=RECIPE, extra_head=False):
    torch.manual_seed(seed)
    net = build_model(preset, head_names=("generic", "ds00") if extra_head else ("generic",))
    for m in net.modules():  # batch-norm statistics that differ between the members
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return save_checkpoint(path, net, make_meta(net, default_threshold=0.4, training={"recipe": dict(recipe)}))


def test_soup_is_the_weighted_mean_and_is_calibrated_again(tmp_path):
    a = _model(tmp_path / "a.pt", 0, extra_head=True)  # a phase-2 file: its dataset head is dropped
    b = _model(tmp_path / "b.pt", 1, recipe={**RECIPE, "seed": 6})
    out = soup([a, b], tmp_path / "soup.pt", weights=[0.25, 0.75], val_mics=1, log=lambda *x: None)
    (na, _), (nb, _), (ns, meta) = load_checkpoint(a), load_checkpoint(b), load_checkpoint(out)
    assert ns.head_names == ["generic"]
    sa, sb, ss = na.state_dict(), nb.state_dict(), ns.state_dict()
    assert set(ss) == set(sb)
    for k, v in ss.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.25 * sa[k] + 0.75 * sb[k], atol=2e-3, rtol=2e-3)  # stored fp16
        else:
            assert torch.equal(v, sa[k])
    assert [m["weight"] for m in meta["soup"]["members"]] == [0.25, 0.75]
    assert [m["training_seed"] for m in meta["soup"]["members"]] == [5, 6]
    # the threshold is the training rule's on both members' validation micrographs, not a member's 0.4
    sets = []
    for seed in (5, 6):
        specs = source_dataset_specs(n=2, seed=seed, junk_fraction=0.5)
        sets += simulate_sets(specs, 1, ns.preset.extent_px, 0.0, seed + 1, 1, 10_000, lambda *x: None)
    assert meta["default_threshold"] == pytest.approx(calibrate_threshold(ns, sets, ns.stride, ns.preset.extent_px),
                                                      abs=1e-6)


def test_soup_refuses_what_cannot_be_averaged(tmp_path):
    a = _model(tmp_path / "a.pt", 0)
    thesis = _model(tmp_path / "t.pt", 1, preset="thesis")
    with pytest.raises(SoupError, match="architecture"):
        soup([a, thesis], tmp_path / "x.pt", val_mics=1)
    with pytest.raises(SoupError, match="summing to 1"):
        soup([a, a], tmp_path / "x.pt", weights=[0.5, 0.6], val_mics=1)
    with pytest.raises(SoupError, match="at least two"):
        soup([a], tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
