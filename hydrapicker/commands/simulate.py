"""Simulate cryo-EM micrographs with exact ground truth (MRC + RELION 3.1 STARs + truth STARs).

Each dataset is one particle type (a random pseudo-atomic model) with its imaging settings; it is written
to DIR/<dataset name>/ as Micrographs/*.mrc, micrographs.star, truth/*.star and meta.json.

Examples:
  hydra simulate --list                                   # the held-out target datasets
  hydra simulate --out sim --target t_rod --n-micrographs 20
  hydra simulate --out sim --target all --n-micrographs 10
  hydra simulate --out sim --source 32 --n-micrographs 50  # training datasets
  hydra simulate --out sim --seed 7 --family cage          # one random dataset of a given family
  hydra simulate --out sim --seed 7 --pixel-size 1.1 --diameter 180 --shape 4096 4096   # full resolution
"""


def add_args(p):
    p.add_argument("--out", help="output folder (one sub-folder per dataset)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--target", metavar="NAME", help="a held-out target dataset (see --list), or 'all'")
    g.add_argument("--source", metavar="N", type=int, help="N random training datasets")
    g.add_argument("--seed", type=int, help="one random dataset with this seed")
    p.add_argument("--family", help="particle family for --seed (default: any training family)")
    p.add_argument("--source-seed", type=int, default=0, help="seed of the --source series (default 0)")
    p.add_argument("--n-micrographs", type=int, default=10, help="micrographs per dataset (default 10)")
    p.add_argument("--regime", choices=["binned", "full"], default="binned",
                   help="random settings for binned (20-80 px particles) or full-resolution micrographs")
    p.add_argument("--pixel-size", type=float, help="override the pixel size (A/px)")
    p.add_argument("--diameter", type=float, help="override the particle diameter (A)")
    p.add_argument("--shape", type=int, nargs=2, metavar=("NY", "NX"), help="override the micrograph size")
    p.add_argument("--list", action="store_true", help="list the target datasets and the families")


def main(args):
    import time

    from ..errors import UserFacingError
    from ..simulate import (TRAIN_FAMILIES, TARGET_FAMILIES, random_dataset_spec, source_dataset_specs,
                            target_dataset_specs, write_dataset)

    targets = target_dataset_specs()
    if args.list:
        print("target datasets (held-out particle shapes):")
        for s in targets:
            print(f"  {s.name:22s} {s.diameter_A:6.1f} A {s.diameter_px:5.1f} px {s.pixel_size:6.3f} A/px  "
                  f"{s.description}")
        print("training families: " + ", ".join(TRAIN_FAMILIES))
        print("target families:   " + ", ".join(TARGET_FAMILIES))
        return 0
    if not args.out:
        raise UserFacingError("hydra simulate: give --out DIR (or --list)")
    if args.n_micrographs < 1:
        raise UserFacingError("--n-micrographs must be >= 1")
    if args.target:
        specs = targets if args.target == "all" else [s for s in targets if s.name == args.target]
        if not specs:
            raise UserFacingError(f"unknown target {args.target!r}; known: "
                                  + ", ".join(s.name for s in targets) + " (or 'all'; see --list)")
    elif args.source:
        specs = source_dataset_specs(args.source, seed=args.source_seed)
    else:
        fams = None
        if args.family:
            known = TRAIN_FAMILIES + TARGET_FAMILIES
            if args.family not in known:
                raise UserFacingError(f"unknown --family {args.family!r}; known: {', '.join(known)}")
            fams = [args.family]
        specs = [random_dataset_spec(args.seed or 0, families=fams, regime=args.regime)]
    over = {}
    if args.pixel_size:
        over["pixel_size"] = args.pixel_size
    if args.diameter:
        over["diameter_A"] = args.diameter
    if args.shape:
        over["shape"] = tuple(args.shape)
    if any(v is not None and v <= 0 for v in (args.pixel_size, args.diameter)) or (
            args.shape and min(args.shape) < 32):
        raise UserFacingError("--pixel-size and --diameter must be > 0 and --shape at least 32 32")
    specs = [s.replace(**over) for s in specs]
    for s in specs:
        t0 = time.time()
        out = write_dataset(s, f"{args.out}/{s.name}", args.n_micrographs)
        dt = time.time() - t0
        print(f"{out}: {args.n_micrographs} micrographs {s.shape[1]}x{s.shape[0]} px, {s.pixel_size:.3f} A/px, "
              f"{s.family} particle {s.diameter_A:.0f} A = {s.diameter_px:.1f} px "
              f"({dt / args.n_micrographs:.2f} s/micrograph)")
    return 0
