"""Image classifiers with normalization inside the model.

Every model takes images in [0, 1] and normalizes them itself, so attacks and explanations see the
whole pipeline (an attack that perturbs normalized inputs measures the wrong epsilon). The
network behind the normalization is a built-in architecture, a torchvision model or a user's
own factory (docs/data-and-models.md).
"""

import functools
import importlib
import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from trainables.data import first_line


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


class PatchWhitening(nn.Module):
    """airbench's first layer: a fixed 2x2 convolution whose filters are the eigenvectors of the
    training images' patch covariance, each scaled by 1/sqrt(its eigenvalue + eps).

    Why: the next convolution then sees decorrelated, unit-variance inputs, which speeds early
    training (Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024). Not trained (a
    buffer): `fit` sets it from data before training from scratch (fit_whitening), and a base's
    weights carry it. Unfitted, it passes each patch's pixels through unchanged.
    """

    def __init__(self, in_channels: int, size: int = 2, eps: float = 5e-4):
        super().__init__()
        dim = in_channels * size * size
        self.eps = eps
        self.register_buffer("weight", torch.eye(dim).view(dim, in_channels, size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, self.weight)

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        dim, _, size, _ = self.weight.shape
        patches = nn.functional.unfold(x.float(), size).transpose(1, 2).reshape(-1, dim)
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = eigenvectors.T / torch.sqrt(eigenvalues + self.eps)[:, None]
        self.weight.copy_(filters.flip(0).view_as(self.weight))  # the largest variance first


def fit_whitening(model: nn.Module, images: torch.Tensor) -> None:
    """Fit each PatchWhitening of `model` to the inputs that `images` give it (one forward pass
    in eval mode, so no BatchNorm statistic moves); a model without one is left as it is."""
    layers = [m for m in model.modules() if isinstance(m, PatchWhitening)]
    if not layers:
        return
    hooks = [m.register_forward_pre_hook(lambda m, args: m.fit(args[0])) for m in layers]
    was_training = model.training
    with torch.no_grad():
        model.eval()(images)
    for hook in hooks:
        hook.remove()
    model.train(was_training)


def _pool_block(c_in: int, c_out: int, ceil_mode: bool) -> list[nn.Module]:
    """airbench's block: conv, then pool, so its second conv runs at a quarter of the pixels."""
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.MaxPool2d(2, ceil_mode=ceil_mode),
        nn.BatchNorm2d(c_out),
        nn.GELU(),
        *_conv_bn(c_out, c_out),
    ]


def airbench_cnn(
    in_channels: int, num_classes: int, width: int = 16, image_size: int = 32
) -> nn.Module:
    """airbench's layout, narrower: a 2x2 patch-whitening stem (12 channels on RGB, no
    negated copies and no activation, unlike airbench's 24), three conv-pool-conv blocks of
    widths (w, 4w, 8w), global max pool.

    Why this shape on a CPU: each block pools after its first conv, and the narrow first block
    keeps the full-resolution convolutions cheap, so width 16 has about 4x fast_cnn width 16's
    parameters (274k) at about its speed (docs/benchmarks.md, "The base"). Images under 9
    pixels a side pool with ceil_mode, so three halvings of the stem's output leave a pixel.
    """
    stem = PatchWhitening(in_channels)
    ceil = (image_size - 1) // 8 < 1
    return nn.Sequential(
        stem,
        *_pool_block(stem.weight.shape[0], width, ceil),
        *_pool_block(width, 4 * width, ceil),
        *_pool_block(4 * width, 8 * width, ceil),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(8 * width, num_classes, bias=False),
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


ARCHITECTURES = {
    "small_cnn": small_cnn,
    "fast_cnn": fast_cnn,
    "airbench_cnn": airbench_cnn,
    "resnet18": resnet18,
}
WIDTH_MODELS = ("fast_cnn", "airbench_cnn")  # the architectures with a `width`
TORCHVISION_PREFIX = "torchvision:"
# `model`: a name of ARCHITECTURES, "torchvision:NAME" or "package.module:factory"
_MODEL_NAME = re.compile(r"torchvision:\w+|[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
MODEL_HELP = (
    f"must be one of {tuple(ARCHITECTURES)}, 'torchvision:NAME' (a torchvision classification "
    "model) or 'package.module:factory'"
)
# Keyword arguments some torchvision models need beyond num_classes: the input size of those
# that fix it, and no auxiliary heads (their training forward would return a tuple).
_TORCHVISION_KWARGS: dict[str, Callable[[int], dict[str, Any]]] = {
    "googlenet": lambda size: {"aux_logits": False, "init_weights": True},
    "inception_v3": lambda size: {"aux_logits": False, "init_weights": True},
    "maxvit_t": lambda size: {"input_size": (size, size)},
    **{f"vit_{v}": (lambda size: {"image_size": size}) for v in ("b_16", "b_32", "l_16", "l_32")},
    "vit_h_14": lambda size: {"image_size": size},
}


class ModelError(ValueError):
    """A model that cannot be found, imported or built, or gives the wrong output."""


def is_model_name(name: str) -> bool:
    """Whether `name` has the form of a model (whether it exists is model_factory's to say)."""
    return name in ARCHITECTURES or _MODEL_NAME.fullmatch(name) is not None


def _torchvision_model(
    arch: str, *, in_channels: int, num_classes: int, image_size: int
) -> nn.Module:
    """torchvision's `arch`, untrained, with num_classes outputs and its first convolution
    rebuilt for in_channels when that is not 3."""
    from torchvision import models  # torchvision pulls in torch._dynamo (~2 s): when used

    extra = _TORCHVISION_KWARGS.get(arch, lambda size: {})(image_size)
    model = models.get_model(arch, weights=None, num_classes=num_classes, **extra)
    if in_channels != 3:
        name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, nn.Conv2d(
            in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
            padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
            bias=conv.bias is not None, padding_mode=conv.padding_mode,
        ))  # fmt: skip
    return model


def model_factory(name: str) -> Callable[..., nn.Module]:
    """The callable behind a model name, called as factory(in_channels=, num_classes=,
    image_size=): a built-in architecture, a torchvision model, or a user's factory imported
    from its module (which must be importable wherever trials run). Raises ModelError."""
    if name in ARCHITECTURES:
        arch = ARCHITECTURES[name]
        wants_size = "image_size" in inspect.signature(arch).parameters
        return lambda *, in_channels, num_classes, image_size, **extra: arch(
            in_channels, num_classes, **extra, **({"image_size": image_size} if wants_size else {})
        )
    if not is_model_name(name):
        raise ModelError(f"unknown model {name!r}; it {MODEL_HELP}")
    module_name, _, attr = name.partition(":")
    if module_name == "torchvision":
        from torchvision import models

        available = models.list_models(module=models)
        if attr not in available:
            raise ModelError(
                f"torchvision has no classification model {attr!r} (e.g. "
                f"{', '.join(available[:3])}, ...)"
            )
        return functools.partial(_torchvision_model, attr)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # the user's module: any error while importing it
        raise ModelError(
            f"{name}: cannot import {module_name} ({type(e).__name__}: {first_line(e)}); is "
            "its folder on PYTHONPATH, or the working directory?"
        ) from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"{name}: {module_name} has no callable {attr!r}")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: calling it will tell
        return factory
    try:
        signature.bind(in_channels=1, num_classes=2, image_size=8)
    except TypeError as e:
        raise ModelError(
            f"{name}: the factory must take in_channels, num_classes and image_size as "
            f"keyword arguments; its signature is {attr}{signature} ({e})"
        ) from e
    return factory


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
    """Normalize + the named model (model_factory), checked on one batch of two blank images
    (which also materializes lazy layers): it must give (2, num_classes) logits. `width`
    (WIDTH_MODELS only) sets the net's widths. Raises ModelError, in one line."""
    factory = model_factory(name)
    extra = {} if width is None else {"width": width}
    try:
        net = factory(
            in_channels=in_channels, num_classes=num_classes, image_size=image_size, **extra
        )
    except Exception as e:  # the user's code: any error while building
        raise ModelError(f"{name} fails to build ({type(e).__name__}: {first_line(e)})") from e
    if not isinstance(net, nn.Module):
        raise ModelError(f"{name} returned a {type(net).__name__}, not a torch.nn.Module")
    model = nn.Sequential(Normalize(mean, std), net)
    shape = (2, in_channels, image_size, image_size)
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(shape))
    except Exception as e:  # the user's code: any error in its forward pass
        raise ModelError(
            f"{name} fails on a batch of shape {shape} ({type(e).__name__}: {first_line(e)})"
        ) from e
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"{name} gives output {got} on a batch of shape {shape}; expected logits of "
            f"shape (2, {num_classes})"
        )
    return model
