"""End to end with your own data, model and trained classifier: a study on an image folder
this test writes (3 classes of 48x48 RGB), with a model from a module this test writes (on
PYTHONPATH only, so the trial processes must inherit it), refining a checkpoint this test
trains (the network's own state_dict, as a user saves it), through every stage. The study
starts a Ray instance of its own (`--address local`), whose trial processes inherit the
driver's environment and so its PYTHONPATH."""

import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from tests.conftest import REPO
from tests.test_own_data import make_image_folder

MODULE = textwrap.dedent(
    """
    from torch import nn


    def tiny_net(in_channels, num_classes, image_size):
        return nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(8 * 16, num_classes),
        )
    """
)
MODEL = "own_study_models:tiny_net"


def _train_checkpoint(data_dir, path) -> float:
    """A short training of the user's model behind the engine's normalization (the training
    split's statistics); saves the network's state_dict; returns its validation accuracy."""
    from trainables.data import load_splits
    from trainables.models import build_model

    splits = load_splits("imagefolder", data_dir, with_test=False)
    torch.manual_seed(0)
    model = build_model(
        MODEL, in_channels=3, num_classes=3, image_size=48, mean=splits.mean, std=splits.std
    )
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    model.train()
    for _ in range(15):
        loss = F.cross_entropy(model(splits.train_x), splits.train_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(model[1].state_dict(), path)  # the network alone: no "1." prefix
    with torch.no_grad():
        return (model.eval()(splits.val_x).argmax(1) == splits.val_y).float().mean().item()


@pytest.mark.slow  # about a minute on 2 cores: a Ray instance of its own, 4 trials
def test_a_study_on_your_own_images_model_and_checkpoint(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LIMEROBUST_CACHE", str(cache))
    data = make_image_folder(tmp_path / "pets", train=16, test=4)
    code = tmp_path / "user_code"
    code.mkdir()
    (code / "own_study_models.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(code))
    checkpoint = tmp_path / "classifier.pt"
    assert _train_checkpoint(data, checkpoint) >= 0.8

    study = {
        "name": "own",
        "storage": str(tmp_path / "studies"),
        "num_samples": 1,
        "replicates": 1,
        "baselines": ["pgd_at"],
        "confirm_seeds": 1,
        "base": {"checkpoint": str(checkpoint)},
        "search": {"epsilon": {"type": "uniform", "low": 0.0, "high": 0.05}},
        "trial": {
            "dataset": "imagefolder", "data_dir": str(data), "model": MODEL,
            "rounds": 1, "epochs_per_round": 1, "batch_size": 16, "lr": 0.01,
            "pool_size": 6, "lime_samples": 80, "epsilon": 0.03,
            # an eps that fools the model at once (a class is 60 grey levels from the others):
            # AutoAttack's later attacks then find no image left to attack (at a small one
            # they spend their whole budget on every image)
            "eval_epsilon": 0.2,
            "eval_steps": 2, "blackbox_queries": 10, "eval_grid": "", "answer_epsilons": "",
            "final_eval_subset": 6, "final_restarts": 1,
            "num_workers": 0, "lime_actors": 0, "lime_backend": "torch", "cpus_per_worker": 1,
        },
    }  # fmt: skip
    config = tmp_path / "own.yaml"
    config.write_text(yaml.safe_dump(study))
    workdir = tmp_path / "elsewhere"  # not the module's folder: only PYTHONPATH finds it
    workdir.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(code)]),
        "LIMEROBUST_CACHE": str(cache),
    }
    run = subprocess.run(
        [sys.executable, "-m", "study.sweep", "--config", str(config), "--address", "local"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    study_dir = tmp_path / "studies" / "own"
    log = study_dir / "study.log"
    assert run.returncode == 0, run.stdout + run.stderr + (log.read_text() if log.exists() else "")
    assert f"[base] refining the classifier in {checkpoint}; no training" in run.stdout

    trials = pd.read_csv(study_dir / "trials.csv")
    confirmation = pd.read_csv(study_dir / "confirmation.csv")
    assert set(trials["status"]) == {"TERMINATED"}
    assert len(confirmation) == 2  # the configuration and PGD-AT at one seed
    trials = trials[trials["stage"] != "confirmation"]
    assert sorted(trials["stage"]) == ["baselines", "search"]
    for table in (trials, confirmation):  # every trial started from the checkpoint
        assert set(table["config/base_checkpoint"]) == {str(checkpoint)}
        assert set(table["config/model"]) == {MODEL}
    # the refinement started from a trained classifier, not from chance (1/3)
    assert trials["val_clean_acc"].min() >= 0.6, trials["val_clean_acc"]
    assert confirmation["test_clean_acc"].min() >= 0.6, confirmation["test_clean_acc"]
    record = json.loads((study_dir / "base.json").read_text())
    assert record["base"] == {"checkpoint": str(checkpoint)}
    assert not (tmp_path / "studies" / "bases").exists()  # nothing trained, nothing cached
