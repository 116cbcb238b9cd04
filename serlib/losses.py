"""Focal loss (Lin et al., 2017) for multi-class classification, as the paper uses it.

    FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t)

where p_t is the softmax probability of the true class. gamma = 0 and no alpha is the
cross-entropy ("softmax") loss. Computed from log-softmax, so it stays finite for extreme logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from serlib.errors import SerlibError

REDUCTIONS = ("none", "mean", "sum")


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 2.0,
    alpha: Sequence[float] | torch.Tensor | None = None,
    reduction: str = "mean",
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
    log_p = F.log_softmax(logits, dim=-1)                        # (B, C)
    if gamma == 0 and alpha is None:
        # exactly F.cross_entropy (same kernel, same reduction order)
        return F.nll_loss(log_p, target, reduction=reduction)
    log_pt = log_p.gather(1, target[:, None]).squeeze(1)         # (B,)
    if gamma == 0:
        loss = -log_pt
    else:
        # 1 - p_t = -expm1(log p_t): accurate where p_t is close to 1. The base is kept >= the
        # smallest normal float, so that d/dp (1 - p)^gamma stays finite for gamma < 1 where
        # p_t rounds to 1 (there log p_t = 0 and the loss and its gradient are 0).
        base = (-torch.expm1(log_pt)).clamp(min=torch.finfo(log_pt.dtype).tiny)   # (B,)
        loss = -(base ** gamma) * log_pt
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
