"""The ``hydra`` command: one sub-command per module of :mod:`hydrapicker.commands`.

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
        yield info.name, importlib.import_module(f"{commands.__name__}.{info.name}")


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


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 2
    try:
        rc = args._main(args)
    except KeyboardInterrupt:
        print("hydra: interrupted", file=sys.stderr)
        return 130
    except UserFacingError as exc:  # clear message, no traceback
        print(f"hydra {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return rc or 0


from .errors import UserFacingError  # noqa: E402


def entry_point():
    sys.exit(main())
