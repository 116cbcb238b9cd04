"""Decoding and validating audio files: every failure names the file."""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf

from serlib.errors import SerlibError

#: Extra input decoded beyond ``max_seconds`` before resampling, so that the resampler's
#: filter sees the same neighbourhood at the cut as it would on the whole clip (seconds).
RESAMPLE_MARGIN_SECONDS = 0.05

# libsndfile's log reports "data : <declared> (should be <actual>)" for a truncated WAV.
_DATA_SIZE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Declared sizes that streaming writers use for "unknown length"; not truncation.
_UNKNOWN_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}


#: Largest sample magnitude taken (integer formats decode to [-1, 1]; float files may hold
#: anything, and samples near 1e30 overflow the power spectrogram to inf and NaN features).
MAX_ABS_SAMPLE = 1e6
#: A 2-D waveform with more rows than this is taken as (n_samples, channels), not channels.
MAX_CHANNELS = 64


class SilentAudioWarning(UserWarning):
    """An audio file whose decoded samples are all zero (its features are the dB floor)."""


def load_audio(
    path: str | os.PathLike, *, max_seconds: float | None = None
) -> tuple[np.ndarray, int]:
    """Decode an audio file to float32, checking that it is complete and finite.

    Parameters
    ----------
    path : path-like
        Any format libsndfile reads (WAV, FLAC, OGG ...).
    max_seconds : float, optional
        Decode only the first ``max_seconds`` (plus a short resampling margin); the rest of a
        long clip is never used by the features, so it is not read.

    Returns
    -------
    y : np.ndarray, float32, shape (channels, n_samples)
        Samples in [-1, 1] for integer formats (librosa's channel-first layout).
    sr : int
        The file's sample rate in Hz.

    Raises
    ------
    SerlibError
        Naming the file: missing, unreadable, truncated, empty, or with NaN/inf samples.

    Warns
    -----
    SilentAudioWarning
        Naming the file, when every decoded sample is zero.
    """
    name = display_name(path)
    try:
        with open_audio(path) as f:
            sr = int(f.samplerate)
            _check_not_truncated(f, name)
            frames = -1
            if max_seconds is not None:
                frames = math.ceil((max_seconds + RESAMPLE_MARGIN_SECONDS) * sr)
            data = f.read(frames=frames, dtype="float32", always_2d=True)  # (n, channels)
    except SerlibError:
        raise
    except FileNotFoundError as error:
        raise SerlibError(f"{name}: audio file not found") from error
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        if not Path(path).exists():
            raise SerlibError(f"{name}: audio file not found") from error
        raise SerlibError(f"{name}: unreadable audio file ({_reason(error)})") from error
    y = np.ascontiguousarray(data.T)  # (channels, n)
    check_samples(y, name=name)
    if not y.any():
        what = f"the first {max_seconds:g} s" if max_seconds is not None else "the file"
        warnings.warn(f"{name}: silent audio (every sample in {what} is zero); its features "
                      "are the dB floor", SilentAudioWarning, stacklevel=2)
    return y, sr


def _reason(error: BaseException) -> str:
    """libsndfile's own words ("Format not recognised."), without the repr of the file object
    it was given."""
    return getattr(error, "error_string", None) or str(error)


def display_name(path: str | os.PathLike) -> str:
    """``path`` as printable text: bytes that are not UTF-8 in a file name (kept by Python
    as surrogates) are shown as ``\\xNN`` escapes instead of failing to print."""
    name = os.fspath(path)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def check_regular_file(path: str | os.PathLike) -> None:
    """Raise SerlibError unless ``path`` is a regular file this process may read: a FIFO,
    a device or a folder is named (opening a FIFO would wait forever for a writer)."""
    import stat

    name = display_name(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SerlibError(f"{name}: audio file not found") from None
    except OSError as error:
        raise SerlibError(f"{name}: cannot read the audio file ({error.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else \
            "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise SerlibError(f"{name}: is {kind}, not an audio file; give regular files")
    if not os.access(path, os.R_OK):
        raise SerlibError(f"{name}: permission denied (the file is not readable by this "
                          "user)")


def open_audio(path: str | os.PathLike) -> sf.SoundFile:
    """A :class:`soundfile.SoundFile` on ``path``, opened by Python (so that any file name,
    even one that is not UTF-8, works), after :func:`check_regular_file`."""
    check_regular_file(path)
    try:
        handle = open(path, "rb")   # noqa: SIM115 - closed with the SoundFile
    except PermissionError:
        raise SerlibError(f"{display_name(path)}: permission denied") from None
    try:
        return sf.SoundFile(handle)
    except BaseException:
        handle.close()
        raise


def audio_info(path: str | os.PathLike):
    """``(frames, sample_rate, duration_s)`` from the file's header, as ``soundfile.info``
    gives them, after :func:`check_regular_file`. Raises SerlibError naming the file."""
    try:
        with open_audio(path) as f:
            return int(f.frames), int(f.samplerate), f.frames / f.samplerate
    except SerlibError:
        raise
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        raise SerlibError(f"{display_name(path)}: unreadable audio file ({_reason(error)})"
                          ) from None


def _check_not_truncated(f: sf.SoundFile, name: str) -> None:
    match = _DATA_SIZE.search(f.extra_info or "")
    if match:
        declared, actual = int(match.group(1)), int(match.group(2))
        if declared > actual and declared not in _UNKNOWN_SIZES:
            raise SerlibError(
                f"{name}: truncated audio file (header declares {declared} data bytes, "
                f"the file holds {actual})"
            )


def check_samples(y: np.ndarray, *, name: str = "waveform") -> None:
    """Raise SerlibError naming ``name`` if ``y`` is empty or has NaN or inf samples."""
    if y.size == 0 or y.shape[-1] == 0:
        raise SerlibError(f"{name}: audio has zero samples")
    if not np.all(np.isfinite(y)):
        n_bad = int(np.count_nonzero(~np.isfinite(y)))
        raise SerlibError(f"{name}: audio has {n_bad} NaN or inf samples")
    peak = float(np.max(np.abs(y)))
    if peak > MAX_ABS_SAMPLE:
        raise SerlibError(f"{name}: audio has samples up to {peak:.3g} in magnitude (at most "
                          f"{MAX_ABS_SAMPLE:g}: a float file not scaled to [-1, 1]?); its "
                          "spectrogram would overflow to inf/NaN")


def file_identity(path: str | os.PathLike) -> dict:
    """What a cached feature depends on besides the config: absolute path, size, mtime (ns).

    Raises SerlibError naming the file if it cannot be stat'ed.
    """
    name = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(name)
    except OSError as error:
        raise SerlibError(f"{name}: audio file not found ({error.strerror})") from error
    return {"path": name, "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}
