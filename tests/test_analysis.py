"""The analysis package: Pareto maths against brute force and hand-computed cases, and loading,
plots, Optuna export and the report against a real (synthetic, seconds-long) Ray Tune study."""

import base64
import itertools
import json
import os
import re

import fsspec
import numpy as np
import optuna
import pandas as pd
import pytest

from analysis import optuna_study, report
from analysis.paper import reproduction_table
from analysis.pareto import compare_studies, hypervolume, pareto_front, pareto_mask
from analysis.plots import pareto_figure, plot_pareto
from analysis.results import (
    completed,
    latest_study,
    load_history,
    load_study_settings,
    load_trials,
)
from analysis.synthetic import BASELINES, DIVERGES_ABOVE, make_synthetic_study
from study.store import open_fs

OBJ = {"clean_acc": "max", "robust_acc": "max"}
NUM_SAMPLES, ROUNDS = 6, 2


@pytest.fixture(scope="session")
def study_dir(ray_local, tmp_path_factory) -> str:
    """One synthetic study per session (test_notebooks.py reuses it)."""
    storage = tmp_path_factory.getbasetemp() / "studies"
    return make_synthetic_study(storage, num_samples=NUM_SAMPLES, rounds=ROUNDS, reuse=True)


@pytest.fixture(scope="session")
def trials(study_dir) -> pd.DataFrame:
    return load_trials(study_dir)


# --- Pareto maths ---------------------------------------------------------------------------


def brute_force_mask(points: np.ndarray, maximise: list[bool]) -> np.ndarray:
    sign = np.where(maximise, 1.0, -1.0)
    out = []
    for i, p in enumerate(points):
        if np.isnan(p).any():
            out.append(False)
            continue
        dominated = False
        for j, q in enumerate(points):
            if j == i or np.isnan(q).any():
                continue
            if np.all(q * sign >= p * sign) and np.any(q * sign > p * sign):
                dominated = True
        out.append(not dominated)
    return np.array(out)


@pytest.mark.parametrize("n_obj", [2, 3, 4])
def test_pareto_mask_matches_brute_force(n_obj):
    rng = np.random.default_rng(n_obj)
    names = [f"m{i}" for i in range(n_obj)]
    for trial in range(30):
        n = int(rng.integers(1, 40))
        points = rng.integers(0, 5, size=(n, n_obj)).astype(float)  # small ints: many ties
        points[rng.random(size=points.shape) < 0.05] = np.nan
        directions = rng.choice(["max", "min"], size=n_obj)
        objectives = dict(zip(names, directions, strict=True))
        df = pd.DataFrame(points, columns=names)
        expected = brute_force_mask(points, [d == "max" for d in directions])
        np.testing.assert_array_equal(pareto_mask(df, objectives), expected, err_msg=str(trial))


def test_pareto_duplicates_nan_and_front_order():
    df = pd.DataFrame(
        {
            "clean_acc": [0.9, 0.9, 0.5, np.nan, 0.4, 0.7],
            "robust_acc": [0.2, 0.2, 0.6, 0.9, 0.5, 0.4],
        }
    )
    assert pareto_mask(df, OBJ).tolist() == [True, True, True, False, False, True]
    assert pareto_front(df, OBJ)["clean_acc"].tolist() == [0.5, 0.7, 0.9, 0.9]
    assert not pareto_mask(df.iloc[:0], OBJ).any()
    with pytest.raises(ValueError, match="max' or 'min"):
        pareto_mask(df, {"clean_acc": "maximize", "robust_acc": "max"})


def test_hypervolume_hand_computed():
    pts = np.array([[0.5, 0.5], [1.0, 0.0], [0.2, 0.8]])
    # boxes from (0, 0): strips x in [0, .2] h .8, [.2, .5] h .5, [.5, 1] h 0
    assert hypervolume(pts, OBJ, {"clean_acc": 0, "robust_acc": 0}) == pytest.approx(0.31)
    # minimisation of both from reference (1, 1): mirror image of the same staircase
    mins = {"a": "min", "b": "min"}
    assert hypervolume(1 - pts, mins, {"a": 1, "b": 1}) == pytest.approx(0.31)
    # mixed directions; a point worse than the reference adds nothing; NaN rows are ignored
    # boxes [0, 2] x [1, 4] and [0, 5] x [3, 4] overlap in [0, 2] x [3, 4]: 6 + 5 - 2
    df = pd.DataFrame({"a": [2.0, 5.0, np.nan], "b": [1.0, 3.0, 0.0]})
    assert hypervolume(df, {"a": "max", "b": "min"}, {"a": 0, "b": 4}) == pytest.approx(9)
    assert hypervolume(df, {"a": "max", "b": "min"}, {"a": 6, "b": 4}) == 0.0
    # three objectives: a single box
    box = {"x": "max", "y": "max", "z": "max"}
    assert hypervolume([[1, 2, 3]], box, {"x": 0, "y": 0, "z": 0}) == pytest.approx(6)
    assert hypervolume(np.empty((0, 2)), OBJ, {"clean_acc": 0, "robust_acc": 0}) == 0.0


def test_compare_studies():
    a = pd.DataFrame({"clean_acc": [0.9, 0.6], "robust_acc": [0.3, 0.6]})
    b = pd.DataFrame({"clean_acc": [0.95, 0.5], "robust_acc": [0.35, 0.5]})
    ref = {"clean_acc": 0.0, "robust_acc": 0.0}
    out = compare_studies(a, b, OBJ, ref, names=("optuna", "random"))
    assert out.loc["optuna", "front_size"] == 2 and out.loc["random", "front_size"] == 2
    assert out.loc["optuna", "dominated_by_other"] == 1  # (0.9, 0.3) < (0.95, 0.35)
    assert out.loc["random", "dominated_by_other"] == 1  # (0.5, 0.5) < (0.6, 0.6)
    assert out.loc["optuna", "hypervolume"] == pytest.approx(hypervolume(a, OBJ, ref))


# --- loading a real study -------------------------------------------------------------------


def test_load_trials(study_dir, trials):
    settings = load_study_settings(study_dir)  # made here or by test_notebooks.py
    rounds = settings["trial"]["rounds"]
    assert len(trials) == settings["num_samples"] + len(BASELINES)
    assert set(trials["experiment"]) == {"synthetic", "baselines"}
    assert set(trials["config/method"]) == {"lime_refine", *BASELINES}
    errored = trials[trials["status"] == "ERROR"]
    assert len(errored) >= 1  # the enqueued trial with a large reg_weight
    assert (errored["config/reg_weight"] > DIVERGES_ABOVE).all()
    assert errored["error"].str.startswith("RuntimeError: training diverged").all()
    assert (errored["rounds"] == 1).all()  # it reported one round before failing
    done = completed(trials)
    assert len(done) == len(trials) - len(errored)
    assert (done["rounds"] == rounds).all() and (done["round"] == rounds).all()
    assert (done["error"] == "").all()
    assert done[["clean_acc", "robust_acc", "time_total_s"]].notna().all().all()
    for col in ("trial_id", "node_ip", "config/mask_ratio", "config/epsilon", "train_loss"):
        assert col in trials
    assert "config" not in trials and "done" not in trials
    assert trials["trial_id"].is_unique


def test_load_history_and_settings(study_dir, trials):
    history = load_history(study_dir)
    assert len(history) == trials["rounds"].sum()
    first = history.groupby("trial_id")["clean_acc"].first()
    last = history.groupby("trial_id")["clean_acc"].last()
    assert (
        last.loc[completed(trials)["trial_id"]] >= first.loc[completed(trials)["trial_id"]]
    ).all()
    settings = load_study_settings(study_dir)
    assert settings["objectives"] == OBJ and "mask_ratio" in settings["search"]
    assert load_study_settings(os.path.join(study_dir, "baselines")) == {}
    assert latest_study(os.path.dirname(study_dir)) == study_dir


def test_load_from_uri(study_dir, trials):
    """Any filesystem URI works like a local path: an fsspec memory:// copy of the study."""
    memory = fsspec.filesystem("memory")
    memory.put(study_dir, "/copied_study", recursive=True)
    remote = load_trials("memory://copied_study")
    cols = ["trial_id", "status", "rounds", "clean_acc"]
    key = "trial_id"
    pd.testing.assert_frame_equal(
        remote[cols].sort_values(key, ignore_index=True),
        trials[cols].sort_values(key, ignore_index=True),
    )
    assert load_study_settings("memory://copied_study")["name"] == "synthetic"
    fs, path = open_fs("s3://bucket/studies/x?region=us-east-1")  # no request is made
    assert type(fs).__name__ == "S3FileSystem" and path == "bucket/studies/x"
    with pytest.raises(FileNotFoundError):
        load_trials(os.path.join(study_dir, "no-such-study"))


# --- figures, Optuna, report ----------------------------------------------------------------


def test_plot_pareto(trials, tmp_path):
    path = tmp_path / "pareto.png"
    plot_pareto(trials, OBJ, path, title="synthetic")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = pareto_figure(trials, OBJ).axes[0]
    assert ax.get_xlabel() == "Clean accuracy (%, higher is better)"
    assert ax.get_ylabel().startswith("Robust accuracy under PGD, ε=0.1 (%")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"Baseline: ERM", "Baseline: PGD-AT", "Baseline: IG-NORM"} <= set(legend)
    assert any("Pareto-optimal" in t for t in legend)
    assert "errored or unfinished" in ax.get_title()


def test_optuna_export_and_importance(study_dir, trials, tmp_path):
    settings = load_study_settings(study_dir)
    study = optuna_study.to_optuna_study(trials, settings)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == (trials["status"] == "ERROR").sum()
    assert study.metric_names == list(OBJ)
    front_ids = {t.user_attrs["ray_trial_id"] for t in study.best_trials}
    assert front_ids == set(pareto_front(completed(trials), OBJ)["trial_id"])

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    for _ in range(2):  # exporting twice replaces the study
        assert optuna_study.main([study_dir, "--storage", storage]) == 0
    loaded = optuna.load_study(study_name="synthetic", storage=storage)
    assert len(loaded.trials) == len(trials)

    importances = optuna_study.param_importances(trials, settings)
    assert list(importances.columns) == list(OBJ)
    assert set(importances.index) == set(settings["search"])
    assert importances.sum().to_numpy() == pytest.approx([1.0, 1.0], abs=1e-6)


def test_reproduction_table_notes_missing_baselines(trials):
    only_method = trials[trials["config/method"] == "lime_refine"]
    table = reproduction_table(only_method, {"trial": {"dataset": "digits"}})
    ours = table[table["source"] == "This study (digits)"].set_index("model")
    assert ours.loc["Baseline: ERM", "note"] == "not run in this study"
    assert np.isnan(ours.loc["Baseline: PGD-AT", "robust_acc"])
    best = completed(only_method)["robust_acc"].max()
    assert ours.loc["LIME-guided refinement", "robust_acc"] == best
    full = reproduction_table(trials, {})
    assert not (full["note"] == "not run in this study").any()


def test_report(study_dir, tmp_path):
    out = tmp_path / "report.html"
    assert report.main([study_dir, "-o", str(out)]) == 0
    text = out.read_text()
    for heading in ("Pareto front", "Pareto-optimal trials", "All trials", "Settings"):
        assert heading in text
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 3  # Pareto plot, parameters, importance
    assert all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert "http" not in text.replace("http-equiv", "")  # self-contained: nothing fetched
    assert "RuntimeError: training diverged" in text


def test_study_without_results(tmp_path):
    """A study that has not reported yet loads, with its objectives as empty columns."""
    (tmp_path / "study.json").write_text('{"name": "new", "objectives": {"acc_a": "max"}}')
    assert load_trials(tmp_path).columns.tolist()[-1] == "acc_a"
    assert load_history(tmp_path).empty
    assert "No trial has finished yet" in report.build_report(tmp_path)


def test_report_written_into_study_dir(study_dir):
    assert report.main([study_dir]) == 0
    assert os.path.isfile(os.path.join(study_dir, "report.html"))


def test_pareto_figure_any_directions():
    """Every pair of directions plots, without a method column or a status column."""
    df = pd.DataFrame({"clean_acc": [0.9, 0.8, 0.5], "robust_acc": [0.1, 0.4, 0.3]})
    for dx, dy in itertools.product(("max", "min"), repeat=2):
        fig = pareto_figure(df, {"clean_acc": dx, "robust_acc": dy})
        assert fig.axes[0].get_legend() is not None


# --- the search-efficiency benchmark's bookkeeping (its studies are run by hand) --------------


def test_search_efficiency_summary(tmp_path):
    from benchmarks.search_efficiency import (
        benchmark_figure,
        hypervolume_curve,
        markdown,
        summary_table,
    )

    trials = pd.DataFrame(
        {
            "number": [3, 1, 2, 4],
            "status": ["TERMINATED", "TERMINATED", "ERROR", "TERMINATED"],
            "config/method": ["lime_refine"] * 4,
            "clean_acc": [0.5, 0.9, 0.99, 0.4],
            "robust_acc": [0.5, 0.1, 0.99, 0.4],
        }
    )
    # in start order: (.9, .1) -> .09; the errored trial adds nothing; (.5, .5) adds .4 * .5
    np.testing.assert_allclose(hypervolume_curve(trials), [0.09, 0.09, 0.29, 0.29])
    results = pd.DataFrame(
        {
            "searcher": ["optuna", "random"] * 3,
            "seed": [0, 0, 1, 1, 2, 2],
            "hypervolume": [0.5, 0.4, 0.6, 0.65, 0.7, 0.6],
            "curve": ["0.1 0.5", "0.1 0.4", "0.2 0.6", "0.2 0.65", "0.3 0.7", "0.3 0.6"],
        }
    )
    table = summary_table(results)
    assert table.loc["optuna", "seeds_won"] == 2 and table.loc["random", "seeds_won"] == 1
    assert table.loc["optuna", "mean"] == pytest.approx(0.6)
    text = markdown(table)
    assert text.splitlines()[0].startswith("| searcher | mean | sd |") and "| 0.6000 |" in text
    benchmark_figure(results).savefig(tmp_path / "bench.png")


# --- replicates: intervals, fronts and the answer, on hand-worked data ----------------------

VAL = {"val_clean_acc": "max", "val_robust_acc": "max"}


def _trial(tid, config_id, replicate, clean, robust, *, status="TERMINATED", **extra):
    experiment = extra.pop("experiment", "handmade")
    method = extra.pop("method", "lime_refine")
    return {
        "trial_id": tid,
        "experiment": experiment,
        "status": status,
        "config/config_id": config_id,
        "config/replicate": replicate,
        "config/method": method,
        "val_clean_acc": clean,
        "val_robust_acc": robust,
        **extra,
    }


def test_t_interval_hand_worked_and_against_scipy():
    from scipy import stats

    from analysis.replicates import t_interval

    # [1, 2, 3]: mean 2, s = 1, t(0.975, 2) = 4.302653 -> half-width 4.302653 / sqrt(3)
    mean, std, lo, hi = t_interval([1.0, 2.0, 3.0])
    assert (mean, std) == (2.0, 1.0)
    assert (lo, hi) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-6)
    x = [0.81, 0.84, 0.86, 0.79]
    expected = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert t_interval(x)[2:] == pytest.approx(expected, rel=1e-12)
    narrower = stats.t.interval(0.9, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert t_interval(x, level=0.9)[2:] == pytest.approx(narrower, rel=1e-12)
    assert t_interval([1.0, np.nan, 2.0, 3.0]) == t_interval([1.0, 2.0, 3.0])  # NaN dropped
    one = t_interval([0.7])  # one replicate: a mean, no spread, no interval
    assert one[0] == 0.7 and all(np.isnan(v) for v in one[1:])
    assert all(np.isnan(v) for v in t_interval([]))
    assert t_interval([0.5, 0.5]) == (0.5, 0.0, 0.5, 0.5)  # no spread: a point interval


def test_aggregate_configs_per_configuration():
    from analysis.replicates import aggregate_configs

    trials = pd.DataFrame(
        [
            _trial("t0", "c000", 0, 0.9, 0.5, val_masking=1.0, **{"config/mask_ratio": 0.2}),
            _trial("t1", "c000", 1, 0.8, 0.3, val_masking=0.0, **{"config/mask_ratio": 0.2}),
            _trial("t2", "c001", 0, 0.7, 0.6, val_masking=0.0, **{"config/mask_ratio": 0.4}),
            _trial("t3", "c001", 1, 0.1, 0.1, status="ERROR", **{"config/mask_ratio": 0.4}),
            _trial("t4", "c002", 0, 0.99, 0.99, status="STOPPED", stopped_at_rung=1),
            _trial("t5", "pgd_at", 0, 0.6, 0.4, experiment="baselines", method="pgd_at"),
            _trial("t6", "pgd_at", 1, 0.7, 0.5, experiment="baselines", method="pgd_at"),
            _trial("old", np.nan, np.nan, 0.5, 0.5),  # a trial from before replicates
        ]
    )
    configs = aggregate_configs(trials, list(VAL), ["mask_ratio"]).set_index("config_id")
    assert sorted(configs.index) == ["c000", "c001", "old", "pgd_at"]  # no STOPPED c002
    c0 = configs.loc["c000"]
    assert c0["n"] == 2 and c0["mask_ratio"] == 0.2 and c0["method"] == "lime_refine"
    assert c0["val_clean_acc_mean"] == pytest.approx(0.85)
    assert c0["val_robust_acc_mean"] == pytest.approx(0.4)
    assert c0["val_clean_acc_std"] == pytest.approx(0.1 / np.sqrt(2))  # |0.9 - 0.8| / sqrt 2
    half = 12.706205 * (0.1 / np.sqrt(2)) / np.sqrt(2)  # t(0.975, 1) * s / sqrt(n)
    assert c0["val_clean_acc_ci_low"] == pytest.approx(0.85 - half, abs=1e-6)
    assert 0.85 + half > 1 and c0["val_clean_acc_ci_high"] == 1.0  # clipped: an accuracy
    assert c0["masking_flags"] == 1
    c1 = configs.loc["c001"]  # the errored replicate does not count
    assert c1["n"] == 1 and c1["val_clean_acc_mean"] == 0.7 and np.isnan(c1["val_clean_acc_std"])
    assert np.isnan(c1["val_clean_acc_ci_low"]) and c1["masking_flags"] == 0
    base = configs.loc["pgd_at"]
    assert base["experiment"] == "baselines" and base["val_robust_acc_mean"] == pytest.approx(0.45)
    assert configs.loc["old", "n"] == 1


def test_config_front_dominated_and_ties():
    from analysis.replicates import config_front

    configs = pd.DataFrame(
        {
            "config_id": ["A", "B", "C", "D", "E", "F"],
            "a_mean": [0.9, 0.5, 0.5, 0.4, 0.9, 0.7],
            "b_mean": [0.2, 0.6, 0.6, 0.5, 0.1, 0.4],
        }
    )
    # D is dominated by B (and C); E by A (equal in a, worse in b); B and C tie: both stay.
    front = config_front(configs, {"a": "max", "b": "max"})
    assert front["config_id"].tolist() == ["B", "C", "F", "A"]  # by the first objective
    # b minimised: E (0.9, 0.1) has the largest a and the smallest b: it dominates all others
    front = config_front(configs, {"a": "max", "b": "min"})
    assert front["config_id"].tolist() == ["E"]
    assert config_front(configs.iloc[:0], {"a": "max", "b": "max"}).empty


def test_p_front_bootstrap_shares():
    """The seeds resampled jointly, from 5 replicates on; fewer give no share at all."""
    from analysis.replicates import p_front

    obj = {"val_clean_acc": "max", "val_robust_acc": "max"}
    rows = [_trial(f"x{r}", "X", r, 0.8 + r / 100, 0.8) for r in range(5)]
    rows += [_trial(f"y{r}", "Y", r, 0.1 + r / 100, 0.1) for r in range(5)]
    rows += [_trial("z", "Z", 0, 1.0, 1.0, status="STOPPED")]  # not finished: not counted
    shares = p_front(pd.DataFrame(rows), obj, resamples=200)
    assert shares.to_dict() == {"X": 1.0, "Y": 0.0}
    two = pd.DataFrame([r for r in rows if r["config/replicate"] < 2])
    assert p_front(two, obj).isna().all()  # 2 replicates: 3 distinct resamples, no share


def test_selection_bias_sign():
    from analysis.replicates import selection_bias

    front = pd.DataFrame(
        {
            "config_id": ["c000", "c001"],
            "val_clean_acc_mean": [0.85, 0.7],
            "val_robust_acc_mean": [0.40, 0.5],
        }
    )
    confirmed = pd.DataFrame(
        {"config_id": ["c000"], "test_clean_acc_mean": [0.80], "test_robust_acc_mean": [0.42]}
    )
    bias = selection_bias(front, confirmed, VAL).set_index("config_id")
    assert bias.loc["c000", "clean_acc_drop"] == pytest.approx(0.05)  # optimistic on validation
    assert bias.loc["c000", "robust_acc_drop"] == pytest.approx(-0.02)  # better on test
    assert bias.loc["c000", "test_clean_acc_mean"] == 0.80
    assert np.isnan(bias.loc["c001", "test_clean_acc_mean"])  # not confirmed
    assert np.isnan(bias.loc["c001", "clean_acc_drop"])


PGD_CLEAN, PGD_AA = [0.60, 0.90, 0.75], [0.30, 0.50, 0.40]  # very different seeds


def _confirmation() -> pd.DataFrame:
    """Confirmation trials: PGD-AT at 3 seeds and 4 configurations, rows out of seed order
    (the answer pairs by seed, not by row)."""

    def row(config_id, replicate, clean, aa, status="TERMINATED"):
        method = config_id if config_id in ("pgd_at", "erm") else "lime_refine"
        return {
            "trial_id": f"{config_id}-{replicate}",
            "experiment": "confirmation",
            "status": status,
            "config/config_id": config_id,
            "config/replicate": replicate,
            "config/method": method,
            "test_clean_acc": clean,
            "test_autoattack_acc": aa,
        }

    rows = [row("pgd_at", r, PGD_CLEAN[r], PGD_AA[r]) for r in (2, 0, 1)]
    rows += [row("erm", r, 0.95, 0.0) for r in range(3)]  # a baseline: not in the answer
    # better in both: +2 points clean and +1 point AutoAttack at every seed
    rows += [row("cA", r, PGD_CLEAN[r] + 0.02, PGD_AA[r] + 0.01) for r in (1, 2, 0)]
    # worse in AutoAttack: +5 (+-1) points clean, -10 (+-1) points AutoAttack
    rows += [
        row("cB", r, PGD_CLEAN[r] + dc, PGD_AA[r] + da)
        for r, dc, da in ((0, 0.05, -0.10), (1, 0.06, -0.11), (2, 0.04, -0.09))
    ]
    # no difference: differences of both signs
    rows += [
        row("cC", r, PGD_CLEAN[r] + dc, PGD_AA[r] + da)
        for r, dc, da in ((0, 0.05, 0.02), (1, -0.05, -0.03), (2, 0.01, 0.00))
    ]
    # one pair (its other seeds errored): no interval and no test, however large
    rows += [row("cD", 0, PGD_CLEAN[0] + 0.3, PGD_AA[0] + 0.3)]
    rows += [row("cD", r, 0.0, 0.0, status="ERROR") for r in (1, 2)]
    return pd.DataFrame(rows)


def test_answer_table_verdicts_paired_by_seed():
    from analysis.replicates import answer_table

    answer = answer_table(_confirmation()).set_index("config_id")
    assert list(answer.index) == ["cA", "cB", "cC", "cD"]  # no baseline, no reference
    assert (answer["reference"] == "pgd_at").all()
    # no per-image outcomes here: the seeds-only fallback (t-intervals and t-tests), Holm over
    # the table's configurations x metrics
    assert answer["verdict"].to_dict() == {
        "cA": "clean ↑, AutoAttack ↑",
        "cB": "clean ↑, AutoAttack ↓",
        "cC": "no difference beyond the intervals",
        "cD": "no difference beyond the intervals",  # one pair: no test
    }
    a = answer.loc["cA"]
    # paired: the difference is +0.02 at every seed, so the interval is (nearly) a point;
    # unpaired, the seeds' spread (0.60 to 0.90) would swamp it
    assert a["n_pairs"] == 3 and a["test_clean_acc_diff"] == pytest.approx(0.02)
    assert a["test_clean_acc_diff_ci_low"] == pytest.approx(0.02, abs=1e-9)
    assert a["test_autoattack_acc_diff_ci_high"] == pytest.approx(0.01, abs=1e-9)
    b = answer.loc["cB"]
    half = 4.302653 * 0.01 / np.sqrt(3)  # diffs -0.10, -0.11, -0.09: s = 0.01
    assert b["test_autoattack_acc_diff"] == pytest.approx(-0.10)
    assert b["test_autoattack_acc_diff_ci_high"] == pytest.approx(-0.10 + half, abs=1e-6)
    assert b["test_clean_acc_diff_ci_low"] > 0  # better clean, but worse AutoAttack
    c = answer.loc["cC"]
    assert c["test_clean_acc_diff_ci_low"] < 0 < c["test_clean_acc_diff_ci_high"]
    d = answer.loc["cD"]
    assert d["n_pairs"] == 1 and d["test_clean_acc_diff"] == pytest.approx(0.3)
    assert np.isnan(d["test_clean_acc_diff_ci_low"])
    both = _confirmation()
    worse = both["config/config_id"] == "cB"
    both.loc[worse, "test_clean_acc"] -= 0.2  # now worse in both
    verdict = answer_table(both).set_index("config_id").loc["cB", "verdict"]
    assert verdict == "clean ↓, AutoAttack ↓"


def test_the_answer_pairs_robust_accuracy_too_and_needs_a_metric():
    from analysis.replicates import answer_table

    three = _confirmation()
    three["test_robust_acc"] = three["test_autoattack_acc"] + 0.05
    answer = answer_table(three).set_index("config_id")
    assert answer.loc["cA", "verdict"] == "clean ↑, robust ↑, AutoAttack ↑"
    assert answer.loc["cA", "test_robust_acc_diff"] == pytest.approx(0.01)
    is_a = three["config/config_id"] == "cA"
    three.loc[is_a, "test_robust_acc"] -= 0.05  # -4 points robust at every seed
    assert answer_table(three).set_index("config_id").loc["cA", "verdict"] == (
        "clean ↑, robust ↓, AutoAttack ↑"
    )
    no_metric = three.drop(columns=["test_clean_acc", "test_robust_acc", "test_autoattack_acc"])
    assert answer_table(no_metric).empty  # no verdict without a figure to compare


def test_mark_stopped_and_search_stage():
    live = pd.DataFrame(
        [
            _trial("t0", "c000", 0, 0.9, 0.5),
            _trial("t1", "c001", 0, 0.99, 0.99),
            _trial(
                "t2",
                "c000",
                0,
                0.8,
                0.4,
                experiment="confirmation",
                **{"config/stage": "confirmation"},
            ),
        ]
    )
    table = live.copy()
    table.loc[1, "status"] = "STOPPED"
    table["stopped_at_rung"] = [np.nan, 1, np.nan]
    marked = report.mark_stopped(live, table)
    assert marked["status"].tolist() == ["TERMINATED", "STOPPED", "TERMINATED"]
    assert marked["stopped_at_rung"].iloc[1] == 1
    assert completed(marked)["trial_id"].tolist() == ["t0", "t2"]
    assert report.search_stage(marked)["trial_id"].tolist() == ["t0", "t1"]
    assert report.mark_stopped(live, None) is live
    assert report.mark_stopped(live.iloc[:0], table) is table  # only the tables were copied


def _handmade_study(path) -> dict:
    """A study directory holding only the sweep's tables (made by the same helpers as
    study.sweep.summarize and study.outputs.write_confirmation_tables), no Tune files."""
    from analysis.replicates import (
        aggregate_configs,
        answer_table,
        config_front,
        p_front,
        selection_bias,
    )

    settings = {
        "name": "handmade",
        "objectives": VAL,
        "search": {"mask_ratio": {"type": "uniform", "low": 0.0, "high": 0.5}},
        "replicates": 2,
        "confirm_seeds": 3,
    }
    (path / "study.json").write_text(json.dumps(settings))
    trials = pd.DataFrame(
        [
            _trial("t0", "c000", 0, 0.90, 0.50, val_masking=1.0, **{"config/mask_ratio": 0.2}),
            _trial("t1", "c000", 1, 0.86, 0.46, val_masking=0.0, **{"config/mask_ratio": 0.2}),
            _trial("t2", "c001", 0, 0.70, 0.60, val_masking=0.0, **{"config/mask_ratio": 0.4}),
            _trial("t3", "c001", 1, 0.72, 0.64, val_masking=0.0, **{"config/mask_ratio": 0.4}),
            _trial("t4", "c002", 0, 0.20, 0.20, status="STOPPED", stopped_at_rung=1),
            _trial("t5", "c002", 1, 0.22, 0.20, status="STOPPED", stopped_at_rung=1),
            _trial("t6", "pgd_at", 0, 0.6, 0.4, experiment="baselines", method="pgd_at"),
            _trial("t7", "pgd_at", 1, 0.7, 0.5, experiment="baselines", method="pgd_at"),
        ]
    )
    trials["stage"] = ["search"] * 6 + ["baselines"] * 2
    trials["number"] = [1, 2, 3, 4, 5, 6, 1, 2]
    trials["rounds"] = [2, 2, 2, 2, 1, 1, 2, 2]
    trials["time_total_s"] = 10.0
    trials["error"] = ""
    configs = aggregate_configs(trials, list(VAL), ["mask_ratio"])
    is_searched = configs["experiment"] == "handmade"
    shares = p_front(trials[trials["experiment"] == "handmade"], VAL)
    configs["p_front"] = configs["config_id"].map(shares).where(is_searched)
    front = config_front(configs[is_searched], VAL)
    confirmation = _confirmation()
    confirmation = confirmation[confirmation["config/config_id"].isin(["pgd_at", "cA", "cB"])]
    confirmation = confirmation.replace({"cA": "c000", "cB": "c001"})
    confirmation["test_robust_acc"] = confirmation["test_autoattack_acc"] + 0.05
    metrics = ["test_clean_acc", "test_robust_acc", "test_autoattack_acc"]
    confirmed = aggregate_configs(confirmation, metrics)
    answer = answer_table(confirmation)
    tables = {
        "trials": trials,
        "configs": configs,
        "pareto": front,
        "confirmation": confirmation,
        "confirmed": confirmed,
        "selection_bias": selection_bias(front, confirmed, VAL),
        "answer": answer,
    }
    for name, df in tables.items():
        df.to_csv(path / f"{name}.csv", index=False)
    return tables


def test_report_shows_intervals_and_the_answer(tmp_path):
    from analysis.replicates import t_interval

    tables = _handmade_study(tmp_path)
    text = report.build_report(tmp_path)
    assert "selected configurations on the <b>validation split</b>" in text
    assert "The answer is on the <b>test split</b>" in text
    # robust (PGD + Square) moves with AutoAttack in this hand-made confirmation
    verdicts = set(tables["answer"]["verdict"])
    assert any("↓" in v for v in verdicts) and any("↑" in v for v in verdicts)
    assert all(f"<td>{v}</td>" in text for v in verdicts)
    # the front's c000: clean 88.0 [lo, hi] from its two replicates 0.90 and 0.86
    _, _, lo, hi = t_interval([0.90, 0.86])
    assert f"88.0 [{100 * lo:.1f}, 100.0]" in text and hi > 1  # clipped to what an accuracy can be
    assert set(tables["pareto"]["config_id"]) == {"c000", "c001"}
    # the answer's interval for c001's AutoAttack difference, in signed points
    row = tables["answer"].set_index("config_id").loc["c001"]
    lo, hi = row["test_autoattack_acc_diff_ci_low"], row["test_autoattack_acc_diff_ci_high"]
    assert f"-10.0 [{100 * lo:+.1f}, {100 * hi:+.1f}]" in text
    assert "c000 (1)" in text  # its masking flag
    stopped = text.split("Stopped early")[1].split("</table>")[0]
    assert "t4" in stopped and "t5" in stopped and "t0" not in stopped
    pareto = text.split("Pareto-optimal configurations")[1].split("</table>")[0]
    assert "c002" not in pareto  # stopped: kept out of the front
    assert "Selection bias" in text and "clean_acc_drop" in text
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert images and base64.b64decode(images[0])[:4] == b"\x89PNG"  # the configuration front
    assert "http" not in text.replace("http-equiv", "")


def test_report_without_the_protocol_tables(tmp_path):
    """An older study (no configs.csv, answer.csv, ...) still gets its report, without them;
    one whose confirmation has not run says so."""
    _handmade_study(tmp_path)
    for name in ("answer", "confirmed", "selection_bias", "confirmation"):
        (tmp_path / f"{name}.csv").unlink()
    text = report.build_report(tmp_path)
    assert "No answer yet" in text and "Pareto-optimal configurations" in text
    assert "↑" not in text and "↓" not in text  # no verdict
    for name in ("configs", "pareto", "trials"):
        (tmp_path / f"{name}.csv").unlink()
    text = report.build_report(tmp_path)
    assert "Protocol" not in text and "No trial has finished yet" in text


def test_a_trial_folder_missing_from_the_state_counts_only_if_newer(tmp_path):
    """A folder absent from the experiment state is a live trial started after the state was
    written, or, when older than the state, one a killed driver left behind (the resumed run
    ran it again under another id): that one is not a trial."""
    from tests.test_console import _result, _trial, write_experiment

    study = tmp_path / "demo"
    write_experiment(study, [_trial("s_0", "c000", 0, "TERMINATED", [_result("c000", 0.9, 0.3)])])
    (study / "study.json").write_text(json.dumps({"name": "demo", "objectives": {}}))
    state = next(study.glob("experiment_state-*.json"))
    for name, offset in (("trial_orphan", -60), ("trial_live", +60)):
        (study / name).mkdir()
        params = study / name / "params.json"
        params.write_text(json.dumps({"config_id": "c001", "replicate": 0}))
        when = state.stat().st_mtime + offset
        os.utime(params, (when, when))
    trials = load_trials(study)
    assert sorted(zip(trials["trial_id"], trials["status"], strict=True)) == [
        ("s_0", "TERMINATED"), ("trial_live", "RUNNING"),
    ]  # fmt: skip
