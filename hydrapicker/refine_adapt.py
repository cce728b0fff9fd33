"""The centre refiner taught a data set's own particles, with no labels (issues 18 and 17).

The shipped centre head (:mod:`hydrapicker.refine`) learned where the centre of a particle lies from the
training families. Here it is fine-tuned on the data set's own micrographs: its targets are the confident
picks (FOM 1.1 logit above the head's calibrated threshold, ``--adapt``'s pseudo-positives) as the shipped
refiner centres them, then moved towards their micrograph's class average (:mod:`hydrapicker.class_centres`,
``class_centred``; since 2026-12-07: better targets, a better refiner), taught only within ``radius_D``
diameters of each (where the centre lies near a particle, not what is a particle: the uncertain particles around are not taught as background). Those
centres are off by the detector's error, but the error differs from particle to particle while the
particle stays the same, and a head that must map every rotated and flipped view of the particle to one
centre cannot fit the part of the errors that is random: it learns the particle's own centre.

Measured on the benchmark sets and on 32 training-family tuning sets (README, Centres;
``benchmarks/experiments/adapted_refiner.py``). Guard: fewer than ``min_positives`` confident picks teach
with the written picks instead (``fallback_above``: above the head's threshold; since 2026-12-07, sixth
session); fewer than that keep the centres as they would be without it (the detector's, or the refiner the
user gave), so a refusal never changes the picks. ``--adapt`` teaches it by default (:func:`adapts_centres`). The result is a refiner file
like any other (``{model, optimizer, epoch, args, meta}``, the body's checksum, ``meta['adaptation']`` its
provenance), used with ``--refiner``; it serves every head of the model it was made for (zero-shot,
few-shot, adapted), as the shipped one does.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

import numpy as np

from .errors import UserFacingError


@dataclass(frozen=True)
class RefinerAdaptSettings:
    """How a data set teaches the centre refiner (chosen on two benchmark sets, checked on 32 tuning sets)."""

    sample: int = 24              # micrographs learned from (spread over the data set)
    positives_above: float = 0.75  # shifted score (0.5 = the head's calibrated threshold) of a teaching pick
    min_positives: int = 30
    steps: int = 300
    lr: float = 1e-3
    batch: int = 16
    crop: int = 96                # rescaled px, a multiple of the detector's stride
    radius_D: float = 0.5         # taught neighbourhood of a pick, in diameters
    sigma_cells: float = 0.5      # the heat target's Gaussian (as the shipped refiner's training)
    edge_cells: int = 2
    seed: int = 0
    class_centred: bool = True    # the teaching picks class-centred first (hydrapicker.class_centres; README,
    #                               Self-adaptation: +0.007 mean AP on the tuning draw)
    #: fewer than ``min_positives`` picks above ``positives_above``: the picks above this shifted score teach
    #: instead (0.5: the written picks; None: refuse). Chosen on four tuning draws of the small-particle
    #: targets where it acts (+0.05 to +0.08 AP; README, Self-adaptation)
    fallback_above: Optional[float] = 0.5


@dataclass
class RefinerAdaptation:
    """The outcome: ``accepted`` (``path`` holds the adapted refiner) or not (``reason``)."""

    accepted: bool
    path: Optional[Path]
    reason: str
    record: dict


def near_mask(xy: np.ndarray, g: int, stride: int, radius_cells: float) -> np.ndarray:
    """(g, g) float mask of the cells whose centre lies within ``radius_cells`` of a point of ``xy`` (pixels)."""
    m = np.zeros((g, g), np.float32)
    if not len(xy):
        return m
    c = np.arange(g) + 0.5
    u, v = (xy[:, 0] + 0.5) / stride, (xy[:, 1] + 0.5) / stride
    d2 = (c[None, None, :] - u[:, None, None]) ** 2 + (c[None, :, None] - v[:, None, None]) ** 2
    return (d2.min(0) <= radius_cells ** 2).astype(np.float32)


def sample_batch(mics: list, s: RefinerAdaptSettings, stride: int, radius_cells: float, rng) -> tuple:
    """Crops around confident picks (rotated, flipped, intensity-augmented): images (B, 1, c, c), heat, offsets,
    offset mask and weight (B, c/stride, c/stride); the weight is 1 near a pick (away from the crop's edge)."""
    import torch

    from .data import _rot_flip, augment_intensity
    from .refine_train import encode_centres

    c, g, e = s.crop, s.crop // stride, s.edge_cells
    pool = [(i, j) for i, m in enumerate(mics) for j in range(len(m.xy))]
    out = [[], [], [], [], []]
    for _ in range(s.batch):
        i, j = pool[int(rng.integers(0, len(pool)))]
        m = mics[i]
        h, w = m.image.shape
        x, y = m.xy[j]
        lo, hi = e * stride + 4, c - e * stride - 4  # pick j inside the taught part of the crop
        x0 = int(np.clip((x - rng.uniform(lo, hi)) // stride, 0, (w - c) // stride)) * stride
        y0 = int(np.clip((y - rng.uniform(lo, hi)) // stride, 0, (h - c) // stride)) * stride
        img = m.image[y0:y0 + c, x0:x0 + c]
        xy = m.xy - np.array([x0, y0])[None, :]
        img, xy, _ = _rot_flip(img, xy, None, int(rng.integers(0, 4)), bool(rng.integers(0, 2)))
        if rng.random() < 0.5:
            img = augment_intensity(img, rng)
        heat, off, mask = encode_centres(xy, (g, g), stride, s.sigma_cells)
        weight = near_mask(xy, g, stride, radius_cells)
        weight[:e], weight[g - e:], weight[:, :e], weight[:, g - e:] = 0, 0, 0, 0
        for k, a in enumerate((np.ascontiguousarray(img, np.float32), heat, off, mask, weight)):
            out[k].append(a)
    t = [torch.from_numpy(np.stack(a)) for a in out]
    return t[0][:, None], t[1], t[2], t[3], t[4]


def finetune_head(refiner, net, mics: list, s: RefinerAdaptSettings, extent_px: float, should_stop=None) -> tuple:
    """A copy of ``refiner.head`` fine-tuned on ``mics`` (each with ``image``: a prepared micrograph, ``xy``:
    its teaching centres in that image's pixels; ``extent_px`` the particle's extent there) -> (head in eval mode,
    first and last losses)."""
    import torch

    from .refine_train import centre_loss

    rng = np.random.default_rng(s.seed)
    torch.manual_seed(s.seed)
    head = copy.deepcopy(refiner.head).to("cpu").float().train()
    head = head.to(memory_format=torch.contiguous_format)
    body = net.body
    device = next(body.parameters()).device
    head.to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=s.lr, weight_decay=1e-4)
    radius_cells = s.radius_D * float(extent_px) / refiner.stride
    losses = []
    for step in range(s.steps):
        if should_stop is not None and should_stop():
            break
        for group in opt.param_groups:  # cosine decay over the steps
            group["lr"] = s.lr * 0.5 * (1 + np.cos(np.pi * step / s.steps))
        x, heat, off, mask, weight = (t.to(device) for t in sample_batch(mics, s, refiner.stride, radius_cells, rng))
        with torch.no_grad():
            f = body(x)
        loss, _ = centre_loss(head(f), heat, off, mask, weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    k = max(1, min(10, len(losses)))
    return head.eval(), (float(np.mean(losses[:k])) if losses else None, float(np.mean(losses[-k:])) if losses else None)


def base_refiner(picker, any_scale: bool = False):
    """The refiner ``picker`` uses, else the shipped one made for its body; None when there is none.
    ``any_scale``: also one made for its body at another particle extent (a model at another working scale,
    :mod:`hydrapicker.scale`), to start an adapted refiner from."""
    from .refine import SHIPPED_REFINERS, first_fitting

    if picker.refiner is not None:
        return picker.refiner
    paths = [p for p in SHIPPED_REFINERS if p.exists()]
    return (first_fitting(paths, picker.net, picker.meta, picker.device)
            or (first_fitting(paths, picker.net, picker.meta, picker.device, any_extent=True) if any_scale else None))


def adapt_refiner(picker, mics: list, diameter_A: float, save_to, head: Optional[str] = None,
                  settings: RefinerAdaptSettings = RefinerAdaptSettings(), log: Callable = print,
                  should_stop=None) -> RefinerAdaptation:
    """Teach the centre refiner of ``picker``'s body the particles of ``mics`` (see the module); the refiner
    is written to ``save_to`` when accepted."""
    from .adapt import shifted_cut
    from .micrographs import sample_micrographs
    from .preprocess import _cpu_tensor, prepare_t, read_mrc

    t0 = time.time()
    base = base_refiner(picker, any_scale=True)
    if base is None:  # e.g. a model trained from scratch: nothing to start from
        reason = (f"no centre refiner was made for the body of {picker.meta.get('path')} to start from (give "
                  f"--refiner FILE made for it)")
        log(f"[centres] not adapted: {reason}")
        return RefinerAdaptation(False, None, reason, {})
    head = head or picker.default_head
    # the picks teach as the base refiner centres them; at another working scale (no refiner was made for
    # the model's extent) the detector's centres teach
    sample = sample_micrographs(list(mics), settings.sample)
    made_for_it = picker.refiner is None and base.fits(picker.net, picker.meta)
    # (no micrographs, e.g. a --watch restart: no teacher to load)
    teacher = _with_refiner(picker, str(base.path), lambda *a, **k: None) if made_for_it and sample else picker
    cut = shifted_cut(picker.threshold_for(head), settings.positives_above)
    low = cut if settings.fallback_above is None else min(cut, shifted_cut(picker.threshold_for(head),
                                                                           settings.fallback_above))
    policy = teacher.policy(diameter_A, head, threshold=0.01, class_centres=settings.class_centred)
    teach = []
    for res in teacher.pick(sample, diameter_A, head=head, policy=policy, should_stop=should_stop):
        if not res.ok:
            continue
        keep = res.picks.fom >= low
        if not keep.any():
            continue
        data, header_apix = read_mrc(res.micrograph.path)
        apix = res.micrograph.pixel_size or header_apix
        prep = prepare_t(_cpu_tensor(data), float(apix), diameter_A, float(picker.extent_px), path=res.micrograph.path)
        scale = np.array(prep.scale_xy, np.float64)[None, :]
        image = prep.image.cpu().numpy()
        if min(image.shape) < settings.crop:
            continue
        teach.append(SimpleNamespace(image=image, xy=res.picks.xy()[keep] * scale, fom=res.picks.fom[keep]))
    n_high = sum(int((t.fom >= cut).sum()) for t in teach)
    fallback = n_high < settings.min_positives and low < cut  # too few confident picks: the fallback's teach
    cut = low if fallback else cut
    teach = [SimpleNamespace(image=t.image, xy=t.xy[t.fom >= cut]) for t in teach if (t.fom >= cut).any()]
    n_pos, on = sum(len(t.xy) for t in teach), len(teach)
    record = {"sample": len(sample), "positives": n_pos, "micrographs_with_positives": on,
              "positive_cut": round(float(cut), 4), "confident_above_positives_cut": n_high, "fallback": fallback,
              "head": head, "base_refiner": str(base.path), "settings": asdict(settings)}
    if n_pos < settings.min_positives:
        reason = ("no micrographs to learn centres from" if not sample else
                  f"too few confident picks to learn centres from ({n_pos} on {on} of {len(sample)} micrographs; "
                  f"at least {settings.min_positives} are needed)")
        log(f"[centres] not adapted: {reason}")
        return RefinerAdaptation(False, None, reason, record)
    if fallback:
        log(f"[centres] only {n_high} confident picks (fewer than {settings.min_positives}): teaching the centre "
            f"refiner the {n_pos} written picks (FOM >= {cut:.3f}) of {on} micrographs instead ({settings.steps} steps)")
    else:
        log(f"[centres] teaching the centre refiner {n_pos} confident picks of {on} micrographs "
            f"({settings.steps} steps)")
    new_head, (first, last) = finetune_head(base, picker.net, teach, settings, picker.extent_px, should_stop)
    record.update(loss_first=first, loss_last=last, seconds=round(time.time() - t0, 1))
    path = _save_taught(base, new_head, picker.extent_px, record, save_to, settings)
    log(f"[centres] adapted centre refiner saved to {path} in {record['seconds']:.0f} s (loss {first:.3f} -> "
        f"{last:.3f}); a pick still moves by at most {base.max_shift_D:g} diameters")
    return RefinerAdaptation(True, path, "adapted", record)


def _save_taught(base, head, extent_px: float, record: dict, path, settings: RefinerAdaptSettings) -> Path:
    """A fine-tuned copy of the refiner ``base`` written to ``path``: ``base``'s metadata, made for the
    particle extent it was taught at (the model's working scale), ``record`` as its ``adaptation``."""
    from .refine import save_refiner

    meta = {k: v for k, v in base.meta.items() if k not in ("format", "net")}
    meta["extent_px"] = float(extent_px)
    meta["adaptation"] = record
    return save_refiner(Path(path), head, meta, args=asdict(settings))


def picker_with_adapted_refiner(picker, mics: list, diameter_A: float, save_to, head: Optional[str] = None,
                                settings: RefinerAdaptSettings = RefinerAdaptSettings(), reuse: bool = True,
                                log: Callable = print, should_stop=None) -> tuple:
    """What every entry point calls: -> (picker refining with the data set's adapted refiner, or ``picker``
    itself when the guard refuses; :class:`RefinerAdaptation`). An adapted refiner already at ``save_to`` (an
    earlier run) is re-used when ``reuse``, and so is the one the picker's model names and refines with (an
    adapted model re-used with its refiner: ``--adapt --save-model M``)."""
    save_to = Path(save_to)
    named = _named_refiner(picker)
    if reuse and not save_to.exists() and named is not None:
        log(f"[centres] re-using the adapted centre refiner {named}, named by the model {picker.meta.get('path')}")
        return picker, RefinerAdaptation(True, named, "re-used", {})
    if reuse and save_to.exists():
        log(f"[centres] re-using the adapted centre refiner {save_to} (remove it, or --overwrite, to adapt again)")
        result = RefinerAdaptation(True, save_to, "re-used", {})
    else:
        result = adapt_refiner(picker, mics, diameter_A, save_to, head, settings, log, should_stop)
    if result.accepted:
        name_in_adapted_model(picker.meta.get("path"), result.path, log)
        return _with_refiner(picker, str(result.path), log), result
    kept = picker.refiner.path if picker.refiner is not None else "the detector's own centres"
    log(f"[centres] the centres are kept as they were: {kept}")
    return picker, result


def _named_refiner(picker) -> Optional[Path]:
    """The refiner file ``picker`` refines with when it is the one its model names (``meta['refiner']``), else None."""
    from .picker import named_refiner_path

    own = named_refiner_path(picker.meta)
    if own is None or picker.refiner is None:
        return None
    return own if Path(str(picker.refiner.path)).resolve() == own.resolve() else None


def adapts_centres(adapt: bool, adapt_centres: Optional[bool] = None, refine: Optional[bool] = None,
                   refiner=None) -> bool:
    """Whether the data set teaches the centre refiner, the one rule of every entry point: as asked in so many
    words (``adapt_centres`` True or False: --adapt-centres / --no-adapt-centres); else with ``adapt``, unless
    the user fixed the centres otherwise (``refine`` False: the detector's, --no-refine; ``refiner``: a file).
    Why by default: measured in the README (Self-adaptation, the benchmark with and without centres). Asked for
    beside ``refine`` False is a contradiction, refused in one line."""
    if adapt_centres and refine is False:
        raise UserFacingError("--adapt-centres re-centres picks: leave out --no-refine")
    if adapt_centres is not None:
        return bool(adapt_centres)
    return bool(adapt) and refine is not False and not refiner


def name_in_adapted_model(model, refiner, log: Callable = print) -> bool:
    """A model file adapted to the data set (``--adapt``: it holds the head ``adapted``) that lies beside
    ``refiner`` records the refiner's file name (``meta['refiner']``), so ``--model <it>`` alone re-centres
    with it (:class:`hydrapicker.picker.Picker`, ``refine="auto"``). -> whether the file was changed; the
    shipped models and other files are never written."""
    from .adapt import HEAD
    from .checkpoint import read_checkpoint, update_meta

    if not model or refiner is None:
        return False
    model, refiner = Path(str(model)), Path(refiner)
    if not model.is_file() or model.parent.resolve() != refiner.parent.resolve():
        return False
    meta = read_checkpoint(model)["meta"]
    if HEAD not in (meta.get("heads") or []) or meta.get("refiner") == refiner.name:
        return False
    update_meta(model, refiner=refiner.name)
    log(f"[centres] {model} names its centre refiner {refiner.name}: --model {model} alone re-centres with it")
    return True


def _with_refiner(picker, refine: str, log: Callable):
    """A picker of ``picker``'s model file and settings that refines centres with the refiner file ``refine``."""
    from .picker import Picker

    return Picker(picker.meta.get("path"), device=str(picker.device), log=log, tta=picker.tta, batch=picker.batch,
                  readers=picker.readers, refine=refine)


# ------------------------------------------------------------------ a few-shot head's own centre refiner
#: how a few-shot head's labels teach the refiner: ``--adapt-centres``' settings, the labels as its targets
#: (chosen on training-family tuning sets: benchmarks/experiments/fewshot_centres.py, docs/results/centres.md)
LABELLED = RefinerAdaptSettings(class_centred=False, fallback_above=None)


def labelled_refiner_path(model) -> Path:
    """Where the centre refiner taught a few-shot model's labels lies: beside the model, ``<stem>_refiner.pt``."""
    model = Path(model)
    return model.with_name(f"{model.stem}_refiner.pt")


def teach_labelled_refiner(net, meta: dict, mics: list, head: str, model_out, log: Callable = print,
                           should_stop=None, settings: RefinerAdaptSettings = LABELLED) -> RefinerAdaptation:
    """The centre refiner of ``net``'s body fine-tuned on a few-shot head's labelled micrographs (``mics``:
    prepared, with ``image`` and ``xy``, the labels in its pixels, as ``finetune.load_labelled`` makes them),
    written beside the model file ``model_out`` (:func:`labelled_refiner_path`). Taught only within
    ``radius_D`` of each label, so particles the user left unpicked are not taught as background. It refines
    that head's picks (:meth:`hydrapicker.picker.Picker._refines`), which learned their centres from the same
    labels: the refiner, at a finer grid (D/4 cells), places them better (docs/results/centres.md)."""
    from .refine import SHIPPED_REFINERS, first_fitting

    t0 = time.time()
    base = first_fitting([p for p in SHIPPED_REFINERS if p.exists()], net, meta, "cpu", any_extent=True)
    if base is None:
        reason = f"no centre refiner was made for the body of {meta.get('path')}"
        log(f"[centres] the new head keeps its own centres: {reason}")
        return RefinerAdaptation(False, None, reason, {})
    teach = [SimpleNamespace(image=m.image, xy=np.asarray(m.xy, np.float64).reshape(-1, 2)) for m in mics
             if len(m.xy) and min(m.image.shape) >= settings.crop]
    n = sum(len(t.xy) for t in teach)
    record = {"labelled_head": head, "labels": int(n), "micrographs": len(teach), "base_refiner": str(base.path),
              "settings": asdict(settings)}
    if n < settings.min_positives:
        reason = f"too few labels to teach centres ({n}; at least {settings.min_positives} are needed)"
        log(f"[centres] the new head keeps its own centres: {reason}")
        return RefinerAdaptation(False, None, reason, record)
    log(f"[centres] teaching the centre refiner the {n} labels of {len(teach)} micrographs ({settings.steps} steps)")
    new_head, (first, last) = finetune_head(base, net, teach, settings, float(meta["extent_px"]), should_stop)
    if should_stop is not None and should_stop():
        return RefinerAdaptation(False, None, "stopped on request", record)
    record.update(loss_first=first, loss_last=last, seconds=round(time.time() - t0, 1))
    path = _save_taught(base, new_head, float(meta["extent_px"]), record, labelled_refiner_path(model_out), settings)
    log(f"[centres] centre refiner taught the labels saved to {path} in {record['seconds']:.0f} s (loss "
        f"{first:.3f} -> {last:.3f}); the new head's picks move by at most {base.max_shift_D:g} diameters")
    return RefinerAdaptation(True, path, "taught the labels", record)
