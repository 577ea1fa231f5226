"""The study directory's one owner (study/store.py), on a local path and on an object-store-like
URI (fsspec's in-memory filesystem), which is how an s3:// study is read and written."""

import os
import uuid

import pandas as pd
import pytest
from matplotlib.figure import Figure

from study import store
from study.scheduler import stopped_configs
from study.status import summarize_study
from study.store import StudyStore


@pytest.fixture(params=["local", "memory"])
def study_dir(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "study")
    return f"memory://bucket-{uuid.uuid4().hex[:8]}/studies/study"


def test_tables_json_text_and_figures_round_trip(study_dir):
    s = StudyStore(study_dir)
    assert not s.exists() and s.read_table(store.ANSWER_FILE) is None and s.listdir() == []
    table = pd.DataFrame({"config_id": ["c000", "c001"], "val_clean_acc_mean": [0.5, 0.25]})
    s.write_table(store.CONFIGS_FILE, table)
    pd.testing.assert_frame_equal(s.read_table(store.CONFIGS_FILE), table)
    s.write_table(store.PARETO_FILE, pd.DataFrame())  # an empty front reads back empty
    assert s.read_table(store.PARETO_FILE).empty
    s.write_json(store.STUDY_FILE, {"name": "study", "objectives": {"a": "max"}})
    assert s.read_json(store.STUDY_FILE)["objectives"] == {"a": "max"}
    figure = Figure()
    figure.add_subplot().plot([0, 1])
    s.write_figure(store.PARETO_FIGURE, figure)
    assert s.read_bytes(store.PARETO_FIGURE).startswith(b"\x89PNG")
    s.rename(store.CONFIGS_FILE, "configs.csv.old")
    assert not s.exists(store.CONFIGS_FILE) and s.exists("configs.csv.old")
    assert set(s.listdir()) == {"configs.csv.old", "pareto.csv", "study.json", "pareto.png"}


def test_a_local_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "deep" / "state.json"
    store.write_json(path, {"round": 1})
    store.write_json(path, {"round": 2})
    assert store.read_json(path) == {"round": 2}
    assert os.listdir(path.parent) == ["state.json"]  # no temporary file left behind


def test_the_scheduler_state_and_the_status_read_from_a_uri(study_dir):
    """MO-ASHA's state file and `study.status` go through the store, so a remote study keeps
    both in its own directory."""
    s = StudyStore(study_dir)
    store.write_json(s.path(store.SCHEDULER_STATE_FILE), {"stopped": {"c002": 1}})
    assert stopped_configs(s.path(store.SCHEDULER_STATE_FILE)) == {"c002": 1}
    s.write_json(store.STUDY_FILE, {"name": "study", "num_samples": 1, "replicates": 1})
    s.write_table(store.ANSWER_FILE, pd.DataFrame({"config_id": ["c000"], "verdict": ["x"]}))
    s.write_text("experiment_state-2026-01-01_00-00-00.json", '{"trial_data": []}')
    summary = summarize_study(study_dir)
    assert summary.answer is not None and list(summary.answer["config_id"]) == ["c000"]


def test_a_remote_study_logs_locally_then_keeps_its_log(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    remote = f"memory://bucket-{uuid.uuid4().hex[:8]}/studies/s"
    local = store.local_log_path(remote, "s")
    assert local == os.path.join("results", "s", store.LOG_FILE)
    os.makedirs(os.path.dirname(local))
    with open(local, "w") as f:
        f.write("ray said things\n")
    store.keep_log(remote, "s")
    assert StudyStore(remote).read_bytes(store.LOG_FILE) == b"ray said things\n"
    here = str(tmp_path / "study")
    assert store.local_log_path(here, "s") == os.path.join(here, store.LOG_FILE)
