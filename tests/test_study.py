"""End to end: a real 2-trial study through Ray Tune, Ray Train and OptunaSearch."""

import json

import numpy as np
import pandas as pd
import pytest

from study.config import load_config
from study.sweep import run_study

TINY_TRIAL = {
    "rounds": 2,
    "epochs_per_round": 1,
    "train_subset": 300,
    "eval_subset": 100,
    "pool_size": 8,
    "lime_samples": 50,
    "eval_steps": 5,
}


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory, ray_local):
    storage = tmp_path_factory.mktemp("studies")
    cfg = load_config(
        None, {"name": "tiny", "storage": str(storage), "num_samples": 2, "trial": TINY_TRIAL}
    )
    return run_study(cfg)


def _dominated(a: np.ndarray, b: np.ndarray) -> bool:
    """True when b dominates a (both maximized)."""
    return bool(np.all(b >= a) and np.any(b > a))


def test_study_writes_its_files(study_dir):
    from pathlib import Path

    d = Path(study_dir)
    for name in ("study.json", "trials.csv", "pareto.csv", "pareto.png"):
        assert (d / name).stat().st_size > 0, name
    settings = json.loads((d / "study.json").read_text())
    assert settings["objectives"] == {"clean_acc": "max", "robust_acc": "max"}


def test_trials_ran_through_train_and_report_both_objectives(study_dir):
    trials = pd.read_csv(f"{study_dir}/trials.csv")
    assert len(trials) == 2 and set(trials["status"]) == {"TERMINATED"}
    assert trials["rounds"].eq(2).all()
    for col in ("clean_acc", "robust_acc"):
        assert trials[col].between(0, 1).all()
    # Searched values differ between trials (Optuna sampled them), fixed ones do not.
    assert trials["config/mask_ratio"].nunique() == 2
    assert trials["config/rounds"].eq(2).all()
    # Every trial's Train run kept a checkpoint under the study directory.
    from pathlib import Path

    assert len(list(Path(study_dir, "train_runs").glob("*/checkpoint_*"))) >= 2


def test_pareto_csv_holds_exactly_the_non_dominated_trials(study_dir):
    trials = pd.read_csv(f"{study_dir}/trials.csv")
    front = pd.read_csv(f"{study_dir}/pareto.csv")
    points = trials[["clean_acc", "robust_acc"]].to_numpy()
    expected = {
        tid
        for tid, p in zip(trials["trial_id"], points, strict=True)
        if not any(_dominated(p, q) for q in points)
    }
    assert set(front["trial_id"]) == expected and len(expected) >= 1
