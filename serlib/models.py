"""ResNet-18 for (1, frequency, time) inputs, as the paper uses it.

He et al. (2016) basic blocks, [2, 2, 2, 2] of them, batch norm before every ReLU, the
torchvision stem (7x7/2 convolution, 3x3/2 max-pool), global average pooling and a linear head.
Only the input channels (1: a spectrogram or MFCC matrix) and the head (4 classes) differ from
torchvision's ``resnet18``; ``width`` scales every stage (64 is the paper's; narrower networks
make CPU runs practical).

Beyond the paper (off by default): ``lengths`` (each clip's own number of frames) makes the
network ignore padding: activations past a clip's end are zeroed before every convolution and
the global pooling averages the clip's own positions only, so that a clip gives the same output
however much padding follows it. ``pooling="meanstd"`` pools mean and standard deviation;
``dropout`` acts before the head. :class:`Ensemble` averages the probabilities of several
such networks (``TrainConfig.ensemble``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from serlib.errors import SerlibError

#: Added to the variance of mean+std pooling before the square root (finite gradients).
STD_EPS = 1e-5


def downsampled_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Valid positions after a stride-2 layer of this network (kernel 2p + 1, padding p):
    output i is centred on input 2i, so ``ceil(L / 2)`` of them see the clip. Shape (B,)."""
    return (lengths + 1) // 2


def mask_time(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, F, T) with the time steps at and after ``lengths`` (B,) set to zero."""
    steps = torch.arange(x.shape[-1], device=x.device)                  # (T,)
    keep = (steps[None, :] < lengths[:, None]).to(x.dtype)              # (B, T)
    return x * keep[:, None, None, :]


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

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        """(B, C, F, T) -> (B, C', F', T'); with ``lengths`` (B,) (``x`` zero past them), also
        returns the output's lengths, the output being zero past them too."""
        if lengths is None:
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + self.shortcut(x))
        stride = self.conv1.stride[-1]
        out_lengths = downsampled_lengths(lengths) if stride == 2 else lengths
        out = mask_time(self.relu(self.bn1(self.conv1(x))), out_lengths)
        out = self.bn2(self.conv2(out))
        return mask_time(self.relu(out + self.shortcut(x)), out_lengths), out_lengths


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
    pooling : {"mean", "meanstd"}
        Global pooling over frequency and time: the mean (the paper's ResNet), or the mean and
        standard deviation concatenated (the head then has 2 x 8 x width inputs).
    dropout : float
        Dropout probability before the head (0: none, the paper's).

    Notes
    -----
    Input (B, in_channels, F, T), e.g. (B, 1, 128, 259) or (B, 1, 40, 259); output
    (B, n_classes). ``forward(x, lengths)`` with ``lengths`` (B,), each clip's own frames.
    """

    def __init__(self, *, n_classes: int = 4, width: int = 64, in_channels: int = 1,
                 pooling: str = "mean", dropout: float = 0.0):
        super().__init__()
        for name, value in (("n_classes", n_classes), ("width", width),
                            ("in_channels", in_channels)):
            if not isinstance(value, int) or value < 1:
                raise SerlibError(f"{name}={value!r} must be a positive integer")
        if pooling not in ("mean", "meanstd"):
            raise SerlibError(f"pooling={pooling!r} must be 'mean' or 'meanstd'")
        if not 0 <= dropout < 1:
            raise SerlibError(f"dropout={dropout!r} must be in [0, 1)")
        self.pooling = pooling
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
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(channels * (2 if pooling == "meanstd" else 1), n_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, n_classes) of ``x`` (B, in_channels, F, T); ``lengths`` (B,), optional:
        each clip's own frames (the rest is ignored)."""
        if lengths is None:
            x = self.stem(x)        # (B, w, F/4, T/4)
            x = self.layer1(x)      # (B, w, F/4, T/4)
            x = self.layer2(x)      # (B, 2w, F/8, T/8)
            x = self.layer3(x)      # (B, 4w, F/16, T/16)
            x = self.layer4(x)      # (B, 8w, F/32, T/32)
            if self.pooling == "mean":
                x = self.pool(x).flatten(1)  # (B, 8w)
            else:
                # eps inside the root: a channel that is zero everywhere (dead ReLU) would
                # otherwise give sqrt(0), whose gradient is infinite (NaN loss)
                std = (x.var(dim=(2, 3), correction=0) + STD_EPS).sqrt()
                x = torch.cat([x.mean(dim=(2, 3)), std], dim=1)
            return self.fc(self.dropout(x))  # (B, n_classes)
        lengths = lengths.to(x.device).clamp(min=1, max=x.shape[-1])
        x = mask_time(x, lengths)
        x = self.stem[2](self.stem[1](self.stem[0](x)))       # conv, BN, ReLU: (B, w, F/2, T/2)
        lengths = downsampled_lengths(lengths)
        # max-pool after a ReLU: values >= 0, so zeros past the end act as its -inf padding
        x = mask_time(self.stem[3](mask_time(x, lengths)), downsampled_lengths(lengths))
        lengths = downsampled_lengths(lengths)                 # (B, w, F/4, T/4)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x, lengths = block(x, lengths)                 # ... (B, 8w, F/32, T/32)
        n = (lengths * x.shape[2]).to(x.dtype)[:, None]        # (B, 1) own positions
        mean = x.sum(dim=(2, 3)) / n                           # zero past the end
        if self.pooling == "mean":
            x = mean                                           # (B, 8w)
        else:
            centred = mask_time(x - mean[:, :, None, None], lengths)
            std = (centred.square().sum(dim=(2, 3)) / n + STD_EPS).sqrt()
            x = torch.cat([mean, std], dim=1)                  # (B, 16w)
        return self.fc(self.dropout(x))


class Ensemble(nn.Module):
    """Several networks of the same inputs, whose prediction is their mean probability.

    ``forward`` returns the log of the members' mean softmax probabilities, shape
    (B, n_classes): valid logits (``softmax(log p) = p``), so that everything that takes a
    model's logits takes an ensemble's. :meth:`member_logits` gives each member's own logits
    (training trains every member on its own loss).

    Parameters
    ----------
    members : sequence of nn.Module
        At least two networks with the same ``forward(x, lengths=None)``.
    """

    def __init__(self, members):
        super().__init__()
        members = list(members)
        if len(members) < 2:
            raise SerlibError(f"an Ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)

    def member_logits(self, x: torch.Tensor, lengths: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """Each member's logits, shape (M, B, n_classes)."""
        return torch.stack([m(x) if lengths is None else m(x, lengths) for m in self.members])

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """log(mean over members of softmax(logits)), shape (B, n_classes)."""
        log_probs = torch.log_softmax(self.member_logits(x, lengths).float(), dim=-1)
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))


def build_model(*, n_classes: int, width: int, pooling: str = "mean", dropout: float = 0.0,
                members: int = 1) -> nn.Module:
    """A :class:`ResNet18`, or an :class:`Ensemble` of ``members`` of them (initialised one
    after the other from torch's random state)."""
    if not isinstance(members, int) or members < 1:
        raise SerlibError(f"members={members!r} must be a positive integer")
    nets = [ResNet18(n_classes=n_classes, width=width, pooling=pooling, dropout=dropout)
            for _ in range(members)]
    return nets[0] if members == 1 else Ensemble(nets)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
