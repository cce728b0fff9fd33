"""Self-describing model files: ``{model, optimizer, epoch, args, meta}`` dicts of plain tensors/values.

``meta`` describes the network completely (preset and its parameters, head names, particle extent in px,
grid stride, default threshold, FOM floor and temperature, training recipe and data, version), so a file
loads with ``torch.load(weights_only=True)`` and no pickled code. Shipped files carry no optimizer state.
"""
from __future__ import annotations

from pathlib import Path

from . import defaults
from .errors import UserFacingError

WEIGHTS = Path(__file__).resolve().parent / "weights"
#: models shipped in the package, by the name a user may give instead of a path (``--model generic-junk``):
#: ``generic`` is the first generic model (trained without junk, the default until 2026-12-03), the
#: ``generic-junk*`` ones its junk-trained successors (README, Junk and artefacts)
SHIPPED_MODELS = {"generic": WEIGHTS / "generic.pt",
                  "generic-junk": WEIGHTS / "generic_junk.pt",
                  "generic-junk-distilled": WEIGHTS / "generic_junk_distilled.pt",
                  "generic-junk-distilled-2": WEIGHTS / "generic_junk_distilled_2.pt",
                  "generic-junk-distilled-3": WEIGHTS / "generic_junk_distilled_3.pt"}
#: the model every pick path uses unless given ``--model`` (issue 14: the junk-trained generic model)
DEFAULT_MODEL_NAME = "generic-junk-distilled-2"
DEFAULT_MODEL = SHIPPED_MODELS[DEFAULT_MODEL_NAME]
SHIPPED_MODELS["default"] = DEFAULT_MODEL
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


def update_meta(path, **changes) -> Path:
    """Rewrite a model file (atomically) with some of its metadata entries replaced."""
    import torch

    from .atomic import atomic_path

    ckpt = read_checkpoint(path)
    ckpt["meta"] = {**ckpt["meta"], **changes}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


def read_checkpoint(path) -> dict:
    import torch

    path = Path(path)
    if not path.exists() and str(path) in SHIPPED_MODELS:  # a shipped model's name
        path = SHIPPED_MODELS[str(path)]
    if not path.exists():
        hint = ("the shipped model is missing from the installation; reinstall hydrapicker"
                if path == DEFAULT_MODEL else "check the --model path")
        raise UserFacingError(f"model file {path} does not exist: {hint}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, or a pickled module
        raise UserFacingError(_load_error(path, exc)) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise UserFacingError(f"{path} is not a HydraPicker model file (no 'model'/'meta' entries)")
    if not isinstance(ckpt["model"], dict) or not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        raise UserFacingError(f"{path} is not a HydraPicker model file ('model' is not a dict of tensors)")
    check_meta(ckpt["meta"], sum(int(v.numel()) for v in ckpt["model"].values()), path)
    return ckpt


def _load_error(path, exc) -> str:
    """One line for a file torch will not load with ``weights_only=True``, without torch's advice to load
    it with ``weights_only=False`` (which would run whatever code the file holds)."""
    import pickle

    text = " ".join(part.strip() for part in str(exc).split("\n\n")
                    if part.strip() and "weights_only" not in part and "torch.load" not in part)
    text = " ".join(text.split())
    if isinstance(exc, pickle.UnpicklingError):
        return (f"model file {path} holds pickled code or objects that are not plain tensors and values "
                f"({text or type(exc).__name__}): refused; use a model file written by HydraPicker "
                "(hydra train / hydra finetune)")
    return (f"cannot load model file {path}: {text or type(exc).__name__}; is it a complete HydraPicker model "
            "file? (copy it again)")


# Bounds on what a model file may ask us to build: far above any real network (the shipped lite preset
# has 1 stem conv of 16 channels, 2 blocks of 32, heads of 64/96; thesis 64/64, 3 blocks, 128..1024).
_INT_BOUNDS = {"body_channels": (1, 4096), "body_stride": (1, 2), "n_blocks": (0, 64), "tile": (32, 16384),
               "tile_margin": (0, 4096)}
_CHANNEL_LISTS = {"stem_channels": (0, 8), "head_channels": (1, 8)}
MAX_HEADS = 64
MAX_PARAMETERS = 400_000_000  # 1.6 GB of float32: refused even before the state dict is compared


def _bad(path, what: str) -> UserFacingError:
    return UserFacingError(f"model file {path or '(metadata)'} is not a valid HydraPicker model: {what}; "
                           "use a model file written by HydraPicker (hydra train / hydra finetune)")


def _weights_needed(p: dict, n_heads: int) -> int:
    """Convolution weights the network of ``p`` has (a lower bound on its parameter count)."""
    n, cin = 0, 1
    for c in p["stem_channels"]:
        n, cin = n + 9 * cin * c, c
    if p["body_stride"] != 1 or cin != p["body_channels"]:
        n += 9 * cin * p["body_channels"]
    b = p["body_channels"]
    n += p["n_blocks"] * 4 * 9 * b * b
    head, cin = 0, b
    for c in p["head_channels"]:
        head, cin = head + 9 * cin * c, c
    if p.get("head_extra_conv"):
        head += 9 * cin * cin
    head += 27 * cin
    return n + n_heads * head


def check_meta(meta, n_stored=None, path=None) -> None:
    """Refuse metadata that would build an absurd network, before anything is built: field types and
    bounds, and (with ``n_stored``, the number of values in the file's state dict) no network larger than
    the weights the file holds. Raises :class:`UserFacingError` naming the file and the field."""
    import math
    from dataclasses import MISSING, fields

    from .model import PRESETS, Preset

    if not isinstance(meta, dict):
        raise _bad(path, "'meta' is not a dict")
    heads = meta.get("heads")
    if (not isinstance(heads, (list, tuple)) or not 1 <= len(heads) <= MAX_HEADS
            or not all(isinstance(h, str) and 0 < len(h) <= 64 for h in heads) or len(set(heads)) != len(heads)):
        raise _bad(path, f"'heads' must list 1 to {MAX_HEADS} distinct names")
    params = meta.get("preset_params")
    if params:
        if not isinstance(params, dict):
            raise _bad(path, "'preset_params' is not a dict")
        known = {f.name for f in fields(Preset)} | {"stride"}
        unknown = sorted(str(k) for k in params if k not in known)
        if unknown:
            raise _bad(path, f"unknown preset parameter(s) {', '.join(unknown[:5])}")
        base = PRESETS.get(meta.get("preset")) if isinstance(meta.get("preset"), str) else None
        p = {**({f.name: getattr(base, f.name) for f in fields(Preset)} if base else {}), **params}
        missing = [f.name for f in fields(Preset) if f.name not in p and f.default is MISSING]
        if missing:
            raise _bad(path, f"preset parameter(s) missing: {', '.join(missing)}")
    elif meta.get("preset") in PRESETS:
        from dataclasses import asdict
        p = asdict(PRESETS[meta["preset"]])
    else:
        raise _bad(path, f"unknown preset {str(meta.get('preset'))[:40]!r} and no 'preset_params'")

    def integer(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    for key, (lo, hi) in _INT_BOUNDS.items():
        if key in p and not (integer(p[key]) and lo <= p[key] <= hi):
            raise _bad(path, f"{key} = {str(p[key])[:40]} (an integer from {lo} to {hi} is expected)")
    for key, (lo, hi) in _CHANNEL_LISTS.items():
        v = p.get(key)
        if not (isinstance(v, (list, tuple)) and lo <= len(v) <= hi and all(integer(c) and 1 <= c <= 4096 for c in v)):
            raise _bad(path, f"{key} must list {lo} to {hi} channel counts from 1 to 4096")
    if p.get("norm") not in ("group", "batch"):
        raise _bad(path, f"norm = {str(p.get('norm'))[:40]!r} (group or batch)")
    if not isinstance(p.get("head_extra_conv"), bool):
        raise _bad(path, "head_extra_conv must be true or false")
    if not (number(p.get("dropout")) and 0 <= p["dropout"] < 1):
        raise _bad(path, "dropout must be a number from 0 to 1")
    if not (number(p.get("extent_px")) and 1 <= p["extent_px"] <= 1024):
        raise _bad(path, "extent_px must be a number from 1 to 1024")
    if "logit_bias" in p and not number(p["logit_bias"]):
        raise _bad(path, "logit_bias must be a finite number")
    stride = p["body_stride"] * 2 ** len(p["head_channels"])
    for where in (p, meta):
        if "stride" in where and where["stride"] != stride:
            raise _bad(path, f"stride = {str(where['stride'])[:20]} but the network's grid stride is {stride}")
    for key, lo, hi in (("default_threshold", 0, 1), ("floor", 0, 1), ("temperature", 1e-3, 1e3),
                        ("extent_px", 1, 1024)):
        if meta.get(key) is not None and not (number(meta[key]) and lo <= meta[key] <= hi):
            raise _bad(path, f"{key} = {str(meta[key])[:40]} (a number from {lo:g} to {hi:g} is expected)")
    per_head = meta.get("head_thresholds") or {}
    if not isinstance(per_head, dict) or not all(v is None or (number(v) and 0 <= v <= 1) for v in per_head.values()):
        raise _bad(path, "head_thresholds must map heads to numbers from 0 to 1")
    n_heads = len(set(heads) | {"generic"})
    needed = _weights_needed(p, n_heads)
    if needed > MAX_PARAMETERS:
        raise _bad(path, f"its metadata describes a network of over {needed:,} parameters (at most "
                         f"{MAX_PARAMETERS:,})")
    if n_stored is not None and needed > n_stored:
        raise _bad(path, f"its metadata describes a network of {needed:,} parameters but the file holds "
                         f"{n_stored:,} values")


def net_from_meta(meta: dict):
    from .model import HydraNet

    return HydraNet(preset_from_meta(meta), tuple(meta["heads"]))


def preset_from_meta(meta: dict):
    """The :class:`~hydrapicker.model.Preset` a model file's metadata describes (checked first)."""
    from .model import PRESETS, Preset

    check_meta(meta, path=meta.get("path") if isinstance(meta, dict) else None)
    params = dict(meta.get("preset_params") or {})
    params.pop("stride", None)
    if params and meta.get("preset") in PRESETS:  # files older than a field: the named preset's value
        known = PRESETS[meta["preset"]]
        params = {**{k: getattr(known, k) for k in ("tile", "tile_margin")}, **params}
    if params:
        params["stem_channels"] = tuple(params["stem_channels"])
        params["head_channels"] = tuple(params["head_channels"])
        return Preset(**params)
    return PRESETS[meta["preset"]]


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


def assign_reach(meta: dict) -> float:
    """The target-assignment reach a model was trained with (:func:`hydrapicker.criterion.encode`); a few-shot
    head on its body is trained with the same."""
    return float(meta.get("assign_reach", defaults.ASSIGN_REACH_OWN_CELL))


def head_learned_centres(meta: dict, head: str) -> bool:
    """Was ``head`` taught its particle's centres from labelled picks (a few-shot head of ``hydra finetune``,
    trained with the centre loss)? The generic head and adapted heads (``hydra pick --adapt``: no centre
    loss) were not. The centre refiner, made for the generic head's errors, leaves such a head's picks
    alone (hydrapicker.picker.Picker): it moved them worse (README, Centres)."""
    rec = (meta.get("finetune") or {}).get(head)
    if not rec:
        return False
    return float(rec.get("lambda_loc", 0.0 if "adaptation" in rec else 1.0)) > 0.0


def threshold_for(meta: dict, head: str = "generic") -> float:
    """The calibrated FOM threshold of ``head`` (few-shot heads carry their own), else the model's."""
    per_head = meta.get("head_thresholds") or {}
    if head in per_head and per_head[head] is not None:
        return float(per_head[head])
    return float(meta.get("default_threshold", defaults.THRESHOLD))
