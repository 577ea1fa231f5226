"""CIFAR-10-C generator on a few real CIFAR-10 images: determinism, layout, severity ordering."""

import importlib.util
import io
import tarfile

import numpy as np
import pytest
import torch

from trainables.corruptions import (
    CORRUPTIONS,
    corrupt_images,
    corruption_accuracy,
    load_cifar10c,
    write_cifar10c,
)
from trainables.models import build_model

HAS_FROST = importlib.util.find_spec("imagecorruptions") is not None
AVAILABLE = tuple(c for c in CORRUPTIONS if HAS_FROST or c != "frost")

# The published CIFAR parameters do not make every corruption move the image further from the
# clean one as severity grows (mean absolute error, 8 images, measured here):
#   glass_blur        11.8 11.9 11.7 19.3 18.5  severities 1-3 share the pixel shuffle
#   motion_blur        7.0 10.5 13.4 13.4 15.9  (6, 2) and (8, 2): same sigma, same kernel
#   frost             27.4 39.5 43.3 39.1 36.9  the image weight falls from 0.9 to 0.75
#   elastic_transform 23.2 21.1 18.9 17.2 14.1  the affine part shrinks from 0.08 to 0.03 I
NOT_MONOTONE = {"glass_blur", "motion_blur", "frost", "elastic_transform"}


@pytest.fixture(scope="module")
def images(cifar10_tarball) -> np.ndarray:
    """The first 6 images of the shared CIFAR-10 archive, uint8 (6, 32, 32, 3)."""
    from PIL import Image

    out = []
    with tarfile.open(cifar10_tarball) as tar:
        for member in tar:
            if member.name.endswith(".jpg"):
                with Image.open(io.BytesIO(tar.extractfile(member).read())) as im:
                    out.append(np.asarray(im.convert("RGB")))
                if len(out) == 6:
                    break
    return np.stack(out)


@pytest.fixture(scope="module")
def errors(images) -> dict[str, list[float]]:
    """Mean absolute error against the clean images, per corruption and severity 1..5;
    checks shape, dtype and determinism on the way."""
    out = {}
    for name in AVAILABLE:
        out[name] = []
        for s in range(1, 6):
            corrupted = corrupt_images(images, name, s, seed=0)
            assert corrupted.shape == images.shape and corrupted.dtype == np.uint8
            assert np.array_equal(corrupted, corrupt_images(images, name, s, seed=0))
            out[name].append(float(np.abs(corrupted.astype(float) - images).mean()))
    return out


@pytest.mark.parametrize("name", [c for c in AVAILABLE if c not in NOT_MONOTONE])
def test_error_grows_with_severity(errors, name):
    e = errors[name]
    assert all(b >= a for a, b in zip(e, e[1:], strict=False)), e
    assert e[-1] > e[0] and e[0] > 0.5


@pytest.mark.parametrize("name", sorted(NOT_MONOTONE & set(AVAILABLE)))
def test_non_monotone_corruptions_still_corrupt(errors, name):
    e = errors[name]
    assert min(e) > 5, e  # every severity visibly changes the images


@pytest.mark.skipif(not HAS_FROST, reason="pip install --no-deps imagecorruptions==1.1.2")
def test_frost_adds_the_bright_frost_photo(images):
    frosted = corrupt_images(images, "frost", 1).astype(float)  # x + 0.2 frost
    assert (frosted >= images.astype(float) - 1).all() and frosted.mean() > images.mean() + 10


def test_seed_changes_random_corruptions(images):
    for name in ("gaussian_noise", "glass_blur", "fog", "elastic_transform"):
        assert not np.array_equal(
            corrupt_images(images, name, 3, seed=0), corrupt_images(images, name, 3, seed=1)
        )
    # a subset is corrupted exactly as in the full set
    np.testing.assert_array_equal(
        corrupt_images(images[:2], "snow", 4), corrupt_images(images, "snow", 4)[:2]
    )


def test_write_load_and_accuracy_round_trip(images, tmp_path):
    labels = np.arange(len(images)) % 10
    write_cifar10c(images, labels, tmp_path, corruptions=("contrast", "shot_noise"), seed=0)
    data = np.load(tmp_path / "contrast.npy")
    assert data.shape == (5 * len(images), 32, 32, 3) and data.dtype == np.uint8
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), np.tile(labels, 5))
    x, y = load_cifar10c(tmp_path, "shot_noise", 3)
    assert x.shape == (len(images), 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    np.testing.assert_array_equal(y.numpy(), labels)
    expected = corrupt_images(images, "shot_noise", 3).transpose(0, 3, 1, 2) / 255
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)
    model = build_model(
        "small_cnn", in_channels=3, num_classes=10, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3
    )
    result = corruption_accuracy(model, tmp_path, ("contrast", "shot_noise"))
    assert set(result) == {"contrast", "shot_noise", "mean"} | {
        f"{c}/{s}" for c in ("contrast", "shot_noise") for s in range(1, 6)
    }
    assert all(0 <= v <= 1 for v in result.values())
    assert result["mean"] == pytest.approx((result["contrast"] + result["shot_noise"]) / 2)
