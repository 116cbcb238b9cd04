"""A small source-filter model of speech, with emotion acting on prosody.

Not a synthesiser anyone would listen to for pleasure, but it has what a spectrogram model of
emotion sees in speech: a glottal source with a pitch contour, jitter and shimmer, vowel
formants, noise-like consonants, syllable rhythm and pauses, per-speaker pitch and vocal-tract
length, breathiness, random recording gain and background noise.

Emotions shift the prosody as the literature describes them (e.g. Scherer 2003; Banse & Scherer
1996): anger is louder, brighter (flatter spectral tilt), faster and higher; sadness lower,
slower, darker, breathier and narrower in pitch range; happiness higher with a wider range and
a little faster. Every per-utterance parameter is drawn around its emotion's mean with a spread
comparable to the differences between emotions, so the classes overlap: happiness sits between
neutral and anger and is the hardest to tell apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage
import scipy.signal

from serlib.errors import SerlibError

# Vowel formants (Hz) of an adult male voice, F1-F3 (Peterson & Barney 1952, rounded).
VOWELS = np.array([
    [730, 1090, 2440],  # a
    [530, 1840, 2480],  # e
    [270, 2290, 3010],  # i
    [570, 840, 2410],   # o
    [300, 870, 2240],   # u
    [660, 1720, 2410],  # ae
], dtype=float)
FORMANT_BANDWIDTHS = np.array([80.0, 110.0, 160.0])


@dataclass(frozen=True)
class Prosody:
    """Mean prosody of one emotion, relative to the speaker's neutral voice.

    Attributes
    ----------
    pitch_ratio : float
        Multiplies the speaker's base f0.
    pitch_range_semitones : float
        Half-range of the syllable pitch targets around the base.
    rate_ratio : float
        Multiplies the syllable rate (about 4 syllables per second when neutral).
    loudness_db : float
        Level relative to neutral.
    tilt : float
        Source brightness in [0, 1): the pole of a one-pole low-pass on the glottal source;
        higher is darker.
    breathiness : float
        Level of aspiration noise relative to the voiced source.
    """

    pitch_ratio: float
    pitch_range_semitones: float
    rate_ratio: float
    loudness_db: float
    tilt: float
    breathiness: float


EMOTIONS: dict[str, Prosody] = {
    "neutral": Prosody(1.00, 2.0, 1.00, 0.0, 0.80, 0.06),
    "happiness": Prosody(1.12, 3.4, 1.07, 2.0, 0.74, 0.06),
    "sadness": Prosody(0.91, 1.3, 0.84, -3.5, 0.86, 0.13),
    "anger": Prosody(1.16, 2.8, 1.15, 6.0, 0.62, 0.04),
}
# Per-utterance spread (standard deviations) around each emotion's means.
SPREAD = Prosody(0.09, 0.9, 0.12, 3.0, 0.06, 0.04)


@dataclass(frozen=True)
class Speaker:
    """A voice: base pitch (Hz) and vocal-tract scale (formants multiply by it)."""

    f0_hz: float
    formant_scale: float


def speaker_voice(speaker: str) -> Speaker:
    """A fixed voice per IEMOCAP-style speaker name (``Ses01F``; the last letter is the gender)."""
    seed = sum(ord(c) * 31**i for i, c in enumerate(speaker)) % (2**32)
    rng = np.random.default_rng(seed)
    female = speaker.endswith("F")
    f0 = (205.0 if female else 115.0) * float(np.exp(rng.normal(0, 0.08)))
    scale = (1.16 if female else 1.0) * float(np.exp(rng.normal(0, 0.03)))
    return Speaker(f0_hz=f0, formant_scale=scale)


def _resonator(x: np.ndarray, *, freq_hz: float, bandwidth_hz: float, sr: int) -> np.ndarray:
    # second-order all-pole resonance with unit gain at DC removed (Klatt-style)
    r = np.exp(-np.pi * bandwidth_hz / sr)
    theta = 2 * np.pi * freq_hz / sr
    a = [1.0, -2 * r * np.cos(theta), r * r]
    return scipy.signal.lfilter([1.0 - r], a, x)


def synthesize_speech(
    *,
    duration_s: float,
    sample_rate: int = 16000,
    emotion: str = "neutral",
    speaker: str = "Ses01F",
    seed: int = 0,
) -> np.ndarray:
    """One speech-like utterance.

    Parameters
    ----------
    duration_s : float
        Length in seconds (> 0).
    sample_rate : int
        Hz.
    emotion : {"neutral", "happiness", "sadness", "anger"}
        Sets the means of the prosody parameters (see :data:`EMOTIONS`); the draw around
        them depends on ``seed``.
    speaker : str
        Speaker name, e.g. ``"Ses01F"``; fixes the voice (:func:`speaker_voice`).
    seed : int
        Same seed, same samples.

    Returns
    -------
    np.ndarray, float32, shape (round(duration_s * sample_rate),)
        Peak below 1.0.
    """
    if emotion not in EMOTIONS:
        raise SerlibError(f"emotion={emotion!r} must be one of {', '.join(EMOTIONS)}")
    if not duration_s > 0:
        raise SerlibError(f"duration_s={duration_s!r} must be > 0 (seconds)")
    if sample_rate < 8000:
        raise SerlibError(f"sample_rate={sample_rate!r} must be at least 8000 Hz")
    rng = np.random.default_rng(seed)
    voice = speaker_voice(speaker)
    mean = EMOTIONS[emotion]
    sr = sample_rate
    n = max(1, round(duration_s * sr))

    # this utterance's prosody: the emotion's means plus overlapping noise
    pitch = voice.f0_hz * mean.pitch_ratio * np.exp(rng.normal(0, SPREAD.pitch_ratio))
    pitch_range = max(0.3, mean.pitch_range_semitones + rng.normal(0, SPREAD.pitch_range_semitones))
    rate = 4.0 * mean.rate_ratio * np.exp(rng.normal(0, SPREAD.rate_ratio))
    loudness_db = mean.loudness_db + rng.normal(0, SPREAD.loudness_db)
    tilt = float(np.clip(mean.tilt + rng.normal(0, SPREAD.tilt), 0.3, 0.95))
    breath = max(0.0, mean.breathiness + rng.normal(0, SPREAD.breathiness))

    # syllable plan: consonant, vowel, gap; sometimes a phrase pause
    voiced = np.zeros(n, dtype=bool)
    envelope = np.zeros(n)
    consonant = np.zeros(n)
    targets = np.zeros(n)
    vowel_of = np.full(n, -1)
    t = int(rng.uniform(0.05, 0.25) * sr)
    declination = np.linspace(1.5, -1.5, n)  # semitones: pitch falls over the utterance
    while t < n - int(0.05 * sr):
        syllable = int(sr / rate * np.exp(rng.normal(0, 0.25)))
        c_len = int(syllable * rng.uniform(0.15, 0.35))
        v_len = max(int(syllable * 0.6), int(0.04 * sr))
        c_end = min(n, t + c_len)
        v_end = min(n, c_end + v_len)
        consonant[t:c_end] = np.hanning(c_end - t + 2)[1:-1] * rng.uniform(0.2, 0.6)
        if v_end > c_end:
            envelope[c_end:v_end] = np.hanning(v_end - c_end + 2)[1:-1] ** 0.5
            voiced[c_end:v_end] = True
            targets[c_end:v_end] = rng.uniform(-pitch_range, pitch_range)
            vowel_of[c_end:v_end] = rng.integers(len(VOWELS))
        t = v_end + int(syllable * rng.uniform(0.0, 0.2))
        if rng.random() < 0.12:
            t += int(rng.uniform(0.15, 0.5) * sr)

    # pitch contour: smoothed syllable targets, declination, jitter (semitones)
    smooth = max(1, int(0.06 * sr))
    kernel = np.hanning(2 * smooth + 1)
    kernel /= kernel.sum()
    contour = scipy.signal.oaconvolve(targets, kernel, mode="same") + declination
    jitter = scipy.ndimage.uniform_filter1d(rng.normal(0, 1, n), 64) * 2.0
    f0 = pitch * 2.0 ** ((contour + 0.3 * jitter) / 12.0)

    # glottal source: band-limited-ish sawtooth from the phase, darkened by the tilt pole
    phase = np.cumsum(f0 / sr)
    saw = 2.0 * (phase % 1.0) - 1.0
    source = scipy.signal.lfilter([1.0 - tilt], [1.0, -tilt], -saw)
    shimmer = 1.0 + 1.2 * scipy.ndimage.uniform_filter1d(rng.normal(0, 1, n), 128)
    source *= shimmer * envelope
    aspiration = rng.normal(0, 1, n) * envelope * breath * 3.0
    excitation = source + aspiration

    # vowel formants: filter each vowel's stretch with its (speaker-scaled) formants
    out = np.zeros(n)
    changes = np.flatnonzero(np.diff(vowel_of, prepend=-2, append=-2)) if n else []
    for start, stop in zip(changes[:-1], changes[1:], strict=True):
        vowel = vowel_of[start]
        if vowel < 0:
            continue
        segment = excitation[start:stop]
        formants = VOWELS[vowel] * voice.formant_scale * rng.uniform(0.95, 1.05, 3)
        for freq, bandwidth in zip(formants, FORMANT_BANDWIDTHS, strict=True):
            segment = segment + 0.6 * _resonator(
                segment, freq_hz=min(freq, 0.45 * sr), bandwidth_hz=bandwidth, sr=sr)
        out[start:stop] = segment

    # consonants: high-passed noise bursts (fricatives), brighter for anger
    noise = rng.normal(0, 1, n) * consonant
    cutoff = min(0.45 * sr, 2500.0 + 1500.0 * (0.8 - tilt) / 0.2)
    b, a = scipy.signal.butter(2, cutoff, btype="highpass", fs=sr)
    out += scipy.signal.lfilter(b, a, noise) * 0.5

    # level: emotion loudness, random recording gain, then background noise
    rms = np.sqrt(np.mean(out**2)) + 1e-9
    gain_db = loudness_db + rng.uniform(-4.0, 4.0)
    out *= 0.05 * 10 ** (gain_db / 20) / rms
    noise_db = rng.uniform(-62, -48)
    background = np.convolve(rng.normal(0, 1, n), [1.0, 0.9], mode="same")
    out += background * 10 ** (noise_db / 20)
    peak = np.abs(out).max()
    if peak > 0.95:
        out *= 0.95 / peak
    return out.astype(np.float32)
