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
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import defaults
from .data import PreparedSet, make_batch, prepare_with_truth
from .types import Picks


# -- data -------------------------------------------------------------------------------------------
def _simulate_prepared(job):
    spec_dict, index, extent_px, jitter, seed = job
    from .simulate import DatasetSpec, simulate_micrograph

    spec = DatasetSpec.from_dict(spec_dict)
    sim = simulate_micrograph(spec, index)
    rng = np.random.default_rng(seed)
    return prepare_with_truth(sim.image, sim.xy, sim.pixel_size, sim.diameter_A, extent_px,
                              scale_jitter=jitter, rng=rng, name=sim.name)


def _one_torch_thread():
    import torch

    torch.set_num_threads(1)


def simulate_sets(specs, n_mics: int, extent_px: float, jitter: float, seed: int, workers: int = 1,
                  first_index: int = 0, log: Callable = print, across_ranks: bool = False) -> list:
    """Simulate ``n_mics`` micrographs of every spec and prepare them at the model's extent.

    ``across_ranks``: under torchrun every rank simulates every N-th micrograph and all ranks receive all
    of them (a collective call: every rank must make it). The result does not depend on the number of ranks.
    """
    from . import distributed

    jobs = [(s.to_dict(), first_index + i, extent_px, jitter, seed * 1000003 + k * 1009 + i)
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
    from .checkpoint import read_checkpoint
    from .errors import UserFacingError
    from .model import GENERIC

    ck = read_checkpoint(path)
    meta = ck["meta"]
    if meta.get("preset") != net.preset.name:
        raise UserFacingError(f"--init {path}: preset {meta.get('preset')!r} does not match the run's "
                              f"--preset {net.preset.name!r}")
    keep = {k: v.float() if v.is_floating_point() else v for k, v in ck["model"].items()
            if k.startswith("body.") or k.startswith(f"heads.{GENERIC}.")}
    missing, unexpected = net.load_state_dict(keep, strict=False)
    missing = [k for k in missing if k.startswith("body.") or k.startswith(f"heads.{GENERIC}.")]
    if missing or unexpected:
        raise UserFacingError(f"--init {path}: weights do not fit the network ({(missing + unexpected)[:3]})")
    training = meta.get("training") or {}
    return {"path": str(path), "preset": meta.get("preset"), "step": training.get("step"),
            "recipe": training.get("recipe"), "datasets": training.get("datasets"),
            "init_from": training.get("init_from")}


def run_training(args, log: Callable = print, should_stop: Optional[Callable] = None) -> Path:
    """Train per ``args`` (see :mod:`hydrapicker.commands.train`); returns the final model path.

    Under torchrun every rank calls this; only rank 0 logs and writes files (see the module docstring).
    """
    import torch

    from . import distributed
    from .checkpoint import make_meta, read_checkpoint, save_checkpoint
    from .criterion import Criterion
    from .model import GENERIC, build_model
    from .picker import select_device
    from .simulate import source_dataset_specs

    # a bad --device fails before any output
    device = select_device(distributed.init(getattr(args, "device", None) or "auto"))
    rank, world = distributed.rank_world()
    lead = rank == 0
    if not lead:
        log = lambda *a, **k: None  # noqa: E731  (rank 0 reports)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out = Path(args.out)
    if lead:
        out.mkdir(parents=True, exist_ok=True)
    ckpt_path, final_path = out / "checkpoint.pt", out / "model.pt"
    jlog = JsonLog(out / "log.jsonl") if lead else None
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed if world == 1 else [args.seed, rank])  # each rank its own batches

    specs = source_dataset_specs(n=args.datasets, seed=args.seed,
                                 junk_fraction=getattr(args, "junk_fraction", 0.0))
    net = build_model(args.preset).to(device)
    log(f"[train] device {device}" + (f"; {world} ranks (DistributedDataParallel), batch {args.batch} per rank"
                                       if world > 1 else ""))
    extent, stride = net.preset.extent_px, net.stride
    train_sets = simulate_sets(specs, args.mics_per_dataset, extent, args.scale_jitter, args.seed,
                               args.workers, 0, log, across_ranks=True)
    val_sets = simulate_sets(specs, args.val_mics, extent, 0.0, args.seed + 1, args.workers,
                             10_000, log, across_ranks=True)
    if not lead:
        val_sets = []  # rank 0 validates
    ds_heads = [f"ds{k:02d}" for k in range(len(specs))]
    crit = Criterion(lambda_loc=args.lambda_loc)

    step, phase = 0, 1
    total1, total2 = args.steps, args.phase2_steps

    TrainForward = _forward_module()

    def make_opt():
        return torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=args.lr,
                                weight_decay=1e-5)

    def make_forward():
        fwd = TrainForward(net)
        if world == 1:
            return fwd
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(fwd, device_ids=[device.index] if device.type == "cuda" else None)

    init_meta = None
    if getattr(args, "init", None) and not (ckpt_path.exists() and not args.restart):
        init_meta = init_from(net, args.init)
        log(f"[train] initialised body and generic head from {args.init}")
    opt = make_opt()
    if ckpt_path.exists() and not args.restart:
        ck = read_checkpoint(ckpt_path)
        phase = int(ck["args"].get("phase", 1))
        if phase == 2:
            for h in ds_heads:
                if h not in net.heads:
                    net.add_head(h)
            opt = make_opt()
        net.load_state_dict(ck["model"])
        if ck.get("optimizer"):
            opt.load_state_dict(ck["optimizer"])
        step = int(ck["epoch"])
        rng = np.random.default_rng([args.seed, rank, step])  # not the batches already trained on
        total1 = int(ck["args"].get("phase1_end", total1)) if phase == 2 else total1
        init_meta = ((ck.get("meta") or {}).get("training") or {}).get("init_from")  # lineage survives resume
        log(f"[train] resumed from {ckpt_path} at phase {phase}, step {step}")

    def save(path=ckpt_path, final=False, extra_meta=None):
        if not lead:
            return
        meta = make_meta(net, training=training_meta(), **(extra_meta or {}))
        save_checkpoint(path, net, meta, optimizer=None if final else opt, epoch=step,
                        args={**{k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))
                                 or v is None}, "phase": phase, "phase1_end": total1}, half=final)

    def training_meta():
        return {"recipe": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))},
                "datasets": [s.to_dict() for s in specs], "dataset_heads": ds_heads,
                "simulator": "hydrapicker.simulate", "phase": phase, "step": step, "world_size": world,
                **({"init_from": init_meta} if init_meta else {})}

    def decisions(end1: bool, end2: bool, stop: bool):
        """Rank 0's decisions, the same on every rank (time budgets and stop requests differ by rank)."""
        if world == 1:
            return end1, end2, stop
        import torch.distributed as dist

        t = torch.tensor([end1, end2, stop], dtype=torch.int32, device=device)
        dist.broadcast(t, src=0)
        return tuple(bool(v) for v in t.tolist())

    net.train()
    fwd = make_forward()
    t_last_ckpt = time.time()
    t0 = time.time()
    budget_s = (args.hours or 0) * 3600.0
    t_start_budget = time.time()
    while True:
        elapsed = time.time() - t_start_budget
        end1, end2, stop = decisions(
            bool(budget_s and phase == 1 and elapsed > args.phase1_fraction * budget_s and step < total1),
            bool(budget_s and phase == 2 and elapsed > budget_s and step < total1 + total2),
            bool(lead and should_stop is not None and should_stop()))
        if end1:
            log(f"[train] time budget: phase 1 ends at step {step}")
            total1 = step
        if end2:
            log(f"[train] time budget: phase 2 ends at step {step}")
            total2 = step - total1
        if phase == 1 and step >= total1:
            save()
            save(out / "phase1.pt")  # the single-head model, kept for the multi- vs single-head ablation
            if total2 <= 0:
                break
            phase = 2
            for h in ds_heads:
                if h not in net.heads:
                    net.add_head(h)
            del fwd  # the old DDP wrapper lets go of its gradient hooks before the new one is made
            fwd = make_forward()
            opt = make_opt()
            log(f"[train] phase 2: {len(ds_heads)} dataset heads tied to the generic head")
        if phase == 2 and step >= total1 + total2:
            break
        if stop:
            save()
            log("[train] stopped on request; checkpoint saved")
            distributed.finish()
            return ckpt_path
        k = int(rng.integers(0, len(train_sets)))
        imgs, cls, off, wt = (t.to(device, non_blocking=True)
                              for t in make_batch(train_sets[k], args.batch, args.crop, stride, rng))
        lr = lr_at(step if phase == 1 else step - total1, total1, args.lr * (1.0 if phase == 1 else 0.3),
                   args.cycle)
        for g in opt.param_groups:
            g["lr"] = lr
        if phase == 1:
            (out_g,) = fwd(imgs)
            loss, parts = crit(out_g, cls, off, wt)
        else:
            out_g, out_k, bias = fwd(imgs, ds_heads[k], tuple(ds_heads))
            loss_g, parts = crit(out_g, cls, off, wt)
            loss_k, parts_k = crit(out_k, cls, off, wt)
            loss = loss_k + args.generic_weight * loss_g + args.lambda_bias * bias
            parts = {**parts, "head_cls": parts_k["cls"], "bias": float(bias.detach())}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()
        step += 1
        if lead and step % args.log_every == 0:
            rec = {"step": step, "phase": phase, "loss": float(loss.detach()), **parts, "lr": lr,
                   "elapsed_s": round(time.time() - t0, 1), "dataset": train_sets[k].name}
            jlog.write(**rec)
            log(f"[train] step {step} phase {phase} loss {float(loss.detach()):.4f} cls {parts['cls']:.4f} "
                f"loc {parts['loc']:.4f} lr {lr:.2e} ({time.time() - t0:.0f} s)")
        if lead and args.val_every and step % args.val_every == 0:
            res = evaluate_sets(net, val_sets, lambda n: GENERIC, stride, extent)
            aps = {n: round(r["AP"], 4) for n, r in res.items()}
            jlog.write(step=step, phase=phase, val_AP_mean=float(np.nanmean(list(aps.values()))), val_AP=aps)
            log(f"[train] step {step} validation AP (generic head) mean {np.nanmean(list(aps.values())):.3f}")
        if lead and time.time() - t_last_ckpt > args.checkpoint_minutes * 60:
            save()
            t_last_ckpt = time.time()
        if args.refresh_every and phase == 1 and step % args.refresh_every == 0:
            # more particle diversity for the generic head: replace one dataset's micrographs (each rank its own)
            j = int(rng.integers(0, len(train_sets)))
            idx0 = (step // args.refresh_every) * args.mics_per_dataset + 100 + 1_000_000 * rank
            train_sets[j] = simulate_sets([specs[j]], args.mics_per_dataset, extent, args.scale_jitter,
                                          args.seed + step, 1, idx0, lambda *a: None)[0]

    del fwd
    sync = None
    if world > 1:  # proof that DistributedDataParallel kept the ranks identical
        sums = distributed.gather_objects(parameter_checksum(net))
        sync = {"world_size": world, "ranks_in_sync": len(set(sums)) == 1, "parameter_checksums": sums}
        if not sync["ranks_in_sync"]:
            raise RuntimeError(f"ranks ended with different weights (checksums {sums}); this is a bug")
        if not lead:
            distributed.finish()
            return final_path
    # final: validation, calibration, model file
    net.eval()
    res = evaluate_sets(net, val_sets, lambda n: GENERIC, stride, extent)
    val = {n: round(float(r["AP"]), 4) for n, r in res.items()}
    extra = {"validation_AP": val, "validation_AP_mean": float(np.nanmean(list(val.values())))}
    if phase == 2:
        res_h = evaluate_sets(net, val_sets, lambda n: ds_heads[[s.name for s in specs].index(n)], stride, extent)
        extra["validation_AP_dataset_heads"] = {n: round(float(r["AP"]), 4) for n, r in res_h.items()}
    thr = calibrate_threshold(net, val_sets, stride, extent)
    extra["default_threshold"] = thr
    save(ckpt_path)
    save(final_path, final=True, extra_meta=extra)
    jlog.write(step=step, final=True, **extra, **(sync or {}))
    log(f"[train] done: validation AP mean {extra['validation_AP_mean']:.3f}, default threshold {thr:.3f}; "
        f"wrote {final_path}")
    distributed.finish()
    return final_path


def strip_heads(src, dst, keep=("generic",)):
    """Write a copy of a model file that keeps only some heads (the shipped file keeps ``generic``)."""
    from .checkpoint import load_checkpoint, save_checkpoint

    net, meta, ck = load_checkpoint(src, with_ckpt=True)
    for name in list(net.heads.keys()):
        if name not in keep:
            del net.heads[name]
    meta.pop("path", None)
    save_checkpoint(dst, net, meta, epoch=ck.get("epoch"), args=ck.get("args"), half=True)
    return Path(dst)
