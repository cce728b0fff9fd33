"""Train a HydraPicker model on simulated datasets (multi-head thesis recipe), resumable.

Phase 1 trains the shared body and the generic head on every source dataset, each mini-batch from one
dataset; phase 2 adds one head per source dataset tied to the generic head by the head-bias loss.
Re-running the same command with the same --out resumes from out/checkpoint.pt.
Under torchrun the run is data-parallel (DistributedDataParallel): one rank per GPU (or CPU ranks with
gloo), --batch per rank, rank 0 logs, validates and writes the files.

Examples:
  hydra train --out runs/generic --steps 6000 --phase2-steps 1500          # the shipped recipe
  hydra train --out runs/generic2 --init runs/generic/phase1.pt --seed 1 --datasets 48 --hours 1.5
  torchrun --standalone --nproc_per_node=4 -m hydrapicker train --out runs/big --preset thesis --hours 2
  hydra train --out runs/tiny --datasets 2 --mics-per-dataset 2 --steps 20 --phase2-steps 10 --crop 128
"""

from .. import defaults


def add_args(p):
    p.add_argument("--out", required=True, help="run directory (checkpoint.pt, model.pt, log.jsonl)")
    p.add_argument("--preset", default="lite", help="network preset: lite (shipped), lite_deep (lite with a third residual block; --init from a lite model grows it) or thesis")
    p.add_argument("--datasets", type=int, default=32, help="number of simulated source datasets")
    p.add_argument("--mics-per-dataset", type=int, default=8)
    p.add_argument("--junk-fraction", type=float, default=0.0,
                   help="fraction of the source datasets that carry junk (vesicles, ice crystals, gold, clumps, "
                        "thin carbon, border bands, gain stripes, hot pixels, junk-only micrographs)")
    p.add_argument("--val-mics", type=int, default=2, help="validation micrographs per source dataset")
    p.add_argument("--steps", type=int, default=6000, help="phase-1 steps (single generic head)")
    p.add_argument("--phase2-steps", type=int, default=1500, help="phase-2 steps (all heads + bias loss)")
    p.add_argument("--hours", type=float, default=0.0,
                   help="wall-time budget: phase 1 stops at --phase1-fraction of it, phase 2 at the end")
    p.add_argument("--phase1-fraction", type=float, default=0.8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=192, help="crop size in rescaled pixels")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--cycle", type=int, default=2000, help="cosine warm-restart period (steps)")
    p.add_argument("--lambda-loc", type=float, default=1.0)
    p.add_argument("--lambda-bias", type=float, default=0.01)
    p.add_argument("--generic-weight", type=float, default=0.5,
                   help="weight of the generic head's own loss in phase 2")
    p.add_argument("--scale-jitter", type=float, default=0.4,
                   help="the diameter used for rescaling is scaled by a log-uniform factor in "
                        "[1/(1+J), 1+J]: robustness to users' diameter estimates")
    p.add_argument("--init", default=None,
                   help="start from this model file's body and generic head (e.g. a previous run's "
                        "phase1.pt) instead of random weights; recorded in the new model's metadata")
    p.add_argument("--refresh-every", type=int, default=150,
                   help="phase 1: re-simulate one dataset's micrographs every N steps (0 = never)")
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--workers", type=int, default=2, help="processes for the initial simulation")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--device", default="auto",
                   help="auto (first GPU if any, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--assign-reach", type=float, default=defaults.ASSIGN_REACH,
                   help="a particle teaches every output cell whose centre is within this many strides of it "
                        "along both axes (default 0.5: only the cell holding it, the shipped models' rule; "
                        "scripts/train_centres.sh uses 0.7)")
    p.add_argument("--distill", default=None, metavar="MODEL",
                   help="keep the generic head close to this model's generic head on the clean source datasets "
                        "(learning without forgetting, e.g. hydrapicker/weights/generic.pt while junk is learnt)")
    p.add_argument("--distill-weight", type=float, default=1.0)
    p.add_argument("--junk-weight", type=float, default=1.0,
                   help="loss weight on and within half a particle of the simulator's junk (aggregates, vesicles, "
                        "contamination, crystals, gold, carbon film, border bands): particles beside junk and the junk itself "
                        "count this many times (1 = every pixel alike)")
    p.add_argument("--junk-clumps", action="store_true",
                   help="the junk datasets also carry 1-4 clumps of other proteins per micrograph, 0.7-2 particle "
                        "diameters across (the junk most like a particle)")
    p.add_argument("--small-fraction", type=float, default=defaults.SMALL_FRACTION,
                   help="share of the globular, multidomain and flat source datasets that hold a small protein "
                        f"(50-90 A, 50-150 kDa; default {defaults.SMALL_FRACTION:g}, the shipped models' recipe)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in --out")


def main(args):
    from ..picker import configure_torch
    from ..train import TrainConfig, run_training

    config = TrainConfig.from_namespace(args)  # the typed config: the engine never sees argparse
    configure_torch(config.threads)
    run_training(config)
    return 0
