"""The ``serlib`` command line: one subcommand per pipeline step.

Each subcommand lives in ``serlib/commands/<name>.py`` and provides ``add_parser(subparsers)``,
which registers its arguments and sets ``func`` (``args -> exit code``). Heavy imports happen
inside ``func`` so that ``serlib --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from serlib import __version__
from serlib.errors import SerlibError

#: Subcommands in pipeline order.
COMMANDS = ("synth", "select", "features", "cv", "baseline", "book")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serlib",
        description="Speech emotion recognition with a focal-loss ResNet (Tripathi et al., 2019).",
    )
    parser.add_argument("--version", action="version", version=f"serlib {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"serlib.commands.{name}")
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except SerlibError as error:
        print(f"serlib {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"serlib {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
