"""hydra: pick cryo-EM particles with HydraPicker (sub-commands below; hydra COMMAND --help for each).

One sub-command per module of ``hydrapicker.commands``.

Each command module has a docstring (its help, with examples), ``add_args(parser)`` and ``main(args)``.
Heavy imports (torch) are deferred into ``main`` so that ``hydra --help`` is instant.
"""
import argparse
import importlib
import pkgutil
import sys

from . import __version__, commands


def _command_modules():
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        yield info.name.replace("_", "-"), importlib.import_module(f"{commands.__name__}.{info.name}")


def build_parser():
    parser = argparse.ArgumentParser(prog="hydra", description=__doc__.splitlines()[0],
                                     fromfile_prefix_chars=None)
    parser.add_argument("--version", action="version", version=f"hydrapicker {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _command_modules():
        doc = (module.__doc__ or name).strip()
        p = sub.add_parser(name, help=doc.splitlines()[0], description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_args(p)
        p.set_defaults(_main=module.main)
    return parser


def run_command(parser, argv, prog: str) -> int:
    """Parse ``argv`` and run the chosen command's ``_main``: help without a command (2), a one-line error
    for bad input (1, no traceback), 130 on Ctrl-C. Shared by every command-line program."""
    from .errors import UserFacingError

    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 2
    try:
        return args._main(args) or 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except UserFacingError as exc:  # clear message, no traceback
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return 1


def main(argv=None):
    return run_command(build_parser(), argv, "hydra")


def entry_point():
    sys.exit(main())
