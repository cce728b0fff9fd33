"""Working scale: the particle extent the network sees, chosen from a data set's own micrographs.

The network sees every particle at the model's extent (16 px per diameter). For an elongated particle the
diameter a user gives is its length, and the network may see it better when told the particle is smaller
(so that it looks larger). :func:`choose_scale` picks a few micrographs zero-shot at the given diameter and
at :data:`SCALES` x of it, and takes a smaller scale only when its best candidates score clearly higher:
the mean over micrographs of each one's :data:`TOP` highest FOMs (:func:`top_score`) at least
:data:`MARGIN` above the given scale's. :data:`MARGIN` lies above the largest such gain on 32 simulated
tuning sets of the training families (0.042, where that scale lost 0.025 AP;
``benchmarks/experiments/working_scale.py --tune 32``), never on the benchmark targets or the real sets.

A model at another scale is a copy of the model file with ``extent_px`` divided by the scale (and
``working_scale`` recorded; :func:`model_at_scale`): everything that reads the model (picking, few-shot
training, the refiner) then works at that scale, and a head trained there keeps it. ``--adapt``
(:mod:`hydrapicker.adapt`) and few-shot training (:mod:`hydrapicker.finetune`) use it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

#: particle extents tried besides the given one, as fractions of the given diameter (0.85: the network is
#: told the particle is 0.85 x the given diameter, so it sees it 1/0.85 x larger)
SCALES = (0.85, 0.75)
#: the best FOMs per micrograph that are averaged (the score)
TOP = 30
#: a smaller scale is taken when its score is this much above the given scale's
MARGIN = 0.05
#: micrographs picked at each scale (spread over those given)
MICROGRAPHS = 4


def top_score(picks, k: int = TOP) -> float:
    """Mean over micrographs of the mean of each one's ``k`` highest FOMs (0 when nothing was picked).
    ``picks``: an iterable of :class:`hydrapicker.types.Picks`."""
    tops = [float(np.sort(p.fom)[-k:].mean()) for p in picks if len(p)]
    return float(np.mean(tops)) if tops else 0.0


def at_scale(meta: dict, scale: float) -> dict:
    """A model's metadata at ``scale`` x the extent it picks at (``extent_px`` / scale; scales compound in
    ``working_scale``); ``meta`` itself for 1."""
    if float(scale) == 1.0:
        return meta
    return {**meta, "extent_px": float(meta["extent_px"]) / float(scale),
            "working_scale": float(meta.get("working_scale", 1.0)) * float(scale)}


def model_at_scale(path, scale: float, out) -> Path:
    """A copy of model file ``path`` at :func:`at_scale`, written to ``out``."""
    import torch

    from .atomic import atomic_path
    from .checkpoint import read_checkpoint

    ckpt = read_checkpoint(path)
    ckpt["meta"] = at_scale(ckpt["meta"], scale)
    with atomic_path(Path(out)) as tmp:
        torch.save(ckpt, tmp)
    return Path(out)


def parse_working_scale(text: str):
    """A command line's ``--working-scale``: "auto", or a number (the fraction of the given diameter's extent)."""
    if text == "auto":
        return text
    value = float(text)
    if not 0.3 <= value <= 3.0:
        raise ValueError(text)
    return value


def choose_scale(picker, mics: list, diameter_A: float, head: Optional[str], work, log: Callable = print,
                 should_stop=None, n_micrographs: int = MICROGRAPHS, top: int = TOP,
                 margin: float = MARGIN) -> tuple:
    """-> (picker at the chosen scale, the scale, {scale: score}); ``picker`` itself and 1.0 when no other
    scale scores ``margin`` higher (or ``n_micrographs`` is 0). Models at other scales go to folder ``work``,
    which must outlive the returned picker's use of its file."""
    from .micrographs import sample_micrographs

    sample = sample_micrographs(list(mics), n_micrographs) if n_micrographs else []
    # a model already at a smaller scale (an adapted or few-shot model) goes no further than SCALES reach
    # from the given diameter: below it the score stops tracking AP (multi-domain particles' domains score
    # like particles)
    done = float(picker.meta.get("working_scale", 1.0))
    tried = [s for s in SCALES if done * s >= min(SCALES) - 1e-9]
    if not sample or not tried:
        return picker, 1.0, {}
    head = head or picker.default_head

    def score(p) -> float:
        policy = p.policy(diameter_A, head, threshold=None, evidence=0)  # the network's own FOMs
        return top_score([r.picks for r in p.pick(sample, diameter_A, head=head, policy=policy,
                                                  should_stop=should_stop) if r.ok], top)

    scores, pickers = {1.0: score(picker)}, {1.0: picker}
    for s in tried:
        path = model_at_scale(picker.meta["path"], s, Path(work) / f"scale{s:g}.pt")
        pickers[s] = picker.with_model(path)
        scores[s] = score(pickers[s])
    best = max(tried, key=lambda s: scores[s])
    chosen = best if scores[best] >= scores[1.0] + margin else 1.0
    (log or (lambda *a: None))(
        f"[scale] working scale {chosen:g} x the given diameter's extent (mean of the {top} best FOMs per "
        f"micrograph on {len(sample)}: " + ", ".join(f"{s:g}: {v:.3f}" for s, v in scores.items()) + ")")
    return pickers[chosen], chosen, scores


def picker_at_scale(picker, mics: list, diameter_A: float, head: Optional[str], working_scale, log: Callable = print):
    """Zero-shot picking at a working scale (``hydra pick --working-scale``, the RELION and CryoSPARC pick
    jobs): ``picker`` at ``working_scale`` (a number), or at the scale :func:`choose_scale` chooses on
    ``mics`` ("auto"); ``picker`` itself at 1. The picker returned holds its model in memory."""
    import tempfile

    log = log or (lambda *a, **k: None)
    with tempfile.TemporaryDirectory(prefix="hydra-scale-") as work:
        if working_scale == "auto":
            scaled, scale, _ = choose_scale(picker, mics, diameter_A, head, work, log)
        else:
            scale = float(working_scale)
            scaled = (picker.with_model(model_at_scale(picker.meta["path"], scale, Path(work) / "model.pt"))
                      if scale != 1.0 else picker)
    if scale != 1.0:
        scaled.log = log  # the picker made at that scale reports like the one it came from
        log(f"[hydra] picking at working scale {scale:g}: particles seen as if {scale * diameter_A:.0f} A across")
    return scaled
