"""Exclusive locks on folders (run folders, feature stores): one writer at a time.

A lock is an advisory ``flock`` on a ``.lock`` file inside the folder. The kernel releases it
when the holding process exits, however it exits (SIGKILL included), so a stale lock left by a
killed process is taken over by the next one without any clean-up. The file records who holds
it (pid, host, command, start time) so that a refused process can say which one to wait for.

On a network filesystem shared by the nodes of a cluster, ``flock`` works where the filesystem
supports it (NFSv4, Lustre and GPFS mounted with locking; check with your administrators).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from serlib.errors import SerlibError

LOCK_NAME = ".lock"

#: Descriptors of the locks this process holds: a forked child closes them at once, so that
#: a worker process (feature pool, grid worker) never holds a lock past its parent's exit.
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class FolderLockedError(SerlibError):
    """Another process holds the folder's lock; the message names it."""


def _holder_description(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return (f"process {info.get('pid')} on {info.get('host')} ({info.get('command')!r}, "
            f"since {started})")


@contextlib.contextmanager
def exclusive_lock(folder: str | os.PathLike, *, what: str = "folder") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the ``with`` block.

    Parameters
    ----------
    folder : path
        The folder to lock; the lock file is ``folder/.lock``.
    what : str
        What the folder is, for the error message (``"run folder"``, ``"feature store"``).

    Raises
    ------
    FolderLockedError
        When another live process holds the lock (the message names its pid, host and
        command). The call does not wait.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)   # mode honours the umask
    except PermissionError as error:
        raise SerlibError(f"{folder}: cannot write the {what} here ({error.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderLockedError(
                f"{folder}: this {what} is in use by {_holder_description(path)}; wait for it "
                "to finish or stop it (a lock of a process that has exited is taken over "
                "automatically)"
            ) from None
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "command": " ".join(sys.argv)[:300], "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        _HELD.add(fd)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        _HELD.discard(fd)
        os.close(fd)


__all__ = ["FolderLockedError", "LOCK_NAME", "exclusive_lock"]
