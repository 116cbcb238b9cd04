"""The paper's features: log-mel spectrogram and MFCC, exact to librosa, parallel and cached.

Public API
----------
FeatureConfig
    Every signal parameter, explicit; ``FeatureConfig.preset("spectrogram" | "mfcc")``.
feature_config_for(selection, kind)
    The config of a selection: the preset at the clip length the selection was made with.
extract(y, *, sr, config)
    One waveform -> (n_features, n_frames) float32.
extract_file(path, *, config)
    One audio file -> (n_features, n_frames) float32.
extract_corpus(selection, *, config, cache_dir, ...)
    A selection table -> :class:`FeatureSet`, computed in parallel and cached on disk.
load_audio, prepare_waveform
    Decoding/validation, and the resample/cut/pad step on its own.

Importing this package is light (numpy and soundfile): librosa, scipy and soxr are imported by
the per-clip functions of :mod:`serlib.features.extract` on first use, so that a run whose
features are all cached never loads them. The torch implementation lives in
:mod:`serlib.features.torch_features` (imported on demand).
"""

from __future__ import annotations

from serlib.features.audio import SilentAudioWarning, load_audio
from serlib.features.config import FORMAT_VERSION, KINDS, FeatureConfig, feature_config_for
from serlib.features.corpus import extract_corpus
from serlib.features.extract import (
    extract,
    extract_file,
    features_from_prepared,
    mel_filterbank,
    prepare_waveform,
)
from serlib.features.store import FeatureSet, FeatureStore, StoreWarning

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "FeatureConfig",
    "FeatureSet",
    "FeatureStore",
    "SilentAudioWarning",
    "StoreWarning",
    "extract",
    "extract_corpus",
    "extract_file",
    "feature_config_for",
    "features_from_prepared",
    "load_audio",
    "mel_filterbank",
    "prepare_waveform",
]
