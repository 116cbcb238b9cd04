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
file with soundfile and resampling with soxr directly, and an STFT on contiguous blocks of
frames (bit-identical to librosa's). A whole corpus (worker processes, the store) is
:mod:`serlib.features.corpus`, which imports this module only when a clip must be computed.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np

from serlib.errors import SerlibError
from serlib.features.audio import (
    MAX_CHANNELS,
    RESAMPLE_MARGIN_SECONDS,
    check_samples,
    load_audio,
)
from serlib.features.config import FeatureConfig


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
    import librosa

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
    import librosa
    import soxr

    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.floating):
        raise SerlibError(f"{name}: audio must be floating point, got dtype {y.dtype}")
    if y.ndim == 2:
        check_samples(y, name=name)
        if y.shape[0] > y.shape[1] and y.shape[0] > MAX_CHANNELS:
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
    import librosa
    import scipy.signal

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
    import librosa
    import scipy.fft

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
