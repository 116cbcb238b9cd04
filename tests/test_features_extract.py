"""extract(): equal to librosa with the same parameters; resampling, cutting, padding; bad audio."""

from __future__ import annotations

import math

import librosa
import numpy as np
import pytest
import soundfile as sf

from serlib.errors import SerlibError
from serlib.features import (
    FeatureConfig,
    SilentAudioWarning,
    extract,
    extract_file,
    load_audio,
    mel_filterbank,
    prepare_waveform,
)

TOL_DB = 1e-4


def speech_like(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """Harmonic-rich chirp (f0 gliding 100 -> 250 Hz, 30 harmonics), syllabic envelope, noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 100 + 150 * t / max(seconds, 1e-9)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    y = sum(np.sin(k * phase) / k for k in range(1, 31) if k * 250 < sr / 2)
    y = y * (0.2 + np.sin(2 * np.pi * 3 * t) ** 2) + 0.02 * rng.standard_normal(t.size)
    return (0.25 * y / np.abs(y).max()).astype(np.float32)


def noise(seconds: float, sr: int, seed: int = 1) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * sr))).astype(np.float32)


def librosa_features(y: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """The reference: librosa called directly with every parameter of ``config``."""
    mel = librosa.feature.melspectrogram(
        y=y, sr=config.sample_rate, n_fft=config.n_fft, hop_length=config.hop_length,
        win_length=config.win_length, window=config.window, center=config.center,
        pad_mode=config.pad_mode, power=config.power, n_mels=config.n_mels, fmin=config.fmin,
        fmax=config.fmax_hz, htk=config.htk, norm=config.mel_norm,
    )
    ref = np.max if config.db_ref == "max" else config.db_ref
    to_db = librosa.power_to_db if config.power == 2.0 else librosa.amplitude_to_db
    db = to_db(mel, ref=ref, amin=config.amin, top_db=config.top_db)
    if config.kind == "spectrogram":
        return db
    return librosa.feature.mfcc(S=db, n_mfcc=config.n_mfcc, dct_type=config.dct_type,
                                norm=config.mfcc_norm, lifter=config.lifter)


def fixed_length(y: np.ndarray, config: FeatureConfig) -> np.ndarray:
    return librosa.util.fix_length(y, size=config.n_samples)


CONFIGS = [
    FeatureConfig.preset("spectrogram"),
    FeatureConfig.preset("mfcc"),
    FeatureConfig.preset("spectrogram", n_mels=64, hop_length=256),
    FeatureConfig.preset("spectrogram", n_fft=1024, win_length=800, window="hamming",
                         fmin=50.0, fmax=8000.0, htk=True, db_ref="max", top_db=60.0),
    FeatureConfig.preset("spectrogram", power=1.0, mel_norm=None, top_db=None, amin=1e-5),
    FeatureConfig.preset("mfcc", n_mfcc=13, n_mels=40, lifter=22.0, hop_length=300),
    FeatureConfig.preset("mfcc", dct_type=3, mfcc_norm=None, pad_mode="reflect", max_seconds=3.0),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.kind}-{c.fingerprint()[:6]}")
@pytest.mark.parametrize("signal", [speech_like, noise])
def test_equals_librosa(config, signal):
    y = signal(4.0, config.sample_rate)  # shorter than 6 s: padding is exercised too
    ours = extract(y, sr=config.sample_rate, config=config)
    assert ours.dtype == np.float32 and ours.shape == config.shape
    reference = librosa_features(fixed_length(y, config), config)
    assert reference.shape == ours.shape
    assert np.abs(ours - reference).max() <= TOL_DB


@pytest.mark.parametrize("sr", [16000, 48000])
@pytest.mark.parametrize("kind", ["spectrogram", "mfcc"])
def test_resampling_equals_librosa_resample(sr, kind):
    config = FeatureConfig.preset(kind)
    y = speech_like(3.0, sr, seed=sr)
    ours = extract(y, sr=sr, config=config)
    resampled = librosa.resample(y, orig_sr=sr, target_sr=22050, res_type="soxr_hq")
    assert np.abs(ours - librosa_features(fixed_length(resampled, config), config)).max() <= TOL_DB


def test_long_clip_cut_before_resampling_matches_cut_after():
    config = FeatureConfig.preset("spectrogram")
    y = speech_like(9.0, 16000, seed=3)
    ours = prepare_waveform(y, sr=16000, config=config)
    resampled = librosa.resample(y, orig_sr=16000, target_sr=22050, res_type="soxr_hq")
    assert ours.shape == (132300,)
    np.testing.assert_allclose(ours, resampled[:132300], atol=1e-6)
    features = extract(y, sr=16000, config=config)
    reference = librosa_features(resampled[:132300], config)
    assert np.abs(features - reference).max() <= TOL_DB


@pytest.mark.parametrize("seconds", [0.01, 1.0, 5.99, 6.0, 6.01, 10.0])
def test_exact_frame_counts(seconds):
    config = FeatureConfig.preset("spectrogram")
    y = noise(seconds, 22050)
    assert prepare_waveform(y, sr=22050, config=config).shape == (132300,)
    assert extract(y, sr=22050, config=config).shape == (128, 259)
    other = FeatureConfig.preset("mfcc", max_seconds=2.0, hop_length=256)
    assert extract(y, sr=22050, config=other).shape == (40, 1 + 44100 // 256)


def test_pad_policies():
    y = np.arange(1, 11, dtype=np.float32)
    zeros = prepare_waveform(y, sr=22050, config=FeatureConfig())
    np.testing.assert_array_equal(zeros[:10], y)
    assert not zeros[10:].any()
    wrap = prepare_waveform(y, sr=22050, config=FeatureConfig(pad_policy="wrap"))
    np.testing.assert_array_equal(wrap[:25], np.resize(y, 25))
    reflect = prepare_waveform(y, sr=22050, config=FeatureConfig(pad_policy="reflect"))
    np.testing.assert_array_equal(reflect[9:13], [10, 9, 8, 7])
    assert reflect.shape == (132300,)


def test_stereo_is_downmixed_channel_first():
    config = FeatureConfig()
    left, right = speech_like(2.0, 22050), noise(2.0, 22050)
    stereo = np.stack([left, right])  # (channels, n)
    expected = extract((left + right) / 2, sr=22050, config=config)
    assert np.abs(extract(stereo, sr=22050, config=config) - expected).max() <= TOL_DB
    with pytest.raises(SerlibError, match="channels"):
        extract(stereo.T, sr=22050, config=config)


@pytest.mark.parametrize("db_ref", [1.0, "max"])
def test_silent_clip_is_finite(db_ref):
    config = FeatureConfig(db_ref=db_ref)
    features = extract(np.zeros(22050, dtype=np.float32), sr=22050, config=config)
    assert np.isfinite(features).all()
    floor = 0.0 if db_ref == "max" else 10 * math.log10(config.amin)
    np.testing.assert_allclose(features, floor)
    mfcc = extract(np.zeros(22050, dtype=np.float32), sr=22050, config=config.replace(kind="mfcc"))
    assert np.isfinite(mfcc).all()


@pytest.mark.parametrize(
    ("y", "match"),
    [
        (np.zeros(0, dtype=np.float32), "zero samples"),
        (np.array([0.0, np.nan, 0.1], dtype=np.float32), "NaN or inf"),
        (np.array([0.0, np.inf, 0.1], dtype=np.float32), "NaN or inf"),
        (np.zeros((2, 0), dtype=np.float32), "zero samples"),
        (np.zeros(100, dtype=np.int16), "floating point"),
        (np.zeros((1, 1, 100), dtype=np.float32), "dimensions"),
    ],
)
def test_bad_waveforms_name_the_clip(y, match):
    with pytest.raises(SerlibError, match=match) as info:
        extract(y, sr=22050, config=FeatureConfig(), name="clip-7")
    assert "clip-7" in str(info.value)


@pytest.mark.parametrize("sr", [0, -16000, 16000.5, True])
def test_bad_sample_rate(sr):
    with pytest.raises(SerlibError, match="sr="):
        extract(noise(0.5, 16000), sr=sr, config=FeatureConfig())


def test_filterbank_is_cached():
    config = FeatureConfig(n_mels=96)
    extract(noise(0.5, 22050), sr=22050, config=config)
    hits = mel_filterbank.cache_info().hits
    extract(noise(0.5, 22050), sr=22050, config=config)
    assert mel_filterbank.cache_info().hits > hits


# ---------------------------------------------------------------------- files
def test_extract_file_stereo_48k(tmp_path):
    y = np.stack([speech_like(2.0, 48000), noise(2.0, 48000)])
    path = tmp_path / "stereo.wav"
    sf.write(path, y.T, 48000, subtype="FLOAT")
    decoded, sr = load_audio(path)
    assert sr == 48000 and decoded.shape == (2, 96000)
    config = FeatureConfig.preset("mfcc")
    expected = extract(decoded, sr=48000, config=config)
    np.testing.assert_array_equal(extract_file(path, config=config), expected)


def test_load_audio_reads_only_what_is_needed(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, noise(10.0, 16000), 16000)
    y, _ = load_audio(path, max_seconds=6.0)
    assert 6 * 16000 < y.shape[1] < 7 * 16000


def _wav_bytes(tmp_path) -> bytes:
    path = tmp_path / "good.wav"
    sf.write(path, noise(1.0, 16000), 16000, subtype="PCM_16")
    return path.read_bytes()


def test_truncated_file(tmp_path):
    data = _wav_bytes(tmp_path)
    bad = tmp_path / "truncated.wav"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(SerlibError, match="truncated") as info:
        extract_file(bad, config=FeatureConfig())
    assert str(bad) in str(info.value)


def test_unreadable_files(tmp_path):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all" * 10)
    header_only = tmp_path / "header.wav"
    header_only.write_bytes(_wav_bytes(tmp_path)[:30])
    for path in (garbage, header_only):
        with pytest.raises(SerlibError, match="unreadable") as info:
            load_audio(path)
        assert str(path) in str(info.value)
    with pytest.raises(SerlibError, match="not found"):
        load_audio(tmp_path / "missing.wav")


def test_empty_and_non_finite_files(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(SerlibError, match="zero samples") as info:
        extract_file(empty, config=FeatureConfig())
    assert str(empty) in str(info.value)
    for value, name in ((np.nan, "nan.wav"), (np.inf, "inf.wav")):
        y = noise(0.5, 16000)
        y[100] = value
        path = tmp_path / name
        sf.write(path, y, 16000, subtype="FLOAT")
        with pytest.raises(SerlibError, match="NaN or inf") as info:
            extract_file(path, config=FeatureConfig())
        assert str(path) in str(info.value)


def test_silent_file_is_valid(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16000, dtype=np.float32), 16000, subtype="PCM_16")
    with pytest.warns(SilentAudioWarning, match="silence.wav: silent audio"):
        features = extract_file(path, config=FeatureConfig())
    assert np.isfinite(features).all()


STFT_CONFIGS = [
    *CONFIGS,
    FeatureConfig.preset("spectrogram", center=False),
    FeatureConfig.preset("spectrogram", pad_mode="edge", win_length=1500),
]


@pytest.mark.parametrize("config", STFT_CONFIGS, ids=lambda c: f"{c.kind}-{c.fingerprint()[:6]}")
def test_stft_power_is_librosa_bit_for_bit(config):
    """serlib transforms frames as rows (contiguous FFTs); the numbers are librosa's exactly."""
    import sys

    extract_module = sys.modules["serlib.features.extract"]
    y = prepare_waveform(speech_like(5.0, 16000), sr=16000, config=config)
    reference = np.abs(librosa.stft(
        y, n_fft=config.n_fft, hop_length=config.hop_length, win_length=config.win_length,
        window=config.window, center=config.center, pad_mode=config.pad_mode,
    )) ** config.power
    ours = extract_module._stft_power(y, config, n_frames=config.n_frames)
    assert ours.shape == reference.shape == (1 + config.n_fft // 2, config.n_frames)
    assert ours.dtype == reference.dtype == np.float32
    np.testing.assert_array_equal(ours, reference)
    # the first frames alone are the same numbers
    np.testing.assert_array_equal(extract_module._stft_power(y, config, n_frames=7),
                                  reference[:, :7])
