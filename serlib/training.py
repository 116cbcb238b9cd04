"""Cross-validated training of the ResNet-18 under focal or softmax loss, resumable.

One call, :func:`run_cross_validation`, goes from a selection table to a run folder (its
format lives in :mod:`serlib.runs`)::

    out_dir/config.json        resolved TrainConfig + FeatureConfig + selection + commit
    out_dir/fold_<k>/          checkpoint.pt, metrics.json, predictions.csv, history.csv
    out_dir/predictions.csv    every test prediction with class probabilities
    out_dir/history.csv        per-epoch train/validation curves of every fold
    out_dir/summary.json       mean and std over folds of WA and UA, protocol, corpus, device

Each fold is written when it finishes (all its files at once), so a rerun of the same command
skips finished folds and, because every fold is seeded on its own, ends with the same numbers
as an uninterrupted run. The grid (:mod:`serlib.grid`) trains the same folds with the same
functions (:func:`prepare_run`, :func:`load_features`, :func:`train_folds`, :func:`finish`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from serlib import runs
from serlib.config import TrainConfig
from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES
from serlib.losses import class_weights, focal_loss
from serlib.metrics import classification_report_dict, unweighted_accuracy, weighted_accuracy
from serlib.models import Ensemble, ResNet18, build_model
from serlib.splits import make_folds, validation_split

#: Seed of seed-ensemble member m of a fold with seed s: s + m x this (member 0: s itself).
SEED_ENSEMBLE_STRIDE = 100_003


# ----------------------------------------------------------------------------- helpers
def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise SerlibError(f"device={name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SerlibError(f"device={name!r} but CUDA is not available here (use cpu or auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise SerlibError(f"device={name!r} but only {torch.cuda.device_count()} CUDA "
                          "device(s) are visible")
    if device.type not in ("cpu", "cuda"):
        try:   # mps, xpu, ...: usable only if a tensor can be made there
            torch.zeros(1, device=device)
        except (RuntimeError, AssertionError) as error:
            raise SerlibError(f"device={name!r} is not usable here ({str(error)[:120]}); "
                              "use cpu, cuda or auto") from None
        raise SerlibError(f"device={name!r}: serlib trains on cpu or cuda only")
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def normalisation_stats(x: np.ndarray, lengths: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Per-frequency-bin mean and std over clips and frames: (N, F, T) -> two (F,) arrays.

    With ``lengths`` (N,), over each clip's own frames only (padding left out)."""
    if lengths is None:
        mean = x.mean(axis=(0, 2), dtype=np.float64)
        std = x.std(axis=(0, 2), dtype=np.float64)
    else:
        keep = (np.arange(x.shape[-1])[None, :] < np.asarray(lengths)[:, None])[:, None, :]
        keep = np.broadcast_to(keep, x.shape)
        mean = x.mean(axis=(0, 2), dtype=np.float64, where=keep)
        std = x.std(axis=(0, 2), dtype=np.float64, where=keep)
    return mean.astype(np.float32), np.maximum(std, 1e-5).astype(np.float32)


def _criterion(config: TrainConfig, weights: torch.Tensor | None = None):
    """The training loss: focal (gamma) or softmax (cross-entropy), with ``config.alpha`` (focal
    only) or the fold's class ``weights`` (both losses) and ``config.label_smoothing``."""
    gamma = config.gamma if config.loss == "focal" else 0.0
    alpha = config.alpha if config.loss == "focal" else None
    if weights is not None:
        alpha = weights
    smoothing = config.label_smoothing
    return lambda logits, target: focal_loss(logits.float(), target, gamma=gamma, alpha=alpha,
                                             label_smoothing=smoothing)


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, *,
               total_steps: int | None = None, batches_per_epoch: int | None = None):
    """Learning-rate schedule: cosine to 0 or constant, after a linear warm-up when there is
    one (lr (k + 1) / (w + 1) in warm-up step or epoch k).

    Per epoch (the default): cosine over ``epochs``, warm-up of ``warmup_epochs``. Per
    optimizer step when ``config.step_schedule`` (``min_steps`` or ``warmup_steps``): cosine
    over ``total_steps``, warm-up of ``warmup_steps + warmup_epochs x batches_per_epoch``
    steps; the caller steps it after every batch."""
    if config.step_schedule:
        warmup = config.warmup_steps + config.warmup_epochs * batches_per_epoch
        if warmup >= total_steps:
            raise SerlibError(f"warm-up of {warmup} optimizer steps (warmup_steps="
                              f"{config.warmup_steps}, warmup_epochs={config.warmup_epochs}) "
                              f"is not shorter than the {total_steps} steps of training")
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: step_lr_factor(step, warmup=warmup, total=total_steps,
                                                   schedule=config.schedule))
    warmup, epochs = config.warmup_epochs, config.epochs
    if warmup == 0:
        return (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
                if config.schedule == "cosine" else None)

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        if config.schedule == "constant":
            return 1.0
        return 0.5 * (1 + np.cos(np.pi * (epoch - warmup) / (epochs - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def step_lr_factor(step: int, *, warmup: int, total: int, schedule: str) -> float:
    """The learning-rate factor of optimizer step ``step`` (0-based) of a per-step schedule:
    ``(step + 1) / (warmup + 1)`` during the warm-up, then 1 (``"constant"``) or a cosine
    from 1 to 0 over the remaining ``total - warmup`` steps (``"cosine"``)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    return float(0.5 * (1 + np.cos(np.pi * min(step - warmup, total - warmup)
                                   / (total - warmup))))


def batches_per_epoch(n_clips: int, batch_size: int) -> int:
    """Optimizer steps in one training epoch of ``n_clips`` clips: full batches, and the last
    partial one when it holds at least 2 clips (batch norm cannot train on one)."""
    return n_clips // batch_size + (1 if n_clips % batch_size >= 2 else 0)


def training_steps(n_clips: int, config: TrainConfig) -> tuple[int, int]:
    """(optimizer steps, epochs) of training on ``n_clips`` clips: ``epochs`` x
    :func:`batches_per_epoch`, or ``min_steps`` when that is more (then the last epoch is cut
    short at exactly ``min_steps``). The same ``min_steps`` gives the same number of steps on
    any corpus small enough to need them."""
    per_epoch = batches_per_epoch(n_clips, config.batch_size)
    if per_epoch < 1:
        raise SerlibError(f"{n_clips} training clip(s): too few for one batch of 2 or more")
    steps = max(config.epochs * per_epoch, config.min_steps)
    return steps, math.ceil(steps / per_epoch)


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam or SGD (momentum 0.9, Nesterov) as ``config`` says, in torch's fused form: one
    kernel updates every parameter. On a GPU the per-parameter updates of the default form
    dominate a dispatch-bound ResNet-18 step (H100, spectrogram batch of 32: 14.4 -> 8.0 ms
    in benchmarks/README.md); on the CPU the gain is small (about 1 %)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr,
                                weight_decay=config.weight_decay, fused=True)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True,
                           weight_decay=config.weight_decay, fused=True)


class _NormalisedRows:
    """Rows of a shared (N, 1, F, T) tensor, each bin normalised by ``mean`` and ``std`` (F,)
    when indexed: ``rows_view[i]`` is ``(raw[rows[i]] - mean) / std``, shape (b, 1, F, T)."""

    def __init__(self, raw: torch.Tensor, rows: np.ndarray, *, mean: np.ndarray,
                 std: np.ndarray):
        self.raw, self.device = raw, raw.device
        self.rows = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=raw.device)
        self.mean = torch.from_numpy(mean).to(raw.device).view(1, 1, -1, 1)
        self.std = torch.from_numpy(std).to(raw.device).view(1, 1, -1, 1)
        self.shape = (len(self.rows), *raw.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> torch.Tensor:
        # in the promoted dtype of the features and the float32 statistics, as numpy computes
        # the per-fold copy, then float32
        return ((self.raw[self.rows[index]] - self.mean) / self.std).float()

    def new_zeros(self, shape) -> torch.Tensor:
        return self.raw.new_zeros(shape, dtype=torch.float32)


class _Batches:
    """Mini-batches from tensors held in memory: (B, 1, F, T) inputs and (B,) targets, and
    optionally (B,) lengths (each clip's own frames; with ``own_frames`` a batch is cut to its
    longest clip and the model is given the lengths).

    Batches are in channels_last layout (on this project's 2-core CPUs a ResNet-18 step is
    1.3-1.5x faster so at widths >= 16, 1.3x at width 64 on the AMD one; see
    benchmarks/README.md). On CUDA the whole split is
    copied to the device once (from pinned memory, ``non_blocking``; the paper's 2,280 clips of
    128 x 259 float32 are 0.3 GB) and batches are gathered there. No file I/O per step.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, *, device: torch.device,
                 lengths: np.ndarray | None = None, own_frames: bool = False):
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
        self.y = torch.from_numpy(y.astype(np.int64))
        self.lengths = None if lengths is None else torch.from_numpy(
            np.asarray(lengths, dtype=np.int64))
        if own_frames and lengths is None:
            raise SerlibError("own_frames needs each clip's lengths")
        self.own_frames = own_frames
        self.device = device
        if device.type == "cuda":
            self.x = self.x.pin_memory().to(device, non_blocking=True)   # (N, 1, F, T)
            self.y = self.y.pin_memory().to(device, non_blocking=True)   # (N,)
            if self.lengths is not None:
                self.lengths = self.lengths.to(device)

    @classmethod
    def gathered(cls, raw: torch.Tensor, rows: np.ndarray, y: np.ndarray, *,
                 mean: np.ndarray, std: np.ndarray) -> _Batches:
        """Rows ``rows`` of ``raw`` (N, 1, F, T), a tensor shared with other folds (on its
        device), normalised as batches are gathered rather than copied whole: the same values
        as ``_Batches((features[rows] - mean) / std, ...)``, without a copy of the data per
        fold (corpus normalisation, every frame; what :mod:`serlib.batched` trains)."""
        batches = cls.__new__(cls)
        batches.x = _NormalisedRows(raw, rows, mean=mean, std=std)
        batches.y = torch.from_numpy(np.asarray(y).astype(np.int64)).to(raw.device)
        batches.lengths, batches.own_frames, batches.device = None, False, raw.device
        return batches

    def __len__(self) -> int:
        return len(self.y)

    def balanced_order(self, generator: torch.Generator) -> torch.Tensor:
        """An epoch of class-balanced draws: ``len(self)`` rows drawn with replacement, each
        with probability proportional to 1 / (its class's count); seeded by ``generator``."""
        y = self.y.cpu()
        counts = torch.bincount(y).double()
        weights = 1.0 / counts[y]
        return torch.multinomial(weights, len(y), replacement=True, generator=generator)

    def iterate(self, batch_size: int, *, generator: torch.Generator | None = None,
                order: torch.Tensor | None = None):
        """Yield (x (B, 1, F, T') channels_last, y (B,), lengths (B,) or None); in the given
        ``order``, else shuffled with ``generator`` (a CPU generator, so the order is the same
        on every device), else in order. T' = T, or the batch's longest clip (own_frames)."""
        n = len(self.y)
        if order is None:
            order = torch.randperm(n, generator=generator) if generator is not None \
                else torch.arange(n)
        order = order.to(self.x.device)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            if generator is not None and len(rows) < 2:
                continue  # batch norm cannot train on a single sample
            xb = self.x[rows]
            lb = None if self.lengths is None else self.lengths[rows]
            if self.own_frames:
                xb = xb[..., :int(lb.max())]
            yield xb.contiguous(memory_format=torch.channels_last), self.y[rows], lb

    def batches(self, batch_size: int, *, generator: torch.Generator | None = None):
        """:meth:`iterate` without the lengths: (x (B, 1, F, T) channels_last, y (B,))."""
        for xb, yb, _ in self.iterate(batch_size, generator=generator):
            yield xb, yb


class _Augmenter:
    """The training-time augmentations ``config`` asks for (:mod:`serlib.augment`), in the
    order crop, time shift, frequency warp, SpecAugment, mixup, drawn from one numpy generator
    seeded with the fold's seed (torch's random state is left alone)."""

    def __init__(self, config: TrainConfig, *, seed: int):
        self.config = config
        self.rng = np.random.default_rng([seed, 9])

    @staticmethod
    def wanted(config: TrainConfig) -> bool:
        return bool(config.crop_frames or config.time_shift_frames or config.time_masks
                    or config.freq_masks or config.mixup or config.freq_warp)

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, lb: torch.Tensor):
        """-> (x, lengths, y_other or None, lambda)."""
        from serlib import augment

        c, rng = self.config, self.rng
        if lb is None:
            lb = torch.full((len(yb),), xb.shape[-1], dtype=torch.int64, device=xb.device)
        if c.crop_frames:
            xb, lb = augment.random_crop(xb, lb, rng=rng, frames=c.crop_frames)
        if c.time_shift_frames:
            xb = augment.time_shift(xb, lb, rng=rng, max_frames=c.time_shift_frames)
        if c.freq_warp:
            xb = augment.freq_warp(xb, rng=rng, max_stretch=c.freq_warp)
        if c.time_masks or c.freq_masks:
            xb = augment.spec_augment(xb, lb, rng=rng, time_masks=c.time_masks,
                                      time_mask_frames=c.time_mask_frames,
                                      freq_masks=c.freq_masks, freq_mask_bins=c.freq_mask_bins)
        y_other, lam = None, 1.0
        if c.mixup:
            xb, yb, y_other, lam, lb = augment.mixup(xb, yb, lb, rng=rng, alpha=c.mixup)
        return xb.contiguous(memory_format=torch.channels_last), lb, y_other, lam


@contextlib.contextmanager
def _kernel_settings(device: torch.device):
    """Kernel choices for training on ``device``; the previous settings are restored afterwards.

    CPU: deterministic kernels only (the same seed gives the same numbers). CUDA: cuDNN
    autotuning (``cudnn.benchmark``: every batch has the same shape, so the fastest
    convolution kernels are found once); runs there are repeatable only up to floating-point
    reordering.
    """
    if device.type == "cpu":
        previous = (torch.are_deterministic_algorithms_enabled(),
                    torch.is_deterministic_algorithms_warn_only_enabled())
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
    elif device.type == "cuda":
        previous_benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = previous_benchmark
    else:
        yield


def _autocast(device: torch.device, *, amp: bool = True):
    # bf16 autocast on CUDA when ``amp`` (no loss scaling needed); plain float32 on CPU
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=amp and device.type == "cuda")


def _forward(model, xb: torch.Tensor, lb: torch.Tensor | None, own_frames: bool):
    return model(xb, lb) if own_frames else model(xb)


@torch.no_grad()
def predict_proba(model: torch.nn.Module, data: _Batches, *, batch_size: int,
                  device: torch.device, amp: bool = True, crop_frames: int = 0) -> np.ndarray:
    """Softmax probabilities, shape (N, C), in the order of ``data`` (bf16 autocast on CUDA
    when ``amp``). With ``crop_frames``, each clip's probabilities are the mean over the
    half-overlapping windows of that many frames that cover its own frames."""
    from serlib.augment import crop_starts

    model.eval()
    out = []
    for xb, _, lb in data.iterate(batch_size):
        if not crop_frames:
            with _autocast(device, amp=amp):
                logits = model(xb) if not data.own_frames else model(xb, lb)
            out.append(torch.softmax(logits.float(), dim=-1).cpu())
            continue
        lengths = [xb.shape[-1]] * len(xb) if lb is None else lb.tolist()
        windows, owner, own = [], [], []
        for i, length in enumerate(lengths):
            for start in crop_starts(length, crop_frames):
                window = xb.new_zeros((*xb.shape[1:3], crop_frames))
                n = min(crop_frames, length - start)
                window[..., :n] = xb[i, :, :, start:start + n]
                windows.append(window)
                owner.append(i)
                own.append(n)
        xw = torch.stack(windows).contiguous(memory_format=torch.channels_last)
        lw = torch.tensor(own, dtype=torch.int64, device=xb.device)
        with _autocast(device, amp=amp):
            logits = model(xw) if not data.own_frames else model(xw, lw)
        probs = torch.softmax(logits.float(), dim=-1).cpu()               # (n_windows, C)
        owner_t = torch.tensor(owner)
        total = torch.zeros(len(xb), probs.shape[1]).index_add_(0, owner_t, probs)
        out.append(total / torch.bincount(owner_t, minlength=len(xb))[:, None])
    if not out:                                             # no clips (an empty part)
        return np.zeros((0, len(PAPER_CLASSES)), dtype=np.float32)
    return torch.cat(out).numpy()


def train_one_epoch(model, data: _Batches, *, optimizer, criterion, batch_size: int,
                    generator: torch.Generator, device: torch.device, amp: bool = True,
                    augment: _Augmenter | None = None, balanced: bool = False,
                    max_batches: int | None = None, step_scheduler=None) -> float:
    """One pass over ``data`` in a seeded random order (bf16 autocast on CUDA when ``amp``);
    returns the mean training loss. ``balanced``: the epoch is
    :meth:`_Batches.balanced_order` instead; ``augment``: applied to every batch;
    ``max_batches``: stop after that many optimizer steps; ``step_scheduler``: stepped after
    every optimizer step (a per-step learning-rate schedule)."""
    model.train()
    # summed on the device and read once per epoch: no host sync per step on CUDA
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    order = data.balanced_order(generator) if balanced else None
    for step, (xb, yb, lb) in enumerate(data.iterate(batch_size, generator=generator,
                                                     order=order)):
        if max_batches is not None and step >= max_batches:
            break
        y_other = None
        if augment is not None:
            xb, lb, y_other, lam = augment(xb, yb, lb)
        with _autocast(device, amp=amp):
            if isinstance(model, Ensemble):                      # (M, B, C): one per member
                logits = model.member_logits(xb, lb if data.own_frames else None)
            else:
                logits = _forward(model, xb, lb, data.own_frames)[None]   # (1, B, C)
        # each member on its own loss (parameters are disjoint: the sum trains each as alone)
        loss = sum(criterion(member, yb) for member in logits)
        if y_other is not None:
            loss = lam * loss + (1 - lam) * sum(criterion(member, y_other) for member in logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step_scheduler is not None:
            step_scheduler.step()
        total += loss.detach().double() * len(yb) / len(logits)   # per member
        count += len(yb)
    return float(total) / max(count, 1)


# ----------------------------------------------------------------------------- one fold
@dataclass
class FoldParts:
    """One fold's data, split and loss as :func:`train_fold` prepares them (the batched path,
    :mod:`serlib.batched`, prepares each member the same way)."""

    seed: int                        # config.seed * 1000 + fold
    generator: torch.Generator       # the data order's draws
    fit_idx: np.ndarray              # rows trained on
    val_idx: np.ndarray              # rows that choose the epoch
    mean: np.ndarray                 # (F,) normalisation, from the fitting part only
    std: np.ndarray                  # (F,)
    fit: _Batches
    val: _Batches
    test: _Batches
    criterion: Callable


def prepare_fold(features: np.ndarray, labels: np.ndarray, train_idx: np.ndarray,
                 test_idx: np.ndarray, *, config: TrainConfig, fold: int, device: torch.device,
                 groups: np.ndarray | None = None,
                 lengths: np.ndarray | None = None,
                 shared: torch.Tensor | None = None,
                 speakers: np.ndarray | None = None) -> FoldParts:
    """Seed torch for ``fold``, split off its validation part and normalise its three parts
    (see :func:`train_fold` for the arguments); returns :class:`FoldParts`.

    ``shared``: ``features`` as a (N, 1, F, T) tensor (their dtype) on ``device`` that several
    folds share; the parts are then normalised as batches are gathered from it
    (:meth:`_Batches.gathered`) instead of copied whole (corpus normalisation and every
    frame only).

    ``speakers``: each clip's speaker, for ``normalisation="speaker"`` (default: ``groups``,
    which are the speakers under the session protocol)."""
    from serlib.augment import speaker_normalise, utterance_normalise

    seed = config.seed * 1000 + fold
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    if config.val_fraction == 0:                            # no validation part
        fit_idx, val_idx = np.sort(np.asarray(train_idx)), np.array([], dtype=np.int64)
    else:
        fit_idx, val_idx = validation_split(train_idx, labels, fraction=config.val_fraction,
                                            seed=seed, groups=groups)
    if not config.needs_lengths:
        lengths = None                                      # the paper's recipe: every frame
    elif lengths is None:
        lengths = np.full(len(labels), features.shape[-1], dtype=np.int64)
    else:
        lengths = np.clip(np.asarray(lengths, dtype=np.int64), 1, features.shape[-1])
        if lengths.shape != labels.shape:
            raise SerlibError(f"lengths must be one per clip ({len(labels)}), got shape "
                              f"{lengths.shape}")
    if speakers is None:
        speakers = groups
    if config.normalisation == "speaker" and speakers is None:
        raise SerlibError("TrainConfig.normalisation='speaker' needs each clip's speaker "
                          "(speakers), and none was given")
    if config.normalisation != "corpus":
        # each clip by its own or its speaker's statistics; the checkpoint's corpus
        # mean/std are the identity
        n_bins = features.shape[1]
        mean, std = np.zeros(n_bins, np.float32), np.ones(n_bins, np.float32)
    else:                                                   # (F,), training part only
        mean, std = normalisation_stats(
            features[fit_idx], None if not config.own_frames else lengths[fit_idx])

    if shared is not None and (config.normalisation != "corpus" or lengths is not None):
        raise SerlibError("shared features need corpus normalisation and every frame")

    seen = normed = None
    if config.normalisation == "speaker":                   # over the clips this fold sees
        seen = np.union1d(train_idx, test_idx)
        normed = speaker_normalise(features[seen], lengths[seen], np.asarray(speakers)[seen])

    def batches(rows):
        if shared is not None:
            return _Batches.gathered(shared, rows, labels[rows], mean=mean, std=std)
        if normed is not None:
            x = normed[np.searchsorted(seen, rows)]
        elif config.normalisation == "utterance":
            x = utterance_normalise(features[rows], lengths[rows])
        else:
            x = (features[rows] - mean[None, :, None]) / std[None, :, None]
        return _Batches(x, labels[rows], device=device,
                        lengths=None if lengths is None else lengths[rows],
                        own_frames=config.own_frames)

    weights = None
    if config.class_weights != "none":                      # from the fitting part only
        weights = class_weights(labels[fit_idx], n_classes=len(PAPER_CLASSES),
                                kind=config.class_weights, beta=config.beta).to(device)
    return FoldParts(seed=seed, generator=generator, fit_idx=fit_idx, val_idx=val_idx,
                     mean=mean, std=std, fit=batches(fit_idx), val=batches(val_idx),
                     test=batches(test_idx), criterion=_criterion(config, weights))


def new_network(config: TrainConfig, *, device: torch.device, n_fit: int):
    """A fresh network for ``config`` (from torch's current random state) in channels_last on
    ``device``, with its optimizer and learning-rate scheduler for ``n_fit`` fitting clips:
    ``(model, optimizer, scheduler)``."""
    total_steps, _ = training_steps(n_fit, config)
    model = build_model(n_classes=len(PAPER_CLASSES), width=config.width,
                        pooling=config.pooling, dropout=config.dropout,
                        members=config.ensemble)
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = _optimizer(model, config)
    scheduler = _scheduler(optimizer, config, total_steps=total_steps,
                           batches_per_epoch=batches_per_epoch(n_fit, config.batch_size))
    return model, optimizer, scheduler


def train_fold(features: np.ndarray, labels: np.ndarray, train_idx: np.ndarray,
               test_idx: np.ndarray, *, config: TrainConfig, fold: int, device: torch.device,
               groups: np.ndarray | None = None, lengths: np.ndarray | None = None,
               progress: bool = True, speakers: np.ndarray | None = None) -> dict:
    """Train on ``train_idx`` (minus a validation part), pick the best epoch on validation UA,
    evaluate on ``test_idx``.

    Parameters
    ----------
    features : np.ndarray, shape (N, F, T)
    labels : np.ndarray of int, shape (N,)
        Indices into :data:`serlib.labels.PAPER_CLASSES`.
    train_idx, test_idx : np.ndarray of int
        Positional rows of this fold's training and test parts.
    groups : np.ndarray, shape (N,), optional
        Speakers: when given, the validation part holds out whole speakers (speaker-disjoint
        model selection, as the session protocol's test folds are); else it is stratified over
        utterances.
    lengths : np.ndarray of int, shape (N,), optional
        Each clip's own frames (:func:`serlib.augment.clip_frames`), used by the recipe options
        that need them (``config.needs_lengths``); default: every frame is the clip's.
    speakers : np.ndarray, shape (N,), optional
        Each clip's speaker, for ``config.normalisation="speaker"`` (default: ``groups``).

    Returns
    -------
    dict
        ``state`` (best weights), ``optimizer``, ``mean``/``std`` (F,), ``history`` (list of
        per-epoch dicts), ``best_epoch``, ``probabilities`` (n_test, C), ``val_idx`` and
        ``val_probabilities`` (n_val, C: the kept model's), ``n_fit``, ``n_val``.
    """
    from tqdm import tqdm

    parts = prepare_fold(features, labels, train_idx, test_idx, config=config, fold=fold,
                         device=device, groups=groups, lengths=lengths, speakers=speakers)
    seed, generator, criterion = parts.seed, parts.generator, parts.criterion
    fit, val, test = parts.fit, parts.val, parts.test
    fit_idx, val_idx, mean, std = parts.fit_idx, parts.val_idx, parts.mean, parts.std
    total_steps, n_epochs = training_steps(len(fit), config)

    # a seed ensemble: each member trained alone with its own seed (member 0 = this seed)
    states, optimizers, history, epochs_kept = [], [], [], []
    for member in range(config.seed_ensemble):
        member_seed = seed + SEED_ENSEMBLE_STRIDE * member
        if member:
            torch.manual_seed(member_seed)
            generator = torch.Generator().manual_seed(member_seed)
        model, optimizer, scheduler = new_network(config, device=device, n_fit=len(fit))
        augment = _Augmenter(config, seed=member_seed) if _Augmenter.wanted(config) else None
        name = f"fold {fold}" + (f" seed {member + 1}/{config.seed_ensemble}"
                                 if config.seed_ensemble > 1 else "")
        bar = tqdm(range(1, n_epochs + 1), desc=name, unit="epoch",
                   disable=not progress, leave=False)
        with _kernel_settings(device):
            member_history, best = _train_epochs(
                model, fit, val, bar, optimizer=optimizer, scheduler=scheduler,
                criterion=criterion, config=config, generator=generator, device=device,
                fold=fold, augment=augment, total_steps=total_steps)
        if config.seed_ensemble > 1:
            for row in member_history:
                row["member"] = member
        history.extend(member_history)
        states.append(best["state"])
        optimizers.append(best["optimizer"])
        epochs_kept.append(best["epoch"])
    if config.seed_ensemble > 1:
        model = build_model(n_classes=len(PAPER_CLASSES), width=config.width,
                            pooling=config.pooling, dropout=config.dropout,
                            members=config.seed_ensemble)
        model = model.to(device, memory_format=torch.channels_last)
        for member, state in zip(model.members, states, strict=True):
            member.load_state_dict(state)
        state = model.state_dict()
        optimizer_state = {"members": optimizers}
        best_epoch = epochs_kept[0]                         # member 0's (the others' in history)
    else:
        model.load_state_dict(best["state"])
        state, optimizer_state, best_epoch = best["state"], best["optimizer"], best["epoch"]
    with _kernel_settings(device):
        probabilities = predict_proba(model, test, batch_size=2 * config.batch_size,
                                      device=device, amp=config.amp,
                                      crop_frames=config.crop_frames)
        # the chosen epoch's validation predictions: what temperature scaling is fitted on
        val_probabilities = predict_proba(model, val, batch_size=2 * config.batch_size,
                                          device=device, amp=config.amp,
                                          crop_frames=config.crop_frames)
    _check_finite_probabilities(probabilities, config=config, fold=fold)
    return {
        # on the CPU, so that a checkpoint written on a GPU loads anywhere
        "state": _to_cpu(state),
        "optimizer": _to_cpu(optimizer_state),
        "mean": mean, "std": std,
        "history": history,
        "best_epoch": best_epoch,
        "probabilities": probabilities,
        "val_idx": np.asarray(val_idx), "val_probabilities": val_probabilities,
        "n_fit": len(fit_idx), "n_val": len(val_idx),
    }


def _map_state(value, tensor: Callable, other: Callable = lambda v: v):
    """``value`` (nested dicts, lists and tuples) with ``tensor`` applied to every tensor and
    ``other`` to every other leaf."""
    if isinstance(value, torch.Tensor):
        return tensor(value)
    if isinstance(value, dict):
        return {k: _map_state(v, tensor, other) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_map_state(v, tensor, other) for v in value)
    return other(value)


def copy_state(value):
    """A copy of ``value`` (a ``state_dict`` of a model or an optimizer: nested dicts, lists and
    tuples of tensors and plain values) whose tensors are clones (same strides), as
    ``copy.deepcopy`` gives but without its per-tensor overhead: a ResNet-18's model and Adam
    state, every time a fold keeps a new best epoch, took 1.0 ms instead of 4.7 at width 8 on
    the CPU (at width 64 the copying itself dominates: 39 against 43 ms)."""
    return _map_state(value, lambda t: t.detach().clone(), copy.deepcopy)


def _to_cpu(value):
    """``value`` (nested dicts, lists, tuples of tensors) with every tensor on the CPU."""
    return _map_state(value, lambda t: t.detach().cpu())


def _train_epochs(model, fit: _Batches, val: _Batches, bar, *, optimizer, scheduler, criterion,
                  config: TrainConfig, generator: torch.Generator, device: torch.device,
                  fold: int, augment: _Augmenter | None = None,
                  total_steps: int | None = None) -> tuple[list[dict], dict]:
    """The epoch loop: train, score the validation part, keep the best epoch by validation UA,
    stop after ``config.patience`` epochs without a better one. ``select_epoch="last"``: the
    final epoch's weights instead, and no early stop (the paper's fixed number of epochs).
    ``total_steps``: stop after that many optimizer steps (the last epoch cut short); with
    ``config.step_schedule`` the scheduler is stepped per batch."""
    history, best = [], {"ua": -1.0, "epoch": 0, "state": None, "optimizer": None}
    last = config.select_epoch == "last"
    per_step = scheduler if config.step_schedule else None
    per_epoch_size = batches_per_epoch(len(fit), config.batch_size)
    steps = 0
    for epoch in bar:
        lr = optimizer.param_groups[0]["lr"]
        todo = None if total_steps is None else min(per_epoch_size, total_steps - steps)
        train_loss = train_one_epoch(model, fit, optimizer=optimizer, criterion=criterion,
                                     batch_size=config.batch_size, generator=generator,
                                     device=device, amp=config.amp, augment=augment,
                                     balanced=config.sampler == "balanced",
                                     max_batches=todo, step_scheduler=per_step)
        steps += per_epoch_size if todo is None else todo
        if not math.isfinite(train_loss):
            raise SerlibError(_non_finite_message(train_loss, config=config, fold=fold,
                                                  epoch=epoch))
        _check_finite_weights(model, config=config, fold=fold, epoch=epoch)
        if scheduler is not None and per_step is None:
            scheduler.step()
        probs = predict_proba(model, val, batch_size=2 * config.batch_size, device=device,
                              amp=config.amp, crop_frames=config.crop_frames)
        val_loss, report = validation_scores(probs, val.y.cpu(), criterion=criterion)
        history.append({"fold": fold, "epoch": epoch, "train_loss": train_loss,
                        "val_loss": val_loss, "val_wa": report["wa"], "val_ua": report["ua"],
                        "lr": lr, **({"steps": steps} if config.min_steps else {})})
        bar.set_postfix(loss=f"{train_loss:.3f}", val_ua=f"{report['ua']:.3f}")
        if last:
            continue
        if report["ua"] > best["ua"]:
            best = {"ua": report["ua"], "epoch": epoch,
                    "state": copy_state(model.state_dict()),
                    "optimizer": copy_state(optimizer.state_dict())}
        elif config.patience and epoch - best["epoch"] >= config.patience:
            break
    if last:
        best = {"ua": history[-1]["val_ua"], "epoch": history[-1]["epoch"],
                "state": copy_state(model.state_dict()),
                "optimizer": copy_state(optimizer.state_dict())}
    return history, best


def validation_scores(probs: np.ndarray, y: torch.Tensor, *,
                      criterion: Callable) -> tuple[float, dict]:
    """The loss and ``{"wa": ..., "ua": ...}`` of validation probabilities ``probs``
    (n_val, C) against targets ``y`` (n_val,); NaN loss, WA and UA when there is no
    validation part (``val_fraction=0``)."""
    if not len(y):
        nan = float("nan")
        return nan, {"wa": nan, "ua": nan}
    # log-probabilities are valid logits (softmax(log p) = p): the loss of these predictions
    loss = float(criterion(torch.from_numpy(np.log(np.maximum(probs, 1e-12))), y))
    # WA and UA only, every epoch (the full report's F1, recalls and confusion: 4.4 ms against
    # 1.1 for 228 clips)
    y_true, y_pred = y.numpy(), probs.argmax(1)
    return loss, {"wa": weighted_accuracy(y_true, y_pred),
                  "ua": unweighted_accuracy(y_true, y_pred)}


def _check_finite_weights(model: torch.nn.Module, *, config: TrainConfig, fold: int,
                          epoch: int) -> None:
    """After an epoch's optimizer steps: every weight and buffer must be finite (the loss is
    computed before the last step, so it can be finite while the step overflowed)."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        raise SerlibError(_non_finite_message(float("nan"), config=config, fold=fold,
                                              epoch=epoch, what="model weights"))


def _check_finite_probabilities(probabilities: np.ndarray, *, config: TrainConfig,
                                fold: int) -> None:
    if not np.isfinite(probabilities).all():
        raise SerlibError(_non_finite_message(float("nan"), config=config, fold=fold,
                                              epoch=0, what="test probabilities"))


def _non_finite_message(loss: float, *, config: TrainConfig, fold: int, epoch: int,
                        what: str = "") -> str:
    causes = [f"learning rate lr={config.lr:g}"]
    if config.loss == "focal":
        causes.append(f"gamma={config.gamma:g}")
        if config.alpha is not None:
            causes.append(f"alpha={list(config.alpha)}")
    if what:
        where = f"fold {fold}" + (f", epoch {epoch}" if epoch else "")
        return (f"{where}: the {what} are not finite (NaN or inf), so nothing of this fold "
                f"is saved; the likely cause is {' or '.join(causes)} (try a smaller "
                "learning rate)")
    return _loss_message(loss, causes=causes, fold=fold, epoch=epoch)


def _loss_message(loss: float, *, causes: list[str], fold: int, epoch: int) -> str:
    return (f"fold {fold}, epoch {epoch}: the training loss is {loss} (not finite), so the "
            f"model learns nothing; the likely cause is {' or '.join(causes)} (try a smaller "
            "learning rate)")


# ----------------------------------------------------------------------------- all folds
def cross_validate_arrays(features: np.ndarray, labels: np.ndarray, *, config: TrainConfig,
                          folds: list[tuple[np.ndarray, np.ndarray]] | None = None,
                          groups: np.ndarray | None = None,
                          lengths: np.ndarray | None = None,
                          device: torch.device | str | None = None,
                          skip: set[int] | frozenset[int] = frozenset(),
                          on_fold_end=None, progress: bool = True,
                          speakers: np.ndarray | None = None) -> list[dict]:
    """Cross-validate on features held in memory: one :func:`train_fold` per fold, no files.

    Parameters
    ----------
    features : np.ndarray, shape (N, F, T)
        Feature matrices (any float dtype; trained in float32).
    labels : np.ndarray of int, shape (N,)
        Indices into :data:`serlib.labels.PAPER_CLASSES`.
    config : TrainConfig
    folds : list of (train_idx, test_idx), optional
        From :func:`serlib.splits.make_folds`; default: ``config.folds`` stratified folds
        (seeded with ``config.seed``). Required under the session protocol.
    groups : np.ndarray, shape (N,), optional
        Speakers, for a speaker-disjoint validation split (see :func:`train_fold`).
    lengths : np.ndarray of int, shape (N,), optional
        Each clip's own frames (see :func:`train_fold`).
    device : torch.device or str, optional
        Default: ``config.device`` resolved (``"auto"``: CUDA when available).
    skip : set of int
        Folds (1-based) not to train, e.g. those a resumed run has on disk already.
    on_fold_end : callable, optional
        ``on_fold_end(fold, result)`` after each trained fold (``result`` as returned below);
        :func:`run_cross_validation` writes the fold's files there.
    progress : bool
        Progress bars per fold and epoch.
    speakers : np.ndarray, shape (N,), optional
        Each clip's speaker, for ``config.normalisation="speaker"`` (default: ``groups``).

    Returns
    -------
    list of dict
        One per trained fold: :func:`train_fold`'s result plus ``fold``, ``test_idx``,
        ``train_seconds`` (wall time of the fold's training and test predictions) and
        ``metrics`` (WA, UA, macro-F1, per-class recall, confusion counts of the test fold).
    """
    from tqdm import tqdm

    labels = np.asarray(labels)
    if features.ndim != 3 or len(features) != len(labels):
        raise SerlibError(
            f"features must be (N, F, T) with N = len(labels) = {len(labels)}, got shape "
            f"{tuple(features.shape)}"
        )
    if folds is None:
        if config.protocol != "stratified":
            raise SerlibError(f"protocol={config.protocol!r} needs explicit folds "
                              "(serlib.splits.make_folds with sessions or speakers)")
        folds = make_folds(pd.DataFrame({"label": labels}), protocol="stratified",
                           n_folds=config.folds, seed=config.seed)
    if not isinstance(device, torch.device):
        device = resolve_device(config.device if device is None else device)
    features = features.astype(np.float32, copy=False)      # (N, F, T)
    results = []
    bar = tqdm(enumerate(folds, start=1), total=len(folds), desc="folds", unit="fold",
               disable=not progress)
    for fold, (train_idx, test_idx) in bar:
        if fold in skip:
            continue
        started = time.perf_counter()
        result = train_fold(features, labels, train_idx, test_idx, config=config, fold=fold,
                            device=device, groups=groups, lengths=lengths,
                            progress=progress, speakers=speakers)
        if device.type == "cuda":
            torch.cuda.synchronize(device)                  # the fold's kernels are done
        result["train_seconds"] = time.perf_counter() - started
        predicted = result["probabilities"].argmax(axis=1)
        metrics = classification_report_dict(labels[test_idx], predicted,
                                             class_names=PAPER_CLASSES)
        result.update(fold=fold, test_idx=np.asarray(test_idx), metrics=metrics)
        if on_fold_end is not None:
            on_fold_end(fold, result)
        bar.set_postfix(ua=f"{result['metrics']['ua']:.3f}")
        results.append(result)
    return results


# ----------------------------------------------------------------------------- run folder
def _clip_frames(selection: pd.DataFrame, feature_config, config: TrainConfig):
    """Each clip's own frames from the selection's ``duration_s`` when ``config`` needs them."""
    if not config.needs_lengths:
        return None
    if "duration_s" not in selection:
        raise SerlibError("this recipe needs each clip's length: the selection lacks "
                          "'duration_s' (write it with serlib select)")
    from serlib.augment import clip_frames

    return clip_frames(selection["duration_s"].to_numpy(), sample_rate=feature_config.sample_rate,
                       hop_length=feature_config.hop_length,
                       max_seconds=feature_config.max_seconds, n_frames=feature_config.n_frames)


@dataclass
class RunSetup:
    """Everything a run needs, checked before anything is written (:func:`prepare_run`).

    Attributes
    ----------
    config : TrainConfig
    feature_config : serlib.features.FeatureConfig
    selection : pandas.DataFrame
        The selection's rows of the paper's classes, renumbered from 0.
    selection_path : str or None
        The CSV it was read from, if any.
    corpus : str
    labels : np.ndarray of int, shape (N,)
        Indices into :data:`serlib.labels.PAPER_CLASSES`.
    groups : np.ndarray of str, shape (N,), or None
        Speakers under the session protocol (speaker-disjoint validation), else None.
    speakers : np.ndarray of str, shape (N,)
        Each clip's speaker (``normalisation="speaker"`` normalises by them under any
        protocol).
    folds : list of (train_idx, test_idx)
    device : torch.device
    resolved : dict
        What ``config.json`` records (before the commit and versions are added).
    """

    config: TrainConfig
    feature_config: object
    selection: pd.DataFrame
    selection_path: str | None
    corpus: str
    labels: np.ndarray
    groups: np.ndarray | None
    folds: list
    device: torch.device
    resolved: dict
    speakers: np.ndarray | None = None

    def test_ids(self, fold: int) -> list[str]:
        """Utterance ids of fold ``fold``'s (1-based) test part."""
        return self.selection["utterance_id"].iloc[self.folds[fold - 1][1]].astype(str).tolist()


def _prepare_selection(selection) -> tuple[pd.DataFrame, str]:
    if isinstance(selection, (str, os.PathLike)):
        from serlib.corpora import read_selection

        path = str(Path(selection).resolve())
        selection = read_selection(selection)
    else:
        path = None
    missing = [c for c in ("utterance_id", "path", "label", "speaker") if c not in selection]
    if missing:
        raise SerlibError(f"selection lacks column(s) {', '.join(missing)}")
    kept = selection[selection["label"].isin(PAPER_CLASSES)].reset_index(drop=True)
    if kept.empty:
        found = selection["label"].astype(str).value_counts()
        found = ", ".join(f"{k} ({v})" for k, v in found.items()) or "none (no rows)"
        raise SerlibError(f"selection has no utterance of the classes {', '.join(PAPER_CLASSES)}"
                          f"; its labels are: {found}")
    counts = kept["label"].value_counts()
    if len(counts) < 2:
        raise SerlibError(
            f"selection has {len(kept)} utterance(s) of one class only "
            f"({', '.join(f'{k}: {v}' for k, v in counts.items())}); a classifier needs at "
            f"least two of {', '.join(PAPER_CLASSES)}")
    return kept, path


def selection_fingerprint(selection: pd.DataFrame) -> str:
    """Stable hash of what a run learns from: utterance ids, labels and speakers, in order."""
    digest = hashlib.sha256()
    for column in ("utterance_id", "label", "speaker"):
        digest.update("\x1f".join(selection[column].astype(str)).encode())
        digest.update(b"\x1e")
    return digest.hexdigest()[:16]


def _check_training_parts(labels: np.ndarray, folds: list) -> None:
    """Every class of the selection must have an example in every fold's training part."""
    present = np.unique(labels)
    for k, (train_idx, _) in enumerate(folds, start=1):
        counts = np.bincount(labels[train_idx], minlength=len(PAPER_CLASSES))
        absent = [PAPER_CLASSES[c] for c in present if counts[c] == 0]
        if absent:
            shown = ", ".join(f"{PAPER_CLASSES[c]}: {counts[c]}" for c in present)
            raise SerlibError(
                f"fold {k}'s training part has no example of {', '.join(absent)} ({shown}); "
                "use fewer folds, another protocol, or a selection with more of that class")


def prepare_run(selection, *, config: TrainConfig) -> RunSetup:
    """Check everything a run needs except the audio (config, device, folds against the data,
    classes in every training part) and return it; writes nothing.

    Parameters
    ----------
    selection : pandas.DataFrame or path
        As for :func:`run_cross_validation`.
    config : TrainConfig
    """
    from serlib.features import feature_config_for

    if not isinstance(config, TrainConfig):
        raise SerlibError(f"config must be a TrainConfig, got {type(config).__name__}")
    device = resolve_device(config.device)
    selection, selection_path = _prepare_selection(selection)
    # the clip length the selection was made with (serlib select --max-seconds)
    feature_config = feature_config_for(selection, config.feature)
    corpus = str(selection["corpus"].iloc[0]) if "corpus" in selection else "unknown"
    labels = selection["label"].map(PAPER_CLASSES.index).to_numpy()
    # speaker-independent protocol: model selection on held-out speakers too
    groups = selection["speaker"].astype(str).to_numpy() if config.protocol == "session" \
        else None
    try:
        folds = make_folds(selection, protocol=config.protocol, n_folds=config.folds,
                           seed=config.seed)
    except ValueError as error:   # scikit-learn's splitters: too many folds for the data
        raise SerlibError(f"folds={config.folds} with protocol={config.protocol!r} on "
                          f"{len(selection)} utterances: {error}") from None
    if config.imbalance != "none":      # controlled imbalance: training parts subsampled
        from serlib.imbalance import apply_to_folds

        folds = apply_to_folds(folds, labels, name=config.imbalance,
                               fraction=config.imbalance_fraction, seed=config.seed)
    _check_training_parts(labels, folds)
    resolved = {
        "train": config.to_dict(),
        "features": feature_config.to_dict(),
        "selection": {"path": selection_path, "n_utterances": len(selection),
                      "corpus": corpus, "fingerprint": selection_fingerprint(selection)},
    }
    return RunSetup(config=config, feature_config=feature_config, selection=selection,
                    selection_path=selection_path, corpus=corpus, labels=labels,
                    groups=groups, folds=folds, device=device, resolved=resolved,
                    speakers=selection["speaker"].astype(str).to_numpy())


def load_features(setup: RunSetup, *, cache_dir: str | os.PathLike | None,
                  progress: bool = True, n_jobs: int | None = None) -> np.ndarray:
    """The run's features, shape (N, F, T), computed or read from the store; every audio file
    must be readable (a bad one is named, and nothing of the run is written)."""
    from serlib.features import extract_corpus

    device = setup.device
    store = extract_corpus(
        setup.selection, config=setup.feature_config, cache_dir=cache_dir, progress=progress,
        dtype=setup.config.feature_dtype, skip_errors=True, n_jobs=n_jobs,
        # on CUDA the STFT/mel/dB run batched on the GPU (serlib.features.torch_features)
        backend="torch" if device.type == "cuda" else "librosa",
        device=str(device) if device.type == "cuda" else None,
    )
    if store.skipped:
        shown = "; ".join(reason if str(reason).startswith(str(path)) else f"{path}: {reason}"
                          for path, reason in store.skipped[:10])
        more = f" (and {len(store.skipped) - 10} more)" if len(store.skipped) > 10 else ""
        raise SerlibError(
            f"{len(store.skipped)} bad audio file(s) in the selection, so the run was not "
            f"started: {shown}{more}. Replace them, or leave them out of the selection "
            "(serlib select, or drop their rows from the CSV), and run again")
    if len(store) != len(setup.selection):
        raise SerlibError("feature extraction left out some utterances")
    _check_finite_features(store.features, setup.selection)
    return store.features


def _check_finite_features(features: np.ndarray, selection: pd.DataFrame) -> None:
    """Every feature value must be finite: a NaN clip would make every fold's loss NaN."""
    bad = np.flatnonzero(~np.isfinite(features.reshape(len(features), -1)).all(axis=1))
    if len(bad):
        shown = ", ".join(str(selection["path"].iloc[i]) for i in bad[:5])
        raise SerlibError(
            f"{len(bad)} clip(s) have non-finite features (NaN or inf), so the run was not "
            f"started: {shown}{' ...' if len(bad) > 5 else ''}; their audio holds samples "
            "too large for the features (a float file not scaled to [-1, 1]?): fix or drop "
            "them from the selection")


def finished_folds(setup: RunSetup, out_dir: str | os.PathLike) -> dict[int, dict]:
    """Metrics of the folds of ``out_dir`` that are finished and intact (see
    :func:`serlib.runs.finished_fold`), by fold number."""
    done = {}
    for k in range(1, len(setup.folds) + 1):
        metrics = runs.finished_fold(out_dir, k, utterance_ids=setup.test_ids(k),
                                     train_config=setup.config.to_dict())
        if metrics is not None:
            done[k] = metrics
    return done


def looks_finished(setup: RunSetup, out_dir: str | os.PathLike) -> bool:
    """A first look, without the lock: does ``out_dir`` hold this run with every fold
    finished? Raises when it holds another run; damaged folds are reported later."""
    import warnings

    if not Path(out_dir).is_dir():
        return False
    with warnings.catch_warnings():   # damage is reported by the look under the lock
        warnings.simplefilter("ignore", runs.RunFolderWarning)
        return runs.check_config(out_dir, setup.resolved) and \
            len(finished_folds(setup, out_dir)) == len(setup.folds)


def _prediction_frame(setup: RunSetup, idx: np.ndarray, probs: np.ndarray, *,
                      fold: int) -> pd.DataFrame:
    """One row per clip of ``setup.selection.iloc[idx]`` with its label, prediction and
    probabilities ``probs`` (n, C): the columns of ``predictions.csv`` and ``validation.csv``."""
    rows = setup.selection.iloc[idx]
    return pd.DataFrame({
        "utterance_id": rows["utterance_id"].to_numpy(),
        "fold": fold,
        "speaker": rows["speaker"].to_numpy(),
        "label": [PAPER_CLASSES[i] for i in setup.labels[idx]],
        "predicted": [PAPER_CLASSES[i] for i in probs.argmax(axis=1)],
        **{f"p_{name}": probs[:, k] for k, name in enumerate(PAPER_CLASSES)},
    })


def _write_fold(out_dir: Path, setup: RunSetup, fold: int, result: dict) -> dict:
    """Write one finished fold (all four files at once); returns its metrics."""
    test_idx = setup.folds[fold - 1][1]
    probs = result["probabilities"]                      # (n_test, C)
    metrics = {
        "fold": fold,
        **result["metrics"],
        "best_epoch": result["best_epoch"],
        "n_train": result["n_fit"], "n_val": result["n_val"], "n_test": len(test_idx),
        "train_seconds": float(result.get("train_seconds", float("nan"))),
    }
    predictions = _prediction_frame(setup, test_idx, probs, fold=fold)
    checkpoint = {
        "model": result["state"],
        "optimizer": result["optimizer"],
        "mean": torch.from_numpy(result["mean"]),
        "std": torch.from_numpy(result["std"]),
        "train_config": setup.config.to_dict(),
        "class_names": list(PAPER_CLASSES),
        "metrics": metrics,
    }
    validation = None
    if len(result.get("val_idx", ())):                  # none without a validation part
        validation = _prediction_frame(setup, result["val_idx"],
                                       result["val_probabilities"], fold=fold)   # (n_val, C)
    runs.write_fold(out_dir, fold, checkpoint=checkpoint, metrics=metrics,
                    predictions=predictions, history=pd.DataFrame(result["history"]),
                    validation=validation)
    return metrics


def train_folds(setup: RunSetup, features: np.ndarray, out_dir: str | os.PathLike, *,
                folds: list[int], device: torch.device | None = None,
                progress: bool = True) -> dict[int, dict]:
    """Train the folds ``folds`` (1-based) of a prepared run and write each one as it ends;
    returns their metrics. The caller holds the run folder's lock and has written its
    ``config.json``."""
    out_dir = Path(out_dir)
    written = {}

    def save(fold: int, result: dict) -> None:
        # each fold is on disk as soon as it ends: an interruption loses at most one fold
        written[fold] = _write_fold(out_dir, setup, fold, result)

    skip = set(range(1, len(setup.folds) + 1)) - set(folds)
    cross_validate_arrays(features, setup.labels, config=setup.config, folds=setup.folds,
                          groups=setup.groups, speakers=setup.speakers,
                          device=device or setup.device, skip=skip,
                          lengths=_clip_frames(setup.selection, setup.feature_config,
                                               setup.config),
                          on_fold_end=save, progress=progress)
    return written


def load_checkpoint(path: str | os.PathLike, *, map_location="cpu"
                    ) -> tuple[ResNet18 | Ensemble, dict]:
    """A fold's model with its best weights, and the whole checkpoint (``weights_only``).

    Raises :class:`SerlibError` naming the file when it does not load.
    """
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        config = TrainConfig.from_dict(checkpoint["train_config"])
        model = build_model(n_classes=len(checkpoint["class_names"]), width=config.width,
                            pooling=config.pooling, dropout=config.dropout,
                            members=config.members)
        model.load_state_dict(checkpoint["model"])
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError) as error:
        raise SerlibError(f"{path}: not a loadable serlib checkpoint "
                          f"({type(error).__name__}: {str(error)[:200]})") from None
    return model.eval(), checkpoint


def summarise(fold_metrics: list[dict], *, config: TrainConfig, corpus: str,
              n_utterances: int, device: str) -> dict:
    """Mean and standard deviation (ddof=1) across folds (:func:`serlib.runs.summarise`)."""
    return runs.summarise(fold_metrics, config=config, corpus=corpus,
                          n_utterances=n_utterances, device=device)


def finish(setup: RunSetup, out_dir: str | os.PathLike, fold_metrics: dict[int, dict]) -> dict:
    """Whole-run tables and ``summary.json`` of a run whose folds are all finished."""
    ordered = [fold_metrics[k] for k in range(1, len(setup.folds) + 1)]
    return runs.finish_run(out_dir, ordered, config=setup.config, corpus=setup.corpus,
                           n_utterances=len(setup.selection),
                           device=describe_device(setup.device))


def run_cross_validation(selection, *, config: TrainConfig, out_dir: str | os.PathLike,
                         cache_dir: str | os.PathLike | None = None,
                         progress: bool = True) -> dict:
    """Run (or resume) a whole K-fold cross-validation and return its summary.

    Everything the run needs (config, device, folds against the data, every audio file) is
    checked before anything is written, and ``config.json`` is written only when training is
    about to start. The run folder is locked (:func:`serlib.locking.exclusive_lock`) for the
    whole call; a second process on it is refused with the holder's pid. Finished folds whose
    files all load are reused; a damaged one is reported (a warning) and trained again.

    Parameters
    ----------
    selection : pandas.DataFrame or path
        The selection table (or its CSV, as written by ``serlib select``). Rows whose label is
        not one of :data:`serlib.labels.PAPER_CLASSES` are ignored.
    config : TrainConfig
    out_dir : path
        The run folder. If it holds a run of the same config, finished folds are reused; a
        different config there is refused.
    cache_dir : path, optional
        Feature store root (:func:`serlib.features.extract_corpus`); None: not cached.
    progress : bool
        Progress bars per fold and epoch.

    Returns
    -------
    dict
        The content of ``summary.json`` (fractions in 0..1).
    """
    from serlib.locking import exclusive_lock

    setup = prepare_run(selection, config=config)
    out_dir = Path(out_dir)
    runs.check_run_folder(out_dir)   # before the lock creates anything in a foreign folder
    # features before the lock: the feature pool's forked workers must not inherit the lock
    # (a worker outliving a killed parent would hold it)
    features = None if looks_finished(setup, out_dir) else \
        load_features(setup, cache_dir=cache_dir, progress=progress)
    with exclusive_lock(out_dir, what="run folder"):
        runs.remove_scratch(out_dir)
        has_config = runs.check_config(out_dir, setup.resolved)
        # folds are checked against their checkpoints' config too (config.json may be damaged)
        done = finished_folds(setup, out_dir)
        todo = [k for k in range(1, len(setup.folds) + 1) if k not in done]
        if todo and features is None:   # damaged since the first look: read them now
            features = load_features(setup, cache_dir=cache_dir, progress=progress, n_jobs=1)
        if not has_config:
            runs.write_config(out_dir, setup.resolved, device_type=setup.device.type)
        try:
            if todo:
                done.update(train_folds(setup, features, out_dir, folds=todo,
                                        progress=progress))
        except BaseException:
            if not has_config:   # a failed start must not block the corrected command
                runs.forget_failed_start(out_dir)
            raise
        return finish(setup, out_dir, done)


def format_summary(summary: dict) -> str:
    """One paragraph for a terminal: WA/UA mean +- std in %, and where they came from."""
    return (
        f"{summary['feature']} + {summary['loss']} loss"
        f"{' (gamma ' + format(summary['gamma'], 'g') + ')' if summary['loss'] == 'focal' else ''}"
        f", {summary['n_folds']}-fold {summary['protocol']} CV on {summary['corpus']} "
        f"({summary['n_utterances']} utterances, width {summary['width']}):\n"
        f"  WA {100 * summary['wa_mean']:.1f} +- {100 * summary['wa_std']:.1f} %   "
        f"UA {100 * summary['ua_mean']:.1f} +- {100 * summary['ua_std']:.1f} %\n"
        f"  device {summary['device']}"
        + (f", {summary['wall_seconds']:.0f} s of training"
           if summary.get("wall_seconds") is not None else "")
        + f", commit {summary['commit']}"
    )


__all__ = [
    "RunSetup",
    "TrainConfig",
    "finish",
    "finished_folds",
    "load_features",
    "prepare_run",
    "train_folds",
    "cross_validate_arrays",
    "format_summary",
    "load_checkpoint",
    "normalisation_stats",
    "resolve_device",
    "run_cross_validation",
    "selection_fingerprint",
    "summarise",
    "train_fold",
    "training_steps",
]

