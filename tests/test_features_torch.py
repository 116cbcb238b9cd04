"""The torch feature path against the librosa path, on CPU (tolerances in torch_features)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from serlib.errors import SerlibError
from serlib.features import FeatureConfig, extract_corpus, features_from_prepared
from serlib.features.torch_features import TorchFeatureExtractor, dct_matrix

# max abs difference (dB for the spectrogram), float32 / float64 module
TOLERANCE = {"spectrogram": (1e-4, 1e-4), "mfcc": (1e-3, 1e-3)}


def clips(n_samples: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(n_samples) / 22050
    phase = 2 * np.pi * np.cumsum(120 + 80 * t / t[-1]) / 22050
    envelope = 0.2 + np.sin(2 * np.pi * 3 * t) ** 2
    voiced = sum(np.sin(k * phase) / k for k in range(1, 25)) * envelope
    batch = [
        0.2 * voiced / np.abs(voiced).max() + 0.01 * rng.standard_normal(n_samples),
        0.1 * rng.standard_normal(n_samples),
        1e-3 * voiced / np.abs(voiced).max(),  # quiet: its own top_db floor, not the batch's
        np.zeros(n_samples),  # silent
    ]
    return np.stack(batch).astype(np.float32)


CONFIGS = [
    FeatureConfig.preset("spectrogram"),
    FeatureConfig.preset("mfcc"),
    FeatureConfig.preset("spectrogram", db_ref="max", n_mels=64, hop_length=256, max_seconds=2.0),
    FeatureConfig.preset("mfcc", power=1.0, lifter=22.0, n_fft=1024, win_length=800,
                         pad_mode="reflect", max_seconds=2.0),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.kind}-{c.fingerprint()[:6]}")
def test_matches_librosa_path(config):
    batch = clips(config.n_samples)
    reference = np.stack([features_from_prepared(y, config=config) for y in batch])
    module = TorchFeatureExtractor(config)
    with torch.no_grad():
        single = module(torch.from_numpy(batch))
        double = module.double()(torch.from_numpy(batch))
    assert single.dtype == torch.float32 and double.dtype == torch.float64
    assert tuple(single.shape) == (4, *config.shape)
    tol32, tol64 = TOLERANCE[config.kind]
    assert np.abs(single.numpy() - reference).max() <= tol32
    assert np.abs(double.numpy() - reference).max() <= tol64
    assert torch.isfinite(single).all()


def test_dct_matrix_is_librosa_mfcc():
    import librosa

    config = FeatureConfig.preset("mfcc", lifter=22.0)
    db = np.random.default_rng(1).normal(-40, 10, size=(128, 30))
    expected = librosa.feature.mfcc(S=db, n_mfcc=40, dct_type=2, norm="ortho", lifter=22.0)
    np.testing.assert_allclose(dct_matrix(config) @ db, expected, atol=1e-9)


def test_rejects_unprepared_waveforms():
    module = TorchFeatureExtractor(FeatureConfig(max_seconds=1.0))
    with pytest.raises(SerlibError, match="22050"):
        module(torch.zeros(2, 1000))


def test_extract_corpus_torch_backend(tmp_path):
    rows = []
    for i in range(3):
        path = tmp_path / f"c{i}.wav"
        y = clips(16000 * (i + 1))[i % 2]
        sf.write(path, y, 16000)
        rows.append((f"c{i}", str(path)))
    selection = pd.DataFrame(rows, columns=["utterance_id", "path"])
    config = FeatureConfig.preset("spectrogram", max_seconds=2.0)
    reference = extract_corpus(selection, config=config, cache_dir=None, n_jobs=1, progress=False)
    result = extract_corpus(selection, config=config, cache_dir=tmp_path / "cache", n_jobs=1,
                            progress=False, backend="torch", device="cpu", batch_size=2)
    assert result.features.shape == (3, *config.shape)
    assert np.abs(result.features - reference.features).max() <= TOLERANCE["spectrogram"][0]
