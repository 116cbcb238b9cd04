"""ResNet-18: parameter count against torchvision's, output shapes, blocks."""

from __future__ import annotations

import pytest
import torch

from serlib.errors import SerlibError
from serlib.models import BasicBlock, ResNet18, count_parameters


def test_parameter_count_matches_torchvision_resnet18():
    # torchvision.models.resnet18() has 11,689,512 parameters (3-channel stem, 1000 classes).
    # A 1-channel stem removes 64 * (3 - 1) * 7 * 7 = 6,272 conv weights; a 4-class head
    # replaces 512 * 1000 + 1000 = 513,000 parameters by 512 * 4 + 4 = 2,052.
    expected = 11_689_512 - 64 * 2 * 7 * 7 - (512 * 1000 + 1000) + (512 * 4 + 4)
    assert expected == 11_172_292
    assert count_parameters(ResNet18(n_classes=4, width=64, in_channels=1)) == expected


@pytest.mark.parametrize("shape", [(128, 259), (40, 259)])
@pytest.mark.parametrize("width", [4, 8])
def test_output_shape(shape, width):
    model = ResNet18(width=width).eval()
    assert model(torch.randn(3, 1, *shape)).shape == (3, 4)


def test_block_shortcut():
    block = BasicBlock(8, 16, stride=2).eval()
    assert block(torch.randn(2, 8, 10, 12)).shape == (2, 16, 5, 6)
    assert isinstance(BasicBlock(8, 8).shortcut, torch.nn.Identity)


def test_bad_width():
    with pytest.raises(SerlibError, match="width=0"):
        ResNet18(width=0)
