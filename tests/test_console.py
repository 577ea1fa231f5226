"""The study's console (study/console.py) and `python -m study.status` (study/status.py): the
lines a person sees, Ray's output kept in the log file, and the summary of a study directory."""

import io
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest

from analysis.tables import (
    answer_table_text,
    count_statuses,
    eta_seconds,
    format_counts,
    format_duration,
    format_table,
    front_table,
    stage_of,
)
from study import console as console_module
from study.console import StudyConsole, quiet_ray_kwargs
from study.status import format_summary, main, summarize_study

REPO = Path(__file__).resolve().parents[1]
OBJ = {"val_clean_acc": "max", "val_robust_acc": "max"}
SEARCHED = ["mask_ratio", "reg_weight", "epsilon"]


class FakeTrial:
    """What StudyConsole reads of a ray.tune.experiment.Trial."""

    def __init__(self, trial_id, config=None, last_result=None, status="TERMINATED", **error):
        self.trial_id = trial_id
        self.config = config or {}
        self.last_result = last_result or {}
        self.status = status
        self.error_file = error.get("error_file")
        self._error_text = error.get("error_text")

    def get_error(self):
        return self._error_text


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _search_trial(**result):
    config = {"config_id": "c003", "replicate": 1, "method": "lime_refine", "rounds": 2}
    config.update(mask_ratio=0.123456, reg_weight=0.045678, epsilon=0.1)
    base = {"round": 2, "val_clean_acc": 0.9712, "val_robust_acc": 0.4523, "time_total_s": 65.2}
    base["done"] = True
    return FakeTrial("abc_00001", config, {**base, **result})


# --- lines --------------------------------------------------------------------------------------


def test_finished_trial_line():
    c = StudyConsole("search", 16, OBJ, SEARCHED, io.StringIO())
    line = c.trial_line(_search_trial(val_masking=1.0))
    assert line == (
        "[search] c003/r1  mask_ratio=0.123 reg_weight=0.0457 epsilon=0.1  "
        "clean 97.1%  robust 45.2%  1m05s  MASKING"
    )
    assert "MASKING" not in c.trial_line(_search_trial(val_masking=0.0))
    assert c.trial_line(_search_trial(round=1)).endswith("1m05s  stopped at round 1")
    baseline = FakeTrial(
        "b_00000",
        {"config_id": "pgd_at", "replicate": 0, "method": "pgd_at", "mask_ratio": 0.0},
        {"val_clean_acc": 0.86, "time_total_s": 12},
    )
    assert StudyConsole("baselines", 6, OBJ, SEARCHED).trial_line(baseline) == (
        "[baselines] pgd_at/r0  clean 86.0%  robust -  12s"
    )


def test_error_line_reads_the_last_line_of_the_error(tmp_path):
    c = StudyConsole("search", 16, OBJ, SEARCHED, io.StringIO())
    error_txt = tmp_path / "error.txt"
    error_txt.write_text(
        "Failure # 1 (occurred at 2026-11-24_12-00-00)\n"
        "ray::ImplicitFunc.train() (pid=1, ip=127.0.0.1)\n"
        '  File "trial.py", line 3, in run_trial\n'
        "RuntimeError: training diverged (reg_weight=8)\n\n"
    )
    trial = FakeTrial("abc_00004", {"config_id": "c001", "replicate": 0}, error_file=error_txt)
    assert c.error_line(trial) == (
        "ERROR [search] c001/r0 (trial abc_00004): RuntimeError: training diverged (reg_weight=8)"
    )
    from_storage = FakeTrial("abc_00005", error_text="Failure # 1\nValueError: bad\n")
    assert c.error_line(from_storage).endswith("abc_00005 (trial abc_00005): ValueError: bad")
    assert "no error message" in c.error_line(FakeTrial("abc_00006"))


def test_a_retry_is_announced_unless_the_trial_cannot_finish():
    out = io.StringIO()
    c = StudyConsole("search", 16, OBJ, SEARCHED, out)
    died = "Failure # 1\nray.exceptions.ActorDiedError: node died\n"
    nan = "trainables.trial.TrialError: diverged: loss became nan\n"
    lost = FakeTrial("abc_00001", {"config_id": "c001", "replicate": 0}, error_text=died)
    diverged = FakeTrial("abc_00002", {"config_id": "c002", "replicate": 0}, error_text=nan)
    c.on_trial_recover(0, [], lost)
    c.on_trial_recover(0, [], diverged)  # its retry ends at once: no RETRY line
    c.on_trial_error(0, [], diverged)
    lines = out.getvalue().splitlines()
    assert lines == [
        "RETRY [search] c001/r0 (trial abc_00001): ray.exceptions.ActorDiedError: node died",
        "ERROR [search] c002/r0 (trial abc_00002): trainables.trial.TrialError: diverged: loss "
        "became nan",
    ]


def test_status_line_and_time_left():
    c = StudyConsole("search", 16, OBJ, SEARCHED, io.StringIO(), concurrency=2)
    trials = [
        FakeTrial(f"t{i}", last_result={"time_total_s": 60.0, "done": True}) for i in range(4)
    ]
    trials += [FakeTrial("r1", status="RUNNING"), FakeTrial("r2", status="RUNNING")]
    trials += [FakeTrial("e1", status="ERROR"), FakeTrial("p1", status="PENDING")]
    # 8 trials exist: 1 pending + 8 not created yet; (2 running + 9 pending) x 60 s / 2 at once
    assert c.status_line(trials) == (
        "[search] 4/16 done, 2 running, 9 pending, 1 errored; ~5m30s left"
    )
    # Ended before it finished (stopped early, or interrupted): Tune says TERMINATED, without
    # the `done` of a finished trial; its wall time does not count towards the time left.
    trials[4].status, trials[4].last_result = "TERMINATED", {"time_total_s": 600.0}
    assert c.status_line(trials) == (
        "[search] 4/16 done, 1 running, 9 pending, 1 errored, 1 stopped; ~5m00s left"
    )
    assert eta_seconds({"running": 0, "pending": 0}, None, 2) == 0.0
    assert eta_seconds({"running": 1, "pending": 0}, None, 2) is None  # nothing finished yet
    assert count_statuses(["TERMINATED", "STOPPED", "PAUSED", "ERROR"], total=6) == {
        "done": 1, "running": 0, "pending": 3, "errored": 1, "stopped": 1,
    }  # fmt: skip
    assert format_counts({"done": 2, "stopped": 1}, 4) == (
        "2/4 done, 0 running, 0 pending, 0 errored, 1 stopped"
    )
    assert [format_duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_status_line_only_on_change_and_at_most_every_interval():
    out, clock = io.StringIO(), Clock()
    c = StudyConsole("search", 4, OBJ, SEARCHED, out, 2, min_interval_s=60, heartbeat_s=300,
                     clock=clock)  # fmt: skip
    c.setup(total_num_samples=4)
    trials = [FakeTrial(f"t{i}", status="RUNNING") for i in range(2)]

    def step(t: float) -> int:
        clock.t = t
        before = out.getvalue().count("\n")
        c.on_step_end(iteration=0, trials=trials)
        return out.getvalue().count("\n") - before

    assert step(10) == 0
    trials[0].status, trials[0].last_result = "TERMINATED", {"time_total_s": 30.0, "done": True}
    assert step(30) == 0  # changed, but too soon after the start
    assert step(61) == 1  # changed, interval passed
    assert step(200) == 0  # nothing changed
    assert step(361) == 1  # heartbeat while trials run
    trials[1].status = "ERROR"
    assert step(400) == 0 and step(421) == 1
    c.on_experiment_end(trials=trials)
    lines = out.getvalue().splitlines()
    assert lines[0] == "[search] 4 trials, up to 2 at a time"
    assert lines[1] == "[search] 1/4 done, 1 running, 2 pending, 0 errored; ~45s left"
    assert lines[-1].startswith("[search] 1/4 done, 0 running, 2 pending, 1 errored")
    assert lines[-1].endswith("(stage ran 7m01s)")


def test_default_study_fits_the_line_budget():
    """16 search + 6 baseline + 15 confirmation trials over ~10 minutes, one Tune step a
    second, then a 5-row front and a 5-row answer: well under the issue's 80 lines."""
    out, clock = io.StringIO(), Clock()
    for stage, n, seconds in (
        ("search", 16, 300),
        ("baselines", 6, 100),
        ("confirmation", 15, 200),
    ):
        c = StudyConsole(stage, n, OBJ, SEARCHED, out, 2, clock=clock)
        c.setup(total_num_samples=n)
        start = clock.t
        trials = [
            FakeTrial(f"{stage}{i}", _search_trial().config, status="PENDING") for i in range(n)
        ]
        for second in range(seconds + 1):
            clock.t = start + second
            finished = n * second // seconds
            for i, t in enumerate(trials):
                if i < finished and t.status != "TERMINATED":
                    t.status, t.last_result = "TERMINATED", _search_trial().last_result
                    c.on_trial_complete(iteration=second, trials=trials, trial=t)
                elif finished <= i < finished + 2:
                    t.status = "RUNNING"
            c.on_step_end(iteration=second, trials=trials)
        c.on_experiment_end(trials=trials)
    configs = pd.DataFrame({"config_id": [f"c{i:03d}" for i in range(5)], "n": 2})
    answer = pd.DataFrame({"config_id": configs["config_id"], "verdict": "undecided"})
    text = out.getvalue() + front_table(configs, OBJ, SEARCHED) + answer_table_text(answer)
    assert len(text.splitlines()) <= 65


def test_format_table_intervals_and_percent():
    df = pd.DataFrame(
        {
            "config_id": ["c000", "c001"],
            "n": [3, 1],
            "reg_weight": [0.0123456, 2.5],
            "val_clean_acc_mean": [0.9712, 0.5],
            "val_clean_acc_ci_low": [0.96, np.nan],
            "val_clean_acc_ci_high": [0.982, np.nan],
        }
    )
    text = format_table(df, ["config_id", "n", "reg_weight", "val_clean_acc", "absent"])
    assert text.splitlines() == [
        "  config_id  n  reg_weight      val_clean_acc",
        "  c000       3      0.0123  97.1 [96.0, 98.2]",
        "  c001       1         2.5               50.0",
    ]
    answer = pd.DataFrame(
        {
            "config_id": ["c000"], "reference": ["pgd_at"], "n_pairs": [3],
            "test_clean_acc_diff": [0.012], "test_clean_acc_diff_ci_low": [-0.003],
            "test_clean_acc_diff_ci_high": [0.027], "verdict": ["undecided"],
        }
    )  # fmt: skip
    assert answer_table_text(answer).splitlines()[1].split("  ")[-2:] == [
        "+1.2 [-0.3, +2.7]",
        "undecided",
    ]
    assert format_table(pd.DataFrame({"x": [1]}), ["absent"]) == ""


def test_stage_of_and_ray_kwargs():
    assert [stage_of(e, "demo") for e in ("demo", "baselines", "confirmation")] == [
        "search", "baselines", "confirmation",
    ]  # fmt: skip
    assert stage_of("confirmation.20261124-101010", "demo") == "archived"
    assert quiet_ray_kwargs(verbose=True) == {}
    assert quiet_ray_kwargs(verbose=False) == {"log_to_driver": True}


def test_console_pickles_without_its_stream(monkeypatch):
    """Tune keeps RunConfig callbacks in tuner.pkl; a restored one writes to the new console."""
    c = StudyConsole("search", 16, OBJ, SEARCHED, io.StringIO())
    restored = pickle.loads(pickle.dumps(c))
    new_console = io.StringIO()
    monkeypatch.setattr(console_module, "_console", new_console)
    restored.on_trial_complete(iteration=0, trials=[], trial=_search_trial())
    assert new_console.getvalue().startswith("[search] c003/r1")


def test_console_in_a_real_tune_run(ray_local, tmp_path):
    """Ray 2.60 calls the hooks this way: a finished trial's line, an errored trial's reason
    from its error.txt, the final status line; the Tuner pickles the callback."""
    from ray import tune

    from analysis.synthetic import synthetic_trainable

    out = io.StringIO()
    objectives = {"clean_acc": "max", "robust_acc": "max"}
    console = StudyConsole("search", 2, objectives, ["reg_weight"], out, concurrency=2)
    space = {"method": "lime_refine", "epsilon": 0.1, "mask_ratio": 0.2, "rounds": 2,
             "reg_weight": tune.grid_search([0.1, 8.0])}  # fmt: skip
    tune.Tuner(
        synthetic_trainable,
        param_space=space,
        run_config=tune.RunConfig(
            name="console", storage_path=str(tmp_path), callbacks=[console], verbose=0
        ),
    ).fit()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[search] 2 trials, up to 2 at a time"
    done = [line for line in lines if "reg_weight=0.1 " in line]
    assert len(done) == 1 and re.search(r"  clean \d+\.\d%  robust \d+\.\d%  \d+s$", done[0])
    errors = [line for line in lines if line.startswith("ERROR [search]")]
    assert len(errors) == 1
    assert errors[0].endswith("RuntimeError: training diverged (reg_weight=8)")
    assert lines[-1].startswith("[search] 1/2 done, 0 running, 0 pending, 1 errored")


# --- Ray's output into the log file ---------------------------------------------------------

REDIRECTED = textwrap.dedent(
    """
    import logging, os, subprocess, sys, warnings
    from study.console import StudyLog, print_error
    handlers, hook = list(logging.getLogger().handlers), sys.excepthook
    try:
        with StudyLog(sys.argv[1], verbose=sys.argv[2] == "1") as study_log:
            console = study_log.console
            logging.getLogger("ray").warning("ray-logger-line")
            logging.getLogger("somelib").warning("root-logger-line")
            warnings.warn("python-warning-line")
            print("print-line")
            print("stderr-line", file=sys.stderr)
            sys.stdout.flush(); sys.stderr.flush()
            os.write(1, b"fd1-line\\n")
            os.write(2, b"fd2-line\\n")
            subprocess.run(["sh", "-c", "echo child-line; echo child-err-line >&2"], check=True)
            console.write("console-line\\n")
            console.flush()
            if sys.argv[2] == "0":
                print_error("bad-input-line")  # a ConfigError after the redirect (study.confirm)
                raise RuntimeError("boom")
    except RuntimeError as e:
        assert e.reported  # the command line exits 1 without printing it again
        # everything is back: descriptors, streams, logging, warnings, the excepthook
        print("after-line"); sys.stdout.flush()
        os.write(2, b"after-fd2-line\\n")
        logging.getLogger("somelib").warning("after-logger-line")
        assert logging.getLogger().handlers == handlers and sys.excepthook is hook
        sys.exit(1)
    """
)
MARKERS = [
    "ray-logger-line", "root-logger-line", "python-warning-line", "print-line", "stderr-line",
    "fd1-line", "fd2-line", "child-line", "child-err-line",
]  # fmt: skip


def _run_redirected(log: Path, verbose: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", REDIRECTED, str(log), "1" if verbose else "0"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=60,
    )  # fmt: skip


def test_the_study_log_takes_everything_but_the_console_and_gives_it_back(tmp_path):
    log = tmp_path / "logs" / "study.log"
    run = _run_redirected(log, verbose=False)
    assert run.returncode == 1, run.stderr
    assert run.stdout == (
        f"console-line\nerror: bad-input-line\nerror: RuntimeError: boom (details in {log})\n"
        "after-line\n"
    )
    assert run.stderr == "after-fd2-line\nafter-logger-line\n"
    text = log.read_text()
    for marker in [*MARKERS, "error: bad-input-line"]:
        assert marker in text, marker
    assert "Traceback" in text and "RuntimeError: boom" in text
    assert "after" not in text


def test_a_verbose_study_log_changes_nothing(tmp_path):
    log = tmp_path / "study.log"
    run = _run_redirected(log, verbose=True)
    assert run.returncode == 0, run.stderr
    assert not log.exists()
    both = run.stdout + run.stderr
    for marker in [*MARKERS, "console-line"]:
        assert marker in both, marker


READ_ONLY_EXPLANATIONS = textwrap.dedent(
    """
    import numpy as np, torch
    from trainables.explain import Explanation
    from trainables.refine import lime_weight_maps, mask_superpixels
    segments = np.arange(64, dtype=np.int64).reshape(8, 8) % 16
    weights = np.linspace(-1, 1, 16)
    segments.setflags(write=False)  # as explanations that come back from Ray's object store
    weights.setflags(write=False)
    explanations = [Explanation(0, segments, weights, 0.0, 0.0, 1.0)] * 2
    for fill in ("mean", "zero"):
        mask_superpixels(torch.rand(2, 1, 8, 8), explanations, 0.5, fill=fill)
    lime_weight_maps(explanations, torch.Size([2, 1, 8, 8]))
    """
)


def test_no_non_writable_array_warning_from_refine():
    """PyTorch warns (once per process, hence a fresh one) when a tensor would share memory
    with a read-only NumPy array; the refinement loop copies the explanations' arrays."""
    run = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", READ_ONLY_EXPLANATIONS],
        capture_output=True, text=True, cwd=REPO, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-500:]


# --- python -m study.status -------------------------------------------------------------------


def _result(config_id: str, clean: float, robust: float, round_: int = 2, **extra) -> dict:
    return {"round": round_, "val_clean_acc": clean, "val_robust_acc": robust,
            "val_masking": 0.0, "time_total_s": 30.0, **extra}  # fmt: skip


def write_experiment(exp_dir: Path, trials: list[dict]) -> None:
    """A Tune experiment as analysis.results reads it: experiment_state-*.json (trial_data),
    and per trial params.json, result.json (one line per round) and error.txt."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    data = []
    for i, t in enumerate(trials):
        rel = f"trial_{t['id']}"
        state = {"trial_id": t["id"], "status": t["status"], "relative_logdir": rel,
                 "experiment_tag": f"{i + 1}_x", "config": t["config"]}  # fmt: skip
        data.append([json.dumps(state), "{}"])
        d = exp_dir / rel
        d.mkdir()
        (d / "params.json").write_text(json.dumps(t["config"]))
        lines = [json.dumps({**r, "trial_id": t["id"]}) for r in t.get("results", [])]
        if lines:
            (d / "result.json").write_text("\n".join(lines) + "\n")
        if t.get("error"):
            (d / "error.txt").write_text(f"Failure # 1\nTraceback (...)\n{t['error']}\n")
    (exp_dir / "experiment_state-2026-11-24_12-00-00.json").write_text(
        json.dumps({"trial_data": data})
    )


def _trial(tid, config_id, rep, status, results=(), method="lime_refine", **extra):
    config = {"config_id": config_id, "replicate": rep, "method": method, "rounds": 2,
              "mask_ratio": 0.25, "reg_weight": 0.1, "epsilon": 0.1}  # fmt: skip
    return {"id": tid, "status": status, "config": config, "results": list(results), **extra}


def make_study(storage: Path, finished: bool) -> Path:
    study = storage / "demo"
    study.mkdir(parents=True)
    settings = {
        "name": "demo", "storage": str(storage), "num_samples": 3, "replicates": 2,
        "baselines": ["pgd_at"], "confirm_seeds": 2, "objectives": OBJ,
        "search": {"mask_ratio": {"type": "uniform", "low": 0, "high": 0.5},
                   "reg_weight": {"type": "loguniform", "low": 0.001, "high": 10}},
    }  # fmt: skip
    (study / "study.json").write_text(json.dumps(settings))
    search = [
        _trial("s_0", "c000", 0, "TERMINATED", [_result("c000", 0.95, 0.30)]),
        _trial("s_1", "c000", 1, "TERMINATED", [_result("c000", 0.93, 0.32)]),
    ]
    if not finished:  # interrupted: one replicate running, one errored, one not created yet
        search += [
            _trial("s_2", "c001", 0, "RUNNING", [_result("c001", 0.5, 0.2, round_=1)]),
            _trial("s_3", "c001", 1, "ERROR", error="RuntimeError: training diverged"),
        ]
        write_experiment(study, search)
        return study
    search += [
        _trial("s_2", "c001", 0, "TERMINATED", [_result("c001", 0.85, 0.55)]),
        _trial("s_3", "c001", 1, "TERMINATED", [_result("c001", 0.83, 0.57)]),
        # stopped early by MO-ASHA at round 1 (scheduler_state.json): out of the front
        _trial("s_4", "c002", 0, "TERMINATED", [_result("c002", 0.99, 0.9, round_=1)]),
        _trial("s_5", "c002", 1, "TERMINATED", [_result("c002", 0.99, 0.9, round_=1)]),
    ]
    write_experiment(study, search)
    (study / "scheduler_state.json").write_text(json.dumps({"stopped": {"c002": 1}}))
    baselines = [
        _trial(f"b_{r}", "pgd_at", r, "TERMINATED", [_result("pgd_at", 0.8, 0.5)], "pgd_at")
        for r in range(2)
    ]
    write_experiment(study / "baselines", baselines)
    plan = [{"config_id": c, "replicate": r} for c in ("c000", "c001", "pgd_at") for r in (0, 1)]
    (study / "confirmation_plan.json").write_text(json.dumps(plan))
    write_experiment(
        study / "confirmation",
        [
            _trial(
                f"k_{i}",
                p["config_id"],
                p["replicate"],
                "TERMINATED",
                [{"round": 2, "test_clean_acc": 0.9, "test_autoattack_acc": 0.4}],
            )
            for i, p in enumerate(plan)
        ],  # fmt: skip
    )
    pd.DataFrame(
        {
            "config_id": ["c000", "c001"], "reference": "pgd_at", "n_pairs": 2,
            "test_clean_acc_diff": [0.12, 0.03], "test_clean_acc_diff_ci_low": [0.10, -0.01],
            "test_clean_acc_diff_ci_high": [0.14, 0.07],
            "test_autoattack_acc_diff": [-0.2, 0.02],
            "test_autoattack_acc_diff_ci_low": [-0.25, 0.01],
            "test_autoattack_acc_diff_ci_high": [-0.15, 0.03],
            "verdict": ["worse in test_autoattack_acc", "undecided"],
        }
    ).to_csv(study / "answer.csv", index=False)  # fmt: skip
    return study


def _stage_lines(text: str) -> dict[str, str]:
    lines = [line.strip() for line in text.splitlines()[1:4]]
    return {line.split()[0]: line.split(None, 1)[1] for line in lines}


def test_status_of_a_finished_study(tmp_path, capsys):
    study = make_study(tmp_path, finished=True)
    assert main([str(study)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"Study demo ({study}; last update ")
    assert _stage_lines(text) == {
        "search": "4/6 done, 0 running, 0 pending, 0 errored, 2 stopped",
        "baselines": "2/2 done, 0 running, 0 pending, 0 errored, 0 stopped",
        "confirmation": "6/6 done, 0 running, 0 pending, 0 errored, 0 stopped",
    }
    assert "Front of the search (2 of 2 configurations; " in text
    front = text.split("95% t-intervals):\n")[1].splitlines()
    assert front[0].split() == ["config_id", "n", "mask_ratio", "reg_weight", "clean", "%",
                                "robust", "%"]  # fmt: skip
    assert front[1].split()[:5] == ["c001", "2", "0.25", "0.1", "84.0"]
    assert front[2].split()[:5] == ["c000", "2", "0.25", "0.1", "94.0"]
    assert "c002" not in text  # stopped early
    assert "+12.0 [+10.0, +14.0]" in text and "worse in test_autoattack_acc" in text
    assert text.rstrip().endswith("Finished.")


def test_status_of_an_interrupted_study(tmp_path):
    study = make_study(tmp_path, finished=False)
    summary = summarize_study(study)
    text = format_summary(summary)
    assert _stage_lines(text) == {
        "search": "2/6 done, 1 running, 2 pending, 1 errored, 0 stopped",
        "baselines": "0/2 done, 0 running, 2 pending, 0 errored, 0 stopped",
        "confirmation": "not started",
    }
    assert "  [search] c001/r1 (trial s_3): RuntimeError: training diverged" in text
    assert "Front of the search (1 of 1 configurations;" in text
    assert "Answer" not in text
    resume = f"To resume: python -m study.sweep --resume --name demo --storage {tmp_path}"
    assert text.rstrip().endswith(resume)

    # The same study read through a URI (here fsspec's memory://, as s3:// through pyarrow),
    # copied elsewhere: the command resumes it where it is now.
    mem = fsspec.filesystem("memory")
    for path in study.rglob("*"):
        if path.is_file():
            mem.pipe(f"/moved/demo/{path.relative_to(study)}", path.read_bytes())
    remote = summarize_study("memory://moved/demo")
    assert remote.counts == summary.counts
    assert remote.resume.endswith("--name demo --storage memory://moved")


def test_status_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no such directory" in err and err.count("\n") == 1
    assert main([str(tmp_path)]) == 2
    assert "not a study directory (no study.json)" in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _no_console_left(monkeypatch):
    """Tests here never leave a console stream registered for the next test."""
    monkeypatch.setattr(console_module, "_console", None)
