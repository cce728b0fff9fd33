"""Multi-dataset training of the HydraPicker model (thesis recipe), resumable.

Phase 1 trains the body and the ``generic`` head on every source dataset (each mini-batch drawn from one
dataset). Phase 2 gives every source dataset its own head, initialised from the generic head, and trains
them with the head-bias loss ``(1/N) sum_k ||W_k - W_generic||`` that ties them to the generic head, which
keeps learning from every batch as well. Checkpoints are ``{model, optimizer, epoch, args, meta}`` dicts
written atomically every few minutes; a run restarted with the same ``--out`` resumes where it stopped.

Under ``torchrun --nproc_per_node=N`` the run is data-parallel (DistributedDataParallel, one rank per GPU or
CPU ranks with gloo): every rank draws its own mini-batches (its own random stream; ``--batch`` is per
rank), gradients are averaged across ranks, rank 0 validates, logs and writes checkpoints, and rank 0's
decisions (time budget, stop requests) are broadcast so that every rank runs the same number of steps. The
initial simulation is shared out across the ranks.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import defaults
from .data import PreparedSet, make_batch, prepare_with_truth
from .types import Picks


# -- data -------------------------------------------------------------------------------------------
def _simulate_prepared(job):
    spec_dict, index, extent_px, jitter, seed, junk_weight = job
    from .simulate import DatasetSpec, simulate_micrograph

    spec = DatasetSpec.from_dict(spec_dict)
    sim = simulate_micrograph(spec, index)
    image, xy, junk = network_view(sim)
    rng = np.random.default_rng(seed)
    mic = prepare_with_truth(image, xy, sim.pixel_size, sim.diameter_A, extent_px,
                             scale_jitter=jitter, rng=rng, name=sim.name)
    if junk_weight != 1.0:
        mic.weight = junk_weights(junk, mic.image.shape, extent_px, junk_weight)
    return mic


def network_view(sim):
    """A simulated micrograph as the pick path shows it to the network: the rectangle inside its border bands
    (:meth:`hydrapicker.regions.InvalidRegions.network_region`, found as picking finds them) -> (image, truth
    xy, junk mask) in that rectangle's pixels."""
    from .regions import network_view as view

    image, xy, inside = view(sim.image, sim.xy, sim.diameter_px)
    junk = sim.artefact_mask if inside is None or sim.artefact_mask is None else sim.artefact_mask[inside]
    return image, xy, junk


def junk_weights(artefact_mask, shape, extent_px: float, junk_weight: float):
    """Per-pixel loss weights of a prepared micrograph (``shape``): ``junk_weight`` on and within half a
    particle extent of the simulator's non-particles (particles beside junk are the recall the junk
    micrographs lose; junk itself the false picks), 1 elsewhere; None where the micrograph has none."""
    from scipy.ndimage import distance_transform_edt

    if artefact_mask is None or not (artefact_mask > 0.5).any():
        return None
    rows = np.minimum((np.arange(shape[0]) + 0.5) * artefact_mask.shape[0] / shape[0], artefact_mask.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * artefact_mask.shape[1] / shape[1], artefact_mask.shape[1] - 1)
    junk = artefact_mask[rows.astype(np.int64)[:, None], cols.astype(np.int64)[None, :]] > 0.5
    near = distance_transform_edt(~junk) <= 0.5 * extent_px
    return np.where(near, np.float32(junk_weight), np.float32(1.0))


def _one_torch_thread():
    import torch

    torch.set_num_threads(1)


def simulate_sets(specs, n_mics: int, extent_px: float, jitter: float, seed: int, workers: int = 1,
                  first_index: int = 0, log: Callable = print, across_ranks: bool = False,
                  junk_weight: float = 1.0) -> list:
    """Simulate ``n_mics`` micrographs of every spec and prepare them at the model's extent.

    ``junk_weight`` != 1: each micrograph carries loss weights (:func:`junk_weights`) around its junk.

    ``across_ranks``: under torchrun every rank simulates every N-th micrograph and all ranks receive all
    of them (a collective call: every rank must make it). The result does not depend on the number of ranks.
    """
    from . import distributed

    jobs = [(s.to_dict(), first_index + i, extent_px, jitter, seed * 1000003 + k * 1009 + i, junk_weight)
            for k, s in enumerate(specs) for i in range(n_mics)]
    t0 = time.time()
    rank, world = distributed.rank_world() if across_ranks else (0, 1)
    mine = jobs[rank::world]
    if workers > 1:
        import multiprocessing as mp

        # forked workers must not enter torch's OpenMP thread pool inherited from the parent (they would
        # hang); with one thread, torch runs every operation inline (what DataLoader workers do too)
        with mp.get_context("fork").Pool(workers, initializer=_one_torch_thread) as pool:
            mics = pool.map(_simulate_prepared, mine, chunksize=2)
    else:
        mics = [_simulate_prepared(j) for j in mine]
    if world > 1:
        parts = distributed.gather_objects(mics)
        mics = [None] * len(jobs)
        for r, part in enumerate(parts):
            mics[r::world] = part
    sets = [PreparedSet(s.name, mics[k * n_mics:(k + 1) * n_mics], {"spec": s.to_dict()})
            for k, s in enumerate(specs)]
    log(f"[train] simulated {len(jobs)} micrographs of {len(specs)} datasets in {time.time() - t0:.0f} s")
    return sets


# -- evaluation on prepared micrographs ------------------------------------------------------------
def predict_prepared(net, image: np.ndarray, head: str, stride: int, extent_px: float, policy=None) -> Picks:
    """Picks (rescaled px) on a prepared image: the picking path's decode and finalize, with
    ``PickPolicy.for_prepared`` (every pick above the default floor) unless another policy is given."""
    import torch

    from .postprocess import PickPolicy, decode, finalize

    policy = policy or PickPolicy.for_prepared(extent_px)
    s = stride
    ph, pw = (-image.shape[0]) % s, (-image.shape[1]) % s
    img = np.pad(image, ((0, ph), (0, pw))) if (ph or pw) else image
    device = next(net.parameters()).device
    with torch.inference_mode():
        g = net(torch.from_numpy(np.ascontiguousarray(img))[None, None].to(device), head)[0].float().cpu().numpy()
    return finalize(decode(g, s, policy.decode_floor), policy)


def _validation_picks(net, sets, head_for: Callable, stride: int, extent_px: float) -> tuple:
    """({dataset: ({key: Picks}, {key: truth xy})}) of every prepared validation micrograph."""
    was_training = net.training
    net.eval()
    out = {}
    for ds in sets:
        picks = {str(k): predict_prepared(net, mic.image, head_for(ds.name), stride, extent_px)
                 for k, mic in enumerate(ds.mics)}
        out[ds.name] = (picks, {str(k): mic.xy for k, mic in enumerate(ds.mics)})
    net.train(was_training)
    return out


def evaluate_sets(net, sets, head_for: Callable, stride: int, extent_px: float) -> dict:
    """AP (thesis rule) per dataset on prepared micrographs: {name: metrics}."""
    from .metrics import evaluate

    return {name: evaluate(picks, truth, extent_px)
            for name, (picks, truth) in _validation_picks(net, sets, head_for, stride, extent_px).items()}


def calibrate_threshold(net, sets, stride, extent_px, precision=defaults.CALIBRATION_PRECISION) -> float:
    """The threshold with the best recall at which pooled precision of the generic head on validation data
    reaches ``precision`` (``defaults.THRESHOLD`` when it never does)."""
    from .metrics import evaluate, threshold_at_precision

    picks, truth = {}, {}
    for name, (p, t) in _validation_picks(net, sets, lambda n: "generic", stride, extent_px).items():
        picks.update({f"{name}/{k}": v for k, v in p.items()})
        truth.update({f"{name}/{k}": v for k, v in t.items()})
    thr = threshold_at_precision(evaluate(picks, truth, extent_px)["pr"], precision)
    return defaults.THRESHOLD if thr is None or not np.isfinite(thr) else float(thr)


# -- the loop ---------------------------------------------------------------------------------------
def _forward_module():
    import torch

    from .criterion import head_bias_loss
    from .model import GENERIC

    class TrainForward(torch.nn.Module):
        """One training forward pass as one module call, so that DistributedDataParallel can wrap it.

        Returns the generic head's output; with ``head`` also that dataset head's output and the head-bias
        term over ``bias_heads`` (which reaches every dataset head's parameters, so every parameter gets a
        gradient on every rank even though ranks train different dataset heads in the same step).
        """

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, imgs, head=None, bias_heads=()):
            feats = self.net.body(imgs)
            out_g = self.net.heads[GENERIC](feats)
            if head is None:
                return (out_g,)
            return out_g, self.net.heads[head](feats), head_bias_loss(self.net, list(bias_heads))

    return TrainForward


def parameter_checksum(net) -> float:
    """A number that differs when any parameter differs (ranks compare it to prove they stayed in sync)."""
    import torch

    with torch.no_grad():
        return float(sum((p.detach().double() * (1.0 + 1e-3 * i)).sum().cpu()
                         for i, p in enumerate(net.parameters())))


class JsonLog:
    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **rec):
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec, default=float) + "\n")


def lr_at(step, total, base, cycle, warmup=200):
    """Linear warm-up, then cosine annealing with warm restarts every ``cycle`` steps."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) % max(cycle, 1)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t / max(cycle, 1))))


def init_from(net, path) -> dict:
    """Copy the body and the generic head of the model file ``path`` into ``net``.

    Returns a compact description of the source (path, preset, its training recipe and datasets) for the
    new model's metadata, so a model trained in stages still names every dataset it has seen.
    """
    from .checkpoint import preset_from_meta, read_checkpoint
    from .errors import UserFacingError
    from .model import GENERIC, grow_state_dict, grows_into

    def copied(k: str) -> bool:  # the body and the generic head
        return k.startswith("body.") or k.startswith(f"heads.{GENERIC}.")

    ck = read_checkpoint(path)
    meta = ck["meta"]
    keep = {k: v.float() if v.is_floating_point() else v for k, v in ck["model"].items() if copied(k)}
    if meta.get("preset") != net.preset.name:
        source = preset_from_meta(meta)
        if not grows_into(source, net.preset):
            raise UserFacingError(f"--init {path}: preset {meta.get('preset')!r} does not match the run's "
                                  f"--preset {net.preset.name!r} (nor grows into it)")
        # a deeper preset starts as the source network: its new residual blocks add nothing yet
        keep = {k: v for k, v in grow_state_dict(net, keep, source.n_blocks).items() if copied(k)}
    missing, unexpected = net.load_state_dict(keep, strict=False)
    missing = [k for k in missing if copied(k)]
    if missing or unexpected:
        raise UserFacingError(f"--init {path}: weights do not fit the network ({(missing + unexpected)[:3]})")
    training = meta.get("training") or {}
    return {"path": str(path), "preset": meta.get("preset"), "step": training.get("step"),
            "recipe": training.get("recipe"), "datasets": training.get("datasets"),
            "init_from": training.get("init_from")}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run is told (built from ``hydra train``'s arguments by
    :meth:`from_namespace`; the field names are the options' names)."""

    out: str
    preset: str = "lite"
    datasets: int = 32
    mics_per_dataset: int = 8
    junk_fraction: float = 0.0
    junk_clumps: bool = False           # junk datasets also carry particle-sized clumps of other proteins
    small_fraction: float = defaults.SMALL_FRACTION  # share of globular/multidomain/flat datasets with a small protein
    val_mics: int = 2
    steps: int = 6000
    phase2_steps: int = 1500
    hours: float = 0.0
    phase1_fraction: float = 0.8
    batch: int = 8
    crop: int = 192
    lr: float = 2e-3
    cycle: int = 2000
    lambda_loc: float = 1.0
    lambda_bias: float = 0.01
    generic_weight: float = 0.5
    scale_jitter: float = 0.4
    init: Optional[str] = None
    refresh_every: int = 150
    val_every: int = 500
    log_every: int = 25
    checkpoint_minutes: float = 5.0
    workers: int = 2
    threads: int = 0
    device: str = "auto"
    seed: int = 0
    restart: bool = False
    assign_reach: float = defaults.ASSIGN_REACH
    distill: Optional[str] = None
    distill_weight: float = 1.0
    junk_weight: float = 1.0            # loss weight on and beside the simulator's junk (1 = none)

    @classmethod
    def from_namespace(cls, ns) -> "TrainConfig":
        return cls(**{f.name: getattr(ns, f.name) for f in fields(cls) if hasattr(ns, f.name)})

    def recipe(self) -> dict:
        return asdict(self)


class _Run:
    """One training run's state: the network, its data, optimiser and phase; rank 0 logs and writes."""

    def __init__(self, cfg: TrainConfig, log: Callable):
        import torch

        from . import distributed
        from .criterion import Criterion
        from .model import build_model
        from .picker import select_device
        from .simulate import source_dataset_specs

        self.cfg = cfg
        # a bad --device fails before any output
        self.device = select_device(distributed.init(cfg.device or "auto"))
        self.rank, self.world = distributed.rank_world()
        self.lead = self.rank == 0
        self.log = log if self.lead else (lambda *a, **k: None)  # rank 0 reports
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.out = Path(cfg.out)
        if self.lead:
            self.out.mkdir(parents=True, exist_ok=True)
        self.ckpt_path, self.final_path = self.out / "checkpoint.pt", self.out / "model.pt"
        self.jlog = JsonLog(self.out / "log.jsonl") if self.lead else None
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed if self.world == 1 else [cfg.seed, self.rank])  # own batches
        self.specs = source_dataset_specs(n=cfg.datasets, seed=cfg.seed, junk_fraction=cfg.junk_fraction,
                                          junk_clumps=cfg.junk_clumps, small_fraction=cfg.small_fraction)
        self.net = build_model(cfg.preset).to(self.device)
        self.log(f"[train] device {self.device}" + (f"; {self.world} ranks (DistributedDataParallel), batch "
                                                     f"{cfg.batch} per rank" if self.world > 1 else ""))
        self.extent, self.stride = self.net.preset.extent_px, self.net.stride
        self.train_sets = simulate_sets(self.specs, cfg.mics_per_dataset, self.extent, cfg.scale_jitter, cfg.seed,
                                        cfg.workers, 0, self.log, across_ranks=True, junk_weight=cfg.junk_weight)
        val_sets = simulate_sets(self.specs, cfg.val_mics, self.extent, 0.0, cfg.seed + 1, cfg.workers,
                                 10_000, self.log, across_ranks=True)
        self.val_sets = val_sets if self.lead else []  # rank 0 validates
        self.ds_heads = [f"ds{k:02d}" for k in range(len(self.specs))]
        self.crit = Criterion(lambda_loc=cfg.lambda_loc)
        self.step, self.phase = 0, 1
        self.total1, self.total2 = cfg.steps, cfg.phase2_steps
        self.TrainForward = _forward_module()
        self.init_meta = None
        self.teacher, self.clean_sets = self._teacher()
        self._start()

    def _teacher(self):
        """--distill: a frozen copy of a model whose generic head the student's generic head is kept close
        to on the clean source datasets (learning without forgetting: junk is learnt on the junk-laden
        datasets while the clean datasets keep the teacher's answers) -> (teacher or None, clean indices)."""
        from .model import build_model
        from .simulate.artefacts import is_clean

        if not self.cfg.distill:
            return None, frozenset()
        teacher = build_model(self.cfg.preset).to(self.device)
        init_from(teacher, self.cfg.distill)
        teacher.eval()
        for prm in teacher.parameters():
            prm.requires_grad_(False)
        clean = frozenset(k for k, s in enumerate(self.specs) if is_clean(s))
        self.log(f"[train] distilling from {self.cfg.distill} on {len(clean)} clean datasets of {len(self.specs)}")
        return teacher, clean

    def _start(self):
        """Weights from --init, or the checkpoint of an earlier run with this --out (resume)."""
        from .checkpoint import read_checkpoint

        cfg = self.cfg
        resume = self.ckpt_path.exists() and not cfg.restart
        if cfg.init and not resume:
            self.init_meta = init_from(self.net, cfg.init)
            self.log(f"[train] initialised body and generic head from {cfg.init}")
        self.opt = self.make_opt()
        if not resume:
            return
        ck = read_checkpoint(self.ckpt_path)
        self.phase = int(ck["args"].get("phase", 1))
        if self.phase == 2:
            self._add_dataset_heads()
            self.opt = self.make_opt()
        self.net.load_state_dict(ck["model"])
        if ck.get("optimizer"):
            self.opt.load_state_dict(ck["optimizer"])
        self.step = int(ck["epoch"])
        self.rng = np.random.default_rng([cfg.seed, self.rank, self.step])  # not the batches already trained on
        self.total1 = int(ck["args"].get("phase1_end", self.total1)) if self.phase == 2 else self.total1
        self.init_meta = ((ck.get("meta") or {}).get("training") or {}).get("init_from")  # lineage survives
        self.log(f"[train] resumed from {self.ckpt_path} at phase {self.phase}, step {self.step}")

    def _add_dataset_heads(self):
        for h in self.ds_heads:
            if h not in self.net.heads:
                self.net.add_head(h)

    def make_opt(self):
        import torch

        return torch.optim.Adam([p for p in self.net.parameters() if p.requires_grad], lr=self.cfg.lr,
                                weight_decay=1e-5)

    def make_forward(self):
        fwd = self.TrainForward(self.net)
        if self.world == 1:
            return fwd
        from torch.nn.parallel import DistributedDataParallel

        dev = self.device
        return DistributedDataParallel(fwd, device_ids=[dev.index] if dev.type == "cuda" else None)

    def save(self, path=None, final=False, extra_meta=None):
        from .checkpoint import make_meta, save_checkpoint

        if not self.lead:
            return
        meta = make_meta(self.net, training=self.training_meta(), assign_reach=float(self.cfg.assign_reach),
                         **(extra_meta or {}))
        plain = {k: v for k, v in self.cfg.recipe().items() if isinstance(v, (int, float, str, bool)) or v is None}
        save_checkpoint(path or self.ckpt_path, self.net, meta, optimizer=None if final else self.opt,
                        epoch=self.step, args={**plain, "phase": self.phase, "phase1_end": self.total1},
                        half=final)

    def training_meta(self) -> dict:
        return {"recipe": {k: v for k, v in self.cfg.recipe().items() if isinstance(v, (int, float, str, bool))},
                "datasets": [s.to_dict() for s in self.specs], "dataset_heads": self.ds_heads,
                "simulator": "hydrapicker.simulate", "phase": self.phase, "step": self.step,
                "world_size": self.world, **({"init_from": self.init_meta} if self.init_meta else {})}

    def decisions(self, end1: bool, end2: bool, stop: bool):
        """Rank 0's decisions, the same on every rank (time budgets and stop requests differ by rank)."""
        if self.world == 1:
            return end1, end2, stop
        import torch
        import torch.distributed as dist

        t = torch.tensor([end1, end2, stop], dtype=torch.int32, device=self.device)
        dist.broadcast(t, src=0)
        return tuple(bool(v) for v in t.tolist())

    def train_step(self, fwd) -> tuple:
        """One optimiser step on one dataset's mini-batch -> (loss, parts, lr, dataset index)."""
        import torch

        cfg, rng = self.cfg, self.rng
        k = int(rng.integers(0, len(self.train_sets)))
        imgs, cls, off, wt = (t.to(self.device, non_blocking=True)
                              for t in make_batch(self.train_sets[k], cfg.batch, cfg.crop, self.stride, rng,
                                                   reach=cfg.assign_reach))
        lr = lr_at(self.step if self.phase == 1 else self.step - self.total1, self.total1,
                   cfg.lr * (1.0 if self.phase == 1 else 0.3), cfg.cycle)
        for g in self.opt.param_groups:
            g["lr"] = lr
        if self.phase == 1:
            (out_g,) = fwd(imgs)
            loss, parts = self.crit(out_g, cls, off, wt)
        else:
            out_g, out_k, bias = fwd(imgs, self.ds_heads[k], tuple(self.ds_heads))
            loss_g, parts = self.crit(out_g, cls, off, wt)
            loss_k, parts_k = self.crit(out_k, cls, off, wt)
            loss = loss_k + cfg.generic_weight * loss_g + cfg.lambda_bias * bias
            parts = {**parts, "head_cls": parts_k["cls"], "bias": float(bias.detach())}
        if k in self.clean_sets:
            d = self._distill_loss(imgs, out_g, cls, wt)
            loss = loss + cfg.distill_weight * d
            parts = {**parts, "distill": float(d.detach())}
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 10.0)
        self.opt.step()
        self.step += 1
        return loss, parts, lr, k

    def _distill_loss(self, imgs, out_g, cls, wt):
        """The criterion's normalisation (by the labelled positives) of the distillation loss against the
        teacher's generic head."""
        import torch

        from .criterion import distillation_loss, positives
        from .model import GENERIC

        with torch.no_grad():
            t_logits = self.teacher.heads[GENERIC](self.teacher.body(imgs))[:, 2]
        return distillation_loss(out_g[:, 2], t_logits, wt) / positives(cls)

    def evaluate(self, head_for=None) -> dict:
        """Validation AP per source dataset ({name: AP}) of the generic head (or ``head_for(name)``)."""
        from .model import GENERIC

        res = evaluate_sets(self.net, self.val_sets, head_for or (lambda n: GENERIC), self.stride, self.extent)
        return {n: round(float(r["AP"]), 4) for n, r in res.items()}

    def _phase_boundaries(self, fwd, should_stop, t_budget):
        """Budget and phase decisions before a step -> (fwd, "go" | "done" | "stopped")."""
        cfg = self.cfg
        budget_s = (cfg.hours or 0) * 3600.0
        elapsed = time.time() - t_budget
        end1, end2, stop = self.decisions(
            bool(budget_s and self.phase == 1 and elapsed > cfg.phase1_fraction * budget_s
                 and self.step < self.total1),
            bool(budget_s and self.phase == 2 and elapsed > budget_s and self.step < self.total1 + self.total2),
            bool(self.lead and should_stop is not None and should_stop()))
        if end1:
            self.log(f"[train] time budget: phase 1 ends at step {self.step}")
            self.total1 = self.step
        if end2:
            self.log(f"[train] time budget: phase 2 ends at step {self.step}")
            self.total2 = self.step - self.total1
        if self.phase == 1 and self.step >= self.total1:
            self.save()
            self.save(self.out / "phase1.pt")  # the single-head model, kept for the multi- vs single-head ablation
            if self.total2 <= 0:
                return fwd, "done"
            self.phase = 2
            self._add_dataset_heads()
            del fwd  # the old DDP wrapper lets go of its gradient hooks before the new one is made
            fwd = self.make_forward()
            self.opt = self.make_opt()
            self.log(f"[train] phase 2: {len(self.ds_heads)} dataset heads tied to the generic head")
        if self.phase == 2 and self.step >= self.total1 + self.total2:
            return fwd, "done"
        return fwd, ("stopped" if stop else "go")

    def _after_step(self, loss, parts, lr, k, t0):
        """Logging, validation, periodic checkpoints and data refresh after a step."""
        cfg, step = self.cfg, self.step
        if self.lead and step % cfg.log_every == 0:
            rec = {"step": step, "phase": self.phase, "loss": float(loss.detach()), **parts, "lr": lr,
                   "elapsed_s": round(time.time() - t0, 1), "dataset": self.train_sets[k].name}
            self.jlog.write(**rec)
            self.log(f"[train] step {step} phase {self.phase} loss {float(loss.detach()):.4f} cls "
                     f"{parts['cls']:.4f} loc {parts['loc']:.4f} lr {lr:.2e} ({time.time() - t0:.0f} s)")
        if self.lead and cfg.val_every and step % cfg.val_every == 0:
            aps = {n: round(ap, 4) for n, ap in self.evaluate().items()}
            self.jlog.write(step=step, phase=self.phase, val_AP_mean=float(np.nanmean(list(aps.values()))),
                            val_AP=aps)
            self.log(f"[train] step {step} validation AP (generic head) mean {np.nanmean(list(aps.values())):.3f}")
        if self.lead and time.time() - self.t_last_ckpt > cfg.checkpoint_minutes * 60:
            self.save()
            self.t_last_ckpt = time.time()
        if cfg.refresh_every and self.phase == 1 and step % cfg.refresh_every == 0:
            # more particle diversity for the generic head: replace one dataset's micrographs (each rank its own)
            j = int(self.rng.integers(0, len(self.train_sets)))
            idx0 = (step // cfg.refresh_every) * cfg.mics_per_dataset + 100 + 1_000_000 * self.rank
            self.train_sets[j] = simulate_sets([self.specs[j]], cfg.mics_per_dataset, self.extent,
                                               cfg.scale_jitter, cfg.seed + step, 1, idx0, lambda *a: None,
                                               junk_weight=cfg.junk_weight)[0]

    def loop(self, should_stop) -> bool:
        """Train until both phases are done (False) or a stop was requested (True, checkpoint saved)."""
        self.net.train()
        fwd = self.make_forward()
        self.t_last_ckpt = t0 = t_budget = time.time()
        while True:
            fwd, state = self._phase_boundaries(fwd, should_stop, t_budget)
            if state == "done":
                return False
            if state == "stopped":
                self.save()
                self.log("[train] stopped on request; checkpoint saved")
                return True
            self._after_step(*self.train_step(fwd), t0)

    def finish(self) -> Path:
        """Ranks in sync; then on rank 0: final validation, threshold calibration, the model file."""
        from . import distributed

        sync = None
        if self.world > 1:  # proof that DistributedDataParallel kept the ranks identical
            sums = distributed.gather_objects(parameter_checksum(self.net))
            sync = {"world_size": self.world, "ranks_in_sync": len(set(sums)) == 1, "parameter_checksums": sums}
            if not sync["ranks_in_sync"]:
                raise RuntimeError(f"ranks ended with different weights (checksums {sums}); this is a bug")
            if not self.lead:
                return self.final_path
        self.net.eval()
        val = self.evaluate()
        extra = {"validation_AP": val, "validation_AP_mean": float(np.nanmean(list(val.values())))}
        if self.phase == 2:
            names = [s.name for s in self.specs]
            extra["validation_AP_dataset_heads"] = self.evaluate(lambda n: self.ds_heads[names.index(n)])
        thr = calibrate_threshold(self.net, self.val_sets, self.stride, self.extent)
        extra["default_threshold"] = thr
        self.save(self.ckpt_path)
        self.save(self.final_path, final=True, extra_meta=extra)
        self.jlog.write(step=self.step, final=True, **extra, **(sync or {}))
        self.log(f"[train] done: validation AP mean {extra['validation_AP_mean']:.3f}, default threshold "
                 f"{thr:.3f}; wrote {self.final_path}")
        return self.final_path


def run_training(cfg: TrainConfig, log: Callable = print, should_stop: Optional[Callable] = None) -> Path:
    """Train per ``cfg``; returns the final model path (the checkpoint's when stopped on request).

    Under torchrun every rank calls this; only rank 0 logs and writes files (see the module docstring).
    """
    from . import distributed

    run = _Run(cfg, log)
    try:
        if run.loop(should_stop):
            return run.ckpt_path
        return run.finish()
    finally:
        distributed.finish()


def strip_heads(src, dst, keep=("generic",)):
    """Write a copy of a model file that keeps only some heads (the shipped file keeps ``generic``)."""
    from .checkpoint import load_checkpoint, save_checkpoint

    net, meta, ck = load_checkpoint(src, with_ckpt=True)
    net.keep_heads(keep)
    meta.pop("path", None)
    save_checkpoint(dst, net, meta, epoch=ck.get("epoch"), args=ck.get("args"), half=True)
    return Path(dst)
