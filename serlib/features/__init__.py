"""The paper's features: log-mel spectrogram and MFCC, exact to librosa, parallel and cached.

Public API
----------
FeatureConfig
    Every signal parameter, explicit; ``FeatureConfig.preset("spectrogram" | "mfcc")``.
extract(y, *, sr, config)
    One waveform -> (n_features, n_frames) float32.
extract_file(path, *, config)
    One audio file -> (n_features, n_frames) float32.
extract_corpus(selection, *, config, cache_dir, ...)
    A selection table -> :class:`FeatureSet`, computed in parallel and cached on disk.
load_audio, prepare_waveform
    Decoding/validation, and the resample/cut/pad step on its own.

The torch implementation lives in :mod:`serlib.features.torch_features` (imported on demand so
that importing serlib.features does not import torch).
"""

from __future__ import annotations

from serlib.features.audio import load_audio
from serlib.features.config import FORMAT_VERSION, KINDS, FeatureConfig
from serlib.features.extract import (
    extract,
    extract_corpus,
    extract_file,
    features_from_prepared,
    mel_filterbank,
    prepare_waveform,
)
from serlib.features.store import FeatureSet, FeatureStore

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "FeatureConfig",
    "FeatureSet",
    "FeatureStore",
    "extract",
    "extract_corpus",
    "extract_file",
    "features_from_prepared",
    "load_audio",
    "mel_filterbank",
    "prepare_waveform",
]
