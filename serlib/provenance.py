"""Where a result came from: the code's commit and the machine's device."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path


@functools.cache
def commit_hash() -> str:
    """Short git commit of the serlib checkout, with ``-dirty`` if it has local changes.

    Returns ``"unknown"`` when serlib is not installed from a git checkout.
    """
    root = Path(__file__).resolve().parent.parent
    try:
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
