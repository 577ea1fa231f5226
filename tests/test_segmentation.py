"""Superpixels on small images: counts, determinism, warnings and bad input."""

import numpy as np
import pytest

from trainables.data import load_splits
from trainables.segmentation import segment_batch


@pytest.fixture(scope="module")
def cifar_images(cifar10_tarball) -> np.ndarray:
    splits = load_splits("cifar10", cifar10_tarball)
    return splits.test_x[:16].permute(0, 2, 3, 1).numpy()


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
