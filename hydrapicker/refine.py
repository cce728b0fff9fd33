"""Second-stage centre refinement (issue 18): each pick's centre re-estimated on a finer crop.

The detector decodes centres on a grid of half a particle diameter (stride 8 at 16 px per diameter), and
whichever of two neighbouring cells wins suppression decodes *its own* offset, so picks of touching,
small or low-SNR particles sit 0.1-0.3 D off (benchmarks/centres.py). The refiner looks again: the
micrograph is rescaled to :data:`EXTENT_PX` pixels per diameter (the detection sampling of the shipped model), an odd
``crop`` x ``crop`` window is cut around each pick (the pick on the window's centre pixel) and a small
CNN regresses the offset from the window's centre to the centre of the particle nearest to it, in units
of the diameter. The offset is bounded by construction (``tanh * max_shift``): a pick never moves by more
than ``max_shift`` diameters (:data:`MAX_SHIFT_D`).

The refiner knows nothing of heads: zero-shot, few-shot and adapted picks are refined alike, on the
picking path (:class:`Refiner`, called by :class:`hydrapicker.picker.Picker` between ranking and
suppression) that every entry point shares. Its weights are a file of their own
(``hydrapicker/weights/refiner.pt``): ``{model, optimizer, epoch, args, meta}``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from .errors import UserFacingError

#: particle diameter in pixels of the image the refiner sees
EXTENT_PX = 16.0
#: window side (odd: the pick sits on its centre pixel, which rotations and flips keep in place)
CROP = 25
#: the largest move, in particle diameters
MAX_SHIFT_D = 0.4
FORMAT = "hydrapicker-refiner-1"
SHIPPED = Path(__file__).resolve().parent / "weights" / "refiner.pt"


def _block(cin, cout, stride):
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class RefinerNet(nn.Module):
    """(B, 1, crop, crop) windows -> (B, 2) offsets (dx, dy) in diameters, each within +-``max_shift``.

    Five 3x3 conv layers (three of stride 2) keep the spatial layout; a fully connected layer reads it
    (a pooled feature would lose the position it has to report)."""

    def __init__(self, crop: int = CROP, width: int = 16, max_shift: float = MAX_SHIFT_D):
        super().__init__()
        self.crop, self.width, self.max_shift = int(crop), int(width), float(max_shift)
        w = self.width
        self.features = nn.Sequential(*_block(1, w // 2, 1), *_block(w // 2, w, 2), *_block(w, w, 1),
                                      *_block(w, 2 * w, 2), *_block(2 * w, 2 * w, 2))
        n = -(-(-(-(-(-self.crop // 2)) // 2)) // 2)  # side after three stride-2 convs (ceil each)
        self.regress = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * n * n, 128), nn.ReLU(inplace=True),
                                     nn.Linear(128, 2))

    def forward(self, windows):
        return torch.tanh(self.regress(self.features(windows))) * self.max_shift

    def config(self) -> dict:
        return {"crop": self.crop, "width": self.width, "max_shift": self.max_shift}


def windows(image: torch.Tensor, centres: np.ndarray, crop: int) -> torch.Tensor:
    """(N, 1, crop, crop) windows of a 2D ``image`` (zero outside it) around integer ``centres`` (N, 2)
    given as (x = column, y = row); the centre pixel of window n is ``image[centres[n, 1], centres[n, 0]]``."""
    h = crop // 2
    padded = torch.nn.functional.pad(image[None, None], (h, h, h, h))[0, 0]
    c = torch.as_tensor(np.asarray(centres, np.int64).reshape(-1, 2), device=image.device)
    ar = torch.arange(crop, device=image.device)
    rows = (c[:, 1, None] + ar[None, :])[:, :, None]  # padded index of row cy - h + k is cy + k
    cols = (c[:, 0, None] + ar[None, :])[:, None, :]
    return padded[rows, cols][:, None]


def refine_positions(net: RefinerNet, image: torch.Tensor, xy: np.ndarray, extent_px: float,
                     batch: int = 512) -> np.ndarray:
    """Refined centres (N, 2) in pixels of ``image`` (prepared at ``extent_px`` per diameter) for the
    picks ``xy`` (N, 2) in the same pixels: each pick is rounded to its pixel, and moved by the offset the
    network reads in the window around it (at most ``net.max_shift`` diameters from the rounded pick)."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    if len(xy) == 0:
        return xy.copy()
    ny, nx = image.shape[-2:]
    base = np.rint(xy)
    base[:, 0] = np.clip(base[:, 0], 0, nx - 1)
    base[:, 1] = np.clip(base[:, 1], 0, ny - 1)
    out = np.empty_like(xy)
    with torch.inference_mode():
        for s in range(0, len(xy), batch):
            w = windows(image, base[s:s + batch], net.crop)
            out[s:s + batch] = net(w).double().cpu().numpy()
    return base + out * float(extent_px)


def save_refiner(path, net: RefinerNet, meta: dict, optimizer=None, epoch=None, args=None, half=False) -> Path:
    """The refiner's checkpoint ``{model, optimizer, epoch, args, meta}``, written atomically."""
    from .atomic import atomic_path

    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    if half:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    meta = {"format": FORMAT, "extent_px": EXTENT_PX, **meta, "net": net.config()}
    ckpt = {"model": state, "meta": meta, "epoch": epoch, "args": args or {},
            "optimizer": optimizer.state_dict() if optimizer is not None else None}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


def load_refiner(path=None) -> tuple:
    """(net in eval mode, meta) of a refiner file (the shipped one when ``path`` is None)."""
    path = Path(path or SHIPPED)
    if not path.exists():
        raise UserFacingError(f"centre refiner {path} does not exist: reinstall hydrapicker, give the "
                              f"right --refiner path, or pick without refinement (--no-refine)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        meta = ckpt["meta"]
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        net = RefinerNet(**meta["net"])
        net.load_state_dict({k: v.float() for k, v in ckpt["model"].items()})
    except Exception as exc:
        raise UserFacingError(f"{path} is not a HydraPicker centre refiner ({type(exc).__name__}: {exc}); "
                              f"give a file written by 'hydra train-refiner' or use --no-refine") from None
    return net.eval(), meta


class Refiner:
    """A refiner on a device, for the picking path: ``prepare`` a micrograph once, ``refine`` its picks.

    >>> r = Refiner()                                   # the shipped refiner
    >>> xy_new = r.refine(r.prepare(image, apix, diameter_A), xy)   # pixels of the micrograph as stored
    """

    def __init__(self, path=None, device="cpu"):
        self.net, self.meta = load_refiner(path)
        self.device = torch.device(device)
        self.net.to(self.device)
        self.extent_px = float(self.meta.get("extent_px", EXTENT_PX))
        self.path = str(path or SHIPPED)

    @property
    def max_shift_D(self) -> float:
        return float(self.net.max_shift)

    def prepare(self, image, pixel_size: float, diameter_A: float, path="<array>"):
        """The micrograph (2D tensor or array) at the refiner's sampling: a
        :class:`hydrapicker.preprocess.Prepared` with its image on the refiner's device."""
        from .preprocess import _cpu_tensor, prepare_t

        t = image if isinstance(image, torch.Tensor) else _cpu_tensor(np.ascontiguousarray(image, np.float32))
        return prepare_t(t.to(self.device), pixel_size, diameter_A, self.extent_px, path=path)

    def refine(self, prepared, xy: np.ndarray) -> np.ndarray:
        """Refined centres (N, 2) in pixels of the micrograph as stored for picks ``xy`` in those pixels."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        if len(xy) == 0:
            return xy.copy()
        sx, sy = prepared.scale_xy
        scaled = xy * np.array([sx, sy])[None, :]
        moved = refine_positions(self.net, prepared.image, scaled, self.extent_px)
        return moved / np.array([sx, sy])[None, :]


def shipped_refiner_or_none(path: Optional[str] = None, device="cpu", log=None) -> Optional[Refiner]:
    """The refiner to use: ``path``'s, or the shipped one; None (with a line in the log) when the
    package ships none (an installation older than issue 18's weights)."""
    if path is None and not SHIPPED.exists():
        if log:
            log("[hydra] no centre refiner shipped with this installation: centres as the detector decodes them")
        return None
    return Refiner(path, device)
