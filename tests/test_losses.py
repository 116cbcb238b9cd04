"""Focal loss: cross-entropy at gamma 0, the paper's 96 %, gradients, extreme logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from serlib.errors import SerlibError
from serlib.losses import FocalLoss, focal_loss


def naive_focal(logits, target, gamma, alpha=None):
    p = torch.softmax(logits, dim=-1)
    pt = p[torch.arange(len(target)), target]
    loss = -((1 - pt) ** gamma) * torch.log(pt)
    if alpha is not None:
        loss = loss * torch.as_tensor(alpha, dtype=logits.dtype)[target]
    return loss


def test_gamma_zero_is_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(64, 4), torch.randint(0, 4, (64,))
    for reduction in ("none", "mean", "sum"):
        assert torch.equal(focal_loss(logits, target, gamma=0.0, reduction=reduction),
                           F.cross_entropy(logits, target, reduction=reduction))


def test_paper_example_96_percent_lower():
    # p_t = 0.8: build logits whose softmax gives the true class 0.8
    logits = torch.log(torch.tensor([[0.8, 0.1, 0.05, 0.05]]))
    target = torch.tensor([0])
    ce = focal_loss(logits, target, gamma=0.0)
    fl = focal_loss(logits, target, gamma=2.0)
    assert math.isclose(float(fl / ce), 0.04, rel_tol=1e-5)  # (1 - 0.8)^2
    assert round(100 * (1 - float(fl / ce))) == 96


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 5.0])
def test_gradient_matches_autograd_of_naive_version(gamma):
    torch.manual_seed(1)
    logits = torch.randn(16, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (16,))
    alpha = [0.25, 1.0, 0.5, 1.0]
    ours = torch.autograd.grad(focal_loss(logits, target, gamma=gamma, alpha=alpha).sum(),
                               logits)[0]
    reference = torch.autograd.grad(naive_focal(logits, target, gamma, alpha).mean(),
                                    logits)[0]
    torch.testing.assert_close(ours, reference)
    # the modulating factor matters: the gradient differs from cross-entropy's
    ce = torch.autograd.grad(F.cross_entropy(logits, target), logits)[0]
    assert not torch.allclose(ours, ce)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
def test_extreme_logits_stay_finite(gamma):
    # one hopelessly wrong, one certain (p_t = 1 exactly), one whose p_t rounds to 1 in float32
    logits = torch.tensor([[1e4, -1e4, 0.0, 0.0], [-1e4, 1e4, 0.0, 0.0], [0.0, 30.0, 0.0, 0.0]],
                          requires_grad=True)
    target = torch.tensor([1, 1, 1])
    loss = focal_loss(logits, target, gamma=gamma, reduction="none")
    assert torch.isfinite(loss).all()
    assert loss[0] > 1e3 and loss[1] == 0
    loss.sum().backward()
    # gamma < 1 makes d/dp (1 - p)^gamma infinite at p = 1; the loss must still give finite,
    # vanishing gradients there
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[1:].abs().max() < 1e-6
    torch.testing.assert_close(logits.grad[0], torch.tensor([1.0, -1.0, 0.0, 0.0]))


def test_alpha_weights_each_sample_by_its_class():
    logits, target = torch.zeros(2, 4), torch.tensor([0, 3])
    loss = focal_loss(logits, target, gamma=2.0, alpha=[2.0, 1.0, 1.0, 0.5], reduction="none")
    base = focal_loss(logits, target, gamma=2.0, reduction="none")
    torch.testing.assert_close(loss, base * torch.tensor([2.0, 0.5]))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"reduction": "avg"}, "reduction='avg'"),
    ({"gamma": -1.0}, "gamma=-1.0"),
    ({"alpha": [1.0, 2.0]}, "one weight per class"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(SerlibError, match=match):
        focal_loss(torch.zeros(2, 4), torch.tensor([0, 1]), **kwargs)


def test_module():
    logits, target = torch.randn(8, 4), torch.randint(0, 4, (8,))
    torch.testing.assert_close(FocalLoss(gamma=1.5)(logits, target),
                               focal_loss(logits, target, gamma=1.5))
    with pytest.raises(SerlibError):
        FocalLoss(reduction="max")
