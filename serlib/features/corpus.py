"""From a selection table to a cached feature set: worker processes, chunked commits, scratch.

:func:`extract_corpus` reads what the store already holds (same config, same file identity),
computes the rest in worker processes and commits it to the store every
:data:`COMMIT_EVERY` clips, so that a killed run keeps what it finished. Nothing here imports
librosa (or torch) until a clip has to be computed: a run whose clips are all cached reads the
store and returns.

Scratch: the workers write their results into a memory-mapped file in a scratch folder
(``serlib-features-*`` in /dev/shm when it has room, else the temporary folder). The folder is
removed on every exit path Python sees (an exception, Ctrl-C, SIGTERM through the command
line); for a SIGKILL, which nothing can catch, each scratch folder holds a lock file that its
process keeps locked (``flock``), and the next run removes every scratch folder whose lock is
free. The lock is a POSIX record lock (``lockf``): the kernel drops it when its process
dies, and forked worker processes do not inherit it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from serlib.errors import SerlibError
from serlib.features.audio import SilentAudioWarning, file_identity
from serlib.features.config import FeatureConfig
from serlib.features.store import FeatureSet, FeatureStore

BACKENDS = ("librosa", "torch")
DTYPES = ("float32", "float16")
#: Clips computed between two commits of the store (a kill loses at most this many).
COMMIT_EVERY = 256
SCRATCH_PREFIX = "serlib-features-"
_OWNER = "owner.lock"
_OWN_SCRATCH: set[str] = set()  # this process's live scratch folders (its locks are its own)


def _extract_module():
    # imported on demand: librosa, scipy.signal and soxr load only when a clip is computed
    import importlib

    # the module, not the function serlib.features.extract
    return importlib.import_module("serlib.features.extract")


# ---------------------------------------------------------------------- worker pool
def _init_worker() -> None:
    """Worker initializer: one BLAS thread per worker (no oversubscription), and an allocator
    that keeps freed memory.

    Each clip allocates and frees the same few megabytes; glibc's default returns such blocks
    to the OS and pays a page fault per 4 KiB the next time (expensive in a VM). A worker
    process lives for the whole pool, so it keeps its peak heap instead (``mallopt``: no mmap
    below 256 MiB, no trimming below 1 GiB), which made extraction about 15 % faster on the
    project's 2-core VM. Only in serlib's own worker processes; elsewhere a no-op.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pass
    else:
        threadpool_limits(limits=1)
    _die_with_parent()
    _keep_freed_memory()


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the process that forked it dies (SIGKILL
    included), so that a killed run leaves no worker computing into a deleted scratch file."""
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1  # <sys/prctl.h>
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _keep_freed_memory() -> None:
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): keep the defaults
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    mallopt(m_mmap_threshold, 256 * 2**20)
    mallopt(m_trim_threshold, 1024 * 2**20)


def _work_chunk(
    worker: Callable[..., np.ndarray],
    paths: Sequence[str],
    config: FeatureConfig,
    rows_file: str | None = None,
    first_row: int = 0,
) -> list[tuple[np.ndarray | None, str | None, list[str]]]:
    """Run ``worker`` on a chunk of files: per file (result, error message, warnings).

    A SerlibError becomes that file's error message; a :class:`SilentAudioWarning` raised while
    decoding is returned as a message, so that the calling process reports it (a worker's
    warnings would otherwise be lost). With ``rows_file`` (a .npy file the caller created),
    the result of ``paths[i]`` is written to its row ``first_row + i`` there and None is
    returned in its place: no array crosses the process boundary (pickling a 128 x 259 result
    through a pipe cost about as much as a third of its extraction on a 2-core machine).
    """
    rows = None if rows_file is None else np.load(rows_file, mmap_mode="r+")
    out: list[tuple[np.ndarray | None, str | None, list[str]]] = []
    for i, path in enumerate(paths):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SilentAudioWarning)
            try:
                result = worker(path, config=config)
            except SerlibError as error:
                out.append((None, str(error), []))
                continue
        notes = [str(w.message) for w in caught if issubclass(w.category, SilentAudioWarning)]
        if rows is None:
            out.append((result, None, notes))
        else:
            rows[first_row + i] = result
            out.append((None, None, notes))
    del rows  # unmapped: the caller deletes the file
    return out


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds with librosa and the cached filterbank already
    # imported (spawn would re-import librosa, about a second per worker); workers use only
    # numpy/scipy/soxr/soundfile, never torch, so forking a process that has torch threads is
    # safe. Where fork does not exist (Windows, macOS default), use spawn. Python >= 3.12
    # warns (DeprecationWarning) when a process with threads forks; a fork server would avoid
    # that but makes every user script need an `if __name__ == "__main__":` guard (workers
    # re-import __main__), so fork it is.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


_POOL: dict[str, Any] = {"executor": None, "n_jobs": 0}


def _executor(n_jobs: int) -> ProcessPoolExecutor:
    """A worker pool reused across calls (as joblib's loky executor is).

    A freshly forked worker spends its first few clips faulting in copy-on-write memory
    (about 0.1 s); reusing the pool pays that once per process, not once per call. The pool
    is shut down at interpreter exit, and replaced if a worker died.
    """
    pool = _POOL["executor"]
    if pool is not None and (_POOL["n_jobs"] != n_jobs or getattr(pool, "_broken", False)):
        pool.shutdown(wait=False, cancel_futures=True)
        pool = None
    if pool is None:
        pool = ProcessPoolExecutor(
            max_workers=n_jobs, mp_context=_pool_context(), initializer=_init_worker
        )
        _POOL.update(executor=pool, n_jobs=n_jobs)
    return pool


@atexit.register
def _shutdown_pool() -> None:
    if _POOL["executor"] is not None:
        _POOL["executor"].shutdown(wait=False, cancel_futures=True)
        _POOL["executor"] = None


def _run_jobs(
    worker: Callable[..., np.ndarray],
    paths: Sequence[str],
    *,
    config: FeatureConfig,
    row_shape: tuple[int, ...],
    n_jobs: int,
    bar: Any,
    rows_file: str,
) -> tuple[list[np.ndarray | None], list[str | None]]:
    """Apply ``worker(path, config=config)`` to every path; SerlibErrors are collected.

    ``n_jobs > 1``: a process pool fed with chunks of files (threads do not scale here: the
    per-clip Python work holds the GIL long enough that two threads ran slower than one).
    The workers write their float32 results of shape ``row_shape`` into ``rows_file``
    (memory-mapped) and send back only error messages; the results returned are rows of that
    mapping. Silent clips are reported with a :class:`SilentAudioWarning`. Any other
    exception aborts the whole run.
    """
    results: list[np.ndarray | None] = [None] * len(paths)
    errors: list[str | None] = [None] * len(paths)
    notes: list[str] = []
    if n_jobs <= 1 or len(paths) <= 1:
        for i, path in enumerate(paths):
            (results[i], errors[i], found), = _work_chunk(worker, [path], config)
            notes.extend(found)
            bar.update()
    else:
        extract = _extract_module()
        n_jobs = min(n_jobs, len(paths))
        # build the cached filterbank and window once here; forked workers inherit them
        extract.config_filterbank(config)
        extract._window(config.window, config.win_length, config.n_fft)
        # small chunks keep the bar moving and balance the load; large enough to amortise
        size = max(1, min(8, math.ceil(len(paths) / (16 * n_jobs))))
        pool = _executor(n_jobs)
        rows = np.lib.format.open_memmap(
            rows_file, mode="w+", dtype=np.float32, shape=(len(paths), *row_shape)
        )
        futures = {
            pool.submit(_work_chunk, worker, paths[i : i + size], config, rows_file, i): i
            for i in range(0, len(paths), size)
        }
        try:
            for future in as_completed(futures):
                i = futures[future]
                for j, (_, error, found) in enumerate(future.result(), start=i):
                    errors[j] = error
                    notes.extend(found)
                bar.update(min(size, len(paths) - i))
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        for j, error in enumerate(errors):
            if error is None:
                results[j] = rows[j]  # (*row_shape,), a view of the mapping
    for note in notes:
        warnings.warn(note, SilentAudioWarning, stacklevel=3)
    return results, errors


# ---------------------------------------------------------------------- scratch
def _scratch_parent(n_bytes: int) -> str | None:
    """Where the workers' results go: /dev/shm (memory, not disk) when it is there, writable
    and has room to spare, else None (the default temporary folder). On the project's VM the
    whole extraction was 8 % faster with results in memory than on its disk."""
    shm = "/dev/shm"
    try:
        if (os.path.isdir(shm) and os.access(shm, os.W_OK)
                and shutil.disk_usage(shm).free > 2 * n_bytes + 256 * 2**20):
            return shm
    except OSError:
        pass
    return None


def remove_stale_scratch(parents: Sequence[str | None] = ("/dev/shm", None)) -> list[Path]:
    """Remove the scratch folders of killed runs (their owner lock is free); return them.

    ``None`` in ``parents`` is the default temporary folder. A scratch folder without an
    owner lock (a process killed between creating it and locking it, or an older serlib) is
    removed when it is more than a minute old.
    """
    removed: list[Path] = []
    for parent in parents:
        folder = Path(parent if parent is not None else tempfile.gettempdir())
        try:
            candidates = list(folder.glob(f"{SCRATCH_PREFIX}*"))
        except OSError:
            continue
        for scratch in candidates:
            if not scratch.is_dir() or str(scratch) in _OWN_SCRATCH:
                continue
            owner = scratch / _OWNER
            try:
                fd = os.open(owner, os.O_RDWR)
            except FileNotFoundError:
                try:
                    old = scratch.stat().st_mtime < time.time() - 60
                except OSError:
                    continue
                if old:
                    shutil.rmtree(scratch, ignore_errors=True)
                    removed.append(scratch)
                continue
            except OSError:
                continue
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its process is alive
            finally:
                os.close(fd)
            shutil.rmtree(scratch, ignore_errors=True)
            removed.append(scratch)
    return removed


@contextlib.contextmanager
def _scratch(n_bytes: int) -> Iterator[str]:
    """A scratch folder, locked by this process while it lives, removed on the way out."""
    parent = _scratch_parent(n_bytes)
    remove_stale_scratch(("/dev/shm", None) if parent is None else (parent, None))
    folder = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=parent)
    _OWN_SCRATCH.add(folder)
    fd = os.open(os.path.join(folder, _OWNER), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield folder
    finally:
        os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)
        _OWN_SCRATCH.discard(folder)


# ---------------------------------------------------------------------- a corpus
def _selection_columns(selection: Any) -> tuple[list[str], list[str]]:
    try:
        ids = [str(u) for u in selection["utterance_id"]]
        paths = [str(p) for p in selection["path"]]
    except (KeyError, TypeError) as error:
        raise SerlibError(
            "selection must have the columns utterance_id and path "
            f"(got {list(getattr(selection, 'columns', []))})"
        ) from error
    seen: set[str] = set()
    for uid in ids:
        if uid in seen:
            raise SerlibError(f"selection has the utterance_id {uid!r} more than once")
        seen.add(uid)
    return ids, paths


def _torch_batches(
    waveforms: list[np.ndarray], *, config: FeatureConfig, device: str | None, batch_size: int
) -> list[np.ndarray]:
    import torch

    from serlib.features.torch_features import TorchFeatureExtractor

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    module = TorchFeatureExtractor(config).to(dev)
    out: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(waveforms), batch_size):
            batch = torch.from_numpy(np.stack(waveforms[start : start + batch_size])).to(dev)
            out.extend(module(batch).float().cpu().numpy())  # (B, F, T)
    return out


def extract_corpus(
    selection: Any,
    *,
    config: FeatureConfig,
    cache_dir: str | os.PathLike | None,
    n_jobs: int | None = None,
    dtype: str = "float32",
    skip_errors: bool = False,
    progress: bool = True,
    backend: str = "librosa",
    device: str | None = None,
    batch_size: int = 64,
    commit_every: int = COMMIT_EVERY,
) -> FeatureSet:
    """Features of every clip of a selection, computed in parallel and cached on disk.

    Parameters
    ----------
    selection : pandas.DataFrame or mapping
        Needs the columns ``utterance_id`` (unique) and ``path``; other columns are ignored.
        (:func:`serlib.features.feature_config_for` gives the config a selection was made for.)
    config : FeatureConfig
    cache_dir : path-like or None
        Root of the feature stores; the store of ``config`` lives in
        ``cache_dir/<config.fingerprint()>/`` (every field that shapes the arrays is in the
        fingerprint, ``max_seconds`` included). A clip whose file identity (absolute path,
        size, mtime) matches the store is read back, not recomputed; a damaged store file is
        reported with a warning naming it and its clips are recomputed. None: compute
        everything and store nothing.
    n_jobs : int, optional
        Worker processes (default: ``os.cpu_count()``); 1 runs in the calling process.
    dtype : {"float32", "float16"}
        Storage (and returned) dtype; float16 halves the store.
    skip_errors : bool
        False (default): bad files (unreadable, truncated, empty, NaN/inf) raise one
        SerlibError naming every one of them, after the good clips are stored (so that the
        next run computes only what was fixed). True: bad files are left out and listed in
        ``FeatureSet.skipped`` (they are retried on the next run).
    progress : bool
        Show a progress bar.
    backend : {"librosa", "torch"}
        "torch": waveforms are decoded and resampled on CPU threads, then the STFT, mel and dB
        run batched in :class:`~serlib.features.torch_features.TorchFeatureExtractor` on
        ``device`` (within its documented tolerance of the librosa path). The store key is
        the same config fingerprint either way.
    device : str, optional
        Torch device for ``backend="torch"`` (default: "cuda" when available, else "cpu").
    batch_size : int
        Clips per torch batch.
    commit_every : int
        Clips computed between two commits of the store (a kill keeps every committed clip).

    Returns
    -------
    FeatureSet
        ``features`` of shape (N, config.n_features, config.n_frames) in the selection's row
        order, bad rows removed when ``skip_errors``.

    Raises
    ------
    SerlibError
        Bad arguments, bad files (unless ``skip_errors``), or a store that cannot be written
        (named, before any clip is computed).
    """
    if not isinstance(config, FeatureConfig):
        raise SerlibError(f"config must be a FeatureConfig, got {type(config).__name__}")
    if dtype not in DTYPES:
        raise SerlibError(f"dtype={dtype!r}: expected one of {DTYPES}")
    if backend not in BACKENDS:
        raise SerlibError(f"backend={backend!r}: expected one of {BACKENDS}")
    if n_jobs is None:
        n_jobs = os.cpu_count() or 1
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise SerlibError(f"n_jobs={n_jobs!r}: expected a positive integer")
    if isinstance(commit_every, bool) or not isinstance(commit_every, int) or commit_every < 1:
        raise SerlibError(f"commit_every={commit_every!r}: expected a positive integer")
    ids, paths = _selection_columns(selection)

    # 1. What is already stored (same config, same file identity)?
    store = FeatureStore(cache_dir, config, dtype=dtype) if cache_dir is not None else None
    identities: dict[str, dict] = {}
    errors: dict[str, str] = {}
    for uid, path in zip(ids, paths, strict=True):
        try:
            identities[uid] = file_identity(path)
        except SerlibError as error:
            errors[uid] = str(error)
    index = store.read_index() if store is not None else None

    def missing(index) -> list[int]:
        return [i for i, uid in enumerate(ids) if uid in identities
                and (index is None or not index.matches(uid, identities[uid]))]

    todo = missing(index)
    computed: dict[str, np.ndarray] = {}  # only without a store: the arrays themselves
    n_computed = 0
    if todo:
        writing = store.writing() if store is not None else contextlib.nullcontext()
        with writing:
            if store is not None:
                # another process may have written the store while we waited for its lock
                index = store.read_index(warn=False)
                todo = missing(index)
            n_computed, index = _compute(
                todo, ids=ids, paths=paths, identities=identities, errors=errors,
                computed=computed, store=store, index=index, config=config, n_jobs=n_jobs,
                progress=progress, backend=backend, device=device, batch_size=batch_size,
                commit_every=commit_every,
            )

    # 3. Bad files: an error naming them (the good clips are stored), unless skipped.
    errors = {uid: errors[uid] for uid in ids if uid in errors}  # selection order
    if errors and not skip_errors:
        shown = "; ".join(errors[uid] for uid in list(errors)[:10])
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        stored = " (the other clips are stored)" if store is not None else ""
        raise SerlibError(
            f"{len(errors)} bad audio file(s){stored}; fix or remove them, or leave them out "
            f"(skip_errors=True, serlib features --skip-errors): {shown}{more}"
        )
    path_of = dict(zip(ids, paths, strict=True))
    skipped = [(path_of[uid], reason) for uid, reason in errors.items()]
    kept = [uid for uid in ids if uid not in errors]

    # 4. Read the selection back in its order.
    if store is None:
        features = np.empty((len(kept), *config.shape), dtype=np.dtype(dtype))
        for row, uid in enumerate(kept):
            features[row] = computed[uid]
    else:
        features = store.read(index, kept) if kept else np.empty((0, *config.shape), dtype)
    return FeatureSet(
        features=features,
        utterance_ids=kept,
        config=config,
        skipped=skipped,
        store_path=None if store is None else Path(store.root),
        n_computed=n_computed,
        n_reused=len(kept) - n_computed,
    )


def _compute(todo, *, ids, paths, identities, errors, computed, store, index, config, n_jobs,
             progress, backend, device, batch_size, commit_every):
    """Step 2 of :func:`extract_corpus`: compute ``todo`` in chunks, committing each chunk.

    Returns (number of clips computed, the last committed index).
    """
    from tqdm import tqdm

    extract = _extract_module()
    worker, row_shape = (
        (extract.extract_file, config.shape) if backend == "librosa"
        else (extract.load_prepared, (config.n_samples,))
    )
    chunk_rows = min(len(todo), commit_every)
    n_computed = 0
    bar = tqdm(total=len(todo), desc="features", unit="clip", disable=not progress)
    try:
        with _scratch(4 * math.prod(row_shape) * chunk_rows) as scratch:
            for number, start in enumerate(range(0, len(todo), commit_every)):
                chunk = todo[start : start + commit_every]
                results, failures = _run_jobs(
                    worker, [paths[i] for i in chunk], config=config, row_shape=row_shape,
                    n_jobs=n_jobs, bar=bar, rows_file=os.path.join(scratch, f"rows{number}.npy"),
                )
                done: dict[str, np.ndarray] = {}
                for i, result, failure in zip(chunk, results, failures, strict=True):
                    if failure is not None:
                        errors[ids[i]] = failure
                    else:
                        done[ids[i]] = result
                if backend == "torch" and done:
                    arrays = _torch_batches(list(done.values()), config=config, device=device,
                                            batch_size=batch_size)
                    done = dict(zip(done, arrays, strict=True))
                if store is not None:
                    index = store.commit(index, {uid: (identities[uid], done[uid])
                                                 for uid in done})
                else:
                    computed.update({uid: np.array(a) for uid, a in done.items()})
                n_computed += len(done)
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(scratch, f"rows{number}.npy"))
    finally:
        bar.close()
    return n_computed, index
