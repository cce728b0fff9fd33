"""cryosparc_hydra: HydraPicker for CryoSPARC (picks land in the project as an External job).

Pick a workspace's exposures (the picks become a 'particles' output for Inspect Picks / Extract / 2D):
  cryosparc_hydra pick --url http://cryosparc:39000 --project P3 --workspace W1 \\
      --exposures J12.exposures --diameter 150
Train a few-shot head from picks you trust (Manual Picker, or selected 2D classes' particles):
  cryosparc_hydra train --url http://cryosparc:39000 --project P3 --particles J20.particles_selected \\
      --exposures J12.exposures --diameter 150 --head myprotein --out myprotein.pt
Offline (exported .cs files, no server):
  cryosparc_hydra pick --exposures-cs P3/J12/J12_passthrough_exposures.cs --project-dir P3 \\
      --diameter 150 --out picks.cs

Credentials: CRYOSPARC_EMAIL / CRYOSPARC_PASSWORD, a prompt, or the login saved by
`python -m cryosparc.tools login --url URL`. Needs: pip install "hydrapicker[cryosparc]".
"""
from __future__ import annotations

import argparse
import sys

from hydrapicker import defaults
from hydrapicker.errors import UserFacingError
from hydrapicker.commands.pick import evidence_arg
from hydrapicker.scale import parse_working_scale


def _common(p, what: str):
    srv = p.add_argument_group("CryoSPARC server")
    srv.add_argument("--url", help="web interface address, e.g. http://cryosparc:39000 "
                                   "(default: $CRYOSPARC_URL)")
    srv.add_argument("--email", help="account email (default: $CRYOSPARC_EMAIL, the saved login, or a prompt); "
                                     "the password comes from $CRYOSPARC_PASSWORD or a prompt")
    srv.add_argument("--project", help="project uid, e.g. P3")
    srv.add_argument("--exposures", metavar="JOB.OUTPUT",
                     help="exposures to " + what + ", e.g. J12.exposures (Patch CTF) or "
                          "J15.exposures_accepted (Curate Exposures)")
    srv.add_argument("--read", choices=["auto", "file", "download"], default="auto",
                     help="read micrographs from the project directory (file) or through the API "
                          "(download); auto: file when the project directory is visible here")
    off = p.add_argument_group("offline mode (no server)")
    off.add_argument("--exposures-cs", metavar="FILE.cs", help="an exposures dataset file (offline mode)")
    p.add_argument("--project-dir", metavar="DIR",
                   help="the CryoSPARC project directory as mounted here (paths in .cs files are relative "
                        "to it); offline default: two levels above --exposures-cs")
    p.add_argument("--diameter", type=float, required=True, metavar="A", help="particle diameter in Angstrom")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--flip-y", action="store_true",
                   help="flip picks up-down (row y -> ny-1-y); only for micrographs imported flipped "
                        "relative to the ones CryoSPARC extracts from")


def add_pick_args(p):
    _common(p, "pick")
    p.add_argument("--workspace", help="workspace uid for the new External job, e.g. W1")
    p.add_argument("--threshold", type=float, default=None,
                   help="keep picks with FOM >= this (default: the model's threshold); Inspect Picks can "
                        "raise it later (the FOM is in pick_stats/ncc_score and power)")
    p.add_argument("--model", default=None, help="model file (default: the shipped generic model)")
    p.add_argument("--head", default=None,
                   help="model head (default: the model's own: its few-shot head after training, else generic)")
    p.add_argument("--min-distance", type=float, default=None, metavar="A",
                   help="minimum distance between picks in Angstrom (default: half the diameter)")
    p.add_argument("--refine", dest="refine_centres", action="store_true", default=None,
                   help="re-centre every pick with the shipped centre refiner (a move of at most 0.3 diameters; "
                        "off by default: README, Centres)")
    p.add_argument("--no-refine", dest="refine_centres", action="store_false",
                   help="keep the centres as the detector's grid decodes them")
    p.add_argument("--tta", type=int, default=None, choices=(1, 2, 4, 8),
                   help="test-time views averaged per exposure (as hydra pick --tta; default: the core's, "
                        f"{defaults.TTA}; 1: fastest)")
    p.add_argument("--edge", type=float, default=0.0, metavar="A",
                   help="drop picks closer than this to the micrograph edge (Angstrom)")
    p.add_argument("--evidence", type=evidence_arg, default=None, metavar="R",
                   help="micrograph evidence (as hydra pick --evidence): each exposure's FOMs weighed by how sure its "
                        "best candidates are, so exposures of junk, ice or carbon alone yield few picks (default: "
                        "the core's; more for junk-heavy sessions; 0 = off)")
    p.add_argument("--no-evidence", dest="evidence", action="store_const", const=0.0,
                   help="the FOMs as the network gives them (= --evidence 0)")
    p.add_argument("--class-centres", dest="class_centres", action="store_true", default=None,
                   help="move every pick towards where 2D alignment to class averages of its exposure's own "
                        "confident picks puts it (as hydra pick --class-centres; on by default with --adapt and with "
                        "a model adapted by it, unless --no-refine or at a smaller working scale; else off)")
    p.add_argument("--no-class-centres", dest="class_centres", action="store_false",
                   help="no class-average centring, also with --adapt or an adapted model")
    p.add_argument("--working-scale", default=None, type=parse_working_scale, metavar="auto|S",
                   help="particle extent the network sees, as a fraction of --diameter (default: as given); auto: a "
                        "smaller scale only when the best candidates score clearly higher there (elongated "
                        "particles; needs the micrographs on disk); as hydra pick --working-scale")
    p.add_argument("--adapt", action="store_true",
                   help="self-adaptation without labels: learn a head from these exposures' own confident picks, "
                        "then pick with it (the zero-shot picks when the pseudo-labels are too few or "
                        "inconsistent), and the centre refiner too (--adapt-centres); the picks are class-centred "
                        "(--class-centres); needs the micrographs on disk")
    p.add_argument("--save-model", default=None, metavar="M.pt",
                   help="--adapt: where the adapted model goes (default: hydra_adapted_<project>_<job>.pt here, "
                        "offline <out>_adapted.pt; an existing file is re-used); pick later with --model")
    p.add_argument("--adapt-centres", dest="adapt_centres", action="store_true", default=None,
                   help="teach the centre refiner these exposures' particles from their own confident picks (no "
                        "labels), then re-centre every pick with it; on by default with --adapt (unless --no-refine); "
                        "needs the micrographs on disk")
    p.add_argument("--no-adapt-centres", dest="adapt_centres", action="store_false",
                   help="--adapt: teach the head only")
    p.add_argument("--save-refiner", default=None, metavar="R.pt",
                   help="--adapt-centres: where the adapted refiner goes (default: "
                        "hydra_adapted_refiner_<project>_<job>.pt here, offline <out>_adapted_refiner.pt; an existing "
                        "file is re-used); pick later with --refiner")
    p.add_argument("--qc", type=int, default=0, metavar="N",
                   help="QC images of N micrographs spread over the job, in the job's event log (the picks coloured "
                        "by FOM, the excluded border bands and dead areas in red; as hydra pick --qc); default 0")
    p.add_argument("--title", default="HydraPicker picks", help="title of the External job")
    p.add_argument("--out", metavar="picks.cs", help="offline mode: the particle dataset to write")


def add_train_args(p):
    _common(p, "train on")
    p.add_argument("--particles", metavar="JOB.OUTPUT",
                   help="particles to learn from, e.g. J20.particles (Manual Picker) or "
                        "J25.particles_selected (Select 2D)")
    p.add_argument("--particles-cs", metavar="FILE.cs", help="offline mode: a particles dataset file")
    p.add_argument("--head", required=True, help="name of the new head, e.g. myprotein")
    p.add_argument("--model", default=None, help="base model (default: the shipped generic model)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's)")
    p.add_argument("--out", required=True, metavar="model.pt", help="model file to write (base heads + the new one)")


def build_parser():
    doc = __doc__
    parser = argparse.ArgumentParser(prog="cryosparc_hydra", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("pick", help="pick exposures; save the picks as an External job (or a .cs offline)",
                       description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pick_args(p)
    p.set_defaults(_main=main_pick)
    t = sub.add_parser("train", help="train a few-shot head from a particles output and its exposures",
                       description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_args(t)
    t.set_defaults(_main=main_train)
    return parser


def _need(args, names, mode):
    missing = [n for n in names if not getattr(args, n.lstrip("-").replace("-", "_"), None)]
    if missing:
        raise UserFacingError(f"{mode} needs {', '.join(missing)}")


def _picker(args):
    from hydrapicker.picker import Picker, configure_torch

    from hydrapicker.commands.pick import refine_choice

    picker = Picker(model=args.model, device=args.device, refine=refine_choice(getattr(args, "refine_centres", None)),
                    tta=getattr(args, "tta", None))
    configure_torch(args.threads, picker.device)
    heads = picker.meta.get("heads", [])
    args.head = args.head or picker.default_head
    if args.head not in heads:
        raise UserFacingError(f"model {picker.meta.get('path')} has no head {args.head!r}; its heads: "
                              f"{', '.join(heads)} (--head)")
    return picker


def _options(args):
    from .picking import PickOptions

    if not args.diameter > 0:
        raise UserFacingError(f"--diameter {args.diameter}: give the particle diameter in Angstrom (> 0)")
    return PickOptions(diameter_A=args.diameter, threshold=args.threshold, head=args.head,
                       min_distance_A=args.min_distance, edge_A=args.edge, flip_y=args.flip_y,
                       adapt=getattr(args, "adapt", False), save_model=getattr(args, "save_model", None),
                       evidence=getattr(args, "evidence", None), qc=_qc_count(getattr(args, "qc", 0)),
                       working_scale=getattr(args, "working_scale", None),
                       adapt_centres=_adapts_centres(args), class_centres=getattr(args, "class_centres", None),
                       refine_centres=getattr(args, "refine_centres", None),
                       save_refiner=getattr(args, "save_refiner", None))


def _adapts_centres(args) -> bool:
    """The core's rule (:func:`hydrapicker.refine_adapt.adapts_centres`), as hydra pick and the RELION job."""
    from hydrapicker.refine_adapt import adapts_centres

    return adapts_centres(getattr(args, "adapt", False), getattr(args, "adapt_centres", None),
                          getattr(args, "refine_centres", None))


def _qc_count(n) -> int:
    if n is None or int(n) < 0:
        raise UserFacingError(f"--qc is a number of micrographs (0 = no QC images), not {n}")
    return int(n)


def main_pick(args) -> int:
    if args.exposures_cs:
        _need(args, ["--out"], "offline pick (--exposures-cs)")
        from .extra import require
        from .offline import pick_offline

        require("cryosparc.dataset")
        opts = _options(args)
        pick_offline(lambda: _picker(args), args.exposures_cs, args.out, opts, project_dir=args.project_dir)
        return 0
    _need(args, ["--project", "--workspace", "--exposures"], "pick (or --exposures-cs FILE.cs for offline mode)")
    from .connect import connect
    from .job import run_pick_job

    opts = _options(args)
    cs = connect(args.url, args.email)
    picker = _picker(args)
    run_pick_job(cs, args.project, args.workspace, args.exposures, picker, opts, read=args.read,
                 project_dir=args.project_dir, title=args.title)
    return 0


def main_train(args) -> int:
    if args.exposures_cs or args.particles_cs:
        _need(args, ["--exposures-cs", "--particles-cs"], "offline train")
        from .offline import train_offline

        train_offline(args.particles_cs, args.exposures_cs, args.out, args.diameter, args.head,
                      base_model=args.model, project_dir=args.project_dir, epochs=args.epochs,
                      flip_y=args.flip_y, device=args.device)
        return 0
    _need(args, ["--project", "--particles", "--exposures"], "train (or --particles-cs/--exposures-cs offline)")
    from .connect import connect
    from .train import train_from_project

    cs = connect(args.url, args.email)
    train_from_project(cs, args.project, args.particles, args.exposures, args.out, args.diameter, args.head,
                       base_model=args.model, epochs=args.epochs, flip_y=args.flip_y, read=args.read,
                       project_dir=args.project_dir, device=args.device)
    return 0


def main(argv=None) -> int:
    from hydrapicker.cli import run_command

    try:
        return run_command(build_parser(), argv, "cryosparc_hydra")
    except Exception as exc:
        from .job import PickInterrupted  # late: the job module is not needed for --help

        if isinstance(exc, PickInterrupted):
            print(f"cryosparc_hydra: {exc}; the External job was marked failed", file=sys.stderr)
            return 130
        raise


def entry_point():
    sys.exit(main())
