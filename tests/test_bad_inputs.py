"""The catalogue of bad input beyond tests/test_config.py: unreadable paths, broken datasets,
a malformed cluster.yaml, an unreachable cluster, bad resource requests. Each one runs the real
command line and must give exit code 2, one line naming the field, and no study directory."""

import shutil
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import yaml
from PIL import Image

from study import sweep
from tests.conftest import REPO
from tests.test_multinode import free_port


@pytest.fixture
def cifar_tree(tmp_path, monkeypatch):
    """A tiny CIFAR-10 ImageFolder (10 classes; 3 train images and 1 test image each of 32x32)
    and its cache."""
    monkeypatch.setenv("LIMEROBUST_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "tiny-cifar"
    for split, count in (("train", 3), ("test", 1)):
        for c in range(10):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(count):
                pixels = np.full((32, 32, 3), 25 * c + i, dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f"class{c}" / f"{i}.png")
    return root


SPACE = {"type": "uniform", "low": 0.0, "high": 0.1}


def _main(tmp_path, capsys, *argv):
    code = sweep.main([*argv, "--storage", str(tmp_path / "store"), "--name", "bad"])
    err = capsys.readouterr().err.strip()
    return code, err


def _assert_rejected(tmp_path, code, err, fragment):
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    assert fragment in err, err
    assert not (tmp_path / "store").exists()


def _yaml(tmp_path, data) -> str:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"trial": {"num_workers": -1}}, "trial.num_workers"),
        ({"trial": {"num_workers": 1.5}}, "trial.num_workers"),
        ({"trial": {"num_workers": 0, "gpus_per_worker": 2}}, "at most 1 GPU"),
        ({"trial": {"num_workers": 2, "gpus_per_worker": 0.5}}, "Duplicate GPU"),
        ({"trial": {"final_eval_subset": 451}}, "trial.final_eval_subset: digits's test split"),
        ({"confirm_eval": {"eval_subset": 10**5}}, "eval_subset"),
        ({"trial": {"answer_epsilons": "0.1,2"}}, "trial.answer_epsilons"),
        ({"trial": {"answer_epsilons": "eight"}}, "trial.answer_epsilons"),
        ({"trial": {"cpus_per_worker": "two"}}, "trial.cpus_per_worker"),
        ({"trial": {"gpus_per_worker": -1}}, "trial.gpus_per_worker"),
        ({"trial": {"batch_size": 10**9}}, "trial.batch_size"),
        ({"trial": ["rounds", 2]}, "trial"),
        ({"search": {"lr": {"type": "choice", "values": []}}}, "search.lr.values"),
        ({"search": {"lr": {"type": "uniform", "low": 0.01, "high": 0.1, "step": 2}}}, "search.lr"),
        ({"max_concurrent_trials": 0}, "max_concurrent_trials"),
        ({"objectives": ["clean_acc"]}, "objectives"),
        ({"primary_eval": {"lr": 0.1}}, "primary_eval.lr: not a test-evaluation key"),
        ({"primary_eval": {"final_eval_subset": 451}}, "primary_eval: trial.final_eval_subset"),
        ({"matched_clean": [0.8, 1.5]}, "matched_clean"),
        (
            {"baselines": [{"method": "pgd_at", "search": {"mask_ratio": SPACE}}]},
            "baselines[0].search.mask_ratio: pgd_at does not read mask_ratio",
        ),
        (
            {
                "baselines": [
                    {"method": "trades", "search": {"seed": {"type": "int", "low": 0, "high": 3}}}
                ]
            },
            "baselines[0].search.seed: not a training key",
        ),
        ({"baselines": [{"method": "pgd_at"}]}, "baselines[0].search"),
        ({"baselines": ["erm", "erm"]}, "baselines: 'erm' is listed twice"),
        (
            {
                "baselines": [
                    {"method": "ig_norm", "search": {"baseline_weight": SPACE}},
                    {"method": "ig_norm", "search": {"epsilon": SPACE}},
                ]
            },
            "baselines[1]: ig_norm is searched twice",
        ),  # fmt: skip
    ],
)
def test_bad_yaml_values(tmp_path, capsys, data, fragment):
    code, err = _main(tmp_path, capsys, "--config", _yaml(tmp_path, data))
    _assert_rejected(tmp_path, code, err, fragment)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--gpus-per-trial", "-1"], "--gpus-per-trial"),
        (["--gpus-per-trial", "2.5"], "--gpus-per-trial"),  # 2.5 GPUs for one worker
        (["--seed", "-1"], "seed"),
        (["--address", "no-port-here"], "--address"),
    ],
)
def test_bad_flags(tmp_path, capsys, argv, fragment):
    code, err = _main(tmp_path, capsys, *argv)
    _assert_rejected(tmp_path, code, err, fragment)


def test_config_path_that_is_a_directory(tmp_path, capsys):
    code, err = _main(tmp_path, capsys, "--config", str(tmp_path))
    _assert_rejected(tmp_path, code, err, "cannot read")


def test_storage_under_a_regular_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = sweep.main(["--storage", str(blocker / "store")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --storage:") and "\n" not in err
    assert blocker.is_file()


def test_truncated_dataset_archive(tmp_path, capsys, cifar_tree):
    archive = tmp_path / "tiny-cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(cifar_tree, arcname="tiny-cifar")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    code, err = _main(tmp_path, capsys, "--preset", "cifar10", "--data-dir", str(archive))
    _assert_rejected(tmp_path, code, err, "not a readable archive (")


def test_dataset_cache_checksum_mismatch(tmp_path, capsys, cifar_tree):
    from trainables.data import cache_dir, load_splits

    load_splits("cifar10", cifar_tree, val_size=10)  # decodes once and writes the checksummed cache
    cache = next((cache_dir() / "decoded").glob("train-*.npz"))
    with np.load(cache) as z:
        x, y = z["x"].copy(), z["y"]
    x[0, 0, 0, 0] ^= 1  # one changed pixel, the stored checksum kept
    np.savez(cache, x=x, y=y, sha256=str(np.load(cache)["sha256"]))
    code, err = _main(tmp_path, capsys, "--preset", "cifar10", "--data-dir", str(cifar_tree))
    _assert_rejected(tmp_path, code, err, "fails its checksum")


def test_dataset_with_missing_classes(tmp_path, capsys, cifar_tree):
    shutil.rmtree(cifar_tree / "train" / "class9")
    code, err = _main(tmp_path, capsys, "--preset", "cifar10", "--data-dir", str(cifar_tree))
    _assert_rejected(tmp_path, code, err, "9 class folders")


def test_unreachable_address_fails_fast(tmp_path, capsys):
    start = time.perf_counter()
    code, err = _main(tmp_path, capsys, "--address", f"127.0.0.1:{free_port()}")
    _assert_rejected(tmp_path, code, err, "--address: nothing answers at 127.0.0.1:")
    assert time.perf_counter() - start < 15


@pytest.mark.parametrize(
    "edit, fragment",
    [
        ("worker.max_gpus = 4", "available_node_types.gpu_worker: Additional properties"),
        ("worker.resources.GPU = 0.5", "resources.GPU: 0.5 is not of type 'integer'"),
        ("head_node_type = 'cpu_head'", "head_node_type"),
    ],
)
def test_malformed_cluster_yaml(tmp_path, capsys, edit, fragment):
    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    worker = cfg["available_node_types"]["gpu_worker"]
    if edit.startswith("worker.max_gpus"):
        worker["max_gpus"] = 4
    elif edit.startswith("worker.resources"):
        worker["resources"]["GPU"] = 0.5
    else:
        cfg["head_node_type"] = "cpu_head"
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, err = _main(tmp_path, capsys, "--check-cluster", str(path))
    _assert_rejected(tmp_path, code, err, fragment)


def test_cluster_yaml_that_is_not_yaml_from_a_real_process(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("cluster_name: x\nprovider: {type: aws\n")
    out = subprocess.run(
        [sys.executable, "-m", "study.sweep", "--check-cluster", str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].endswith("malformed YAML at line 3")


def test_non_numeric_flag_from_a_real_process(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "study.sweep", "--gpus-per-trial", "half",
         "--storage", str(tmp_path / "store")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and "--gpus-per-trial" in out.stderr
    assert not (tmp_path / "store").exists()


# --- your own data, model and trained classifier (docs/data-and-models.md) ---------------------


def _own_data_study(tmp_path, data_dir, **trial):
    return _yaml(
        tmp_path, {"trial": {"dataset": "imagefolder", "data_dir": str(data_dir), **trial}}
    )


@pytest.mark.parametrize(
    "damage, fragment",
    [
        ("empty", "pets: no train/ folder"),
        ("class_without_images", "pets: train/bee/ holds no images"),
        ("corrupt", "pets: train/ant/3.png is not a readable image"),
        ("extra_test_class", "pets: test/ has class 'dog', which train/ lacks"),
        ("mixed_sizes", "pets: images differ in size"),
    ],
)
def test_bad_image_folders(tmp_path, capsys, monkeypatch, damage, fragment):
    from tests.test_own_data import damaged_image_folder

    monkeypatch.setenv("LIMEROBUST_CACHE", str(tmp_path / "cache"))
    root = damaged_image_folder(tmp_path / "pets", damage, train=6, test=2)
    code, err = _main(tmp_path, capsys, "--config", _own_data_study(tmp_path, root))
    _assert_rejected(tmp_path, code, err, f"error: --data-dir: {root.parent}/{fragment}")


def test_a_csv_with_a_missing_file(tmp_path, capsys, monkeypatch):
    from tests.test_own_data import make_image_folder

    monkeypatch.setenv("LIMEROBUST_CACHE", str(tmp_path / "cache"))
    make_image_folder(tmp_path / "pets", train=6, test=0)
    csv = tmp_path / "labels.csv"
    rows = [f"pets/train/{c}/{i}.png,{c}" for c in ("ant", "bee", "cat") for i in range(6)]
    csv.write_text("\n".join([*rows, "pets/train/cat/gone.png,cat"]) + "\n")
    study = _own_data_study(tmp_path, csv, test_fraction=0.3)
    code, err = _main(tmp_path, capsys, "--config", study)
    _assert_rejected(tmp_path, code, err, "labels.csv: line 19: pets/train/cat/gone.png does not")


MODELS = """
from torch import nn

def takes_x(x):
    return nn.Linear(64, 10)
"""


@pytest.mark.parametrize(
    "model, fragment",
    [
        ("no_such_package.models:net", "trial.model: no_such_package.models:net: cannot import"),
        ("bad_inputs_models:takes_x", "must take in_channels, num_classes and image_size"),
        ("torchvision:resnet_nine", "torchvision has no classification model 'resnet_nine'"),
    ],
)
def test_a_model_that_does_not_import_or_has_the_wrong_signature(
    tmp_path, capsys, monkeypatch, model, fragment
):
    (tmp_path / "bad_inputs_models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    code, err = _main(tmp_path, capsys, "--config", _yaml(tmp_path, {"trial": {"model": model}}))
    _assert_rejected(tmp_path, code, err, fragment)


def test_a_base_checkpoint_that_does_not_fit_the_model(tmp_path, capsys):
    import torch

    from trainables.models import build_model

    other = build_model(
        "small_cnn", in_channels=1, num_classes=3, image_size=8, mean=[0.3], std=[0.4]
    )  # three classes where digits has ten
    torch.save(other[1].state_dict(), tmp_path / "mine.pt")
    config = _yaml(tmp_path, {"base": {"checkpoint": str(tmp_path / "mine.pt")}})
    code, err = _main(tmp_path, capsys, "--config", config)
    _assert_rejected(
        tmp_path, code, err, "base.checkpoint: base model " + str(tmp_path / "mine.pt")
    )
    assert "does not fit the model: key '8.weight' has shape (3, 64) in the checkpoint" in err


def test_test_subsets_larger_than_a_scanned_test_split(tmp_path, capsys, monkeypatch):
    from tests.test_own_data import make_image_folder

    monkeypatch.setenv("LIMEROBUST_CACHE", str(tmp_path / "cache"))
    root = make_image_folder(tmp_path / "pets", train=6, test=2)
    study = _own_data_study(tmp_path, root)  # the digits preset's final_eval_subset: 64
    code, err = _main(tmp_path, capsys, "--config", study)
    _assert_rejected(
        tmp_path, code, err, "trial.final_eval_subset: imagefolder's test split has 6 images"
    )
    study = _yaml(
        tmp_path,
        {
            "trial": {"dataset": "imagefolder", "data_dir": str(root), "final_eval_subset": 6},
            "confirm_eval": {"eval_subset": 7},
        },
    )
    code, err = _main(tmp_path, capsys, "--config", study)
    _assert_rejected(tmp_path, code, err, "confirm_eval: trial.eval_subset: imagefolder's test")


def test_a_shift_as_large_as_the_images_is_refused(tmp_path, capsys, monkeypatch):
    from tests.test_own_data import make_image_folder

    monkeypatch.setenv("LIMEROBUST_CACHE", str(tmp_path / "cache"))
    root = make_image_folder(tmp_path / "pets", train=6, test=2, size=16)
    trial = {"final_eval_subset": 6, "eval_subset": 6, "translate": 16}
    code, err = _main(tmp_path, capsys, "--config", _own_data_study(tmp_path, root, **trial))
    _assert_rejected(tmp_path, code, err, "trial.translate: 16 pixels, not less than")
