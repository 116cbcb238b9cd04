"""FeatureConfig: the paper's defaults, presets, serialisation, fingerprint, validation."""

from __future__ import annotations

import dataclasses
import json

import pytest

from serlib.errors import SerlibError
from serlib.features import FORMAT_VERSION, FeatureConfig


def test_paper_defaults_and_presets():
    spec = FeatureConfig.preset("spectrogram")
    mfcc = FeatureConfig.preset("mfcc")
    assert (spec.sample_rate, spec.n_fft, spec.win_length, spec.hop_length) == (22050, 2048, 2048,
                                                                                512)
    assert spec.window == "hann" and spec.center and spec.max_seconds == 6.0
    assert spec.n_features == 128 and mfcc.n_features == 40
    assert spec.n_samples == 132300
    assert spec.n_frames == 259 and mfcc.n_frames == 259
    assert spec.shape == (128, 259) and mfcc.shape == (40, 259)
    assert spec.fmax is None and spec.fmax_hz == 11025.0
    assert FeatureConfig.preset("mfcc", n_mfcc=20).n_features == 20


def test_frame_count_without_centering():
    config = FeatureConfig(center=False)
    assert config.n_frames == 1 + (132300 - 2048) // 512


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        FeatureConfig().hop_length = 256  # type: ignore[misc]


def test_dict_roundtrip_through_json():
    config = FeatureConfig.preset("mfcc", n_mels=64, db_ref="max", fmax=8000.0, lifter=22)
    data = json.loads(json.dumps(config.to_dict()))
    assert data["format_version"] == FORMAT_VERSION
    again = FeatureConfig.from_dict(data)
    assert again == config
    assert again.fingerprint() == config.fingerprint()


def test_from_dict_rejects_unknown_keys_and_versions():
    with pytest.raises(SerlibError, match="hop"):
        FeatureConfig.from_dict({"hop": 512})
    with pytest.raises(SerlibError, match="format_version"):
        FeatureConfig.from_dict({"format_version": FORMAT_VERSION + 1})


def test_fingerprint_is_stable_and_sensitive():
    base = FeatureConfig()
    assert base.fingerprint() == FeatureConfig().fingerprint()
    assert len(base.fingerprint()) == 16
    # an explicit fmax equal to the default resolves to the same features
    assert FeatureConfig(fmax=11025.0).fingerprint() == base.fingerprint()
    # ints and floats of the same value are the same parameter
    assert FeatureConfig(fmin=0).fingerprint() == base.fingerprint()
    changes = dict(kind="mfcc", sample_rate=16000, n_fft=4096, win_length=1024, hop_length=256,
                   window="hamming", center=False, pad_mode="reflect", n_mels=64, fmin=20.0,
                   fmax=7000.0, htk=True, mel_norm=None, power=1.0, db_ref="max", top_db=60.0,
                   amin=1e-5, n_mfcc=13, dct_type=3, mfcc_norm=None, lifter=22.0,
                   max_seconds=4.0, pad_policy="wrap", resample_type="soxr_vhq")
    assert set(changes) == {f.name for f in dataclasses.fields(FeatureConfig)}
    prints = {base.fingerprint()}
    for name, value in changes.items():
        prints.add(base.replace(**{name: value}).fingerprint())
    assert len(prints) == len(changes) + 1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("kind", "cqt"),
        ("hop_length", -512),
        ("hop_length", 0),
        ("hop_length", 1.5),
        ("n_fft", True),
        ("window", "kaiser"),
        ("win_length", 4096),
        ("n_mfcc", 200),
        ("fmax", 20000.0),
        ("fmin", 12000.0),
        ("power", 3.0),
        ("db_ref", "min"),
        ("db_ref", -1.0),
        ("top_db", -80.0),
        ("amin", 0.0),
        ("dct_type", 4),
        ("mel_norm", "l2"),
        ("pad_mode", "wrap"),
        ("pad_policy", "edge"),
        ("resample_type", "fft"),
        ("center", "yes"),
        ("max_seconds", 0.0),
        ("max_seconds", float("nan")),
        ("sample_rate", "22050"),
    ],
)
def test_bad_values_name_parameter_and_value(name, value):
    with pytest.raises(SerlibError) as info:
        FeatureConfig(**{name: value})
    assert name in str(info.value)
    assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_unknown_preset():
    with pytest.raises(SerlibError, match="'chroma'"):
        FeatureConfig.preset("chroma")
