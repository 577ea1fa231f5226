"""Load a study directory (Ray Tune's files plus the sweep's study.json) into pandas, without Ray.

A study directory is read through study/store.py (its file names and filesystems), so a local
path, ``s3://``/``gs://`` (pyarrow's own filesystems) and any fsspec URI (``memory://``, ...)
all work the same way.
Trial status comes from Tune's newest ``experiment_state-*.json``; metrics come from each trial's
``result.json``, which Tune appends to as results arrive (the state file is only written
periodically). The Tune experiments in the study directory and in its direct subfolders are all
read, so baselines run as a separate Tune experiment inside the study are picked up too.
"""

import io
import json
import os
import posixpath

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from study.store import (
    DEFAULT_OBJECTIVES,
    OUTCOMES_FILE,
    OUTCOMES_MARK,
    STUDY_FILE,
    open_fs,
    outcomes_key,
    read_bytes,
    unpack_ints,
    unpack_outcomes,
)

METHOD = "lime_refine"
METHOD_LABEL = "LIME-guided refinement"
BASELINES = {
    "erm": "ERM",
    "pgd_at": "PGD-AT",
    "ig_norm": "IG-NORM",
    "ig_sum_norm": "IG-SUM-NORM",
    "trades": "TRADES",
}
# Tune's bookkeeping in every result: not metrics, so not columns of the trial table.
TUNE_KEYS = {
    "config", "done", "timestamp", "date", "time_this_iter_s", "time_since_restore",
    "iterations_since_restore", "training_iteration", "trial_id", "pid", "experiment_tag",
    "checkpoint_dir_name", "should_checkpoint",
}  # fmt: skip
FIRST_COLUMNS = [
    "trial_id",
    "experiment",
    "number",
    "status",
    "error",
    "rounds",
    "time_total_s",
    "node_ip",
]


def _read_text(fs: pafs.FileSystem, path: str) -> str:
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def _read_results(fs: pafs.FileSystem, trial_dir: str, files: set[str]) -> list[dict]:
    path = posixpath.join(trial_dir, "result.json")
    if path not in files:
        return []
    lines = _read_text(fs, path).splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _error_line(fs: pafs.FileSystem, trial_dir: str, files: set[str]) -> str:
    """The last line of error.txt: the exception and its message, e.g. 'RuntimeError: boom'."""
    path = posixpath.join(trial_dir, "error.txt")
    if path not in files:
        return ""
    lines = [line.strip() for line in _read_text(fs, path).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _list_files(fs: pafs.FileSystem, root: str, depth: int) -> set[str]:
    """Files at most `depth` levels down: a full walk would list every Train checkpoint."""
    files, dirs = set(), [root]
    for _ in range(depth):
        subdirs = []
        for d in dirs:
            for info in fs.get_file_info(pafs.FileSelector(d)):
                if info.type == pafs.FileType.File:
                    files.add(info.path)
                elif info.type == pafs.FileType.Directory:
                    subdirs.append(info.path)
        dirs = subdirs
    return files


def _scan(study_dir: str | os.PathLike) -> tuple[pafs.FileSystem, dict[str, dict], set[str]]:
    """Every trial of every Tune experiment in the study: {trial dir: {trial_id, status, ...}}.

    Experiments are the study directory and its direct subfolders holding an experiment_state
    file (e.g. baselines run separately).
    """
    fs, root = open_fs(study_dir)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"study directory not found: {study_dir}")
    files = _list_files(fs, root, depth=3)

    newest_state: dict[str, str] = {}
    for path in sorted(files):  # names end in a sortable timestamp: the last one wins
        name = posixpath.basename(path)
        if name.startswith("experiment_state-") and name.endswith(".json"):
            newest_state[posixpath.dirname(path)] = path

    trials: dict[str, dict] = {}
    for exp_dir, state_path in newest_state.items():
        for trial_json, _run_json in json.loads(_read_text(fs, state_path))["trial_data"]:
            t = json.loads(trial_json)
            number = t.get("experiment_tag", "").split("_", 1)[0]
            trials[posixpath.join(exp_dir, t["relative_logdir"])] = {
                "trial_id": t["trial_id"],
                "experiment": posixpath.basename(exp_dir),
                "number": int(number) if number.isdigit() else None,
                "status": t["status"],
                "config": t["config"] if isinstance(t.get("config"), dict) else {},
            }
    # Trial folders missing from the state file: a live study's newest trials, started after
    # the file was last written. One older than the file was left by a driver killed before it
    # saved the trial, which the resumed run then ran again under another id: not a trial.
    state_of = {}
    for path in files:
        trial_dir = posixpath.dirname(path)
        exp_dir = posixpath.dirname(trial_dir)
        listed = trial_dir in trials or exp_dir not in newest_state
        if posixpath.basename(path) == "params.json" and not listed:
            state_of[trial_dir] = newest_state[exp_dir]
    written = {}
    if state_of:
        paths = [posixpath.join(d, "params.json") for d in state_of] + list(newest_state.values())
        written = {info.path: info.mtime for info in fs.get_file_info(paths)}
    for trial_dir, state_path in state_of.items():
        started, saved = written[posixpath.join(trial_dir, "params.json")], written[state_path]
        if started is None or saved is None or started >= saved:
            has_error = posixpath.join(trial_dir, "error.txt") in files
            status = "ERROR" if has_error else "RUNNING"
            experiment = posixpath.basename(posixpath.dirname(trial_dir))
            trials[trial_dir] = {"status": status, "experiment": experiment, "config": {}}
    for trial_dir, trial in trials.items():
        params = posixpath.join(trial_dir, "params.json")
        if params in files:
            trial["config"] = json.loads(_read_text(fs, params))
    return fs, trials, files


def load_trials(study_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per trial: id, status, error, config/<key>, final metrics, rounds, wall time, node.

    Final metrics are the last reported result (for an errored trial: the last round it finished).
    """
    fs, trials, files = _scan(study_dir)
    rows = []
    for trial_dir, trial in trials.items():
        results = _read_results(fs, trial_dir, files)
        last = results[-1] if results else {}
        row = {
            "trial_id": trial.get("trial_id")
            or last.get("trial_id", posixpath.basename(trial_dir)),
            "experiment": trial["experiment"],
            "number": trial.get("number"),
            "status": trial["status"],
            "error": _error_line(fs, trial_dir, files),
            "rounds": len(results),
            "time_total_s": last.get("time_total_s", float("nan")),
            "node_ip": last.get("node_ip"),
        }
        row.update({f"config/{k}": v for k, v in trial["config"].items()})
        row.update({k: v for k, v in last.items() if k not in TUNE_KEYS and k not in row})
        row["trial_dir"] = trial_dir
        rows.append(row)
    df = pd.DataFrame(rows, columns=None if rows else FIRST_COLUMNS).astype({"number": "Int64"})
    for objective in objectives_of(load_study_settings(study_dir)):
        if objective not in df:  # no trial has reported yet: still a column, of NaN
            df[objective] = float("nan")
    return df.sort_values(["experiment", "number", "trial_id"], ignore_index=True)


def load_history(study_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per reported result (refinement round) of every trial, with the trial's config."""
    fs, trials, files = _scan(study_dir)
    rows = []
    for trial_dir, trial in trials.items():
        config = {f"config/{k}": v for k, v in trial["config"].items()}
        for result in _read_results(fs, trial_dir, files):
            row = {k: v for k, v in result.items() if k != "config"}
            row["trial_id"] = trial.get("trial_id") or result.get("trial_id")
            row["status"] = trial["status"]
            rows.append({**row, **config})
    if not rows:
        return pd.DataFrame(columns=["trial_id", "status", "training_iteration"])
    return pd.DataFrame(rows).sort_values(["trial_id", "training_iteration"], ignore_index=True)


def completed(df: pd.DataFrame) -> pd.DataFrame:
    """The trials that ran to the end: a front of half-finished trials would mislead."""
    return df[df["status"] == "TERMINATED"]


def searched_trials(df: pd.DataFrame) -> pd.DataFrame:
    """The trials of the method itself: every trial whose config/method is not a baseline."""
    if "config/method" not in df:
        return df
    return df[~df["config/method"].isin(list(BASELINES))]


def load_study_settings(study_dir: str | os.PathLike) -> dict:
    """The sweep's study.json ({} for a plain Tune experiment that has none)."""
    fs, root = open_fs(study_dir)
    path = posixpath.join(root, STUDY_FILE)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return {}
    return json.loads(_read_text(fs, path))


def latest_study(storage: str | os.PathLike) -> str:
    """The most recently changed study directory (one with a study.json) under a local storage."""
    root = os.path.abspath(os.path.expanduser(storage))
    found = [e.path for e in os.scandir(root) if os.path.isfile(os.path.join(e.path, STUDY_FILE))]
    if not found:
        raise FileNotFoundError(f"no study directory (with a study.json) under {root}")
    return max(found, key=os.path.getmtime)


def objectives_of(settings: dict) -> dict[str, str]:
    """The study's objectives and directions, defaulting to clean and robust accuracy."""
    return dict(settings.get("objectives") or DEFAULT_OBJECTIVES)


def searched_keys_of(settings: dict) -> list[str]:
    """Every searched trial key of a study (study.json): the method's, then each searched
    baseline's (a `baselines:` entry with a `search:`) not already listed."""
    keys = dict.fromkeys(settings.get("search") or {})
    for baseline in settings.get("baselines") or []:
        if isinstance(baseline, dict):
            keys.update(dict.fromkeys(baseline.get("search") or {}))
    return list(keys)


# --- per-image outcomes ------------------------------------------------------------------------


def outcome_table(row: pd.Series | dict) -> pd.DataFrame | None:
    """One trial's per-image outcomes from its result (the `<split>_outcomes_*` columns): one
    row per evaluated image of each split with `split`, `index`, `label` and a boolean column
    per evaluation (missing where an evaluation covered fewer images, e.g. AutoAttack's subset).
    None for a trial that reported none."""
    parts = []
    for split in ("val", "test"):
        mark = f"{split}{OUTCOMES_MARK}"
        columns = {
            key.removeprefix(mark): value
            for key, value in row.items()
            if key.startswith(mark) and isinstance(value, str)
        }
        if not columns:
            continue
        index = unpack_ints(columns.pop("index")) if "index" in columns else None
        label = unpack_ints(columns.pop("label")) if "label" in columns else None
        values = {name: unpack_outcomes(text) for name, text in columns.items()}
        n = max(len(v) for v in values.values())
        table = pd.DataFrame({"split": split, "image": range(n)})
        if index is not None:
            table["index"] = index
        if label is not None:
            table["label"] = label
        for name, v in values.items():
            table[name] = pd.array([*v, *[None] * (n - len(v))], dtype="boolean")
        parts.append(table)
    return pd.concat(parts, ignore_index=True) if parts else None


def read_outcomes(trial_dir: str | os.PathLike) -> pd.DataFrame | None:
    """The per-image outcomes the study wrote into a trial's directory (local path or URI);
    None when it has none."""
    data = read_bytes(f"{os.fspath(trial_dir).rstrip('/')}/{OUTCOMES_FILE}")
    return None if data is None else pd.read_parquet(io.BytesIO(data))


def outcome_matrix(trials: pd.DataFrame, metric: str) -> np.ndarray | None:
    """(trials, images) booleans of an accuracy metric's per-image outcomes, rows in the order
    of `trials`; None when any trial lacks them or their lengths differ (the images would not
    pair)."""
    key = outcomes_key(metric)
    if key is None or key not in trials or trials[key].isna().any():
        return None
    rows = [unpack_outcomes(text) for text in trials[key]]
    if len({len(r) for r in rows}) != 1:
        return None
    return np.stack(rows)
