"""The HydraPicker network: a fully convolutional shared body and SSD-style heads in a dict.

Every head maps body features to a grid (one cell per ``stride`` pixels of the rescaled micrograph)
with 3 channels: two centre offsets (decoded as ``cell_centre + tanh(a) * 0.75 * stride``) and one
particle logit. The ``generic`` head is mandatory; it is the one that picks unseen proteins.

Presets
-------
``thesis``  The configuration of the HydraPicker thesis: stride-1 body with 64 channels (two 3x3 convs,
            then three residual blocks made of two *pairs* of stacked 3x3 convs), GroupNorm(32); heads of
            four stride-2 convs with 128, 256, 512, 1024 channels (grid stride 16, ~6.3 M parameters per
            head); particle extent 21 px.
``lite``    The shipped CPU-friendly preset: a 16-channel stem, a stride-2 conv to 32 channels, two
            residual blocks of stacked-pair convs, BatchNorm (frozen at inference so that tiled inference
            equals whole-image inference); heads of two stride-2 convs (64, 96 channels) and a 3x3 conv,
            grid stride 8; particle extent 16 px. About 20x fewer operations than ``thesis``.
``lite_deep`` ``lite`` with a third residual block (about 1.4x the network's operations, the same file
            size class). A ``lite`` model grows into it without changing its answers
            (:func:`grow_state_dict`: the new block starts as the identity), so training continues from it.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

GENERIC = "generic"


@dataclass(frozen=True)
class Preset:
    name: str
    stem_channels: tuple          # channels of the stride-1 stem convs
    body_channels: int            # channels of the residual blocks
    body_stride: int              # 1 or 2 (stride of the conv entering the residual blocks)
    n_blocks: int
    norm: str                     # "group" or "batch"
    head_channels: tuple          # one stride-2 conv per entry
    head_extra_conv: bool         # an extra stride-1 3x3 conv before the output conv
    dropout: float
    extent_px: float              # particle diameter in pixels of the rescaled micrograph
    logit_bias: float = -4.0
    tile: int = 1024              # inference tile (rescaled px): bounded memory on large micrographs
    tile_margin: int = 64         # context kept around each tile (covers the receptive field)

    @property
    def stride(self) -> int:
        return self.body_stride * 2 ** len(self.head_channels)


PRESETS = {
    "thesis": Preset("thesis", stem_channels=(64, 64), body_channels=64, body_stride=1, n_blocks=3,
                     norm="group", head_channels=(128, 256, 512, 1024), head_extra_conv=False,
                     dropout=0.3, extent_px=21.0, tile=512, tile_margin=96),
    "lite": Preset("lite", stem_channels=(16,), body_channels=32, body_stride=2, n_blocks=2,
                   norm="batch", head_channels=(64, 96), head_extra_conv=True, dropout=0.1,
                   extent_px=16.0),
}
PRESETS["lite_deep"] = replace(PRESETS["lite"], name="lite_deep", n_blocks=3)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(min(32, channels // 2), channels)
    return nn.BatchNorm2d(channels)


def _conv(cin, cout, stride=1, bias=False):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


class PairBlock(nn.Module):
    """Residual block of two *pairs* of stacked 3x3 convs (no non-linearity inside a pair: effective 5x5)."""

    def __init__(self, channels: int, norm: str):
        super().__init__()
        self.pair1 = nn.Sequential(_conv(channels, channels), _conv(channels, channels), _norm(norm, channels))
        self.pair2 = nn.Sequential(_conv(channels, channels), _conv(channels, channels), _norm(norm, channels))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.act(self.pair1(x))
        y = self.pair2(y)
        return self.act(x + y)


class Body(nn.Module):
    """Shared, fully convolutional feature extractor (single-channel input)."""

    def __init__(self, p: Preset):
        super().__init__()
        layers, cin = [], 1
        for c in p.stem_channels:
            layers += [_conv(cin, c), _norm(p.norm, c), nn.ReLU(inplace=True)]
            cin = c
        if p.body_stride != 1 or cin != p.body_channels:
            layers += [_conv(cin, p.body_channels, stride=p.body_stride), _norm(p.norm, p.body_channels),
                       nn.ReLU(inplace=True)]
        layers += [PairBlock(p.body_channels, p.norm) for _ in range(p.n_blocks)]
        self.layers = nn.Sequential(*layers)
        self.out_channels = p.body_channels

    def forward(self, x):
        return self.layers(x)


class Head(nn.Module):
    """SSD-style head: stride-2 convs down to the anchor grid, then 3 outputs per cell (dx, dy, logit)."""

    def __init__(self, p: Preset, in_channels: int):
        super().__init__()
        layers, cin = [], in_channels
        for c in p.head_channels:
            layers += [_conv(cin, c, stride=2, bias=True), nn.ReLU(inplace=True), _norm(p.norm, c)]
            if p.dropout:
                layers.append(nn.Dropout2d(p.dropout))
            cin = c
        if p.head_extra_conv:
            layers += [_conv(cin, cin, bias=True), nn.ReLU(inplace=True), _norm(p.norm, cin)]
        self.features = nn.Sequential(*layers)
        self.out = nn.Conv2d(cin, 3, 3, padding=1)
        nn.init.normal_(self.out.weight, std=0.01)
        with torch.no_grad():
            self.out.bias.zero_()
            self.out.bias[2] = p.logit_bias

    def forward(self, f):
        return self.out(self.features(f))


class HydraNet(nn.Module):
    """Shared body + named heads. ``forward(x, head)`` returns the (B, 3, H/stride, W/stride) grid."""

    def __init__(self, preset: str | Preset = "lite", head_names=(GENERIC,)):
        super().__init__()
        self.preset = PRESETS[preset] if isinstance(preset, str) else preset
        if GENERIC not in head_names:
            head_names = (GENERIC, *head_names)
        self.body = Body(self.preset)
        self.heads = nn.ModuleDict({name: Head(self.preset, self.body.out_channels) for name in head_names})

    @property
    def stride(self) -> int:
        return self.preset.stride

    @property
    def head_names(self) -> list:
        return list(self.heads.keys())

    def add_head(self, name: str, init_from: str = GENERIC) -> Head:
        if name in self.heads:
            raise ValueError(f"head {name!r} already exists")
        self.heads[name] = copy.deepcopy(self.heads[init_from])
        return self.heads[name]

    def keep_heads(self, names) -> None:
        """Drop every head not in ``names`` (e.g. the dataset heads of a training run)."""
        for name in self.head_names:
            if name not in names:
                del self.heads[name]

    def forward(self, x, head: str = GENERIC):
        return self.heads[head](self.body(x))

    def forward_features(self, x):
        return self.body(x)


def grows_into(source: Preset, target: Preset) -> bool:
    """Can a ``source`` network grow into ``target`` (:func:`grow_state_dict`)? Only by more residual blocks."""
    if source.n_blocks >= target.n_blocks:
        return False
    return replace(source, name=target.name, n_blocks=target.n_blocks) == target


def grow_state_dict(net: HydraNet, source: dict, source_blocks: int) -> dict:
    """``source``'s weights (a network with ``source_blocks`` residual blocks) in ``net``'s, which has more
    blocks after them: ``net``'s own initial weights for the new blocks, each with its last norm's scale and
    shift at zero, so that the block adds nothing (``act(x + 0) = x`` for the non-negative ``x`` a block
    receives) and the grown network answers exactly as the source did. Keys of the body's layers after its
    blocks do not exist (blocks are its last layers), so the source's keys keep their names."""
    first_new = len(net.body.layers) - (net.preset.n_blocks - source_blocks)
    grown = {k: v.detach().clone() for k, v in net.state_dict().items()}
    for k, v in source.items():
        if k not in grown or grown[k].shape != v.shape:
            raise ValueError(f"weight {k} does not fit the grown network")
        grown[k] = v
    for i in range(first_new, len(net.body.layers)):
        block = net.body.layers[i]
        if not isinstance(block, PairBlock):
            raise ValueError("only residual blocks at the end of the body can be grown")
        norm = f"body.layers.{i}.pair2.2."
        grown[norm + "weight"] = torch.zeros_like(grown[norm + "weight"])
        grown[norm + "bias"] = torch.zeros_like(grown[norm + "bias"])
    return grown


def build_model(preset: str = "lite", head_names=(GENERIC,)) -> HydraNet:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return HydraNet(preset, tuple(head_names))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def preset_dict(preset: Preset) -> dict:
    d = asdict(preset)
    d["stride"] = preset.stride
    return d

