"""Run the core picker over exposures, reading each micrograph from disk or through a downloader.

Shared by the External-job flow (:mod:`cryosparc_hydra.job`) and the offline mode
(:mod:`cryosparc_hydra.offline`). Yields one :class:`Picked` per micrograph in input order; a
micrograph that cannot be read or picked is reported (``error``) and skipped, the rest go on.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

from hydrapicker.types import Micrograph, Picks


@dataclass
class PickOptions:
    diameter_A: float
    threshold: Optional[float] = None  # None -> the model's default threshold
    head: Optional[str] = None        # None -> the model's own (its few-shot head, else generic)
    min_distance_A: Optional[float] = None
    edge_A: float = 0.0
    flip_y: bool = False
    adapt: bool = False               # self-adaptation without labels (hydrapicker.adapt) before picking
    save_model: Optional[str] = None  # where the adapted model goes (None: the caller's default)
    evidence: Optional[float] = None  # micrograph evidence multiple (hydra pick --evidence): None default, 0 off
    working_scale: object = None      # hydra pick --working-scale: None (as given), "auto" or a fraction
    qc: int = 0                       # QC images (hydrapicker.qc) of this many micrographs spread over the job
    adapt_centres: bool = False       # the centre refiner taught these exposures (the CLI: on with adapt, refine_adapt.adapts_centres)
    save_refiner: Optional[str] = None  # where the adapted refiner goes (None: the caller's default)
    class_centres: Optional[bool] = None  # picks re-centred on class averages of each exposure's picks (hydra pick
    #                                       --class-centres / --no-class-centres; None: the core's rule, on with adapt)
    refine_centres: Optional[bool] = None  # --refine / --no-refine as asked (None: the default), for that rule


@dataclass
class Picked:
    mic: Micrograph                 # as built from the exposure (meta: uid, cs_path, shape, ...)
    local_path: Optional[str]       # the file that was read (exists while the consumer handles it)
    picks: Optional[Picks]          # above threshold; None on error
    picked_shape: Optional[tuple]   # (ny, nx) of the image the pixels refer to
    error: Optional[BaseException] = None
    info: dict = field(default_factory=dict)
    n_below: int = 0                # picks under the threshold (not saved)


def qc_figure(rec: Picked, opts: PickOptions) -> tuple:
    """``--qc``: (micrograph file name, the core's QC figure of ``rec``: :func:`hydrapicker.qc.micrograph_qc_figure`)."""
    import os

    from hydrapicker.qc import micrograph_qc_figure

    name = os.path.basename(rec.mic.meta["cs_path"])
    return name, micrograph_qc_figure(rec.local_path, rec.picks, opts.diameter_A, rec.info, True, name=name,
                                      pixel_size=rec.mic.pixel_size or rec.mic.meta.get("psize_A"))


def head_for(picker, opts: PickOptions) -> str:
    """The head that picks: the one asked for, else the model's default head."""
    from hydrapicker.checkpoint import default_head

    return opts.head or default_head(getattr(picker, "meta", None) or {})


def policy_for(picker, opts: PickOptions):
    """The core's :class:`~hydrapicker.postprocess.PickPolicy` for these options and this model."""
    from hydrapicker.class_centres import class_centring_on
    from hydrapicker.postprocess import PickPolicy

    meta, head = getattr(picker, "meta", None) or {}, head_for(picker, opts)
    return PickPolicy.for_model(meta, opts.diameter_A, head, "model" if opts.threshold is None else opts.threshold,
                                min_distance_A=opts.min_distance_A, edge_A=opts.edge_A, evidence=opts.evidence,
                                class_centres=class_centring_on(opts.class_centres, opts.adapt, opts.refine_centres,
                                                                meta, head))


def threshold_for(picker, opts: PickOptions) -> float:
    return policy_for(picker, opts).threshold


def min_dist_for(opts: PickOptions) -> float:
    """The NMS radius in Angstrom, as written to ``location/min_dist_A``."""
    return policy_for(None, opts).min_distance_A


def at_working_scale(picker, mics, opts: PickOptions, log=print):
    """``opts.working_scale``: the core's :func:`hydrapicker.scale.picker_at_scale` (auto reads a few of
    ``mics`` from disk); otherwise ``picker`` unchanged."""
    if opts.working_scale is None:
        return picker
    if opts.adapt:
        from hydrapicker.errors import UserFacingError

        raise UserFacingError("--adapt chooses its working scale itself: leave out --working-scale")
    from hydrapicker.scale import picker_at_scale

    return picker_at_scale(picker, mics, opts.diameter_A, opts.head, opts.working_scale, log)


def adapted(picker, mics, opts: PickOptions, default_save: str, log=print) -> tuple:
    """``opts.adapt``: the core's :func:`hydrapicker.adapt.adapted_picker` over ``mics`` (read from disk)
    -> (picker, options naming its head); otherwise both unchanged."""
    if not opts.adapt:
        return picker, opts
    from hydrapicker.adapt import adapted_picker

    picker, head, _ = adapted_picker(picker, mics, opts.diameter_A, opts.save_model or default_save, opts.head,
                                     log=log)
    return picker, replace(opts, head=head)


def adapted_centres(picker, mics, opts: PickOptions, default_save: str, log=print):
    """``opts.adapt_centres``: the core's :func:`hydrapicker.refine_adapt.picker_with_adapted_refiner` over
    ``mics`` (read from disk) -> the picker that refines with it; otherwise ``picker`` unchanged."""
    if not opts.adapt_centres:
        return picker
    from hydrapicker.refine_adapt import picker_with_adapted_refiner

    picker, _ = picker_with_adapted_refiner(picker, mics, opts.diameter_A, opts.save_refiner or default_save,
                                            opts.head, log=log)
    return picker


def data_set_centred(picker, mics, opts: PickOptions, default_save: str, log=print):
    """``opts.adapt``: the core's :func:`hydrapicker.class_centres.data_set_classes` over ``mics`` (read from
    disk; after :func:`adapted` and :func:`adapted_centres`, ``default_save`` as theirs: the adapted model,
    which keeps the averages) -> the picker centring on the data set's class averages; otherwise ``picker``
    unchanged."""
    if not opts.adapt:
        return picker
    from hydrapicker.adapt import AdaptSettings
    from hydrapicker.class_centres import data_set_classes

    return data_set_classes(picker, mics, opts.diameter_A, head_for(picker, opts), policy_for(picker, opts),
                            AdaptSettings().sample, log, keep_in=opts.save_model or default_save)


def _record(mic: Micrograph, res) -> Picked:
    if not res.ok or res.picks is None:
        return Picked(mic, res.micrograph.path, None, None, res.error or RuntimeError("no picks returned"),
                      dict(res.info or {}))
    shape = (res.info or {}).get("shape") or mic.meta.get("shape") or mic.shape
    n_below = len(res.candidates) - len(res.picks) if res.candidates is not None else 0
    return Picked(mic, res.micrograph.path, res.picks, tuple(int(v) for v in shape[-2:]), None,
                  dict(res.info or {}), n_below)


def pick_micrographs(picker, mics, opts: PickOptions, downloader=None, should_stop=None):
    """Yield a :class:`Picked` per micrograph of ``mics`` (in order)."""
    kw = dict(diameter_A=opts.diameter_A, head=head_for(picker, opts), policy=policy_for(picker, opts),
              should_stop=should_stop)
    by_name = {m.name: m for m in mics}
    if downloader is None:
        for res in picker.pick(list(mics), **kw):
            yield _record(by_name.get(res.micrograph.name, res.micrograph), res)
        return
    for mic in mics:
        if should_stop is not None and should_stop():
            return
        try:
            local = downloader.get(mic)
        except Exception as exc:  # reported and skipped, like an unreadable file
            yield Picked(mic, None, None, None, exc)
            continue
        try:
            for res in picker.pick([local], **kw):
                yield _record(mic, res)
        finally:
            downloader.release(local)
