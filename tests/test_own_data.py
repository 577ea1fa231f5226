"""Your own images (`imagefolder`: a folder, its .tar.gz or .zip, a CSV of path,label) and
torchvision's data sets by name from a local root: layouts, resizing, grey and RGB, the decoded
cache, and the errors each bad layout gives."""

import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.data import DataError, load_splits


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIMEROBUST_CACHE", str(tmp_path / "cache"))


def make_image_folder(root, classes=("ant", "bee", "cat"), train=12, test=4, size=48, mode="RGB"):
    """root/train/<class>/*.png and root/test/<class>/*.png: class i's images are noise around
    a grey with channel i raised by 60 (learnable in a few steps, and an L-inf perturbation of
    0.12 or more can hide it); test=0 writes no test/ folder."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for i, cls in enumerate(classes):
            folder = root / split / cls
            if count:
                folder.mkdir(parents=True)
            for j in range(count):
                base = np.full(3, 100.0)
                base[i % 3] += 60
                pixels = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).convert(mode).save(folder / f"{j}.png")
    return root


def test_an_image_folder_is_decoded_once_with_its_classes_from_train(tmp_path):
    root = make_image_folder(tmp_path / "pets")
    (root / "train" / "ant" / "notes.txt").write_text("not an image: skipped")
    splits = load_splits("imagefolder", root)
    assert splits.classes == ("ant", "bee", "cat") and splits.test_size == 12
    assert splits.train_x.shape[1:] == (3, 48, 48) and splits.in_channels == 3
    assert len(splits.train_x) + len(splits.val_x) == 36 and len(splits.val_x) == 4  # 10%
    assert torch.equal(torch.bincount(splits.test_y), torch.tensor([4, 4, 4]))
    # class i is coloured in channel i: the labels follow the class folders
    for c in range(3):
        assert splits.train_x[splits.train_y == c].mean(dim=(0, 2, 3)).argmax() == c
    cached = list((tmp_path / "cache" / "decoded").glob("*.npz"))
    assert len(cached) == 2  # train and test, decoded once
    again = load_splits("imagefolder", root)
    assert torch.equal(again.train_x, splits.train_x)
    assert len(list((tmp_path / "cache" / "decoded").glob("*.npz"))) == 2


@pytest.mark.parametrize("top", ["pets/", ""])
@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_an_archive_of_the_folder_gives_the_same_images(tmp_path, kind, top):
    """train/ inside one folder or at the archive's top; a zip made on a Mac carries
    __MACOSX/ and ._ files, which are not images of the tree."""
    root = make_image_folder(tmp_path / "pets")
    archive = tmp_path / f"pets.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as z:
            for path in root.rglob("*.png"):
                z.write(path, f"{top}{path.relative_to(root)}")
                z.writestr(f"__MACOSX/{top}{path.parent.relative_to(root)}/._{path.name}", b"")
    else:
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(root, arcname=top or ".")
    a, b = load_splits("imagefolder", root), load_splits("imagefolder", archive)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_x, b.test_x)
    assert a.classes == b.classes == ("ant", "bee", "cat")


@pytest.mark.parametrize("bad", ["../outside.png", "link", "absolute"])
def test_an_archive_is_read_in_memory_and_writes_nothing(tmp_path, bad):
    """No member is written anywhere, whatever its name or type (a link out of the archive's
    folder and a file through it, an absolute name); a name with ".." is refused."""
    root = make_image_folder(tmp_path / "pets")
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="pets")
        if bad == "link":  # a link out of the archive's folder, then a file through it
            link = tarfile.TarInfo("pets/escape")
            link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path)
            tar.addfile(link)
            bad = "pets/escape/through-link.png"
        member = tar.gettarinfo(root / "train" / "ant" / "0.png", arcname="x")
        member.name = str(tmp_path / "absolute.png") if bad == "absolute" else bad
        with open(root / "train" / "ant" / "0.png", "rb") as f:
            tar.addfile(member, f)
    if bad == "../outside.png":
        with pytest.raises(DataError, match=r"pets\.tar\.gz: member '\.\./outside\.png' leads"):
            load_splits("imagefolder", archive)
    else:
        assert load_splits("imagefolder", archive).test_size == 12
    assert not list(tmp_path.glob("*.png")) and not (tmp_path.parent / "outside.png").exists()
    assert not list((tmp_path / "cache").rglob("*.png"))


def test_test_fraction_holds_out_a_stratified_test_split(tmp_path):
    root = make_image_folder(tmp_path / "pets", train=20, test=0)
    with pytest.raises(DataError, match="no test/ folder; set test_fraction"):
        load_splits("imagefolder", root)
    splits = load_splits("imagefolder", root, test_fraction=0.25)
    assert splits.test_size == 15 and torch.equal(
        torch.bincount(splits.test_y), torch.tensor([5, 5, 5])
    )
    assert len(splits.train_x) + len(splits.val_x) == 45
    with pytest.raises(DataError, match="test_fraction applies to imagefolder only"):
        load_splits("digits", test_fraction=0.2)
    both = make_image_folder(tmp_path / "both")
    with pytest.raises(DataError, match="has a test/ folder"):
        load_splits("imagefolder", both, test_fraction=0.25)


def test_a_csv_of_path_and_label(tmp_path):
    make_image_folder(tmp_path / "pets", train=10, test=0)
    rows = ["path,label"]  # a header row is allowed
    for i, cls in enumerate(("ant", "bee", "cat")):
        rows += [f"pets/train/{cls}/{j}.png,{10 - 4 * i}" for j in range(10)]  # labels 10, 6, 2
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    splits = load_splits("imagefolder", csv, test_fraction=0.3)
    assert splits.classes == ("2", "6", "10")  # integer labels in numeric order
    # "cat" (label 2) is coloured in channel 2 and is class 0
    assert splits.train_x[splits.train_y == 0].mean(dim=(0, 2, 3)).argmax() == 2
    assert splits.test_size == 9
    csv.write_text("\n".join([*rows, "pets/train/ant/missing.png,10"]) + "\n")
    with pytest.raises(DataError, match="line 32: pets/train/ant/missing.png does not exist"):
        load_splits("imagefolder", csv, test_fraction=0.3)


def test_image_size_resizes_and_mixed_sizes_need_it(tmp_path):
    root = make_image_folder(tmp_path / "pets", size=48)
    Image.new("RGB", (40, 30)).save(root / "train" / "bee" / "odd.png")
    with pytest.raises(
        DataError, match=r"differ in size \(.*, train/bee/odd.png is 40x30\); set image_size"
    ):
        load_splits("imagefolder", root)
    splits = load_splits("imagefolder", root, image_size=32)
    assert splits.train_x.shape[1:] == (3, 32, 32) and splits.test_x.shape[1:] == (3, 32, 32)
    # a flat image stays flat through the resize
    flat = load_splits("imagefolder", root, image_size=64)
    odd = (flat.train_x.amax(dim=(1, 2, 3)) == 0).nonzero()
    assert len(odd) + (flat.val_x.amax(dim=(1, 2, 3)) == 0).sum() == 1


def test_grey_and_rgb_are_converted_consistently(tmp_path):
    grey = make_image_folder(tmp_path / "grey", mode="L")
    auto = load_splits("imagefolder", grey)
    assert auto.in_channels == 1  # every image grey: one channel
    as_rgb = load_splits("imagefolder", grey, channels=3)
    assert as_rgb.in_channels == 3 and torch.equal(as_rgb.train_x[:, :1], auto.train_x)
    assert torch.equal(as_rgb.train_x[:, 0], as_rgb.train_x[:, 2])
    colour = make_image_folder(tmp_path / "colour")
    luma = load_splits("imagefolder", colour, channels=1)
    rgb = load_splits("imagefolder", colour)
    assert rgb.in_channels == 3 and luma.in_channels == 1
    expected = (rgb.train_x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
    assert torch.allclose(luma.train_x[:, 0], expected)
    digits = load_splits("digits", channels=3, image_size=16)
    assert digits.train_x.shape[1:] == (3, 16, 16)


DAMAGES = (
    "empty", "no_classes", "class_without_images", "corrupt", "extra_test_class",
    "missing_test_class", "test_size", "mixed_sizes",
)  # fmt: skip


def damaged_image_folder(root, damage: str, train: int = 12, test: int = 4):
    """An image folder (make_image_folder's) with one DAMAGES fault; returns its root."""
    assert damage in DAMAGES, damage
    if damage == "empty":
        root.mkdir()
    elif damage == "no_classes":
        (root / "train").mkdir(parents=True)
    else:
        make_image_folder(root, train=train, test=test if damage != "test_size" else 0)
    if damage == "class_without_images":
        for path in (root / "train" / "bee").iterdir():
            path.unlink()
    elif damage == "corrupt":
        (root / "train" / "ant" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 40)
    elif damage == "extra_test_class":
        (root / "test" / "dog").mkdir()
    elif damage == "missing_test_class":
        for path in (root / "test" / "cat").iterdir():
            path.unlink()
        (root / "test" / "cat").rmdir()
    elif damage == "test_size":
        make_image_folder(root / "small", size=32)
        (root / "small" / "test").rename(root / "test")
    elif damage == "mixed_sizes":
        Image.new("RGB", (32, 32)).save(root / "train" / "cat" / "small.png")
    return root


@pytest.mark.parametrize(
    "damage, fragment",
    [
        ("empty", "no train/ folder"),
        ("no_classes", "train/ holds no class folders"),
        ("class_without_images", "train/bee/ holds no images"),
        ("corrupt", "train/ant/3.png is not a readable image"),
        ("extra_test_class", "test/ has class 'dog', which train/ lacks"),
        ("missing_test_class", "train/ has class 'cat', which test/ lacks"),
        ("test_size", "the test images' shape"),
    ],
)
def test_bad_layouts_are_named(tmp_path, damage, fragment):
    root = damaged_image_folder(tmp_path / "pets", damage)
    with pytest.raises(DataError, match=fragment) as raised:
        load_splits("imagefolder", root)
    assert str(raised.value).startswith(str(root)) and "\n" not in str(raised.value)


# --- torchvision's data sets ------------------------------------------------------------------


def _idx(path, array: np.ndarray) -> None:
    """An MNIST idx file: magic (0, 0, type 8 = ubyte, dims), big-endian sizes, the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_from_a_local_root(tmp_path, name, folder):
    """A tiny root in torchvision's on-disk format: the idx files under <root>/<folder>/raw."""
    raw = tmp_path / "tv" / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 20)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    splits = load_splits(name, tmp_path / "tv", val_size=10, image_size=32)
    assert splits.train_x.shape == (50, 1, 32, 32) and splits.test_size == 20
    assert splits.num_classes == 10 and splits.in_channels == 1


def test_gtsrb_from_a_local_root_needs_image_size(tmp_path):
    """torchvision's GTSRB layout: Training/<class>/*.ppm, Final_Test/Images/*.ppm and the test
    labels in GT-final_test.csv; its images differ in size."""
    base = tmp_path / "tv" / "gtsrb"
    rng = np.random.default_rng(0)
    for c in range(2):
        folder = base / "GTSRB" / "Training" / f"{c:05d}"
        folder.mkdir(parents=True)
        for j in range(8):
            side = 30 + j
            pixels = rng.integers(0, 256, (side, side + 1, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{j}.ppm")
    test = base / "GTSRB" / "Final_Test" / "Images"
    test.mkdir(parents=True)
    rows = ["Filename;ClassId"]
    for j in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 35, 3), dtype=np.uint8)).save(test / f"{j}.ppm")
        rows.append(f"{j}.ppm;{j % 2}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match="differ in size.*set image_size"):
        load_splits("gtsrb", tmp_path / "tv", val_size=4)
    splits = load_splits("gtsrb", tmp_path / "tv", val_size=4, image_size=24)
    assert splits.train_x.shape == (12, 3, 24, 24) and splits.test_size == 4
    assert splits.classes == ("0", "1")
    assert len(list((tmp_path / "cache" / "decoded").glob("gtsrb-*.npz"))) == 2


@pytest.mark.parametrize(
    "name", ["mnist", "fashion_mnist", "svhn", "gtsrb", "flowers102", "stl10", "cifar10"]
)
def test_a_missing_root_names_the_dataset_and_the_root(tmp_path, name):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as raised:
        load_splits(name, empty, image_size=32)
    message = str(raised.value)
    assert message.startswith(f"no {name} data in {empty} (") and "\n" not in message
    with pytest.raises(DataError, match=f"{name}: data directory .* does not exist"):
        load_splits(name, tmp_path / "nowhere")
