"""Where a result came from: the code's commit and the machine's device."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path


@functools.cache
def commit_hash() -> str:
    """Short git commit of the serlib checkout, with ``-dirty`` if it has local changes.

    Returns ``"unknown"`` when serlib is not installed from a git checkout (its package
    folder directly below the repository's top level), e.g. when it is installed into a venv
    that sits inside another git repository.
    """
    root = Path(__file__).resolve().parent.parent
    try:
        # only serlib's own checkout: installed into a venv that lies inside some other git
        # repository, the folder above the package is site-packages, not that repository's
        # top level, and its commit says nothing about serlib's code
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=root, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
        if not top or Path(top).resolve() != root:
            return "unknown"
        sha = subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"],
            cwd=root, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha
