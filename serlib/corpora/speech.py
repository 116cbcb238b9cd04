"""A small source-filter model of speech, with emotion acting on prosody and voice quality.

Not a synthesiser anyone would listen to for pleasure, but it has what a spectrogram model of
emotion sees in speech:

- a glottal source: Rosenberg glottal-flow pulses (open quotient, speed quotient), differentiated
  for lip radiation, following a pitch contour (syllable targets, accents, declination) with
  cycle-to-cycle jitter and shimmer, and aspiration noise during the open phase (breathiness);
- a vocal tract: a cascade of four formant resonators per vowel (second-order all-pole sections,
  unit gain at 0 Hz, Klatt 1980), scaled by the speaker's vocal-tract length, nasal murmurs;
- consonants: band-passed fricative noise (/s/-like and /sh/-like) and plosive bursts;
- rhythm: consonant-vowel syllables at a speaking rate, stressed syllables, phrase pauses;
- per-speaker pitch, vocal-tract scale, breathiness and expressiveness; per-session microphone
  colouring and room reverberation; random recording gain and background noise.

Emotions shift the prosody as the literature describes them (Scherer 2003; Banse & Scherer 1996;
Gobl & Ni Chasaide 2003): anger is louder, brighter (flatter spectral tilt, pressed voice with a
short open phase), faster and higher; sadness lower, slower, quieter, darker, breathier and
narrower in pitch range; happiness higher with a wider range and a little faster; neutral is the
speaker's baseline. Every per-utterance parameter is drawn around its emotion's mean with a
spread comparable to the differences between emotions, and each speaker expresses emotions with
their own strength, so the classes overlap: happiness sits between neutral and anger and is the
hardest to tell apart.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import scipy.fft
import scipy.signal

from serlib.errors import SerlibError

# Formants F1-F4 (Hz) of an adult male voice (Peterson & Barney 1952, rounded; F4 nominal).
VOWELS = np.array([
    [730, 1090, 2440, 3400],  # a
    [530, 1840, 2480, 3500],  # e
    [270, 2290, 3010, 3700],  # i
    [570, 840, 2410, 3300],   # o
    [300, 870, 2240, 3300],   # u
    [660, 1720, 2410, 3400],  # ae
    [490, 1350, 1690, 3300],  # er
], dtype=float)
NASAL = np.array([250.0, 1100.0, 2300.0, 3300.0])  # murmur of /m/, /n/
FORMANT_BANDWIDTHS = np.array([80.0, 100.0, 150.0, 250.0])
NASAL_BANDWIDTHS = np.array([120.0, 200.0, 250.0, 300.0])


@dataclass(frozen=True)
class Prosody:
    """Mean prosody and voice quality of one emotion, relative to the speaker's neutral voice.

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
        Pole of a one-pole low-pass on the glottal source, in [0, 1); higher is darker.
    breathiness : float
        Level of aspiration noise relative to the voiced source.
    open_quotient : float
        Fraction of each glottal period the glottis is open: short for a pressed (tense,
        bright) voice, long for a lax or breathy one.
    """

    pitch_ratio: float
    pitch_range_semitones: float
    rate_ratio: float
    loudness_db: float
    tilt: float
    breathiness: float
    open_quotient: float


EMOTIONS: dict[str, Prosody] = {
    "neutral": Prosody(1.00, 2.0, 1.00, 0.0, 0.80, 0.10, 0.60),
    "happiness": Prosody(1.12, 3.4, 1.07, 2.0, 0.75, 0.09, 0.55),
    "sadness": Prosody(0.91, 1.3, 0.84, -4.0, 0.88, 0.20, 0.70),
    "anger": Prosody(1.17, 2.8, 1.15, 6.0, 0.58, 0.06, 0.42),
}
#: Per-utterance spread (standard deviations) around each emotion's means; ratios are
#: spread in log space.
SPREAD = Prosody(0.09, 0.9, 0.12, 3.0, 0.06, 0.05, 0.06)


@dataclass(frozen=True)
class Speaker:
    """A voice, fixed per speaker name.

    Attributes
    ----------
    f0_hz : float
        Base pitch (Hz).
    formant_scale : float
        Formants multiply by it (shorter vocal tract: higher).
    breathiness : float
        Added to every emotion's breathiness.
    expressiveness : float
        How far this speaker's emotions move from their neutral voice (1: the means of
        :data:`EMOTIONS`).
    """

    f0_hz: float
    formant_scale: float
    breathiness: float = 0.0
    expressiveness: float = 1.0


def _name_seed(name: str) -> int:
    return sum(ord(c) * 31**i for i, c in enumerate(name)) % (2**32)


def speaker_voice(speaker: str) -> Speaker:
    """A fixed voice per IEMOCAP-style speaker name (``Ses01F``; the last letter is the gender)."""
    rng = np.random.default_rng(_name_seed(speaker))
    female = speaker.endswith("F")
    return Speaker(
        f0_hz=(205.0 if female else 115.0) * float(np.exp(rng.normal(0, 0.08))),
        formant_scale=(1.16 if female else 1.0) * float(np.exp(rng.normal(0, 0.03))),
        breathiness=float(rng.uniform(0.0, 0.06)) + (0.03 if female else 0.0),
        expressiveness=float(np.exp(rng.normal(0, 0.2))),
    )


def _emotion_for(voice: Speaker, emotion: str) -> Prosody:
    """The emotion's means as this speaker expresses them (scaled distance from neutral)."""
    neutral, target = EMOTIONS["neutral"], EMOTIONS[emotion]
    e = voice.expressiveness
    moved = {}
    for f in fields(Prosody):
        a, b = getattr(neutral, f.name), getattr(target, f.name)
        moved[f.name] = a * (b / a) ** e if f.name.endswith("ratio") else a + e * (b - a)
    return replace(neutral, **moved)


def _formant_sos(formants: np.ndarray, bandwidths: np.ndarray, *, sr: int) -> np.ndarray:
    """Cascade of second-order resonators, unit gain at 0 Hz: sos array of shape (4, 6)."""
    r = np.exp(-np.pi * bandwidths / sr)
    theta = 2 * np.pi * np.minimum(formants, 0.45 * sr) / sr
    a1, a2 = -2 * r * np.cos(theta), r * r
    sos = np.zeros((len(formants), 6))
    sos[:, 0] = 1 + a1 + a2
    sos[:, 3], sos[:, 4], sos[:, 5] = 1.0, a1, a2
    return sos


def _rosenberg(frac: np.ndarray, *, open_quotient: float, speed_quotient: float) -> np.ndarray:
    """Glottal flow (0..1) at each position ``frac`` in [0, 1) of its period (Rosenberg 1971).

    The flow rises as a half cosine for ``open_quotient * speed_quotient / (1 +
    speed_quotient)`` of the period, falls as a quarter cosine, and is zero while closed.
    Evaluated from a fine table of one period (linear interpolation), which is much faster
    than the cosines per sample.
    """
    t_open = open_quotient * speed_quotient / (1 + speed_quotient)
    t_close = open_quotient / (1 + speed_quotient)
    grid = np.linspace(0.0, 1.0, 2049)
    rising = 0.5 * (1 - np.cos(np.pi * np.minimum(grid / t_open, 1.0)))
    falling = np.cos(0.5 * np.pi * np.clip((grid - t_open) / t_close, 0.0, 1.0))
    table = np.where(grid < t_open, rising, falling)
    return np.interp(frac, grid, table)


def _room(session: str, *, sr: int) -> tuple[np.ndarray, float]:
    """A session's room impulse response (exponentially decaying noise) and mic tilt pole."""
    rng = np.random.default_rng(_name_seed(session) + 7)
    rt60 = rng.uniform(0.15, 0.35)
    n = int(rt60 * sr)
    decay = np.exp(-6.9 * np.arange(n) / n)  # -60 dB at rt60
    ir = rng.normal(0, 1, n) * decay
    ir *= rng.uniform(0.15, 0.3) / np.sqrt(np.sum(ir**2))  # reverberant vs direct energy
    ir[0] = 1.0
    return ir, float(rng.uniform(-0.25, 0.25))


def _hann(n: int) -> np.ndarray:
    return np.hanning(n + 2)[1:-1] if n > 0 else np.zeros(0)


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
        Hz (>= 8000).
    emotion : {"neutral", "happiness", "sadness", "anger"}
        Sets the means of the prosody parameters (see :data:`EMOTIONS`); the draw around
        them depends on ``seed``.
    speaker : str
        Speaker name, e.g. ``"Ses01F"``; fixes the voice (:func:`speaker_voice`), and its
        first five characters fix the room and microphone.
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
    mean = _emotion_for(voice, emotion)
    sr = sample_rate
    n = max(1, round(duration_s * sr))

    # this utterance's prosody: the emotion's means plus overlapping noise
    pitch = voice.f0_hz * mean.pitch_ratio * np.exp(rng.normal(0, SPREAD.pitch_ratio))
    pitch_range = max(0.3, mean.pitch_range_semitones + rng.normal(0, SPREAD.pitch_range_semitones))
    rate = 4.0 * mean.rate_ratio * np.exp(rng.normal(0, SPREAD.rate_ratio))
    loudness_db = mean.loudness_db + rng.normal(0, SPREAD.loudness_db)
    tilt = float(np.clip(mean.tilt + rng.normal(0, SPREAD.tilt), 0.3, 0.95))
    breath = max(0.0, mean.breathiness + voice.breathiness + rng.normal(0, SPREAD.breathiness))
    open_quotient = float(np.clip(mean.open_quotient + rng.normal(0, SPREAD.open_quotient),
                                  0.3, 0.9))

    # syllable plan: consonant (fricative, burst or nasal), vowel, gap; phrase pauses
    envelope = np.zeros(n)  # voiced amplitude
    targets = np.zeros(n)  # pitch targets (semitones)
    fricative = np.zeros((2, n))  # /s/-like and /sh/-like noise envelopes
    burst = np.zeros(n)
    segments: list[tuple[int, int, np.ndarray, np.ndarray]] = []  # voiced stretches
    t = int(rng.uniform(0.05, 0.25) * sr)
    while t < n - int(0.05 * sr):
        syllable = int(sr / rate * np.exp(rng.normal(0, 0.25)))
        stressed = rng.random() < 0.3
        kind = rng.choice(4, p=[0.3, 0.2, 0.3, 0.2])  # s, sh, burst, nasal
        c_len = max(1, int(syllable * rng.uniform(0.15, 0.35)))
        c_end = min(n, t + c_len)
        level = rng.uniform(0.2, 0.5)
        if kind < 2:
            fricative[kind, t:c_end] = _hann(c_end - t) * level
        elif kind == 2:  # closure (silence), then a short decaying burst
            b_len = min(c_end - t, int(rng.uniform(0.01, 0.03) * sr))
            start = c_end - b_len
            burst[start:c_end] = np.exp(-np.arange(b_len) / max(1.0, 0.3 * b_len)) * level
        else:  # nasal murmur: quiet, voiced, low formants
            envelope[t:c_end] = _hann(c_end - t) * 0.3
            targets[t:c_end] = rng.uniform(-pitch_range, pitch_range)
            segments.append((t, c_end, NASAL * voice.formant_scale, NASAL_BANDWIDTHS))
        v_len = max(int(syllable * rng.uniform(0.5, 0.7)), int(0.04 * sr))
        v_end = min(n, c_end + v_len)
        if v_end > c_end:
            accent = 1.4 if stressed else 1.0
            envelope[c_end:v_end] = _hann(v_end - c_end) ** 0.5 * accent
            targets[c_end:v_end] = rng.uniform(-pitch_range, pitch_range) + (
                0.8 * pitch_range if stressed else 0.0)
            formants = VOWELS[rng.integers(len(VOWELS))] * voice.formant_scale
            segments.append((c_end, v_end, formants * rng.uniform(0.95, 1.05, 4),
                             FORMANT_BANDWIDTHS * rng.uniform(0.9, 1.2, 4)))
        t = v_end + int(syllable * rng.uniform(0.0, 0.2))
        if rng.random() < 0.12:
            t += int(rng.uniform(0.15, 0.5) * sr)

    # pitch contour (semitones): syllable targets smoothed on a 5-ms grid, plus declination
    hop = max(1, sr // 200)
    grid = np.arange(0, n, hop)
    kernel = np.hanning(25)  # 120 ms
    smooth = np.convolve(targets[grid], kernel / kernel.sum())[12: 12 + len(grid)]
    contour = np.interp(np.arange(n), grid, smooth) + np.linspace(1.5, -1.5, n)
    f0 = pitch * 2.0 ** (contour / 12.0)
    # cycle-to-cycle jitter (about 1 %) and shimmer (about 0.4 dB), one draw per period
    period = np.cumsum(f0 / sr).astype(np.int64)
    jitter = rng.normal(0, 0.01, period[-1] + 2)
    phase = np.cumsum(f0 * (1 + jitter[period]) / sr)
    period = phase.astype(np.int64)
    shimmer = np.exp(rng.normal(0, 0.05, period[-1] + 2))[period]

    # glottal source: differentiated Rosenberg flow (lip radiation), darkened by the tilt pole
    flow = _rosenberg(phase % 1.0, open_quotient=open_quotient,
                      speed_quotient=rng.uniform(2.0, 3.0))
    source = scipy.signal.lfilter([1.0 - tilt], [1.0, -tilt], np.diff(flow, prepend=0.0))
    voiced = envelope > 0
    if voiced.any():
        source /= np.sqrt(np.mean(source[voiced] ** 2)) + 1e-12
    # aspiration: noise while the glottis is open, gently low-passed like the source
    # (one white noise serves aspiration and consonants: they never sound at the same time)
    white = rng.standard_normal(n)
    aspiration = scipy.signal.lfilter([1.0 - 0.5 * tilt], [1.0, -0.5 * tilt], white)
    aspiration *= (0.3 + flow) * breath * 0.3
    excitation = (source + aspiration) * shimmer * envelope

    # vocal tract: each voiced stretch through its formant cascade
    out = np.zeros(n)
    for start, stop, formants, bandwidths in segments:
        out[start:stop] = scipy.signal.sosfilt(
            _formant_sos(formants, bandwidths, sr=sr), excitation[start:stop])
    if voiced.any():
        out /= np.sqrt(np.mean(out[voiced] ** 2)) + 1e-12

    # consonants: band-passed noise for fricatives, broadband bursts
    scale = voice.formant_scale
    for k, (low, high) in enumerate([(3800.0, 7000.0), (1800.0, 3800.0)]):
        if fricative[k].any():
            band = np.minimum([low * scale, high * scale], 0.45 * sr)
            sos = scipy.signal.butter(2, band, btype="bandpass", fs=sr, output="sos")
            out += scipy.signal.sosfilt(sos, white) * fricative[k] * 0.6
    out += scipy.signal.lfilter([1.0, 0.5], [1.0], white) * burst * 0.6

    # recording: session room and microphone, emotion loudness, gain, background noise
    ir, mic_tilt = _room(speaker[:5], sr=sr)
    size = scipy.fft.next_fast_len(n + len(ir), real=True)
    out = scipy.fft.irfft(scipy.fft.rfft(out, size) * scipy.fft.rfft(ir, size), size)[:n]
    out = scipy.signal.lfilter([1.0, -mic_tilt], [1.0], out)
    rms = np.sqrt(np.mean(out**2)) + 1e-9
    gain_db = loudness_db + rng.uniform(-4.0, 4.0)
    out *= 0.05 * 10 ** (gain_db / 20) / rms
    noise_db = rng.uniform(-62, -48)
    background = scipy.signal.lfilter([1.0], [1.0, -0.9], rng.normal(0, 1, n)) * 0.45
    out += background * 10 ** (noise_db / 20)
    peak = np.abs(out).max()
    if peak > 0.95:  # a limiter, as a recording chain would have
        out *= 0.95 / peak
    return out.astype(np.float32)
