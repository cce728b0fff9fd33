"""From network output to final picks, once: :func:`decode` (grid -> :class:`Candidates`) and
:func:`finalize` (candidates + :class:`PickPolicy` -> :class:`~hydrapicker.types.Picks`).

Every entry point (``hydra pick``, the RELION and CryoSPARC jobs, training and few-shot validation)
calls these two, so a floor or a suppression rule cannot differ between what is validated and what is
written.

Decoding is the exact inverse of :func:`hydrapicker.criterion.encode`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from . import defaults
from .types import Picks

AUTO = "auto"  # PickPolicy.threshold: each micrograph's own (hydrapicker.thresholds)
OFFSET_RANGE = 0.75  # centre offsets: cell centre + tanh(a) * OFFSET_RANGE * stride


def decode_grid(grid: np.ndarray, stride: int, temperature: float = 1.0, floor: float = 0.0,
                origin: float = 0.0):
    """(3, H, W) raw outputs -> (xy (N, 2) in rescaled px, score (N,)) for cells with score >= floor.

    score = sigmoid(logit / temperature): a calibrated probability (higher = better). ``origin``: where the
    grid's first cell starts along both axes, in px (the half-cell grid without its outer ring: ``stride / 2``).
    """
    H, W = grid.shape[1:]
    logit = grid[2].astype(np.float64) / float(temperature)
    score = 1.0 / (1.0 + np.exp(-np.clip(logit, -60, 60)))
    i, j = np.nonzero(score >= floor)
    dx = np.tanh(grid[0, i, j].astype(np.float64)) * OFFSET_RANGE
    dy = np.tanh(grid[1, i, j].astype(np.float64)) * OFFSET_RANGE
    x = (j + 0.5 + dx) * stride - 0.5 + origin
    y = (i + 0.5 + dy) * stride - 0.5 + origin
    return np.stack([x, y], axis=1), score[i, j]


def merge_orientations(grids, offset_range: float = OFFSET_RANGE, logit_channel: int = 2) -> np.ndarray:
    """Average raw outputs of several dihedral views of one (stride-padded) image in its own frame.

    ``grids``: ``[(k, flip, grid)]`` where the view was ``np.rot90(fliplr(image) if flip else image, k)``
    and ``grid`` (3, H, W) its raw outputs. Logits are averaged; the centre offsets are decoded, rotated
    back to the image's frame, averaged (weighted by each view's probability) and re-encoded, so :func:`decode_grid` reads the result as usual.
    ``offset_range`` and ``logit_channel``: the layout of other maps of this kind (the centre refiner's
    map: logit first, offsets in cells of ``hydrapicker.refine.OFFSET_CELLS``); the output keeps the layout.
    """
    o = [c for c in range(3) if c != logit_channel]
    logits, dxs, dys = [], [], []
    for k, flip, grid in grids:
        logit = grid[logit_channel].astype(np.float64)
        dx = np.tanh(grid[o[0]].astype(np.float64)) * offset_range
        dy = np.tanh(grid[o[1]].astype(np.float64)) * offset_range
        for _ in range(k % 4):
            # one counter-clockwise quarter turn took (dx, dy) to (dy, -dx); undo it
            logit, dx, dy = np.rot90(logit, -1), np.rot90(-dy, -1), np.rot90(dx, -1)
        if flip:
            logit, dx, dy = np.fliplr(logit), -np.fliplr(dx), np.fliplr(dy)
        logits.append(logit)
        dxs.append(dx)
        dys.append(dy)
    logits = np.stack(logits)
    w = 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60))) + 1e-9
    lim = offset_range * (1 - 1e-6)
    dx = np.clip((w * np.stack(dxs)).sum(0) / w.sum(0), -lim, lim)
    dy = np.clip((w * np.stack(dys)).sum(0) / w.sum(0), -lim, lim)
    out = np.empty((3,) + logits.shape[1:])
    out[logit_channel], out[o[0]], out[o[1]] = logits.mean(0), np.arctanh(dx / offset_range), np.arctanh(dy / offset_range)
    return out.astype(np.float32)


def suppress_duplicates(xy: np.ndarray, score: np.ndarray, min_distance: float) -> np.ndarray:
    """Greedy non-maximum suppression by distance: indices kept, highest score first.

    A pick is dropped when a kept pick with a higher score (ties: the earlier one) lies closer than
    ``min_distance``. Kept picks are bucketed in cells of ``min_distance``, so each candidate is compared
    with the kept picks of 3 x 3 cells only (no scipy import on the picking path: it costs start-up time).
    """
    n = len(score)
    order = np.argsort(-score, kind="stable")
    if n == 0 or min_distance <= 0:
        return order
    r2 = (min_distance - 1e-9) ** 2
    xs, ys = xy[:, 0].tolist(), xy[:, 1].tolist()
    cells = np.floor(xy / min_distance).astype(np.int64).tolist()
    kept_in: dict = {}
    keep = []
    for idx in order.tolist():
        x, y = xs[idx], ys[idx]
        cx, cy = cells[idx]
        if not any((xs[k] - x) ** 2 + (ys[k] - y) ** 2 <= r2
                   for dx in (-1, 0, 1) for dy in (-1, 0, 1) for k in kept_in.get((cx + dx, cy + dy), ())):
            keep.append(idx)
            kept_in.setdefault((cx, cy), []).append(idx)
    return np.asarray(keep, dtype=int)


@dataclass(frozen=True)
class PickPolicy:
    """Which candidates become picks: built once at an entry point's edge, the same for every micrograph.

    Lengths are in Angstrom (in pixels for candidates whose ``pixel_size`` is 1, as in validation on
    prepared images). ``threshold`` None keeps every pick above the floor (``hydra pick --all``); a
    threshold below the floor lowers the floor to meet it (one rule for every entry point). ``threshold``
    ``"auto"`` chooses each micrograph's own (:func:`hydrapicker.thresholds.auto_threshold` of its candidate
    FOMs, bounded around ``calibrated``, the model's threshold) in :func:`select`.
    """

    min_distance_A: float
    threshold: Union[float, str, None] = None
    floor: float = defaults.FLOOR
    edge_A: float = 0.0
    invalid_margin_A: float = 0.0
    round_to_pixel: bool = False
    calibrated: Optional[float] = None
    find_invalid: bool = False  # find border bands and dead areas (hydrapicker.regions) and pick none there
    evidence_ref: Optional[float] = None  # micrograph evidence (weigh_by_evidence): the reference FOM; None = off
    class_centres_at: Optional[float] = None  # class-average centring (hydrapicker.class_centres) from the picks
    #                                           with FOM >= this (the head's calibrated threshold); None = off

    def __post_init__(self):
        if self.is_auto and not (self.calibrated is not None and 0.0 < float(self.calibrated) < 1.0):
            raise ValueError(f"PickPolicy: threshold 'auto' needs the calibrated threshold in (0, 1), "
                             f"got {self.calibrated}")
        if isinstance(self.threshold, str) and not self.is_auto:
            raise ValueError(f"PickPolicy: threshold must be a number, None or 'auto', not {self.threshold!r}")

    @property
    def is_auto(self) -> bool:
        return isinstance(self.threshold, str) and self.threshold == AUTO

    @property
    def decode_floor(self) -> float:
        """The score under which candidates are not decoded at all."""
        if self.threshold is None or self.is_auto:  # auto never cuts below the floor
            return float(self.floor)
        return min(float(self.floor), float(self.threshold))

    def describe(self) -> str:
        """The threshold in words, for logs."""
        if self.threshold is None:
            return "all above the floor"
        if self.is_auto:
            return f"FOM >= a per-micrograph threshold (auto, around {float(self.calibrated):.3f})"
        return f"FOM >= {float(self.threshold):.3f}"

    @classmethod
    def for_model(cls, meta: dict, diameter_A: float, head: str = "generic", threshold="model",
                  min_distance_A=None, edge_A=0.0, invalid_margin_A=None, round_to_pixel=False,
                  find_invalid=True, evidence=None, class_centres=False) -> "PickPolicy":
        """The policy of a model file's ``meta``: ``threshold`` = a number, None (all above the floor) or
        ``"model"`` (the head's calibrated threshold) or ``"auto"`` (per micrograph, around the head's
        calibrated threshold); floor from the model; minimum distance half the diameter unless given;
        border bands and dead areas found and avoided by ``invalid_margin_A`` (default ``defaults.INVALID_MARGIN_DIAMETERS`` diameters)
        unless ``find_invalid`` is False; FOMs weighed by the micrograph's evidence (:func:`weigh_by_evidence`)
        against the FOM of ``evidence`` times the odds of the head's calibrated threshold
        (:func:`evidence_reference`; :func:`evidence_multiple`: None = the default, 0 or False = off);
        ``class_centres``: the picks re-centred on class averages of each micrograph's picks at or above the
        head's calibrated threshold (:mod:`hydrapicker.class_centres`)."""
        from .checkpoint import threshold_for

        head_threshold = float(threshold_for(meta or {}, head))
        multiple = evidence_multiple(evidence)
        evidence_ref = evidence_reference(head_threshold, multiple) if multiple > 0 else None
        calibrated = None
        if isinstance(threshold, str):
            if threshold not in ("model", AUTO):
                raise ValueError(f"threshold must be a number, None, 'model' or 'auto', not {threshold!r}")
            calibrated = head_threshold
            threshold = AUTO if threshold == AUTO else calibrated
        min_d = defaults.MIN_DISTANCE_DIAMETERS * float(diameter_A) if min_distance_A is None else min_distance_A
        thr = threshold if threshold is None or threshold == AUTO else float(threshold)
        margin = defaults.INVALID_MARGIN_DIAMETERS * float(diameter_A) if invalid_margin_A is None \
            else float(invalid_margin_A)
        return cls(float(min_d), thr, model_floor(meta), float(edge_A or 0.0), margin,
                   bool(round_to_pixel), calibrated, bool(find_invalid), evidence_ref,
                   head_threshold if class_centres else None)


    @classmethod
    def for_prepared(cls, extent_px: float, floor: float = defaults.FLOOR) -> "PickPolicy":
        """Validation on prepared (rescaled) images: lengths in their pixels, every pick above the floor."""
        return cls(defaults.MIN_DISTANCE_DIAMETERS * float(extent_px), None, float(floor))


def model_floor(meta: Optional[dict]) -> float:
    """The permissive score floor of a model file (``defaults.FLOOR`` when it names none)."""
    floor = (meta or {}).get("floor")
    return defaults.FLOOR if floor is None else float(floor)


@dataclass
class Candidates:
    """Decoded network output of one micrograph before any selection: centres in pixels of the micrograph
    as stored (``xy`` (N, 2), x = column), ``score`` (N,), the micrograph's ``shape`` (ny, nx) and the
    ``pixel_size`` (A/px) that converts the policy's lengths to pixels."""

    xy: np.ndarray
    score: np.ndarray
    shape: Optional[tuple] = None
    pixel_size: float = 1.0


def decode(grid: np.ndarray, stride: int, floor: float, temperature: float = defaults.TEMPERATURE,
           scale_xy=(1.0, 1.0), shape=None, pixel_size: float = 1.0,
           half_cell: Optional[np.ndarray] = None, origin=(0, 0), region=None) -> Candidates:
    """(3, H, W) raw outputs of a rescaled image -> :class:`Candidates` in pixels of the micrograph.

    ``scale_xy`` = (rescaled nx / nx, rescaled ny / ny). Fourier rescaling keeps sample 0 in place, so
    x_original = x_rescaled / scale_x exactly, plus ``origin`` (x0, y0) when the rescaled image is of a part
    of the micrograph starting there (``shape`` stays the micrograph's; candidates outside that part,
    ``region`` = its (ny, nx), are dropped as they are outside a whole micrograph). ``half_cell``: the head's outputs on the grid shifted by half
    a cell (its cells centred on the corners of ``grid``'s, :meth:`hydrapicker.picker.Picker._forward`);
    its candidates join ``grid``'s, and duplicate suppression (:func:`rank`) keeps the better of two on
    one particle: a particle near the border of one grid's cells lies near the centre of one of the other's,
    whose offsets were trained for it.
    """
    xy, score = decode_grid(grid, stride, temperature, floor)
    if half_cell is not None:  # its outer ring of cells, centred on the image's edges, reads padding: left out
        xy_h, score_h = decode_grid(half_cell[:, 1:-1, 1:-1], stride, temperature, floor, origin=stride / 2)
        xy, score = np.concatenate([xy, xy_h]), np.concatenate([score, score_h])
    xy = np.stack([xy[:, 0] / scale_xy[0] + origin[0], xy[:, 1] / scale_xy[1] + origin[1]], axis=1)
    if region is not None:
        lo, hi = np.asarray(origin, np.float64), np.asarray(origin, np.float64) + [region[1] - 1, region[0] - 1]
        inside = np.all((xy >= lo) & (xy <= hi), axis=1)
        xy, score = xy[inside], score[inside]
    return Candidates(xy, score, None if shape is None else tuple(shape), float(pixel_size))


def rank(candidates: Candidates, policy: PickPolicy, invalid=None) -> Picks:
    """Every candidate that may become a pick, highest FOM first: above the floor, inside the micrograph
    minus ``policy.edge_A``, away from ``invalid`` regions, duplicates suppressed. No threshold yet."""
    apix = float(candidates.pixel_size)
    xy, score = candidates.xy, candidates.score
    keep = score >= policy.decode_floor
    if candidates.shape is not None:
        ny, nx = candidates.shape[-2:]
        e = float(policy.edge_A) / apix
        keep &= (xy[:, 0] >= e) & (xy[:, 0] <= nx - 1 - e) & (xy[:, 1] >= e) & (xy[:, 1] <= ny - 1 - e)
    if invalid is not None:
        from .regions import near_invalid  # a bool mask or the InvalidRegions the picker found

        sel = xy[keep]
        keep[keep] = ~near_invalid(invalid, sel[:, 0], sel[:, 1], float(policy.invalid_margin_A) / apix)
    xy, score = xy[keep], score[keep]
    order = suppress_duplicates(xy, score, float(policy.min_distance_A) / apix)
    return Picks(xy[order, 0], xy[order, 1], score[order])


def evidence_multiple(evidence=None) -> float:
    """The evidence reference in multiples of the odds of the head's calibrated threshold: None or True = the default
    (``defaults.EVIDENCE_REFERENCE``), 0 or False = off, else the number given (>= 0)."""
    if evidence is None or evidence is True:
        return float(defaults.EVIDENCE_REFERENCE)
    value = float(evidence)
    if not value >= 0:
        raise ValueError(f"micrograph evidence must be >= 0 (0 = off), got {evidence!r}")
    return value


def evidence_reference(threshold: float, multiple: float) -> float:
    """The FOM whose odds are ``multiple`` times the threshold's: how sure a micrograph's best candidates
    must be to keep its FOMs (in odds, so that a head with a high threshold, such as a few-shot or adapted
    one, is not asked for more than 1)."""
    t = min(max(float(threshold), 1e-6), 1 - 1e-6)
    odds = float(multiple) * t / (1.0 - t)
    return odds / (1.0 + odds)


def evidence_factor(fom, reference: float, top_k: int = defaults.EVIDENCE_TOP_K,
                    power: float = defaults.EVIDENCE_POWER) -> float:
    """min(1, m / ``reference``) ** ``power``, m = the mean of the ``top_k`` highest of one micrograph's FOMs,
    those it lacks counted as 0 (they were under the floor): how sure its best candidates are that it holds
    particles."""
    if not float(reference) > 0:  # a head calibrated at 0 keeps every candidate: nothing to weigh against
        return 1.0
    fom = np.asarray(fom, dtype=np.float64)
    k = min(int(top_k), fom.size)
    m = float(np.partition(fom, fom.size - k)[fom.size - k:].sum()) / int(top_k) if k else 0.0
    return min(1.0, m / float(reference)) ** float(power)


def weigh_by_evidence(ranked: Picks, policy: PickPolicy, info: Optional[dict] = None) -> Picks:
    """``ranked`` with every FOM multiplied by the micrograph's :func:`evidence_factor` (order kept) when the
    policy asks for it (``evidence_ref``): picks on a micrograph of junk, ice or carbon alone, whose best
    candidates are weak, fall under a threshold that picks on micrographs with particles pass. ``info``
    receives the ``evidence`` factor."""
    if policy.evidence_ref is None or len(ranked) == 0:
        return ranked
    f = evidence_factor(ranked.fom, policy.evidence_ref)
    if info is not None:
        info["evidence"] = f
    return ranked if f >= 1.0 else Picks(ranked.x, ranked.y, ranked.fom * f)


def choose_threshold(ranked: Picks, policy: PickPolicy) -> tuple:
    """(threshold of this micrograph or None, info): the policy's number, or with ``"auto"``
    :func:`hydrapicker.thresholds.auto_threshold` of ``ranked``'s FOMs (every candidate :func:`rank` kept),
    bounded around ``policy.calibrated`` and never below the floor."""
    if not policy.is_auto:
        return policy.threshold, {"method": "fixed" if policy.threshold is not None else "none"}
    from .thresholds import auto_threshold

    return auto_threshold(ranked.fom, float(policy.calibrated), floor=float(policy.floor))


def select(ranked: Picks, policy: PickPolicy, info: Optional[dict] = None) -> Picks:
    """The picks of :func:`rank`'s output that are written: FOM >= threshold (the micrograph's own with
    ``"auto"``: :func:`choose_threshold`), rounded when asked. ``info``: a dict that receives the
    ``threshold`` used and ``threshold_info``."""
    threshold, why = choose_threshold(ranked, policy)
    if info is not None:
        info["threshold"] = threshold
        info["threshold_info"] = why
    return rounded(ranked.above(threshold), policy)


def rounded(picks: Picks, policy: PickPolicy) -> Picks:
    """``picks`` rounded to whole pixels when the policy asks (RELION truncates coordinates at extraction)."""
    return Picks(picks.x.round(), picks.y.round(), picks.fom) if policy.round_to_pixel else picks


def finalize(candidates: Candidates, policy: PickPolicy, invalid: Optional[np.ndarray] = None,
             info: Optional[dict] = None) -> Picks:
    """The final picks of one micrograph, highest FOM first (``select(rank(...))``).

    ``invalid``: bool mask in pixels of the micrograph (True = do not pick there; picks within
    ``policy.invalid_margin_A`` of it are dropped too), or None. ``info``: see :func:`select`.
    """
    return select(weigh_by_evidence(rank(candidates, policy, invalid), policy, info), policy, info)
