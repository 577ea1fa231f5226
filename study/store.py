"""The study directory: its file names, where it lives, and reading and writing its files.

The one owner of a study's layout: study/ writes through it; analysis/ and `python -m
study.status` read through it. It imports neither Ray nor torch, so a notebook or a status query
opens a study without starting either. A study directory is a local path or any URI that
pyarrow (s3://, gs://) or fsspec (memory://, ...) opens, and every file, tables included, goes
into the directory itself: `aws s3 sync` of a remote study fetches all of it. The one local file
of a remote study is the driver's log while it runs (descriptors cannot point at S3); the study
copies it in when it ends.
"""

import base64
import io
import json
import os
import posixpath
import tempfile
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

# The study's own files.
STUDY_FILE = "study.json"  # the resolved settings (--resume, the analysis)
LOG_FILE = "study.log"  # Ray's, Tune's and PyTorch's own output, unless --verbose
TRIALS_FILE = "trials.csv"
CONFIGS_FILE = "configs.csv"
PARETO_FILE = "pareto.csv"
PARETO_FIGURE = "pareto.png"
SCHEDULER_STATE_FILE = "scheduler_state.json"  # MO-ASHA's decisions
BASE_RECORD = "base.json"  # which shared base the study refines
PLAN_FILE = "confirmation_plan.json"  # the confirmation's trial points, fixed when it starts
CONFIRMATION_FILE = "confirmation.csv"
CONFIRMED_FILE = "confirmed.csv"
SELECTION_BIAS_FILE = "selection_bias.csv"
FRONTS_FILE = "fronts.csv"  # each method's confirmed front against the method's
FRONTS_FIGURE = "confirmed_fronts.png"
FRONTS_OTHER_EPS_FILE = "fronts_other_eps.csv"  # the same, drawn at each other answer eps
ANSWER_FILE = "answer.csv"  # the confirmation writes it last
ABLATION_FILE = "ablation.csv"  # an ablation's variants against its full setting
REPORT_FILE = "report.html"  # python -m analysis.report
# What the confirmation writes, in order (a re-run archives them first).
CONFIRMATION_TABLES = (
    CONFIRMATION_FILE, CONFIRMED_FILE, SELECTION_BIAS_FILE, FRONTS_FILE, FRONTS_FIGURE,
    FRONTS_OTHER_EPS_FILE, ABLATION_FILE, ANSWER_FILE,
)  # fmt: skip
# The objectives of a study whose settings name none: selection happens on validation; the test
# split is read by the confirmation stage only.
DEFAULT_OBJECTIVES = {"val_clean_acc": "max", "val_robust_acc": "max"}
# The folders of its Tune experiments beside the search's own, and of its Ray Train runs.
BASELINES_DIR = "baselines"
BASELINE_SEARCH_PREFIX = "search-"  # a searched baseline's experiment: search-<method>
CONFIRMATION_DIR = "confirmation"
TRAIN_RUNS_DIR = "train_runs"
# The stages, by the name each goes by everywhere (a trial's `stage`, the console, the tables):
# the search runs in the study directory itself, the others in the folders of their names.
STAGES = ("search", BASELINES_DIR, CONFIRMATION_DIR)


def baseline_search_name(method: str) -> str:
    """The experiment (folder) of a baseline searched like the method, and the prefix of its
    configurations' ids (`pgd_at-c000`) is the method's name."""
    return f"{BASELINE_SEARCH_PREFIX}{method}"


def is_remote(path: str | os.PathLike) -> bool:
    return "://" in os.fspath(path)


def join(study_dir: str | os.PathLike, name: str) -> str:
    """A file's path or URI inside the study directory."""
    study_dir = os.fspath(study_dir)
    return (
        f"{study_dir.rstrip('/')}/{name}" if is_remote(study_dir) else os.path.join(study_dir, name)
    )


def open_fs(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for a local path or a URI."""
    path = os.fspath(path)
    if not is_remote(path):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    try:
        return pafs.FileSystem.from_uri(path)
    except pa.ArrowInvalid:  # a scheme pyarrow lacks: fsspec knows more of them
        fs, inner = fsspec.core.url_to_fs(path)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), inner


def read_bytes(path: str | os.PathLike) -> bytes | None:
    """A file's bytes (local path or URI); None when there is no such file."""
    fs, inner = open_fs(path)
    if fs.get_file_info(inner).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(inner) as f:
        return f.read()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a whole file so a reader (or a crash) sees the old one or the new one, never half:
    locally a temporary file in the same folder, fsynced, then os.replace; on an object store
    one upload, which the store makes visible whole."""
    fs, inner = open_fs(path)
    if not isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(posixpath.dirname(inner), recursive=True)
        with fs.open_output_stream(inner) as f:
            f.write(data)
        return
    folder = os.path.dirname(inner)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, inner)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: str | os.PathLike) -> Any | None:
    data = read_bytes(path)
    return None if data is None else json.loads(data)


def write_json(path: str | os.PathLike, value: Any) -> None:
    write_bytes(path, json.dumps(value, indent=1, default=float).encode())


def local_log_path(study_dir: str, name: str) -> str:
    """Where the driver's log goes while the study runs: the study directory, or for a remote
    study ./results/NAME/study.log, which `keep_log` copies into it."""
    return (
        join(study_dir, LOG_FILE) if not is_remote(study_dir) else join(f"results/{name}", LOG_FILE)
    )


def keep_log(study_dir: str, name: str) -> None:
    """A remote study's local log, copied into the study directory (a no-op for a local one)."""
    local = local_log_path(study_dir, name)
    if is_remote(study_dir) and os.path.isfile(local):
        with open(local, "rb") as f:
            write_bytes(join(study_dir, LOG_FILE), f.read())


# --- per-image outcomes -------------------------------------------------------------------------
# A trial reports, beside each accuracy `<split>_<name>_acc`, which images it got right as
# `<split>_outcomes_<name>`: the booleans bit-packed and base64-encoded, in the evaluation's fixed
# image order (every trial of a study evaluates the same images in the same order, so outcomes
# pair by position across configurations and seeds). The study writes them out per trial as
# OUTCOMES_FILE; the intervals (analysis/intervals.py) resample seeds and images from them.
OUTCOMES_FILE = "outcomes.parquet"
OUTCOMES_MARK = "_outcomes_"


def pack_outcomes(correct: Any) -> str:
    """Per-image booleans as text small enough for a Tune result (500 images: 88 characters)."""
    bits = np.packbits(np.asarray(correct, dtype=bool))
    return f"{len(np.asarray(correct))}:" + base64.b64encode(bits.tobytes()).decode("ascii")


def unpack_outcomes(text: str) -> np.ndarray:
    """pack_outcomes' booleans back."""
    n, _, data = text.partition(":")
    bits = np.frombuffer(base64.b64decode(data), dtype=np.uint8)
    return np.unpackbits(bits, count=int(n)).astype(bool)


def pack_ints(values: Any) -> str:
    """Image indices or labels (int32) as text, for `<split>_outcomes_index` and `_label`."""
    return "i:" + base64.b64encode(np.asarray(values, dtype="<i4").tobytes()).decode("ascii")


def unpack_ints(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text.removeprefix("i:")), dtype="<i4").astype(np.int64)


def outcomes_key(metric: str) -> str | None:
    """'test_clean_acc' -> 'test_outcomes_clean', the key of its per-image outcomes; None for a
    metric that is not an accuracy over images."""
    split, _, rest = metric.partition("_")
    if not rest.endswith("_acc") or not split:
        return None
    return f"{split}{OUTCOMES_MARK}{rest.removesuffix('_acc')}"


class StudyStore:
    """One study directory. Holds only its path (a store pickles into Tune's state as a
    string); each call opens the filesystem, which pyarrow caches."""

    def __init__(self, study_dir: str | os.PathLike):
        self.study_dir = os.fspath(study_dir)

    def __repr__(self) -> str:
        return f"StudyStore({self.study_dir!r})"

    def path(self, name: str) -> str:
        return join(self.study_dir, name)

    def exists(self, name: str = "") -> bool:
        fs, inner = open_fs(self.path(name) if name else self.study_dir)
        return fs.get_file_info(inner).type != pafs.FileType.NotFound

    def listdir(self, name: str = "") -> list[str]:
        """The names in the study directory (or a folder of it); [] when absent."""
        fs, inner = open_fs(self.path(name) if name else self.study_dir)
        if fs.get_file_info(inner).type != pafs.FileType.Directory:
            return []
        return [info.base_name for info in fs.get_file_info(pafs.FileSelector(inner))]

    def read_bytes(self, name: str) -> bytes | None:
        return read_bytes(self.path(name))

    def write_bytes(self, name: str, data: bytes) -> str:
        """Write a file into the study directory; returns its path or URI."""
        write_bytes(self.path(name), data)
        return self.path(name)

    def write_text(self, name: str, text: str) -> str:
        return self.write_bytes(name, text.encode())

    def read_json(self, name: str) -> Any | None:
        return read_json(self.path(name))

    def write_json(self, name: str, value: Any) -> str:
        write_json(self.path(name), value)
        return self.path(name)

    def read_table(self, name: str) -> pd.DataFrame | None:
        """A CSV table; None when absent (a stage not reached), an empty frame when empty."""
        data = self.read_bytes(name)
        if data is None:
            return None
        try:
            return pd.read_csv(io.BytesIO(data))
        except pd.errors.EmptyDataError:  # an empty front is written as a header-less file
            return pd.DataFrame()

    def write_table(self, name: str, table: pd.DataFrame) -> str:
        return self.write_bytes(name, table.to_csv(index=False).encode())

    def write_figure(self, name: str, figure, dpi: int = 150) -> str:
        """A matplotlib figure as PNG."""
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=dpi)
        return self.write_bytes(name, buffer.getvalue())

    def rename(self, name: str, new_name: str) -> None:
        fs, _ = open_fs(self.study_dir)
        fs.move(open_fs(self.path(name))[1], open_fs(self.path(new_name))[1])
