"""The ``serlib`` command line: one subcommand per pipeline step.

Each subcommand lives in ``serlib/commands/<name>.py`` and provides ``add_parser(subparsers)``,
which registers its arguments and sets ``func`` (``args -> exit code``). Building the parser
imports none of torch, scikit-learn, librosa, matplotlib (or pandas): defaults come from
modules that import nothing heavy (:mod:`serlib.config`), and each ``func`` imports what its
command uses (``tests/test_cli_startup.py`` checks this in a fresh interpreter).

Exit codes: 0 success, 2 bad input (a :class:`~serlib.errors.SerlibError`, one line on
stderr), 130 Ctrl-C, 143 SIGTERM (both after the command's clean-up ran: scratch files
removed, locks released), 141 when stdout was closed early (``serlib select ... | head``:
no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import warnings

from serlib import __version__
from serlib.errors import SerlibError

#: Subcommands in pipeline order.
COMMANDS = ("synth", "select", "features", "cv", "baseline", "grid", "book", "predict", "export",
            "fuse")


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


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every ``finally`` (clean-up) runs."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null, so that the interpreter's final flush
    does not print a second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    formatwarning = warnings.formatwarning
    # a warning is one line for the user, "serlib cv: warning: ...", without the source line
    warnings.formatwarning = lambda message, category, *_, **__: \
        f"serlib {args.command}: warning: {message}\n"
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except SerlibError as error:
        print(f"serlib {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"serlib {args.command}: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"serlib {args.command}: terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    finally:
        warnings.formatwarning = formatwarning
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
