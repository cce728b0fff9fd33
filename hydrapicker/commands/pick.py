"""Pick particles in micrographs with a HydraPicker model (default: the shipped generic model).

Inputs: a micrographs STAR (RELION 3.1+ optics layout or pre-3.1), MRC files, quoted globs, or
@list.txt files (one path per line; no "argument list too long" with thousands of files).
Writes one RELION coordinate STAR per micrograph (<out>/<stem>_<suffix>.star, every pick above the
threshold with its FOM; <stem> is the micrograph's path relative to the folder holding all of them, without
its extension, so a/x.mrc and b/x.mrc do not collide), optionally BOX, Topaz text and CBOX-like files, and a summary
(<out>/summary_<suffix>.tsv: micrograph, coordinate file, picks, the threshold used; with --threshold auto each
micrograph's own; the fraction of its area excluded as border bands or dead areas: no pick is kept in them or
near them (see --keep-invalid); the micrograph evidence factor its FOMs were weighed by,
1 = sure, lower = weak best candidates: junk, ice or carbon alone?). Micrographs whose output already exists are skipped unless --overwrite (resume).

--watch: after the micrographs present at start, keep picking new ones as they appear (a folder, a glob or a
micrographs STAR another program rewrites) every --poll seconds; a file is picked once complete (size stable
across two polls and equal to its MRC header's), never twice (the coordinate STAR marks it done, across
restarts); stops with exit 0 on a file named STOP in --out, SIGINT/SIGTERM or --idle-timeout seconds without a
new micrograph. The Topaz text and the summary are rewritten atomically after every batch.

Examples:
  hydra pick --mics CtfFind/job003/micrographs_ctf.star --diameter 150 --out picks/
  hydra pick 'Micrographs/*.mrc' --apix 1.06 --diameter 120 --out picks/ --threshold 0.3
  hydra pick @all_mics.txt --apix 1.06 --diameter 120 --format star box topaz --device cuda:0
  torchrun --nproc_per_node=4 -m hydrapicker pick --mics mics.star --diameter 150 --out picks/
  hydra pick /data/session1/Micrographs --apix 0.83 --diameter 140 --out picks/ --watch --threshold auto
"""
from ..class_centres import DEFAULT_SETTINGS as CLASS_CENTRES
from ..class_centres import class_centring_on, data_set_classes, described
from ..scale import parse_working_scale


def threshold_arg(word: str):
    """``--threshold``: a number or ``auto``."""
    import argparse
    import math

    if word.strip().lower() == "auto":
        return "auto"
    try:
        value = float(word)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or 'auto', not {word!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"{word} is outside 0-1: FOMs are probabilities (0.3 = more picks, "
                                         "0.7 = fewer), or use 'auto'")
    return value


def positive_int(word: str) -> int:
    import argparse

    try:
        value = int(word)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number, not {word!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {word}")
    return value


def evidence_arg(word: str) -> float:
    """``--evidence``: a number >= 0 (multiples of the calibrated threshold's odds; 0 = off)."""
    import argparse
    import math

    try:
        value = float(word)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number, not {word!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be 0 (off) or more, not {word}")
    return value


def refine_choice(refine_centres, refiner=None):
    """``Picker(refine=...)`` for --refine (True) / --no-refine (False) / neither (None: the default,
    ``defaults.REFINE_CENTRES``) and --refiner FILE (a file implies --refine)."""
    if refine_centres is False:
        return False
    if refiner:
        return refiner
    return "shipped" if refine_centres else "auto"


def add_args(p):
    from .. import defaults

    p.add_argument("micrographs", nargs="*", help="MRC files, quoted globs, @list.txt or STAR files")
    p.add_argument("--mics", action="append", default=[], help="micrographs STAR (repeatable)")
    p.add_argument("--diameter", type=float, required=True, help="particle diameter in Angstrom")
    p.add_argument("--apix", type=float, default=None,
                   help="pixel size in A/px (overrides the STAR and the MRC header)")
    p.add_argument("--model", default=None,
                   help="model file, or a shipped model by name: generic-junk-distilled-2 (the default, trained "
                        "with junk: few picks on ice, carbon, vesicles and aggregates), generic (the first "
                        "generic model, trained without junk), generic-junk-distilled-3 (a further junk stage: "
                        "fewer false picks on junk), generic-junk, generic-junk-distilled (README, Model files)")
    p.add_argument("--head", default=None,
                   help="head to pick with (default: the model's own: the few-shot head of a model made by "
                        "`hydra finetune`, else generic)")
    p.add_argument("--threshold", type=threshold_arg, default=None,
                   help="FOM threshold for written picks (default: the model's calibrated threshold); 'auto': "
                        "each micrograph's own, from its FOM distribution, within +-0.3 logit of the model's")
    p.add_argument("--all", action="store_true",
                   help="write every pick above the permissive floor (threshold later, e.g. at Extract)")
    p.add_argument("--min-distance", type=float, default=None,
                   help="duplicate suppression distance in A (default: half the diameter)")
    p.add_argument("--edge", type=float, default=0.0, help="exclude picks closer than this (A) to an edge")
    p.add_argument("--keep-invalid", action="store_true",
                   help="also pick in border bands (flat, smeared or striped motion-correction padding) and "
                        "dead areas; by default they are found per micrograph and no pick is kept in them or "
                        f"within {defaults.INVALID_MARGIN_DIAMETERS:g} diameters of them (the excluded area is in "
                        "the summary)")
    p.add_argument("--evidence", type=evidence_arg, default=None, metavar="R",
                   help="micrograph evidence: each micrograph's FOMs are multiplied by min(1, m / ref)"
                        f"^{defaults.EVIDENCE_POWER:g}, m = the mean of its {defaults.EVIDENCE_TOP_K} best, ref the "
                        "FOM whose odds are R times the calibrated threshold's, so micrographs of junk, ice or "
                        f"carbon alone yield fewer picks (default R = {defaults.EVIDENCE_REFERENCE:g}; more for "
                        "junk-heavy sessions: fewer false picks, but fewer picks on thick-ice micrographs too; "
                        "0 = off)")
    p.add_argument("--no-evidence", dest="evidence", action="store_const", const=0.0,
                   help="the FOMs as the network gives them (= --evidence 0)")
    p.add_argument("--tta", type=int, default=defaults.TTA, choices=(1, 2, 4, 8),
                   help="test-time augmentation: average the network over this many rotations/flips of each "
                        f"micrograph (default {defaults.TTA}: as stored and turned by 180 degrees, 1.2x the CPU time "
                        "of 1, fewer picks on junk; 4 and 8 cost more for little more; 1: fastest)")
    p.add_argument("--half-cell", dest="half_cell", action="store_true", default=None,
                   help="the head also reads the grid shifted by half a cell and both grids' candidates are ranked "
                        "together: better centres for particles near a cell border (crowded, micelle, elongated "
                        "and two-domain particles), about 1.1x the network time, but more picks on particle-free "
                        "micrographs at the threshold (README, Centres); off by default")
    p.add_argument("--class-centres", dest="class_centres", action="store_true", default=None,
                   help="move every pick towards where 2D alignment to class averages of its micrograph's own "
                        f"confident picks puts it (no training; the picks stay within {CLASS_CENTRES.reach:g} "
                        f"diameters; micrographs with fewer than {CLASS_CENTRES.min_confident} confident picks keep "
                        "theirs): better centres on compact particles, simulated and real (README, Centres). On by "
                        "default with --adapt and with a model adapted by it (unless --no-refine or at a smaller "
                        "working scale), else off")
    p.add_argument("--no-class-centres", dest="class_centres", action="store_false",
                   help="no class-average centring, also with --adapt or an adapted model")
    p.add_argument("--refine", dest="refine_centres", action="store_true", default=None,
                   help="re-centre every pick with the shipped centre refiner (a fine centre map read off the "
                        "network's features; a pick moves by at most 0.3 diameters): better centres on crowded, "
                        "small and low-SNR simulated particles, not on real apoferritin (README, Centres); "
                        "off by default")
    p.add_argument("--no-refine", dest="refine_centres", action="store_false",
                   help="keep the centres as the detector's grid decodes them (the default)")
    p.add_argument("--adapt-centres", dest="adapt_centres", action="store_true", default=None,
                   help="teach the centre refiner this data set's particles from its own confident picks (no "
                        "labels; on --adapt-sample micrographs, about a minute on 2 cores), then re-centre every pick "
                        "with it; kept as --save-refiner and re-used. On by default with --adapt (unless --no-refine "
                        "or --refiner); alone: the zero-shot head's picks re-centred. Too few confident picks: the "
                        "centres stay as without it")
    p.add_argument("--no-adapt-centres", dest="adapt_centres", action="store_false",
                   help="--adapt: teach the head only; the centres as without --adapt")
    p.add_argument("--save-refiner", default=None,
                   help="--adapt-centres: where the adapted centre refiner goes (default "
                        "<out>/adapted_refiner_<suffix>.pt; an existing one is re-used unless --overwrite)")
    p.add_argument("--refiner", default=None,
                   help="centre refiner file (implies --refine; default: the shipped one; made by `hydra train-refiner`)")
    p.add_argument("--out", default="picks", help="output directory")
    p.add_argument("--suffix", default="hydra", help="coordinate file suffix (<stem>_<suffix>.star)")
    p.add_argument("--format", nargs="+", default=["star"], choices=["star", "box", "topaz", "cbox"],
                   help="output formats")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("-j", "--threads", type=positive_int, default=None, help="CPU threads for torch")
    p.add_argument("--batch", type=int, default=None,
                   help="micrographs of one shape per forward pass (default: 8 on a GPU, 1 on the CPU)")
    p.add_argument("--readers", type=int, default=None,
                   help="threads reading micrographs ahead (default: 4 with a GPU, 1 on the CPU)")
    p.add_argument("--overwrite", action="store_true", help="re-pick micrographs already done")
    p.add_argument("--watch", action="store_true",
                   help="keep picking new micrographs as they appear (folder, glob or rewritten STAR) until a "
                        "STOP file in --out, SIGINT/SIGTERM or --idle-timeout")
    p.add_argument("--poll", type=float, default=5.0, help="--watch: seconds between looks (default 5)")
    p.add_argument("--idle-timeout", type=float, default=None,
                   help="--watch: stop after this many seconds without a new micrograph, counted while waiting "
                        "(not while picking or adapting; default: never)")
    p.add_argument("--working-scale", default=None, type=parse_working_scale, metavar="auto|S",
                   help="particle extent the network sees, as a fraction of --diameter (default: as given). auto: "
                        "4 micrographs are picked at 0.85 and 0.75 too, and a smaller scale is taken only when "
                        "the best candidates score clearly higher there (elongated particles whose length is the "
                        "diameter). --adapt and few-shot training choose it themselves")
    p.add_argument("--adapt", action="store_true",
                   help="self-adaptation without labels: learn a head for this data set from its own confident "
                        "zero-shot picks (on --adapt-sample micrographs), then pick with it; guarded: the "
                        "zero-shot picks are kept when the pseudo-labels are too few or inconsistent. The centre "
                        "refiner is taught the same way (--adapt-centres; --no-adapt-centres: the head only) and the "
                        "picks are class-centred (--class-centres; --no-class-centres: not). With "
                        "--watch: learned from the first --adapt-sample micrographs to come, picking starts then")
    p.add_argument("--adapt-sample", type=positive_int, default=24,
                   help="--adapt: micrographs learned from, spread over the data set (--watch: the first ones; "
                        "default 24)")
    p.add_argument("--adapt-rounds", type=int, default=1, choices=(1, 2),
                   help="--adapt: 2 = the adapted head's picks teach a second head (kept when it agrees better)")
    p.add_argument("--save-model", default=None,
                   help="--adapt: where the adapted model goes (default <out>/adapted_<suffix>.pt; an existing "
                        "one is re-used unless --overwrite); pick later data with --model <it>")
    p.add_argument("--qc", type=int, default=0, metavar="N",
                   help="write a QC image for N micrographs spread over the run (<out>/qc/<stem>_<suffix>.png: "
                        "the picks coloured by FOM, the excluded border bands and dead areas in red; --watch: "
                        "the first N); default 0 = none")
    p.add_argument("--quiet", action="store_true")


def main(args):
    from pathlib import Path

    from .. import distributed
    from ..errors import UserFacingError
    from ..micrographs import collect_micrographs
    from ..refine_adapt import adapts_centres

    inputs = list(args.micrographs) + list(args.mics)
    if not inputs:
        raise UserFacingError("give micrographs (files, globs, @list.txt, a folder with --watch) or --mics STAR")
    if getattr(args, "working_scale", None) is not None and getattr(args, "adapt", False):
        raise UserFacingError("--adapt chooses its working scale itself: leave out --working-scale")
    args.adapt_centres = adapts_centres(getattr(args, "adapt", False), getattr(args, "adapt_centres", None),
                                        getattr(args, "refine_centres", None), getattr(args, "refiner", None))
    if args.adapt_centres and args.watch and not getattr(args, "adapt", False):
        raise UserFacingError("--watch --adapt-centres goes with --adapt (both learn from the first --adapt-sample "
                              "micrographs); alone, run it once on the first micrographs of the session, then "
                              "--watch --refiner <out>/adapted_refiner_<suffix>.pt")
    if getattr(args, "working_scale", None) == "auto" and args.watch:
        raise UserFacingError("--working-scale auto looks at micrographs already written; with --watch give a "
                              "number (e.g. --working-scale 0.75) or none")
    if args.watch and (args.poll <= 0 or (args.idle_timeout is not None and args.idle_timeout < 0)):
        raise UserFacingError("--poll must be > 0 and --idle-timeout >= 0")
    if getattr(args, "qc", 0) < 0:
        raise UserFacingError(f"--qc is a number of micrographs (0 = no QC images), not {args.qc}")
    mics = [] if args.watch else collect_micrographs(inputs, apix=args.apix)  # watch: listed as they come
    out = Path(args.out)
    lock = take_out(out, distributed.rank_world()[0])  # before the model loads: a read-only --out fails now
    try:
        return _main(args, inputs, mics, out)
    finally:
        if lock is not None:
            lock.release()


def take_out(out, rank: int):
    """Create ``out``, take its lock (rank 0; one run per folder) and remove the temporary files a killed
    run left there; a folder that cannot be written is reported in one line. -> the lock, or None."""
    from ..atomic import clean_stale_temps
    from ..errors import UserFacingError
    from ..lock import OutputLock

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserFacingError(f"cannot create the output folder {out}: {exc.strerror or exc}; "
                              "choose a writable folder with --out") from None
    if rank != 0:
        return None
    lock = OutputLock(out, "hydra pick").acquire()
    clean_stale_temps(out)
    return lock


def _stopping_on_write_errors(fn, *args):
    """``fn(*args)``; a write that fails (disk full, quota, read-only, permissions) stops the run with one
    line. Files are written atomically, so nothing half-written stays and a rerun resumes."""
    from ..errors import UserFacingError

    try:
        return fn(*args)
    except OSError as exc:
        where = exc.filename or "the output folder"
        raise UserFacingError(f"cannot write {where}: {exc.strerror or exc}; nothing half-written is left: free "
                              "space (or fix the folder) and run the same command again to resume") from None


def _main(args, inputs, mics, out):
    import sys
    import time

    from .. import distributed
    from ..errors import UserFacingError
    from ..outputs import output_path, output_stems
    from ..picker import Picker, configure_torch

    log = (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, flush=True))
    stems = output_stems(m.name for m in mics)  # over the whole run: every rank and every resume agree

    def path(mic, ext):
        return output_path(out, stems[mic.name], args.suffix, ext)

    def done_before(m):
        try:
            return path(m, ".star").exists()
        except OSError as exc:  # e.g. a name too long for the file system: skipped like unreadable ones
            print(f"[hydra] WARNING: skipped {m.name}: {exc.strerror or exc}", file=sys.stderr, flush=True)
            unusable.add(m.name)
            return True

    unusable = set()
    done = {m.name for m in mics if done_before(m)}
    mics = [m for m in mics if m.name not in unusable]
    todo = [m for m in mics if args.overwrite or m.name not in done]
    if len(todo) < len(mics):
        log(f"[hydra] {len(mics) - len(todo)} of {len(mics)} micrographs already picked in {out}; skipping them")
    device = distributed.init(args.device)
    rank, world = distributed.rank_world()
    if world > 1:
        if args.watch:
            raise UserFacingError("--watch runs in one process (not under torchrun)")
        todo = distributed.shard(todo)
        if rank != 0:
            log = lambda *a, **k: None  # noqa: E731  (rank 0 reports)
    refine = refine_choice(getattr(args, "refine_centres", None), getattr(args, "refiner", None))
    picker = Picker(args.model, device=device, log=log, tta=args.tta, batch=args.batch, readers=args.readers,
                    refine=refine, half_cell=getattr(args, "half_cell", None))
    configure_torch(args.threads, picker.device)
    args.head = args.head or picker.default_head
    if getattr(args, "working_scale", None) is not None:
        from ..scale import picker_at_scale

        picker = picker_at_scale(picker, mics, args.diameter, args.head, args.working_scale, log)
    if getattr(args, "adapt", False) and not args.watch:  # --watch adapts on the first micrographs that come
        picker, args.head = _adapt(picker, mics, args, out, world, log)
    if getattr(args, "adapt_centres", False) and not args.watch:  # --watch: with --adapt (WatchAdaptation)
        picker = _adapt_centres(picker, mics, args, out, world, log)
    policy = _policy(picker, args)
    if getattr(args, "adapt", False) and not args.watch:  # --watch: with the head (WatchAdaptation)
        picker = data_set_classes(picker, mics, args.diameter, args.head, policy, args.adapt_sample, log,
                                  keep_in=_adapted_model_path(args, out))
    if policy.class_centres_at is not None:
        log(f"[hydra] centres: {described(policy.class_centres_at, refs=getattr(picker, 'class_refs', None))}; "
            f"--no-class-centres: off")
    agg = Aggregates(out, args.suffix, args.format, stems, path)
    if args.watch:
        return watch_main(args, inputs, out, stems, path, picker, policy, agg, log)
    t0 = time.time()
    n_ok, n_picks, failed = pick_batch(picker, todo, args, policy, path, agg, log,
                                       qc=QCPlan(out, args, stems, total=len(todo), share=world))
    failed = sorted(unusable) + failed if rank == 0 else failed
    if world > 1:
        parts = distributed.gather_objects((n_ok, n_picks, failed, agg.state()))
        n_ok, n_picks = sum(p[0] for p in parts), sum(p[1] for p in parts)
        failed = [f for p in parts for f in p[2]]
        for p in parts[1:]:
            agg.merge(p[3])
        distributed.finish()
        if rank != 0:
            return 0
    _stopping_on_write_errors(agg.write, mics)  # every micrograph done, by this or an earlier run, in order
    log(f"[hydra] picked {n_ok} micrographs, {n_picks} particles ({policy.describe()}) in "
        f"{time.time() - t0:.1f} s; outputs in {out}/")
    if failed:
        print(f"[hydra] {len(failed)} micrograph(s) failed: {', '.join(failed[:10])}"
              f"{' ...' if len(failed) > 10 else ''}", file=sys.stderr)
        if n_ok == 0 and len(todo) == len(mics):  # nothing picked, now or before
            return 1
    return 0


def _policy(picker, args):
    """The pick policy of the command's options for ``picker`` and head ``args.head``."""
    return picker.policy(args.diameter, args.head,
                         threshold=None if args.all else ("model" if args.threshold is None else args.threshold),
                         min_distance_A=args.min_distance, edge_A=args.edge,
                         find_invalid=not getattr(args, "keep_invalid", False),
                         evidence=getattr(args, "evidence", None),
                         class_centres=class_centring_on(getattr(args, "class_centres", None),
                                                         getattr(args, "adapt", False),
                                                         getattr(args, "refine_centres", None), picker.meta, args.head))


def _kept_path(given, out, name: str, suffix: str):
    """Where an adapted file is kept (and found again): the path ``given``, else ``<out>/<name>_<suffix>.pt``."""
    from pathlib import Path

    from ..outputs import output_path

    return Path(given) if given else output_path(out, name, suffix, ".pt")


def _adapted_model_path(args, out):
    """Where ``--adapt`` keeps (and finds) the adapted model: ``--save-model`` or ``<out>/adapted_<suffix>.pt``."""
    return _kept_path(args.save_model, out, "adapted", args.suffix)


def _adapted_refiner_path(args, out):
    """Where ``--adapt-centres`` keeps (and finds) the adapted refiner: ``--save-refiner`` or
    ``<out>/adapted_refiner_<suffix>.pt``."""
    return _kept_path(args.save_refiner, out, "adapted_refiner", args.suffix)


def _adapt(picker, mics, args, out, world, log) -> tuple:
    """``--adapt``: :func:`hydrapicker.adapt.adapted_picker` over the run's micrographs -> (picker, head)."""
    from ..adapt import AdaptSettings, adapted_picker
    from ..errors import UserFacingError

    if world > 1:
        raise UserFacingError("--adapt runs in one process: adapt once without torchrun (--save-model M.pt), "
                              "then pick under torchrun with --model M.pt")
    save_to = _adapted_model_path(args, out)
    settings = AdaptSettings(sample=args.adapt_sample, rounds=args.adapt_rounds)
    picker, head, _ = adapted_picker(picker, mics, args.diameter, save_to, args.head, settings,
                                     reuse=not args.overwrite, log=log)
    return picker, head


def _adapt_centres(picker, mics, args, out, world, log):
    """``--adapt-centres``: :func:`hydrapicker.refine_adapt.picker_with_adapted_refiner` over the run's
    micrographs -> the picker that refines with it."""
    from ..errors import UserFacingError
    from ..refine_adapt import RefinerAdaptSettings, picker_with_adapted_refiner

    if world > 1:
        raise UserFacingError("--adapt-centres runs in one process: adapt once without torchrun (--save-refiner "
                              "R.pt), then pick under torchrun with --refiner R.pt")
    save_to = _adapted_refiner_path(args, out)
    settings = RefinerAdaptSettings(sample=args.adapt_sample)
    picker, _ = picker_with_adapted_refiner(picker, mics, args.diameter, save_to, args.head, settings,
                                            reuse=not args.overwrite, log=log)
    return picker


class QCPlan:
    """``--qc N``: which micrographs get a QC image (:mod:`hydrapicker.qc`) and where it goes. With ``total``
    (a batch run) N spread evenly over the ``total`` micrographs to pick; without (``--watch``) the first N.
    A QC image that cannot be written is reported and the run goes on."""

    def __init__(self, out, args, stems, total=None, share: int = 1):
        from ..qc import QC_DIR, qc_indices

        n = int(getattr(args, "qc", 0) or 0)
        self.n = -(-n // max(1, share))  # under torchrun each of ``share`` ranks shows its part of the N
        self.args, self.stems, self.dir = args, stems, out / QC_DIR
        self.chosen = qc_indices(total, self.n) if total is not None else None
        self.count = 0

    def take(self, i: int) -> bool:
        """Is the ``i``-th micrograph of this run (0-based, in picking order) one to show?"""
        ok = (i in self.chosen) if self.chosen is not None else self.count < self.n
        self.count += ok
        return ok

    def write(self, res, policy) -> None:
        import sys

        from ..outputs import output_path
        from ..qc import write_micrograph_qc

        target = output_path(self.dir, self.stems[res.micrograph.name], self.args.suffix, ".png")
        try:
            write_micrograph_qc(target, res.micrograph.path, res.picks, self.args.diameter, res.info,
                                policy.find_invalid, name=res.micrograph.name)
        except Exception as exc:  # noqa: BLE001  (a QC image is never worth the run)
            print(f"[hydra] WARNING: no QC image for {res.micrograph.name}: {exc}", file=sys.stderr, flush=True)


def pick_batch(picker, todo, args, policy, path, agg, log, should_stop=None, qc=None) -> tuple:
    """Pick ``todo``, write each micrograph's files and record it in ``agg``; -> (n ok, n picks, failed).
    ``qc``: a :class:`QCPlan` (``--qc``)."""
    import sys
    import time

    t0 = time.time()
    n_ok, n_picks, failed = 0, 0, []
    for i, res in enumerate(picker.pick(todo, args.diameter, head=args.head, policy=policy,
                                        should_stop=should_stop), 1):
        if not res.ok:
            failed.append(res.micrograph.name)
            print(f"[hydra] WARNING: skipped {res.micrograph.name}: {res.error}", file=sys.stderr, flush=True)
            continue
        report_pixel_size(res, agg.pixel_sizes_reported, log)
        # recorded (journal) before the coordinate STAR marks it done: a kill between them loses nothing
        _stopping_on_write_errors(agg.add, res.micrograph, res.picks, res.info.get("threshold"),
                                  res.info.get("invalid"), res.info.get("evidence"))
        _stopping_on_write_errors(write_outputs, res, args, path)
        if qc is not None and qc.take(i - 1):
            qc.write(res, policy)
        n_ok += 1
        n_picks += len(res.picks)
        rate = i / max(time.time() - t0, 1e-9)
        thr = res.info.get("threshold")
        thr_txt = f", threshold {thr:.3f}" if policy.is_auto and thr is not None else ""
        if res.info.get("invalid_text"):  # border bands or dead areas excluded
            thr_txt += f", {res.info['invalid_text']}"
        if res.info.get("evidence", 1.0) < 1.0:  # weak best candidates: junk, ice or carbon only?
            thr_txt += f", FOMs x{res.info['evidence']:.2f} (weak micrograph evidence)"
        if res.info.get("class_centres", {}).get("refused"):  # --class-centres: too few confident picks here
            thr_txt += f", centres kept: {res.info['class_centres']['refused']}"
        log(f"[hydra] {i}/{len(todo)} {res.micrograph.name}: {len(res.picks)} picks{thr_txt} "
            f"(total {n_picks}, {rate:.2f} micrographs/s, {res.info['device']})")
    return n_ok, n_picks, failed


def watch_main(args, inputs, out, stems, path, picker, policy, agg, log) -> int:
    """``--watch``: :func:`hydrapicker.watch.watch` over the inputs; each batch through :func:`pick_batch`,
    the aggregates rewritten after it. Stems are kept once given (:class:`~hydrapicker.watch.StableStems`).
    With ``--adapt`` see :class:`WatchAdaptation`."""
    from ..watch import StableStems, StopFlag, WatchSource, watch

    book = StableStems(out / f".watch_stems_{args.suffix}.json")
    seen, picked_now = [], set()
    stop = StopFlag(out)
    qc = QCPlan(out, args, stems)
    adaptation = WatchAdaptation(args, out, picker, policy, log) if getattr(args, "adapt", False) else None

    def on_new(mics):
        seen.extend(mics)
        stems.update(book.assign(m.name for m in seen))

    def is_done(m):
        return m.name in picked_now or (not args.overwrite and path(m, ".star").exists())

    def pick(batch, should_stop=stop):
        p, pol = (picker, policy) if adaptation is None else (adaptation.picker, adaptation.policy)
        _, n_picks, _ = pick_batch(p, batch, args, pol, path, agg, log, should_stop=should_stop, qc=qc)
        picked_now.update(m.name for m in batch if path(m, ".star").exists())
        agg.write(seen)
        return n_picks

    def process(batch):
        if adaptation is None:
            return pick(batch)
        batch = adaptation.take(batch)  # none while the head waits for its micrographs, then those too
        n_picks = pick(batch) if batch else 0
        return sum(1 for m in batch if m.name in picked_now), len(batch), n_picks

    log(f"[hydra watch] watching {', '.join(inputs)} every {args.poll:g} s ({policy.describe()}); stop: "
        f"touch {out / 'STOP'}, Ctrl-C/SIGTERM" + (f", or {args.idle_timeout:g} s without a new micrograph"
                                                   if args.idle_timeout is not None else ""))
    ended = watch(WatchSource(inputs, apix=args.apix), process, is_done, out, poll=args.poll,
                  idle_timeout=args.idle_timeout, log=log, stop=stop, on_new=on_new)
    if adaptation is not None and adaptation.waiting:
        if ended.get("idle_timeout"):  # the session is over: learn from what came, then pick it
            batch = adaptation.take([], finish=True)
            n = pick(batch, should_stop=StopFlag(out))  # the idle stop is not a reason to stop these
            log(f"[hydra watch] picked the {len(batch)} micrograph(s) that waited for --adapt: {n} picks")
        else:
            log(f"[hydra watch] {len(adaptation.waiting)} micrograph(s) waited for --adapt (it learns from the "
                f"first {args.adapt_sample}) and are not picked: run the same command again to go on")
    agg.write(seen)
    return 0


class WatchAdaptation:
    """``--watch --adapt``: the head is learned from the first ``--adapt-sample`` micrographs that are
    complete (the batch rule, :func:`_adapt`, on them), and every micrograph (those first ones included) is
    picked with it, so one head picks the whole session. Until then micrographs wait, unpicked; when the run
    ends on ``--idle-timeout`` first, the head is learned from those that came (the guards may keep the
    zero-shot head); a STOP file or signal leaves them to the next run. A run that finds the adapted model
    (``--save-model`` or ``<out>/adapted_<suffix>.pt``) re-uses it at once; one that finds picks in ``--out``
    but no adapted model goes on with the head that made them (a refused adaptation's zero-shot head).
    With ``--adapt-centres`` the centre refiner is learned right after the head, from the same micrographs
    (:func:`_adapt_centres`), and a restart re-uses it (or, when the earlier run's guard refused it, keeps
    the centres as they were)."""

    def __init__(self, args, out, picker, policy, log):
        self.args, self.out, self.log = args, out, log
        self.picker, self.policy = picker, policy
        self.waiting: list = []
        self.adapted = False
        model = _adapted_model_path(args, out)
        if model.exists() and not args.overwrite:
            self._adapt([])
        elif not args.overwrite and any(out.glob(f"*_{args.suffix}.star")):
            self.adapted = True
            log(f"[hydra watch] --adapt: {out} holds picks but no adapted model ({model}): an earlier run kept "
                f"the zero-shot head; going on with it (give --overwrite to adapt again and re-pick everything)")
            self._centres([])
        else:
            log(f"[hydra watch] --adapt: picking starts once {args.adapt_sample} micrographs are complete: a "
                f"head is learned from them first (--adapt-sample)")

    def _adapt(self, mics):
        self.picker, self.args.head = _adapt(self.picker, mics, self.args, self.out, 1, self.log)
        self._centres(mics)
        self.adapted = True

    def _centres(self, mics):
        """``--adapt-centres``: the refiner learned from ``mics`` (none: a restart re-uses the kept one)."""
        if getattr(self.args, "adapt_centres", False):
            kept = _adapted_refiner_path(self.args, self.out)
            if not mics and not kept.exists():
                self.log(f"[hydra watch] --adapt-centres: no adapted refiner at {kept}: the earlier run's guard "
                         f"kept the centres as they were")
            self.picker = _adapt_centres(self.picker, mics, self.args, self.out, 1, self.log)
        self.policy = _policy(self.picker, self.args)
        # the class averages of the micrographs learned from, kept in the adapted model (a restart re-uses them)
        self.picker = data_set_classes(self.picker, mics, self.args.diameter, self.args.head, self.policy,
                                       self.args.adapt_sample, self.log,
                                       keep_in=_adapted_model_path(self.args, self.out))

    def take(self, batch, finish: bool = False) -> list:
        """The micrographs to pick now, of ``batch`` and those waiting (``finish``: adapt on what came)."""
        if self.adapted:
            return list(batch)
        self.waiting.extend(batch)
        if len(self.waiting) < self.args.adapt_sample and not finish:
            self.log(f"[hydra watch] --adapt: {len(self.waiting)} of {self.args.adapt_sample} micrographs "
                     f"complete; waiting for the rest before learning the head")
            return []
        ready, self.waiting = self.waiting, []
        self._adapt(ready)
        return ready


class Aggregates:
    """The run's aggregate outputs, rewritten atomically from every micrograph done (by this run or an
    earlier one): the Topaz text (with ``topaz`` in the formats) and ``summary_<suffix>.tsv`` (micrograph,
    coordinate file, picks, threshold used; an earlier run's thresholds are kept from its summary).
    Earlier runs' picks are read back from their coordinate STARs once and cached. Each micrograph's
    summary columns are also appended to ``.summary_<suffix>.journal`` as it is done, so a run killed
    before it rewrote the summary leaves them to the next one; the journal goes once the summary is written."""

    def __init__(self, out, suffix, formats, stems, path):
        self.out, self.suffix, self.formats, self.stems, self.path = out, suffix, formats, stems, path
        self.picks: dict = {}       # stem -> Picks as written
        self.threshold: dict = {}   # micrograph name -> threshold used ("" unknown)
        self.excluded: dict = {}    # micrograph name -> fraction of its area in border bands/dead areas
        self.evidence: dict = {}    # micrograph name -> the factor micrograph evidence weighed its FOMs by
        self.summary = out / f"summary_{suffix}.tsv"
        self.pixel_sizes_reported: set = set()  # (optics group, A/px, source) told to the user once
        self.journal = out / f".summary_{suffix}.journal"
        try:
            for line in self.summary.read_text().splitlines()[1:]:
                cols = line.split("\t")
                if len(cols) >= 4:
                    self.threshold[cols[0]] = cols[3]
                if len(cols) >= 5:
                    self.excluded[cols[0]] = cols[4]
                if len(cols) >= 6:
                    self.evidence[cols[0]] = cols[5]
        except OSError:
            pass
        try:
            for line in self.journal.read_text().split("\n")[:-1]:  # the last part: "" or a torn line
                cols = line.split("\t")
                if len(cols) in (3, 4):
                    self.threshold[cols[0]], self.excluded[cols[0]] = cols[1], cols[2]
                if len(cols) == 4:
                    self.evidence[cols[0]] = cols[3]
        except OSError:
            pass

    def add(self, mic, picks, threshold, invalid=None, evidence=None) -> None:
        self.picks[self.stems[mic.name]] = as_written(picks)
        self.threshold[mic.name] = "none" if threshold is None else f"{float(threshold):.6f}"
        self.excluded[mic.name] = "" if invalid is None else f"{float(invalid['excluded_fraction']):.6f}"
        self.evidence[mic.name] = "" if evidence is None else f"{float(evidence):.4f}"
        with open(self.journal, "a") as fh:  # one short append per micrograph (ranks append to one file)
            fh.write(f"{mic.name}\t{self.threshold[mic.name]}\t{self.excluded[mic.name]}\t"
                     f"{self.evidence[mic.name]}\n")

    def state(self):
        return self.picks, self.threshold, self.excluded, self.evidence

    def merge(self, state) -> None:
        self.picks.update(state[0])
        self.threshold.update(state[1])
        self.excluded.update(state[2])
        self.evidence.update(state[3])

    def write(self, mics) -> None:
        import contextlib

        from ..atomic import write_text
        from ..coords import write_topaz_txt

        done = all_done(mics, self.stems, self.picks, lambda m: self.path(m, ".star"))
        self.picks.update(done)
        if "topaz" in self.formats:
            write_topaz_txt(self.out / f"picks_{self.suffix}.txt", done)
        rows, listed = ["micrograph\tcoordinates\tpicks\tthreshold\texcluded_area\tevidence"], set()
        for m in mics:
            stem = self.stems[m.name]
            if stem in done and m.name not in listed:
                listed.add(m.name)
                star = self.path(m, ".star")
                rows.append(f"{m.name}\t{star.relative_to(self.out)}\t{len(done[stem])}\t"
                            f"{self.threshold.get(m.name, '')}\t{self.excluded.get(m.name, '')}\t"
                            f"{self.evidence.get(m.name, '')}")
        write_text(self.summary, "\n".join(rows) + "\n")
        with contextlib.suppress(FileNotFoundError):
            self.journal.unlink()  # its entries are in the summary now


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


def report_pixel_size(res, seen: set, log) -> None:
    """Tell the pixel size a micrograph was picked at and where it came from (STAR, MRC header, --apix),
    once per optics group, value and source."""
    info = res.info or {}
    apix, source = info.get("pixel_size"), info.get("pixel_size_source")
    group = (res.micrograph.meta or {}).get("optics_group")
    key = (str(group), apix, source)
    if apix is None or key in seen:
        return
    seen.add(key)
    log(f"[hydra] pixel size {apix:g} A/px ({source or 'source unknown'})"
        + (f" for optics group {group}" if group is not None else ""))
