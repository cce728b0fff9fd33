"""Self-describing model files: ``{model, optimizer, epoch, args, meta}`` dicts of plain tensors/values.

``meta`` describes the network completely (preset and its parameters, head names, particle extent in px,
grid stride, default threshold, FOM floor and temperature, training recipe and data, version), so a file
loads with ``torch.load(weights_only=True)`` and no pickled code. Shipped files carry no optimizer state.
"""
from __future__ import annotations

from pathlib import Path

from . import defaults
from .errors import UserFacingError

DEFAULT_MODEL = Path(__file__).resolve().parent / "weights" / "generic.pt"
FORMAT = "hydrapicker-checkpoint-1"


def default_model_path() -> Path:
    return DEFAULT_MODEL


def make_meta(net, **extra) -> dict:
    from . import __version__
    from .model import preset_dict

    meta = {
        "format": FORMAT,
        "hydrapicker_version": __version__,
        "preset": net.preset.name,
        "preset_params": preset_dict(net.preset),
        "heads": net.head_names,
        "extent_px": float(net.preset.extent_px),
        "stride": int(net.stride),
        "default_threshold": defaults.THRESHOLD,
        "floor": defaults.FLOOR,
        "temperature": defaults.TEMPERATURE,
        "training": {},
    }
    meta.update(extra)
    meta["heads"] = net.head_names
    return meta


def save_checkpoint(path, net, meta: dict, optimizer=None, epoch=None, args=None, half=False) -> Path:
    """Write a checkpoint atomically. ``half`` stores float16 weights (shipped files, ~half size)."""
    import torch

    from .atomic import atomic_path

    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}  # files load anywhere
    if half:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    meta = dict(meta)
    meta["heads"] = net.head_names
    ckpt = {"model": state, "meta": meta, "epoch": epoch, "args": args or {},
            "optimizer": optimizer.state_dict() if optimizer is not None else None}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


def read_checkpoint(path) -> dict:
    import torch

    path = Path(path)
    if not path.exists():
        hint = ("the shipped model is missing from the installation; reinstall hydrapicker"
                if path == DEFAULT_MODEL else "check the --model path")
        raise UserFacingError(f"model file {path} does not exist: {hint}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, or a pickled module
        raise UserFacingError(f"cannot load model file {path} as a HydraPicker checkpoint "
                              f"(state dict with weights_only=True): {exc}") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise UserFacingError(f"{path} is not a HydraPicker model file (no 'model'/'meta' entries)")
    return ckpt


def net_from_meta(meta: dict):
    from .model import PRESETS, HydraNet, Preset

    params = dict(meta.get("preset_params") or {})
    params.pop("stride", None)
    if params and meta.get("preset") in PRESETS:  # files older than a field: the named preset's value
        known = PRESETS[meta["preset"]]
        params = {**{k: getattr(known, k) for k in ("tile", "tile_margin")}, **params}
    if params:
        params["stem_channels"] = tuple(params["stem_channels"])
        params["head_channels"] = tuple(params["head_channels"])
        preset = Preset(**params)
    else:
        preset = PRESETS[meta["preset"]]
    return HydraNet(preset, tuple(meta["heads"]))


def load_checkpoint(path=None, with_ckpt=False):
    """Load a model file (default: the shipped generic model) -> ``(net, meta)`` in eval mode, float32."""
    path = Path(path) if path else DEFAULT_MODEL
    ckpt = read_checkpoint(path)
    meta = dict(ckpt["meta"])
    net = net_from_meta(meta)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserFacingError(f"model file {path} does not match its own description "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    net.eval()
    meta["path"] = str(path)
    return (net, meta, ckpt) if with_ckpt else (net, meta)


def default_head(meta: dict) -> str:
    """The head a model picks with unless told otherwise: a fine-tuned model's new head, else generic."""
    head = meta.get("default_head")
    return head if head and head in (meta.get("heads") or []) else "generic"


def threshold_for(meta: dict, head: str = "generic") -> float:
    """The calibrated FOM threshold of ``head`` (few-shot heads carry their own), else the model's."""
    per_head = meta.get("head_thresholds") or {}
    if head in per_head and per_head[head] is not None:
        return float(per_head[head])
    return float(meta.get("default_threshold", defaults.THRESHOLD))
