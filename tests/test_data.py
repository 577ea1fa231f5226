"""Dataset loading: the embedded digits and the shared CIFAR-10 JPEG copy."""

import os
import shutil
import tarfile
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from trainables import data
from trainables.data import DataError, SealedSplitError, load_splits


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
        load_splits("imagenet")
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
    with pytest.raises(DataError, match=r"cifar\.tar\.gz: not a readable archive \("):
        load_splits("cifar10", archive)


def test_wrong_number_of_classes(tmp_path, monkeypatch):
    monkeypatch.setenv("LIMEROBUST_CACHE", str(tmp_path / "cache"))
    _make_image_folder(tmp_path / "folder")
    with pytest.raises(DataError, match="cifar100 has 100"):
        load_splits("cifar100", tmp_path / "folder")


@pytest.mark.slow  # all 60,000 images decoded (the default suite reads a few)
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
    with pytest.raises(SealedSplitError, match="sealed"):
        _ = sealed.test_x
    with pytest.raises(DataError, match="val_size"):
        load_splits("digits", val_size=1347)


def _rewrite_first_image(root, value: int, keep_date: bool = False):
    """Overwrite train/c0/0000.png with a flat image; keep_date puts its old mtime back."""
    from PIL import Image

    path = root / "train" / "c0" / "0000.png"
    before = path.stat()
    Image.fromarray(np.full((32, 32, 3), value, dtype=np.uint8)).save(path)
    if keep_date:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    return path


@pytest.fixture
def decodes(monkeypatch):
    """Count the image folders actually decoded (cache misses)."""
    calls = []
    decode = data._decode
    monkeypatch.setattr(data, "_decode", lambda *a: calls.append(a[0]) or decode(*a))
    return calls


def test_changed_images_miss_the_decoded_cache(tmp_path, monkeypatch, decodes):
    monkeypatch.setenv("LIMEROBUST_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "folder"
    _make_image_folder(root)
    path = _rewrite_first_image(root, 10)
    first = data._image_folder_arrays(root, None, None)[0]
    assert np.array_equal(data._image_folder_arrays(root, None, None)[0], first)
    assert len(decodes) == 2  # train and test; the second call was a hit
    size, mtime = path.stat().st_size, path.stat().st_mtime_ns
    _rewrite_first_image(root, 200, keep_date=True)  # other pixels, same name, size and date
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (size, mtime)
    second = data._image_folder_arrays(root, None, None)[0]
    assert first[0].max() == 10 and second[0].min() == 200 and len(decodes) == 3  # train only
    # the key is the content, not the place: the same files elsewhere hit the cache
    shutil.copytree(root, tmp_path / "copy")
    third = data._image_folder_arrays(tmp_path / "copy", None, None)[0]
    assert np.array_equal(third, second) and len(decodes) == 3
    assert len(list((tmp_path / "cache" / "decoded").glob("*train*.npz"))) == 2


def test_the_remembered_fingerprint_never_outlives_a_change(tmp_path, monkeypatch):
    monkeypatch.setenv("LIMEROBUST_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "folder"
    _make_image_folder(root)
    # a fresh tree is hashed every time ("racily clean"): nothing is remembered for it
    digest = data._tree_fingerprint(root / "train")
    assert not (tmp_path / "cache" / "decoded" / "fingerprints").exists()
    monkeypatch.setattr(data, "_RACY_NS", 0)  # as if the files were old
    assert data._tree_fingerprint(root / "train") == digest
    (memo,) = (tmp_path / "cache" / "decoded" / "fingerprints").iterdir()
    memo.write_text("f" * 64)  # a remembered digest is used as it is...
    assert data._tree_fingerprint(root / "train") == "f" * 64
    time.sleep(0.05)  # past any file-system clock tick: the rewrite gets a new ctime
    _rewrite_first_image(root, 7, keep_date=True)
    # ...until any file changes, whatever its size and date
    assert data._tree_fingerprint(root / "train") not in (digest, "f" * 64)


def test_an_archive_is_decoded_once_keyed_by_its_bytes(tmp_path, monkeypatch, decodes):
    monkeypatch.setenv("LIMEROBUST_CACHE", str(tmp_path / "cache"))
    _make_image_folder(tmp_path / "folder")
    archive = tmp_path / "cifar.tar.gz"
    for value in (10, 200):  # another archive of the same name misses the cache
        _rewrite_first_image(tmp_path / "folder", value)
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(tmp_path / "folder", arcname="cifar")
        x = data._archive_arrays(archive, None, None)[0]
        assert x[0].min() == value and x[0].max() == value
    assert len(decodes) == 4  # train and test of each
    # the same archive again is a hit: it is not even opened, and nothing else is left
    monkeypatch.setattr(data.tarfile, "open", None)
    again = data._archive_arrays(archive, None, None)
    assert again[0][0].min() == 200 and again[-1] == data_classes() and len(decodes) == 4
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["decoded"]
    assert len(list((tmp_path / "cache" / "decoded").glob("archive-cifar-*.npz"))) == 2


def test_cifar10c_cache_is_keyed_by_the_images_it_was_cut_from(tmp_path, monkeypatch):
    from trainables import trial_eval

    monkeypatch.setenv("LIMEROBUST_CACHE", str(tmp_path / "cache"))
    generated = []

    def fake_write(images, labels, out_dir):  # the generator itself is tested elsewhere
        generated.append(out_dir)
        out_dir.mkdir(parents=True)
        np.save(out_dir / "labels.npy", labels)

    monkeypatch.setattr(trial_eval, "write_cifar10c", fake_write)

    def splits(value: float, name: str = "cifar10"):  # all that cifar10c_subset reads
        x = torch.full((4, 3, 32, 32), value)
        return SimpleNamespace(name=name, test_x=x, test_y=torch.arange(4))

    a = trial_eval.cifar10c_subset(splits(0.1), 4)
    assert trial_eval.cifar10c_subset(splits(0.1), 4) == a and len(generated) == 1  # a hit
    b = trial_eval.cifar10c_subset(splits(0.2), 4)  # other pixels: a miss
    c = trial_eval.cifar10c_subset(splits(0.1, "cifar100"), 4)  # other dataset: a miss
    monkeypatch.setattr(trial_eval, "GENERATOR_VERSION", trial_eval.GENERATOR_VERSION + 1)
    d = trial_eval.cifar10c_subset(splits(0.1), 4)  # another generator: a miss
    assert len({a, b, c, d}) == 4 and len(generated) == 4
