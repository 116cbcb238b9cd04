"""The on-disk feature store: memory-mappable shards plus an index, per feature config.

Layout under ``cache_dir/<config fingerprint>/``::

    config.json                      the FeatureConfig (to_dict), for humans and tools
    features-<dtype>-<token>.npy     shards: (n, n_features, n_frames) arrays, one row per clip
    index-<dtype>.json               store version, fingerprint, dtype, the shards' file names,
                                     and per utterance id: shard, row, path, size, mtime_ns
    .lock                            held (serlib.locking) by the process writing the store

The store's key (the folder name) is :meth:`FeatureConfig.fingerprint`, a hash of every field
that shapes the arrays, ``max_seconds`` included; the dtype names the index.

Writes are appends. A commit writes a NEW shard holding only the new rows (atomically, under a
fresh name), then replaces the index with ``os.replace``, then deletes shards the index no
longer names. :func:`serlib.features.extract_corpus` commits every few hundred clips, so a run
killed at any moment keeps every clip committed before the kill and never leaves an index that
points at a half-written shard. Reading checks each shard against its header (a truncated or
damaged file is reported with a warning naming it, and its clips are recomputed), and an
unreadable index is treated the same way. Left-overs of a killed writer (a shard without an
index, a ``.tmp`` file) are removed by the next writer, under the lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serlib._io import atomic_path, atomic_write_json
from serlib.errors import SerlibError
from serlib.features.config import FeatureConfig

#: Layout version of the index file; a store with another version is recomputed.
STORE_VERSION = 2
#: More shards than this, or more dead rows than live ones, and a commit compacts the store.
MAX_SHARDS = 32


class StoreWarning(UserWarning):
    """A damaged feature store file was found (its clips are recomputed)."""


@dataclass
class FeatureSet:
    """Features of a selection, as returned by :func:`serlib.features.extract_corpus`.

    Attributes
    ----------
    features : np.ndarray, shape (N, n_features, n_frames)
        float32 (or float16), rows in the selection's order, skipped rows removed.
    utterance_ids : list of str
        Row ``i`` of ``features`` is the clip ``utterance_ids[i]``.
    config : FeatureConfig
    skipped : list of (path, reason)
        Bad files left out with ``skip_errors=True``.
    store_path : Path or None
        The store directory (None when nothing was cached).
    n_computed, n_reused : int
        Clips extracted in this call, and clips read back from the store.
    """

    features: np.ndarray
    utterance_ids: list[str]
    config: FeatureConfig
    skipped: list[tuple[str, str]] = field(default_factory=list)
    store_path: Path | None = None
    n_computed: int = 0
    n_reused: int = 0

    def __len__(self) -> int:
        return len(self.utterance_ids)


@dataclass
class StoreIndex:
    """The parsed ``index-<dtype>.json``: the shards, and utterance id -> entry.

    ``entries`` holds only clips whose shard passed its check; ``damaged`` names the files
    that did not.
    """

    shards: list[str]
    entries: dict[str, dict]
    damaged: list[str] = field(default_factory=list)

    def matches(self, uid: str, identity: dict) -> bool:
        """True if ``uid`` is stored and was computed from a file of the same identity."""
        entry = self.entries.get(uid)
        return entry is not None and all(entry.get(k) == identity[k] for k in identity)


def _shard_rows(path: Path, *, dtype: np.dtype, row_shape: tuple[int, int]) -> int | None:
    """Rows of a complete shard file, or None when it is missing, truncated or foreign."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            reader = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if reader is None:
                return None
            shape, fortran, stored = reader(handle)
            offset = handle.tell()
        size = os.stat(path).st_size
    except (OSError, ValueError, SyntaxError):
        return None
    if fortran or stored != dtype or len(shape) != 3 or tuple(shape[1:]) != row_shape:
        return None
    if size != offset + int(np.prod(shape)) * dtype.itemsize:
        return None
    return int(shape[0])


class FeatureStore:
    """The store of one feature config and one storage dtype under ``cache_dir``.

    Parameters
    ----------
    cache_dir : path-like
    config : FeatureConfig
    dtype : {"float32", "float16"}
    """

    def __init__(self, cache_dir: str | os.PathLike, config: FeatureConfig, *, dtype: str):
        self.config = config
        self.dtype = np.dtype(dtype)
        self.root = Path(cache_dir) / config.fingerprint()
        self.index_path = self.root / f"index-{self.dtype.name}.json"

    # ------------------------------------------------------------------ reading
    def read_index(self, *, warn: bool = True) -> StoreIndex | None:
        """The committed index, or None when there is no store to reuse.

        A damaged index, or a shard that is truncated or does not match its header, is
        reported with a :class:`StoreWarning` naming the file (when ``warn``); the clips it
        held are left out of the returned index, so that they are recomputed.
        """
        if not self.index_path.exists():
            return None
        try:
            data = json.loads(self.index_path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as error:
            if warn:
                warnings.warn(f"{self.index_path}: damaged feature store index ({error}); "
                              "its clips are recomputed", StoreWarning, stacklevel=2)
            return None
        expected = {
            "store_version": STORE_VERSION,
            "fingerprint": self.config.fingerprint(),
            "dtype": self.dtype.name,
        }
        if any(data.get(k) != v for k, v in expected.items()):
            return None
        try:
            shards = [str(s) for s in data["shards"]]
            entries = {str(k): dict(v) for k, v in data["entries"].items()}
        except (KeyError, TypeError, AttributeError, ValueError):
            if warn:
                warnings.warn(f"{self.index_path}: damaged feature store index (fields "
                              "missing); its clips are recomputed", StoreWarning, stacklevel=2)
            return None
        rows = {s: _shard_rows(self.root / s, dtype=self.dtype, row_shape=self.config.shape)
                for s in shards}
        damaged = [s for s, n in rows.items() if n is None]
        good: dict[str, dict] = {}
        for uid, entry in entries.items():
            n = rows.get(entry.get("shard"))
            if n is not None and isinstance(entry.get("row"), int) and 0 <= entry["row"] < n:
                good[uid] = entry
        if damaged and warn:
            lost = len(entries) - len(good)
            warnings.warn(
                f"damaged feature store file(s) {', '.join(str(self.root / s) for s in damaged)}"
                f" (truncated or not matching their header): {lost} clip(s) are recomputed",
                StoreWarning, stacklevel=2,
            )
        return StoreIndex(shards=[s for s in shards if s not in damaged], entries=good,
                          damaged=damaged)

    def read(self, index: StoreIndex, utterance_ids: list[str]) -> np.ndarray:
        """Rows of ``utterance_ids`` in that order: shape (N, n_features, n_frames), in memory."""
        out = np.empty((len(utterance_ids), *self.config.shape), dtype=self.dtype)
        by_shard: dict[str, tuple[list[int], list[int]]] = {}
        for i, uid in enumerate(utterance_ids):
            entry = index.entries[uid]
            targets, rows = by_shard.setdefault(entry["shard"], ([], []))
            targets.append(i)
            rows.append(entry["row"])
        for shard, (targets, rows) in by_shard.items():
            array = np.load(self.root / shard, mmap_mode="r")
            rows_arr = np.asarray(rows)
            if np.array_equal(rows_arr, np.arange(len(rows_arr))) and \
                    np.array_equal(np.asarray(targets), np.arange(targets[0], targets[-1] + 1)):
                out[targets[0] : targets[-1] + 1] = array[: len(rows)]
            else:
                out[np.asarray(targets)] = array[rows_arr]
            del array
        return out

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the store's lock for a series of :meth:`commit` calls.

        Checks first that the store can be written at all (a clear SerlibError naming the
        folder, before any clip is computed). When another process is writing the store, waits
        for it (saying so once on stderr; a lock of a killed process is free at once). Removes
        what a killed writer left: ``.tmp`` files and shards that no index names.
        """
        from serlib.locking import FolderLockedError, exclusive_lock

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as error:
            raise SerlibError(
                f"{self.root}: cannot write the feature store here ({error.strerror or error})"
            ) from None
        said = False
        while True:
            try:
                with exclusive_lock(self.root, what="feature store"):
                    self._remove_leftovers()
                    yield
                return
            except FolderLockedError as error:
                if not said:
                    print(f"waiting: {error}", file=sys.stderr)
                    said = True
                time.sleep(0.5)

    def _remove_leftovers(self) -> None:
        for tmp in self.root.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink() if tmp.is_file() else None
        named: set[str] = set()
        for index_file in self.root.glob("index-*.json"):
            try:
                named.update(json.loads(index_file.read_text(encoding="utf-8")).get("shards", []))
            except (OSError, ValueError, AttributeError):
                continue
        for shard in self.root.glob("features-*.npy"):
            if shard.name not in named:
                shard.unlink(missing_ok=True)

    def commit(self, index: StoreIndex | None, new: dict[str, tuple[dict, np.ndarray]]
               ) -> StoreIndex:
        """Add (or replace) rows in a new shard and commit the index atomically.

        Call inside :meth:`writing`, with the index read under that lock.

        Parameters
        ----------
        index : StoreIndex or None
            The current index (None: an empty store).
        new : dict
            utterance id -> (file identity, features of shape (n_features, n_frames)).

        Returns
        -------
        StoreIndex
            The committed index.
        """
        entries = dict(index.entries) if index is not None else {}
        shards = list(index.shards) if index is not None else []
        if new:
            name = self._write_shard([features for _, features in new.values()])
            shards.append(name)
            for row, (uid, (identity, _)) in enumerate(new.items()):
                entries[uid] = {"shard": name, "row": row, **identity}
        live = {e["shard"] for e in entries.values()}
        shards = [s for s in shards if s in live]
        result = StoreIndex(shards=shards, entries=entries)
        self._write_index(result)
        n_rows = sum(_shard_rows(self.root / s, dtype=self.dtype, row_shape=self.config.shape)
                     or 0 for s in shards)
        if len(shards) > MAX_SHARDS or n_rows > 2 * len(entries):
            result = self._compact(result)
        self._drop_unnamed(result)
        return result

    def _write_shard(self, rows: list[np.ndarray]) -> str:
        config_path = self.root / "config.json"
        try:
            intact = json.loads(config_path.read_text(encoding="utf-8")) == self.config.to_dict()
        except (OSError, ValueError):
            intact = False
        if not intact:  # missing, or damaged by a crash of something else: rewritten
            atomic_write_json(config_path, self.config.to_dict())
        name = f"features-{self.dtype.name}-{secrets.token_hex(6)}.npy"
        with atomic_path(self.root / name) as tmp:
            out = _allocated_memmap(tmp, dtype=self.dtype, shape=(len(rows), *self.config.shape))
            for row, features in enumerate(rows):
                out[row] = features
            out.flush()
            del out
        return name

    def _write_index(self, index: StoreIndex) -> None:
        atomic_write_json(self.index_path, {
            "store_version": STORE_VERSION,
            "fingerprint": self.config.fingerprint(),
            "dtype": self.dtype.name,
            "shape": list(self.config.shape),
            "config": self.config.to_dict(),
            "shards": index.shards,
            "entries": index.entries,
        })

    def _compact(self, index: StoreIndex) -> StoreIndex:
        """Rewrite the live rows into one shard (in chunks of the old shards)."""
        uids = list(index.entries)
        name = f"features-{self.dtype.name}-{secrets.token_hex(6)}.npy"
        with atomic_path(self.root / name) as tmp:
            out = _allocated_memmap(tmp, dtype=self.dtype, shape=(len(uids), *self.config.shape))
            for start in range(0, len(uids), 256):
                chunk = uids[start : start + 256]
                out[start : start + len(chunk)] = self.read(index, chunk)
            out.flush()
            del out
        entries = {uid: {**index.entries[uid], "shard": name, "row": row}
                   for row, uid in enumerate(uids)}
        result = StoreIndex(shards=[name], entries=entries)
        self._write_index(result)
        return result

    def _drop_unnamed(self, index: StoreIndex) -> None:
        for stale in self.root.glob(f"features-{self.dtype.name}-*.npy"):
            if stale.name not in index.shards:
                stale.unlink(missing_ok=True)


def _allocated_memmap(path: Path, *, dtype: np.dtype, shape: tuple) -> np.memmap:
    """A new ``.npy`` memory map whose every block is allocated on disk first: on a full disk
    this raises OSError (ENOSPC, named by the caller) instead of the process dying of SIGBUS
    when a page of a sparse file cannot be written."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, size)
        except OSError as error:
            del out
            if error.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                return np.lib.format.open_memmap(path, mode="r+")   # no fallocate here
            raise
    return out


__all__ = ["MAX_SHARDS", "STORE_VERSION", "FeatureSet", "FeatureStore", "StoreIndex",
           "StoreWarning"]
