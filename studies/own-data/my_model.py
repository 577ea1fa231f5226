"""A user's own small classifier, as `model: my_model:build` in a study (this folder on
PYTHONPATH).

The engine calls `build(in_channels=C, num_classes=K, image_size=S)` and puts its own
`Normalize` (the training split's per-channel mean and std) in front of what it returns, so the
network takes normalized images and returns logits.
"""

from torch import nn


def _stage(c_in: int, c_out: int) -> list[nn.Module]:
    """conv 3x3, batch norm, ReLU, then halve the side."""
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    ]


def build(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Three conv-BN-ReLU-pool stages (16, 32, 64 channels), global average pool, linear.

    Any image_size of at least 8 works: the global pool removes the spatial size."""
    if image_size < 8:
        raise ValueError(f"image_size {image_size}: three 2x2 poolings need at least 8 pixels")
    return nn.Sequential(
        *_stage(in_channels, 16),
        *_stage(16, 32),
        *_stage(32, 64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )
