"""Folder locks: one holder at a time, the refusal names the holder, a dead holder's lock is
taken over."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from serlib.locking import FolderLockedError, exclusive_lock

HOLD = """
import sys, time
from serlib.locking import exclusive_lock
with exclusive_lock(sys.argv[1], what="run folder"):
    print("locked", flush=True)
    time.sleep(60)
"""


def _start_holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_holder_is_refused_with_the_holders_pid(tmp_path):
    proc = _start_holder(tmp_path / "run")
    try:
        with pytest.raises(FolderLockedError, match=rf"in use by process {proc.pid} "):
            with exclusive_lock(tmp_path / "run", what="run folder"):
                pass
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    proc = _start_holder(tmp_path / "run")
    proc.kill()          # SIGKILL: no clean-up runs
    proc.wait()
    with exclusive_lock(tmp_path / "run") as path:
        assert path.exists()


def test_lock_is_released_after_the_block_and_reentrant_in_sequence(tmp_path):
    with exclusive_lock(tmp_path):
        pass
    started = time.perf_counter()
    with exclusive_lock(tmp_path):
        pass
    assert time.perf_counter() - started < 5


def test_lock_file_honours_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with exclusive_lock(tmp_path / "run") as path:
            assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
