"""The worked example of studies/own-data (docs/own-data-example.md), small: its make_data.py on
a tiny archive in the CIFAR-10 JPEG layout this test writes, its train_classifier.py for one
epoch, then the engine's own checks on what they wrote: the saved state_dict fits
`my_model:build` behind the engine's Normalize and gives the accuracy the script reported, and
studies/own-data/study.yaml validates and passes the pre-flight checks with its data_dir and
checkpoint pointed at this test's files. No Ray study (tests/test_own_study.py runs one)."""

import importlib
import io
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO

EXAMPLE = REPO / "studies" / "own-data"
CLASSES = ("airplane", "automobile", "bird", "ship", "truck")  # make_data keeps 4 of them


def _tiny_cifar_archive(path, train=20, test=25, size=8):
    """`cifar10/{train,test}/<class>/NNNN.jpg` in a .tar.gz: class i is noise around a colour
    (learnable), the same layout as the CIFAR-10 JPEG archive, under one top folder."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for split, count in (("train", train), ("test", test)):
            for i, cls in enumerate(CLASSES):
                colour = np.array([60.0 + 40 * i, 200.0 - 40 * i, 120.0])
                for j in range(count):
                    pixels = np.clip(colour + rng.normal(0, 20, (size, size, 3)), 0, 255)
                    buf = io.BytesIO()
                    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="JPEG")
                    info = tarfile.TarInfo(f"cifar10/{split}/{cls}/{j:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return path


@pytest.fixture
def example(monkeypatch, tmp_path):
    """The example's three scripts, imported as a user's files on sys.path are."""
    monkeypatch.setenv("LIMEROBUST_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    names = ("make_data", "my_model", "train_classifier")
    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield {name: importlib.import_module(name) for name in names}
    for name in names:
        sys.modules.pop(name, None)


def test_the_example_makes_data_trains_and_fits_the_study(example, tmp_path, capsys):
    from study.config import load_config
    from study.preflight import check_data, check_model
    from trainables.base import fit_base_weights, load_base_weights
    from trainables.data import load_splits
    from trainables.models import build_model

    images = tmp_path / "images"
    archive = _tiny_cifar_archive(tmp_path / "cifar.tar.gz")
    args = ["--archive", str(archive), "--train-per-class", "16", "--test-per-class", "25"]
    example["make_data"].main([str(images), *args, "--size", "16"])
    for split, n in (("train", 16), ("test", 25)):
        assert sorted(p.name for p in (images / split).iterdir()) == [
            "airplane", "automobile", "ship", "truck"
        ]  # fmt: skip
        files = sorted((images / split / "ship").iterdir())
        assert len(files) == n and all(p.suffix == ".png" for p in files)
        assert Image.open(files[0]).size == (16, 16) and Image.open(files[0]).mode == "RGB"
    with pytest.raises(SystemExit, match="not empty"):  # never mixed with an earlier run's
        example["make_data"].main([str(images), *args])

    checkpoint = tmp_path / "my_model.pt"
    reported = example["train_classifier"].main(
        [str(images), "--out", str(checkpoint), "--epochs", "1", "--batch-size", "16"]
    )
    printed = capsys.readouterr().out
    assert "validation accuracy" in printed and "test acc" not in printed.lower()

    # the network's own layout (no Normalize inside), which the engine's Normalize then fronts
    weights = load_base_weights(str(checkpoint))
    assert set(weights) == set(example["my_model"].build(3, 4, 16).state_dict())
    splits = load_splits("imagefolder", images, with_test=False)
    model = build_model(
        "my_model:build", in_channels=3, num_classes=4, image_size=16, mean=splits.mean,
        std=splits.std,
    )  # fmt: skip
    model.load_state_dict(fit_base_weights(model, weights, str(checkpoint)))
    with torch.no_grad():
        engine_acc = (model.eval()(splits.val_x).argmax(1) == splits.val_y).float().mean()
    assert engine_acc.item() == pytest.approx(reported)  # the same network, the same inputs

    # the example's study, as committed, with this test's images, checkpoint and storage
    cfg = load_config(
        EXAMPLE / "study.yaml",
        {
            "storage": str(tmp_path / "studies"),
            "trial": {"data_dir": str(images)},
            "base": {"checkpoint": str(checkpoint)},
        },
    )
    assert cfg.trial.model == "my_model:build" and cfg.trial.dataset == "imagefolder"
    assert cfg.base == {"checkpoint": str(checkpoint)}
    assert cfg.baselines == ("erm", "pgd_at") and cfg.confirm_seeds == 2
    assert cfg.trial.num_workers == 0 and cfg.trial.lime_actors == 0
    check_model(cfg, check_data(cfg))  # the sweep's checks before Ray starts: they pass
