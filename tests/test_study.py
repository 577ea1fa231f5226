"""End to end: a real study through Ray Tune, Ray Train and OptunaSearch, every stage: search
with replicates on validation, baselines, confirmation on the test split, the answer."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


def _dominated(a: np.ndarray, b: np.ndarray) -> bool:
    """True when b dominates a (both maximized)."""
    return bool(np.all(b >= a) and np.any(b > a))


def test_study_writes_its_files(tiny_study):
    d = Path(tiny_study)
    for name in (
        "study.json", "trials.csv", "configs.csv", "pareto.csv", "pareto.png",
        "confirmation.csv", "confirmed.csv", "selection_bias.csv", "answer.csv", "fronts.csv",
        "confirmed_fronts.png", "fronts_other_eps.csv",
    ):  # fmt: skip
        assert (d / name).stat().st_size > 0, name
    settings = json.loads((d / "study.json").read_text())
    assert settings["objectives"] == {"val_clean_acc": "max", "val_robust_acc": "max"}


def test_search_trials_are_replicates_evaluated_on_validation(tiny_study):
    trials = pd.read_csv(f"{tiny_study}/trials.csv")
    searched = trials[trials["experiment"] == "tiny"]
    assert len(searched) == 4 and set(trials["status"]) == {"TERMINATED"}
    assert set(searched["stage"]) == {"search"}
    # 2 configurations x 2 replicates: the replicates share the searched values, not the seed.
    for _, group in searched.groupby("config/config_id"):
        assert sorted(group["config/replicate"]) == [0, 1]
        assert group["config/mask_ratio"].nunique() == 1 and group["config/seed"].nunique() == 2
    assert searched["config/config_id"].nunique() == 2
    for col in ("val_clean_acc", "val_robust_acc", "val_pgd_acc", "val_blackbox_acc"):
        assert searched[col].between(0, 1).all()
    # The worst case is never above either attack's accuracy.
    worst = searched[["val_pgd_acc", "val_blackbox_acc"]].min(axis=1)
    assert (searched["val_robust_acc"] <= worst + 1e-12).all()
    # No search or baseline trial reported a test metric.
    not_confirm = trials[trials["experiment"] != "confirmation"]
    test_cols = [c for c in trials if c.startswith("test_")]
    assert test_cols and not_confirm[test_cols].isna().all().all()


def test_configs_csv_is_the_mean_and_interval_of_the_replicates(tiny_study):
    """The mean over the replicates, and the interval over seeds and validation images computed
    from the outcome files the study wrote into each trial's folder."""
    from analysis import intervals
    from analysis.results import read_outcomes

    trials = pd.read_csv(f"{tiny_study}/trials.csv")
    configs = pd.read_csv(f"{tiny_study}/configs.csv").set_index("config_id")
    for config_id, group in trials[trials["experiment"] != "confirmation"].groupby(
        "config/config_id"
    ):
        row = configs.loc[config_id]
        assert row["n"] == 2
        assert row["val_robust_acc_mean"] == pytest.approx(group["val_robust_acc"].mean())
        per_image = []
        for trial_dir in group.sort_values("config/replicate")["trial_dir"]:
            table = read_outcomes(trial_dir)
            per_image.append(table.loc[table["split"] == "val", "robust"].to_numpy(dtype=bool))
        _, lo, hi = intervals.accuracy_interval(np.stack(per_image))
        assert (row["val_robust_acc_ci_low"], row["val_robust_acc_ci_high"]) == pytest.approx(
            (lo, hi)
        )
        assert lo < row["val_robust_acc_mean"] < hi  # never a zero-width interval
    assert configs.loc["pgd_at", "experiment"] == "baselines"
    assert np.isnan(configs.loc["pgd_at", "p_front"])
    # PGD-AT reads its epsilon, never the LIME keys: those stay empty in its rows
    pgd_at = configs[configs["method"] == "pgd_at"]
    assert pgd_at["mask_ratio"].isna().all() and pgd_at["reg_weight"].isna().all()
    assert (pgd_at["epsilon"] > 0).all()


def test_pareto_csv_holds_exactly_the_non_dominated_configurations(tiny_study):
    configs = pd.read_csv(f"{tiny_study}/configs.csv")
    searched = configs[configs["experiment"] == "tiny"]
    fronts = pd.read_csv(f"{tiny_study}/pareto.csv")
    front = fronts[fronts["experiment"] == "tiny"]
    assert fronts["experiment"].iloc[0] == "tiny"  # the method's front first: its primary
    # the searched baseline's own front, of its own configurations, named after it
    baseline = fronts[fronts["experiment"] == "search-pgd_at"]
    assert list(baseline["config_id"]) == ["pgd_at-c000"]
    assert set(fronts["experiment"]) == {"tiny", "search-pgd_at"}
    points = searched[["val_clean_acc_mean", "val_robust_acc_mean"]].to_numpy()
    expected = {
        cid
        for cid, p in zip(searched["config_id"], points, strict=True)
        if not any(_dominated(p, q) for q in points)
    }
    assert set(front["config_id"]) == expected and len(expected) >= 1
    assert front["p_front"].isna().all()  # 2 replicates: too few for a bootstrap share


def test_confirmation_retrains_the_front_and_the_baseline_with_fresh_seeds(tiny_study):
    trials = pd.read_csv(f"{tiny_study}/trials.csv")
    front = pd.read_csv(f"{tiny_study}/pareto.csv")
    confirmation = pd.read_csv(f"{tiny_study}/confirmation.csv")
    assert set(confirmation["config/config_id"]) == {*front["config_id"], "pgd_at"}
    assert (confirmation.groupby("config/config_id").size() == 2).all()
    search_seeds = set(trials.loc[trials["experiment"] != "confirmation", "config/seed"])
    assert not search_seeds & set(confirmation["config/seed"])
    for col in ("test_clean_acc", "test_robust_acc", "test_pgd50_acc", "test_autoattack_acc"):
        assert confirmation[col].between(0, 1).all(), col
    confirmed = pd.read_csv(f"{tiny_study}/confirmed.csv")
    assert {"test_clean_acc_mean", "test_autoattack_acc_ci_low"} <= set(confirmed)
    bias = pd.read_csv(f"{tiny_study}/selection_bias.csv")
    assert set(bias["config_id"]) == set(front["config_id"])
    assert {"val_clean_acc_mean", "test_clean_acc_mean"} <= set(bias)


def test_answer_table_pairs_each_front_configuration_with_pgd_at(tiny_study):
    answer = pd.read_csv(f"{tiny_study}/answer.csv")
    confirmation = pd.read_csv(f"{tiny_study}/confirmation.csv")
    front = pd.read_csv(f"{tiny_study}/pareto.csv")
    assert set(answer["config_id"]) == set(front["config_id"])
    ref = confirmation[confirmation["config/config_id"] == "pgd_at"].set_index("config/replicate")
    for _, row in answer.iterrows():
        ours = confirmation[confirmation["config/config_id"] == row["config_id"]]
        diffs = ours.set_index("config/replicate")["test_clean_acc"] - ref["test_clean_acc"]
        assert row["test_clean_acc_diff"] == pytest.approx(diffs.mean())
        assert row["n_pairs"] == 2
        verdict = row["verdict"]
        assert verdict == "no difference beyond the intervals" or "↑" in verdict or "↓" in verdict


def test_the_console_shows_the_study_and_ray_goes_to_the_log(tiny_study):
    """The CLI's console: our lines only (a line per trial, status lines, the front and the
    answer), within 80 lines; Ray's and Tune's own output in study.log."""
    console = (Path(tiny_study) / "console.txt").read_text()
    lines = console.splitlines()
    assert len(lines) <= 80, console
    trial_lines = [line for line in lines if line.startswith(("[search] c", "[baselines] p"))]
    assert len(trial_lines) == 8, console  # 4 searched + 2 PGD-AT + 2 searched PGD-AT
    assert "The fronts" in console
    assert any(line.startswith("[confirmation] ") for line in lines)
    assert "Pareto-optimal configurations" in console and "The answer" in console
    for raw in ("WARNING", "(raylet)", "TrainingReport", "UserWarning", "Trial status", "pid="):
        assert raw not in console, raw
    log = (Path(tiny_study) / "study.log").read_text()
    # Ray's own output went here
    assert "Connected to Ray cluster" in log and "Checkpoint successfully created" in log
    # baselines and confirmation run fixed points: no warning that they differ from the space
    assert "Pre-set value" not in log


def _sleep_and_report(config):
    import time

    from ray import tune

    time.sleep(config["sleep_s"])
    tune.report({"x": 1.0})


@pytest.mark.slow  # a fault: a stage interrupted by a real signal, then resumed
def test_an_interrupted_stage_is_an_error_not_a_finished_stage(ray_local, tmp_path):
    """Ctrl-C (or SIGUSR1, the same handler) makes Tune stop, save its state and return from
    fit() as if the stage had finished; fit_stage reads the saved state and raises. Real Tune,
    real signal; a stage run to its end passes, and resuming the interrupted one finishes it."""
    import os
    import signal

    from ray import tune

    from study.stages import StageInterrupted, fit_stage

    sent = tmp_path / "sent"  # once: the callback comes back with the restored Tuner

    class InterruptOnFirstStart(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            if not sent.exists():
                sent.touch()
                os.kill(os.getpid(), signal.SIGUSR1)

    def tuner(name: str, callbacks: list):
        return tune.Tuner(
            _sleep_and_report,
            param_space={"sleep_s": tune.grid_search([0.0, 0.5, 1.0])},
            tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True),  # as a stage
            run_config=tune.RunConfig(
                storage_path=str(tmp_path), name=name, callbacks=callbacks, verbose=0
            ),
        )

    fit_stage(tuner("whole", []), str(tmp_path / "whole"), 3, "search")
    with pytest.raises(StageInterrupted, match="search stage stopped with [123] of its 3 trials"):
        fit_stage(tuner("cut", [InterruptOnFirstStart()]), str(tmp_path / "cut"), 3, "search")
    path = str(tmp_path / "cut")
    restored = tune.Tuner.restore(path, trainable=_sleep_and_report, resume_unfinished=True)
    fit_stage(restored, path, 3, "search")


def test_fronts_csv_compares_each_confirmed_front_with_the_methods(tiny_study):
    fronts = pd.read_csv(f"{tiny_study}/fronts.csv")
    assert list(fronts["front"].unique()) == ["lime_refine", "pgd_at", "pgd_at, searched"]
    hv = fronts[fronts["statistic"] == "hypervolume"].set_index("front")
    confirmed = pd.read_csv(f"{tiny_study}/confirmed.csv").set_index("config_id")
    ref = confirmed.loc["pgd_at"]
    assert hv.loc["pgd_at", "estimate"] == pytest.approx(
        ref["test_clean_acc_mean"] * ref["test_robust_acc_mean"]
    )  # one point: the rectangle it dominates
    assert (hv["ci_low"] < hv["estimate"]).all() and (hv["estimate"] < hv["ci_high"]).all()
    assert hv.loc["pgd_at", "diff"] == pytest.approx(
        hv.loc["pgd_at", "estimate"] - hv.loc["lime_refine", "estimate"]
    )
    # the same fronts, levels and statistics at the study's other answer eps
    other = pd.read_csv(f"{tiny_study}/fronts_other_eps.csv")
    (metric,) = other["robust_metric"].unique()
    assert metric.startswith("test_robust_eps")
    assert other[["front", "statistic"]].equals(fronts[["front", "statistic"]])
    hv_other = other[other["statistic"] == "hypervolume"].set_index("front")
    assert hv_other.loc["pgd_at", "estimate"] == pytest.approx(
        ref["test_clean_acc_mean"] * ref[f"{metric}_mean"]
    )


def test_study_tables_answers_against_another_reference(tiny_study, tmp_path, capsys):
    from benchmarks import study_tables

    confirmed = pd.read_csv(f"{tiny_study}/confirmed.csv")["config_id"].tolist()
    reference = next(c for c in confirmed if c != "pgd_at")  # not the study's own reference
    out = tmp_path / "tables"
    assert study_tables.main([tiny_study, "--reference", reference, "--out", str(out)]) == 0
    table = pd.read_csv(out / f"vs_{reference}.csv")
    assert set(table["reference"]) == {reference} and reference not in set(table["config_id"])
    assert "verdict" in table and len(table) >= 1
    assert (out / "paper_claims.csv").exists()  # no rows here: the tiny study has no ERM
    assert study_tables.main([tiny_study, "--reference", "nope", "--out", str(out)]) == 2
    assert "'nope' is not a confirmed configuration" in capsys.readouterr().err


def test_reattack_rebuilds_the_confirmed_models_and_attacks_them_again(tiny_study, tmp_path):
    from benchmarks import reattack

    out = tmp_path / "reattack.csv"
    args = [tiny_study, "--config", "pgd_at", "--eps", "0.3", "--images", "20", "--threads", "1"]
    assert reattack.main([*args, "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert sorted(table["replicate"]) == [0, 1] and (table["images"] == 20).all()
    assert np.allclose(table["clean_acc"], table["trial_clean_acc"], atol=1e-6)  # the same model
    assert (table["autoattack_acc"] <= table["pgd20_acc"] + 0.05).all()
    assert reattack.main([tiny_study, "--config", "nope", "--out", str(out)]) == 2
