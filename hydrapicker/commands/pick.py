"""Pick particles in micrographs with a HydraPicker model (default: the shipped generic model).

Inputs: a micrographs STAR (RELION 3.1+ optics layout or pre-3.1), MRC files, quoted globs, or
@list.txt files (one path per line; no "argument list too long" with thousands of files).
Writes one RELION coordinate STAR per micrograph (<out>/<stem>_<suffix>.star, every pick above the
threshold with its FOM; <stem> is the micrograph's path relative to the folder holding all of them, without
its extension, so a/x.mrc and b/x.mrc do not collide), optionally BOX, Topaz text and CBOX-like files, and a summary.
Micrographs whose output already exists are skipped unless --overwrite (resume).

Examples:
  hydra pick --mics CtfFind/job003/micrographs_ctf.star --diameter 150 --out picks/
  hydra pick 'Micrographs/*.mrc' --apix 1.06 --diameter 120 --out picks/ --threshold 0.3
  hydra pick @all_mics.txt --apix 1.06 --diameter 120 --format star box topaz --device cuda:0
  torchrun --nproc_per_node=4 -m hydrapicker pick --mics mics.star --diameter 150 --out picks/
"""


def add_args(p):
    p.add_argument("micrographs", nargs="*", help="MRC files, quoted globs, @list.txt or STAR files")
    p.add_argument("--mics", action="append", default=[], help="micrographs STAR (repeatable)")
    p.add_argument("--diameter", type=float, required=True, help="particle diameter in Angstrom")
    p.add_argument("--apix", type=float, default=None,
                   help="pixel size in A/px (overrides the STAR and the MRC header)")
    p.add_argument("--model", default=None, help="model file (default: shipped generic model)")
    p.add_argument("--head", default=None,
                   help="head to pick with (default: the model's own: the few-shot head of a model made by "
                        "`hydra finetune`, else generic)")
    p.add_argument("--threshold", type=float, default=None,
                   help="FOM threshold for written picks (default: the model's calibrated threshold)")
    p.add_argument("--all", action="store_true",
                   help="write every pick above the permissive floor (threshold later, e.g. at Extract)")
    p.add_argument("--min-distance", type=float, default=None,
                   help="duplicate suppression distance in A (default: half the diameter)")
    p.add_argument("--edge", type=float, default=0.0, help="exclude picks closer than this (A) to an edge")
    p.add_argument("--tta", type=int, default=1, choices=(1, 2, 4, 8),
                   help="test-time augmentation: average the network over this many rotations/flips of each "
                        "micrograph (N times slower; measured +0.01-0.02 AP on most sets)")
    p.add_argument("--out", default="picks", help="output directory")
    p.add_argument("--suffix", default="hydra", help="coordinate file suffix (<stem>_<suffix>.star)")
    p.add_argument("--format", nargs="+", default=["star"], choices=["star", "box", "topaz", "cbox"],
                   help="output formats")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("-j", "--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--batch", type=int, default=None,
                   help="micrographs of one shape per forward pass (default: 8 on a GPU, 1 on the CPU)")
    p.add_argument("--readers", type=int, default=None,
                   help="threads reading micrographs ahead (default: 4 with a GPU, 1 on the CPU)")
    p.add_argument("--overwrite", action="store_true", help="re-pick micrographs already done")
    p.add_argument("--quiet", action="store_true")


def main(args):
    import sys
    import time
    from pathlib import Path

    from .. import distributed
    from ..coords import write_topaz_txt
    from ..errors import UserFacingError
    from ..micrographs import collect_micrographs
    from ..outputs import output_path, output_stems
    from ..picker import Picker, configure_torch

    inputs = list(args.micrographs) + list(args.mics)
    if not inputs:
        raise UserFacingError("give micrographs (files, globs, @list.txt) or --mics STAR")
    mics = collect_micrographs(inputs, apix=args.apix)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, flush=True))
    stems = output_stems(m.name for m in mics)  # over the whole run: every rank and every resume agree

    def path(mic, ext):
        return output_path(out, stems[mic.name], args.suffix, ext)

    todo = [m for m in mics if args.overwrite or not path(m, ".star").exists()]
    if len(todo) < len(mics):
        log(f"[hydra] {len(mics) - len(todo)} of {len(mics)} micrographs already picked in {out}; skipping them")
    device = distributed.init(args.device)
    rank, world = distributed.rank_world()
    if world > 1:
        todo = distributed.shard(todo)
        if rank != 0:
            log = lambda *a, **k: None  # noqa: E731  (rank 0 reports)
    picker = Picker(args.model, device=device, log=log, tta=args.tta, batch=args.batch, readers=args.readers)
    configure_torch(args.threads, picker.device)
    args.head = args.head or picker.default_head
    policy = picker.policy(args.diameter, args.head,
                           threshold=None if args.all else ("model" if args.threshold is None else args.threshold),
                           min_distance_A=args.min_distance, edge_A=args.edge)
    threshold = policy.threshold
    t0 = time.time()
    n_ok, n_picks, failed, topaz = 0, 0, [], {}
    for i, res in enumerate(picker.pick(todo, args.diameter, head=args.head, policy=policy), 1):
        if not res.ok:
            failed.append(res.micrograph.name)
            print(f"[hydra] WARNING: skipped {res.micrograph.name}: {res.error}", file=sys.stderr, flush=True)
            continue
        picks = res.picks
        write_outputs(res, args, path)
        if "topaz" in args.format:
            topaz[stems[res.micrograph.name]] = as_written(picks)
        n_ok += 1
        n_picks += len(picks)
        rate = i / max(time.time() - t0, 1e-9)
        log(f"[hydra] {i}/{len(todo)} {res.micrograph.name}: {len(picks)} picks "
            f"(total {n_picks}, {rate:.2f} micrographs/s, {res.info['device']})")
    if world > 1:
        parts = distributed.gather_objects((n_ok, n_picks, failed, topaz))
        n_ok, n_picks = sum(p[0] for p in parts), sum(p[1] for p in parts)
        failed = [f for p in parts for f in p[2]]
        topaz = {k: v for p in parts for k, v in p[3].items()}
        distributed.finish()
        if rank != 0:
            return 0
    if "topaz" in args.format:  # every micrograph done, by this run or an earlier one, in the input's order
        topaz = all_done(mics, stems, topaz, lambda m: path(m, ".star"))
        write_topaz_txt(out / f"picks_{args.suffix}.txt", topaz)
    thr_txt = "all above the floor" if threshold is None else f"FOM >= {threshold:.3f}"
    log(f"[hydra] picked {n_ok} micrographs, {n_picks} particles ({thr_txt}) in {time.time() - t0:.1f} s; "
        f"outputs in {out}/")
    if failed:
        print(f"[hydra] {len(failed)} micrograph(s) failed: {', '.join(failed[:10])}"
              f"{' ...' if len(failed) > 10 else ''}", file=sys.stderr)
        if n_ok == 0 and len(todo) == len(mics):  # nothing picked, now or before
            return 1
    return 0


def write_outputs(res, args, path) -> None:
    """One micrograph's files in ``args.format``; its coordinate STAR last (it marks the micrograph done)."""
    from ..coords import write_box, write_cbox_like, write_relion_star

    box_px = args.diameter / res.info["pixel_size"]
    if "box" in args.format:
        write_box(path(res.micrograph, ".box"), res.picks, box_px)
    if "cbox" in args.format:
        write_cbox_like(path(res.micrograph, ".cbox"), res.candidates, box_px)
    write_relion_star(path(res.micrograph, ".star"), res.picks)


def as_written(picks):
    """``picks`` as a coordinate STAR holds them (starfile writes ``%.6f``): the Topaz text of a micrograph
    picked now and of one read back from an earlier run's STAR are the same bytes."""
    import numpy as np

    from ..types import Picks

    def r(a):
        return np.array([float("%.6f" % v) for v in a], dtype=float)

    return Picks(r(picks.x), r(picks.y), None if picks.fom is None else r(picks.fom))


def all_done(mics, stems, picked: dict, star_of) -> dict:
    """{stem: Picks} of every micrograph of the run whose coordinate STAR exists, in the run's order: this
    run's picks from ``picked``, earlier runs' read back from their STAR."""
    from ..coords.readers import read_relion_coords

    out = {}
    for m in mics:
        stem = stems[m.name]
        if stem in picked:
            out[stem] = picked[stem]
        elif stem not in out and star_of(m).exists():
            out[stem] = read_relion_coords(star_of(m))
    return out
