"""Subcommands of the ``serlib`` command line (see :mod:`serlib.cli`)."""

from __future__ import annotations


def add_folds_arguments(parser, *, protocol: str | None = "stratified",
                        folds: int | None = 5) -> None:
    """``--protocol`` and ``--folds``, as every command that makes folds takes them (a None
    default: "not given", filled in later by the command)."""
    parser.add_argument("--protocol", choices=("stratified", "session"), default=protocol,
                        help="stratified: the paper's folds; session: speaker-independent")
    parser.add_argument("--folds", type=int, default=folds)


def add_run_folder_arguments(parser) -> None:
    """``--cache``, ``--out`` and ``--quiet``, as every command that writes a run folder
    takes them."""
    parser.add_argument("--cache", default=None, help="feature store folder (default: none)")
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
