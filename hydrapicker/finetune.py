"""Few-shot heads: teach a model a new protein from a handful of (often sparsely) picked micrographs.

A new head, initialised from the ``generic`` head, is trained with the body and every other head frozen
(thesis). Because the body is frozen (eval mode, BatchNorm statistics frozen too), its features are
computed **once** per micrograph and per dihedral orientation (rotations by 90 degrees and flips, the
augmentation) and cached in float16; training then runs only the head on feature crops, about 3x cheaper
per step and without a backward pass through the body.

Sparse labels (users rarely pick every particle):

* **Annotated region.** Only the part of a micrograph around the user's picks counts: the union of discs
  of ``region_radius`` particle diameters (default 3) around the labelled picks. Outside it nothing is
  taught (weight 0), so a user who picked one corner does not teach the rest as background. A coordinate
  file that exists but is empty marks its whole micrograph as annotated and particle-free.
* **Positive-unlabelled weights.** Inside the region an unlabelled cell is a negative with weight
  ``w = (1 - t) / (1 - t c)``: the probability that it holds no particle given that it was not labelled,
  with ``t`` the frozen generic head's score for the cell (shifted so that the model's calibrated
  threshold maps to 0.5) and ``c`` the fraction of particles the user labelled. ``c`` is estimated from
  the generic head's confident detections in the region (the share of them within D/2 of a label,
  over the generic head's precision under that rule, 0.92 on training-family data) unless given; ``c = 1`` (dense labels) teaches every unlabelled cell as
  background, so the new head learns to reject the junk the generic head confuses with particles;
  ``c = 0.3`` leaves particle-like unlabelled cells nearly untaught.
* Validation AP and the calibrated threshold use the labels as truth inside the annotated region; with
  labels selected at random, precision against them is ``c`` times the true precision, so the threshold
  is the score with the best F1 once precision is corrected to ``min(1, precision / c)``
  (:func:`max_f1_threshold`).

Over-fitting guards: validation micrographs held out (``val_fraction``; with only 1-2 micrographs, the
right quarter of every micrograph is held out instead, with a guard band), early stopping on validation
AP (the best head is kept), an L2 tie of the new head to the generic head (the training's head-bias loss),
and optional mixing with simulated generic data (``mix_generic`` = share of each batch; BoxNet mixes 1:1).
"""
from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import defaults
from .errors import UserFacingError
from .types import Picks

#: dihedral orientations (k quarter turns, flip), ordered so that the first 2 / 4 mix rotations and flips
DIHEDRAL = ((0, False), (1, True), (2, False), (3, True), (0, True), (1, False), (2, True), (3, False))
HEAD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class FinetuneError(UserFacingError):
    """Bad input to a fine-tune (coordinates that match no micrograph, an existing head name...)."""


# -- labelled micrographs ---------------------------------------------------------------------------
@dataclass
class Labelled:
    """One prepared micrograph with its labels, all in rescaled pixels."""

    name: str
    image: np.ndarray            # prepared (rescaled, normalised) float32
    xy: np.ndarray               # (N, 2) labelled centres
    region: np.ndarray           # float32 per-pixel: 1 = annotated, 0 = not (nothing taught there)
    eval_mask: Optional[np.ndarray] = None   # bool per-pixel: where validation counts (None = region)
    info: dict = field(default_factory=dict)


def annotated_region(shape, xy: np.ndarray, radius_px: float) -> np.ndarray:
    """Union of discs of ``radius_px`` around ``xy`` (float32 0/1); everything when there are no picks."""
    from scipy.ndimage import distance_transform_edt

    if not len(xy) or not np.isfinite(radius_px):
        return np.ones(shape, np.float32)
    seeds = np.ones(shape, bool)
    ij = np.round(xy[:, ::-1]).astype(int)
    ij[:, 0] = np.clip(ij[:, 0], 0, shape[0] - 1)
    ij[:, 1] = np.clip(ij[:, 1], 0, shape[1] - 1)
    seeds[ij[:, 0], ij[:, 1]] = False
    return (distance_transform_edt(seeds) <= radius_px).astype(np.float32)


def load_labelled(micrographs, coords: dict, diameter_A: float, extent_px: float, region_radius: float,
                  log: Callable = print) -> list:
    """Read, rescale and normalise the micrographs that have coordinates; map the picks to rescaled px."""
    from .coords import match_keys
    from .preprocess import prepare, read_mrc, resolve_pixel_size
    from .regions import network_view

    mics = list(micrographs)
    if not mics:
        raise FinetuneError("no micrographs given: pass the micrographs STAR the picks were made on")
    names = [m.name for m in mics]
    matched = match_keys(dict(coords), names)
    unmatched = [k for k in matched if k not in set(names)]
    use = [m for m in mics if m.name in matched]
    if not use:
        ck = ", ".join(sorted(map(str, coords))[:3]) or "(none)"
        mk = ", ".join(names[:3])
        raise FinetuneError(
            f"none of the {len(coords)} coordinate entries matches one of the {len(mics)} micrographs "
            f"(coordinates: {ck}; micrographs: {mk}); coordinate file names must start with the "
            f"micrograph's name (mic001_manualpick.star for mic001.mrc): give the micrographs STAR the "
            f"coordinates were picked on")
    if unmatched:
        log(f"[finetune] {len(unmatched)} coordinate entries match no micrograph and are ignored "
            f"(e.g. {unmatched[0]})")
    out = []
    for m in use:
        data, header_apix = read_mrc(m.path)
        apix = resolve_pixel_size(m.path, m.pixel_size, header_apix)
        data = np.asarray(data, np.float32)
        picks = matched[m.name]
        ny, nx = data.shape
        inside = (picks.x >= -0.5) & (picks.x <= nx - 0.5) & (picks.y >= -0.5) & (picks.y <= ny - 0.5)
        if len(picks) and inside.mean() < 0.8:
            raise FinetuneError(
                f"{int((~inside).sum())} of {len(picks)} coordinates of {m.name} lie outside the micrograph "
                f"({nx}x{ny} px): were they picked on binned or differently sized micrographs? give "
                f"coordinates in pixels of {m.path}")
        # the head learns on what picking shows the network: the rectangle inside the border bands
        data, xy, _ = network_view(data, picks.xy()[inside], diameter_A / apix)
        p = prepare(data, apix, diameter_A, extent_px, path=m.path)
        xy = xy * np.asarray(p.scale_xy)[None, :]
        region = annotated_region(p.image.shape, xy, region_radius * extent_px)
        out.append(Labelled(m.name, p.image, xy, region,
                            info={"path": m.path, "pixel_size": apix, "n_picks": int(len(xy)),
                                  "shape": [int(ny), int(nx)]}))
    if sum(len(lm.xy) for lm in out) == 0:
        raise FinetuneError("the coordinates hold no particles for these micrographs: pick some particles "
                            "on a few micrographs first")
    return out


def split_validation(mics: list, val_fraction: float, extent_px: float, rng) -> tuple:
    """(train, val): whole micrographs with picks held out when there are >= 3 labelled ones, and the right
    strip of every particle-free one (so that the threshold is calibrated, and training stopped, against the
    user's junk too); else the right strip of each (the training side loses the strip plus a guard band of
    one particle diameter)."""
    if val_fraction <= 0:
        return mics, []
    with_picks = [m for m in mics if len(m.xy)]
    if len(mics) >= 3 and len(with_picks) >= 2:
        n_val = min(len(with_picks) - 1, max(1, int(round(val_fraction * len(mics)))))
        val_idx = set(rng.choice([i for i, m in enumerate(mics) if len(m.xy)], n_val, replace=False).tolist())
        train, val = [], []
        for i, m in enumerate(mics):
            if i in val_idx:
                val.append(m)
            elif len(m.xy) == 0:
                part, strip = _strips(m, val_fraction, extent_px)
                train.append(part)
                val.append(strip)
            else:
                train.append(m)
        return train, val
    parts = [_strips(m, val_fraction, extent_px) for m in mics]
    return [t for t, _ in parts], [v for _, v in parts]


def _validation_kind(val: list) -> str:
    """"strips", "micrographs", "micrographs + strips" (of the particle-free ones) or "none"."""
    n_strips = sum(m.eval_mask is not None for m in val)
    if not val:
        return "none"
    return "strips" if n_strips == len(val) else ("micrographs + strips" if n_strips else "micrographs")


def _strips(m, val_fraction: float, extent_px: float) -> tuple:
    """(training part, validation part) of one labelled micrograph: the right strip is held out, and the
    training side loses it plus a guard band of one particle diameter."""
    ny, nx = m.image.shape
    x_cut = int(round(nx * (1 - max(0.15, min(val_fraction, 0.5)))))
    guard = int(math.ceil(extent_px))
    keep = m.xy[:, 0] < x_cut - guard if len(m.xy) else np.zeros(0, bool)
    region = m.region.copy()
    region[:, max(0, x_cut - guard):] = 0
    mask = np.zeros(m.image.shape, bool)
    mask[:, x_cut:] = m.region[:, x_cut:] > 0.5
    return (Labelled(m.name, m.image, m.xy[keep], region, info=m.info),
            Labelled(m.name, m.image, m.xy[m.xy[:, 0] >= x_cut] if len(m.xy) else m.xy, m.region,
                     eval_mask=mask, info=m.info))


# -- cached body features --------------------------------------------------------------------------
def _pad_to(a: np.ndarray, s: int) -> np.ndarray:
    ph, pw = (-a.shape[0]) % s, (-a.shape[1]) % s
    return np.pad(a, ((0, ph), (0, pw))) if (ph or pw) else a


def _device_of(module):
    return next(module.parameters()).device


def body_features(net, image: np.ndarray):
    """Body features of a whole (stride-padded) image, computed in the preset's overlapping tiles (bounded
    memory, as the Picker)."""
    import torch

    from .preprocess import tiles

    bs = net.preset.body_stride
    s = net.stride
    ny, nx = image.shape
    device = _device_of(net)
    out = torch.zeros((net.body.out_channels, ny // bs, nx // bs), dtype=torch.float16)  # the cache: CPU
    with torch.inference_mode():
        for y0, y1, x0, x1, cy0, cy1, cx0, cx1 in tiles((ny, nx), net.preset.tile, net.preset.tile_margin, s):
            y0, x0 = (y0 // s) * s, (x0 // s) * s
            win = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1]))[None, None].to(device)
            f = net.body(win)[0].cpu()
            out[:, cy0 // bs:cy1 // bs, cx0 // bs:cx1 // bs] = \
                f[:, (cy0 - y0) // bs:(cy1 - y0) // bs, (cx0 - x0) // bs:(cx1 - x0) // bs].half()
    return out


@dataclass
class Oriented:
    """One micrograph in one dihedral orientation: features and full-grid targets."""

    feats: object                # torch float16 (C, H/bs, W/bs)
    cls: np.ndarray              # (GH, GW)
    off: np.ndarray              # (2, GH, GW)
    region: np.ndarray           # (GH, GW) mean annotated fraction per cell
    teacher: np.ndarray          # (3, GH, GW) generic head outputs (logit divided by the temperature)
    weight: Optional[np.ndarray] = None   # (GH, GW) final per-cell weights
    target: Optional[np.ndarray] = None   # (GH, GW) classification targets (soft where unlabelled)


def orient(net, m: Labelled, k: int, flip: bool, temperature: float, reach: float = defaults.ASSIGN_REACH_OWN_CELL) -> Oriented:
    """One dihedral view of a labelled micrograph: body features, targets (assigned with the base model's
    ``reach``, :func:`hydrapicker.criterion.encode`) and the generic head's outputs as the teacher."""
    import torch

    from .criterion import encode
    from .data import _rot_flip

    s = net.stride
    img, xy, region = _rot_flip(m.image, m.xy.reshape(-1, 2), m.region, k, flip)
    img, region = _pad_to(img, s), _pad_to(region, s)
    feats = body_features(net, img)
    gh, gw = img.shape[0] // s, img.shape[1] // s
    cls, off, _ = encode(xy, (gh, gw), s, reach)
    reg = region.reshape(gh, s, gw, s).mean(axis=(1, 3)).astype(np.float32)
    with torch.inference_mode():
        t = net.heads["generic"](feats.float()[None].to(_device_of(net)))[0].cpu().numpy().astype(np.float32)
    t[2] /= temperature
    return Oriented(feats, cls, off, reg, t)


def pu_targets(region: np.ndarray, teacher_prob: np.ndarray, cls: np.ndarray, c: float) -> tuple:
    """Per-cell (target, weight) for positive-unlabelled learning with label fraction ``c``.

    Labelled cells: target 1, weight 1. An unlabelled cell holds a particle with probability
    ``q = t (1 - c) / (1 - t c)`` (Elkan & Noto 2008, with the generic head's probability ``t`` as the
    prior), so its target is ``q`` (the expected loss over both cases), weighted by how much of the cell
    the user annotated. Dense labels (c = 1) give q = 0: plain negatives.
    """
    c = float(np.clip(c, 0.0, 1.0))
    t = np.clip(teacher_prob, 0.0, 1.0)
    q = t * (1.0 - c) / np.maximum(1.0 - t * c, 1e-6)
    lab = cls > 0.5
    target = np.where(lab, 1.0, q).astype(np.float32)
    weight = np.where(lab, 1.0, region).astype(np.float32)
    return target, weight


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def _logit(p):
    p = float(np.clip(p, 1e-4, 1 - 1e-4))
    return math.log(p / (1 - p))


# -- detection on cached features ------------------------------------------------------------------
def detect(grid: np.ndarray, stride: int, extent_px: float, temperature: float = 1.0, floor=None) -> Picks:
    """(3, GH, GW) head outputs -> picks in rescaled px: the picking path's decode and finalize
    (``PickPolicy.for_prepared``: every pick above ``floor``, default the picking floor)."""
    from .postprocess import PickPolicy, decode, finalize

    policy = PickPolicy.for_prepared(extent_px, defaults.FLOOR if floor is None else floor)
    return finalize(decode(grid, stride, policy.decode_floor, temperature), policy)


def _in_mask(xy: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if not len(xy):
        return np.zeros(0, bool)
    ij = np.round(xy[:, ::-1]).astype(int)
    ok = (ij[:, 0] >= 0) & (ij[:, 0] < mask.shape[0]) & (ij[:, 1] >= 0) & (ij[:, 1] < mask.shape[1])
    out = np.zeros(len(xy), bool)
    out[ok] = mask[ij[ok, 0], ij[ok, 1]]
    return out


def estimate_label_fraction(train: list, oriented: list, stride: int, extent_px: float, shift: float,
                            nominal_precision: float = defaults.LABEL_FRACTION_NOMINAL_PRECISION) -> tuple:
    """(c, info): the share of the generic head's most confident detections in the annotated region that
    hit a label (centre within D/2 of it), over ``nominal_precision``; 1 when there are too few detections
    to tell.

    The detections used are those above the model's calibrated threshold, or, when there are fewer of
    them than half the labels (a weak or uncalibrated generic head), the best ``labels / 2`` of those
    within reach of it (shifted score >= 0.1). A generic head that detects nothing tells nothing: c = 1.
    """
    from .metrics import match_greedy

    scores, hits, n_labels = [], [], 0
    for m, o in zip(train, oriented):
        if not len(m.xy):
            continue  # declared particle-free: says nothing about how completely particles were picked
        grid = o.teacher.copy()
        grid[2] -= shift
        found = detect(grid, stride, extent_px, 1.0, floor=0.1)  # 0.5 = the calibrated threshold
        found = found.subset(_in_mask(found.xy(), m.region > 0.5))
        n_labels += len(m.xy)
        if not len(found):
            continue
        # on a labelled particle = its centre within D/2 of the label: whether the user picked that particle,
        # not how well the generic head centred it (the IoU rule counted off-centre detections of low-SNR
        # particles as unlabelled ones and under-estimated c for dense labels: threshold too low)
        tp, _ = match_greedy(found, m.xy, extent_px, centre=True)
        scores.append(found.fom)
        hits.append(tp >= 0)
    if not scores:
        return 1.0, {"detections": 0, "hits": 0, "estimated": False}
    sc, hit = np.concatenate(scores), np.concatenate(hits)
    order = np.argsort(-sc, kind="stable")
    k = min(len(sc), max(int((sc >= 0.5).sum()), int(math.ceil(n_labels / 2))))
    n_det, n_hit = int(k), int(hit[order[:k]].sum())
    if n_det < 10:
        return 1.0, {"detections": n_det, "hits": n_hit, "estimated": False}
    c = float(np.clip(n_hit / (nominal_precision * n_det), 0.05, 1.0))
    return c, {"detections": n_det, "hits": n_hit, "estimated": True}


def validate(head, val: list, val_feats: list, stride: int, extent_px: float, temperature: float) -> dict:
    """Label AP of ``head`` on the validation micrographs, inside their annotated/held-out region."""
    import torch

    from .metrics import evaluate

    picks, truth = {}, {}
    was = head.training
    head.eval()
    with torch.inference_mode():
        for k, (m, f) in enumerate(zip(val, val_feats)):
            grid = head(f.float()[None].to(_device_of(head)))[0].cpu().numpy()
            found = detect(grid, stride, extent_px, temperature)
            mask = m.eval_mask if m.eval_mask is not None else m.region > 0.5
            picks[str(k)] = found.subset(_in_mask(found.xy(), mask))
            truth[str(k)] = m.xy[_in_mask(m.xy, mask)] if len(m.xy) else m.xy
    head.train(was)
    return evaluate(picks, truth, extent_px)


def max_f1_threshold(res: dict, c: float) -> Optional[float]:
    """The new head's threshold: the score with the best F1 on the validation data once precision against
    the labels is corrected for partial labels (``min(1, precision / c)``; recall against a random share of
    the particles is unbiased). None when nothing on the validation data is a hit.

    Since 2026-12-06; before, the lowest score where precision against the labels reached ``0.8 c``. That
    rule failed both ways on a few labelled micrographs: on junk-laden ones ``c`` is under-estimated (the
    generic head's detections on junk look like unlabelled particles), so the precision asked for was low
    and the threshold fell to 0.06 (precision 0.23 on new micrographs); where validation precision reached
    0.8 only on its top few picks, the threshold rose to 0.75 (recall 0.02)."""
    from .metrics import index_at_max_f1

    pr = res["pr"]
    if not len(pr["thresholds"]):
        return None
    k, f1 = index_at_max_f1(np.minimum(1.0, np.nan_to_num(np.asarray(pr["precision"], float)) / max(c, 1e-6)),
                            pr["recall"])
    return float(pr["thresholds"][k]) if f1 > 0 else None


# -- the fine-tune -----------------------------------------------------------------------------------
def _freeze_norms(module):
    import torch

    for mod in module.modules():
        if isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
            mod.eval()


def _generic_sets(n_specs: int, n_mics: int, extent_px: float, seed: int, log) -> list:
    """Simulated source micrographs (dense labels) to mix into the batches."""
    from .simulate import source_dataset_specs
    from .train import simulate_sets

    sets = simulate_sets(source_dataset_specs(n=n_specs, seed=1000 + seed), n_mics, extent_px, 0.0, seed,
                         1, 50_000, log)
    out = []
    for s in sets:
        for k, pm in enumerate(s.mics):
            out.append(Labelled(f"{s.name}/{k}", pm.image, pm.xy, np.ones(pm.image.shape, np.float32)))
    return out


@dataclass(frozen=True)
class FinetuneConfig:
    """How a few-shot head is trained (the tuning arguments of :func:`finetune`)."""

    epochs: Optional[int] = None
    val_fraction: float = 0.2
    mix_generic: float = 0.0
    seed: int = 0
    label_fraction: Optional[float] = None
    region_radius: float = 3.0
    crop: int = 128
    batch: int = 8
    lr: float = 1e-3
    patience: int = 6
    lambda_tie: float = 0.01
    max_minutes: Optional[float] = None
    memory_gb: float = 1.5
    steps_per_epoch: Optional[int] = None
    #: pseudo-labels (self-adaptation, :mod:`hydrapicker.adapt`): unlabelled cells whose shifted generic
    #: score is below this are negatives, the rest are left untaught (instead of the PU soft targets)
    negatives_below: Optional[float] = None
    #: weight of the centre loss (0: the new head keeps the generic head's centre offsets, e.g. when the
    #: labels' positions are a model's own estimates)
    lambda_loc: float = 1.0


def _load_base(base_model, head_name, diameter_A, device):
    """(net on the device, meta, checkpoint) of the base model, after checking the new head's name."""
    from .checkpoint import load_checkpoint
    from .picker import select_device

    if not isinstance(head_name, str) or not HEAD_NAME.match(head_name):
        raise FinetuneError(f"head name {head_name!r} is not valid: use letters, digits, '_', '-' or '.' "
                            f"(e.g. --name apoferritin)")
    if not (diameter_A and diameter_A > 0):
        raise FinetuneError(f"particle diameter must be a positive number of Angstrom, got {diameter_A}")
    device = select_device(device)
    net, meta, ck = load_checkpoint(base_model, with_ckpt=True)
    net.to(device)
    if head_name in net.heads:
        raise FinetuneError(f"model {meta.get('path')} already has a head named {head_name!r} (heads: "
                            f"{', '.join(net.head_names)}); choose another --name")
    return net, meta, ck


def _cache_features(net, train, mix, val, cfg, temperature, reach, should_stop, log):
    """Body features of every training micrograph in as many dihedral orientations as fit in
    ``cfg.memory_gb`` -> (variants [(source index, Oriented)], validation features, orientations), or None
    when stopped."""
    bs, stride = net.preset.body_stride, net.stride
    fs = stride // bs
    per_variant = sum(net.body.out_channels * (m.image.shape[0] // bs + fs) * (m.image.shape[1] // bs + fs) * 2
                      for m in train + mix)
    n_var = next((n for n in (8, 4, 2) if n * per_variant <= cfg.memory_gb * 2 ** 30), 1)
    t0 = time.time()
    net.eval()
    variants = []   # (source index, Oriented) over train + mix
    for rot, flip in DIHEDRAL[:n_var]:
        for i, m in enumerate(train + mix):
            if should_stop is not None and should_stop():
                return None
            variants.append((i, orient(net, m, rot, flip, temperature, reach)))
    val_feats = [body_features(net, _pad_to(m.image, stride)) for m in val]
    log(f"[finetune] body features of {len(train) + len(mix)} micrographs x {n_var} orientations cached in "
        f"{time.time() - t0:.0f} s")
    return variants, val_feats, n_var


def band_targets(region: np.ndarray, teacher_prob: np.ndarray, cls: np.ndarray, below: float) -> tuple:
    """Per-cell (target, weight) for pseudo-labels: labelled cells positive; unlabelled cells negative
    where the generic head is confident there is nothing (``teacher_prob < below``), else untaught."""
    lab = cls > 0.5
    target = lab.astype(np.float32)
    weight = np.where(lab, 1.0, np.where(teacher_prob < below, region, 0.0)).astype(np.float32)
    return target, weight


def _weigh_labels(train, variants, stride, extent, thr_generic, cfg, log) -> tuple:
    """Label fraction (estimated unless given) and every cell's target and weight -> (c, evidence)."""
    ident = [o for i, o in variants[:len(train)]]
    shift = _logit(thr_generic)
    if cfg.negatives_below is not None:
        for i, o in variants:
            o.target, o.weight = (band_targets(o.region, _sigmoid(o.teacher[2] - shift), o.cls, cfg.negatives_below)
                                  if i < len(train) else (o.cls, np.ones_like(o.region)))
        log(f"[finetune] pseudo-labels: unlabelled cells with a generic score under {cfg.negatives_below:.2f} "
            f"(relative to its threshold at 0.5) are negatives, the rest untaught")
        return 1.0, {"pseudo_labels": True}
    est_c, c_info = estimate_label_fraction(train, ident, stride, extent, shift)
    c = est_c if cfg.label_fraction is None else float(cfg.label_fraction)
    for i, o in variants:
        if i < len(train):
            # a micrograph given with no picks is declared particle-free (junk the user wants rejected):
            # every cell a plain negative, whatever the label fraction of the others
            c_i = 1.0 if not len(train[i].xy) else c
            o.target, o.weight = pu_targets(o.region, _sigmoid(o.teacher[2] - shift), o.cls, c_i)
        else:
            o.target, o.weight = o.cls, np.ones_like(o.region)
    log(f"[finetune] label fraction {c:.2f} ({'estimated' if cfg.label_fraction is None else 'given'}; "
        f"generic detections {c_info['detections']}, on labels {c_info['hits']})")
    return c, c_info


def _new_head(net, head_name):
    """The new head, initialised from the generic head; everything else frozen."""
    head = net.add_head(head_name, init_from="generic")
    for p in net.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    head.train()
    _freeze_norms(head)
    return head


def _sample(pool, g: int, fs: int, rng):
    """One (features, cls, offsets, weight, target) crop of g x g cells from a random oriented micrograph,
    preferring crops that are mostly annotated."""
    o = pool[int(rng.integers(0, len(pool)))]
    gh, gw = o.cls.shape
    for _ in range(8):
        i0, j0 = int(rng.integers(0, gh - g + 1)), int(rng.integers(0, gw - g + 1))
        w = o.weight[i0:i0 + g, j0:j0 + g]
        if w.mean() > 0.1:
            break
    f = o.feats[:, i0 * fs:(i0 + g) * fs, j0 * fs:(j0 + g) * fs]
    return f, o.cls[i0:i0 + g, j0:j0 + g], o.off[:, i0:i0 + g, j0:j0 + g], w, o.target[i0:i0 + g, j0:j0 + g]


def train_one_epoch(net, head_name, own, gen, opt, crit, cfg, g, steps, rng, should_stop=None):
    """``steps`` optimiser steps of the new head on crops of ``own`` (and ``gen``, at ``cfg.mix_generic``)
    -> the losses, or None when stopped."""
    import torch

    from .criterion import head_bias_loss

    head = net.heads[head_name]
    device = _device_of(head)
    fs = net.stride // net.preset.body_stride
    losses = []
    for _ in range(steps):
        if should_stop is not None and should_stop():
            return None
        n_gen = int(rng.binomial(cfg.batch, cfg.mix_generic)) if gen else 0
        items = [_sample(gen, g, fs, rng) for _ in range(n_gen)] + [_sample(own, g, fs, rng)
                                                                     for _ in range(cfg.batch - n_gen)]
        f = torch.stack([it[0] for it in items]).float().to(device)
        cls, off, wt, soft = (torch.from_numpy(np.stack([it[j] for it in items])).to(device) for j in (1, 2, 3, 4))
        loss, parts = crit(head(f), cls, off, wt, soft=soft)
        if cfg.lambda_tie:
            loss = loss + cfg.lambda_tie * head_bias_loss(net, [head_name])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 10.0)
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _fit(net, head_name, variants, n_train, area, val, val_feats, cfg, grid, rng, t_start, should_stop, log):
    """Epochs of :func:`train_one_epoch` with validation and early stopping; the best head is kept
    -> (history, (best AP, state, epoch), last epoch, steps), or None when stopped. ``area``: pixels of the
    training micrographs (one epoch ~ that area once); ``grid``: (stride, extent px, temperature)."""
    import torch

    from .criterion import Criterion

    head = net.heads[head_name]
    stride, extent, temperature = grid
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=1e-5)
    crit = Criterion(lambda_loc=cfg.lambda_loc)
    g = min([max(2, cfg.crop // stride)] + [min(o.cls.shape) for _, o in variants])
    own = [o for i, o in variants if i < n_train]
    gen = [o for i, o in variants if i >= n_train]
    steps = cfg.steps_per_epoch or int(np.clip(math.ceil(area / float((g * stride) ** 2) / cfg.batch), 10, 200))
    if not val:
        log("[finetune] no validation data: training a fixed number of epochs, no early stopping")
    history, best, step, epoch = [], (-1.0, None, 0), 0, 0
    deadline = t_start + cfg.max_minutes * 60 if cfg.max_minutes else None
    for epoch in range(1, (int(cfg.epochs) if cfg.epochs else 40) + 1):
        losses = train_one_epoch(net, head_name, own, gen, opt, crit, cfg, g, steps, rng, should_stop)
        if losses is None:
            return None
        step += len(losses)
        rec = {"epoch": epoch, "loss": float(np.mean(losses)), "seconds": round(time.time() - t_start, 1)}
        if val:
            res = validate(head, val, val_feats, stride, extent, temperature)
            rec["val_AP"] = float(res["AP"]) if np.isfinite(res["AP"]) else 0.0
            if rec["val_AP"] > best[0] + 1e-4:
                best = (rec["val_AP"], copy.deepcopy(head.state_dict()), epoch)
        history.append(rec)
        log(f"[finetune] epoch {epoch}: loss {rec['loss']:.4f}"
            + (f", validation AP {rec['val_AP']:.3f} (best {best[0]:.3f} at epoch {best[2]})" if val else "")
            + f" ({rec['seconds']:.0f} s)")
        if val and epoch - best[2] >= cfg.patience:
            log(f"[finetune] early stop: no validation gain in {cfg.patience} epochs")
            break
        if deadline and time.time() > deadline:
            log(f"[finetune] time limit of {cfg.max_minutes} min reached")
            break
    return history, best, epoch, step


def _calibrate(head, val, val_feats, stride, extent, temperature, c, base_thr, log) -> tuple:
    """(threshold of the new head, validation summary): the best label-corrected F1 on the validation data
    (:func:`max_f1_threshold`), else the base model's threshold."""
    from .metrics import summary

    thr, val_summary = None, None
    if val:
        res = validate(head, val, val_feats, stride, extent, temperature)
        thr = max_f1_threshold(res, c)
        val_summary = summary(res)
    if thr is None:
        thr = base_thr
        log(f"[finetune] no calibrated threshold (no hit on the validation data); "
            f"using the base model's {thr:.3f}")
    return thr, val_summary


def _write_model(out, net, meta, ck, head_name, thr, base_thr, diameter_A, info, refiner=None) -> Path:
    """The model file: the base model's heads plus the new one, its threshold and its training record;
    ``refiner``: the file name of the centre refiner taught the new head's labels, beside it (it replaces
    one the base model named)."""
    import torch

    from .checkpoint import save_checkpoint

    new_meta = {k: v for k, v in meta.items() if k != "path"}
    if refiner:
        new_meta["refiner"] = str(refiner)
    head_thr = dict(new_meta.get("head_thresholds") or {})
    head_thr.setdefault("generic", base_thr)
    head_thr[head_name] = float(thr)
    new_meta["head_thresholds"] = head_thr
    new_meta["default_threshold"] = float(thr)
    new_meta["default_head"] = head_name
    new_meta["head_diameters"] = {**new_meta.get("head_diameters", {}), head_name: float(diameter_A)}
    new_meta["finetune"] = {**(new_meta.get("finetune") or {}), head_name: info}
    base_half = any(v.dtype == torch.float16 for v in ck["model"].values() if torch.is_tensor(v))
    save_checkpoint(out, net, new_meta, half=base_half)
    return out


def _choose_working_scale(base_model, micrographs, coords, diameter_A, device, log, should_stop) -> tuple:
    """:func:`hydrapicker.scale.choose_scale` on the labelled micrographs -> (scale, {scale: score})."""
    import tempfile

    from .coords import match_keys
    from .picker import Picker
    from .scale import choose_scale

    mics = list(micrographs)
    matched = match_keys(dict(coords), [m.name for m in mics])
    picker = Picker(base_model, device=device, log=None, refine=False)
    with tempfile.TemporaryDirectory(prefix="hydra-scale-") as work:
        _, scale, scores = choose_scale(picker, [m for m in mics if m.name in matched], diameter_A, None, work,
                                        log, should_stop)
    return scale, scores


def finetune(base_model, micrographs, coords: dict, diameter_A: float, head_name: str, epochs=None,
             out=None, log: Callable = print, should_stop: Optional[Callable[[], bool]] = None,
             val_fraction: float = 0.2, mix_generic: float = 0.0, seed: int = 0,
             label_fraction: Optional[float] = None, region_radius: float = 3.0, crop: int = 128,
             batch: int = 8, lr: float = 1e-3, patience: int = 6, lambda_tie: float = 0.01,
             max_minutes: Optional[float] = None, memory_gb: float = 1.5,
             steps_per_epoch: Optional[int] = None, device: str = "auto",
             negatives_below: Optional[float] = None, lambda_loc: float = 1.0,
             record: Optional[dict] = None, working_scale="auto", centre_refiner: bool = True) -> Optional[Path]:
    """Train a new head ``head_name`` on ``micrographs`` labelled by ``coords`` ({name: Picks}).

    ``base_model``: model file (None = the shipped generic model). ``epochs``: maximum number of epochs
    (one epoch ~ the labelled area once; default 40, early stopping on validation AP with ``patience``).
    ``label_fraction``: share of the particles the user picked (None = estimate; 1 = every particle in
    the annotated region is picked). ``device``: ``auto`` (the first GPU if any), ``cpu``, ``cuda[:N]``;
    body features are cached in CPU memory, the head trains on the device. The tuning arguments form a
    :class:`FinetuneConfig` (``negatives_below``: pseudo-labels, see there). ``record``: more provenance
    for the head's entry in the model's metadata. ``working_scale``: the particle extent the network
    sees, as a fraction of the given diameter's (:mod:`hydrapicker.scale`): "auto" chooses it on the
    labelled micrographs (smaller than 1 only when the base head's best candidates score clearly higher
    there, as for elongated particles); the new model keeps it. ``centre_refiner``: with labels (``lambda_loc``
    > 0), the body's centre refiner is also taught them and written beside the model, which names it
    (:func:`hydrapicker.refine_adapt.teach_labelled_refiner`; it re-centres the new head's picks). Returns the
    written model file (base heads + the new one), or None when ``should_stop()`` became true (nothing is
    written).
    """
    import torch

    from .checkpoint import assign_reach
    from .scale import at_scale

    cfg = FinetuneConfig(epochs, val_fraction, mix_generic, seed, label_fraction, region_radius, crop, batch,
                         lr, patience, lambda_tie, max_minutes, memory_gb, steps_per_epoch, negatives_below,
                         lambda_loc)
    t_start, cpu_start = time.time(), time.process_time()
    log = log or (lambda *a, **k: None)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net, meta, ck = _load_base(base_model, head_name, diameter_A, device)
    scores = {}
    if working_scale == "auto":
        working_scale, scores = _choose_working_scale(base_model, micrographs, coords, diameter_A, device, log,
                                                      should_stop)
    meta = at_scale(meta, float(working_scale))
    record = {"working_scale": float(working_scale), "scale_top_scores": {f"{k:g}": v for k, v in scores.items()},
              **(record or {})}
    extent, stride = float(meta["extent_px"]), int(meta["stride"])
    temperature = float(meta.get("temperature", 1.0))
    base_thr = float(meta.get("default_threshold", defaults.THRESHOLD))
    thr_generic = float(meta.get("head_thresholds", {}).get("generic", base_thr))

    mics = load_labelled(micrographs, coords, diameter_A, extent, region_radius, log)
    train, val = split_validation(mics, val_fraction, extent, rng)
    n_picks = sum(m.info["n_picks"] for m in mics)
    log(f"[finetune] {len(mics)} labelled micrographs, {n_picks} picks; {len(train)} for training, "
        f"{len(val)} for validation ({_validation_kind(val)})")
    mix = _generic_sets(4, 2, extent, seed, log) if mix_generic > 0 else []
    cached = _cache_features(net, train, mix, val, cfg, temperature, assign_reach(meta), should_stop, log)
    fitted = None
    if cached is not None:
        variants, val_feats, n_var = cached
        c, c_info = _weigh_labels(train, variants, stride, extent, thr_generic, cfg, log)
        head = _new_head(net, head_name)
        fitted = _fit(net, head_name, variants, len(train), sum(m.image.size for m in train), val, val_feats,
                      cfg, (stride, extent, temperature), rng, t_start, should_stop, log)
    if fitted is None:
        log("[finetune] stopped on request; nothing written")
        return None
    history, best, epoch, step = fitted
    if best[1] is not None:
        head.load_state_dict(best[1])
    head.eval()
    thr, val_summary = _calibrate(head, val, val_feats, stride, extent, temperature, c, base_thr, log)
    info = {
        "base_model": str(meta.get("path")), "diameter_A": float(diameter_A),
        "micrographs": [m.name for m in mics], "train_micrographs": [m.name for m in train],
        "validation_micrographs": [m.name for m in val],
        "validation": _validation_kind(val),
        "n_picks": int(n_picks), "label_fraction": c, "label_fraction_estimated": label_fraction is None,
        "label_fraction_evidence": c_info, "region_radius_diameters": region_radius, "mix_generic": mix_generic,
        "orientations": n_var, "epochs": epoch, "best_epoch": best[2] if val else epoch, "steps": step,
        "validation_AP": best[0] if val else None, "threshold": float(thr),
        "seconds": round(time.time() - t_start, 1), "cpu_seconds": round(time.process_time() - cpu_start, 1),
        "history": history, "validation_metrics": val_summary, "seed": seed, "lambda_loc": float(lambda_loc),
        **(record or {}),
    }
    out = Path(out) if out else Path.cwd() / f"{head_name}.pt"
    refiner = None
    if centre_refiner and float(lambda_loc) > 0:
        from .refine_adapt import teach_labelled_refiner

        taught = teach_labelled_refiner(net, meta, mics, head_name, out, log, should_stop)
        if should_stop is not None and should_stop():
            log("[finetune] stopped on request; nothing written")
            return None
        refiner = taught.path.name if taught.accepted else None
        info["centre_refiner"] = {"taught": taught.accepted, "reason": taught.reason, **taught.record, "file": refiner}
    out = _write_model(out, net, meta, ck, head_name, thr, base_thr, diameter_A, info, refiner)
    log(f"[finetune] head {head_name!r}: validation AP {info['validation_AP'] if val else float('nan'):.3f}, "
        f"threshold {thr:.3f}; wrote {out} ({time.time() - t_start:.0f} s)")
    return out
