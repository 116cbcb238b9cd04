"""Augmentations of feature-matrix batches, and each clip's own length, for the training recipe.

Everything here is off in the paper's recipe (:data:`serlib.config.RECIPES`). Each function
draws from a :class:`numpy.random.Generator` that the caller seeds, so that a seed gives the
same augmented batches on every run and device; none touches torch's global random state.

- SpecAugment masks (Park et al., Interspeech 2019): time and frequency bands set to zero
  (the mean of the normalised features) inside each clip's own frames;
- a random circular time shift of each clip's own frames;
- a random stretch of the frequency axis (:func:`freq_warp`), akin to vocal tract length
  perturbation (Jaitly & Hinton, 2013): another speaker's formants, for log-mel inputs;
- random crops of a fixed window in training, and the half-overlapping windows that cover a
  clip at test time (:func:`crop_starts`);
- mixup (Zhang et al., ICLR 2018): convex combinations of two clips and of their losses;
- per-utterance normalisation (each clip by its own per-bin mean and std), and per-speaker
  normalisation (each clip by its speaker's per-bin mean and std over all the speaker's clips).

Batches are ``x`` (B, 1, F, T) float tensors with ``lengths`` (B,) int64 tensors: frames
``lengths[i]`` and later of clip ``i`` are padding.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:   # torch is imported where a function needs it (clip_frames does not)
    import torch

from serlib.errors import SerlibError


def clip_frames(durations_s, *, sample_rate: int, hop_length: int, max_seconds: float,
                n_frames: int) -> np.ndarray:
    """Each clip's own frames: those centred inside its first ``min(duration, max_seconds)``.

    Parameters
    ----------
    durations_s : array-like of float, shape (N,)
        Clip durations in seconds (a selection's ``duration_s`` column).
    sample_rate : int
        Hz, of the features.
    hop_length : int
        Samples between frames.
    max_seconds : float
        s; clips are cut to it.
    n_frames : int
        Frames of every (padded) feature matrix.

    Returns
    -------
    np.ndarray of int64, shape (N,)
        In ``[1, n_frames]``: frame ``t`` (centred on sample ``t * hop_length``) is the clip's
        while ``t * hop_length < n_samples``.
    """
    durations = np.asarray(durations_s, dtype=np.float64)
    if durations.ndim != 1 or not np.all(np.isfinite(durations)) or np.any(durations < 0):
        raise SerlibError("clip durations must be finite seconds >= 0, one per clip; got "
                          f"{durations[:5]!r}...")
    samples = np.round(np.minimum(durations, max_seconds) * sample_rate)
    frames = np.ceil(samples / hop_length).astype(np.int64)
    return np.clip(frames, 1, n_frames)


def utterance_normalise(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Each clip minus its own per-bin mean, over its std, over its own frames; padding -> 0.

    Parameters
    ----------
    x : np.ndarray, shape (N, F, T)
    lengths : np.ndarray of int, shape (N,)

    Returns
    -------
    np.ndarray of float32, shape (N, F, T)
    """
    keep = np.arange(x.shape[-1])[None, :] < np.asarray(lengths)[:, None]     # (N, T)
    keep = keep[:, None, :]
    n = keep.sum(axis=-1, keepdims=True)                                      # (N, 1, 1)
    mean = np.where(keep, x, 0).sum(axis=-1, keepdims=True, dtype=np.float64) / n
    var = (np.where(keep, x - mean, 0) ** 2).sum(axis=-1, keepdims=True) / n
    out = (x - mean) / np.maximum(np.sqrt(var), 1e-5)
    return np.where(keep, out, 0).astype(np.float32)


def normalise_own_frames(x: np.ndarray, lengths: np.ndarray, *, mean: np.ndarray,
                         std: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` per band over each clip's own frames; padding -> 0.

    Parameters
    ----------
    x : np.ndarray, shape (N, F, T)
    lengths : np.ndarray of int, shape (N,)
    mean, std : np.ndarray, shape (F,)

    Returns
    -------
    np.ndarray of float32, shape (N, F, T)
    """
    keep = np.arange(x.shape[-1])[None, None, :] < np.asarray(lengths)[:, None, None]
    out = (x - np.asarray(mean)[None, :, None]) / np.asarray(std)[None, :, None]
    return np.where(keep, out, 0).astype(np.float32, copy=False)


def speaker_normalise(x: np.ndarray, lengths: np.ndarray, speakers: np.ndarray) -> np.ndarray:
    """Each clip minus its speaker's per-bin mean, over its speaker's std; padding -> 0.

    A speaker's statistics are taken over the own frames of all of that speaker's clips in
    ``x`` (:func:`serlib.training.normalisation_stats`); no label is used, so a test
    speaker's statistics come from the speaker's (unlabelled) test clips.

    Parameters
    ----------
    x : np.ndarray, shape (N, F, T)
    lengths : np.ndarray of int, shape (N,)
    speakers : np.ndarray, shape (N,)
        Each clip's speaker.

    Returns
    -------
    np.ndarray of float32, shape (N, F, T)
    """
    from serlib.training import normalisation_stats

    lengths, speakers = np.asarray(lengths), np.asarray(speakers)
    out = np.empty(x.shape, dtype=np.float32)
    for speaker in np.unique(speakers):
        rows = np.flatnonzero(speakers == speaker)
        mean, std = normalisation_stats(x[rows], lengths[rows])
        out[rows] = normalise_own_frames(x[rows], lengths[rows], mean=mean, std=std)
    return out


def spec_augment(x: torch.Tensor, lengths: torch.Tensor, *, rng: np.random.Generator,
                 time_masks: int, time_mask_frames: int, freq_masks: int,
                 freq_mask_bins: int) -> torch.Tensor:
    """SpecAugment masks: a copy of ``x`` (B, 1, F, T) with bands set to zero.

    Each clip gets ``time_masks`` time bands of a width drawn uniformly from
    ``0..time_mask_frames`` frames, placed inside its own ``lengths[i]`` frames, and
    ``freq_masks`` bands of ``0..freq_mask_bins`` rows.
    """
    x = x.clone()
    n_bins = x.shape[2]
    for i, length in enumerate(lengths.tolist()):
        for _ in range(time_masks):
            width = int(rng.integers(0, min(time_mask_frames, length) + 1))
            start = int(rng.integers(0, length - width + 1))
            x[i, :, :, start:start + width] = 0
        for _ in range(freq_masks):
            width = int(rng.integers(0, min(freq_mask_bins, n_bins) + 1))
            start = int(rng.integers(0, n_bins - width + 1))
            x[i, :, start:start + width, :] = 0
    return x


def time_shift(x: torch.Tensor, lengths: torch.Tensor, *, rng: np.random.Generator,
               max_frames: int) -> torch.Tensor:
    """A copy of ``x`` (B, 1, F, T) with each clip's own frames rolled circularly by a shift
    drawn uniformly from ``-max_frames..max_frames`` (the padding stays where it is)."""
    import torch

    x = x.clone()
    for i, length in enumerate(lengths.tolist()):
        shift = int(rng.integers(-max_frames, max_frames + 1))
        if shift % length:
            x[i, :, :, :length] = torch.roll(x[i, :, :, :length], shifts=shift, dims=-1)
    return x


def freq_warp(x: torch.Tensor, *, rng: np.random.Generator, max_stretch: float
              ) -> torch.Tensor:
    """Each clip's frequency axis stretched by a factor ``a`` drawn uniformly from
    ``[1 - max_stretch, 1 + max_stretch]``, anchored at the lowest bin: output bin ``f`` takes
    the (linearly interpolated) input at bin ``f / a``; bins past the top repeat the top bin.

    Time is untouched (frames, and so each clip's padding, stay where they are). Meant for
    mel spectrograms, whose bins are ordered by frequency; an MFCC's rows are not.

    Parameters
    ----------
    x : torch.Tensor, shape (B, C, F, T)
    max_stretch : float
        In [0, 1); 0.1 = up to 10 % higher or lower formants.

    Returns
    -------
    torch.Tensor, shape (B, C, F, T)
    """
    import torch
    import torch.nn.functional as F

    if not 0 <= max_stretch < 1:
        raise SerlibError(f"max_stretch={max_stretch!r} must be in [0, 1)")
    if max_stretch == 0:
        return x                                          # exactly the identity
    a = torch.as_tensor(rng.uniform(1 - max_stretch, 1 + max_stretch, size=len(x)),
                        dtype=x.dtype, device=x.device)                          # (B,)
    theta = torch.zeros(len(x), 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1                                    # time (grid x): identity
    theta[:, 1, 1] = 1 / a                                # frequency (grid y): y / a ...
    theta[:, 1, 2] = 1 / a - 1                            # ... anchored at y = -1 (bin 0)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def random_crop(x: torch.Tensor, lengths: torch.Tensor, *, rng: np.random.Generator,
                frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random window of ``frames`` frames of each clip's own frames.

    Returns
    -------
    (x (B, 1, F, frames), lengths (B,))
        A clip shorter than the window keeps its start and is padded with zeros; its length
        is its own.
    """
    out = x.new_zeros((*x.shape[:3], frames))
    import torch

    new_lengths = torch.minimum(lengths, torch.full_like(lengths, frames))
    for i, length in enumerate(lengths.tolist()):
        start = int(rng.integers(0, max(length - frames, 0) + 1))
        n = min(frames, length)
        out[i, :, :, :n] = x[i, :, :, start:start + n]
    return out, new_lengths


def crop_starts(length: int, frames: int) -> list[int]:
    """Starts of the half-overlapping windows of ``frames`` frames that cover ``length``
    frames (the last ends at the clip's end); ``[0]`` for a clip no longer than a window."""
    if length <= frames:
        return [0]
    hop = max(frames // 2, 1)
    n = math.ceil((length - frames) / hop)
    return [min(k * hop, length - frames) for k in range(n + 1)]


def mixup(x: torch.Tensor, y: torch.Tensor, lengths: torch.Tensor, *,
          rng: np.random.Generator, alpha: float):
    """Mixup of a batch with a permutation of itself.

    Returns
    -------
    (x, y, y_other, lam, lengths)
        ``lam * x + (1 - lam) * x[perm]``, the two targets, lambda ~ Beta(alpha, alpha) and the
        longer of the two lengths; the loss is ``lam * L(y) + (1 - lam) * L(y_other)``.
    """
    if alpha <= 0:
        raise SerlibError(f"mixup alpha={alpha!r} must be > 0")
    lam = float(rng.beta(alpha, alpha))
    import torch

    perm = torch.from_numpy(rng.permutation(len(y))).to(y.device)
    mixed = lam * x + (1 - lam) * x[perm]
    return mixed, y, y[perm], lam, torch.maximum(lengths, lengths[perm.to(lengths.device)])


__all__ = [
    "clip_frames",
    "crop_starts",
    "mixup",
    "random_crop",
    "spec_augment",
    "time_shift",
    "utterance_normalise",
]
