"""The same features in torch: batched, on any device (a GPU for large corpora).

:class:`TorchFeatureExtractor` reproduces :func:`serlib.features.extract` after resampling:
the waveform must already be at ``config.sample_rate`` and ``config.n_samples`` long (use
:func:`serlib.features.prepare_waveform`, which resamples with soxr on the CPU; resampling is
cheap next to the STFT and soxr has no torch counterpart with the same filter).

Each step is the librosa one written as tensors:

- window: ``scipy.signal.get_window(window, win_length, fftbins=True)`` (periodic), centred in
  ``n_fft`` as librosa does, a registered buffer;
- centring: ``n_fft // 2`` samples of ``pad_mode`` padding each side ("edge" = torch
  "replicate"), then ``torch.stft(center=False)``;
- mel: ``librosa.filters.mel`` as a (n_mels, 1 + n_fft // 2) buffer, a matrix product;
- dB: ``10 log10(max(S, amin)) - 10 log10(max(amin, ref))`` with ``ref`` fixed or the clip's
  max, then each clip clamped at its own max minus ``top_db`` (``power=1``: ``20 log10``);
- MFCC: a DCT matrix (``scipy.fft.dct`` of the identity, type and norm of the config) with the
  lifter folded in, applied to the dB mel spectrogram (in float64).

Tolerance against the librosa path (tests/test_features_torch.py on the CPU, speech-like,
noise, quiet and silent clips, both kinds, several configs; tests/test_cuda.py on a GPU). As
librosa, the STFT runs in float64 and is rounded to complex64 (except on MPS, which has no
float64), and the MFCC's DCT runs in float64; the mel product and dB are float32. Measured max
abs difference: spectrogram 3e-5 dB, MFCC 1.2e-4 (5e-4 with a lifter of 22), on the CPU and on
an H100 alike. The tests assert 1e-4 dB (spectrogram) and 1e-3 (MFCC). A float32 FFT (cuFFT)
was 1.2e-3 dB off on speech-like clips: the bins far below a frame's peak lose their precision.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
import scipy.signal
import torch
import torch.nn.functional as F
from torch import nn

from serlib.errors import SerlibError
from serlib.features.config import FeatureConfig

_TORCH_PAD = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


def dct_matrix(config: FeatureConfig) -> np.ndarray:
    """The MFCC transform of ``config`` as a matrix, lifter included.

    Returns
    -------
    np.ndarray, float64, shape (n_mfcc, n_mels)
        ``dct_matrix(c) @ db`` equals ``librosa.feature.mfcc(S=db, n_mfcc=..., dct_type=...,
        norm=..., lifter=...)`` for ``db`` of shape (n_mels, n_frames).
    """
    basis = scipy.fft.dct(
        np.eye(config.n_mels), axis=0, type=config.dct_type, norm=config.mfcc_norm
    )[: config.n_mfcc]
    if config.lifter > 0:
        k = np.arange(1, 1 + config.n_mfcc, dtype=np.float64)
        basis = basis * (1 + (config.lifter / 2) * np.sin(np.pi * k / config.lifter))[:, None]
    return basis


class TorchFeatureExtractor(nn.Module):
    """Batched log-mel spectrogram / MFCC, matching the librosa path.

    Parameters
    ----------
    config : FeatureConfig

    Notes
    -----
    Buffers are float32; ``.double()`` runs everything in float64. Input of another dtype is
    cast to the buffers' dtype.
    """

    def __init__(self, config: FeatureConfig):
        super().__init__()
        from serlib.features.extract import config_filterbank

        self.config = config
        window = scipy.signal.get_window(config.window, config.win_length, fftbins=True)
        left = (config.n_fft - config.win_length) // 2
        window = np.pad(window, (left, config.n_fft - config.win_length - left))
        self.register_buffer("window", torch.from_numpy(window.astype(np.float32)))
        mel = np.asarray(config_filterbank(config), dtype=np.float32)
        self.register_buffer("mel_basis", torch.from_numpy(mel.copy()))
        self.register_buffer("dct", torch.from_numpy(dct_matrix(config)))  # float64, see forward

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Features of a batch of prepared waveforms.

        Parameters
        ----------
        waveforms : torch.Tensor, shape (B, config.n_samples)
            Mono, at ``config.sample_rate``, cut/padded by ``prepare_waveform``.

        Returns
        -------
        torch.Tensor, shape (B, config.n_features, config.n_frames)
        """
        c = self.config
        if waveforms.ndim != 2 or waveforms.shape[-1] != c.n_samples:
            raise SerlibError(
                f"waveforms of shape {tuple(waveforms.shape)}: expected (B, {c.n_samples}) "
                "(prepare_waveform gives each clip that length)"
            )
        x = waveforms.to(self.window.dtype)
        if c.center:
            half = c.n_fft // 2
            mode = _TORCH_PAD[c.pad_mode]
            x = F.pad(x[:, None, :], (half, half), mode=mode)[:, 0, :]  # (B, n + n_fft)
        # As librosa: the FFT in float64, rounded to complex64 (a float32 FFT loses the bins
        # far below each frame's peak: 1.2e-3 dB off on the GPU). MPS has no float64.
        fft_dtype = x.dtype if x.device.type == "mps" else torch.float64
        stft = torch.stft(
            x.to(fft_dtype), n_fft=c.n_fft, hop_length=c.hop_length, win_length=c.n_fft,
            window=self.window.to(fft_dtype), center=False, return_complex=True,
        )  # (B, 1 + n_fft // 2, T)
        if x.dtype == torch.float32:
            stft = stft.to(torch.complex64)
        spec = stft.abs() ** c.power
        mel = torch.matmul(self.mel_basis, spec)  # (B, n_mels, T)
        db = self._to_db(mel)
        if c.kind == "spectrogram":
            return db
        # the DCT sums n_mels bands into a c0 in the thousands: float64 keeps it exact (cheap)
        dct = self.dct.to(fft_dtype)
        return torch.matmul(dct, db.to(fft_dtype)).to(db.dtype)  # (B, n_mfcc, T)

    def _to_db(self, mel: torch.Tensor) -> torch.Tensor:
        c = self.config
        scale = 10.0 if c.power == 2.0 else 20.0  # power_to_db / amplitude_to_db
        amin = torch.as_tensor(c.amin, dtype=mel.dtype, device=mel.device)
        db = scale * torch.log10(torch.maximum(mel, amin))
        if c.db_ref == "max":
            ref = mel.amax(dim=(-2, -1), keepdim=True)  # per clip, as ref=np.max
        else:
            ref = torch.as_tensor(c.db_ref, dtype=mel.dtype, device=mel.device)
        db = db - scale * torch.log10(torch.maximum(ref, amin))
        if c.top_db is not None:
            floor = db.amax(dim=(-2, -1), keepdim=True) - c.top_db  # per clip
            db = torch.maximum(db, floor)
        return db
