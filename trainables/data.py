"""Datasets as in-memory tensors: digits (embedded), CIFAR-10 and CIFAR-100.

All images come back as float32 tensors (N, C, H, W) in [0, 1]; the models normalize inside.
These datasets are small enough to hold in memory, which keeps the training loop free of
DataLoader workers (a real cost on 2 cores) and makes every batch a single tensor index.
"""

import hashlib
import os
import shutil
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

DATASETS = ("digits", "cifar10", "cifar100")
TRAIN_SIZES = {"digits": 1347, "cifar10": 50_000, "cifar100": 50_000}  # before validation
TEST_SIZES = {"digits": 450, "cifar10": 10_000, "cifar100": 10_000}
DEFAULT_VAL_SIZES = {"digits": 300, "cifar10": 5_000, "cifar100": 5_000}
VAL_SEED = 0  # the validation split is the same for every trial and every study


class DataError(ValueError):
    """A dataset that is missing, truncated or not what it claims to be."""


class SealedSplitError(RuntimeError):
    """The test split was read where it must not be: only the confirmation stage may read it."""


@dataclass(frozen=True)
class Splits:
    """Train, validation and (unless sealed) test images in [0, 1] with labels, and the
    train-set channel statistics.

    Validation is carved from the training set with a fixed seed, so every trial of a study
    selects on the same images and never trains on them. The test split is held in `_test`;
    a search trial loads its splits with `with_test=False`, and then the test tensors are not
    in memory at all and reading `test_x` raises: the search cannot select on the test set.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    _test: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def _test_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._test is None:
            raise SealedSplitError(
                f"{self.name}: the test split is sealed (loaded with with_test=False); only the "
                "confirmation stage reads it"
            )
        return self._test

    @property
    def test_x(self) -> torch.Tensor:
        return self._test_split()[0]

    @property
    def test_y(self) -> torch.Tensor:
        return self._test_split()[1]

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[-1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def cache_dir() -> Path:
    """Where decoded arrays and unpacked archives live (override with LIMEROBUST_CACHE)."""
    return Path(os.environ.get("LIMEROBUST_CACHE", Path.home() / ".cache" / "limerobust"))


def _splits(name, train_x, train_y, test_x, test_y, classes, val_size: int, with_test: bool):
    """Build Splits from uint8 NHWC (or float NCHW) arrays: carve `val_size` validation images
    from the training set (stratified, fixed seed), then compute the statistics on what is left.
    """
    from sklearn.model_selection import train_test_split  # scikit-learn: not in every process

    train_y = np.asarray(train_y, dtype=np.int64)
    if not 0 < val_size < len(train_x) - len(classes):
        raise DataError(
            f"val_size {val_size} must be at least 1 and leave training images "
            f"({name} has {len(train_x)})"
        )
    tr, va = train_test_split(
        np.arange(len(train_x)), test_size=val_size, stratify=train_y, random_state=VAL_SEED
    )
    tr, va = np.sort(tr), np.sort(va)

    def tensor(x):
        if x.dtype == np.uint8:
            x = x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        return torch.from_numpy(np.ascontiguousarray(x))

    train_x_t = tensor(train_x[tr])
    mean = tuple(float(m) for m in train_x_t.double().mean(dim=(0, 2, 3)))
    std = tuple(float(s) for s in train_x_t.double().std(dim=(0, 2, 3), unbiased=False))
    test = None
    if with_test:
        test = (tensor(test_x), torch.from_numpy(np.asarray(test_y, dtype=np.int64)))
    return Splits(
        name=name,
        train_x=train_x_t,
        train_y=torch.from_numpy(train_y[tr]),
        val_x=tensor(train_x[va]),
        val_y=torch.from_numpy(train_y[va]),
        classes=tuple(classes),
        mean=mean,
        std=std,
        _test=test,
    )


def load_digits_splits(val_size: int = 300, with_test: bool = True) -> Splits:
    """scikit-learn's 1,797 real 8x8 digits in [0, 1]: a fixed stratified 75/25 train/test split,
    then `val_size` validation images carved from the training part."""
    from sklearn.datasets import load_digits  # scikit-learn: not in every process
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, digits.target, test_size=0.25, stratify=digits.target, random_state=0
    )
    classes = [str(d) for d in range(10)]
    return _splits("digits", x_tr, y_tr, x_te, y_te, classes, val_size, with_test)


# --- CIFAR: torchvision's pickled batches, or an ImageFolder layout of image files ------------


def _torchvision_cifar(name: str, root: Path, download: bool):
    from torchvision import datasets  # torchvision pulls in torch._dynamo (~2 s): when used

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    train = cls(str(root), train=True, download=download)
    test = cls(str(root), train=False, download=download)
    return train.data, train.targets, test.data, test.targets, train.classes


def _array_digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _decode_image_folder(split_dir: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images, labels = [], []
    for label, cls in enumerate(classes):
        for path in sorted((split_dir / cls).iterdir()):
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


DECODE_VERSION = 1  # bump when decoding changes: it keys the decoded cache


def _tmp_sibling(path: Path) -> Path:
    """A temporary name beside `path` that no other process uses (several trials may fill the
    same cache entry at once; each writes its own file and renames it into place)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")


# A file changed less than this long ago may change again within the same tick of the file
# system's clock without its ctime moving (git's "racily clean" entries): such a tree is hashed
# every time and its digest is not remembered.
_RACY_NS = 2_000_000_000


def _tree_fingerprint(split_dir: Path) -> str:
    """SHA-256 of every file's path (relative to split_dir) and bytes: what the decoded arrays
    are made of, wherever the tree lies and whatever its files' dates.

    Hashing 60,000 files' bytes costs a second or two, so each process would pay it on every
    load; the digest is therefore remembered under the tree's stat signature (every file's
    path, size, mtime, ctime, inode and device). Any write to a file sets its ctime to now, and
    no tool sets a ctime back, so changed content always misses the memo and is hashed again.
    """
    files = sorted(p for p in split_dir.rglob("*") if p.is_file())
    rel = [p.relative_to(split_dir).as_posix() for p in files]
    stats = [p.stat() for p in files]
    signature = "\n".join(
        f"{r}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_dev}"
        for r, st in zip(rel, stats, strict=True)
    )
    sig = hashlib.sha256(f"{split_dir.resolve()}\n{signature}".encode()).hexdigest()
    memo = cache_dir() / "decoded" / "fingerprints" / f"{sig[:32]}.txt"
    if memo.is_file():
        digest = memo.read_text().strip()
        if len(digest) == 64:
            return digest
    h = hashlib.sha256()
    for r, p in zip(rel, files, strict=True):
        data = p.read_bytes()
        h.update(f"{r}\0{len(data)}\0".encode())
        h.update(data)
    digest = h.hexdigest()
    if max((st.st_ctime_ns for st in stats), default=0) < time.time_ns() - _RACY_NS:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_sibling(memo)
        tmp.write_text(digest)
        tmp.replace(memo)
    return digest


def _image_folder_split(root: Path, split: str, classes: list[str]) -> tuple[np.ndarray, ...]:
    """Decode root/split/<class>/* once; later calls read a checksummed .npz cache.

    Decoding 60,000 JPEGs takes about 25 s on one core, reading the cache well under a second.
    The cache is keyed by what decides its content: the files' bytes and paths
    (`_tree_fingerprint`), the class order and the decoder's version. A file rewritten in place,
    even with its old size and date, misses it; the same files anywhere else hit it.
    """
    content = f"{DECODE_VERSION}\n{','.join(classes)}\n{_tree_fingerprint(root / split)}"
    key = hashlib.sha256(content.encode()).hexdigest()[:20]
    cache = cache_dir() / "decoded" / f"{split}-{key}.npz"
    if cache.exists():
        try:
            with np.load(cache) as z:
                x, y, digest = z["x"], z["y"], str(z["sha256"])
        except Exception as e:  # truncated or not an npz at all
            raise DataError(f"decoded cache {cache} is unreadable ({e}); delete it") from e
        if _array_digest(x, y) != digest:
            raise DataError(f"decoded cache {cache} fails its checksum; delete it")
        return x, y
    x, y = _decode_image_folder(root / split, classes)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(cache)
    try:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, x=x, y=y, sha256=_array_digest(x, y))
        tmp.replace(cache)  # atomic: a killed run never leaves a half-written cache
    finally:
        tmp.unlink(missing_ok=True)
    return x, y


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _unpack(archive: Path) -> Path:
    """Unpack a .tar.gz ImageFolder archive into the cache (once, keyed by the archive's
    SHA-256: about 0.1 s for the 19 MB CIFAR-10 copy) and return its root.

    It unpacks into a folder of its own and renames it into place when complete, so a killed
    run leaves no half tree under the key and trials unpacking at once never mix their files.
    """
    stem = archive.name.removesuffix(".tar.gz").removesuffix(".tgz")
    target = cache_dir() / "unpacked" / f"{stem}-{_file_digest(archive)[:16]}"
    if not (target / ".complete").exists():
        tmp = _tmp_sibling(target)
        tmp.mkdir(parents=True)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            (tmp / ".complete").touch()
            tmp.rename(target)
        except (tarfile.TarError, EOFError) as e:
            raise DataError(f"cannot unpack {archive}: {e}") from e
        except OSError as e:
            if not (target / ".complete").exists():  # not merely another process first
                raise DataError(f"cannot unpack {archive} into {target}: {e}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    # Archives may hold train/ and test/ at the top or inside one folder.
    candidates = [target] + [p for p in target.iterdir() if p.is_dir()]
    for c in candidates:
        if (c / "train").is_dir() and (c / "test").is_dir():
            return c
    raise DataError(f"{archive} holds no train/ and test/ folders")


def load_cifar_splits(
    name: str,
    data_dir: str | Path | None,
    download: bool = False,
    val_size: int = 5_000,
    with_test: bool = True,
) -> Splits:
    """CIFAR-10/100 from `data_dir`: torchvision batches, an ImageFolder tree, or its .tar.gz.

    With no data_dir, torchvision's copy under the cache (downloaded when `download`).
    """
    root = Path(data_dir) if data_dir is not None else cache_dir() / "torchvision"
    if data_dir is not None and not root.exists():
        raise DataError(f"data directory {root} does not exist")
    if root.is_file() and root.name.endswith((".tar.gz", ".tgz")):
        root = _unpack(root)
    elif (root / "cifar10-jpeg.tar.gz").is_file() and name == "cifar10":
        root = _unpack(root / "cifar10-jpeg.tar.gz")
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        expected = 10 if name == "cifar10" else 100
        if len(classes) != expected:
            raise DataError(f"{root}/train has {len(classes)} class folders, {name} has {expected}")
        x_tr, y_tr = _image_folder_split(root, "train", classes)
        x_te, y_te = _image_folder_split(root, "test", classes)
        return _splits(name, x_tr, y_tr, x_te, y_te, classes, val_size, with_test)
    try:
        return _splits(name, *_torchvision_cifar(name, root, download), val_size, with_test)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise DataError(f"no {name} data in {root}: {e}") from e


def load_splits(
    name: str,
    data_dir: str | Path | None = None,
    download: bool = False,
    *,
    val_size: int | None = None,
    with_test: bool = True,
) -> Splits:
    """Load a dataset by name; the single entry point the rest of the project uses.

    val_size: validation images carved from the training set (None: the dataset's default);
    with_test=False seals the test split (search trials load their data this way).
    """
    val_size = DEFAULT_VAL_SIZES.get(name, 0) if val_size is None else val_size
    if name == "digits":
        return load_digits_splits(val_size, with_test)
    if name in ("cifar10", "cifar100"):
        return load_cifar_splits(name, data_dir, download, val_size, with_test)
    raise DataError(f"unknown dataset {name!r}; choose one of {DATASETS}")


def subset_index(total: int, n: int | None, seed: int) -> torch.Tensor:
    """The indices of a fixed random subset of n of `total` examples (all, in order, when n is
    None or too large)."""
    if n is None or n >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]


def subset(x: torch.Tensor, y: torch.Tensor, n: int | None, seed: int) -> tuple[torch.Tensor, ...]:
    """A fixed random subset of n examples (all of them when n is None or too large)."""
    if n is None or n >= len(x):
        return x, y
    idx = subset_index(len(x), n, seed)
    return x[idx], y[idx]
