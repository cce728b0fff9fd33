"""Centre refinement (issue 18): a fine centre map read off the shared body, and each pick moved to its peak.

The detector decodes centres on a grid of half a particle diameter (stride 8 at 16 px per diameter), and
whichever of two neighbouring cells wins suppression decodes *its own* offset, so picks of touching,
small or low-SNR particles sit 0.1-0.3 D off (benchmarks/centres.py). The shared body computes features
at stride 2 (one cell per 1/8 diameter) anyway. A small :class:`CentreHead` turns them into a *centre
map* at that stride: a heat channel (CenterNet-style: how likely a particle's centre lies in the cell)
and a sub-cell offset. :func:`refine_positions` moves each pick to the decoded centre of the hottest cell
within :data:`MAX_SHIFT_D` diameters of it; a move is clipped to that length, so no pick ever moves
further (the bound is part of the rule, not of the training).

The centre map costs two small convolutions on features the detector computed anyway; it knows nothing
of heads, so zero-shot, few-shot and adapted heads (which keep the body frozen) are refined alike, on the
picking path every entry point shares (:class:`hydrapicker.picker.Picker`). A centre head belongs to
one body: its file records the body's checksum, and a model with another body is picked without it.
The file: ``{model, optimizer, epoch, args, meta}`` (``hydrapicker/weights/refiner*.pt``, :data:`SHIPPED_REFINERS`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import UserFacingError

#: the largest move, in particle diameters (0.3 and 0.4 measured on the refiner's validation sets: 0.3 keeps
#: AP within D/2, the same AP under the IoU rule)
MAX_SHIFT_D = 0.3
#: the hottest cell is chosen with a Gaussian preference of this many diameters for cells near the pick
#: (heat logit - d^2 / (2 PRIOR_D^2)): between two touching particles a pick stays with its own
PRIOR_D = 0.3
#: a pick moves only when the hottest cell within reach has at least this heat (probability): where the
#: centre map sees no particle at all, the detector's centre stays
MIN_HEAT = 0.01
#: the offset channels decode as cell centre + tanh(a) * OFFSET_CELLS cells (taught on the 3 x 3 cells
#: around each centre, whose offsets reach 1.5 cells)
OFFSET_CELLS = 2.0
FORMAT = "hydrapicker-centre-head-1"
#: the shipped centre refiners, one per shipped body: the default model's first (a refiner reads one body,
#: and every head fine-tuned or adapted from a model keeps its body, so one refiner serves all of them)
SHIPPED_REFINERS = tuple(Path(__file__).resolve().parent / "weights" / name for name in (
    "refiner_junk_distilled_2.pt", "refiner.pt", "refiner_junk_distilled_3.pt"))
SHIPPED = SHIPPED_REFINERS[0]


def body_checksum(net) -> float:
    """A number that differs when any parameter of the body differs (the body a centre head was made for)."""
    from .train import parameter_checksum

    return parameter_checksum(net.body)


class CentreHead(nn.Module):
    """Body features (B, C, H/s, W/s) -> centre map (B, 3, H/t, W/t): heat logit, dx, dy (raw), at the
    body's stride s (``down`` 0) or twice it (``down`` 1: a stride-2 conv first, wider layers behind it
    for the same cost)."""

    def __init__(self, in_channels: int = 32, width: int = 32, down: int = 0):
        super().__init__()
        self.in_channels, self.width, self.down = int(in_channels), int(width), int(down)
        if self.down not in (0, 1):
            raise ValueError(f"centre head down must be 0 or 1, not {down}")
        w = self.width

        def block(cin, cout, stride=1, dilation=1):
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
                    nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        layers = block(self.in_channels, w, stride=2) + block(w, w) if self.down else block(self.in_channels, w)
        self.features = nn.Sequential(*layers, *block(w, w, dilation=2))
        self.out = nn.Conv2d(w, 3, 1)
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()
            self.out.bias[0] = -4.0

    def forward(self, f):
        return self.out(self.features(f))

    def config(self) -> dict:
        return {"in_channels": self.in_channels, "width": self.width, "down": self.down}


def refine_positions(cmap: np.ndarray, stride: int, xy: np.ndarray, extent_px: float,
                     max_shift: float = MAX_SHIFT_D, prior_D: float = PRIOR_D) -> np.ndarray:
    """Refined centres (N, 2) in pixels of the prepared image for picks ``xy`` (N, 2) in those pixels:
    each pick moves to the decoded centre of the hottest cell of ``cmap`` (3, H, W at ``stride``) whose
    centre lies within ``max_shift`` diameters of it (hottest after the preference ``prior_D`` for near
    cells; when that cell's heat reaches :data:`MIN_HEAT`); the move is clipped to that length."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    if len(xy) == 0:
        return xy.copy()
    heat = cmap[0].astype(np.float64)
    H, W = heat.shape
    lim = float(max_shift) * float(extent_px)
    r = int(np.ceil(lim / stride)) + 1
    ar = np.arange(-r, r + 1)
    # the cells around each pick: (N, K) indices, masked outside the image and beyond the search radius
    pj = np.floor((xy[:, 0] + 0.5) / stride).astype(int)
    pi = np.floor((xy[:, 1] + 0.5) / stride).astype(int)
    di, dj = np.meshgrid(ar, ar, indexing="ij")
    ci = pi[:, None] + di.reshape(1, -1)
    cj = pj[:, None] + dj.reshape(1, -1)
    valid = (ci >= 0) & (ci < H) & (cj >= 0) & (cj < W)
    ci_c, cj_c = np.clip(ci, 0, H - 1), np.clip(cj, 0, W - 1)
    cell_x, cell_y = (cj_c + 0.5) * stride - 0.5, (ci_c + 0.5) * stride - 0.5
    d2 = (cell_x - xy[:, :1]) ** 2 + (cell_y - xy[:, 1:]) ** 2
    valid &= d2 <= lim ** 2
    h = np.where(valid, heat[ci_c, cj_c], -np.inf)
    # prefer cells near the pick: heat logit - d^2 / (2 prior^2)
    best = np.argmax(h - 0.5 * d2 / (prior_D * extent_px) ** 2 if prior_D > 0 else h, axis=1)
    n = np.arange(len(xy))
    ok = np.isfinite(h[n, best]) & (h[n, best] >= np.log(MIN_HEAT / (1 - MIN_HEAT)))
    bi, bj = ci_c[n, best], cj_c[n, best]  # the chosen cell's decoded centre (the offsets in cells)
    target = np.stack([(bj + 0.5 + np.tanh(cmap[1, bi, bj].astype(np.float64)) * OFFSET_CELLS) * stride - 0.5,
                       (bi + 0.5 + np.tanh(cmap[2, bi, bj].astype(np.float64)) * OFFSET_CELLS) * stride - 0.5],
                      axis=1)
    move = np.where(ok[:, None], target - xy, 0.0)
    norm = np.hypot(move[:, 0], move[:, 1])
    move *= np.minimum(1.0, lim / np.maximum(norm, 1e-12))[:, None]
    return xy + move


def save_refiner(path, head: CentreHead, meta: dict, optimizer=None, epoch=None, args=None) -> Path:
    """A centre head's checkpoint ``{model, optimizer, epoch, args, meta}``, written atomically; ``meta``
    must name ``body_checksum``, ``stride`` and ``extent_px`` of the body it reads."""
    from .atomic import atomic_path

    for key in ("body_checksum", "stride", "extent_px"):
        if key not in meta:
            raise ValueError(f"centre head metadata needs {key!r}")
    state = {k: v.detach().cpu() for k, v in head.state_dict().items()}
    meta = {"format": FORMAT, **meta, "net": head.config()}
    ckpt = {"model": state, "meta": meta, "epoch": epoch, "args": args or {},
            "optimizer": optimizer.state_dict() if optimizer is not None else None}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


def load_refiner(path=None) -> tuple:
    """(centre head in eval mode, meta) of a refiner file (the shipped one when ``path`` is None)."""
    path = Path(path or SHIPPED)
    if not path.exists():
        raise UserFacingError(f"centre refiner {path} does not exist: reinstall hydrapicker, give the "
                              f"right --refiner path, or pick without refinement (--no-refine)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        meta = ckpt["meta"]
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        head = CentreHead(**meta["net"])
        head.load_state_dict({k: v.float() for k, v in ckpt["model"].items()})
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UserFacingError(f"{path} is not a HydraPicker centre refiner ({type(exc).__name__}: {first}); "
                              f"give a file written by 'hydra train-refiner' or use --no-refine") from None
    return head.eval(), meta


def first_fitting(paths, net, meta: dict, device="cpu", any_extent: bool = False):
    """The first refiner of ``paths`` made for ``net``'s body (at ``meta``'s extent unless ``any_extent``;
    :meth:`Refiner.fits`), or None."""
    for path in paths:
        candidate = Refiner(path, device)
        if candidate.fits(net, meta, any_extent):
            return candidate
    return None


class Refiner:
    """A centre head for one detector body: :meth:`fits` a model, ``head`` maps its body features to the
    centre map, :meth:`refine` moves picks (pixels of the micrograph as stored)."""

    def __init__(self, path=None, device="cpu"):
        self.head, self.meta = load_refiner(path)
        self.device = torch.device(device)
        self.head.to(self.device)
        self.path = str(path or SHIPPED)
        self.stride = int(self.meta["stride"])
        self.extent_px = float(self.meta["extent_px"])
        self.max_shift_D, self.prior_D = MAX_SHIFT_D, PRIOR_D  # the rule is the code's, not the file's
        #: the few-shot head whose labels taught it (refine_adapt.teach_labelled_refiner), or None
        self.taught_head = (self.meta.get("adaptation") or {}).get("labelled_head")

    def fits(self, net, meta: dict, any_extent: bool = False) -> bool:
        """Was this centre head made for ``net``'s body (same parameters, sampling and stride)? ``any_extent``:
        at whatever particle extent (a model at another working scale, :mod:`hydrapicker.scale`)."""
        return ((any_extent or float(meta.get("extent_px", -1)) == self.extent_px)
                and int(net.preset.body_stride) * 2 ** int(self.meta["net"].get("down", 0)) == self.stride
                and abs(body_checksum(net) - float(self.meta["body_checksum"]))
                <= 1e-9 * max(1.0, abs(float(self.meta["body_checksum"]))))

    def refine(self, cmap: np.ndarray, scale_xy, xy: np.ndarray) -> np.ndarray:
        """Refined centres (N, 2) in pixels of the micrograph as stored, for picks ``xy`` in those pixels;
        ``cmap`` is the centre map of the micrograph rescaled by ``scale_xy`` (Fourier rescaling keeps
        sample 0 in place: x_rescaled = x * scale)."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        if len(xy) == 0:
            return xy.copy()
        s = np.array([scale_xy[0], scale_xy[1]], np.float64)[None, :]
        return refine_positions(cmap, self.stride, xy * s, self.extent_px, self.max_shift_D, self.prior_D) / s
