"""serlib.audit on synthetic signals: upsampled audio, clips cut mid-tone, padded clips,
constant durations; and, when it is beside the project, the shared EmoDB copy."""

from __future__ import annotations

import math
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile

from serlib.audit import (
    audit_clip,
    audit_corpus,
    band_limit,
    duration_spike,
    effective_bandwidth,
    energy_above,
    summarise_audit,
    tail_level_db,
)
from serlib.errors import SerlibError

EMODB = Path(__file__).resolve().parents[2] / "shared" / "data" / "emodb" / "wav"


def noise(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    return 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))


def tone_and_noise(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return 0.3 * np.sin(2 * np.pi * 440 * t) + noise(seconds, rate, seed)


def upsampled(y16k: np.ndarray) -> np.ndarray:
    return librosa.resample(y16k, orig_sr=16000, target_sr=22050, res_type="soxr_hq")


@pytest.mark.parametrize("make", [noise, tone_and_noise])
def test_audio_upsampled_from_16k_is_recognised_whatever_the_header(make):
    y = upsampled(make(2.0, 16000))                      # header rate: 22,050 Hz
    limit = band_limit(y, sample_rate=22050)
    assert limit.source_rate == 16000 and limit.limit_hz == 8000
    assert limit.drop_db > 40
    assert energy_above(y, sample_rate=22050, cutoff_hz=8000) < 1e-5
    assert effective_bandwidth(y, sample_rate=22050) < 8000


def test_full_band_audio_has_no_limit():
    y = noise(2.0, 22050)
    limit = band_limit(y, sample_rate=22050)
    assert limit.source_rate is None and limit.limit_hz is None and limit.drop_db is None
    # white noise: energy spread evenly, 3,025 of 11,025 Hz above 8 kHz
    assert energy_above(y, sample_rate=22050, cutoff_hz=8000) == pytest.approx(3025 / 11025,
                                                                               abs=0.02)
    assert effective_bandwidth(y, sample_rate=22050) > 10900
    # the same noise at 16 kHz, read at its own rate: full band as well
    assert band_limit(noise(2.0, 16000), sample_rate=16000).source_rate is None


def test_smooth_spectral_slope_is_not_an_edge():
    # speech-like pink-ish noise: falls 6 dB per octave, never 30 dB within 1 kHz
    y = np.cumsum(noise(2.0, 22050)) * 0.01
    assert band_limit(y - y.mean(), sample_rate=22050).source_rate is None


def test_clip_cut_mid_tone_versus_padded_versus_fading():
    rate = 16000
    t = np.arange(2 * rate) / rate
    cut = 0.5 * np.sin(2 * np.pi * 220 * t)                       # sounding to the last sample
    padded = np.concatenate([cut[: rate], np.zeros(rate)])         # 1 s tone, 1 s of zeros
    fading = cut * np.exp(-4 * t)                                  # dies away: a closing pause
    assert tail_level_db(cut, sample_rate=rate) == pytest.approx(0.0, abs=0.1)
    assert tail_level_db(padded, sample_rate=rate) == -math.inf
    assert tail_level_db(fading, sample_rate=rate) < -20
    assert math.isnan(tail_level_db(np.zeros(rate), sample_rate=rate))


def test_duration_spike():
    rng = np.random.default_rng(0)
    varied = rng.uniform(1, 6, 500)
    spiked = np.minimum(rng.uniform(1, 6, 500), 2.0)               # cut at 2 s
    assert duration_spike(varied)["share"] < 0.02
    spike = duration_spike(spiked)
    assert spike["duration_s"] == pytest.approx(2.0) and spike["is_longest"]
    assert spike["share"] == pytest.approx(np.mean(np.round(spiked, 2) == 2.0))
    assert spike["n_clips"] == 500


@pytest.mark.parametrize("call", [
    lambda: band_limit(np.array([]), sample_rate=22050),
    lambda: band_limit(np.array([np.nan, 0.0]), sample_rate=22050),
    lambda: energy_above(noise(1, 16000), sample_rate=16000, cutoff_hz=9000),
    lambda: effective_bandwidth(noise(1, 16000), sample_rate=16000, energy_share=1.0),
    lambda: tail_level_db(noise(1, 16000), sample_rate=0),
    lambda: duration_spike([]),
])
def test_bad_input_is_refused_by_name(call):
    with pytest.raises(SerlibError):
        call()


def write_corpus(folder: Path) -> pd.DataFrame:
    """Eight clips upsampled from 16 kHz and cut at 2.0 s (six mid-tone, two padded),
    two shorter full-band 22,050-Hz clips."""
    rows = []
    for k in range(10):
        if k < 8:
            y = upsampled(tone_and_noise(3.0, 16000, seed=k))[: 2 * 22050]
            if k >= 6:
                y[22050:] = 0                                     # 1 s of speech, then zeros
        else:
            y = tone_and_noise(1.0 + 0.3 * (k - 8), 22050, seed=k)
            y *= np.exp(-6 * np.arange(y.size) / 22050)           # fades out
        path = folder / f"clip{k}.wav"
        soundfile.write(path, y.astype(np.float32), 22050, subtype="PCM_16")
        rows.append({"utterance_id": f"clip{k}", "path": str(path), "duration_s": y.size / 22050})
    return pd.DataFrame(rows)


def test_corpus_audit_finds_upsampling_cuts_and_a_duration_spike(tmp_path):
    selection = write_corpus(tmp_path)
    table = audit_corpus(selection, max_clips=None)
    assert list(table["utterance_id"]) == list(selection["utterance_id"])
    assert table["header_rate_hz"].eq(22050).all()
    assert table["source_rate_hz"].iloc[:8].eq(16000).all()
    assert table["source_rate_hz"].iloc[8:].isna().all()
    audit = summarise_audit(table, durations_s=selection["duration_s"])
    assert audit.upsampled and audit.source_rate_hz == 16000 and audit.limit_hz == 8000
    assert audit.band_limited_share == pytest.approx(0.8)
    assert audit.cut_share == pytest.approx(0.6) and audit.padded_share == pytest.approx(0.2)
    assert audit.cut_to_length and audit.duration["duration_s"] == pytest.approx(2.0)
    band, ends, durations = audit.findings()
    assert "22,050 Hz" in band and "8,000 Hz" in band and "16,000 Hz" in band
    assert "60 %" in ends and "cut mid-speech" in ends
    assert "80 %" in durations and "2.00 s" in durations
    # a sample of the clips, seeded: the same clips every time
    assert audit_corpus(selection, max_clips=4, seed=1).equals(
        audit_corpus(selection, max_clips=4, seed=1))
    assert len(audit_corpus(selection, max_clips=4)) == 4


def test_full_band_corpus_is_not_called_upsampled(tmp_path):
    rows = []
    for k in range(4):
        path = tmp_path / f"c{k}.wav"
        y = tone_and_noise(1.0 + k, 22050, seed=k) * np.exp(-5 * np.arange((1 + k) * 22050) / 22050)
        soundfile.write(path, y.astype(np.float32), 22050, subtype="PCM_16")
        rows.append({"utterance_id": f"c{k}", "path": str(path)})
    audit = summarise_audit(audit_corpus(pd.DataFrame(rows)))
    assert not audit.upsampled and not audit.cut_to_length and audit.cut_share == 0
    assert "uses its whole band" in audit.findings()[0]


def test_audit_clip_reads_the_header_rate(tmp_path):
    path = tmp_path / "x.wav"
    soundfile.write(path, upsampled(noise(1.0, 16000)).astype(np.float32), 22050)
    row = audit_clip(path)
    assert row["header_rate_hz"] == 22050 and row["source_rate_hz"] == 16000
    assert row["energy_above_limit"] < 1e-5


@pytest.mark.skipif(not EMODB.is_dir(), reason="the shared EmoDB copy is not beside the project")
def test_shared_emodb_copy_is_recognised_as_upsampled_and_cut():
    from serlib.corpora import load_corpus, select_utterances

    selection = select_utterances(load_corpus("emodb", str(EMODB)))
    audit = summarise_audit(audit_corpus(selection, max_clips=120, seed=0),
                            durations_s=selection["duration_s"])
    assert audit.header_rates_hz == (22050,)
    assert audit.upsampled and audit.source_rate_hz == 16000
    assert audit.cut_to_length and audit.duration["duration_s"] == pytest.approx(2.0)
    assert 0.5 < audit.cut_share < 0.9                    # about 70 % sound in the last 0.1 s
