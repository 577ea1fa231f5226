"""CIFAR-10-C generator on a few real CIFAR-10 images: determinism, layout, severity ordering."""

import hashlib
import shutil

import numpy as np
import pytest
import torch

from tests.conftest import archive_jpegs
from trainables import corruptions
from trainables.corruptions import (
    CORRUPTIONS,
    FROST_SHA256,
    corrupt_images,
    corruption_accuracy,
    load_cifar10c,
    write_cifar10c,
)
from trainables.models import build_model

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
    return archive_jpegs(cifar10_tarball, 6)


@pytest.fixture(scope="module")
def errors(images) -> dict[str, list[float]]:
    """Mean absolute error against the clean images, per corruption and severity 1..5;
    checks shape, dtype and determinism on the way."""
    out = {}
    for name in CORRUPTIONS:  # frost too: its photos ship with the package
        out[name] = []
        for s in range(1, 6):
            corrupted = corrupt_images(images, name, s, seed=0)
            assert corrupted.shape == images.shape and corrupted.dtype == np.uint8
            assert np.array_equal(corrupted, corrupt_images(images, name, s, seed=0))
            out[name].append(float(np.abs(corrupted.astype(float) - images).mean()))
    return out


@pytest.mark.parametrize("name", [c for c in CORRUPTIONS if c not in NOT_MONOTONE])
def test_error_grows_with_severity(errors, name):
    e = errors[name]
    assert all(b >= a for a, b in zip(e, e[1:], strict=False)), e
    assert e[-1] > e[0] and e[0] > 0.5


@pytest.mark.parametrize("name", sorted(NOT_MONOTONE))
def test_non_monotone_corruptions_still_corrupt(errors, name):
    e = errors[name]
    assert min(e) > 5, e  # every severity visibly changes the images


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


def test_the_frost_photos_ship_with_the_package():
    """Byte for byte the authors' photos (as in the imagecorruptions 1.1.2 wheel), with their
    licence: no dependency is needed for frost."""
    folder = corruptions.FROST_DIR
    assert folder.parent.name == "trainables" and (folder / "LICENSE").is_file()
    for name, digest in FROST_SHA256.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest


@pytest.fixture
def frost_dir(monkeypatch, tmp_path):
    """Point the generator at a copy of the frost photos that a test may break."""
    folder = tmp_path / "frost"
    shutil.copytree(corruptions.FROST_DIR, folder)
    monkeypatch.setattr(corruptions, "FROST_DIR", folder)
    corruptions._frost_textures.cache_clear()
    yield folder
    corruptions._frost_textures.cache_clear()


def test_missing_frost_photos_fail_before_any_work(frost_dir, tmp_path):
    from benchmarks import reproduce_cifar10
    from trainables.config import ConfigError, make_trial_config

    (frost_dir / "frost3.png").unlink()
    images = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(RuntimeError, match=r"pip install -e \."):
        write_cifar10c(images, np.zeros(2), tmp_path / "c10c")
    assert not (tmp_path / "c10c").exists()
    write_cifar10c(images, np.zeros(2), tmp_path / "c10c", corruptions=("contrast",))  # no frost
    assert sorted(p.name for p in (tmp_path / "c10c").iterdir()) == ["contrast.npy", "labels.npy"]
    with pytest.raises(ConfigError, match=r"cifar10c_images: .*pip install -e \."):
        make_trial_config({"dataset": "cifar10", "cifar10c_images": 10})
    make_trial_config({"dataset": "cifar10", "cifar10c_images": 0})  # no CIFAR-10-C: no check
    out = tmp_path / "repro"
    args = ["--data", str(tmp_path / "absent.tar.gz"), "--scale", "smoke", "--out", str(out)]
    with pytest.raises(SystemExit, match=r"reproduce_cifar10: .*pip install -e \."):
        reproduce_cifar10.main(args)  # before the data is read or anything is written
    assert not out.exists()


def test_a_changed_frost_photo_is_refused(frost_dir):
    photo = frost_dir / "frost4.jpg"
    photo.write_bytes(photo.read_bytes()[:-1] + b"\0")
    with pytest.raises(RuntimeError, match="SHA-256"):
        corrupt_images(np.zeros((1, 32, 32, 3), np.uint8), "frost", 1)
