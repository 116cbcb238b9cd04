"""From a waveform to the paper's features, and from a selection table to a cached feature set.

The chain for one clip (every step a :class:`FeatureConfig` field)::

    y (channels, n) at sr
      -> mean over channels                       (librosa.to_mono)
      -> soxr resample to config.sample_rate      (librosa.resample, res_type=soxr_hq)
      -> cut to / pad to config.max_seconds       (exactly config.n_samples samples)
      -> |STFT|^power                             (as librosa.stft: window, center, pad_mode)
      -> mel filterbank                           (librosa.filters.mel: Slaney, norm)
      -> dB                                       (librosa.power_to_db: ref, amin, top_db)
      -> [mfcc] DCT of the dB mel spectrogram     (librosa.feature.mfcc(S=...))

and its output equals calling librosa on the same samples (tests/test_features_extract.py).
Speed comes from caching the filterbank per config, decoding only the first ``max_seconds`` of a
file with soundfile and resampling with soxr directly, an STFT on contiguous blocks of frames
(bit-identical to librosa's), and running clips in worker processes that write their results
into one memory-mapped file (see benchmarks/README.md for what each step bought).
"""

from __future__ import annotations

import atexit
import functools
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import scipy.fft
import scipy.signal
import soxr

from serlib.errors import SerlibError
from serlib.features.audio import (
    RESAMPLE_MARGIN_SECONDS,
    check_samples,
    file_identity,
    load_audio,
)
from serlib.features.config import FeatureConfig
from serlib.features.store import FeatureSet, FeatureStore

BACKENDS = ("librosa", "torch")
DTYPES = ("float32", "float16")


# ---------------------------------------------------------------------- one clip
@functools.lru_cache(maxsize=32)
def mel_filterbank(
    *, sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float, htk: bool, norm: str | None
) -> np.ndarray:
    """librosa's mel filterbank, computed once per parameter set (read-only).

    Returns
    -------
    np.ndarray, float32, shape (n_mels, 1 + n_fft // 2)
    """
    basis = librosa.filters.mel(
        sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm,
        dtype=np.float32,
    )
    basis.setflags(write=False)
    return basis


def config_filterbank(config: FeatureConfig) -> np.ndarray:
    """:func:`mel_filterbank` for ``config``: shape (n_mels, 1 + n_fft // 2)."""
    return mel_filterbank(
        sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels, fmin=config.fmin,
        fmax=config.fmax_hz, htk=config.htk, norm=config.mel_norm,
    )


def prepare_waveform(
    y: np.ndarray, *, sr: int, config: FeatureConfig, name: str = "waveform"
) -> np.ndarray:
    """Downmix, resample, cut and pad a waveform to exactly ``config.n_samples`` samples.

    Parameters
    ----------
    y : np.ndarray, float, shape (n_samples,) or (channels, n_samples)
        Channel-first like librosa; an array with more rows than columns is refused as a
        probable (n_samples, channels) layout.
    sr : int
        Sample rate of ``y`` in Hz.
    config : FeatureConfig
    name : str
        Names the clip in error messages (a file path, an utterance id).

    Returns
    -------
    np.ndarray, float32, shape (config.n_samples,)
        Mono at ``config.sample_rate``. Longer clips are cut; the input is first cut to
        ``max_seconds`` plus a short margin so that the resampler does no wasted work.
    """
    return _prepare(y, sr=sr, config=config, name=name)[0]


def _prepare(
    y: np.ndarray, *, sr: int, config: FeatureConfig, name: str
) -> tuple[np.ndarray, int]:
    """:func:`prepare_waveform`, also returning how many leading samples are not padding."""
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.floating):
        raise SerlibError(f"{name}: audio must be floating point, got dtype {y.dtype}")
    if y.ndim == 2:
        check_samples(y, name=name)
        if y.shape[0] > y.shape[1]:
            raise SerlibError(
                f"{name}: audio of shape {y.shape} looks like (n_samples, channels); "
                "pass (channels, n_samples)"
            )
        y = librosa.to_mono(y)
    elif y.ndim == 1:
        check_samples(y, name=name)
    else:
        raise SerlibError(f"{name}: audio must have 1 or 2 dimensions, got shape {y.shape}")
    y = y.astype(np.float32, copy=False)
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise SerlibError(f"{name}: sr={sr!r} must be a positive integer (Hz)")

    target = config.sample_rate
    if sr != target:
        keep = math.ceil((config.max_seconds + RESAMPLE_MARGIN_SECONDS) * sr)
        y = y[:keep]
        # librosa.resample(res_type="soxr_*"): soxr, then fix the length to ceil(n * ratio).
        n_out = math.ceil(y.shape[-1] * float(target) / sr)
        y = soxr.resample(y, sr, target, quality=config.resample_type)
        y = librosa.util.fix_length(y, size=n_out)
    y = np.asarray(y, dtype=np.float32)
    return _cut_and_pad(y, config), min(y.shape[-1], config.n_samples)


def _cut_and_pad(y: np.ndarray, config: FeatureConfig) -> np.ndarray:
    n = config.n_samples
    if y.shape[-1] >= n:
        return np.ascontiguousarray(y[:n])
    missing = n - y.shape[-1]
    if config.pad_policy == "zeros":
        return np.pad(y, (0, missing), mode="constant")
    if config.pad_policy == "wrap":
        return np.resize(y, n)  # repeats the clip
    if y.shape[-1] == 1:
        return np.full(n, y[0], dtype=np.float32)
    return np.pad(y, (0, missing), mode="reflect")


@functools.lru_cache(maxsize=32)
def _window(window: str, win_length: int, n_fft: int) -> np.ndarray:
    """Exactly the window librosa.stft builds from the name: periodic, float64, centred in
    ``n_fft`` samples (``librosa.util.pad_center``); built once. Shape (n_fft,)."""
    w = scipy.signal.get_window(window, win_length, fftbins=True)
    w = librosa.util.pad_center(w, size=n_fft)
    w.setflags(write=False)
    return w


#: Frames per FFT block in :func:`_stft_power`: temporaries of about 0.5 MB, which the allocator
#: reuses from clip to clip (whole-clip temporaries of 4 MB were returned to the OS and paid
#: about a thousand page faults each time, which made the STFT 1.7x slower).
STFT_BLOCK_FRAMES = 32


def _stft_power(y: np.ndarray, config: FeatureConfig, *, n_frames: int) -> np.ndarray:
    """``np.abs(librosa.stft(y, ...)) ** power`` of the first ``n_frames`` frames, bit for bit.

    librosa pads the clip (``center``, ``pad_mode``), multiplies each frame by the float64
    window, takes ``numpy.fft.rfft`` with the frames as columns (a strided FFT axis) and
    rounds to complex64. Here the frames are rows, transformed in blocks of
    :data:`STFT_BLOCK_FRAMES`, so each FFT runs along contiguous memory: the same arithmetic
    per frame (the tests check equality with librosa), and faster.

    Returns
    -------
    np.ndarray, float32, shape (1 + n_fft // 2, n_frames)
    """
    n_fft = config.n_fft
    if config.center:
        y = np.pad(y, n_fft // 2, mode=config.pad_mode)
    frames = np.lib.stride_tricks.sliding_window_view(y, n_fft)[:: config.hop_length]
    frames = frames[:n_frames]                                      # (T, n_fft), a view
    window = _window(config.window, config.win_length, n_fft)
    power = np.empty((len(frames), 1 + n_fft // 2), dtype=np.float32)  # (T, F)
    for start in range(0, len(frames), STFT_BLOCK_FRAMES):
        stop = start + STFT_BLOCK_FRAMES
        spectrum = np.fft.rfft(frames[start:stop] * window, axis=-1)  # float64 -> complex128
        power[start:stop] = np.abs(spectrum.astype(np.complex64)) ** config.power
    return np.ascontiguousarray(power.T)                            # (F, T)


def _mel_power(y: np.ndarray, config: FeatureConfig, n_valid: int | None) -> np.ndarray:
    """The mel spectrogram as librosa.feature.melspectrogram computes it: (n_mels, n_frames).

    When the clip was padded with zeros (and the STFT pads with zeros), frames that see only
    padding are exactly zero, so only the frames touching the first ``n_valid`` samples are
    transformed: the same numbers, less work on short clips.
    """
    basis = config_filterbank(config)
    n_needed = config.n_frames
    exact_zeros = (
        n_valid is not None and config.pad_policy == "zeros" and config.center
        and config.pad_mode == "constant"
    )
    if exact_zeros:
        # frame t starts at sample t * hop - n_fft // 2 of the clip; it is silent once that is
        # past the last real sample
        n_needed = min(config.n_frames, (n_valid + config.n_fft // 2 - 1) // config.hop_length + 1)
    part = _stft_power(y, config, n_frames=n_needed)                # (F, n_needed)
    if n_needed == config.n_frames:
        return basis @ part
    # the product is taken at full width: BLAS blocks a narrower matrix differently, and its
    # sums then differ from librosa's in the last bits (amplified up to 12x by an MFCC
    # lifter); at full width they are bit-identical
    power = np.zeros((part.shape[0], config.n_frames), dtype=part.dtype)
    power[:, :n_needed] = part
    return basis @ power


def features_from_prepared(
    y: np.ndarray, *, config: FeatureConfig, n_valid: int | None = None
) -> np.ndarray:
    """Features of a waveform already at ``config.sample_rate`` and of the fixed length.

    Parameters
    ----------
    y : np.ndarray, float32, shape (config.n_samples,)
    config : FeatureConfig
    n_valid : int, optional
        Number of leading samples that are the clip (the rest being ``pad_policy`` padding);
        only used to skip work on all-zero frames, never changes the result.

    Returns
    -------
    np.ndarray, float32, shape (config.n_features, config.n_frames)
    """
    mel = _mel_power(y, config, n_valid)  # (n_mels, n_frames)
    ref = np.max if config.db_ref == "max" else config.db_ref
    if config.power == 2.0:
        db = librosa.power_to_db(mel, ref=ref, amin=config.amin, top_db=config.top_db)
    else:
        db = librosa.amplitude_to_db(mel, ref=ref, amin=config.amin, top_db=config.top_db)
    if config.kind == "spectrogram":
        return np.ascontiguousarray(db, dtype=np.float32)
    # As librosa.feature.mfcc(S=db): DCT over the mel axis, first n_mfcc rows, liftering.
    mfcc = scipy.fft.dct(db, axis=-2, type=config.dct_type, norm=config.mfcc_norm)
    mfcc = mfcc[: config.n_mfcc]
    if config.lifter > 0:
        k = np.arange(1, 1 + config.n_mfcc, dtype=mfcc.dtype)
        mfcc = mfcc * (1 + (config.lifter / 2) * np.sin(np.pi * k / config.lifter))[:, None]
    return np.ascontiguousarray(mfcc, dtype=np.float32)


def extract(
    y: np.ndarray, *, sr: int, config: FeatureConfig, name: str = "waveform"
) -> np.ndarray:
    """The paper's features of one clip.

    Parameters
    ----------
    y : np.ndarray, float, shape (n_samples,) or (channels, n_samples)
        Waveform (channel-first, like librosa); stereo is averaged to mono.
    sr : int
        Sample rate of ``y`` in Hz; resampled to ``config.sample_rate`` with soxr if different.
    config : FeatureConfig
    name : str
        Names the clip in error messages.

    Returns
    -------
    np.ndarray, float32, shape (config.n_features, config.n_frames)
        dB mel spectrogram (n_mels rows) or MFCC (n_mfcc rows); 259 frames for 6 s at
        22,050 Hz with hop 512.

    Raises
    ------
    SerlibError
        Empty audio, NaN or inf samples, a bad layout or sample rate (naming ``name``).
    """
    prepared, n_valid = _prepare(y, sr=sr, config=config, name=name)
    return features_from_prepared(prepared, config=config, n_valid=n_valid)


def load_prepared(path: str | os.PathLike, *, config: FeatureConfig) -> np.ndarray:
    """Decode ``path`` and :func:`prepare_waveform` it: shape (config.n_samples,), float32."""
    y, sr = load_audio(path, max_seconds=config.max_seconds)
    return prepare_waveform(y, sr=sr, config=config, name=str(path))


def extract_file(path: str | os.PathLike, *, config: FeatureConfig) -> np.ndarray:
    """Features of one audio file: shape (config.n_features, config.n_frames), float32.

    Raises SerlibError naming the file when it is missing, unreadable, truncated, empty or
    has NaN/inf samples.
    """
    y, sr = load_audio(path, max_seconds=config.max_seconds)
    prepared, n_valid = _prepare(y, sr=sr, config=config, name=str(path))
    return features_from_prepared(prepared, config=config, n_valid=n_valid)


# ---------------------------------------------------------------------- a corpus
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
    _keep_freed_memory()


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
) -> list[tuple[np.ndarray | None, str | None]]:
    """Run ``worker`` on a chunk of files; a SerlibError becomes that file's error message.

    With ``rows_file`` (a .npy file the caller created), the result of ``paths[i]`` is written
    to its row ``first_row + i`` there and None is returned in its place: no array crosses the
    process boundary (pickling a 128 x 259 result through a pipe cost about as much as a
    third of its extraction on a 2-core machine).
    """
    rows = None if rows_file is None else np.load(rows_file, mmap_mode="r+")
    out: list[tuple[np.ndarray | None, str | None]] = []
    for i, path in enumerate(paths):
        try:
            result = worker(path, config=config)
        except SerlibError as error:
            out.append((None, str(error)))
            continue
        if rows is None:
            out.append((result, None))
        else:
            rows[first_row + i] = result
            out.append((None, None))
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
    progress: bool,
    scratch_dir: str,
) -> tuple[list[np.ndarray | None], list[str | None]]:
    """Apply ``worker(path, config=config)`` to every path; SerlibErrors are collected.

    ``n_jobs > 1``: a process pool fed with chunks of files (threads do not scale here: the
    per-clip Python work holds the GIL long enough that two threads ran slower than one).
    The workers write their float32 results of shape ``row_shape`` into one .npy file in
    ``scratch_dir`` (memory-mapped) and send back only error messages; the results returned
    are rows of that mapping, valid while the caller keeps ``scratch_dir``. Any other
    exception aborts the whole run.
    """
    from tqdm import tqdm

    results: list[np.ndarray | None] = [None] * len(paths)
    errors: list[str | None] = [None] * len(paths)
    bar = tqdm(total=len(paths), desc="features", unit="clip", disable=not progress)
    try:
        if n_jobs <= 1 or len(paths) <= 1:
            for i, path in enumerate(paths):
                (results[i], errors[i]), = _work_chunk(worker, [path], config)
                bar.update()
        else:
            n_jobs = min(n_jobs, len(paths))
            # build the cached filterbank and window once here; forked workers inherit them
            config_filterbank(config)
            _window(config.window, config.win_length, config.n_fft)
            # small chunks keep the bar moving and balance the load; large enough to amortise
            size = max(1, min(8, math.ceil(len(paths) / (16 * n_jobs))))
            starts = range(0, len(paths), size)
            pool = _executor(n_jobs)
            rows_file = os.path.join(scratch_dir, "rows.npy")
            rows = np.lib.format.open_memmap(
                rows_file, mode="w+", dtype=np.float32, shape=(len(paths), *row_shape)
            )
            futures = {
                pool.submit(_work_chunk, worker, paths[i : i + size], config, rows_file, i): i
                for i in starts
            }
            try:
                for future in as_completed(futures):
                    i = futures[future]
                    for j, (_, error) in enumerate(future.result(), start=i):
                        errors[j] = error
                    bar.update(min(size, len(paths) - i))
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            for j, error in enumerate(errors):
                if error is None:
                    results[j] = rows[j]  # (*row_shape,), a view of the mapping
    finally:
        bar.close()
    return results, errors


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
) -> FeatureSet:
    """Features of every clip of a selection, computed in parallel and cached on disk.

    Parameters
    ----------
    selection : pandas.DataFrame or mapping
        Needs the columns ``utterance_id`` (unique) and ``path``; other columns are ignored.
    config : FeatureConfig
    cache_dir : path-like or None
        Root of the feature stores; the store of ``config`` lives in
        ``cache_dir/<config.fingerprint()>/``. A clip whose file identity (absolute path,
        size, mtime) matches the store is read back, not recomputed. None: compute everything
        and store nothing.
    n_jobs : int, optional
        Worker processes (default: ``os.cpu_count()``); 1 runs in the calling process.
    dtype : {"float32", "float16"}
        Storage (and returned) dtype; float16 halves the store.
    skip_errors : bool
        False (default): one bad file (unreadable, truncated, empty, NaN/inf) raises a
        SerlibError naming every bad file, before anything is written. True: bad files are
        left out and listed in ``FeatureSet.skipped`` (they are retried on the next run).
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

    Returns
    -------
    FeatureSet
        ``features`` of shape (N, config.n_features, config.n_frames) in the selection's row
        order, bad rows removed when ``skip_errors``.
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
    ids, paths = _selection_columns(selection)

    # 1. What is already stored (same config, same file identity)?
    store = FeatureStore(cache_dir, config, dtype=dtype) if cache_dir is not None else None
    index = store.read_index() if store is not None else None
    identities: dict[str, dict] = {}
    errors: dict[str, str] = {}
    todo: list[int] = []
    for i, (uid, path) in enumerate(zip(ids, paths, strict=True)):
        try:
            identities[uid] = file_identity(path)
        except SerlibError as error:
            errors[uid] = str(error)
            continue
        if index is None or not index.matches(uid, identities[uid]):
            todo.append(i)

    # 2-4 run in a scratch folder: the workers' results live in a mapped file there until
    # they are stored (no copy of them in between). ignore_cleanup_errors: Windows cannot
    # delete a file that is still mapped.
    worker, row_shape = (
        (extract_file, config.shape) if backend == "librosa"
        else (load_prepared, (config.n_samples,))
    )
    scratch_dir = tempfile.TemporaryDirectory(
        prefix="serlib-features-", dir=_scratch_parent(4 * math.prod(row_shape) * len(todo)),
        ignore_cleanup_errors=True,
    )
    with scratch_dir as scratch:
        # 2. Compute what is missing (results in a mapped file in the scratch folder).
        results, failures = _run_jobs(
            worker, [paths[i] for i in todo], config=config, row_shape=row_shape, n_jobs=n_jobs,
            progress=progress, scratch_dir=scratch,
        )
        computed: dict[str, np.ndarray] = {}
        for i, result, failure in zip(todo, results, failures, strict=True):
            if failure is not None:
                errors[ids[i]] = failure
            else:
                computed[ids[i]] = result
        if backend == "torch" and computed:
            arrays = _torch_batches(
                list(computed.values()), config=config, device=device, batch_size=batch_size
            )
            computed = dict(zip(computed, arrays, strict=True))

        # 3. A bad file fails the run before anything is written, unless skipped.
        errors = {uid: errors[uid] for uid in ids if uid in errors}  # selection order
        if errors and not skip_errors:
            shown = "; ".join(errors[uid] for uid in list(errors)[:10])
            more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
            raise SerlibError(
                f"{len(errors)} bad audio file(s), nothing written "
                f"(skip_errors=True leaves them out): {shown}{more}"
            )
        path_of = dict(zip(ids, paths, strict=True))
        skipped = [(path_of[uid], reason) for uid, reason in errors.items()]
        kept = [uid for uid in ids if uid not in errors]

        # 4. Store the new rows (atomically, straight from the mapped results), then read the
        # selection back in its order.
        n_dtype = np.dtype(dtype)
        if store is None:
            features = np.empty((len(kept), *config.shape), dtype=n_dtype)
            for row, uid in enumerate(kept):
                features[row] = computed[uid]
            store_path = None
        else:
            if computed:
                index = store.commit({uid: (identities[uid], computed[uid]) for uid in computed})
            features = store.read(index, kept)
            store_path = store.root
        return FeatureSet(
            features=features,
            utterance_ids=kept,
            config=config,
            skipped=skipped,
            store_path=None if store_path is None else Path(store_path),
            n_computed=len(computed),
            n_reused=len(kept) - len(computed),
        )
