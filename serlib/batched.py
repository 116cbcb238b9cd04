"""Many folds in one network: the folds of a run (and of runs whose inputs agree) trained side
by side as one grouped ResNet-18, each fold exactly as :func:`serlib.training.train_fold`
trains it alone.

A fold's network is tiny work for a GPU at batch 32 (and dispatch-bound on a CPU at narrow
widths): the step time goes to launching many small kernels. Here K folds ("members") share
every kernel launch:

- **One grouped network.** Every ``Conv2d`` of the ResNet-18 becomes a convolution with K
  groups, every ``BatchNorm2d(C)`` a ``BatchNorm2d(K C)`` (per-channel statistics are
  per-member statistics, running statistics included: exact, with no functional batch-norm
  trickery), the head a batched matrix product. The input (B, K, F, T) holds member k's
  batch in channel k. Each member keeps its own :class:`serlib.models.ResNet18` whose
  parameters and buffers are *views* of the grouped ones, so that a member is a plain
  module wherever one is needed (a checkpoint's ``state_dict``, a step of its own, test
  predictions).
- **Each member as if alone.** Its own seed (initial weights, data order: the same
  ``torch.Generator`` draws as the per-fold path), validation split, normalisation, loss
  (focal or softmax, gamma, alpha or class weights), optimizer (a real ``torch.optim``
  optimizer over its views, so the checkpoint's optimizer state has the per-fold layout) and
  scheduler. The summed loss of the members has, for each member's parameters, the gradient
  of that member's own loss. A step where the members' batch sizes differ (the short last
  batch of an epoch when the folds' sizes differ) is taken member by member through the
  members' own modules. The members share one copy of the features and normalise their
  rows as they gather them (the per-fold path's values, to the bit).
- **On the CPU, large blocks from the heap** while a group trains (:func:`heap_allocations`):
  K-times-wider activations would otherwise be mapped afresh at every step.
- **Own early stopping and best checkpoint.** A member that stops (patience) or ends (its
  epochs) is written at once (its test predictions from its best weights), then leaves the
  stack: on the CPU the grouped network is rebuilt from the members still training; on CUDA
  its slot is masked (zeros in, no loss, no optimizer step) until half the slots are, then
  the network is rebuilt (a new width re-runs cuDNN's autotuning); with ``compile`` slots
  stay masked, so that the shapes stay static for CUDA graphs (``regroup_at``).

What is supported is the paper's recipe and its neighbours (:func:`batched_unsupported`);
anything else falls back to the per-fold path. Numbers agree with the per-fold path to float
tolerance (grouped and plain convolutions round differently), not bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import math
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from serlib.config import TrainConfig
from serlib.errors import SerlibError

#: At most this many members in one grouped network (memory: the members share one copy of
#: the features, but activations grow with the number of members).
MAX_MEMBERS = 16
#: On the CPU, at most this many: a run's five folds grouped train 1.03-1.07 x as fast as one
#: after another at the smoke profile's width, ten are level (0.98-1.02 x; benchmarks/README.md,
#: "Batched folds"), since a CPU step is bound by the convolutions, not by launches.
CPU_MAX_MEMBERS = 5


# glibc's mallopt parameters, and the ceilings its dynamic mmap threshold rises to on 64 bits
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_MMAP_THRESHOLD_MAX, _MMAP_MAX_DEFAULT = 32 * 2**20, 65536


@contextlib.contextmanager
def heap_allocations(device: torch.device):
    """On the CPU with glibc: serve every allocation from the heap while the block runs.

    A grouped network's activations are K times a fold's; at K >= 5 on spectrograms (width 8,
    batch 32: 42 MB each) they pass glibc's 32 MB ceiling for heap blocks, so every step
    ``mmap``-ed them afresh and the kernel zeroed them page by page (1.1 million page faults
    and 1.7 s of system time in 18 steps of 5 folds, ``benchmarks/README.md``); the per-fold
    network's stay on the heap. Afterwards the process is left as glibc's dynamic threshold
    leaves it once it has risen (blocks up to 32 MB on the heap) and the heap is trimmed.
    Elsewhere (CUDA, another C library): nothing changes."""
    libc = None
    if device.type == "cpu":
        with contextlib.suppress(OSError, AttributeError):
            loaded = ctypes.CDLL("libc.so.6")
            loaded.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            loaded.malloc_trim.argtypes = [ctypes.c_size_t]
            libc = loaded
    if libc is None:
        yield
        return
    try:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, _MMAP_MAX_DEFAULT)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX)
        libc.malloc_trim(0)


# ----------------------------------------------------------------------------- what is supported
def batched_unsupported(config: TrainConfig) -> str | None:
    """Why ``config`` cannot be trained by the batched path, or None when it can.

    Supported: the paper's recipe (fixed frames, corpus normalisation, mean pooling, one
    network per fold, no augmentation, no dropout) with any loss, gamma, alpha, class weights,
    sampler, optimizer, learning rate, schedule, epochs, patience, epoch selection, seed,
    protocol and number of folds.
    """
    if not isinstance(config, TrainConfig):
        raise SerlibError(f"config must be a TrainConfig, got {type(config).__name__}")
    reasons = []
    if config.needs_lengths:
        reasons.append("it uses each clip's own frames (own_frames, utterance or speaker "
                       "normalisation, crops, time shifts or time masks)")
    if config.freq_masks or config.freq_warp or config.mixup:
        reasons.append("it augments batches (frequency masks, frequency warp or mixup)")
    if config.ensemble != 1:
        reasons.append(f"ensemble={config.ensemble} (several networks per fold)")
    if config.dropout:
        reasons.append(f"dropout={config.dropout:g} (draws from torch's global random state)")
    if config.pooling != "mean":
        reasons.append(f"pooling={config.pooling!r}")
    if config.step_schedule:
        reasons.append("its learning-rate schedule is stepped per batch (min_steps or "
                       "warmup_steps)")
    if config.seed_ensemble != 1:
        reasons.append(f"seed_ensemble={config.seed_ensemble} (several networks per fold)")
    return "; ".join(reasons) or None


def supports_batched(config: TrainConfig) -> bool:
    """Whether the batched path trains ``config`` (see :func:`batched_unsupported`)."""
    return batched_unsupported(config) is None


def stack_key(config: TrainConfig) -> tuple:
    """Members can share one grouped network when these agree: input kind, network width,
    batch size, autocast, device (loss, optimizer, schedule, epochs, seed may differ)."""
    return (config.feature, config.feature_dtype, config.width, config.batch_size, config.amp,
            config.device)


# ----------------------------------------------------------------------------- grouped network
class _StackedLinear(nn.Module):
    """K linear heads as one module: (B, K * I) -> (B, K, O); weight (K * O, I), bias (K * O)."""

    def __init__(self, in_features: int, out_features: int, *, members: int):
        super().__init__()
        self.members, self.out_features = members, out_features
        self.weight = nn.Parameter(torch.empty(members * out_features, in_features))
        self.bias = nn.Parameter(torch.empty(members * out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, o = self.members, self.out_features
        x = x.reshape(x.shape[0], k, -1)                                   # (B, K, I)
        w = self.weight.view(k, o, -1)                                     # (K, O, I)
        return torch.einsum("bki,koi->bko", x, w) + self.bias.view(k, o)   # (B, K, O)


def grouped_network(template: nn.Module, *, members: int) -> nn.Module:
    """``template`` (a :class:`serlib.models.ResNet18`) with every layer widened to ``members``
    independent copies: grouped convolutions, K-times-wider batch norms, a stacked head.

    Input (B, K, F, T) (member k's batch in channel k); output (B, K, n_classes). Every
    parameter and buffer has shape (K * n, ...) where the template's has (n, ...): member k's
    share is ``tensor.unflatten(0, (K, -1))[k]``. Values are uninitialised (copied in by the
    caller)."""
    net = copy.deepcopy(template)
    for name, module in list(net.named_modules()):
        if isinstance(module, nn.Conv2d):
            new = nn.Conv2d(module.in_channels * members, module.out_channels * members,
                            module.kernel_size, stride=module.stride, padding=module.padding,
                            dilation=module.dilation, groups=module.groups * members,
                            bias=module.bias is not None)
        elif isinstance(module, nn.BatchNorm2d):
            new = nn.BatchNorm2d(module.num_features * members, eps=module.eps,
                                 momentum=module.momentum)
        elif isinstance(module, nn.Linear):
            new = _StackedLinear(module.in_features, module.out_features, members=members)
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent_name) if parent_name else net, child, new)
    return net


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, attribute = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if attribute in owner._parameters:
        owner._parameters[attribute].data = value
    else:
        owner._buffers[attribute] = value


class _Stack:
    """The grouped network of ``models``, whose parameters and buffers become views of it."""

    def __init__(self, template: nn.Module, models: Sequence[nn.Module], *,
                 device: torch.device, compile: bool = False):
        self.k = len(models)
        self.net = grouped_network(template, members=self.k).to(
            device, memory_format=torch.channels_last)
        self.member_params: list[list[nn.Parameter]] = [[] for _ in models]
        self.stacked_params: list[nn.Parameter] = []
        with torch.no_grad():
            tensors = dict(self.net.named_parameters())
            tensors.update((n, b) for n, b in self.net.named_buffers()
                           if not n.endswith("num_batches_tracked"))
            for name, stacked in tensors.items():
                shares = stacked.data.unflatten(0, (self.k, -1))           # (K, n, ...)
                for j, model in enumerate(models):
                    own = model.get_parameter(name) if isinstance(stacked, nn.Parameter) \
                        else model.get_buffer(name)
                    shares[j].copy_(own)
                    _set_tensor(model, name, shares[j])
                    if isinstance(stacked, nn.Parameter):
                        self.member_params[j].append(model.get_parameter(name))
                if isinstance(stacked, nn.Parameter):
                    self.stacked_params.append(stacked)
        self.forward = self.net
        if compile and device.type == "cuda":
            # CUDA graphs (static shapes: fixed frames, fixed batch, masked members)
            self.forward = torch.compile(self.net, mode="reduce-overhead", dynamic=False)

    def hand_gradients(self, slots: Sequence[int]) -> None:
        """Give member ``slots[i]``'s parameters their share of the grouped gradients."""
        for stacked_index, stacked in enumerate(self.stacked_params):
            grads = stacked.grad.unflatten(0, (self.k, -1))
            for j in slots:
                self.member_params[j][stacked_index].grad = grads[j]


# ----------------------------------------------------------------------------- members
@dataclass
class Member:
    """One fold to train: what :func:`serlib.training.train_fold` takes, plus a ``key`` that
    names it to the caller (e.g. ``(run, fold)``)."""

    key: object
    config: TrainConfig
    features: np.ndarray          # (N, F, T) float32
    labels: np.ndarray            # (N,) indices into PAPER_CLASSES
    train_idx: np.ndarray
    test_idx: np.ndarray
    fold: int
    groups: np.ndarray | None = None


class _Trainee:
    """A member's training state, set up as :func:`serlib.training.train_fold` does."""

    def __init__(self, member: Member, *, device: torch.device,
                 shared: torch.Tensor | None = None):
        from serlib import training

        config = member.config
        self.member, self.config, self.device = member, config, device
        # the data, split, normalisation and loss as train_fold prepares them; the features
        # shared with the other members (``shared``, (N, 1, F, T)), normalised as gathered
        parts = training.prepare_fold(member.features, member.labels, member.train_idx,
                                      member.test_idx, config=config, fold=member.fold,
                                      device=device, groups=member.groups, shared=shared)
        self.generator, self.criterion = parts.generator, parts.criterion
        self.fit_idx, self.val_idx = parts.fit_idx, parts.val_idx
        self.mean, self.std = parts.mean, parts.std
        self.fit, self.val, self.test = parts.fit, parts.val, parts.test
        self.model, self.optimizer, self.scheduler = training.new_network(
            config, device=device, n_fit=len(parts.fit))
        self.history: list[dict] = []
        self.best = {"ua": -1.0, "epoch": 0, "state": None, "optimizer": None}
        self.steps = 0                       # training forwards (= batch norm's counter)
        self.epoch = 0
        self.done = False
        # this member's share of the group's wall time: each epoch's time divided among the
        # members that trained in it (the shares of a group add up to its wall time)
        self.seconds = 0.0

    # one epoch, in pieces driven by the group
    def start_epoch(self) -> None:
        self.epoch += 1
        self.lr = self.optimizer.param_groups[0]["lr"]
        order = (self.fit.balanced_order(self.generator) if self.config.sampler == "balanced"
                 else torch.randperm(len(self.fit), generator=self.generator))
        self.order = order.to(self.fit.x.device)
        self.total = torch.zeros((), dtype=torch.float64, device=self.device)
        self.count = 0

    def rows(self, step: int) -> torch.Tensor | None:
        """Rows of batch ``step`` of this epoch, or None (none left, or a lone sample that
        batch norm cannot train on: skipped, as the per-fold path does)."""
        b = self.config.batch_size
        rows = self.order[step * b:(step + 1) * b]
        return rows if len(rows) >= 2 else None

    def n_steps(self) -> int:
        return math.ceil(len(self.order) / self.config.batch_size)

    def record_loss(self, loss: torch.Tensor, n: int) -> None:
        self.total += loss.detach().double() * n
        self.count += n
        self.steps += 1

    def snapshot(self) -> dict:
        """The member's weights (compact copies, not views of the group's storage) with batch
        norm's counters as its own training steps."""
        # channels_last as the per-fold model's tensors (a view's strides may differ in size-1
        # dimensions)
        state = {name: value.clone(memory_format=torch.channels_last) if value.dim() == 4
                 else value.clone() for name, value in self.model.state_dict().items()}
        for name in state:
            if name.endswith("num_batches_tracked"):
                state[name] = torch.tensor(self.steps, dtype=torch.long)
        return state

    def end_epoch(self, probs: np.ndarray) -> None:
        """Score the validation part (``probs`` (n_val, C)), keep the best epoch, decide on
        stopping; as :func:`serlib.training._train_epochs`."""
        from serlib import training

        config = self.config
        train_loss = float(self.total) / max(self.count, 1)
        if not math.isfinite(train_loss):
            raise SerlibError(training._non_finite_message(
                train_loss, config=config, fold=self.member.fold, epoch=self.epoch))
        training._check_finite_weights(self.model, config=config, fold=self.member.fold,
                                       epoch=self.epoch)
        if self.scheduler is not None:
            self.scheduler.step()
        val_loss, report = training.validation_scores(probs, self.val.y.cpu(),
                                                      criterion=self.criterion)
        self.history.append({"fold": self.member.fold, "epoch": self.epoch,
                             "train_loss": train_loss, "val_loss": val_loss,
                             "val_wa": report["wa"], "val_ua": report["ua"], "lr": self.lr})
        last = config.select_epoch == "last"
        if not last and report["ua"] > self.best["ua"]:
            self.best = {"ua": report["ua"], "epoch": self.epoch, "state": self.snapshot(),
                         "optimizer": training.copy_state(self.optimizer.state_dict())}
        elif not last and config.patience and \
                self.epoch - self.best["epoch"] >= config.patience:
            self.done = True
        if self.epoch >= config.epochs:
            self.done = True
        if self.done and last:
            self.best = {"ua": report["ua"], "epoch": self.epoch, "state": self.snapshot(),
                         "optimizer": training.copy_state(self.optimizer.state_dict())}

    def result(self) -> dict:
        """:func:`serlib.training.train_fold`'s result, plus ``fold``, ``test_idx`` and
        ``metrics`` as :func:`serlib.training.cross_validate_arrays` adds them."""
        from serlib import training
        from serlib.labels import PAPER_CLASSES
        from serlib.metrics import classification_report_dict

        config = self.config
        started = time.perf_counter()
        # a network of its own (compact weights), not the views of the group's storage
        model = training.build_model(n_classes=len(PAPER_CLASSES), width=config.width,
                                     pooling=config.pooling, dropout=config.dropout)
        model.load_state_dict(self.best["state"])
        model = model.to(self.device, memory_format=torch.channels_last)
        probabilities = training.predict_proba(model, self.test,
                                               batch_size=2 * config.batch_size,
                                               device=self.device, amp=config.amp)
        training._check_finite_probabilities(probabilities, config=config,
                                             fold=self.member.fold)
        # the kept epoch's validation predictions: what temperature scaling is fitted on
        val_probabilities = training.predict_proba(model, self.val,
                                                   batch_size=2 * config.batch_size,
                                                   device=self.device, amp=config.amp)
        test_idx = np.asarray(self.member.test_idx)
        metrics = classification_report_dict(self.member.labels[test_idx],
                                             probabilities.argmax(axis=1),
                                             class_names=PAPER_CLASSES)
        self.seconds += time.perf_counter() - started      # its test predictions, its own
        return {"state": training._to_cpu(self.best["state"]),
                "optimizer": training._to_cpu(self.best["optimizer"]),
                "mean": self.mean, "std": self.std, "history": self.history,
                "best_epoch": self.best["epoch"], "probabilities": probabilities,
                "val_idx": np.asarray(self.val_idx), "val_probabilities": val_probabilities,
                "n_fit": len(self.fit_idx), "n_val": len(self.val_idx),
                "fold": self.member.fold, "test_idx": test_idx, "metrics": metrics,
                # its share of the group's wall time (members share the steps), so that a
                # run's wall_seconds (the sum over its folds) is the time its folds took
                "train_seconds": self.seconds}


# ----------------------------------------------------------------------------- the group's loop
@torch.no_grad()
def _predict_stacked(stack: _Stack, datas: Sequence, *, batch_size: int,
                     device: torch.device, amp: bool) -> list[np.ndarray]:
    """Softmax probabilities of each member's rows (member j: (len(datas[j]), C)) through the
    grouped network in eval mode; shorter members are padded with zeros (batch norm uses its
    running statistics in eval mode, so rows do not interact). ``datas[j]`` None: a masked
    slot (zeros)."""
    from serlib.training import _autocast

    stack.net.eval()
    sizes = [0 if d is None else len(d) for d in datas]
    template = next(d for d in datas if d is not None).x
    outs: list[list[torch.Tensor]] = [[] for _ in datas]
    for start in range(0, max(sizes), batch_size):
        n = [max(0, min(batch_size, s - start)) for s in sizes]
        width = max(n)
        parts = []
        for d, nj in zip(datas, n, strict=True):
            part = template.new_zeros((width, *template.shape[1:]))          # (b, 1, F, T)
            if nj:
                part[:nj] = d.x[start:start + nj]
            parts.append(part)
        x = torch.cat(parts, dim=1).contiguous(memory_format=torch.channels_last)  # (b, K, F, T)
        with _autocast(device, amp=amp):
            logits = stack.forward(x)                                      # (b, K, C)
        probs = torch.softmax(logits.float(), dim=-1).cpu()
        for j, nj in enumerate(n):
            if nj:
                outs[j].append(probs[:nj, j])
    return [torch.cat(o).numpy() if o else np.zeros((0, 0), np.float32) for o in outs]


def _member_step(trainee: _Trainee, rows: torch.Tensor, *, device, amp) -> None:
    """One step of one member through its own module (its batch size differs from the
    others'): exactly the per-fold step."""
    from serlib.training import _autocast

    xb = trainee.fit.x[rows].contiguous(memory_format=torch.channels_last)
    yb = trainee.fit.y[rows]
    trainee.model.train()
    with _autocast(device, amp=amp):
        logits = trainee.model(xb)
    loss = trainee.criterion(logits, yb)
    trainee.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    trainee.optimizer.step()
    trainee.record_loss(loss, len(yb))


def train_members(members: Sequence[Member], *, device: torch.device | str,
                  on_end: Callable[[Member, dict | BaseException], None] | None = None,
                  compile: bool = False, regroup_at: float | None = None,
                  progress: bool = True) -> dict[object, dict | BaseException]:
    """Train ``members`` (folds whose :func:`stack_key` agree) as one grouped network.

    Parameters
    ----------
    members : sequence of Member
        Each trained as :func:`serlib.training.train_fold` would train it alone.
    device : torch.device or str
    on_end : callable, optional
        ``on_end(member, result)`` as soon as a member ends (early stop or last epoch):
        ``result`` as :func:`serlib.training.cross_validate_arrays` gives it per fold, or the
        exception that stopped this member (a non-finite loss); the others go on.
    compile : bool
        On CUDA: ``torch.compile`` with CUDA graphs (``mode="reduce-overhead"``), members that
        end masked rather than removed (static shapes). Ignored on the CPU.
    regroup_at : float, optional
        Without ``compile``, a member that ends is masked (its slot sees zeros and takes no
        step) until the members still training are at most this fraction of the grouped
        network's width; then the network is rebuilt from them. 1.0 rebuilds at every end
        (the CPU default: a masked slot costs its full compute there), 0.5 on CUDA (each new
        width re-runs cuDNN's autotuning of every convolution shape); 0 never rebuilds.
    progress : bool
        One bar over epochs.

    Returns
    -------
    dict
        By ``member.key``: the result or the exception.
    """
    from tqdm import tqdm

    from serlib import training

    members = list(members)
    if not members:
        return {}
    for member in members:
        reason = batched_unsupported(member.config)
        if reason:
            raise SerlibError(f"fold {member.fold} cannot be batched: {reason}")
    keys = {stack_key(m.config) for m in members}
    if len(keys) > 1:
        raise SerlibError("members of one group must share feature, feature_dtype, width, "
                          f"batch_size, amp and device; got {sorted(map(str, keys))}")
    if not isinstance(device, torch.device):
        device = training.resolve_device(device)
    compile = bool(compile) and device.type == "cuda"
    if regroup_at is None:
        regroup_at = 0.5 if device.type == "cuda" else 1.0
    if not 0.0 <= regroup_at <= 1.0:
        raise SerlibError(f"regroup_at={regroup_at!r} must be between 0 and 1")
    if compile:
        regroup_at = 0.0                                  # static shapes for CUDA graphs
    amp = members[0].config.amp
    results: dict[object, dict | BaseException] = {}

    def end(trainee: _Trainee, outcome) -> None:
        results[trainee.member.key] = outcome
        if on_end is not None:
            on_end(trainee.member, outcome)

    with training._kernel_settings(device), heap_allocations(device):
        shared = _shared_features(members, device=device)
        trainees = [_Trainee(m, device=device, shared=shared[id(m.features)]) for m in members]
        template = trainees[0].model
        slots: list[_Trainee | None] = list(trainees)     # the stack's members, None: masked
        stack = _Stack(template, [t.model for t in trainees], device=device, compile=compile)
        bar = tqdm(range(1, max(m.config.epochs for m in members) + 1), desc="batched folds",
                   unit="epoch", disable=not progress, leave=False)
        for _ in bar:
            live = [t for t in slots if t is not None]
            if not live:
                break
            epoch_started = time.perf_counter()
            for t in live:
                t.start_epoch()
            for step in range(max(t.n_steps() for t in live)):
                rows = [None if t is None else t.rows(step) for t in slots]
                ready = [(j, r) for j, r in enumerate(rows) if r is not None]
                if not ready:
                    continue
                if len(ready) == len(live) and len({len(r) for _, r in ready}) == 1:
                    _stacked_step(stack, slots, dict(ready), device=device, amp=amp)
                else:
                    for j, r in ready:
                        _member_step(slots[j], r, device=device, amp=amp)
            probs = _predict_stacked(stack, [None if t is None else t.val for t in slots],
                                     batch_size=2 * members[0].config.batch_size,
                                     device=device, amp=amp)
            ended = []
            for t in live:
                t.seconds += (time.perf_counter() - epoch_started) / len(live)
            for j, t in enumerate(slots):
                if t is None:
                    continue
                try:
                    t.end_epoch(probs[j])
                except SerlibError as error:
                    ended.append(j)
                    end(t, error)
                    continue
                if t.done:
                    ended.append(j)
                    end(t, t.result())
            bar.set_postfix(training=sum(t is not None for t in slots) - len(ended))
            if not ended:
                continue
            for j in ended:
                slots[j] = None
            still = [t for t in slots if t is not None]
            if still and len(still) < len(slots) and len(still) <= regroup_at * len(slots):
                # the members still training, in a grouped network of their own
                slots = still
                stack = _Stack(template, [t.model for t in slots], device=device)
    return results


def _shared_features(members: Sequence[Member], *, device: torch.device
                     ) -> dict[int, torch.Tensor]:
    """Each distinct features array of ``members`` once as a (N, 1, F, T) tensor (its own
    dtype, so that normalising gives the per-fold path's values) on ``device``, by ``id`` of
    the array: the members normalise their rows as they gather them, instead of each holding
    a normalised copy of the corpus."""
    shared = {}
    for member in members:
        if id(member.features) not in shared:
            x = torch.from_numpy(np.ascontiguousarray(member.features))
            if device.type == "cuda":
                x = x.pin_memory().to(device, non_blocking=True)
            shared[id(member.features)] = x[:, None]
    return shared


def _stacked_step(stack: _Stack, slots: Sequence[_Trainee | None], rows: dict[int, torch.Tensor],
                  *, device, amp) -> None:
    """One step of every live member through the grouped network; masked slots see zeros
    and take no step."""
    from serlib.training import _autocast

    size = len(next(iter(rows.values())))
    parts = []
    for j, t in enumerate(slots):
        if j in rows:
            parts.append(t.fit.x[rows[j]])                                 # (B, 1, F, T)
        else:
            parts.append(stack_zero_input(slots, size))
    x = torch.cat(parts, dim=1).contiguous(memory_format=torch.channels_last)  # (B, K, F, T)
    stack.net.train()
    with _autocast(device, amp=amp):
        logits = stack.forward(x)                                          # (B, K, C)
    losses = {j: slots[j].criterion(logits[:, j], slots[j].fit.y[r]) for j, r in rows.items()}
    for param in stack.stacked_params:
        param.grad = None
    sum(losses.values()).backward()
    stack.hand_gradients(list(rows))
    for j, loss in losses.items():
        trainee = slots[j]
        trainee.optimizer.step()
        trainee.optimizer.zero_grad(set_to_none=True)
        trainee.record_loss(loss, size)


def stack_zero_input(slots, size: int) -> torch.Tensor:
    live = next(t for t in slots if t is not None)
    return live.fit.x.new_zeros((size, *live.fit.x.shape[1:]))


# ----------------------------------------------------------------------------- run folders
def train_runs_batched(items: Sequence[tuple], *, device: torch.device | None = None,
                       compile: bool = False, progress: bool = True
                       ) -> dict[tuple[str, int], dict | BaseException]:
    """Train folds of prepared runs as one group and write each fold as it ends.

    Parameters
    ----------
    items : sequence of (setup, features, out_dir, fold)
        ``setup`` from :func:`serlib.training.prepare_run`, ``features`` (N, F, T) from
        :func:`serlib.training.load_features`, the run folder (locked by the caller, its
        ``config.json`` written) and the fold (1-based).
    device : torch.device, optional
        Default: the first setup's device.

    Returns
    -------
    dict
        By ``(str(out_dir), fold)``: the fold's metrics as written, or the exception that
        stopped it.
    """
    from serlib.training import _write_fold

    setups = {}
    members = []
    for setup, features, out_dir, fold in items:
        key = (str(out_dir), fold)
        setups[key] = setup
        train_idx, test_idx = setup.folds[fold - 1]
        members.append(Member(key=key, config=setup.config,
                              features=features.astype(np.float32, copy=False),
                              labels=setup.labels, train_idx=train_idx, test_idx=test_idx,
                              fold=fold, groups=setup.groups))
    written: dict[tuple[str, int], dict | BaseException] = {}

    def save(member: Member, outcome) -> None:
        if isinstance(outcome, BaseException):
            written[member.key] = outcome
            return
        out_dir, fold = member.key
        # each fold is on disk as soon as it ends: an interruption loses only unfinished folds
        written[member.key] = _write_fold(Path(out_dir), setups[member.key], fold, outcome)

    device = device or items[0][0].device
    train_members(members, device=device, on_end=save, compile=compile, progress=progress)
    return written


def train_folds_batched(setup, features: np.ndarray, out_dir: str | os.PathLike, *,
                        folds: list[int], device: torch.device | None = None,
                        progress: bool = True) -> dict[int, dict]:
    """:func:`serlib.training.train_folds` through the batched path (one group of the run's
    folds); falls back to it when :func:`supports_batched` says no. Raises the first fold's
    error after the other folds are written."""
    from serlib.training import train_folds

    if not supports_batched(setup.config) or len(folds) < 2:
        return train_folds(setup, features, out_dir, folds=folds, device=device,
                           progress=progress)
    outcomes = train_runs_batched([(setup, features, out_dir, k) for k in folds],
                                  device=device, progress=progress)
    errors = [o for o in outcomes.values() if isinstance(o, BaseException)]
    if errors:
        raise errors[0]
    return {fold: outcomes[(str(out_dir), fold)] for fold in folds}


# ----------------------------------------------------------------------------- the grid's tasks
def group_tasks(tasks: Sequence, *, workers: int = 1,
                max_members: int = MAX_MEMBERS) -> list[tuple]:
    """The grid's fold tasks (:class:`serlib.grid.FoldTask`) in groups for
    :func:`run_group_task`: tasks whose configs :func:`stack_key` agree, in chunks of at most
    ``ceil(batchable / workers)`` (so that every worker gets a group) and ``max_members``;
    a task the batched path does not support is a group of its own (trained per fold)."""
    groups: list[tuple] = []
    buckets: dict[tuple, list] = {}
    for task in tasks:
        if supports_batched(task.config):
            buckets.setdefault(stack_key(task.config), []).append(task)
        else:
            groups.append((task,))
    batchable = sum(len(b) for b in buckets.values())
    size = max(1, min(max_members, math.ceil(batchable / max(1, workers))))
    for bucket in buckets.values():
        groups.extend(tuple(bucket[i:i + size]) for i in range(0, len(bucket), size))
    return groups


def run_group_task(group: Sequence) -> list[dict]:
    """Train and write one group of fold tasks (in a worker); one outcome per task, as
    :func:`serlib.grid.run_fold_task` gives it (``{"metrics": ...}`` or ``{"error": ...}``)."""
    from serlib.grid import run_fold_task

    if len(group) == 1:
        return [run_fold_task(group[0])]
    try:
        from serlib.engines import worker_device
        from serlib.grid import _features_for
        from serlib.training import prepare_run

        items = []
        for task in group:
            setup = prepare_run(task.selection, config=task.config)
            items.append((setup, _features_for(setup, task.cache_dir), task.run_dir,
                          task.fold))
        device = items[0][0].device
        if device.type == "cuda" and worker_device() is not None:
            device = torch.device(worker_device())
        outcomes = train_runs_batched(items, device=device, progress=False)
    except Exception:  # noqa: BLE001 - reported per fold by the grid
        error = traceback.format_exc()
        return [{"error": error} for _ in group]
    out = []
    for task in group:
        outcome = outcomes.get((str(task.run_dir), task.fold))
        if isinstance(outcome, BaseException):
            out.append({"error": "".join(traceback.format_exception(outcome))})
        elif outcome is None:
            out.append({"error": "the batched group ended without this fold"})
        else:
            out.append({"metrics": outcome})
    return out


__all__ = ["MAX_MEMBERS", "Member", "batched_unsupported", "group_tasks", "grouped_network",
           "heap_allocations", "run_group_task", "stack_key", "supports_batched",
           "train_folds_batched", "train_members", "train_runs_batched"]
