"""The analysis package: Pareto maths against brute force and hand-computed cases, and loading,
plots, Optuna export and the report against a real (synthetic, seconds-long) Ray Tune study."""

import base64
import itertools
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
    open_study_fs,
)
from analysis.synthetic import BASELINES, DIVERGES_ABOVE, make_synthetic_study

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
    fs, path = open_study_fs("s3://bucket/studies/x?region=us-east-1")  # no request is made
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
