"""The feature configuration: every signal parameter of the paper's features, explicit.

Tripathi et al. (2019) compute their features with librosa at 22,050 Hz with a hann window of
2048 samples, an FFT of 2048, a hop of 512, 128 mel bands in dB ("Spectrogram") and 40 MFCCs
from the same mel spectrum ("MFCC"), on clips of at most 6 s. Everything the paper leaves out
(padding, dB reference, mel scale ...) is a field here with a documented default, never a
library default: librosa and torchaudio disagree on most of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from serlib.errors import SerlibError

#: Bumped whenever the meaning of a field or the extraction code changes the numbers, so that
#: stores computed by an older serlib are not reused.
FORMAT_VERSION = 1

KINDS = ("spectrogram", "mfcc")
WINDOWS = ("hann", "hamming", "blackman")
PAD_MODES = ("constant", "reflect", "edge")
PAD_POLICIES = ("zeros", "wrap", "reflect")
RESAMPLE_TYPES = ("soxr_vhq", "soxr_hq", "soxr_mq", "soxr_lq", "soxr_qq")
MEL_NORMS = ("slaney", None)
MFCC_NORMS = ("ortho", None)


@dataclass(frozen=True)
class FeatureConfig:
    """Every parameter of the paper's log-mel spectrogram and MFCC features.

    Defaults are the paper's where it states them (sample rate, window, FFT size, hop, number
    of mel bands and MFCCs, 6 s clips) and otherwise librosa 0.11's, written out. Build one
    with :meth:`preset` and override fields with keywords.

    Parameters
    ----------
    kind : {"spectrogram", "mfcc"}
        ``"spectrogram"``: the mel power spectrogram in dB, shape (n_mels, n_frames).
        ``"mfcc"``: the DCT of that same dB mel spectrogram, shape (n_mfcc, n_frames), as
        ``librosa.feature.mfcc(S=...)`` computes it.
    sample_rate : int
        Hz; every clip is resampled to it (paper: 22,050).
    n_fft, win_length, hop_length : int
        Samples (paper: 2048, 2048, 512). ``win_length <= n_fft``; a shorter window is centred
        in the FFT frame, as librosa does.
    window : {"hann", "hamming", "blackman"}
        Periodic window (``scipy.signal.get_window(window, win_length, fftbins=True)``).
    center : bool
        Frame ``t`` is centred on sample ``t * hop_length`` (librosa's default, True).
    pad_mode : {"constant", "reflect", "edge"}
        How the signal is extended by ``n_fft // 2`` samples on each side when ``center``.
        ``"constant"`` (zeros) is librosa 0.11's default; it treats the world outside the clip
        as silence, which matches the zero padding of short clips.
    n_mels : int
        Mel bands (paper: 128).
    fmin, fmax : float
        Hz; band edges of the mel filterbank. ``fmax=None`` means ``sample_rate / 2`` (stored as
        None; :attr:`fmax_hz` resolves it, and :meth:`fingerprint` hashes the resolved value).
    htk : bool
        False: the Slaney (Auditory Toolbox) mel scale, librosa's default.
    mel_norm : {"slaney", None}
        "slaney": area-normalised triangles (librosa's default).
    power : {2.0, 1.0}
        Exponent of the STFT magnitude. 2.0: power spectrogram converted with ``power_to_db``;
        1.0: magnitude converted with ``amplitude_to_db``.
    db_ref : float or "max"
        Reference of the dB scale. Default 1.0 (a fixed reference): a clip's level is kept, and
        loudness is an emotion cue (anger is loud, sadness quiet) on a corpus recorded at fixed
        gain such as IEMOCAP. ``"max"`` (librosa's ``ref=np.max``) makes each clip's dB relative
        to its own peak (0 dB), which removes loudness; use it for corpora with uncontrolled gain.
        The paper does not say which it used.
    top_db : float or None
        dB; values below the clip's maximum minus ``top_db`` are clamped (librosa: 80). Together
        with ``amin`` this keeps a silent clip finite.
    amin : float
        Floor of the power (or magnitude) before the logarithm (librosa: 1e-10).
    n_mfcc : int
        MFCCs kept (paper: 40); at most ``n_mels``.
    dct_type : {1, 2, 3}
        DCT type for the MFCC (librosa: 2).
    mfcc_norm : {"ortho", None}
        DCT normalisation (librosa: "ortho").
    lifter : float
        Cepstral liftering coefficient; 0 disables it (librosa's default).
    max_seconds : float
        s; clips are cut to this length and shorter ones padded to it, so that every clip has
        exactly :attr:`n_frames` frames (paper: 6 s).
    pad_policy : {"zeros", "wrap", "reflect"}
        How clips shorter than ``max_seconds`` are filled. ``"zeros"`` (default) appends silence
        at the end: the padded frames sit at the dB floor and carry no invented speech.
        ``"wrap"`` repeats the clip; ``"reflect"`` mirrors it. The paper does not say.
    resample_type : {"soxr_hq", ...}
        Resampler quality (soxr high quality is librosa's default for ``librosa.load``).
    """

    kind: str = "spectrogram"
    sample_rate: int = 22050
    n_fft: int = 2048
    win_length: int = 2048
    hop_length: int = 512
    window: str = "hann"
    center: bool = True
    pad_mode: str = "constant"
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float | None = None
    htk: bool = False
    mel_norm: str | None = "slaney"
    power: float = 2.0
    db_ref: float | str = 1.0
    top_db: float | None = 80.0
    amin: float = 1e-10
    n_mfcc: int = 40
    dct_type: int = 2
    mfcc_norm: str | None = "ortho"
    lifter: float = 0.0
    max_seconds: float = 6.0
    pad_policy: str = "zeros"
    resample_type: str = "soxr_hq"

    def __post_init__(self) -> None:
        _validate(self)

    # ------------------------------------------------------------------ construction
    @classmethod
    def preset(cls, kind: str, **overrides: Any) -> FeatureConfig:
        """The paper's configuration for ``kind`` ("spectrogram" or "mfcc"), with overrides."""
        if kind not in KINDS:
            raise SerlibError(f"unknown feature kind {kind!r}; expected one of {KINDS}")
        return cls(kind=kind, **overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureConfig:
        """Rebuild a config from :meth:`to_dict` output; unknown keys raise SerlibError."""
        if not isinstance(data, dict):
            raise SerlibError(f"feature config must be a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"format_version"})
        if unknown:
            raise SerlibError(f"unknown feature config keys {unknown}")
        version = data.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise SerlibError(
                f"feature config format_version={version!r}; this serlib reads {FORMAT_VERSION}"
            )
        return cls(**{k: v for k, v in data.items() if k in names})

    def replace(self, **changes: Any) -> FeatureConfig:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ derived values
    @property
    def fmax_hz(self) -> float:
        """Upper mel band edge in Hz (``fmax`` or ``sample_rate / 2``)."""
        return float(self.sample_rate) / 2.0 if self.fmax is None else float(self.fmax)

    @property
    def n_features(self) -> int:
        """Rows of a feature matrix: ``n_mels`` for a spectrogram, ``n_mfcc`` for MFCC."""
        return self.n_mels if self.kind == "spectrogram" else self.n_mfcc

    @property
    def n_samples(self) -> int:
        """Samples of a clip after cutting/padding to ``max_seconds`` at ``sample_rate``."""
        return int(round(self.max_seconds * self.sample_rate))

    @property
    def n_frames(self) -> int:
        """Frames of every feature matrix (259 for 6 s at 22,050 Hz, hop 512, centred)."""
        if self.center:
            return 1 + self.n_samples // self.hop_length
        return 1 + (self.n_samples - self.n_fft) // self.hop_length

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_features, n_frames)`` of one clip's features."""
        return (self.n_features, self.n_frames)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """All fields plus ``format_version``, JSON-serialisable; inverse of :meth:`from_dict`."""
        out: dict[str, Any] = {"format_version": FORMAT_VERSION}
        out.update(dataclasses.asdict(self))
        return out

    def fingerprint(self) -> str:
        """Stable hash of the signal parameters: the first 16 hex digits of a sha256.

        Hashes the canonical JSON (sorted keys, ``fmax`` resolved) together with
        :data:`FORMAT_VERSION`, so equal features give equal fingerprints across runs and
        machines, and any changed parameter gives a new one.
        """
        canonical = self.to_dict()
        canonical["fmax"] = self.fmax_hz
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------- validation
def _bad(name: str, value: Any, why: str) -> SerlibError:
    return SerlibError(f"FeatureConfig.{name}={value!r}: {why}")


def _set(cfg: FeatureConfig, name: str, value: Any) -> None:
    object.__setattr__(cfg, name, value)


def _as_int(cfg: FeatureConfig, name: str, *, minimum: int) -> int:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise _bad(name, value, "must be an integer")
    value = int(value)
    if value < minimum:
        raise _bad(name, value, f"must be >= {minimum}")
    _set(cfg, name, value)
    return value


def _as_float(cfg: FeatureConfig, name: str, *, positive: bool = False) -> float:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(name, value, "must be a number")
    value = float(value)
    if not math.isfinite(value):
        raise _bad(name, value, "must be finite")
    if positive and value <= 0:
        raise _bad(name, value, "must be > 0")
    if not positive and value < 0:
        raise _bad(name, value, "must be >= 0")
    _set(cfg, name, value)
    return value


def _choice(cfg: FeatureConfig, name: str, choices: tuple) -> None:
    value = getattr(cfg, name)
    if value not in choices:
        raise _bad(name, value, f"expected one of {choices}")


def _validate(cfg: FeatureConfig) -> None:
    _choice(cfg, "kind", KINDS)
    _choice(cfg, "window", WINDOWS)
    _choice(cfg, "pad_mode", PAD_MODES)
    _choice(cfg, "pad_policy", PAD_POLICIES)
    _choice(cfg, "resample_type", RESAMPLE_TYPES)
    _choice(cfg, "mel_norm", MEL_NORMS)
    _choice(cfg, "mfcc_norm", MFCC_NORMS)
    for name in ("center", "htk"):
        if not isinstance(getattr(cfg, name), bool):
            raise _bad(name, getattr(cfg, name), "must be True or False")

    sr = _as_int(cfg, "sample_rate", minimum=1)
    n_fft = _as_int(cfg, "n_fft", minimum=2)
    win = _as_int(cfg, "win_length", minimum=1)
    if win > n_fft:
        raise _bad("win_length", win, f"must be <= n_fft={n_fft}")
    _as_int(cfg, "hop_length", minimum=1)
    n_mels = _as_int(cfg, "n_mels", minimum=1)
    n_mfcc = _as_int(cfg, "n_mfcc", minimum=1)
    if n_mfcc > n_mels:
        raise _bad("n_mfcc", n_mfcc, f"must be <= n_mels={n_mels}")
    dct_type = _as_int(cfg, "dct_type", minimum=1)
    if dct_type not in (1, 2, 3):
        raise _bad("dct_type", dct_type, "expected 1, 2 or 3")

    fmin = _as_float(cfg, "fmin")
    if cfg.fmax is not None:
        fmax = _as_float(cfg, "fmax", positive=True)
        if fmax > sr / 2:
            raise _bad("fmax", fmax, f"must be <= sample_rate / 2 = {sr / 2}")
    if fmin >= cfg.fmax_hz:
        raise _bad("fmin", fmin, f"must be < fmax={cfg.fmax_hz}")

    power = _as_float(cfg, "power", positive=True)
    if power not in (1.0, 2.0):
        raise _bad("power", power, "expected 2.0 (power, power_to_db) or 1.0 (amplitude_to_db)")
    if isinstance(cfg.db_ref, str):
        if cfg.db_ref != "max":
            raise _bad("db_ref", cfg.db_ref, 'expected a positive number or "max"')
    else:
        _as_float(cfg, "db_ref", positive=True)
    if cfg.top_db is not None:
        _as_float(cfg, "top_db", positive=True)
    _as_float(cfg, "amin", positive=True)
    _as_float(cfg, "lifter")
    max_seconds = _as_float(cfg, "max_seconds", positive=True)
    if cfg.n_frames < 1:
        raise _bad("max_seconds", max_seconds, f"gives no frame (n_fft={n_fft}, center=False)")
    if cfg.pad_mode == "reflect" and cfg.center and cfg.n_samples <= n_fft // 2:
        raise _bad("pad_mode", cfg.pad_mode, "reflect padding needs clips longer than n_fft // 2")


def feature_config_for(selection: Any, kind: str, **overrides: Any) -> FeatureConfig:
    """The feature config of ``kind`` for a selection: the paper's preset at the selection's
    clip length.

    Parameters
    ----------
    selection : pandas.DataFrame or path-like
        A selection table or its CSV (``serlib select``). Its ``max_seconds`` column (written
        by :func:`serlib.corpora.select_utterances`) sets ``FeatureConfig.max_seconds``; a
        table without it (an older serlib) gets the paper's 6 s.
    kind : {"spectrogram", "mfcc"}
    **overrides
        Other FeatureConfig fields (``max_seconds`` here overrides the selection's).

    Returns
    -------
    FeatureConfig
        ``FeatureConfig.preset(kind, max_seconds=<the selection's>, **overrides)``; its
        fingerprint, hence its store, differs for every clip length.
    """
    from serlib.corpora.selection import selection_max_seconds

    overrides.setdefault("max_seconds", selection_max_seconds(selection))
    return FeatureConfig.preset(kind, **overrides)
