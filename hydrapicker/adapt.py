"""Self-adaptation without labels (``hydra pick --adapt``): a data set's own micrographs teach a new head.

0. **Working scale** (:func:`hydrapicker.scale.choose_scale`, on ``scale_micrographs`` of the sample):
   the particle extent the network sees; a smaller one than the given diameter's only when its best
   candidates score clearly higher (elongated particles). Everything after runs at the chosen scale, and
   the adapted model keeps it (its ``extent_px``), so re-using it picks at that scale too; a refused
   adaptation picks zero-shot at that scale.
1. **Zero-shot** on a sample of the data set (``sample`` micrographs spread evenly over it): every
   candidate above the floor, border bands and dead areas excluded, with the model's head.
2. **Pseudo-labels**, relative to that head's calibrated threshold ``thr`` (scores in logit space, shifted
   so that ``thr`` maps to 0.5): candidates scoring above ``positives_above`` are positives, cells under
   ``negatives_below`` negatives, and the uncertain middle is left untaught
   (:func:`hydrapicker.finetune.band_targets`).
3. **A new head** ``adapted`` on the frozen body (:func:`hydrapicker.finetune.finetune`: cached features,
   held-out validation micrographs, early stopping, tie to the generic head), written to ``save_to``.
4. **Its threshold** from its own scores: the score at which it keeps, over the sample, as many picks as
   the zero-shot head keeps at its calibrated threshold (so the written picks change by ranking, which is
   what adaptation can improve, not by a guessed cut-off).
5. Optionally a **second round**: the adapted head's picks become the pseudo-labels of a fresh head.

**Guards** (the zero-shot picks are kept, and the reason printed, when any fails): too few pseudo-positives
(``min_positives`` over the sample, and at least one micrograph in four holding some); the new head
disagrees with the pseudo-labels of the *held-out* micrographs (validation AP against them below
``min_agreement``: labels that a head cannot learn from other micrographs are noise, not a protein); a
second round whose held-out agreement falls below the first's keeps the first.

The model file written holds the base model's heads and ``adapted`` (its default head), so
``hydra pick --model <that file>`` re-uses it, e.g. on micrographs collected later (``hydra pick --watch
--adapt`` learns it from the first micrographs of a session and picks the session with it). Its metadata ``finetune.adapted.adaptation``
records the provenance: sample, pseudo-label counts and cut-offs, rounds, agreement with zero-shot.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import scale
from .finetune import _logit, _sigmoid
from .micrographs import sample_micrographs
from .types import Picks

HEAD = "adapted"


@dataclass(frozen=True)
class AdaptSettings:
    """How a data set adapts its head (defaults chosen on simulated data, never on the real sets)."""

    sample: int = 24              # micrographs learned from (spread over the data set)
    rounds: int = 1               # 2: the adapted head's picks teach a second head
    positives_above: float = 0.75  # shifted score (0.5 = the head's calibrated threshold) of a pseudo-positive
    negatives_below: float = 0.1  # shifted score under which an unpicked cell is a negative
    min_positives: int = 50       # over the sample
    min_agreement: float = 0.25   # validation AP against the held-out micrographs' pseudo-labels
    max_minutes: float = 2.0      # of head training per round
    learn_centres: bool = False   # train the offsets on the pseudo-labels' (the zero-shot head's own) centres
    #: the adapted head kept = base head + blend x (trained head - base head): 1 the trained head, < 1 a
    #: weight average with the head it started from (WiSE-FT), which keeps part of what the base head knew
    #: (tuning draw, default model: 1.0 mean gain +0.002 / worst -0.044, 0.7 +0.002 / -0.029, 0.5 +0.003 /
    #: -0.014, 0.3 +0.002 / -0.015)
    blend: float = 0.5
    #: memory for the body features the head trains on (:func:`hydrapicker.finetune.finetune`'s
    #: ``memory_gb``): as many dihedral orientations (8, 4, 2 or 1) as fit are cached, each one a body pass
    #: over the sample, and ``max_minutes`` counts that caching. 0.3 GB holds 8 orientations of the adapt
    #: benchmark's sets (12 micrographs, <= 472 px at the working scale) and 1-2 of a user's sample of
    #: large micrographs, where 8 took most of the two minutes and the head then trained one epoch; the
    #: validation AP against held-out pseudo-labels peaks in the first epochs (README, Self-adaptation:
    #: t_proteasome and t_small80kda at 2048², same AP, 101 s instead of 170 s on the first)
    cache_gb: float = 0.3
    #: working scale (step 0; :mod:`hydrapicker.scale`): micrographs picked at each scale (0: off)
    scale_micrographs: int = scale.MICROGRAPHS
    seed: int = 0


@dataclass
class Adaptation:
    """The outcome: ``accepted`` (pick with ``model``/``head``) or not (keep zero-shot; ``reason`` says why;
    ``zero_shot`` is the zero-shot picker at the chosen working scale when that is not 1)."""

    accepted: bool
    model: Optional[Path]
    head: str
    reason: str
    record: dict = field(default_factory=dict)
    zero_shot: Optional[object] = None


def shifted_cut(threshold: float, shifted: float) -> float:
    """The FOM whose logit lies ``logit(shifted)`` above the threshold's (shifted 0.5 = the threshold)."""
    return float(_sigmoid(_logit(threshold) + _logit(shifted)))


def zero_shot(picker, mics: list, diameter_A: float, head: str, should_stop=None) -> tuple:
    """Every candidate above the floor on ``mics`` -> ([(micrograph, Picks, pixel size)], names that failed).
    The FOMs are the network's own (micrograph evidence off): pseudo-labels and the adapted head's threshold
    are read off them, and the written picks are weighed once, against that threshold."""
    policy = picker.policy(diameter_A, head, threshold=None, evidence=0)
    done, failed = [], []
    for res in picker.pick(mics, diameter_A, head=head, policy=policy, should_stop=should_stop):
        if res.ok:
            done.append((res.micrograph, res.picks, float(res.info["pixel_size"])))
        else:
            failed.append(res.micrograph.name)
    return done, failed


def pseudo_labels(picked: list, cut: float) -> dict:
    """{micrograph name: Picks at or above ``cut``} (micrographs with none map to empty Picks)."""
    return {m.name: p.subset(p.fom >= cut) for m, p, _ in picked}


def count_matching_threshold(foms: np.ndarray, n_keep: int, fallback: float) -> float:
    """The score that keeps ``n_keep`` of ``foms`` (the lowest kept score); ``fallback`` when none is kept."""
    foms = np.sort(np.asarray(foms, np.float64))[::-1]
    if n_keep <= 0 or not len(foms):
        return fallback
    return float(foms[min(n_keep, len(foms)) - 1])


def agreement(a: list, b: list, cut_a: float, cut_b: float, diameter_A: float) -> float:
    """F1 between two pick sets of the same micrographs (picks at or above their cut-offs; a pick agrees
    when the other set has one within half a diameter)."""
    from scipy.spatial import cKDTree

    other = {m.name: p for m, p, _ in b}
    tp = na = nb = 0
    for m, pa, apix in a:
        pb = other.get(m.name, Picks.empty())
        xa, xb = pa.xy()[pa.fom >= cut_a], pb.xy()[pb.fom >= cut_b]
        na, nb = na + len(xa), nb + len(xb)
        if len(xa) and len(xb):
            d, _ = cKDTree(xb).query(xa)
            tp += int((d <= 0.5 * diameter_A / apix).sum())
    return 2.0 * tp / max(na + nb, 1)


def _train_round(picker, picked, labels, diameter_A, out, settings, record, log, should_stop):
    from .finetune import finetune

    adaptation = record["adaptation"]  # the base model at the working scale chosen for the data set
    return finetune(adaptation["base_model"], [m for m, _, _ in picked], labels, diameter_A, HEAD, out=out,
                    log=log, should_stop=should_stop, region_radius=float("inf"), seed=settings.seed,
                    working_scale=adaptation["working_scale"],
                    max_minutes=settings.max_minutes, memory_gb=settings.cache_gb, device=str(picker.device),
                    negatives_below=settings.negatives_below,
                    lambda_loc=1.0 if settings.learn_centres else 0.0, record=record)


def blend_head(path, head: str, base_head: str, blend: float) -> None:
    """Rewrite model file ``path`` with ``head``'s weights moved to base + blend x (head - base), ``base``
    being ``base_head``'s (the head it was initialised from: the same architecture); recorded in its
    metadata as ``finetune.<head>.blend``."""
    import torch

    from .checkpoint import load_checkpoint, save_checkpoint

    if not 0.0 <= blend <= 1.0:
        raise ValueError(f"adapt blend must be in [0, 1], got {blend}")
    net, meta = load_checkpoint(path)
    new, base = net.heads[head].state_dict(), net.heads[base_head].state_dict()
    with torch.no_grad():
        for k, v in new.items():
            if v.is_floating_point():
                v.copy_(base[k] + blend * (v - base[k]))
    meta = {**meta, "finetune": {**meta["finetune"], head: {**meta["finetune"][head], "blend": float(blend)}}}
    save_checkpoint(path, net, meta)


def _round(picker, picked, labels, n_zero, diameter_A, out, settings, record, log, should_stop):
    """Train one round's head into ``out``, set its threshold -> (round record, its picks) or None when
    stopped."""
    from .checkpoint import read_checkpoint, update_meta

    if _train_round(picker, picked, labels, diameter_A, out, settings, record, log, should_stop) is None:
        return None
    if settings.blend != 1.0:
        blend_head(out, HEAD, record["adaptation"]["base_head"], settings.blend)
    meta = read_checkpoint(out)["meta"]
    held = meta["finetune"][HEAD].get("validation_AP")
    held = float("nan") if held is None else float(held)
    adapted = picker.with_model(out)
    mine, _ = zero_shot(adapted, [m for m, _, _ in picked], diameter_A, HEAD, should_stop)
    foms = np.concatenate([p.fom for _, p, _ in mine] or [np.zeros(0)])
    thr = count_matching_threshold(foms, n_zero, adapted.threshold_for(HEAD))
    agree = agreement(picked, mine, record["adaptation"]["base_threshold"], thr, diameter_A)
    info = {**meta["finetune"][HEAD], "threshold": thr}
    info["adaptation"] = {**info["adaptation"], "held_out_agreement_AP": held, "agreement_with_zero_shot_F1": agree}
    update_meta(out, default_threshold=thr, head_thresholds={**meta.get("head_thresholds", {}), HEAD: thr},
                finetune={**meta["finetune"], HEAD: info})
    return {"round": record["adaptation"]["round"], "held_out_agreement_AP": held, "threshold": thr,
            "agreement_with_zero_shot_F1": agree}, mine


def adapt(picker, mics: list, diameter_A: float, save_to, head: Optional[str] = None,
          settings: AdaptSettings = AdaptSettings(), log: Callable = print,
          should_stop: Optional[Callable[[], bool]] = None) -> Adaptation:
    """Adapt ``picker``'s model to ``mics`` (see the module docstring); writes ``save_to`` when accepted."""
    import tempfile

    t0 = time.time()
    log = log or (lambda *a, **k: None)
    head = head or picker.default_head
    with tempfile.TemporaryDirectory(prefix="hydra-adapt-") as work:
        return _adapt(picker, mics, diameter_A, save_to, head, settings, log, should_stop, t0, Path(work))


def _adapt(picker, mics, diameter_A, save_to, head, settings, log, should_stop, t0, work) -> Adaptation:
    import shutil

    from .atomic import atomic_path

    base_picker = picker
    sample = sample_micrographs(list(mics), settings.sample)
    picker, working_scale, scale_scores = scale.choose_scale(picker, sample, diameter_A, head, work, log, should_stop,
                                                             n_micrographs=settings.scale_micrographs)
    thr0 = picker.threshold_for(head)
    log(f"[adapt] zero-shot on {len(sample)} of {len(mics)} micrographs (head {head}, threshold {thr0:.3f})")
    picked, failed = zero_shot(picker, sample, diameter_A, head, should_stop)
    cut = shifted_cut(thr0, settings.positives_above)
    labels = pseudo_labels(picked, cut)
    n_pos = sum(len(p) for p in labels.values())
    n_with = sum(1 for p in labels.values() if len(p))
    n_zero = sum(int((p.fom >= thr0).sum()) for _, p, _ in picked)
    record = {"sample": [m.name for m, _, _ in picked], "failed": failed, "base_model": base_picker.meta.get("path"),
              "base_head": head, "base_threshold": thr0, "positives_above_fom": cut, "pseudo_positives": n_pos,
              "micrographs_with_positives": n_with, "zero_shot_picks": n_zero, "settings": asdict(settings),
              "working_scale": working_scale, "scale_top_scores": {f"{k:g}": v for k, v in scale_scores.items()}}

    def refuse(why: str) -> Adaptation:
        log(f"[adapt] not adapted: {why}; picking with the zero-shot head {head}"
            + (f" at working scale {working_scale:g}" if working_scale != 1.0 else ""))
        return Adaptation(False, None, head, why, {**record, "seconds": round(time.time() - t0, 1)},
                          zero_shot=picker if working_scale != 1.0 else None)

    if should_stop is not None and should_stop():
        return refuse("stopped on request")
    if n_pos < settings.min_positives or n_with < max(1, len(picked) // 4):
        return refuse(f"too few confident picks to learn from ({n_pos} on {n_with} of {len(picked)} micrographs; "
                      f"at least {settings.min_positives} on a quarter of them are needed)")
    log(f"[adapt] {n_pos} pseudo-positives (FOM >= {cut:.3f}) on {n_with} micrographs; training head {HEAD!r}")
    rounds, kept = [], None
    for r in range(1, max(1, settings.rounds) + 1):
        out = Path(work) / f"round{r}.pt"
        got = _round(picker, picked, labels, n_zero, diameter_A, out, settings,
                     {"adaptation": {**record, "round": r}}, log, should_stop)
        if got is None:
            return refuse("stopped on request")
        info, mine = got
        rounds.append(info)
        log(f"[adapt] round {r}: held-out agreement (AP against pseudo-labels) "
            f"{info['held_out_agreement_AP']:.3f}, threshold {info['threshold']:.3f}, F1 against the "
            f"zero-shot picks {info['agreement_with_zero_shot_F1']:.3f}")
        if kept is not None and not info["held_out_agreement_AP"] >= kept[0]["held_out_agreement_AP"]:
            log(f"[adapt] round {r} agrees less with held-out pseudo-labels than round {r - 1}: keeping round "
                f"{r - 1}")
            break
        if not info["held_out_agreement_AP"] >= settings.min_agreement:
            return refuse(f"the new head does not reproduce the pseudo-labels of held-out micrographs (AP "
                          f"{info['held_out_agreement_AP']:.3f} < {settings.min_agreement}): they look like noise")
        kept = (info, out)
        labels = pseudo_labels(mine, shifted_cut(info["threshold"], settings.positives_above))
    save_to = Path(save_to)
    with atomic_path(save_to) as tmp:
        shutil.copyfile(kept[1], tmp)
    record.update(rounds=rounds, kept_round=kept[0]["round"], seconds=round(time.time() - t0, 1))
    log(f"[adapt] adapted head {HEAD!r} (round {kept[0]['round']}) saved to {save_to} in {record['seconds']:.0f} s")
    return Adaptation(True, save_to, HEAD, "adapted", record)


def adapted_picker(picker, mics: list, diameter_A: float, save_to, head: Optional[str] = None,
                   settings: AdaptSettings = AdaptSettings(), reuse: bool = True, log: Callable = print,
                   should_stop: Optional[Callable[[], bool]] = None) -> tuple:
    """What every entry point calls for ``adapt``: -> (picker to pick with, its head, :class:`Adaptation`).

    An adapted model already at ``save_to`` (an earlier run of the same job) is re-used when ``reuse``;
    a refused adaptation returns the zero-shot ``picker`` and head."""
    from .checkpoint import read_checkpoint
    from .errors import UserFacingError

    save_to = Path(save_to)
    if reuse and save_to.exists():
        meta = read_checkpoint(save_to)["meta"]
        if HEAD not in (meta.get("heads") or []):
            raise UserFacingError(f"{save_to} exists but holds no adapted head; remove it (or give another "
                                  f"--save-model) to adapt again")
        log(f"[adapt] re-using the adapted model {save_to} (remove it, or --overwrite, to adapt again)")
        result = Adaptation(True, save_to, HEAD, "re-used", meta["finetune"][HEAD].get("adaptation", {}))
    else:
        result = adapt(picker, mics, diameter_A, save_to, head, settings, log, should_stop)
    if not result.accepted:  # zero-shot, at the working scale the data set chose
        return result.zero_shot or picker, result.head, result
    return picker.with_model(result.model), HEAD, result
