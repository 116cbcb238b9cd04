"""Atomic file writes (a crash never leaves a half-written file that looks complete), and the one
CSV reader for selection and manifest tables (strings stay strings)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serlib.errors import SerlibError

if TYPE_CHECKING:
    import pandas


def _umask() -> int:
    """The process umask (reading it means setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _honour_umask(path: Path, *, directory: bool = False) -> None:
    """Give a file made by :mod:`tempfile` (mode 0600, or 0700 for a folder) the mode a plain
    ``open``/``mkdir`` would have given it: 0666 (0777) less the umask."""
    base = 0o777 if directory else 0o666
    os.chmod(path, base & ~_umask())


#: errno values that mean "the disk (or the quota) is full".
_FULL = {errno.ENOSPC, errno.EDQUOT}
#: errno values of other failed writes, named the same way (an I/O error, a read-only or
#: unwritable folder, a file too large for the filesystem).
_WRITE_ERRORS = {errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def disk_full_error(error: BaseException, path: str | os.PathLike) -> SerlibError | None:
    """A :class:`SerlibError` "no space left on device: PATH" when ``error`` says the disk
    or quota is full (an OSError with ENOSPC/EDQUOT, or torch's stream writer failing), else
    None."""
    if isinstance(error, OSError) and error.errno in _FULL:
        return SerlibError(f"no space left on device: {path} ({error.strerror}); free some "
                           "space and run again (finished work is kept)")
    if isinstance(error, OSError) and error.errno in _WRITE_ERRORS:
        return SerlibError(f"cannot write {path}: {error.strerror} (errno "
                           f"{errno.errorcode.get(error.errno, error.errno)}); finished work "
                           "is kept")
    return None


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk (or another failed write: EIO, EROFS, EACCES ...) while writing
    ``path`` into a named :class:`SerlibError`."""
    try:
        yield
    except OSError as error:
        named = disk_full_error(error, path)
        if named is None:
            raise
        raise named from None


def check_output_file(path: str | os.PathLike, *, what: str,
                      inputs: tuple = ()) -> Path:
    """Check, before any work, that ``path`` can be written: not one of ``inputs`` (a file
    the command reads), not a folder, and in a folder this process can create files in
    (tried with a temporary file, removed at once). Returns ``path``; writes nothing that
    stays."""
    path = Path(path)
    for item in inputs:
        if item is not None and Path(item).exists() and path.exists() \
                and os.path.samefile(path, item):
            raise SerlibError(f"{path}: the {what} would overwrite an input of this command "
                              f"({item}); write it elsewhere")
    if path.is_dir():
        raise SerlibError(f"{path}: is a folder; the {what} is a file")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".serlib-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise SerlibError(f"{path}: cannot write the {what} there ({folder}: "
                          f"{error.strerror})") from None
    return path


def check_ours(path: str | os.PathLike, *, what: str, header: tuple[str, ...]) -> None:
    """Refuse to replace an existing ``path`` that serlib did not write: its first line (a
    CSV header, or for ``.json`` the keys of its first record) must hold every name of
    ``header``. A missing file is fine."""
    path = Path(path)
    if not path.is_file():
        return
    try:
        with open(path, encoding="utf-8") as handle:
            if path.suffix.lower() == ".json":
                records = json.load(handle)
                names = set(records[0]) if isinstance(records, list) and records \
                    and isinstance(records[0], dict) else set()
            else:
                names = {n.strip() for n in handle.readline().strip().split(",")}
    except (OSError, ValueError):
        names = set()
    if not set(header) <= names:
        raise SerlibError(f"{path}: exists and is not a {what} serlib wrote (it lacks "
                          f"{', '.join(sorted(set(header) - names))}); serlib never "
                          "overwrites a file it did not write: choose another name")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    _honour_umask(tmp_path)
    try:
        with disk_errors(path):
            yield tmp_path
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it becomes ``path``.

    An existing ``path`` is replaced. On an exception the temporary directory is removed.
    """
    path = Path(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    _honour_umask(tmp, directory=True)
    try:
        with disk_errors(path):
            yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_text_csv(
    path: str | os.PathLike, *, what: str, numeric: tuple[str, ...] = ()
) -> pandas.DataFrame:
    """Read a CSV with every cell kept as the string it is (no NA guessing).

    pandas' defaults read ``null``, ``nan``, ``NA`` or ``None`` as missing values, so that a
    file named ``null.wav`` or a speaker ``NA`` silently became NaN. Here every column is read
    as ``str`` with ``keep_default_na=False``; an empty cell is the empty string. The columns
    named in ``numeric`` are then converted to numbers, an empty cell becoming NaN (and any
    other non-number is an error naming the file and the line).

    Parameters
    ----------
    path : path-like
    what : str
        What the file is ("selection CSV", "manifest CSV"), for the error messages.
    numeric : tuple of str
        Columns converted with :func:`pandas.to_numeric` (those present in the file).

    Returns
    -------
    pandas.DataFrame
        One row per line after the header.

    Raises
    ------
    SerlibError
        Naming the file: missing, empty (0 bytes or no header), not UTF-8, not parseable, or
        a non-number in a numeric column.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise SerlibError(f"{path}: {what} does not exist")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    except pd.errors.EmptyDataError:
        raise SerlibError(f"{path}: the {what} is empty (no header line)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise SerlibError(f"{path}: not a readable {what}: {error}") from None
    for column in numeric:
        if column not in frame:
            continue
        text = frame[column].str.strip()
        values = pd.to_numeric(text.where(text != ""), errors="coerce")
        bad = values.isna() & (text != "")
        if bad.any():
            line = int(bad.to_numpy().nonzero()[0][0]) + 2  # line 1 is the header
            raise SerlibError(
                f"{path}, line {line}: {column}={frame[column].iloc[line - 2]!r} is not a number"
            )
        frame[column] = values
    return frame
