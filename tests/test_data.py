"""Dataset loading: the embedded digits and the shared CIFAR-10 JPEG copy."""

import tarfile

import numpy as np
import pytest
import torch

from trainables import data
from trainables.data import DataError, TestSplitSealed, load_splits


def test_digits_split_is_fixed_stratified_and_in_range():
    a, b = load_splits("digits"), load_splits("digits")
    assert a.train_x.shape[1:] == (1, 8, 8)
    assert len(a.train_x) + len(a.val_x) + len(a.test_x) == 1797 and len(a.val_x) == 300
    assert torch.equal(a.test_y, b.test_y) and torch.equal(a.val_x, b.val_x)
    assert a.train_x.min() >= 0.0 and a.train_x.max() <= 1.0
    counts = torch.bincount(a.test_y, minlength=10)
    assert counts.min() >= 40  # stratified: every class present in the test split


def test_unknown_dataset_and_missing_dir():
    with pytest.raises(DataError, match="unknown dataset"):
        load_splits("mnist")
    with pytest.raises(DataError, match="does not exist"):
        load_splits("cifar10", "/nonexistent")


def _make_image_folder(root, n=3):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in data_classes():
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                    d / f"{i:04d}.png"
                )


def data_classes():
    return [f"c{i}" for i in range(10)]


def test_image_folder_cache_and_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("LIMEROBUST_CACHE", str(tmp_path / "cache"))
    _make_image_folder(tmp_path / "folder")
    first = load_splits("cifar10", tmp_path / "folder", val_size=10)
    second = load_splits("cifar10", tmp_path / "folder", val_size=10)  # from the .npz cache
    assert torch.equal(first.train_x, second.train_x) and first.train_x.shape == (20, 3, 32, 32)
    cached = next((tmp_path / "cache" / "decoded").glob("*train*.npz"))
    with np.load(cached) as z:
        x, y, digest = z["x"], z["y"], z["sha256"]
    x[0, 0, 0, 0] ^= 1
    np.savez(cached, x=x, y=y, sha256=digest)
    with pytest.raises(DataError, match="checksum"):
        load_splits("cifar10", tmp_path / "folder", val_size=10)
    cached.write_bytes(b"not an npz")
    with pytest.raises(DataError, match="unreadable"):
        load_splits("cifar10", tmp_path / "folder", val_size=10)


def test_truncated_archive_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LIMEROBUST_CACHE", str(tmp_path / "cache"))
    _make_image_folder(tmp_path / "folder")
    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "folder", arcname="cifar")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="cannot unpack"):
        load_splits("cifar10", archive)


def test_wrong_number_of_classes(tmp_path, monkeypatch):
    monkeypatch.setenv("LIMEROBUST_CACHE", str(tmp_path / "cache"))
    _make_image_folder(tmp_path / "folder")
    with pytest.raises(DataError, match="cifar100 has 100"):
        load_splits("cifar100", tmp_path / "folder")


def test_shared_cifar10_tarball_through_the_image_folder_loader(cifar10_tarball):
    splits = load_splits("cifar10", cifar10_tarball)
    assert splits.train_x.shape == (45000, 3, 32, 32) and splits.val_x.shape == (5000, 3, 32, 32)
    assert splits.test_x.shape == (10000, 3, 32, 32)
    assert torch.equal(torch.bincount(splits.val_y), torch.full((10,), 500))  # stratified
    assert splits.classes[0] == "airplane" and splits.classes[-1] == "truck"
    assert torch.equal(torch.bincount(splits.test_y), torch.full((10,), 1000))
    # Per-channel train means match CIFAR-10's (125.3, 122.9, 113.9) / 255 (data README).
    assert np.allclose(np.array(splits.mean) * 255, [125.3, 122.9, 113.9], atol=1.0)
    assert data.cache_dir().exists()


def test_validation_is_carved_from_train_and_the_test_split_can_be_sealed():
    full = load_splits("digits")
    sealed = load_splits("digits", with_test=False)
    assert torch.equal(full.val_x, sealed.val_x) and torch.equal(full.train_x, sealed.train_x)
    train = {tuple(x.flatten().tolist()) for x in full.train_x}
    assert not any(tuple(x.flatten().tolist()) in train for x in full.val_x[:50])
    assert torch.bincount(full.val_y, minlength=10).min() >= 25  # stratified
    with pytest.raises(TestSplitSealed, match="sealed"):
        _ = sealed.test_x
    with pytest.raises(DataError, match="val_size"):
        load_splits("digits", val_size=1347)
