"""Is the audio what its header says? Bandwidth, clips cut mid-speech, constant durations.

A corpus can reach us changed: resampled from 16 kHz to 22,050 Hz (its header then says
22,050 Hz, but nothing lies above 8 kHz and the top mel bands are empty), cut to a fixed length
(every clip the same duration, many of them still sounding in their last frames), or padded
with silence. None of this shows in the file headers; it shows in the samples. This module
measures it, clip by clip, and sums it up for a corpus:

- **band limit**: the Nyquist frequency of the rate the audio really had. For each standard
  rate below the header's, the mean power just below its Nyquist frequency is compared with
  the mean power just above; a drop of ``min_drop_db`` (30 dB) or more within a few hundred
  hertz is a resampling filter's edge, not speech (whose spectrum falls smoothly).
  :func:`energy_above` and :func:`effective_bandwidth` give the same fact as numbers: the share
  of the energy above a frequency, and the frequency below which a given share lies.
- **cut mid-speech**: the level of the last 100 ms relative to the whole clip
  (:func:`tail_level_db`); a clip that ends in a pause or in padding is far below its mean
  level (digital silence: minus infinity), a clip cut while someone speaks is not (default
  threshold: -20 dB).
- **constant durations**: the share of clips whose duration is the most common one, to 10 ms
  (:func:`duration_spike`); a corpus cut to a fixed length has one spike at its longest value.

:func:`audit_corpus` runs the per-clip checks over a selection table, :func:`summarise_audit`
turns the table into a :class:`CorpusAudit` whose :meth:`CorpusAudit.findings` are the
sentences a chapter prints.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.signal

from serlib.errors import SerlibError

#: Sample rates that audio is commonly recorded or distributed at (Hz), candidates for the
#: rate that band-limited audio really had.
STANDARD_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)

#: Welch segment length (samples): about 90 ms at 22,050 Hz, 11-Hz bins.
_SEGMENT = 2048


def _check_waveform(y, sample_rate) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 2:                                     # (channels, n_samples): mix down
        y = y.mean(axis=0)
    if y.ndim != 1 or y.size == 0:
        raise SerlibError(f"waveform of shape {np.shape(y)}: expected (n_samples,) or "
                          "(channels, n_samples), non-empty")
    if not np.all(np.isfinite(y)):
        raise SerlibError("waveform has NaN or infinite samples; expected finite samples")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, np.integer)) \
            or not sample_rate > 0:
        raise SerlibError(f"sample_rate={sample_rate!r}: expected a positive number (Hz)")
    return y


def power_spectrum(y, *, sample_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean power spectral density of a clip (Welch, Hann segments of 2048 samples, half
    overlapping; shorter clips: one segment of their length).

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,) or (channels, n_samples)
    sample_rate : float
        Hz.

    Returns
    -------
    frequencies_hz : np.ndarray, shape (n_bins,)
    psd : np.ndarray, shape (n_bins,)
        Power per Hz (arbitrary units: only ratios are used).
    """
    y = _check_waveform(y, sample_rate)
    frequencies, psd = scipy.signal.welch(y, fs=float(sample_rate), window="hann",
                                          nperseg=min(_SEGMENT, y.size), detrend=False)
    return frequencies, psd


def energy_above(y, *, sample_rate: float, cutoff_hz: float) -> float:
    """Share of the clip's energy above ``cutoff_hz`` (0 for a silent clip).

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,) or (channels, n_samples)
    sample_rate, cutoff_hz : float
        Hz; ``0 <= cutoff_hz <= sample_rate / 2``.

    Returns
    -------
    float
        In [0, 1]. Audio upsampled from 16 kHz has (nearly) none above 8,000 Hz.
    """
    if not 0 <= cutoff_hz <= sample_rate / 2:
        raise SerlibError(f"cutoff_hz={cutoff_hz!r}: expected a frequency in [0, "
                          f"{sample_rate / 2:g}] Hz (the Nyquist frequency)")
    frequencies, psd = power_spectrum(y, sample_rate=sample_rate)
    total = psd.sum()
    return float(psd[frequencies > cutoff_hz].sum() / total) if total > 0 else 0.0


def effective_bandwidth(y, *, sample_rate: float, energy_share: float = 0.9999) -> float:
    """The frequency below which ``energy_share`` of the clip's energy lies (Hz).

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,) or (channels, n_samples)
    sample_rate : float
        Hz.
    energy_share : float
        In (0, 1); default 99.99 %.

    Returns
    -------
    float
        Hz, at most ``sample_rate / 2``; 0 for a silent clip. Speech is quiet at high
        frequencies, so this is well below Nyquist even for full-band audio: compare
        clips or corpora with it, and use :func:`band_limit` to recognise resampled audio.
    """
    if not 0 < energy_share < 1:
        raise SerlibError(f"energy_share={energy_share!r}: expected a share in (0, 1)")
    frequencies, psd = power_spectrum(y, sample_rate=sample_rate)
    total = psd.sum()
    if total <= 0:
        return 0.0
    cumulative = np.cumsum(psd) / total
    return float(frequencies[min(int(np.searchsorted(cumulative, energy_share)),
                                 len(frequencies) - 1)])


@dataclass(frozen=True)
class BandLimit:
    """Where a clip's spectrum ends: ``limit_hz`` (the Nyquist frequency of ``source_rate``),
    with the drop in mean power across it; ``None`` fields when the clip uses its whole band."""

    source_rate: int | None
    limit_hz: float | None
    drop_db: float | None


def _band_power(frequencies, psd, low, high) -> float:
    inside = (frequencies >= low) & (frequencies <= high)
    return float(psd[inside].mean()) if inside.any() else math.nan


def band_limit(y, *, sample_rate: float, min_drop_db: float = 30.0) -> BandLimit:
    """The rate the audio really had, when it is lower than ``sample_rate``.

    For each rate ``r`` of :data:`STANDARD_RATES` below ``sample_rate``, the mean power in
    [0.85, 0.95] x r/2 is compared with that in [1.05, 1.25] x r/2 (at most 0.95 x the
    header's Nyquist frequency); the lowest ``r`` whose drop is at least ``min_drop_db`` is
    the source rate.

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,) or (channels, n_samples)
    sample_rate : float
        The header's rate (Hz).
    min_drop_db : float
        Drop across the edge that counts as a resampling filter (dB, > 0).

    Returns
    -------
    BandLimit
        All ``None`` when no edge is found (full-band audio, or a silent clip).
    """
    if not min_drop_db > 0:
        raise SerlibError(f"min_drop_db={min_drop_db!r}: expected a positive level (dB)")
    frequencies, psd = power_spectrum(y, sample_rate=sample_rate)
    nyquist = sample_rate / 2
    tiny = np.finfo(np.float64).tiny
    for rate in STANDARD_RATES:
        edge = rate / 2
        if rate >= sample_rate or 1.05 * edge >= 0.95 * nyquist:
            continue
        below = _band_power(frequencies, psd, 0.85 * edge, 0.95 * edge)
        above = _band_power(frequencies, psd, 1.05 * edge, min(1.25 * edge, 0.95 * nyquist))
        if not below > 0:                                   # nothing to lose below the edge
            continue
        drop = 10 * math.log10(below / max(above, tiny))
        if drop >= min_drop_db:
            return BandLimit(source_rate=rate, limit_hz=edge, drop_db=drop)
    return BandLimit(source_rate=None, limit_hz=None, drop_db=None)


def tail_level_db(y, *, sample_rate: float, tail_seconds: float = 0.1) -> float:
    """Level of the clip's last ``tail_seconds`` relative to the whole clip (dB).

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,) or (channels, n_samples)
    sample_rate : float
        Hz.
    tail_seconds : float
        Length of the end looked at (s); clips shorter than it compare with themselves (0 dB).

    Returns
    -------
    float
        ``10 log10(mean power of the tail / mean power of the clip)``: around 0 dB or above
        for a clip cut while sounding, far below for one ending in a pause, ``-inf`` for a
        tail of digital silence (padding), ``nan`` for a silent clip.
    """
    y = _check_waveform(y, sample_rate)
    if not tail_seconds > 0:
        raise SerlibError(f"tail_seconds={tail_seconds!r}: expected a positive duration (s)")
    n = max(1, int(round(tail_seconds * sample_rate)))
    whole, tail = float(np.mean(y ** 2)), float(np.mean(y[-n:] ** 2))
    if whole == 0:
        return math.nan
    return 10 * math.log10(tail / whole) if tail > 0 else -math.inf


def duration_spike(durations_s, *, resolution_s: float = 0.01) -> dict:
    """The most common duration and the share of clips that have it.

    Parameters
    ----------
    durations_s : array-like of float, shape (n_clips,)
        Seconds.
    resolution_s : float
        Durations are compared rounded to this (s).

    Returns
    -------
    dict
        ``duration_s`` (the most common, rounded), ``share`` (of the clips, in [0, 1]),
        ``n_clips``, ``is_longest`` (whether no clip is longer: a cut to a fixed length).
    """
    durations = np.asarray(durations_s, dtype=np.float64)
    if durations.ndim != 1 or durations.size == 0 or not np.all(np.isfinite(durations)):
        raise SerlibError(f"durations_s of shape {durations.shape}: expected finite "
                          "durations (s), one per clip, at least one")
    if not resolution_s > 0:
        raise SerlibError(f"resolution_s={resolution_s!r}: expected a positive duration (s)")
    steps = np.round(durations / resolution_s).astype(np.int64)
    values, counts = np.unique(steps, return_counts=True)
    top = int(np.argmax(counts))
    return {"duration_s": float(values[top] * resolution_s),
            "share": float(counts[top] / durations.size), "n_clips": int(durations.size),
            "is_longest": bool(values[top] == values.max())}


def audit_clip(path: str | os.PathLike, *, tail_seconds: float = 0.1,
               min_drop_db: float = 30.0) -> dict:
    """The per-clip checks of one audio file, at its own (header) rate, first channel mix.

    Returns
    -------
    dict
        ``header_rate_hz``, ``duration_s``, ``source_rate_hz`` (None: full band),
        ``limit_hz``, ``drop_db``, ``energy_above_limit`` (share of the energy above the limit,
        or above 8 kHz when no limit is found and the header allows it), ``bandwidth_hz``
        (99.99 % of the energy), ``tail_db``.
    """
    from serlib.features import load_audio

    y, sample_rate = load_audio(path)                   # (channels, n_samples), header rate
    y = y.mean(axis=0)
    limit = band_limit(y, sample_rate=sample_rate, min_drop_db=min_drop_db)
    cutoff = limit.limit_hz if limit.limit_hz is not None else min(8000.0, sample_rate / 2)
    return {
        "header_rate_hz": int(sample_rate),
        "duration_s": y.size / sample_rate,
        "source_rate_hz": limit.source_rate,
        "limit_hz": limit.limit_hz,
        "drop_db": limit.drop_db,
        "energy_above_limit": energy_above(y, sample_rate=sample_rate, cutoff_hz=cutoff),
        "bandwidth_hz": effective_bandwidth(y, sample_rate=sample_rate),
        "tail_db": tail_level_db(y, sample_rate=sample_rate, tail_seconds=tail_seconds),
    }


def audit_corpus(selection: pd.DataFrame, *, max_clips: int | None = 400, seed: int = 0,
                 tail_seconds: float = 0.1, min_drop_db: float = 30.0) -> pd.DataFrame:
    """:func:`audit_clip` for the clips of a selection table (a seeded sample of at most
    ``max_clips``; None: all).

    Parameters
    ----------
    selection : pd.DataFrame
        With columns ``utterance_id``, ``path`` (a selection table).
    max_clips : int or None
        Clips checked at most (the checks read each file whole).
    seed : int
        Which clips, when sampling.

    Returns
    -------
    pd.DataFrame
        One row per checked clip: ``utterance_id`` and :func:`audit_clip`'s keys.
    """
    missing = {"utterance_id", "path"} - set(selection.columns)
    if missing:
        raise SerlibError(f"selection lacks column(s) {', '.join(sorted(missing))}; expected "
                          "a selection table (serlib.corpora.read_selection)")
    if len(selection) == 0:
        raise SerlibError("selection is empty: no clip to audit")
    if max_clips is not None and (isinstance(max_clips, bool) or max_clips < 1):
        raise SerlibError(f"max_clips={max_clips!r}: expected a positive count or None")
    rows = selection
    if max_clips is not None and len(selection) > max_clips:
        rows = selection.sample(n=max_clips, random_state=seed).sort_index()
    return pd.DataFrame([{"utterance_id": row.utterance_id,
                          **audit_clip(row.path, tail_seconds=tail_seconds,
                                       min_drop_db=min_drop_db)}
                         for row in rows.itertuples()])


@dataclass(frozen=True)
class CorpusAudit:
    """What the checks found for a corpus (from :func:`summarise_audit`)."""

    n_checked: int
    header_rates_hz: tuple[int, ...]     # distinct header rates, most common first
    source_rate_hz: int | None           # the rate most clips really had, when band-limited
    band_limited_share: float            # clips with a resampling edge at that rate
    limit_hz: float | None
    median_drop_db: float | None
    median_bandwidth_hz: float           # 99.99 % of the energy, median over clips
    cut_share: float                     # clips louder than tail_threshold_db at their end
    padded_share: float                  # clips ending in digital silence
    tail_threshold_db: float
    tail_seconds: float
    duration: dict                       # duration_spike of the whole selection

    @property
    def upsampled(self) -> bool:
        """Most clips were band-limited below their header's rate."""
        return self.source_rate_hz is not None and self.band_limited_share >= 0.5

    @property
    def cut_to_length(self) -> bool:
        """A third or more of the clips share the longest duration (cut or padded to it)."""
        return self.duration["is_longest"] and self.duration["share"] >= 1 / 3

    def findings(self) -> list[str]:
        """One sentence per check, with the measured numbers (Markdown)."""
        rates = " / ".join(f"{r:,} Hz" for r in self.header_rates_hz)
        if self.upsampled:
            share = 100 * self.band_limited_share
            band = (f"**Bandwidth: the headers say {rates}, but {share:.0f} % of the"
                    f" {self.n_checked} clips checked have nothing above "
                    f"{self.limit_hz:,.0f} Hz** (the power drops by {self.median_drop_db:.0f} dB "
                    f"across it, median): the audio was recorded or resampled at "
                    f"{self.source_rate_hz:,} Hz and upsampled since. Features computed above "
                    f"{self.limit_hz:,.0f} Hz see only the resampling filter's leak.")
        else:
            band = (f"**Bandwidth**: the headers say {rates}, and the audio uses its whole "
                    f"band: {100 * self.band_limited_share:.0f} % of the {self.n_checked} "
                    "clips checked show a resampling edge below their header's Nyquist "
                    "frequency.")
        band += (f" 99.99 % of a clip's energy lies below {self.median_bandwidth_hz:,.0f} Hz "
                 "(median over clips).")
        tail = (f"**Clip ends**: {100 * self.cut_share:.0f} % of the clips are still sounding "
                f"in their last {1000 * self.tail_seconds:.0f} ms (level above "
                f"{self.tail_threshold_db:g} dB relative to the clip), "
                f"{100 * self.padded_share:.0f} % end in digital silence (padding)"
                + (": many were cut mid-speech (or recorded without a closing pause)."
                   if self.cut_share >= 0.25 else "."))
        spike = self.duration
        if self.cut_to_length:
            durations = (f"**Durations**: {100 * spike['share']:.0f} % of the "
                         f"{spike['n_clips']:,} clips last exactly {spike['duration_s']:.2f} s, "
                         "the longest duration of the corpus: the clips were cut (or padded) "
                         "to a fixed length, and the duration histogram is one spike.")
        else:
            durations = (f"**Durations**: the most common duration "
                         f"({spike['duration_s']:.2f} s) holds {100 * spike['share']:.0f} % of "
                         f"the {spike['n_clips']:,} clips: no sign of a fixed-length cut.")
        return [band, tail, durations]


def summarise_audit(table: pd.DataFrame, *, durations_s=None,
                    tail_threshold_db: float = -20.0, tail_seconds: float = 0.1) -> CorpusAudit:
    """Sum up :func:`audit_corpus`'s table.

    Parameters
    ----------
    table : pd.DataFrame
        From :func:`audit_corpus`.
    durations_s : array-like of float, optional
        Durations of every clip of the selection (its ``duration_s``) for the duration
        check; default: the checked clips' durations.
    tail_threshold_db : float
        A clip whose last ``tail_seconds`` are louder than this (relative to the clip) counts
        as cut mid-speech.
    tail_seconds : float
        The tail length :func:`audit_corpus` used (for the sentences).
    """
    if len(table) == 0:
        raise SerlibError("audit table is empty: no clip was checked")
    rates = table["header_rate_hz"].value_counts()
    limited = table["source_rate_hz"].dropna()
    source = int(limited.mode().iloc[0]) if len(limited) else None
    at_source = table["source_rate_hz"] == source if source is not None else \
        pd.Series(False, index=table.index)
    tails = table["tail_db"].astype(float)
    return CorpusAudit(
        n_checked=len(table),
        header_rates_hz=tuple(int(r) for r in rates.index),
        source_rate_hz=source,
        band_limited_share=float(at_source.mean()),
        limit_hz=None if source is None else source / 2,
        median_drop_db=None if source is None
        else float(table.loc[at_source, "drop_db"].median()),
        median_bandwidth_hz=float(table["bandwidth_hz"].median()),
        cut_share=float((tails > tail_threshold_db).mean()),
        padded_share=float(np.isneginf(tails).mean()),
        tail_threshold_db=float(tail_threshold_db),
        tail_seconds=float(tail_seconds),
        duration=duration_spike(table["duration_s"] if durations_s is None else durations_s),
    )


__all__ = [
    "STANDARD_RATES", "BandLimit", "CorpusAudit", "audit_clip", "audit_corpus", "band_limit",
    "duration_spike", "effective_bandwidth", "energy_above", "power_spectrum",
    "summarise_audit", "tail_level_db",
]
