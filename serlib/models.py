"""ResNet-18 for (1, frequency, time) inputs, as the paper uses it.

He et al. (2016) basic blocks, [2, 2, 2, 2] of them, batch norm before every ReLU, the
torchvision stem (7x7/2 convolution, 3x3/2 max-pool), global average pooling and a linear head.
Only the input channels (1: a spectrogram or MFCC matrix) and the head (4 classes) differ from
torchvision's ``resnet18``; ``width`` scales every stage (64 is the paper's; narrower networks
make CPU runs practical).
"""

from __future__ import annotations

import torch
from torch import nn

from serlib.errors import SerlibError


class BasicBlock(nn.Module):
    """y = ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x)); shortcut: identity or 1x1 conv+BN."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 classifier of feature matrices.

    Parameters
    ----------
    n_classes : int
        Output logits (4: neutral, happiness, sadness, anger).
    width : int
        Channels of the first stage; stages have width, 2w, 4w, 8w (64 in the paper).
    in_channels : int
        Input channels (1 for a spectrogram or MFCC matrix).

    Notes
    -----
    Input shape (B, in_channels, F, T), e.g. (B, 1, 128, 259) or (B, 1, 40, 259); output
    shape (B, n_classes).
    """

    def __init__(self, *, n_classes: int = 4, width: int = 64, in_channels: int = 1):
        super().__init__()
        for name, value in (("n_classes", n_classes), ("width", width),
                            ("in_channels", in_channels)):
            if not isinstance(value, int) or value < 1:
                raise SerlibError(f"{name}={value!r} must be a positive integer")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages, channels = [], width
        for i, out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(channels, out, stride=stride),
                                        BasicBlock(out, out)))
            channels = out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, n_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_classes) of a batch of feature matrices (B, in_channels, F, T)."""
        x = self.stem(x)        # (B, w, F/4, T/4)
        x = self.layer1(x)      # (B, w, F/4, T/4)
        x = self.layer2(x)      # (B, 2w, F/8, T/8)
        x = self.layer3(x)      # (B, 4w, F/16, T/16)
        x = self.layer4(x)      # (B, 8w, F/32, T/32)
        x = self.pool(x).flatten(1)  # (B, 8w)
        return self.fc(x)       # (B, n_classes)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
