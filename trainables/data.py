"""Datasets as in-memory tensors: digits (embedded), torchvision's data sets by name, and any
image-classification folder, archive or CSV (`imagefolder`; docs/data-and-models.md).

All images come back as float32 tensors (N, C, H, W) in [0, 1]; the models normalize inside.
These datasets are small enough to hold in memory, which keeps the training loop free of
DataLoader workers (a real cost on 2 cores) and makes every batch a single tensor index.
Image files are decoded once into a content-keyed cache (`cache_dir()`), so the many trial
processes of a study read arrays, not files.
"""

import csv
import hashlib
import io
import os
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F

TORCHVISION_DATASETS = (
    "cifar10", "cifar100", "mnist", "fashion_mnist", "svhn", "gtsrb", "flowers102", "stl10",
)  # fmt: skip
DATASETS = ("digits", "imagefolder", *TORCHVISION_DATASETS)
# The sizes of the data sets whose size is fixed, before validation is carved out; an
# imagefolder's are known once it is scanned (study/preflight.py checks them then).
TRAIN_SIZES = {
    "digits": 1347, "cifar10": 50_000, "cifar100": 50_000, "mnist": 60_000,
    "fashion_mnist": 60_000, "svhn": 73_257, "gtsrb": 26_640, "flowers102": 2_040, "stl10": 5_000,
}  # fmt: skip
TEST_SIZES = {
    "digits": 450, "cifar10": 10_000, "cifar100": 10_000, "mnist": 10_000,
    "fashion_mnist": 10_000, "svhn": 26_032, "gtsrb": 12_630, "flowers102": 6_149, "stl10": 8_000,
}  # fmt: skip
DEFAULT_VAL_SIZES = {
    "digits": 300, "cifar10": 5_000, "cifar100": 5_000, "mnist": 5_000, "fashion_mnist": 5_000,
    "svhn": 5_000, "gtsrb": 2_000, "flowers102": 204, "stl10": 500,
}  # fmt: skip
DEFAULT_VAL_FRACTION = 0.1  # an imagefolder's default validation share (at least one per class)
# Data sets whose images differ in size: they need `image_size`.
VARIABLE_SIZE = ("gtsrb", "flowers102")
# Photographs whose mirror image is the same class: augment "auto" flips (and translates) these
# alone; a flipped digit, letter or traffic sign may be another class, and an imagefolder's
# content is unknown (set augment yourself).
FLIP_INVARIANT = ("cifar10", "cifar100", "stl10", "flowers102")
IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp",
)  # fmt: skip
ARCHIVES = (".tar.gz", ".tgz", ".zip")
LUMA = (0.299, 0.587, 0.114)  # RGB to grey (ITU-R 601-2, as PIL's convert("L"))
VAL_SEED = 0  # the validation split is the same for every trial and every study
TEST_SEED = 0  # the test split a test_fraction (or digits' fixed 25%) holds out
# torchvision's folder under its root for the data sets decoded from image files here
_TORCHVISION_FOLDERS = {"gtsrb": "gtsrb", "flowers102": "flowers-102"}


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
    `test_size` counts the test images either way (what the pre-flight checks need).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    test_size: int = 0
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
    """Where decoded arrays live (override with LIMEROBUST_CACHE)."""
    return Path(os.environ.get("LIMEROBUST_CACHE", Path.home() / ".cache" / "limerobust"))


def first_line(e: BaseException) -> str:
    """An error's message on one line (its first), or its type's name when it has none."""
    return (str(e) or type(e).__name__).splitlines()[0]


@contextmanager
def _about(where):
    """Prefix a DataError raised inside with `where` (the folder or file it is about; nothing
    when None), so messages about files inside name them relative to it."""
    try:
        yield
    except DataError as e:
        if where is None:
            raise
        raise DataError(f"{where}: {e}") from e


# --- pixels: size and channels ---------------------------------------------------------------


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) images in [0, 1] to size x size: bilinear, antialiased (a downscale averages
    its pixels, as PIL's resize does), clamped to [0, 1]."""
    out = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp_(0, 1)


def _grey(x: np.ndarray) -> bool:
    """Whether the images (uint8 NHWC or float NCHW) have one channel, or three equal ones."""
    axis = 3 if x.dtype == np.uint8 else 1
    if x.shape[axis] == 1:
        return True
    r, g, b = (np.take(x, i, axis=axis) for i in range(3))
    return np.array_equal(r, g) and np.array_equal(g, b)


def _with_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, C, H, W) with `channels` channels: grey repeated into RGB; RGB to grey by luma (a
    grey image stored as RGB keeps its exact values)."""
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2]):
        return x[:, :1].contiguous()
    return (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)


def _splits(
    name: str,
    train_x: np.ndarray,
    train_y,
    test_x: np.ndarray,
    test_y,
    classes: Sequence[str],
    *,
    val_size: int | None,
    with_test: bool,
    image_size: int | None = None,
    channels: int | None = None,
) -> Splits:
    """Build Splits from uint8 NHWC (or float NCHW) arrays: carve `val_size` validation images
    from the training set (stratified, fixed seed), resize to image_size and convert to
    `channels` (None: 1 when every training image is grey, else 3), then compute the statistics
    on what is left for training."""
    from sklearn.model_selection import train_test_split  # scikit-learn: not in every process

    train_y = np.asarray(train_y, dtype=np.int64)
    if val_size is None:
        val_size = DEFAULT_VAL_SIZES.get(name) or max(
            len(classes), round(DEFAULT_VAL_FRACTION * len(train_x))
        )
    if not 0 < val_size < len(train_x) - len(classes):
        raise DataError(
            f"val_size {val_size} must be at least 1 and leave training images "
            f"({name} has {len(train_x)})"
        )
    if test_x.shape[1:] != train_x.shape[1:]:
        raise DataError(
            f"{name}: the test images' shape {test_x.shape[1:]} differs from the training "
            f"images' {train_x.shape[1:]}; set image_size to resize both on load"
        )
    try:
        tr, va = train_test_split(
            np.arange(len(train_x)), test_size=val_size, stratify=train_y, random_state=VAL_SEED
        )
    except ValueError as e:  # a class too small to be split in proportion
        raise DataError(f"{name}: cannot carve {val_size} validation images ({e})") from e
    tr, va = np.sort(tr), np.sort(va)
    channels = channels or (1 if _grey(train_x) else 3)

    def tensor(x):
        t = torch.from_numpy(np.ascontiguousarray(x))
        if t.dtype == torch.uint8:  # torch's permute-copy: numpy's strided cast is ~30x slower
            t = t.permute(0, 3, 1, 2).contiguous().float().div_(255.0)
        if image_size is not None and t.shape[-2:] != (image_size, image_size):
            t = resize(t, image_size)
        return _with_channels(t, channels)

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
        test_size=len(test_x),
        _test=test,
    )


def _hold_out(x: np.ndarray, y: np.ndarray, fraction: float, what: str) -> tuple[np.ndarray, ...]:
    """(train_x, train_y, test_x, test_y): a fixed stratified `fraction` of (x, y) as the test
    split, each part in the split's shuffled order (digits' split has always been so)."""
    from sklearn.model_selection import train_test_split

    try:
        tr, te = train_test_split(
            np.arange(len(x)), test_size=fraction, stratify=y, random_state=TEST_SEED
        )
    except ValueError as e:
        raise DataError(f"{what}: cannot hold out a test_fraction of {fraction} ({e})") from e
    return x[tr], y[tr], x[te], y[te]


def _digits_arrays() -> tuple:
    """scikit-learn's 1,797 real 8x8 digits in [0, 1]: a fixed stratified 75/25 train/test
    split."""
    from sklearn.datasets import load_digits  # scikit-learn: not in every process

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    y = np.asarray(digits.target, dtype=np.int64)
    return (*_hold_out(x, y, 0.25, "digits"), [str(d) for d in range(10)])


# --- decoding image files, once, into the cache ----------------------------------------------


def _array_digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _read_image(source, name: str):
    """An image file (a path, or a file object) as an RGB PIL image, or a DataError naming it."""
    from PIL import Image

    try:
        with Image.open(source) as im:
            return im.convert("RGB")  # convert() decodes the whole file
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{name} is not a readable image ({first_line(e)})") from e


def _decode(images: Iterable[tuple[str, object]], image_size: int | None) -> np.ndarray:
    """uint8 (N, H, W, 3) from (name, PIL image) pairs, each resized to image_size x image_size
    when given; without image_size the images must share one square size."""
    arrays, names = [], []
    for name, image in images:
        rgb = np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy
        if image_size is not None:
            t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
            t = resize(t, image_size)[0].permute(1, 2, 0)
            rgb = (t * 255.0).round().to(torch.uint8).numpy()
        arrays.append(rgb)
        names.append(name)
    if not arrays:
        raise DataError("no images to decode")
    first = arrays[0].shape
    for name, a in zip(names, arrays, strict=True):
        if a.shape != first:
            raise DataError(
                f"images differ in size ({names[0]} is {first[1]}x{first[0]}, {name} is "
                f"{a.shape[1]}x{a.shape[0]}); set image_size to resize them on load"
            )
    if first[0] != first[1]:
        raise DataError(
            f"the images are {first[1]}x{first[0]}, not square; set image_size to resize them "
            "on load"
        )
    return np.stack(arrays)


DECODE_VERSION = 1  # bump when decoding changes: it keys the decoded cache


def _tmp_sibling(path: Path) -> Path:
    """A temporary name beside `path` that no other process uses (several trials may fill the
    same cache entry at once; each writes its own file and renames it into place)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")


# A file changed less than this long ago may change again within the same tick of the file
# system's clock without its ctime moving (git's "racily clean" entries): such a tree is hashed
# every time and its digest is not remembered.
_RACY_NS = 2_000_000_000


def _relative(path: Path, root: Path) -> str:
    """path relative to root, with '..' where it lies outside (a CSV's absolute paths)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return Path(os.path.relpath(path, root)).as_posix()


def _fingerprint(root: Path, files: Sequence[Path]) -> str:
    """SHA-256 of every file's path (relative to root) and bytes: what the decoded arrays are
    made of, wherever the files lie and whatever their dates.

    Hashing 60,000 files' bytes costs a second or two, so each process would pay it on every
    load; the digest is therefore remembered under the files' stat signature (every file's
    path, size, mtime, ctime, inode and device). Any write to a file sets its ctime to now, and
    no tool sets a ctime back, so changed content always misses the memo and is hashed again.
    """
    rel = [_relative(p, root) for p in files]
    stats = [p.stat() for p in files]
    signature = "\n".join(
        f"{r}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_dev}"
        for r, st in zip(rel, stats, strict=True)
    )
    sig = hashlib.sha256(f"{root.resolve()}\n{signature}".encode()).hexdigest()
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


def _tree_fingerprint(split_dir: Path) -> str:
    """_fingerprint of every file under split_dir."""
    return _fingerprint(split_dir, sorted(p for p in split_dir.rglob("*") if p.is_file()))


def _cached(
    what: str, content: str, decode: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """decode()'s named arrays once; later calls read a checksummed .npz cache.

    Decoding 60,000 JPEGs takes about 10 s on one core, reading the cache well under a second.
    `content` keys the cache: everything that decides the arrays (the files' fingerprint, the
    class order, the size they are resized to, the decoder's version). A file rewritten in
    place, even with its old size and date, misses it; the same files anywhere else hit it.
    """
    key = hashlib.sha256(content.encode()).hexdigest()[:20]
    cache = cache_dir() / "decoded" / f"{what}-{key}.npz"
    if cache.exists():
        try:
            with np.load(cache) as z:
                arrays = {k: z[k] for k in z.files if k != "sha256"}
                digest = str(z["sha256"])
        except Exception as e:  # truncated or not an npz at all
            raise DataError(f"decoded cache {cache} is unreadable ({e}); delete it") from e
        if _array_digest(*(arrays[k] for k in sorted(arrays))) != digest:
            raise DataError(f"decoded cache {cache} fails its checksum; delete it")
        return arrays
    arrays = decode()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(cache)
    try:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, **arrays, sha256=_array_digest(*(arrays[k] for k in sorted(arrays))))
        tmp.replace(cache)  # atomic: a killed run never leaves a half-written cache
    finally:
        tmp.unlink(missing_ok=True)
    return arrays


def _resized_key(image_size: int | None) -> str:
    return "" if image_size is None else f"\nresized to {image_size}"


# --- the ImageFolder layout, its archives, and a CSV of path,label ----------------------------

# An ImageFolder tree: split ("train", "test" when present) -> class folder -> its image files,
# sorted, named relative to the tree's root ("train/cat/0001.png").
Tree = dict[str, dict[str, list[str]]]


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _class_names(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_tree(root: Path) -> Tree:
    tree = {}
    for split in ("train", "test"):
        if (root / split).is_dir():
            tree[split] = {
                cls: sorted(
                    p.relative_to(root).as_posix()
                    for p in (root / split / cls).iterdir()
                    if p.is_file() and _is_image_name(p.name)
                )
                for cls in _class_names(root / split)
            }
    return tree


def _layout_classes(tree: Tree) -> list[str]:
    """train/'s classes, once the tree is checked: test/ (when present) has the same, and no
    class folder is empty."""
    if "train" not in tree:
        raise DataError(
            "no train/ folder: expected train/<class>/* with test/<class>/* (or a "
            f"test_fraction), a {' or '.join(ARCHIVES)} of that, or a CSV of path,label"
        )
    classes = list(tree["train"])
    if not classes:
        raise DataError("train/ holds no class folders (expected train/<class>/<image>)")
    for cls in tree.get("test", {}):
        if cls not in classes:
            raise DataError(f"test/ has class {cls!r}, which train/ lacks")
    for cls in classes:
        if "test" in tree and cls not in tree["test"]:
            raise DataError(f"train/ has class {cls!r}, which test/ lacks")
    for split, folders in tree.items():
        for cls, names in folders.items():
            if not names:
                raise DataError(
                    f"{split}/{cls}/ holds no images (files ending in "
                    f"{', '.join(IMAGE_EXTENSIONS)})"
                )
    return classes


def _check_test_fraction(has_test: bool, test_fraction: float | None) -> None:
    if not has_test and test_fraction is None:
        raise DataError("no test/ folder; set test_fraction to hold out part of train/")
    if has_test and test_fraction is not None:
        raise DataError("has a test/ folder; test_fraction applies only without one")


def _decode_split(
    tree: Tree, split: str, classes: list[str], open_image: Callable, image_size: int | None
) -> dict[str, np.ndarray]:
    """{"x", "y"} of one split: label i for classes[i]; open_image(name) reads one file."""
    names = [name for cls in classes for name in tree[split][cls]]
    labels = [label for label, cls in enumerate(classes) for _ in tree[split][cls]]
    x = _decode(((name, open_image(name)) for name in names), image_size)
    return {"x": x, "y": np.asarray(labels, dtype=np.int64)}


def _image_folder_arrays(root: Path, image_size: int | None, test_fraction: float | None):
    """(train_x, train_y, test_x, test_y, classes) of root/train/<class>/* and root/test/<class>/*
    (or a test_fraction of train/), each split decoded once into the cache, keyed by its
    files' fingerprint."""
    tree = _folder_tree(root)
    classes = _layout_classes(tree)
    _check_test_fraction("test" in tree, test_fraction)
    arrays = []
    for split in tree:
        content = f"{DECODE_VERSION}\n{','.join(classes)}\n{_tree_fingerprint(root / split)}"
        decoded = _cached(
            split,
            content + _resized_key(image_size),
            lambda split=split: _decode_split(
                tree, split, classes, lambda name: _read_image(root / name, name), image_size
            ),
        )
        arrays += [decoded["x"], decoded["y"]]
    if test_fraction is not None:
        return (*_hold_out(*arrays, test_fraction, "train/"), classes)
    return (*arrays, classes)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _member_name(name: str) -> str:
    """An archive member's path inside it, rooted there (as tar's "data" filter roots absolute
    names); a name with ".." in it is refused."""
    parts = [p for p in PurePosixPath(name).parts if p not in ("/", ".")]
    if ".." in parts:
        raise DataError(f"member {name!r} leads outside the archive")
    return "/".join(parts)


def _archive_tree(archive: Path) -> tuple[Tree, dict[str, bytes]]:
    """The ImageFolder tree in a .tar.gz or .zip (train/ at its top or inside one folder) and
    its images' bytes, read in memory. Nothing is written to disk, so no member (a link, an
    absolute name) can land anywhere, and 60,000 small files cost no file-system time."""
    folders: set[str] = set()
    images: dict[str, bytes] = {}

    def add(name: str, is_dir: bool, read: Callable[[], bytes]):
        name = _member_name(name)
        parent = name if is_dir else name.rpartition("/")[0]
        while parent:
            folders.add(parent)
            parent = parent.rpartition("/")[0]
        if not is_dir and _is_image_name(name.rpartition("/")[2]):
            images[name] = read()

    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    add(info.filename, info.is_dir(), lambda info=info: z.read(info))
        else:
            with tarfile.open(archive) as tar:
                for member in tar:
                    if member.isfile() or member.isdir():  # links and devices are not images
                        add(member.name, member.isdir(), lambda m=member: tar.extractfile(m).read())
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise DataError(f"not a readable archive ({first_line(e)})") from e
    tops = sorted(f.removesuffix("train") for f in folders if f.split("/")[-1:] == ["train"])
    tops = [t for t in tops if t.count("/") == (1 if t else 0)]
    if not tops:
        raise DataError("holds no train/ folder (at its top or inside one folder)")
    top = tops[0]  # "" (train/ at the top) sorts first
    tree: Tree = {}
    for split in ("train", "test"):
        if f"{top}{split}" in folders:
            parent = f"{top}{split}"
            names = (f.rpartition("/")[2] for f in folders if f.rpartition("/")[0] == parent)
            tree[split] = {cls: [] for cls in sorted(n for n in names if not n.startswith("."))}
    for name in sorted(images):
        split, _, rest = name.removeprefix(top).partition("/")
        cls, _, file = rest.partition("/")
        if name.startswith(top) and split in tree and cls in tree[split] and "/" not in file:
            tree[split][cls].append(f"{split}/{cls}/{file}")
    return tree, {n.removeprefix(top): b for n, b in images.items() if n.startswith(top)}


def _archive_arrays(archive: Path, image_size: int | None, test_fraction: float | None):
    """_image_folder_arrays of an archive, decoded once into the cache, keyed by the archive's
    SHA-256: a hit reads neither the archive nor any image."""

    def decode():
        tree, images = _archive_tree(archive)
        classes = _layout_classes(tree)
        out = {"classes": np.array(classes)}
        for split in tree:
            open_image = lambda name: _read_image(io.BytesIO(images[name]), name)  # noqa: E731
            decoded = _decode_split(tree, split, classes, open_image, image_size)
            out[f"{split}_x"], out[f"{split}_y"] = decoded["x"], decoded["y"]
        return out

    stem = archive.name
    for suffix in ARCHIVES:
        stem = stem.removesuffix(suffix)
    content = f"{DECODE_VERSION}\narchive\n{_file_digest(archive)}" + _resized_key(image_size)
    arrays = _cached(f"archive-{stem}", content, decode)
    classes = [str(c) for c in arrays["classes"]]
    _check_test_fraction("test_x" in arrays, test_fraction)
    train = arrays["train_x"], arrays["train_y"]
    if test_fraction is not None:
        return (*_hold_out(*train, test_fraction, "train/"), classes)
    return (*train, arrays["test_x"], arrays["test_y"], classes)


def _label_order(labels: Iterable[str]) -> list[str]:
    """The classes of a CSV's labels: by number when every label is an integer (label 3 is
    class 3), else sorted as text (as ImageFolder sorts its class folders)."""
    unique = set(labels)
    try:
        return sorted(unique, key=int)
    except ValueError:
        return sorted(unique)


def _csv_arrays(path: Path, image_size: int | None, test_fraction: float | None):
    """(train_x, train_y, test_x, test_y, classes) of a CSV of path,label (paths relative to
    the CSV's folder, or absolute; an optional header row path,label), test_fraction held out."""
    with open(path, newline="") as f:
        rows = [(i, row) for i, row in enumerate(csv.reader(f), 1) if row]
    if rows and [c.strip().lower() for c in rows[0][1]] == ["path", "label"]:
        rows = rows[1:]
    if not rows:
        raise DataError("lists no images (expected rows of path,label)")
    files, labels = [], []
    for line, row in rows:
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"line {line}: expected path,label, got {','.join(row)!r}")
        file = path.parent / row[0].strip()  # an absolute path stays absolute
        if not file.is_file():
            raise DataError(f"line {line}: {row[0].strip()} does not exist")
        files.append(file)
        labels.append(row[1].strip())
    if test_fraction is None:
        raise DataError("a CSV has no test split; set test_fraction to hold out part of it")
    classes = _label_order(labels)
    index = {c: i for i, c in enumerate(classes)}
    y = np.asarray([index[label] for label in labels], dtype=np.int64)

    def decode():
        names = [_relative(p, path.parent) for p in files]
        pairs = ((n, _read_image(p, n)) for n, p in zip(names, files, strict=True))
        return {"x": _decode(pairs, image_size), "y": y}

    content = f"{DECODE_VERSION}\ncsv\n{_fingerprint(path.parent, [path, *files])}"
    decoded = _cached("csv", content + _resized_key(image_size), decode)
    return (*_hold_out(decoded["x"], decoded["y"], test_fraction, "the CSV"), classes)


def _imagefolder(data_dir, image_size: int | None, test_fraction: float | None) -> tuple:
    """An image-classification folder, its .tar.gz or .zip, or a CSV of path,label."""
    if data_dir is None:
        raise DataError(
            "imagefolder needs data_dir: a folder, a .tar.gz or .zip of one, or a CSV of path,label"
        )
    path = Path(data_dir)
    if not path.exists():
        raise DataError(f"imagefolder: data directory {path} does not exist")
    with _about(path):
        if path.is_file() and path.name.endswith(ARCHIVES):
            return _archive_arrays(path, image_size, test_fraction)
        if path.is_file() and path.suffix.lower() == ".csv":
            return _csv_arrays(path, image_size, test_fraction)
        return _image_folder_arrays(path, image_size, test_fraction)


# --- torchvision's data sets, from a local root ----------------------------------------------


def _torchvision_files(name: str, datasets, root: Path, download: bool, image_size):
    """gtsrb and flowers102: image files of many sizes, decoded (and resized) once into the
    cache, keyed by the fingerprint of torchvision's folder for the data set."""
    splits = {"gtsrb": (("train",), ("test",)), "flowers102": (("train", "val"), ("test",))}
    cls = datasets.GTSRB if name == "gtsrb" else datasets.Flowers102
    out = []
    for parts in splits[name]:
        sets = [cls(str(root), split=s, download=download) for s in parts]
        split = "+".join(parts)
        content = f"{DECODE_VERSION}\n{name} {split}\n" + _tree_fingerprint(
            root / _TORCHVISION_FOLDERS[name]
        )

        def decode(sets=sets, split=split):
            labels = []

            def images():
                for ds in sets:
                    for i in range(len(ds)):
                        try:
                            image, label = ds[i]
                        except (OSError, SyntaxError, ValueError) as e:
                            raise DataError(
                                f"{name} {split} image {i}: unreadable ({first_line(e)})"
                            ) from e
                        labels.append(label)
                        yield f"{name} {split} image {i}", image

            x = _decode(images(), image_size)
            return {"x": x, "y": np.asarray(labels, dtype=np.int64)}

        decoded = _cached(f"{name}-{split}", content + _resized_key(image_size), decode)
        out += [decoded["x"], decoded["y"]]
    classes = getattr(sets[0], "classes", None) or [str(c) for c in range(int(out[1].max()) + 1)]
    return (*out, classes)


def _torchvision(name: str, data_dir, download: bool, image_size: int | None) -> tuple:
    """(train_x, train_y, test_x, test_y, classes) of torchvision's `name` under data_dir
    (default: the cache's torchvision folder), downloaded there when `download` and missing.
    CIFAR also reads an ImageFolder tree or archive (the shared CIFAR-10 JPEG copy)."""
    from torchvision import datasets  # torchvision pulls in torch._dynamo (~2 s): when used

    root = Path(data_dir) if data_dir is not None else cache_dir() / "torchvision"
    if data_dir is not None and not root.exists():
        raise DataError(f"{name}: data directory {root} does not exist")
    if name.startswith("cifar"):
        if (root / "cifar10-jpeg.tar.gz").is_file() and name == "cifar10":
            root = root / "cifar10-jpeg.tar.gz"
        is_archive = root.is_file() and root.name.endswith(ARCHIVES)
        if is_archive or ((root / "train").is_dir() and (root / "test").is_dir()):
            expected = 10 if name == "cifar10" else 100

            def check(classes):
                if len(classes) != expected:
                    found = f"train/ has {len(classes)} class folders"
                    raise DataError(f"{found}, {name} has {expected}")

            with _about(root):
                if is_archive:  # its classes are known once it is read
                    arrays = _archive_arrays(root, image_size, None)
                else:
                    check(_class_names(root / "train"))
                    arrays = _image_folder_arrays(root, image_size, None)
                check(arrays[-1])
            return arrays
    try:
        if name in _TORCHVISION_FOLDERS:
            return _torchvision_files(name, datasets, root, download, image_size)
        if name.startswith("cifar"):
            cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            train, test = (cls(str(root), train=t, download=download) for t in (True, False))
            return train.data, train.targets, test.data, test.targets, train.classes
        if name in ("mnist", "fashion_mnist"):
            cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
            train, test = (cls(str(root), train=t, download=download) for t in (True, False))
            return (
                train.data.numpy()[..., None], train.targets.numpy(),
                test.data.numpy()[..., None], test.targets.numpy(), train.classes,
            )  # fmt: skip
        cls = datasets.SVHN if name == "svhn" else datasets.STL10
        train, test = (cls(str(root), split=s, download=download) for s in ("train", "test"))
        classes = getattr(train, "classes", None) or [str(d) for d in range(10)]
        return (
            train.data.transpose(0, 2, 3, 1), train.labels,
            test.data.transpose(0, 2, 3, 1), test.labels, classes,
        )  # fmt: skip
    except (RuntimeError, OSError) as e:  # torchvision: "Dataset not found"; a failed download
        raise DataError(
            f"no {name} data in {root} ({first_line(e)}); put torchvision's {name} files "
            "there, or leave data_dir unset to download them into the cache (online)"
        ) from e


def load_splits(
    name: str,
    data_dir: str | Path | None = None,
    download: bool = False,
    *,
    val_size: int | None = None,
    with_test: bool = True,
    image_size: int | None = None,
    channels: int | None = None,
    test_fraction: float | None = None,
) -> Splits:
    """Load a dataset by name; the single entry point the rest of the project uses.

    val_size: validation images carved from the training set (None: the dataset's default);
    with_test=False seals the test split (search trials load their data this way);
    image_size resizes every image to image_size x image_size; channels (1 or 3) converts
    grey and RGB (None: as the data is); test_fraction: the share of an imagefolder's
    training images held out as its test split, when it has no test/ folder.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    if test_fraction is not None and name != "imagefolder":
        raise DataError(f"test_fraction applies to imagefolder only; {name} has a test split")
    if name == "digits":
        arrays = _digits_arrays()
    elif name == "imagefolder":
        arrays = _imagefolder(data_dir, image_size, test_fraction)
    else:
        arrays = _torchvision(name, data_dir, download, image_size)
    with _about(data_dir if name == "imagefolder" else None):
        return _splits(
            name, *arrays, val_size=val_size, with_test=with_test, image_size=image_size,
            channels=channels,
        )  # fmt: skip


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
