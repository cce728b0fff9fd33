"""Teach a model a new protein: train a new head from a few picked micrographs (few-shot).

The new head starts from the generic head; the shared body and the other heads stay frozen. The result
is a model file holding the base model's heads plus the new one: pick with it by
`hydra pick --model OUT --head NAME` (its calibrated threshold is stored in the file). Beside it,
`<OUT stem>_refiner.pt`: the centre refiner taught your labels, which the model names and which re-centres
the new head's picks (keep the two files together; --no-refiner skips it).

Coordinates (--coords) may be per-micrograph RELION coordinate STARs (a file, or a directory of them,
matched to the micrographs by name), coords_suffix_*.star, manualpick.star / autopick.star lists, a
particles STAR, EMAN .box files (a directory), Topaz text, or a CryoSPARC particles .cs. Only micrographs
with coordinates are used; an existing but empty coordinate file marks its micrograph as particle-free.

What to label: pick 3-10 micrographs. Picking every particle in them is best; if you pick only some, pick
the good and the doubtful alike anywhere in the micrograph (unpicked particles are not taught as
background, see --label-fraction), or pick every particle within part of a micrograph (nothing is taught
further than --region diameters from your picks).

Examples:
  hydra finetune --mics CtfFind/job003/micrographs_ctf.star --coords ManualPick/job004/manualpick.star \\
      --diameter 150 --name apoferritin --out apoferritin.pt
  hydra finetune --mics mics.star --coords picks/ --diameter 120 --name tfiid --label-fraction 0.3
  hydra pick --mics mics.star --model apoferritin.pt --head apoferritin --diameter 150 --out picks/
"""
from ..scale import parse_working_scale


def add_args(p):
    p.add_argument("--mics", action="append", required=True,
                   help="micrographs STAR (or MRC files/globs/@list.txt; repeatable) the picks were made on")
    p.add_argument("--coords", action="append", required=True,
                   help="coordinates: file or directory in any supported format (repeatable)")
    p.add_argument("--diameter", type=float, required=True, help="particle diameter in Angstrom")
    p.add_argument("--name", required=True, help="name of the new head (e.g. the protein's name)")
    p.add_argument("--model", default=None, help="base model file (default: the shipped generic model)")
    p.add_argument("--out", default=None, help="model file to write (default: <name>.pt)")
    p.add_argument("--apix", type=float, default=None, help="pixel size in A/px (overrides STAR and header)")
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs (default 40; early stopping)")
    p.add_argument("--label-fraction", type=float, default=None,
                   help="share of the particles you picked in the annotated regions (default: estimated; "
                        "1 = every particle picked, so everything unpicked is background)")
    p.add_argument("--region", type=float, default=3.0,
                   help="annotated region: this many diameters around your picks (default 3)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of the micrographs held out for validation/early stopping (default 0.2)")
    p.add_argument("--mix-generic", type=float, default=0.0,
                   help="share of each batch drawn from simulated generic data (0.5 = BoxNet's 1:1)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop training after this wall time")
    p.add_argument("--working-scale", default="auto", type=parse_working_scale, metavar="auto|S",
                   help="particle extent the network sees, as a fraction of --diameter: auto (default) tries 1, 0.85 "
                        "and 0.75 and takes a smaller one only when the model's best candidates score clearly "
                        "higher there (elongated particles); 1 = as given")
    p.add_argument("--no-refiner", dest="centre_refiner", action="store_false",
                   help="do not teach the centre refiner your labels (by default it is, and written beside the model "
                        "as <out stem>_refiner.pt, which the model names: it re-centres the new head's picks)")
    p.add_argument("--device", default="auto", help="where the head trains: auto (first GPU if any), cpu, cuda or "
                                                    "cuda:N")
    p.add_argument("-j", "--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")


def read_all_coords(sources, micrograph_names) -> dict:
    """Read and merge every --coords source, keyed by micrograph name (read_coords + match_keys)."""
    from ..coords import read_coords
    from ..errors import UserFacingError

    merged, origin = {}, {}
    for src in sources:
        for key, picks in read_coords(src, micrograph_names).items():
            if key in merged:
                raise UserFacingError(f"micrograph '{key}' has coordinates in both '{origin[key]}' and "
                                      f"'{src}'; give each micrograph's coordinates once")
            merged[key], origin[key] = picks, src
    return merged


def main(args):
    from ..errors import UserFacingError
    from ..finetune import finetune
    from ..micrographs import collect_micrographs
    from ..picker import configure_torch

    configure_torch(args.threads)
    log = (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, flush=True))
    mics = collect_micrographs(args.mics, apix=args.apix)
    coords = read_all_coords(args.coords, [m.name for m in mics])
    if not coords:
        raise UserFacingError(f"no coordinates found in {', '.join(args.coords)}")
    out = finetune(args.model, mics, coords, args.diameter, args.name, epochs=args.epochs,
                   out=args.out, log=log, val_fraction=args.val_fraction, mix_generic=args.mix_generic,
                   seed=args.seed, label_fraction=args.label_fraction,
                   region_radius=args.region, max_minutes=args.max_minutes, device=args.device,
                   working_scale=args.working_scale, centre_refiner=args.centre_refiner)
    if out is None:
        return 1
    log(f"[finetune] pick with: hydra pick --model {out} --head {args.name} --diameter {args.diameter:g} ...")
    return 0
