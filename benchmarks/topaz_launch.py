"""Run ``topaz preprocess`` / ``topaz extract`` from Topaz's own modules, without its training code.

Usage (with the Topaz venv's python): ``python topaz_launch.py {preprocess,extract} ARGS...``

The ``topaz`` entry point imports every sub-command, ``topaz train`` included, which needs torchvision;
where only a CUDA torchvision exists next to a CPU torch (PyPI's Linux wheel), that import fails. This
launcher registers just the two commands the benchmarks use, with Topaz's own argument parsers and main
functions, so results are identical; start-up is slightly shorter than the real entry point's (it skips
importing the other commands), which if anything flatters Topaz in the speed benchmark.
"""
import argparse
import sys


def main(argv=None):
    import topaz.commands.extract as extract
    import topaz.commands.preprocess as preprocess

    parser = argparse.ArgumentParser(prog="topaz")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (preprocess, extract):
        p = sub.add_parser(module.name)
        module.add_arguments(p)
        p.set_defaults(func=module.main)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
