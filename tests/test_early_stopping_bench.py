"""The early-stopping benchmark's bookkeeping on hand-made study directories (fast), and the
benchmark end to end at its smallest scale (slow)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import early_stopping as es

REPO = Path(__file__).resolve().parents[1]


def _trial(trial_id, experiment, stage, config_id, status="TERMINATED", seconds=10.0, **extra):
    """One trials.csv row with the columns analysis.results.load_trials and
    study.outputs.write_trials_table write (a subset of the metrics)."""
    return {
        "trial_id": trial_id,
        "experiment": experiment,
        "stage": stage,
        "number": 1,
        "status": status,
        "error": None,
        "rounds": extra.pop("rounds", 4),
        "time_total_s": seconds,
        "node_ip": "127.0.0.1",
        "config/config_id": config_id,
        "config/replicate": extra.pop("replicate", 0),
        "config/seed": 0,
        "config/method": extra.pop("method", "lime_refine"),
        "config/mask_ratio": 0.2,
        "val_clean_acc": 0.8,
        "val_robust_acc": 0.4,
        "trial_dir": f"/x/{trial_id}",
        **extra,
    }


def _configs(points, prefix, ids=None, methods=None):
    """configs-style rows (analysis.replicates.aggregate_configs): means per configuration."""
    ids = ids or [f"c{i}" for i in range(len(points))]
    methods = methods or ["lime_refine"] * len(points)
    return pd.DataFrame(
        {
            "config_id": ids,
            "experiment": "x",
            "n": 2,
            "method": methods,
            "mask_ratio": 0.2,
            f"{prefix}_clean_acc_mean": [p[0] for p in points],
            f"{prefix}_clean_acc_std": 0.01,
            f"{prefix}_robust_acc_mean": [p[1] for p in points],
            f"{prefix}_robust_acc_std": 0.01,
            "masking_flags": 0,
        }
    )


def make_study(
    root: Path,
    scheduler: str,
    seed: int,
    search_seconds=(100.0, 50.0),
    stopped=(),
    confirm_seconds=(30.0,),
    confirmed=((0.9, 0.5),),
    front=((0.85, 0.55),),
    preset="digits",
) -> Path:
    """A finished study directory as study.sweep and study.confirm leave it (the tables)."""
    name = es.study_name(preset, scheduler, seed)
    d = root / name
    d.mkdir(parents=True)
    settings = {
        "name": name,
        "preset": preset,
        "seed": seed,
        "num_samples": len(search_seconds),
        "replicates": 1,
        "confirm_seeds": len(confirm_seconds),
        "baselines": [],
        "scheduler": {**es.SCHEDULERS["mo-asha"], **es.SCHEDULERS[scheduler]},
        "trial": {"rounds": 4, "epochs_per_round": 3},
    }
    (d / "study.json").write_text(json.dumps(settings))
    rows = [
        _trial(f"s{i}", name, "search", f"c{i}", "STOPPED" if i in stopped else "TERMINATED", t)
        for i, t in enumerate(search_seconds)
    ]
    confirmation = pd.DataFrame(
        [
            _trial(f"k{j}", "confirmation", "confirmation", "c0", seconds=t, replicate=j)
            for j, t in enumerate(confirm_seconds)
        ]
    )
    pd.DataFrame(rows + confirmation.to_dict("records")).to_csv(d / "trials.csv", index=False)
    confirmation.to_csv(d / "confirmation.csv", index=False)
    if front:
        _configs(front, "val").to_csv(d / "pareto.csv", index=False)
    else:
        pd.DataFrame().to_csv(d / "pareto.csv", index=False)  # what an empty front leaves
    if confirmed:
        _configs(confirmed, "test").to_csv(d / "confirmed.csv", index=False)
        (d / "answer.csv").write_text("config_id,reference,n_pairs,verdict\nc0,pgd_at,0,x\n")
    return d


# --- one study into a row ----------------------------------------------------------------


def test_study_row_sums_trial_seconds_counts_stopped_and_takes_hypervolumes(tmp_path):
    d = make_study(
        tmp_path,
        "mo-asha",
        1,
        search_seconds=(100.0, 40.0, 25.5, float("nan")),  # the last never reported
        stopped=(1, 2),
        confirm_seconds=(30.0, 31.0),
        # (0.6, 0.5) is dominated by (0.7, 0.6); hand-worked area under the staircase:
        # 0.95 * 0.1 + 0.9 * (0.3 - 0.1) + 0.7 * (0.6 - 0.3) = 0.485
        confirmed=((0.9, 0.3), (0.7, 0.6), (0.6, 0.5), (0.95, 0.1)),
        front=((0.8, 0.5), (0.6, 0.7)),  # 0.8 * 0.5 + 0.6 * (0.7 - 0.5) = 0.52
    )
    # a baseline in trials.csv and in confirmed.csv counts for neither the search nor the front
    trials = pd.read_csv(d / "trials.csv")
    baseline = _trial("b0", "baselines", "baselines", "pgd_at", seconds=999.0, method="pgd_at")
    pd.concat([trials, pd.DataFrame([baseline])]).to_csv(d / "trials.csv", index=False)
    confirmed = pd.read_csv(d / "confirmed.csv")
    ref = _configs([(0.99, 0.99)], "test", ids=["pgd_at"], methods=["pgd_at"])
    pd.concat([confirmed, ref]).to_csv(d / "confirmed.csv", index=False)

    row = es.study_row(str(d))
    assert row["scheduler"] == "mo-asha" and row["seed"] == 1
    assert row["search_trials"] == 4 and row["search_configs"] == 4
    assert row["search_trial_s"] == pytest.approx(165.5)
    assert row["stopped_trials"] == 2 and row["stopped_configs"] == 2
    assert row["errored_trials"] == 0 and row["search_rounds"] == 16
    assert row["confirm_trials"] == 2 and row["confirm_trial_s"] == pytest.approx(61.0)
    assert row["confirmed_configs"] == 4 and row["confirmed_front"] == 3
    assert row["hv_confirmed"] == pytest.approx(0.485)
    assert row["validation_front"] == 2 and row["hv_validation"] == pytest.approx(0.52)


def test_study_row_without_stage_column_uses_the_search_experiment(tmp_path):
    d = make_study(tmp_path, "fifo", 0, search_seconds=(10.0, 20.0))
    trials = pd.read_csv(d / "trials.csv").drop(columns="stage")
    trials.to_csv(d / "trials.csv", index=False)
    row = es.study_row(str(d))
    assert row["search_trials"] == 2 and row["search_trial_s"] == pytest.approx(30.0)
    assert row["confirm_trial_s"] == pytest.approx(30.0)


def test_a_study_without_a_front_is_finished_with_zero_hypervolume(tmp_path):
    d = make_study(tmp_path, "fifo", 0, confirm_seconds=(), confirmed=(), front=())
    (d / "confirmation.csv").unlink()
    assert es.study_finished(str(d))
    row = es.study_row(str(d))
    assert row["hv_confirmed"] == 0.0 and row["hv_validation"] == 0.0
    assert row["confirm_trials"] == 0 and row["confirm_trial_s"] == 0.0


def test_study_finished_needs_the_answer_or_an_empty_front(tmp_path):
    d = make_study(tmp_path, "fifo", 0)
    assert es.study_finished(str(d))
    (d / "answer.csv").unlink()  # the confirmation was interrupted: front there, no answer
    assert not es.study_finished(str(d))
    assert not es.study_finished(str(tmp_path / "nothing"))


# --- the studies' settings -----------------------------------------------------------------


def test_study_overrides_validate_and_reused_studies_must_match(tmp_path):
    from study.config import load_config

    settings = es.Settings(num_samples=3, rounds=5, replicates=1, confirm_seeds=2)
    for scheduler in es.SCHEDULERS:
        overrides = es.study_overrides(scheduler, 7, settings, str(tmp_path))
        cfg = load_config(None, overrides)  # validated as the sweep does (no Ray started)
        assert cfg.scheduler == {"type": scheduler, "grace_rounds": 1, "reduction_factor": 3}
        assert cfg.trial.rounds == 5 and cfg.baselines == () and cfg.num_samples == 3
        assert cfg.seed == 7 and cfg.confirm_seeds == 2 and cfg.replicates == 1
        assert not (tmp_path / es.study_name("digits", scheduler, 7)).exists()
        stored = json.loads(json.dumps(cfg.to_dict()))  # study.json
        assert es.settings_mismatch(stored, overrides) == []
    other = es.study_overrides("mo-asha", 7, es.Settings(3, 4, 1, 2), str(tmp_path))
    assert es.settings_mismatch(stored, other) == ["trial.rounds"]
    fifo = es.study_overrides("fifo", 7, settings, str(tmp_path))
    assert es.settings_mismatch(stored, fifo) == ["scheduler"]


CIFAR = es.Settings(preset="cifar10-cpu", data_dir="/data/cifar10-jpeg.tar.gz")


def test_names_carry_the_preset():
    assert es.study_name("digits", "fifo", 0) == "digits-fifo-seed0"  # as before: reused
    assert es.study_name("cifar10-cpu", "mo-asha", 2) == "cifar10-cpu-mo-asha-seed2"
    assert es.results_name("digits") == "early_stopping"
    assert es.results_name("cifar10-cpu") == "early_stopping-cifar10-cpu"


def test_cifar_overrides_make_the_preset_cheap_and_keep_its_base(tmp_path):
    from study.config import load_config

    for scheduler in es.SCHEDULERS:
        overrides = es.study_overrides(scheduler, 1, CIFAR, str(tmp_path))
        cfg = load_config(None, overrides)  # validated as the sweep does (no Ray started)
        assert cfg.preset == "cifar10-cpu" and cfg.name == f"cifar10-cpu-{scheduler}-seed1"
        assert cfg.scheduler["type"] == scheduler and cfg.baselines == ()
        assert (cfg.num_samples, cfg.replicates, cfg.confirm_seeds) == (9, 1, 2)
        t = cfg.trial
        assert (t.dataset, t.model, t.model_width) == ("cifar10", "airbench_cnn", 16)
        assert t.data_dir == "/data/cifar10-jpeg.tar.gz"
        assert (t.rounds, t.epochs_per_round, t.train_subset) == (4, 1, 1000)
        assert (t.pool_size, t.lime_samples, t.eval_subset, t.blackbox_queries) == (
            32,
            100,
            200,
            50,
        )
        assert cfg.confirm_eval == {
            "eval_grid": "", "final_eval_subset": 10, "final_restarts": 1, "cifar10c_images": 0,
        }  # fmt: skip
        assert cfg.base is not None and cfg.base["confirmation"] == "shared"
        stored = json.loads(json.dumps(cfg.to_dict()))  # study.json
        assert es.settings_mismatch(stored, overrides) == []
    heavier = {**overrides, "confirm_eval": {**overrides["confirm_eval"], "final_restarts": 2}}
    assert es.settings_mismatch(stored, heavier) == ["confirm_eval"]
    digits = es.study_overrides("mo-asha", 1, es.Settings(), str(tmp_path))
    assert es.settings_mismatch(stored, digits)[0] == "preset"
    # digits is the preset as it is: no test evaluation of its own, no data directory
    assert "confirm_eval" not in digits and set(digits["trial"]) == {"rounds"}


def test_the_six_cifar_studies_share_one_base(tmp_path):
    """One key for every (scheduler, seed): the first study trains the base, the others load
    it; the same key as a plain cifar10-cpu study at seed 0, whose cached base it reuses."""
    from study.config import load_config
    from trainables.base import base_key, base_trial_config

    def key(overrides):
        cfg = load_config(None, overrides)
        return base_key(base_trial_config(cfg.trial, cfg.base, cfg.trial.seed), "data")

    keys = {
        key(es.study_overrides(scheduler, seed, CIFAR, str(tmp_path)))
        for scheduler in es.SCHEDULERS
        for seed in (0, 1, 2)
    }
    plain = {"preset": "cifar10-cpu", "trial": {"data_dir": CIFAR.data_dir}}
    assert keys == {key(plain)}


# --- the summary -----------------------------------------------------------------------------


def _results(fifo_s, asha_s, fifo_hv, asha_hv) -> pd.DataFrame:
    rows = []
    for seed, values in enumerate(zip(fifo_s, asha_s, fifo_hv, asha_hv, strict=True)):
        for scheduler, seconds, hv in (("fifo", values[0], values[2]), ("mo-asha", *values[1::2])):
            rows.append(
                {
                    "scheduler": scheduler,
                    "seed": seed,
                    "search_trials": 9,
                    "stopped_trials": 0 if scheduler == "fifo" else 5,
                    "search_trial_s": seconds,
                    "confirm_trial_s": 60.0,
                    "hv_confirmed": hv,
                    "hv_validation": hv + 0.02,
                }
            )
    return pd.DataFrame(rows)


def test_summary_ratio_and_verdict_met():
    results = _results([1000, 1200, 800], [400, 500, 480], [0.50, 0.52, 0.48], [0.49, 0.50, 0.49])
    table = es.summary_table(results)
    assert list(table.index) == ["fifo", "mo-asha"]
    assert table.at["fifo", "search_trial_s_mean"] == pytest.approx(1000)
    assert table.at["fifo", "search_trial_s_sd"] == pytest.approx(200)
    assert table.at["fifo", "hv_confirmed_sd"] == pytest.approx(0.02)
    assert table.at["mo-asha", "stopped_trials_mean"] == 5
    pairs = es.paired_table(results)
    np.testing.assert_allclose(pairs["ratio"], [0.4, 500 / 1200, 0.6])
    np.testing.assert_allclose(pairs["hv_diff"], [-0.01, -0.02, 0.01], atol=1e-12)
    v = es.verdict(results)
    # mean ratio (0.4 + 0.4167 + 0.6) / 3 = 0.472 <= 0.5; hv 0.4933 - 0.5 = -0.0067, spread 0.02
    assert v.mean_ratio == pytest.approx((0.4 + 500 / 1200 + 0.6) / 3)
    assert v.hv_diff == pytest.approx(-0.02 / 3)
    assert v.spread == pytest.approx(0.02)
    assert v.met is True and v.text.startswith("target met")
    text = es.markdown(results)
    assert "| fifo | 3 | 1000 ± 200 | 0.5000 ± 0.0200 |" in text
    assert "| 0 | 1000 | 400 | 0.40 | 0.5000 | 0.4900 | -0.0100 |" in text
    assert "| mean |  |  | 0.47 |" in text and "Verdict: target met" in text


def test_verdict_misses_on_time_or_on_hypervolume():
    slow = _results([1000, 1000, 1000], [600, 500, 550], [0.5, 0.52, 0.48], [0.5, 0.52, 0.48])
    v = es.verdict(slow)
    assert (v.met, v.time_ok, v.hv_ok) == (False, False, True)
    assert "more than 0.5 of the trial-seconds" in v.text
    # hypervolume lower by 0.05 with a spread of 0.02: not the same front
    worse = _results([1000, 1000, 1000], [300, 300, 300], [0.5, 0.52, 0.48], [0.45, 0.47, 0.43])
    v = es.verdict(worse)
    assert (v.met, v.time_ok, v.hv_ok) == (False, True, False)
    assert "lower by more than the spread" in v.text
    # better by more than the spread is fine: early stopping must be no worse
    better = _results([1000, 1000, 1000], [300, 300, 300], [0.5, 0.52, 0.48], [0.6, 0.62, 0.6])
    assert es.verdict(better).met is True


def test_verdict_undecided_with_one_seed_or_one_scheduler():
    one = _results([1000], [300], [0.5], [0.5])
    v = es.verdict(one)
    assert v.met is None and v.time_ok is True and v.text.startswith("undecided")
    assert v.mean_ratio == pytest.approx(0.3)
    assert es.markdown(one).count("| fifo | 1 | 1000 | 0.5000 |") == 1  # no ± with one seed
    only_fifo = _results([1000], [300], [0.5], [0.5]).query("scheduler == 'fifo'")
    assert es.paired_table(only_fifo).empty
    assert es.verdict(only_fifo).met is None


# --- main, with hand-made studies in place of real ones ------------------------------------------


def test_main_writes_the_table_csv_and_figure(tmp_path, capsys):
    seconds = {"fifo": (100.0, 100.0), "mo-asha": (40.0, 10.0)}
    ran = []

    def fake_run(scheduler, seed, settings, storage):
        ran.append((scheduler, seed, settings))
        return str(make_study(Path(storage), scheduler, seed, search_seconds=seconds[scheduler]))

    storage = tmp_path / "bench"
    argv = ["--storage", str(storage), "--seeds", "0", "1", "--num-samples", "2", "--rounds", "3"]
    argv += ["--trial-overrides", '{"epochs_per_round": 1}']
    assert es.main(argv, run=fake_run) == 0
    assert [(s, seed) for s, seed, _ in ran] == [
        ("fifo", 0),
        ("mo-asha", 0),
        ("fifo", 1),
        ("mo-asha", 1),
    ]
    assert ran[0][2] == es.Settings(2, 3, 1, 2, {"epochs_per_round": 1})
    results = pd.read_csv(storage / "early_stopping.csv")
    assert len(results) == 4 and set(results["scheduler"]) == {"fifo", "mo-asha"}
    assert results["search_trial_s"].tolist() == [200.0, 50.0, 200.0, 50.0]
    text = (storage / "early_stopping.md").read_text()
    assert text.startswith("Command: `python -m benchmarks.early_stopping --storage")
    assert "| 0.25 |" in text and "Verdict: " in text
    assert (storage / "early_stopping.png").stat().st_size > 0
    assert "Verdict: " in capsys.readouterr().out


def test_main_rejects_bad_arguments(tmp_path):
    for bad in (["--num-samples", "0"], ["--confirm-seeds", "0"], ["--trial-overrides", "[1]"]):
        with pytest.raises(SystemExit):
            es.main(["--storage", str(tmp_path), *bad], run=None)


def _never_run(*args):
    raise AssertionError("no study may start on bad input")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--preset", "cifar10"], "--preset: must be one of digits, cifar10-cpu"),
        (["--preset", "cifar10-cpu"], "--data-dir: required with --preset cifar10-cpu"),
        (["--preset", "cifar10-cpu", "--data-dir", "/no/such/cifar"], "does not exist"),
        (["--trial-overrides", '{"pool_size": -1}'], "trial.pool_size"),
    ],
)
def test_main_rejects_bad_input_in_one_line_before_any_study(tmp_path, capsys, argv, fragment):
    storage = tmp_path / "bench"
    assert es.main(["--storage", str(storage), *argv], run=_never_run) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and fragment in err, err
    assert not storage.exists()


def test_main_cifar_writes_its_own_results_beside_digits(tmp_path, monkeypatch):
    monkeypatch.setattr("study.preflight.check_data", lambda cfg: None)  # no CIFAR-10 read here
    ran = []

    def fake_run(scheduler, seed, settings, storage):
        ran.append(settings)
        return str(make_study(Path(storage), scheduler, seed, preset=settings.preset))

    storage = tmp_path / "bench"
    data = tmp_path / "cifar10-jpeg.tar.gz"
    argv = ["--storage", str(storage), "--seeds", "0", "--preset", "cifar10-cpu"]
    assert es.main([*argv, "--data-dir", str(data)], run=fake_run) == 0
    assert ran[0] == es.Settings(preset="cifar10-cpu", data_dir=str(data))
    text = (storage / "early_stopping-cifar10-cpu.md").read_text()
    assert "Preset cifar10-cpu with {" in text and '"train_subset": 1000' in text
    results = pd.read_csv(storage / "early_stopping-cifar10-cpu.csv")
    assert set(results["preset"]) == {"cifar10-cpu"} and len(results) == 2
    assert (storage / "early_stopping-cifar10-cpu.png").stat().st_size > 0
    assert not (storage / "early_stopping.csv").exists()  # digits' results keep their name


# --- end to end (real studies) ---------------------------------------------------------------


@pytest.mark.slow  # 2 tiny studies (2 trials + 1 confirmation trial each): ~3-5 min on 2 cores
def test_benchmark_end_to_end_at_the_smallest_scale(tmp_path):
    from tests.conftest import TINY_TRIAL

    storage = tmp_path / "bench"
    trial = {k: v for k, v in TINY_TRIAL.items() if k != "rounds"}
    cmd = [
        sys.executable, "-m", "benchmarks.early_stopping", "--storage", str(storage),
        "--seeds", "0", "--num-samples", "2", "--rounds", "2", "--replicates", "1",
        "--confirm-seeds", "1", "--trial-overrides", json.dumps(trial),
    ]  # fmt: skip
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    results = pd.read_csv(storage / "early_stopping.csv")
    assert list(results["scheduler"]) == ["fifo", "mo-asha"] and set(results["seed"]) == {0}
    assert (results["search_trials"] == 2).all() and (results["search_trial_s"] > 0).all()
    assert (results["confirm_trials"] >= 1).all() and (results["confirm_trial_s"] > 0).all()
    # tiny models may have no robust accuracy at all: a hypervolume of 0 is possible
    assert results["hv_confirmed"].between(0, 1).all()
    assert results["hv_validation"].between(0, 1).all()
    assert (results["confirmed_front"] >= 1).all() and (results["validation_front"] >= 1).all()
    for _, row in results.iterrows():
        confirmed = pd.read_csv(Path(row["study_dir"]) / "confirmed.csv")
        assert set(es.CONFIRMED) <= set(confirmed)  # the columns the benchmark reads
        study = json.loads((Path(row["study_dir"]) / "study.json").read_text())
        assert study["scheduler"]["type"] == row["scheduler"] and study["baselines"] == []
        assert study["trial"]["rounds"] == 2
    assert "Verdict: undecided" in (storage / "early_stopping.md").read_text()
    assert (storage / "early_stopping.png").is_file()
    # run again: both studies are reused, nothing is trained
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_csv(storage / "early_stopping.csv"), results)
