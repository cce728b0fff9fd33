"""Class-average centring: each pick moves towards where 2D alignment to its micrograph's class averages puts it.

What 2D classification does to centre particles, done on one micrograph's picks before they are written,
with nothing learned and nothing kept between micrographs:

1. The micrograph is resampled to about :attr:`ClassCentreSettings.px_per_d` pixels per diameter and
   low-passed (:func:`alignment_image`).
2. Its confident picks (FOM at or above the head's calibrated threshold, at most ``max_confident`` of them)
   are aligned, in-plane rotation and shift, to ``classes`` class averages built from themselves, for
   ``rounds`` rounds of hard assignment (:func:`recentre`).
3. Each class is anchored to where the detector puts the centre *on average*: after every round the mean
   move of the class's members, in the particle's frame, is subtracted. Alignment removes the part of the
   detector's error that differs from particle to particle; the detector's mean error for the particle stays.
4. Every pick is aligned to the averages within ``reach`` diameters, its cross-correlation less ``prior`` x
   (move / D)² (the detector's position as a prior: a low-SNR particle, whose correlation is flat, stays
   near it), and moves by ``weight`` of the move found (:func:`recentre`).

A micrograph with fewer than ``min_confident`` confident picks keeps its picks as they are, and so does a
pick whose crop would leave the micrograph. No pick moves further than ``reach`` diameters.

With ``--adapt`` the class averages are the whole data set's instead (:func:`data_set_classes`): steps 2-3
run once on up to ``data_set_max_confident`` confident picks of the adaptation's sample, and step 4 centres
every micrograph on them (a picker's ``class_refs``; an adapted model keeps them in its metadata).

The settings were chosen on 32 simulated tuning sets of the training families, never on the benchmark
targets or the real sets (``benchmarks/experiments/class_centres.py``; README, Centres).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class ClassCentreSettings:
    px_per_d: float = 24.0      # alignment sampling, pixels per particle diameter
    sigma_px: float = 1.0       # Gaussian low-pass at that sampling
    classes: int = 1            # class averages (at most one per 40 confident picks; more did not help)
    angles: int = 18            # in-plane rotations searched (20 degrees)
    rounds: int = 1             # rounds of alignment and averaging
    reach: float = 0.25         # translation search, diameters
    mask: float = 0.6           # radius of the soft circular mask, diameters
    prior: float = 30.0         # penalty on a move: this many correlation units per D²
    weight: float = 0.5         # fraction of the found move that is taken
    min_confident: int = 30     # fewer: the micrograph's picks stay as they are
    max_confident: int = 60     # class averages from at most this many (a random subset): bounded cost
    step: int = 2               # templates compared every `step` px of shift, then the best at every px
    seed: int = 0
    #: class averages of a whole data set (:func:`data_set_classes`, ``--adapt``) are built from at most
    #: this many confident picks of its sample, and centre the micrographs with fewer than ``min_confident``
    #: of their own (``data_set_for="few"``) or every micrograph (``"all"``)
    data_set_max_confident: int = 600
    data_set_for: str = "all"


DEFAULT_SETTINGS = ClassCentreSettings()


def class_centring_on(asked: Optional[bool] = None, adapt: bool = False, refine: Optional[bool] = None,
                      meta: Optional[dict] = None, head: Optional[str] = None) -> bool:
    """Whether the picks are re-centred on class averages, the one rule of every entry point: as asked in so
    many words (``asked`` True or False: --class-centres / --no-class-centres); else off where the user fixed
    the centres to the detector's (``refine`` False: --no-refine) and for a model at a smaller working scale
    (``meta['working_scale']`` < 1: an elongated particle, whose class average is a poor reference); else on
    with ``adapt`` (--adapt) and for a head adapted to its data set without labels (``meta``'s record of
    ``head`` holds an ``adaptation``: an adapted model re-used with --model picks as the run that adapted
    it). Otherwise off.

    Why with --adapt: on the adapt benchmark it adds +0.009 mean AP to the adapted head and refiner, and
    half of the gap to few-shot is closed on 5 of 6 sets instead of 3; the rod, adapted at 0.75 x, loses
    0.016-0.018 AP with it on both draws (README, Self-adaptation)."""
    if asked is not None:
        return bool(asked)
    if refine is False or float((meta or {}).get("working_scale", 1.0)) < 1.0:
        return False
    record = ((meta or {}).get("finetune") or {}).get(head or "") or {}
    return bool(adapt) or bool(record.get("adaptation"))


def data_set_classes(picker, mics: list, diameter_A: float, head: str, policy, sample: int, log=print,
                     keep_in=None):
    """``picker`` centring on class averages of the whole data set instead of each micrograph's own, when
    ``policy`` centres on class averages: what ``--adapt`` does in every entry point, after the head and the
    refiner are adapted. A micrograph with few confident picks of its own (low SNR, junk) is centred too, on
    an average of many.

    The averages are :meth:`hydrapicker.picker.Picker.class_references` over ``sample`` of ``mics`` (spread
    evenly over them), unless the picker's model keeps some (``meta['class_references']``: an adapted model
    re-used picks as the run that adapted it). They are kept in the model file ``keep_in`` when the picker
    picks with it (the adapted model). Fewer than ``min_confident`` confident picks in the sample: ``picker``
    itself (each micrograph its own averages).

    Chosen on the adapt benchmark's tuning draw (README, Self-adaptation): +0.003 mean AP over each
    micrograph's own averages, no set below -0.004."""
    from pathlib import Path

    from .micrographs import sample_micrographs

    if policy.class_centres_at is None:
        return picker
    if picker.class_refs is not None:
        log(f"[centres] class averages of the data set: the {picker.class_refs.confident} confident picks' averages "
            f"kept in the model {picker.meta.get('path')}")
        return picker
    if not mics:  # nothing to learn from (a --watch restart whose adaptation was refused)
        return picker
    chosen = sample_micrographs(list(mics), sample)
    refs, failed = picker.class_references(chosen, diameter_A, head, policy)
    if refs is None:
        log(f"[centres] class averages of the data set: fewer than {DEFAULT_SETTINGS.min_confident} confident "
            f"picks on {len(chosen)} micrographs; each micrograph is centred on its own")
        return picker
    log(f"[centres] class averages of the data set: {refs.confident} confident picks (FOM >= "
        f"{policy.class_centres_at:.3f}) of {refs.micrographs} of {len(chosen)} micrographs"
        + (f" ({len(failed)} unreadable)" if failed else "") + "; every micrograph's picks are centred on them")
    model = picker.meta.get("path")
    if keep_in is not None and model is not None and Path(model).resolve() == Path(keep_in).resolve():
        from .checkpoint import update_meta

        update_meta(keep_in, class_references=refs.to_meta())
        log(f"[centres] the data set's class averages are kept in {keep_in}")
    return picker.with_class_references(refs)


def described(threshold: float, settings: Optional[ClassCentreSettings] = None,
              refs: Optional[ClassReferences] = None) -> str:
    """Class-average centring in words, for every entry point's log (``threshold``: the policy's
    ``class_centres_at``; ``refs``: the data set's class averages the picker centres on, if any)."""
    s = settings or DEFAULT_SETTINGS
    if refs is not None:
        return (f"class-average centring: each pick moves towards where alignment to the data set's class "
                f"averages ({refs.confident} picks with FOM >= {threshold:.3f} of {refs.micrographs} "
                f"micrographs) puts it")
    return (f"class-average centring: each pick moves towards where alignment to class averages of its "
            f"micrograph's picks with FOM >= {threshold:.3f} puts it (a micrograph with fewer than "
            f"{s.min_confident} such picks keeps its centres)")


@dataclass
class ClassCentring:
    """What :func:`recentre` did on one micrograph."""

    xy: np.ndarray                     # (n, 2) new positions, pixels of the image given
    moved: int = 0                     # picks moved (the others kept: crop outside the image, or refused)
    confident: int = 0                 # confident picks usable for the class averages
    classes: int = 0                   # 0: refused (too few confident picks)
    report: dict = field(default_factory=dict)


def alignment_image(image, scale: float, sigma_px: float) -> np.ndarray:
    """``image`` (2D array or tensor) resampled by ``scale`` (bilinear), low-passed by a Gaussian of
    ``sigma_px`` and normalised to zero mean and unit variance, as float32 numpy."""
    from scipy.ndimage import gaussian_filter, zoom

    a = image.detach().float().cpu().numpy() if hasattr(image, "detach") else np.asarray(image, np.float32)
    if _resampled(scale):
        a = zoom(a, scale, order=1)
    if sigma_px > 0:
        a = gaussian_filter(a, sigma_px)
    return ((a - a.mean()) / (a.std() + 1e-12)).astype(np.float32)


def _resampled(scale: float) -> bool:
    return abs(scale - 1.0) > 1e-6


def alignment_shape(shape, scale: float) -> tuple:
    """The (ny, nx) of :func:`alignment_image` for an image of ``shape`` (scipy's zoom rounds each size)."""
    return tuple(int(round(n * scale)) for n in shape) if _resampled(scale) else tuple(shape)


def _margin(diameter_px: float, s: ClassCentreSettings) -> tuple:
    """(half crop, search radius, margin) in pixels: a pick nearer the edge than ``margin`` gets no whole crop."""
    half = int(np.ceil(s.mask * diameter_px)) + 1
    search = max(1, int(np.ceil(s.reach * diameter_px)))
    return half, search, half + search + 1


def _inside(p: np.ndarray, shape, margin: int) -> np.ndarray:
    ny, nx = shape
    return (p[:, 0] >= margin) & (p[:, 0] <= nx - 1 - margin) & (p[:, 1] >= margin) & (p[:, 1] <= ny - 1 - margin)


def _refused(xy: np.ndarray, confident: int, s: ClassCentreSettings) -> ClassCentring:
    return ClassCentring(xy.copy(), confident=confident,
                         report={"refused": f"{confident} confident picks (fewer than {s.min_confident})"})


def _rot(theta):
    """(..., 2, 2) rotation matrices acting on (x, y)."""
    c, s = np.cos(theta), np.sin(theta)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def crops(image_t, centres: np.ndarray, angles: np.ndarray, half: int) -> np.ndarray:
    """(n, 2 half + 1, 2 half + 1): the image at centre + R(angle) v for v on the integer grid (bilinear)."""
    import torch
    import torch.nn.functional as F

    ny, nx = image_t.shape[-2:]
    n, size = len(centres), 2 * half + 1
    if n == 0:
        return np.zeros((0, size, size), np.float32)
    r = torch.arange(-half, half + 1, dtype=torch.float32)
    vy, vx = torch.meshgrid(r, r, indexing="ij")
    R = torch.from_numpy(_rot(np.asarray(angles, float))).float()  # (n, 2, 2)
    c = torch.from_numpy(np.asarray(centres, float)).float()
    px = c[:, 0, None, None] + R[:, 0, 0, None, None] * vx + R[:, 0, 1, None, None] * vy
    py = c[:, 1, None, None] + R[:, 1, 0, None, None] * vx + R[:, 1, 1, None, None] * vy
    grid = torch.stack([2 * px / (nx - 1) - 1, 2 * py / (ny - 1) - 1], -1).reshape(1, n * size, size, 2)
    out = F.grid_sample(image_t, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(n, size, size).numpy()


def rotated(refs: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """(K x A, S, S): every reference rotated by every angle (template(u) = ref(R(angle)^-1 u))."""
    import torch
    import torch.nn.functional as F

    K, S, _ = refs.shape
    c, s = np.cos(angles), np.sin(angles)
    inverse = torch.from_numpy(np.stack([np.stack([c, s, 0 * c], -1), np.stack([-s, c, 0 * c], -1)], -2)).float()
    grid = F.affine_grid(inverse, (len(angles), 1, S, S), align_corners=True)
    t = torch.from_numpy(np.ascontiguousarray(refs)).float()[:, None]
    return torch.cat([F.grid_sample(t[k:k + 1].expand(len(angles), 1, S, S), grid, align_corners=True)[:, 0]
                      for k in range(K)]).numpy()


def _subpixel(a, b, c):
    """Offset of a parabola's vertex through three samples (0 where a neighbour lies outside the search)."""
    with np.errstate(invalid="ignore"):
        den = a - 2 * b + c
        ok = np.isfinite(a) & np.isfinite(c) & (den < 0)
        return np.where(ok, np.clip(0.5 * (a - c) / np.where(ok, den, -1), -0.5, 0.5), 0.0)


def _peaks(cc: np.ndarray) -> tuple:
    """(n, M, P, P) scores -> best template (n,), sub-pixel (dx, dy) from the centre (n, 2)."""
    n, M, P, _ = cc.shape
    flat = cc.reshape(n, -1)
    k = flat.argmax(1)
    m, rest = np.divmod(k, P * P)
    iy, ix = np.divmod(rest, P)
    i = np.arange(n)
    best = cc[i, m]
    cy, cx = np.clip(iy, 1, P - 2), np.clip(ix, 1, P - 2)
    dx = np.where((ix > 0) & (ix < P - 1), _subpixel(best[i, cy, cx - 1], best[i, cy, cx], best[i, cy, cx + 1]), 0.0)
    dy = np.where((iy > 0) & (iy < P - 1), _subpixel(best[i, cy - 1, cx], best[i, cy, cx], best[i, cy + 1, cx]), 0.0)
    return m, np.stack([ix - P // 2 + dx, iy - P // 2 + dy], 1)


def align(big_crops: np.ndarray, templates: np.ndarray, penalty: np.ndarray, step: int = 1) -> tuple:
    """Each crop (n, S + 2 s, S + 2 s) against every template (M, S, S) at every shift within s, less
    ``penalty`` (2 s + 1, 2 s + 1) -> (best template (n,), its shift (n, 2) as (dx, dy)).

    ``step`` > 1: the templates are compared on a grid of every ``step``-th shift only; each crop's best
    template there is then searched at every shift (about ``step``² times cheaper)."""
    import torch
    import torch.nn.functional as F

    if len(big_crops) == 0:
        return np.zeros(0, int), np.zeros((0, 2))
    c = torch.from_numpy(np.ascontiguousarray(big_crops)).float()[:, None]
    t = torch.from_numpy(np.ascontiguousarray(templates)).float()[:, None]
    out = []
    with torch.no_grad():
        for chunk in torch.split(c, 256):
            if step == 1:
                out.append(_peaks(F.conv2d(chunk, t).numpy() - penalty))
                continue
            coarse = F.conv2d(chunk, t, stride=step).numpy() - penalty[::step, ::step]
            best = coarse.reshape(len(chunk), -1).argmax(1) // (coarse.shape[2] * coarse.shape[3])
            # every shift, each crop against its own best template (a grouped convolution)
            fine = F.conv2d(chunk.transpose(0, 1), t[torch.from_numpy(best)], groups=len(chunk))
            _, d = _peaks(fine.transpose(0, 1).numpy() - penalty)
            out.append((best, d))
    return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])


@dataclass
class ClassReferences:
    """Class averages ready to align to: the ``averages`` (K, S, S), ``templates`` (K x angles, S, S), every
    class at every angle, and each class's ``anchors`` (K, 2), the mean move of its members in the particle
    frame (pixels of the alignment sampling, ``px_per_d`` per diameter); built from ``confident`` picks on
    ``micrographs`` micrographs."""

    averages: np.ndarray
    templates: np.ndarray
    anchors: np.ndarray
    confident: int
    micrographs: int = 1
    sizes: list = field(default_factory=list)  # members per class

    def to_meta(self, settings: Optional[ClassCentreSettings] = None) -> dict:
        """A model file's ``meta['class_references']`` (plain lists: loadable with ``weights_only``)."""
        s = settings or DEFAULT_SETTINGS
        return {"averages": self.averages.tolist(), "anchors": self.anchors.tolist(), "confident": self.confident,
                "micrographs": self.micrographs, "sizes": list(self.sizes), "px_per_d": s.px_per_d,
                "angles": s.angles, "mask": s.mask, "sigma_px": s.sigma_px}

    @classmethod
    def from_meta(cls, kept: Optional[dict], settings: Optional[ClassCentreSettings] = None):
        """:meth:`to_meta`'s dict -> ClassReferences; None when there is none, or it was made at another
        sampling, mask or number of angles than ``settings``'."""
        s = settings or DEFAULT_SETTINGS
        if not kept or any(kept.get(k) != getattr(s, k) for k in ("px_per_d", "angles", "mask", "sigma_px")):
            return None
        averages = np.asarray(kept["averages"], np.float64)
        return cls(averages, rotated(averages, np.arange(s.angles) * 2 * np.pi / s.angles),
                   np.asarray(kept["anchors"], np.float64).reshape(-1, 2), int(kept["confident"]),
                   int(kept.get("micrographs", 1)), list(kept.get("sizes", [])))


def _soft_mask(half: int, diameter_px: float, s: ClassCentreSettings) -> np.ndarray:
    r = np.arange(-half, half + 1)
    return np.clip((s.mask * diameter_px - np.hypot(*np.meshgrid(r, r, indexing="ij"))) / 2.0 + 0.5, 0, 1)


def _penalty(search: int, diameter_px: float, s: ClassCentreSettings) -> np.ndarray:
    o = np.arange(-search, search + 1)
    dist = np.hypot(*np.meshgrid(o, o, indexing="ij"))
    return np.where(dist <= search, s.prior * (dist / diameter_px) ** 2, np.inf)  # a circle of `reach`


def references(images: list, reference_xys: list, diameter_px: float,
               settings: Optional[ClassCentreSettings] = None, data_set: bool = False):
    """:class:`ClassReferences` from the confident picks ``reference_xys[i]`` (m_i, 2) of the alignment
    images ``images[i]`` (:func:`alignment_image`), particles ``diameter_px`` wide: ``rounds`` rounds of
    alignment and averaging, each class anchored to the detector's mean centre (module docstring, step 3).
    At most ``max_confident`` picks (``data_set_max_confident`` for a ``data_set``'s; a random subset) ->
    None when fewer than ``min_confident`` picks have a whole crop."""
    import torch

    s = settings or DEFAULT_SETTINGS
    max_confident = s.data_set_max_confident if data_set else s.max_confident
    half, search, margin = _margin(diameter_px, s)  # whole crops only: a zero-padded crop pulls its alignment
    starts = [np.asarray(r, np.float64).reshape(-1, 2) for r in reference_xys]
    starts = [r[_inside(r, im.shape, margin)] for im, r in zip(images, starts)]
    total = sum(len(r) for r in starts)
    if total < s.min_confident:
        return None
    rng = np.random.default_rng(s.seed)
    if total > max_confident:
        keep = rng.random(total) < max_confident / total
        cuts = np.cumsum([0] + [len(r) for r in starts])
        starts = [r[keep[a:b]] for r, a, b in zip(starts, cuts[:-1], cuts[1:])]
    used = [i for i, r in enumerate(starts) if len(r)]
    tensors = [torch.from_numpy(np.ascontiguousarray(images[i], np.float32))[None, None] for i in used]
    starts = [starts[i] for i in used]  # in order: ``owner`` is sorted, crops concatenate in ``start``'s order
    owner = np.concatenate([np.full(len(r), j) for j, r in enumerate(starts)])
    start = np.concatenate(starts)
    mask, penalty = _soft_mask(half, diameter_px, s), _penalty(search, diameter_px, s)
    angles = np.arange(s.angles) * 2 * np.pi / s.angles
    big = np.concatenate([crops(t, r, np.zeros(len(r)), half + search) for t, r in zip(tensors, starts)])
    K = int(max(1, min(s.classes, len(start) // 40)))
    cls, ang, pos = rng.integers(0, K, len(start)), np.zeros(len(start)), start.copy()

    def averages():
        a = np.concatenate([crops(t, pos[owner == j], ang[owner == j], half) for j, t in enumerate(tensors)])
        refs = np.stack([a[cls == k].mean(0) if (cls == k).any() else np.zeros_like(mask) for k in range(K)]) * mask
        refs -= (refs.sum((1, 2)) / mask.sum())[:, None, None] * mask
        return refs / (np.sqrt((refs ** 2).sum((1, 2)))[:, None, None] + 1e-12)

    def anchored(m, d):
        """Class and angle of each alignment, and each class's mean move in the particle frame."""
        k, a = m // s.angles, angles[m % s.angles]
        e = np.einsum("nji,nj->ni", _rot(a), d)  # R^T d
        anchors = np.array([e[k == j].mean(0) if (k == j).sum() >= 3 else np.zeros(2) for j in range(K)])
        return k, a, anchors

    for _ in range(s.rounds):
        m, d = align(big, rotated(averages(), angles), penalty, s.step)
        cls, ang, anchors = anchored(m, d)
        pos = start + d - np.einsum("nij,nj->ni", _rot(ang), anchors[cls])
    final = averages()
    templates = rotated(final, angles)
    cls, _, anchors = anchored(*align(big, templates, penalty, s.step))
    return ClassReferences(final, templates, anchors, len(start), len(tensors), np.bincount(cls, minlength=K).tolist())


def recentre(image: np.ndarray, xy: np.ndarray, reference_xy: np.ndarray, diameter_px: float,
             settings: Optional[ClassCentreSettings] = None, refs: Optional[ClassReferences] = None) -> ClassCentring:
    """New positions for the picks ``xy`` (n, 2) of the alignment ``image`` (:func:`alignment_image`), whose
    particles are ``diameter_px`` wide there; the class averages are ``refs`` when given (e.g. built over a
    data set's sample, :func:`references`), else built from the micrograph's confident picks at
    ``reference_xy`` (m, 2)."""
    import torch

    s = settings or DEFAULT_SETTINGS
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    half, search, margin = _margin(diameter_px, s)
    if refs is None:
        refs = references([image], [reference_xy], diameter_px, s)
        if refs is None:
            start = np.asarray(reference_xy, np.float64).reshape(-1, 2)
            return _refused(xy, int(_inside(start, image.shape, margin).sum()), s)
    out = ClassCentring(xy.copy(), confident=refs.confident)
    image_t = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
    angles = np.arange(s.angles) * 2 * np.pi / s.angles
    movable = _inside(xy, image.shape, margin)
    m, d = align(crops(image_t, xy[movable], np.zeros(int(movable.sum())), half + search), refs.templates,
                 _penalty(search, diameter_px, s), s.step)
    k, a = m // s.angles, angles[m % s.angles]
    move = s.weight * (d - np.einsum("nij,nj->ni", _rot(a), refs.anchors[k]))
    length = np.hypot(*move.T)
    move *= np.minimum(1.0, s.reach * diameter_px / np.maximum(length, 1e-12))[:, None]  # the bound: reach
    out.xy[movable] = xy[movable] + move
    out.moved, out.classes = int(movable.sum()), len(refs.anchors)
    out.report = {"classes": len(refs.anchors), "class_sizes": refs.sizes}
    return out


def _frame(prepared_image, scale_xy, diameter_px_prepared: float, settings: ClassCentreSettings) -> tuple:
    """(alignment scale, aligned shape, micrograph px -> alignment px factors (2,)) of a prepared image."""
    scale = settings.px_per_d / float(diameter_px_prepared)
    shape = tuple(prepared_image.shape[-2:])
    aligned_shape = alignment_shape(shape, scale)
    return scale, aligned_shape, np.asarray(scale_xy, float) * np.array([aligned_shape[1] / shape[1],
                                                                         aligned_shape[0] / shape[0]])


def alignment_inputs(prepared_image, scale_xy, diameter_px_prepared: float, picks,
                     settings: Optional[ClassCentreSettings] = None) -> tuple:
    """The network's rescaled image and ``picks`` (micrograph pixels) -> (alignment image, picks' (n, 2)
    positions in it), what :func:`references` is built from."""
    settings = settings or DEFAULT_SETTINGS
    scale, _, f = _frame(prepared_image, scale_xy, diameter_px_prepared, settings)
    return (alignment_image(prepared_image, scale, settings.sigma_px), np.stack([picks.x, picks.y], 1) * f)


def recentred_picks(picks, prepared_image, scale_xy, diameter_px_prepared: float, reference=None,
                    settings: Optional[ClassCentreSettings] = None, refs: Optional[ClassReferences] = None):
    """``picks`` (:class:`~hydrapicker.types.Picks`, micrograph pixels) re-centred on ``refs`` when given,
    else on the class averages of the micrograph's confident picks ``reference`` (Picks; default
    ``picks``). ``prepared_image`` is the network's rescaled image (``scale_xy`` its scale from the
    micrograph, particles ``diameter_px_prepared`` wide in it). Returns (Picks, :class:`ClassCentring`
    with ``xy`` in micrograph pixels)."""
    from .types import Picks

    settings = settings or DEFAULT_SETTINGS
    reference = picks if reference is None else reference
    scale, aligned_shape, f = _frame(prepared_image, scale_xy, diameter_px_prepared, settings)
    xy, ref_xy = np.stack([picks.x, picks.y], 1) * f, np.stack([reference.x, reference.y], 1) * f
    usable = int(_inside(ref_xy, aligned_shape, _margin(settings.px_per_d, settings)[2]).sum())
    if refs is not None and settings.data_set_for == "few" and usable >= settings.min_confident:
        refs = None  # enough confident picks of its own: the micrograph's own averages (its defocus, its ice)
    if refs is None and usable < settings.min_confident:  # refused before the micrograph is resampled
        res = _refused(xy, usable, settings)
    else:
        res = recentre(alignment_image(prepared_image, scale, settings.sigma_px), xy, ref_xy, settings.px_per_d,
                       settings, refs=refs)
    res.xy = res.xy / f
    return Picks(res.xy[:, 0], res.xy[:, 1], picks.fom.copy()), res
