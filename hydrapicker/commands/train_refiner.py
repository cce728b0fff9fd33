"""Train the centre refiner (the second stage that re-centres every pick) on simulated micrographs.

The shipped refiner (hydrapicker/weights/refiner.pt) was made by scripts/train_refiner.sh. Training
simulates --datasets data sets of the training families (a share with touching particles, a share at
very low SNR, a share with junk), finds the detector's picks on them, and teaches a small CNN to move
a pick to the centre of the particle nearest to it, from the detector's own errors and from random
offsets. Resumable: run the same command again (it continues from <out>/refiner_last.pt). The best
refiner on held-out simulated micrographs is <out>/refiner.pt; use it with
`hydra pick --refiner <out>/refiner.pt`.

Example:
  hydra train-refiner --out runs/refiner --hours 1 --threads 1
"""


def add_args(p):
    p.add_argument("--out", required=True, help="run directory (refiner.pt, refiner_last.pt, refine_log.jsonl)")
    p.add_argument("--detector", default=None, help="model whose picks are refined (default: the shipped model)")
    p.add_argument("--datasets", type=int, default=96, help="simulated training data sets (default 96)")
    p.add_argument("--mics-per-dataset", type=int, default=5)
    p.add_argument("--hours", type=float, default=1.0, help="training wall time, in total over resumes")
    p.add_argument("--width", type=int, default=64, help="channels of the centre head (default 64)")
    p.add_argument("--down", type=int, default=1, choices=(0, 1),
                   help="1 (default): the centre map at twice the body's stride (D/4 cells); 0: at the body's")
    p.add_argument("--sigma-cells", type=float, default=0.5, help="the heat target's Gaussian, in cells (default 0.5)")
    p.add_argument("--edge-cells", type=int, default=2, help="cells at a crop's border not taught (default 2)")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--workers", type=int, default=1, help="processes simulating micrographs")
    p.add_argument("-j", "--threads", type=int, default=1, help="CPU threads for torch")


def main(args):
    from ..refine_train import RefineTrainConfig, run

    cfg = RefineTrainConfig(out=args.out, detector=args.detector, datasets=args.datasets,
                            mics_per_dataset=args.mics_per_dataset, hours=args.hours, width=args.width,
                            down=args.down, sigma_cells=args.sigma_cells, edge_cells=args.edge_cells,
                            seed=args.seed, workers=args.workers, threads=args.threads)
    path = run(cfg)
    print(f"[refine] best refiner: {path}")
    return 0
