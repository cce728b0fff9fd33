"""Model soups: the weight-by-weight average of models fine-tuned from one start.

Two fine-tunes of one model, averaged, are often better than either (Wortsman et al., "Model soups", ICML
2022); averaging a fine-tune with the model it started from trades the new skill for the old one (WiSE-FT).
The soup keeps the first model's heads listed in ``heads`` (the shipped files hold ``generic`` only), and its
default threshold is calibrated again as training calibrates it (:func:`hydrapicker.train.calibrate_threshold`)
on the validation micrographs of the members' own training runs (their recipes are in their metadata).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

from . import defaults


class SoupError(ValueError):
    pass


def _recipe(meta: dict) -> dict:
    """A member's training recipe (``meta['training']['recipe']``)."""
    return (meta.get("training") or {}).get("recipe") or {}


def average_state(states: Sequence[dict], weights: Sequence[float]) -> dict:
    """The weighted average of state dicts with the same keys and shapes (integer buffers from the first)."""
    keys = list(states[0].keys())
    for s in states[1:]:
        if list(s.keys()) != keys or any(s[k].shape != states[0][k].shape for k in keys):
            raise SoupError("the models differ in architecture: only fine-tunes of one model can be averaged")
    out = {}
    for k in keys:
        if states[0][k].is_floating_point():
            out[k] = sum(w * s[k].float() for w, s in zip(weights, states))
        else:
            out[k] = states[0][k].clone()
    return out


def soup(paths: Sequence, out, weights: Optional[Sequence[float]] = None, heads=("generic",),
         val_mics: int = 2, workers: int = 1, log: Callable = print) -> Path:
    """Average the models ``paths`` (weights: equal by default) into ``out`` and calibrate its threshold."""
    from .checkpoint import load_checkpoint, save_checkpoint
    from .simulate.datasets import source_dataset_specs
    from .train import calibrate_threshold, simulate_sets

    if len(paths) < 2:
        raise SoupError("a soup needs at least two models")
    weights = [1.0 / len(paths)] * len(paths) if weights is None else [float(w) for w in weights]
    if len(weights) != len(paths) or abs(sum(weights) - 1.0) > 1e-6 or min(weights) < 0:
        raise SoupError(f"weights {weights}: one per model, non-negative, summing to 1")
    loaded = [load_checkpoint(p) for p in paths]
    for member, _ in loaded:
        member.keep_heads(heads)
    net, meta = loaded[0]
    net.load_state_dict(average_state([member.state_dict() for member, _ in loaded], weights))
    net.eval()

    val_sets = []
    for _, m in loaded:
        r = _recipe(m)
        if not r:
            raise SoupError(f"{m.get('path')}: no training recipe in its metadata to calibrate on")
        specs = source_dataset_specs(n=r["datasets"], seed=r["seed"], junk_fraction=r.get("junk_fraction", 0.0),
                                     junk_clumps=r.get("junk_clumps", False),
                                     small_fraction=r.get("small_fraction", defaults.SMALL_FRACTION))
        val_sets += simulate_sets(specs, val_mics, net.preset.extent_px, 0.0, r["seed"] + 1, workers, 10_000, log)
    thr = calibrate_threshold(net, val_sets, net.stride, net.preset.extent_px)
    log(f"[soup] {len(paths)} models, weights {weights}; threshold {thr:.3f} calibrated on "
        f"{sum(len(s.mics) for s in val_sets)} validation micrographs of their training runs")
    members = [{"path": str(p), "weight": w, "default_threshold": m.get("default_threshold"),
                "training_seed": _recipe(m).get("seed")} for p, w, (_, m) in zip(paths, weights, loaded)]
    new_meta = {k: v for k, v in meta.items() if k not in ("path", "validation_AP", "validation_AP_mean",
                                                               "validation_AP_dataset_heads")}
    new_meta.update(default_threshold=float(thr), soup={"members": members,
                                                           "calibration_precision": defaults.CALIBRATION_PRECISION})
    return save_checkpoint(out, net, new_meta, half=True)
