"""Superpixels on small images: counts, determinism, warnings and bad input."""

import numpy as np
import pytest

from tests.conftest import archive_jpegs
from trainables.segmentation import SUPERPIXELS_BY_SIDE, segment_batch, superpixel_defaults


@pytest.fixture(scope="module")
def cifar_images(cifar10_tarball) -> np.ndarray:
    """The first 16 test images (test/airplane/), float32 NHWC in [0, 1]."""
    return archive_jpegs(cifar10_tarball, 16, "test/airplane/").astype(np.float32) / 255.0


def _counts(segments: np.ndarray) -> np.ndarray:
    return segments.reshape(len(segments), -1).max(axis=1) + 1


def test_auto_on_8x8_is_a_grid_of_2x2_cells():
    images = np.random.default_rng(0).random((3, 8, 8, 1))
    segments = segment_batch(images)
    assert segments.shape == (3, 8, 8) and segments.dtype == np.int32
    for seg in segments:
        assert sorted(np.bincount(seg.ravel())) == [4] * 16
        assert np.array_equal(seg[::2, ::2], np.arange(16).reshape(4, 4))


@pytest.mark.parametrize("method", ["auto", "slic", "quickshift", "grid"])
def test_cifar_gets_15_to_50_superpixels_deterministically(cifar_images, method):
    segments = segment_batch(cifar_images, method, seed=3)
    counts = _counts(segments)
    assert counts.min() >= 4 and 15 <= counts.mean() <= 50, counts
    for seg, k in zip(segments, counts, strict=True):
        assert np.array_equal(np.unique(seg), np.arange(k))  # labels 0..K-1, as lime needs
    assert np.array_equal(segments, segment_batch(cifar_images, method, seed=3))


def test_grayscale_works_with_every_method(cifar_images):
    gray = cifar_images.mean(axis=-1, keepdims=True)
    for method in ("slic", "quickshift"):
        assert 15 <= _counts(segment_batch(gray, method)).mean() <= 50


def test_warns_below_4_superpixels():
    flat = np.full((2, 8, 8, 1), 0.5)  # quickshift finds one region
    with pytest.warns(UserWarning, match="2 image\\(s\\) got fewer than 4 superpixels"):
        segment_batch(flat, "quickshift")


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (np.zeros((32, 32, 3)), "must be \\(N, H, W, C\\)"),
        (np.zeros((2, 3, 32, 32)), "channels-last"),
        (np.full((1, 8, 8, 1), np.nan), "NaN"),
        (np.full((1, 8, 8, 1), 255.0), "\\[0, 1\\]"),
    ],
)
def test_bad_input_is_named(images, match):
    with pytest.raises(ValueError, match=match):
        segment_batch(images)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown segmentation"):
        segment_batch(np.zeros((1, 8, 8, 1)), "felzenszwalb")


def _smooth_images(n: int, side: int, channels: int = 3) -> np.ndarray:
    """Random images with structure at every size: 6x6 noise blown up to side x side."""
    import torch

    from trainables.data import resize

    coarse = torch.from_numpy(np.random.default_rng(side).random((n, channels, 6, 6)))
    return resize(coarse.float(), side).permute(0, 2, 3, 1).double().numpy()


def test_the_defaults_grow_with_the_image_from_one_table():
    rows = [superpixel_defaults(s, s) for s in (8, 16, 32, 48, 64, 128, 224, 512)]
    for field in ("grid_cells", "slic_segments", "quickshift_kernel", "blur_sigma"):
        values = [getattr(r, field) for r in rows]
        assert values == sorted(values), field
    assert superpixel_defaults(8, 8) == SUPERPIXELS_BY_SIDE[0][1]
    assert superpixel_defaults(32, 20).slic_segments == 50  # the larger side decides


@pytest.mark.parametrize(
    "side, low, high", [(8, 16, 16), (32, 25, 40), (48, 50, 70), (96, 80, 105), (224, 85, 105)]
)
@pytest.mark.parametrize("channels", [1, 3])
def test_auto_superpixels_from_8x8_to_224x224(side, low, high, channels):
    counts = _counts(segment_batch(_smooth_images(3, side, channels)))
    assert low <= counts.min() and counts.max() <= high, counts


def test_lime_masking_and_weight_maps_at_224x224():
    """The pool's whole path on 224x224 RGB: superpixels, the torch back end's explanations
    (its chunks and forward batches shrink with the image), each mask fill, the weight maps."""
    import torch
    from torch import nn

    from trainables.explain import explain_images
    from trainables.refine import lime_weight_maps, mask_superpixels

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 7, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3),
    )  # fmt: skip
    images = torch.from_numpy(_smooth_images(2, 224)).permute(0, 3, 1, 2).float()
    segments = segment_batch(images.permute(0, 2, 3, 1).numpy())
    explanations = explain_images(
        model, images, torch.tensor([0, 2]), segments, backend="torch", num_samples=128
    )
    for e, seg in zip(explanations, segments, strict=True):
        assert e.weights.shape == (seg.max() + 1,) and np.isfinite(e.weights).all()
    for fill in ("mean", "zero", "blur"):
        masked = mask_superpixels(images, explanations, 0.3, fill=fill)
        changed = (masked != images).any(dim=1).float().mean().item()
        assert masked.shape == images.shape and 0.05 < changed < 0.6, (fill, changed)
    maps = lime_weight_maps(explanations, images.shape)
    assert maps.shape == (2, 1, 224, 224) and maps.min() == 1 and maps.max() == 2
