"""The on-disk feature store: one memory-mappable array plus an index, per feature config.

Layout under ``cache_dir/<config fingerprint>/``::

    config.json                      the FeatureConfig (to_dict), for humans and tools
    features-<dtype>-<token>.npy     (N, n_features, n_frames) array, one row per clip
    index-<dtype>.json               store version, fingerprint, dtype, shape, the array's file
                                     name, and per utterance id: row, path, size, mtime_ns

The index is the commit point. An update writes a NEW array file (atomically, under a fresh
name), then replaces the index with ``os.replace``, then deletes array files the index no
longer names. A run killed at any moment therefore leaves either the previous complete store
or the new one, never an index that points at a half-written array; a leftover array file
without an index is ignored and removed by the next update.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serlib._io import atomic_path, atomic_write_json
from serlib.features.config import FeatureConfig

#: Layout version of the index file; a store with another version is recomputed.
STORE_VERSION = 1
_COPY_ROWS = 256  # rows copied at a time when an update rewrites the array


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
    """The parsed ``index-<dtype>.json``: which array file, and utterance id -> entry."""

    array: str
    shape: tuple[int, int, int]
    entries: dict[str, dict]

    def matches(self, uid: str, identity: dict) -> bool:
        """True if ``uid`` is stored and was computed from a file of the same identity."""
        entry = self.entries.get(uid)
        return entry is not None and all(entry[k] == identity[k] for k in identity)


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
    def read_index(self) -> StoreIndex | None:
        """The committed index, or None when there is no complete store to reuse."""
        try:
            data = json.loads(self.index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        expected = {
            "store_version": STORE_VERSION,
            "fingerprint": self.config.fingerprint(),
            "dtype": self.dtype.name,
        }
        if any(data.get(k) != v for k, v in expected.items()):
            return None
        shape = tuple(data.get("shape", ()))
        if shape[1:] != self.config.shape or not (self.root / data.get("array", "")).is_file():
            return None
        return StoreIndex(array=data["array"], shape=shape, entries=data["entries"])

    def _open_array(self, index: StoreIndex) -> np.ndarray:
        array = np.load(self.root / index.array, mmap_mode="r")
        if array.shape != index.shape or array.dtype != self.dtype:
            raise OSError(f"{self.root / index.array}: shape or dtype differs from the index")
        return array

    def read(self, index: StoreIndex, utterance_ids: list[str]) -> np.ndarray:
        """Rows of ``utterance_ids`` in that order: shape (N, n_features, n_frames), in memory."""
        rows = np.fromiter(
            (index.entries[uid]["row"] for uid in utterance_ids), dtype=np.int64,
            count=len(utterance_ids),
        )
        array = self._open_array(index)
        if len(rows) == array.shape[0] and np.array_equal(rows, np.arange(len(rows))):
            return np.array(array)
        return np.asarray(array[rows]).view(np.ndarray)

    # ------------------------------------------------------------------ writing
    def commit(self, new: dict[str, tuple[dict, np.ndarray]]) -> StoreIndex:
        """Add (or replace) rows and commit a new store version atomically.

        Rows already stored for other utterances are kept (read under the lock, so that two
        processes updating the same store do not lose each other's rows).

        Parameters
        ----------
        new : dict
            utterance id -> (file identity, features of shape (n_features, n_frames)).

        Returns
        -------
        StoreIndex
            The committed index.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock():
            index = self.read_index()
            old_array = None
            kept: list[str] = []
            if index is not None:
                try:
                    old_array = self._open_array(index)
                    kept = [uid for uid in index.entries if uid not in new]
                except (OSError, ValueError):
                    old_array, kept = None, []
            n_rows = len(kept) + len(new)
            shape = (n_rows, *self.config.shape)
            name = f"features-{self.dtype.name}-{secrets.token_hex(6)}.npy"
            config_path = self.root / "config.json"
            if not config_path.exists():
                atomic_write_json(config_path, self.config.to_dict())

            entries: dict[str, dict] = {}
            with atomic_path(self.root / name) as tmp:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=shape)
                for start in range(0, len(kept), _COPY_ROWS):
                    chunk = kept[start : start + _COPY_ROWS]
                    rows = [index.entries[uid]["row"] for uid in chunk]
                    out[start : start + len(chunk)] = old_array[rows]
                for row, uid in enumerate(kept):
                    entries[uid] = {**index.entries[uid], "row": row}
                for row, (uid, (identity, features)) in enumerate(new.items(), start=len(kept)):
                    out[row] = features
                    entries[uid] = {"row": row, **identity}
                out.flush()
                del out
            new_index = StoreIndex(array=name, shape=shape, entries=entries)
            atomic_write_json(
                self.index_path,
                {
                    "store_version": STORE_VERSION,
                    "fingerprint": self.config.fingerprint(),
                    "dtype": self.dtype.name,
                    "shape": list(shape),
                    "array": name,
                    "config": self.config.to_dict(),
                    "entries": entries,
                },
            )
            del old_array
            for stale in self.root.glob(f"features-{self.dtype.name}-*.npy"):
                if stale.name != name:
                    stale.unlink(missing_ok=True)
        return new_index

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise updates of this store between processes (POSIX advisory lock)."""
        try:
            import fcntl
        except ImportError:  # not POSIX: updates are still atomic, just not serialised
            yield
            return
        with open(self.root / ".lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
