"""Image classifiers with normalization inside the model.

Every model takes images in [0, 1] and normalizes them itself, so attacks and explanations see the
whole pipeline (an attack that perturbs normalized inputs measures the wrong epsilon).
"""

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """Per-channel (x - mean) / std as the first layer of every model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def small_cnn(in_channels: int, num_classes: int) -> nn.Module:
    """Two conv layers and a linear head: enough for 8x8 digits (about 98% clean accuracy)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.LazyLinear(64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU()]


def fast_cnn(in_channels: int, num_classes: int, width: int = 64) -> nn.Module:
    """A small VGG-style net in the spirit of airbench: three conv-pool stages, global max pool.

    Width 64 keeps it quick on a CPU; airbench's widths are (64, 256, 256).
    """
    w1, w2, w3 = width, 2 * width, 4 * width
    return nn.Sequential(
        *_conv_bn(in_channels, w1 // 2),
        *_conv_bn(w1 // 2, w1),
        nn.MaxPool2d(2),
        *_conv_bn(w1, w2),
        *_conv_bn(w2, w2),
        nn.MaxPool2d(2),
        *_conv_bn(w2, w3),
        *_conv_bn(w3, w3),
        nn.MaxPool2d(2),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(w3, num_classes, bias=False),
    )


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def resnet18(in_channels: int, num_classes: int) -> nn.Module:
    """ResNet-18, CIFAR variant (3x3 stem, no max pool), as in Madry et al. and RobustBench."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
    ]
    c_in = 64
    for c_out, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        layers += [_BasicBlock(c_in, c_out, stride), _BasicBlock(c_out, c_out, 1)]
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


ARCHITECTURES = {"small_cnn": small_cnn, "fast_cnn": fast_cnn, "resnet18": resnet18}


def build_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    width: int | None = None,
) -> nn.Module:
    """Normalize + the named architecture, with lazy layers materialized by one dummy pass.
    `width` (fast_cnn only) shrinks the net for CPU runs."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(ARCHITECTURES)}")
    extra = {} if width is None else {"width": width}
    model = nn.Sequential(
        Normalize(mean, std), ARCHITECTURES[name](in_channels, num_classes, **extra)
    )
    with torch.no_grad():
        model.eval()(torch.zeros(1, in_channels, image_size, image_size))
    return model
