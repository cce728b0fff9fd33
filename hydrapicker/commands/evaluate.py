"""Score picks against ground truth: AP (IoU > 0.6 between D x D boxes), AUROC, max F1, AP within D/2.

--picks and --truth each take any coordinate source: a per-micrograph RELION coordinate STAR or a
directory of them (also EMAN .box), RELION's autopick.star/manualpick.star list, a RELION 3.1
coords_suffix_<name>.star node (run from the RELION project directory), a particles STAR, Topaz text
(image_name x_coord y_coord score) or a CryoSPARC .cs. Picks are matched to the truth's micrographs by
name: a coordinate file belongs to a micrograph when its stem starts with the micrograph's stem
(mic001_autopick.star -> mic001), so extensions, folders and pick names do not matter.

--box is the particle diameter D in pixels of the micrographs the coordinates refer to. Micrographs
with truth but no picks count as all missed; micrographs with picks but no truth are left out (listed),
unless --include-extra.

Examples:
  hydra evaluate --picks AutoPick/job010/autopick.star --truth truth/ --box 30
  hydra evaluate --picks picks.txt --truth truth/ --box 28 --plot pr.png
  hydra evaluate --picks out/ --truth truth/ --box 28 --threshold 0.5 --json
"""


def add_args(parser):
    parser.add_argument("--picks", required=True, metavar="PATH", help="picked coordinates (any source)")
    parser.add_argument("--truth", required=True, metavar="PATH",
                        help="ground truth: a directory of per-micrograph STARs or any coordinate source")
    parser.add_argument("--box", required=True, type=float, metavar="PX",
                        help="particle diameter D in pixels of the micrographs")
    parser.add_argument("--threshold", type=float, default=None, metavar="T",
                        help="drop picks with FOM < T before scoring (default: keep all)")
    parser.add_argument("--iou", type=float, default=0.6, help="IoU a match must exceed (default 0.6)")
    parser.add_argument("--mics", metavar="STAR", default=None,
                        help="micrographs STAR: match both picks and truth to its _rlnMicrographName")
    parser.add_argument("--include-extra", action="store_true",
                        help="count picks on micrographs without truth as false positives")
    parser.add_argument("--plot", metavar="PNG", default=None, help="write the precision-recall curve here")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")


def _fmt(v, digits=3):
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _table(res, summ, args) -> str:
    r = summ
    rows = [
        ("micrographs", f"{r['n_micrographs']} scored; {r['missing_micrographs']} without picks, "
                        f"{r['extra_micrographs']} picked without truth"
                        + (" (counted)" if args.include_extra else " (left out)")),
        ("true particles", str(r["n_truth"])),
        ("picks", f"{r['n_picks']}" + (f" (FOM >= {args.threshold:g})" if args.threshold is not None else "")),
        (f"AP (IoU > {args.iou:g})", _fmt(r["AP"])),
        ("AP (centre <= D/2)", _fmt(r["AP_centre"])),
        ("AUROC (grid cells)", _fmt(r["AUROC"])),
        ("max F1", f"{_fmt(r['F1'])} at FOM >= {_fmt(r['threshold'], 4)}"),
        ("recall at P >= 0.8", f"{_fmt(r['recall_at_p80'])} at FOM >= {_fmt(r['threshold_p80'], 4)}"),
        ("all picks kept", f"precision {_fmt(r['precision'])}, recall {_fmt(r['recall'])}, "
                           f"{r['n_tp']} true positives"),
    ]
    width = max(len(k) for k, _ in rows)
    head = f"hydra evaluate: {args.picks} vs {args.truth}, D = {args.box:g} px"
    return "\n".join([head] + [f"  {k:<{width}}  {v}" for k, v in rows])


def main(args):
    import json
    import sys
    import warnings

    from pathlib import Path

    from ..coords import match_keys, read_coords, read_micrograph_names
    from ..errors import UserFacingError
    from ..metrics import evaluate, pr_curve_png, summary

    if args.box <= 0:
        raise UserFacingError(f"--box {args.box:g}: give the particle diameter in pixels (> 0)")
    notes = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = None
        if args.mics:
            if not Path(args.mics).exists():
                raise UserFacingError(f"--mics '{args.mics}' does not exist")
            names = read_micrograph_names(Path(args.mics))
        truth = read_coords(args.truth, names)
        if not truth:
            raise UserFacingError(f"--truth '{args.truth}' holds no micrographs; check the path")
        picks = read_coords(args.picks, names)
        if names is None:
            picks = match_keys(picks, list(truth))
        if args.threshold is not None:
            picks = {k: p.above(args.threshold) for k, p in picks.items()}
        res = evaluate(picks, truth, args.box, args.iou,
                       include_extra=args.include_extra, warn=notes.append)
    notes = [str(w.message) for w in caught] + notes
    for n in notes:
        print(f"hydra evaluate: warning: {n}", file=sys.stderr)
    if picks and not any(k in truth for k in picks):
        print("hydra evaluate: warning: no picks were matched to a micrograph with truth; "
              "check that the names agree (see --mics)", file=sys.stderr)
    summ = summary(res)
    if args.plot:
        pr_curve_png(res, args.plot)
    if args.json:
        print(json.dumps(summ))
    else:
        print(_table(res, summ, args))
        if args.plot:
            print(f"  PR curve written to {args.plot}")
    return 0
