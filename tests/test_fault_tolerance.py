"""Faults a cluster has, each on real processes: a trial's process (an in-process trial's Tune
actor, or a Train worker) or the driver killed with SIGKILL, the driver stopped with Ctrl-C
(SIGINT), a trial that diverges or runs out of memory, and a truncated or corrupted checkpoint.
Every study-level fault runs in both trial modes: `num_workers` 0 (the loop in the Tune trial's
own process) and 1 (a Ray Train worker)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import REPO
from tests.test_multinode import LOOP_ACTOR, TEST_ENV, RayNode, sweep, write_config
from trainables.worker import CheckpointError, load_state, restore_state, save_state


@pytest.fixture(scope="module")
def head():
    """One `ray start` node for the module (a trial needs 1 CPU: half a worker, half LIME)."""
    node = RayNode(cpus=2, resources={})
    try:
        yield node
    finally:
        node.stop()


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"no {what} after {timeout} s")


def _results(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _start_sweep(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "study.sweep", *args],
        cwd=REPO,
        env=TEST_ENV,
        stdout=subprocess.PIPE,  # the console (Ray's output goes to the study's log)
        stderr=subprocess.STDOUT,
        text=True,
    )


modes = pytest.mark.parametrize("num_workers", [0, 1], ids=["in-process", "train-worker"])


def _alive_loop_pid(head: RayNode, num_workers: int) -> int | None:
    from ray.util.state import list_actors

    actors = list_actors(
        address=f"http://127.0.0.1:{head.dashboard_port}",
        filters=[("class_name", "=", LOOP_ACTOR[num_workers]), ("state", "=", "ALIVE")],
        detail=True,
        raise_on_missing_output=False,
    )
    return actors[0].pid if actors else None


@pytest.mark.slow  # a 6-round trial killed and resumed: ~1 min on 2 cores
@modes
def test_killed_trial_process_resumes_from_its_last_checkpoint(head, tmp_path, num_workers):
    config = write_config(tmp_path / "c.yaml", rounds=6, num_workers=num_workers)
    storage = tmp_path / "s"
    proc = _start_sweep(
        "--config", str(config), "--num-samples", "1", "--name", "wk",
        "--storage", str(storage), "--address", head.address,
    )  # fmt: skip
    try:
        # Round 1 reached Tune: its checkpoint is registered. Kill the worker mid-trial.
        trial_dir = _wait_for(
            lambda: next((d for d in (storage / "wk").glob("trial_*") if _results(d)), None),
            400,
            "first round",
        )
        pid = _wait_for(lambda: _alive_loop_pid(head, num_workers), 30, "trial process")
        os.kill(pid, signal.SIGKILL)
        killed_after = len(_results(trial_dir))
        console, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, console[-3000:]
    rounds = [r["round"] for r in _results(trial_dir)]
    assert 1 <= killed_after < 6, "the kill did not land mid-trial"
    # Resumed from the last checkpoint, not from round 1: no round runs twice. (A round whose
    # report was in flight when an in-process trial died can be missing from result.json
    # while Tune kept its checkpoint; training goes on from it.)
    assert rounds == sorted(set(rounds)) and rounds[:killed_after] == list(
        range(1, killed_after + 1)
    )
    assert rounds[-1] == 6 and len(rounds) >= 5, rounds
    if num_workers == 0:  # Tune retried the trial (a Train run retries its worker itself)
        assert "The actor is dead" in (trial_dir / "error.txt").read_text()
    trials = pd.read_csv(storage / "wk" / "trials.csv")
    assert list(trials["status"]) == ["TERMINATED"]


@pytest.mark.slow  # three trials one at a time, then a resume: ~2-5 min on 2 shared cores
@modes
def test_killed_driver_resumes_with_finished_trials_and_optuna_state_kept(
    head, tmp_path, num_workers
):
    config = write_config(tmp_path / "c.yaml", num_workers=num_workers)
    storage = tmp_path / "s"
    study = storage / "dk"
    proc = _start_sweep(
        "--config", str(config), "--num-samples", "3", "--max-concurrent-trials", "1",
        "--name", "dk", "--storage", str(storage), "--address", head.address,
    )  # fmt: skip
    try:
        # One trial at a time: once the second trial reports, the first one has finished.
        # A generous limit: a loaded machine once took longer than 240 s (CI is not timing it).
        _wait_for(lambda: sum(bool(_results(d)) for d in study.glob("trial_*")) >= 2, 600, "2nd")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    finished = {
        d.name.removeprefix("trial_"): _results(d)[-1]
        for d in study.glob("trial_*")
        if len(_results(d)) == 3
    }
    assert len(finished) >= 1 and not (study / "trials.csv").exists()

    out = sweep("--resume", "--name", "dk", "--storage", str(storage), "--address", head.address)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = pd.read_csv(study / "trials.csv").set_index("trial_id")
    assert len(trials) == 3 and set(trials["status"]) == {"TERMINATED"}
    for trial_id, before in finished.items():  # finished trials are kept unchanged
        for key in ("round", "val_clean_acc", "val_robust_acc", "train_loss"):
            assert trials.loc[trial_id, key] == pytest.approx(before[key]), (trial_id, key)

    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch()
    searcher.restore_from_dir(str(study))
    ot_trials = searcher._ot_study.trials  # Optuna's own record: all three trials, told once
    assert len(ot_trials) == 3 and all(t.state.name == "COMPLETE" for t in ot_trials)
    values = sorted(tuple(t.values) for t in ot_trials)
    assert values == sorted(zip(trials["val_clean_acc"], trials["val_robust_acc"], strict=True))


@pytest.mark.slow  # 1 + 1 trials, then 2 x 2 confirmation trials, a stop and a resume: ~4 min each
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["killed", "ctrl-c"])
@modes
def test_driver_stopped_during_confirmation_resumes_without_redoing_finished_trials(
    head, tmp_path, sig, num_workers
):
    """SIGKILL: the driver dies. SIGINT (Ctrl-C): Tune stops the stage and saves it, and the
    study stops too, with exit code 130 and the resume command, writing no answer."""
    config = tmp_path / "c.yaml"
    trial = json.loads(write_config(tmp_path / "t.yaml", num_workers=num_workers).read_text())[
        "trial"
    ]
    config.write_text(
        json.dumps({"baselines": ["pgd_at"], "replicates": 1, "confirm_seeds": 2, "trial": trial})
    )
    storage = tmp_path / "s"
    confirmation = storage / "ck" / "confirmation"
    proc = _start_sweep(
        "--config", str(config), "--num-samples", "1", "--max-concurrent-trials", "1",
        "--name", "ck", "--storage", str(storage), "--address", head.address,
    )  # fmt: skip
    try:  # stop it once the first confirmation trial has finished
        _wait_for(
            lambda: any(len(_results(d)) == 3 for d in confirmation.glob("trial_*")), 900, "conf"
        )
        proc.send_signal(sig)
        console, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    if sig == signal.SIGINT:
        assert proc.returncode == 130, console[-3000:]
        assert "error: interrupted: the confirmation stage stopped with" in console
        assert f"python -m study.sweep --resume --name ck --storage {storage}" in console
    finished = {
        d.name.removeprefix("trial_"): _results(d)[-1]
        for d in confirmation.glob("trial_*")
        if len(_results(d)) == 3
    }
    assert finished and len(finished) < 4
    assert not (storage / "ck" / "answer.csv").exists()

    out = sweep("--resume", "--name", "ck", "--storage", str(storage), "--address", head.address)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = pd.read_csv(storage / "ck" / "confirmation.csv").set_index("trial_id")
    assert len(rows) == 4 and set(rows["status"]) == {"TERMINATED"}  # (front + PGD-AT) x 2
    for trial_id, before in finished.items():  # finished confirmation trials are kept as they were
        assert rows.loc[trial_id, "test_clean_acc"] == pytest.approx(before["test_clean_acc"])
    assert len(pd.read_csv(storage / "ck" / "answer.csv")) == 1


@pytest.mark.slow  # two trials, one diverging: ~1 min on 2 cores
@modes
def test_diverging_trial_errors_with_its_reason_and_the_study_completes(
    head, tmp_path, num_workers
):
    config = tmp_path / "c.yaml"
    config.write_text(
        json.dumps(
            {
                "searcher": "random",  # seed 0 draws lr 10 then 0.05 (checked below)
                "baselines": [],
                "replicates": 1,
                "confirm_seeds": 0,
                "trial": json.loads(
                    write_config(tmp_path / "t.yaml", num_workers=num_workers).read_text()
                )["trial"],
                "search": {
                    "mask_ratio": None,
                    "reg_weight": None,
                    "epsilon": None,
                    "lr": {"type": "choice", "values": [0.05, 10.0]},
                },
            }
        )
    )
    storage = tmp_path / "s"
    out = sweep(
        "--config", str(config), "--num-samples", "2", "--name", "nan",
        "--storage", str(storage), "--address", head.address,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    trials = pd.read_csv(storage / "nan" / "trials.csv").set_index("config/lr")
    assert sorted(trials.index) == [0.05, 10.0]
    assert trials.loc[10.0, "status"] == "ERROR"
    assert "TrialError: diverged: loss became" in trials.loc[10.0, "error"]
    assert "lower lr" in trials.loc[10.0, "error"]
    assert trials.loc[0.05, "status"] == "TERMINATED" and trials.loc[0.05, "round"] == 3
    if num_workers == 0:  # Tune's retries end at once with the recorded reason: no round re-run
        (trial_dir,) = [
            d for d in (storage / "nan").glob("trial_*") if (d / "trial_error.txt").exists()
        ]
        assert (trial_dir / "trial_error.txt").read_text().startswith("diverged: loss became")
        assert not _results(trial_dir)  # it diverged in round 1 and never reported


@pytest.mark.slow  # a fault: a real allocation failure in a process of its own
def test_out_of_memory_is_a_clear_error(tmp_path):
    """A real allocation failure: the loop runs under an address-space limit 1 GB above what the
    process already holds, on 256x256 images whose activations need several GB."""
    script = textwrap.dedent(
        """
        import resource, psutil, torch
        from trainables.config import make_trial_config
        from trainables.data import Splits
        from trainables.refine import refine
        from trainables.worker import fatal_reason

        x = torch.rand(64, 3, 256, 256)
        y = torch.arange(64) % 10
        splits = Splits("big", x, y, x[:8], y[:8], tuple("0123456789"), (0.5,) * 3, (0.25,) * 3)
        cfg = make_trial_config({"method": "erm", "model": "small_cnn", "rounds": 1,
                                 "epochs_per_round": 1, "batch_size": 64, "eval_steps": 1})
        limit = psutil.Process().memory_info().vms + 1024**3
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            refine(cfg, splits=splits)
        except Exception as e:
            print(type(e).__name__, "|", fatal_reason(e))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert "| out of memory (" in out.stdout, out.stdout + out.stderr[-2000:]
    assert "lower batch_size" in out.stdout


def _checkpoints(tmp_path: Path, rounds: int):
    from ray.train import Checkpoint

    out = []
    for r in range(rounds):
        d = tmp_path / "run" / f"checkpoint_2026-01-01_00-00-0{r}.000000"
        d.mkdir(parents=True)
        save_state({"round": r, "weights": torch.full((4,), float(r))}, str(d))
        out.append(Checkpoint.from_directory(str(d)))
    return out


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    first, latest = _checkpoints(tmp_path, 2)
    state_file = Path(latest.path) / "state.pt"
    state_file.write_bytes(state_file.read_bytes()[:100])  # a copy cut short
    with pytest.raises(CheckpointError, match="fails its SHA-256"):
        load_state(latest.path)
    state = restore_state(latest)
    assert state["round"] == 0 and torch.equal(state["weights"], torch.zeros(4))
    assert "fails its SHA-256 (truncated or corrupted); falling back" in capsys.readouterr().out


def test_corrupted_checkpoint_falls_back_and_none_readable_is_an_error(tmp_path):
    first, latest = _checkpoints(tmp_path, 2)
    data = bytearray((Path(latest.path) / "state.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same length, still a zip
    (Path(latest.path) / "state.pt").write_bytes(bytes(data))
    assert restore_state(latest)["round"] == 0
    (Path(first.path) / "state.pt.sha256").unlink()
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        restore_state(latest)


def test_checkpoints_load_with_weights_only(tmp_path):
    """A checkpoint holding pickled code (checksum intact) is refused, not executed."""
    d = tmp_path / "checkpoint_x"
    d.mkdir()
    save_state({"round": 0, "payload": os.system}, str(d))
    with pytest.raises(CheckpointError, match="weights_only"):
        load_state(str(d))
