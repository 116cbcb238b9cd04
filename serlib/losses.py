"""Focal loss (Lin et al., 2017) for multi-class classification, as the paper uses it.

    FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t)

where p_t is the softmax probability of the true class. gamma = 0 and no alpha is the
cross-entropy ("softmax") loss. Computed from log-softmax, so it stays finite for extreme logits.

With label smoothing e the one-hot target becomes q = (1 - e) onehot + e / C and the loss
-sum_c q_c (1 - p_c)^gamma log(p_c) (at gamma = 0: torch's ``cross_entropy(label_smoothing=e)``).
:func:`class_weights` gives per-class weights (for ``alpha``) from a training part's labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from serlib.errors import SerlibError

REDUCTIONS = ("none", "mean", "sum")
CLASS_WEIGHTINGS = ("inverse", "effective")


def class_weights(labels, *, n_classes: int, kind: str, beta: float = 0.999) -> torch.Tensor:
    """Per-class weights from training labels, shape (n_classes,).

    Parameters
    ----------
    labels : array-like of int, shape (N,)
        Class indices of the training part (never the test fold).
    n_classes : int
    kind : {"inverse", "effective"}
        "inverse": ``N / (C n_c)`` (scikit-learn's "balanced"); "effective": the effective
        number of samples of Cui et al. (CVPR 2019), ``(1 - beta) / (1 - beta^n_c)``, scaled
        to sum to C.
    beta : float
        In [0, 1); only for "effective".

    A class absent from ``labels`` (its weight would be infinite) is refused.
    """
    if kind not in CLASS_WEIGHTINGS:
        raise SerlibError(f"class weights kind={kind!r} must be one of "
                          f"{', '.join(CLASS_WEIGHTINGS)}")
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.int64),
                            minlength=n_classes).double()
    if len(counts) != n_classes or bool((counts == 0).any()):
        raise SerlibError(f"class weights need every one of the {n_classes} classes in the "
                          f"training labels; counts per class: {counts.long().tolist()}")
    if kind == "inverse":
        weights = counts.sum() / (n_classes * counts)
    else:
        if not 0 <= beta < 1:
            raise SerlibError(f"beta={beta!r} must be in [0, 1)")
        weights = (1 - beta) / (1 - beta ** counts)
        weights = weights * n_classes / weights.sum()
    return weights.float()


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 2.0,
    alpha: Sequence[float] | torch.Tensor | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Multi-class focal loss.

    Parameters
    ----------
    logits : torch.Tensor, shape (B, C)
        Unnormalised scores.
    target : torch.Tensor, shape (B,)
        Class indices in [0, C).
    gamma : float
        Focusing parameter (>= 0); 0 gives cross-entropy.
    alpha : sequence of C floats or tensor of shape (C,), optional
        Per-class weights; the loss of a sample is multiplied by ``alpha[target]``.
    reduction : {"none", "mean", "sum"}
        "mean" averages over the batch (unweighted mean, also when alpha is given).
    label_smoothing : float
        In [0, 1): the target's one-hot vector becomes (1 - e) onehot + e / C.

    Returns
    -------
    torch.Tensor
        Shape (B,) for "none", else a scalar.
    """
    if reduction not in REDUCTIONS:
        raise SerlibError(f"reduction={reduction!r} must be one of {', '.join(REDUCTIONS)}")
    if gamma < 0:
        raise SerlibError(f"gamma={gamma!r} must be >= 0")
    if logits.ndim != 2 or target.shape != logits.shape[:1]:
        raise SerlibError(
            f"logits must be (B, C) and target (B,); got {tuple(logits.shape)} and "
            f"{tuple(target.shape)}"
        )
    if not 0 <= label_smoothing < 1:
        raise SerlibError(f"label_smoothing={label_smoothing!r} must be in [0, 1)")
    log_p = F.log_softmax(logits, dim=-1)                        # (B, C)
    if gamma == 0 and alpha is None and label_smoothing == 0:
        # exactly F.cross_entropy (same kernel, same reduction order)
        return F.nll_loss(log_p, target, reduction=reduction)
    if label_smoothing > 0:
        n_classes = logits.shape[1]
        q = torch.full_like(log_p, label_smoothing / n_classes)  # (B, C) soft targets
        q.scatter_add_(1, target[:, None], torch.full_like(log_p[:, :1], 1 - label_smoothing))
        loss = -(q * _focal_weight(log_p, gamma) * log_p).sum(dim=1)   # (B,)
    else:
        log_pt = log_p.gather(1, target[:, None]).squeeze(1)     # (B,)
        loss = -log_pt if gamma == 0 else -_focal_weight(log_pt, gamma) * log_pt
    if alpha is not None:
        weights = torch.as_tensor(alpha, dtype=logits.dtype, device=logits.device)
        if weights.shape != logits.shape[1:]:
            raise SerlibError(
                f"alpha must have one weight per class ({logits.shape[1]}), got shape "
                f"{tuple(weights.shape)}"
            )
        loss = loss * weights[target]
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _focal_weight(log_p: torch.Tensor, gamma: float) -> torch.Tensor:
    """(1 - p)^gamma from log p, any shape."""
    if gamma == 0:
        return torch.ones_like(log_p)
    # 1 - p_t = -expm1(log p_t): accurate where p_t is close to 1. The base is kept >= the
    # smallest normal float, so that d/dp (1 - p)^gamma stays finite for gamma < 1 where
    # p_t rounds to 1 (there log p_t = 0 and the loss and its gradient are 0).
    base = (-torch.expm1(log_p)).clamp(min=torch.finfo(log_p.dtype).tiny)
    return base ** gamma


class FocalLoss(nn.Module):
    """:func:`focal_loss` as a module (``FocalLoss(gamma=0)`` is cross-entropy)."""

    def __init__(self, *, gamma: float = 2.0, alpha: Sequence[float] | None = None,
                 reduction: str = "mean"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise SerlibError(f"reduction={reduction!r} must be one of {', '.join(REDUCTIONS)}")
        self.gamma = float(gamma)
        self.reduction = reduction
        self.register_buffer("alpha", None if alpha is None else torch.as_tensor(alpha))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, target, gamma=self.gamma, alpha=self.alpha,
                          reduction=self.reduction)
