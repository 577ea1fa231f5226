"""End to end: a real 2-trial study through Ray Tune, Ray Train and OptunaSearch."""

import json
from pathlib import Path

import numpy as np
import pandas as pd


def _dominated(a: np.ndarray, b: np.ndarray) -> bool:
    """True when b dominates a (both maximized)."""
    return bool(np.all(b >= a) and np.any(b > a))


def test_study_writes_its_files(tiny_study):
    d = Path(tiny_study)
    for name in ("study.json", "trials.csv", "pareto.csv", "pareto.png"):
        assert (d / name).stat().st_size > 0, name
    settings = json.loads((d / "study.json").read_text())
    assert settings["objectives"] == {"clean_acc": "max", "robust_acc": "max"}


def test_trials_ran_through_train_and_report_both_objectives(tiny_study):
    trials = pd.read_csv(f"{tiny_study}/trials.csv")
    searched = trials[trials["experiment"] == "tiny"]
    assert len(searched) == 2 and set(trials["status"]) == {"TERMINATED"}
    assert trials["rounds"].eq(2).all()
    for col in ("clean_acc", "robust_acc"):
        assert trials[col].between(0, 1).all()
    # Searched values differ between trials (Optuna sampled them), fixed ones do not.
    assert searched["config/mask_ratio"].nunique() == 2
    assert trials["config/rounds"].eq(2).all()
    # Every trial's Train run kept a checkpoint under the study directory.
    assert len(list(Path(tiny_study, "train_runs").glob("*/checkpoint_*"))) >= len(trials)


def test_baselines_ran_beside_the_search(tiny_study):
    trials = pd.read_csv(f"{tiny_study}/trials.csv")
    baselines = trials[trials["experiment"] == "baselines"]
    assert sorted(baselines["config/method"]) == ["erm", "ig_norm", "pgd_at"]
    assert set(trials.loc[trials["experiment"] == "tiny", "config/method"]) == {"lime_refine"}


def test_pareto_csv_holds_exactly_the_non_dominated_trials(tiny_study):
    trials = pd.read_csv(f"{tiny_study}/trials.csv")
    searched = trials[trials["experiment"] == "tiny"]
    front = pd.read_csv(f"{tiny_study}/pareto.csv")
    points = searched[["clean_acc", "robust_acc"]].to_numpy()
    expected = {
        tid
        for tid, p in zip(searched["trial_id"], points, strict=True)
        if not any(_dominated(p, q) for q in points)
    }
    assert set(front["trial_id"]) == expected and len(expected) >= 1
