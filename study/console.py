"""What a person sees while a study runs: our console lines, with Ray's own output in a log file.

- `StudyLog(log_path, verbose)`, which the study opens and closes: while open it sends everything
  that is not ours (Python logging, warnings, sys.stdout/sys.stderr, file descriptors 1 and 2:
  Ray's C++ components, Ray's forwarding of worker output, Tune's and Train's printing) to the
  study's log file, and gives the stream our lines go to. `--verbose` changes nothing.
- `StudyConsole`, a Ray Tune callback: one line per finished trial, one per error (always, with
  its one-line reason), a compact status line (done / running / pending / errored counts and the
  time left) when the counts change, at most every `min_interval_s` seconds.
- The formatting is analysis/tables.py's, shared with `python -m study.status` and the report.

What Ray 2.60 needs besides the redirection (checked in its source; see `quiet_ray_kwargs` and
`QUIET_TUNE_RUN_CONFIG`):

- Tune's own console output is the "new output engine" (`ray/tune/experimental/output.py`,
  on unless `RAY_AIR_NEW_OUTPUT=0`: `get_air_verbosity`, line 117). `tune.RunConfig(verbose=0)`
  (AirVerbosity.SILENT) stops the per-trial configuration boxes (`on_trial_start` returns below
  `_start_end_verbosity` = DEFAULT, lines 792-794), the result boxes (`on_trial_complete`, lines
  727-731) and the status tables (`print_heartbeat`, lines 676-678). The default is
  `AirVerbosity.DEFAULT` (`ray/air/config.py`, lines 660-665). Two things print whatever the
  verbosity: the experiment's start table and results path (`TuneTerminalReporter.
  experiment_started`, lines 919-953 and 648-665) and the error block (`on_trial_error`, lines
  745-760); they go to sys.stdout, i.e. the log file. A `progress_reporter` must not be passed:
  with the new engine Tune ignores it with a warning ("AIR_VERBOSITY is set, ignoring passed-in
  ProgressReporter", `ray/tune/tune.py`, lines 899-903). A restored Tuner keeps the RunConfig
  (callbacks and verbose included) pickled in tuner.pkl (`ray/tune/impl/tuner_internal.py`,
  lines 184-186 and 379-380), not the one of the resuming process.
- Train's `TrainingReport(...)` dumps are an INFO record of the logger
  `ray.train.v2._internal.execution.context` in every Train worker ("Reporting training result
  {i}: {training_report} from rank {r}", `ray/train/v2/_internal/execution/context.py`, line
  390), printed by the worker's console handler (`ray/train/v2/_internal/logging/logging.py`,
  lines 165-168) and forwarded to the driver. `ray.train.RunConfig(logging_config=
  ray.train.LoggingConfig(log_level="WARNING"))` in the trial's TorchTrainer drops them at the
  source (`TrainLogLevelFilter`, lines 68-77, filters `ray.train.*` records below the level).
- Worker output (prints, tracebacks, raylet warnings such as "N PYTHON worker processes have
  been started ... maximum expected startup concurrency") reaches the driver through
  `log_to_driver` and is printed to whatever `sys.stdout`/`sys.stderr` are at that moment
  (`print_to_stdstream`, `ray/_private/worker.py`, lines 2206-2223): the log file once
  redirected. Ray's driver logger writes to `sys.stderr` at emit time (`PlainRayHandler`,
  `ray/_private/log.py`, lines 32-64), so it needs no change either. Errors the GCS publishes to
  the driver go through `logger.warning` (`listen_error_messages`, worker.py line 2463), and the
  driver's C++ core worker writes to file descriptor 2: hence the os.dup2.
"""

import contextlib
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from ray.tune import Callback

from analysis.results import BASELINES
from analysis.tables import (
    count_statuses,
    eta_seconds,
    format_counts,
    format_duration,
    format_value,
    is_accuracy,
    is_missing,
    short_metric,
)

# Passed to every tune.RunConfig of the study unless --verbose (see the module docstring).
QUIET_TUNE_RUN_CONFIG: dict[str, Any] = {"verbose": 0}

_console: TextIO | None = None  # the open StudyLog's console, for unpickled callbacks


# --- the Tune callback ------------------------------------------------------------------------


def console_stream() -> TextIO:
    """Where our lines go: the open StudyLog's console, else sys.stdout."""
    return _console if _console is not None else sys.stdout


def print_error(message: str) -> None:
    """`error: message` on stderr, and on the console too when the log file took stderr."""
    print(f"error: {message}", file=sys.stderr)
    if logs_redirected():
        print(f"error: {message}", file=console_stream())


def logs_redirected() -> bool:
    """Whether a StudyLog sends Ray's output to a log file (then Tune's own is silenced)."""
    return _console is not None and _console is not sys.stdout


FATAL_ERROR = "TrialError:"  # how a trial that cannot finish names its error (trainables/trial.py)


def error_reason(trial: Any) -> str:
    """The last non-empty line of a trial's error (its error.txt, written by Tune before it
    calls on_trial_error: Trial.handle_error, ray/tune/experiment/trial.py lines 823-849), e.g.
    'RuntimeError: training diverged'."""
    text = ""
    path = getattr(trial, "error_file", None)  # local: <trial dir>/error.txt
    try:
        if path and os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        if not text.strip() and hasattr(trial, "get_error"):
            text = trial.get_error() or ""  # the copy in the experiment's storage
        if not text.strip() and hasattr(trial, "get_pickled_error"):
            text = str(trial.get_pickled_error() or "")
    except Exception:  # a reason we cannot read must not stop the study
        text = ""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Failure # ")]
    if not lines:
        return "no error message (see the trial's error.txt)"
    reason = lines[-1]
    return reason if len(reason) <= 200 else reason[:197] + "..."


def stage_status(trial: Any) -> str:
    """Tune's status of a live trial, but STOPPED for one Tune ended before it finished: an
    early-stopping decision or an interrupt leaves TERMINATED without the `done` that Tune adds
    to a finished trial's last result (tune_controller.py, `_process_trial_result`)."""
    if trial.status == "TERMINATED" and not (trial.last_result or {}).get("done"):
        return "STOPPED"
    return str(trial.status)


class StudyConsole(Callback):
    """One line per finished or failed trial and a status line, for one stage of the study.

    stage: search, baselines or confirmation; total: the trials the stage will run; objectives:
    {metric: direction} shown per trial (percent for accuracies); searched: the searched keys
    (values shown with 3 significant digits; not for baselines); stream: where lines go (None:
    console_stream()); concurrency: trials at once, for the time left (None: those running).
    A status line is printed when the number of finished trials changed and at least
    `min_interval_s` passed since the last one, or every `heartbeat_s` while nothing finishes.
    The callback pickles without its stream (Tune keeps callbacks in tuner.pkl, and a restored
    Tuner uses those), so a restored one writes to console_stream().
    """

    def __init__(
        self,
        stage: str,
        total: int,
        objectives: Mapping[str, str],
        searched: Sequence[str],
        stream: TextIO | None = None,
        concurrency: int | None = None,
        *,
        min_interval_s: float = 120.0,
        heartbeat_s: float = 300.0,
        clock=time.monotonic,
    ):
        self.stage = stage
        self.total = int(total)
        self.objectives = dict(objectives)
        self.searched = list(searched)
        self._stream = stream
        self.concurrency = concurrency
        self.min_interval_s = min_interval_s
        self.heartbeat_s = heartbeat_s
        self.clock = clock
        self._started: dict[str, float] = {}
        self._t0 = clock()
        self._last_status_t = self._t0
        self._last_finished = 0

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_stream"] = None
        state["clock"] = None if self.clock is time.monotonic else self.clock
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.clock is None:
            self.clock = time.monotonic

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else console_stream()

    def _print(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    # -- lines ---------------------------------------------------------------------------------

    def _who(self, trial: Any) -> str:
        config = getattr(trial, "config", None) or {}
        config_id = config.get("config_id") or trial.trial_id
        replicate = config.get("replicate")
        return f"{config_id}/r{replicate}" if replicate is not None else str(config_id)

    def _values(self, config: Mapping[str, Any]) -> str:
        if config.get("method") in BASELINES:
            return ""
        return " ".join(f"{k}={format_value(config[k], k)}" for k in self.searched if k in config)

    def _wall(self, trial: Any, result: Mapping[str, Any]) -> float | None:
        wall = result.get("time_total_s")
        if isinstance(wall, int | float) and math.isfinite(wall):
            return float(wall)
        started = self._started.get(trial.trial_id)
        return None if started is None else self.clock() - started

    def trial_line(self, trial: Any) -> str:
        """'[search] c003/r1  mask_ratio=0.123 reg_weight=0.0456  clean 97.1%  robust 45.2%
        1m05s  MASKING' (+ 'stopped at round 1' for a trial stopped early)."""
        config = getattr(trial, "config", None) or {}
        result = trial.last_result or {}
        parts = [f"[{self.stage}] {self._who(trial)}"]
        values = self._values(config)
        if values:
            parts.append(values)
        metrics = []
        for m in self.objectives:
            v = result.get(m)
            shown = "-" if is_missing(v) else format_value(v, m) + ("%" if is_accuracy(m) else "")
            metrics.append(f"{short_metric(m)} {shown}")
        parts.append("  ".join(metrics))
        wall = self._wall(trial, result)
        if wall is not None:
            parts.append(format_duration(wall))
        rounds, done_round = config.get("rounds"), result.get("round")
        if isinstance(rounds, int) and isinstance(done_round, int | float) and done_round < rounds:
            parts.append(f"stopped at round {int(done_round)}")
        if result.get("val_masking") == 1 or result.get("test_masking") == 1:
            parts.append("MASKING")
        return "  ".join(parts)

    def error_line(self, trial: Any, retrying: bool = False) -> str:
        """'ERROR [search] c003/r1 (trial 1a2b3_00004): RuntimeError: boom'."""
        tag = "RETRY" if retrying else "ERROR"
        return (
            f"{tag} [{self.stage}] {self._who(trial)} (trial {trial.trial_id}): "
            f"{error_reason(trial)}"
        )

    def status_line(self, trials: Sequence[Any]) -> str:
        """'[search] 6/16 done, 2 running, 8 pending, 0 errored; ~5m00s left'."""
        statuses = [stage_status(t) for t in trials]
        counts = count_statuses(statuses, total=self.total)
        walls = [
            w
            for t, status in zip(trials, statuses, strict=True)
            if status == "TERMINATED"
            and isinstance(w := (t.last_result or {}).get("time_total_s"), int | float)
        ]
        mean_wall = sum(walls) / len(walls) if walls else None
        concurrency = self.concurrency or counts["running"] or 1
        eta = eta_seconds(counts, mean_wall, concurrency)
        return f"[{self.stage}] " + format_counts(counts, self.total, eta)

    # -- Tune's hooks --------------------------------------------------------------------------

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        self._t0 = self._last_status_t = self.clock()
        at_once = f", up to {self.concurrency} at a time" if self.concurrency else ""
        self._print(f"[{self.stage}] {self.total} trials{at_once}")

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info):
        self._started[trial.trial_id] = self.clock()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info):
        self._print(self.trial_line(trial))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info):
        self._print(self.error_line(trial))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info):
        # A TrialError (divergence, out of memory) is retried by Tune like any error, but the
        # retry ends at once with the same reason (trainables/trial.py FATAL_FILE): its ERROR
        # line follows, and a RETRY line would promise a second attempt that never runs.
        if FATAL_ERROR not in error_reason(trial):
            self._print(self.error_line(trial, retrying=True))

    def on_step_end(self, iteration: int, trials: list, **info):
        now = self.clock()
        since = now - self._last_status_t
        if since < min(self.min_interval_s, self.heartbeat_s):
            return
        statuses = [stage_status(t) for t in trials]
        finished = sum(s in ("TERMINATED", "ERROR", "STOPPED") for s in statuses)
        changed = finished != self._last_finished
        if (changed and since >= self.min_interval_s) or (
            "RUNNING" in statuses and since >= self.heartbeat_s
        ):
            self._print(self.status_line(trials))
            self._last_status_t, self._last_finished = now, finished

    def on_experiment_end(self, trials: list, **info):
        elapsed = format_duration(self.clock() - self._t0)
        self._print(f"{self.status_line(trials)} (stage ran {elapsed})")


# --- Ray's output into the log file ----------------------------------------------------------


class _LogFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")


class StudyLog:
    """Unless verbose, sends all output that is not ours to log_path (appended) for as long as
    it is open; `console` is the stream for our lines (a dup of the original stdout,
    line-buffered). A context manager: on exit, also on an error, it puts back what it changed.

    Redirected: file descriptors 1 and 2 (the driver's C++ core worker, processes started later
    such as a local raylet and GCS inherit them), sys.stdout and sys.stderr (Tune's and Ray's
    prints, worker output forwarded by log_to_driver, Ray's loggers, which write to sys.stderr
    at emit time), the root logger (a handler on the log file) and warnings (through logging).
    An error leaving the block leaves its traceback in the log and one line on the console; it
    is marked `reported` for the command line, which then exits without a second traceback.
    Errors of the `handled` types pass through untouched: the caller reports those itself.

    verbose: `console` is sys.stdout and nothing changes. Open it before ray.init (a local
    Ray's processes inherit fds 1 and 2 when they start). One is open at a time.
    """

    def __init__(
        self,
        log_path: str | os.PathLike,
        verbose: bool = False,
        handled: tuple[type[BaseException], ...] = (),
    ):
        self.log_path = os.fspath(log_path)
        self.verbose = verbose
        self.handled = (SystemExit, *handled)
        self.console: TextIO = sys.stdout
        self._saved: dict[str, Any] | None = None

    def __enter__(self) -> "StudyLog":
        global _console
        if _console is not None:
            raise RuntimeError("a StudyLog is already open")
        if self.verbose:
            _console = self.console = sys.stdout
            return self
        os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
        _flush_all()
        root = logging.getLogger()
        self._saved = {
            "fds": (os.dup(1), os.dup(2)),
            "streams": (sys.stdout, sys.stderr),
            "handlers": list(root.handlers),
            "color": os.environ.get("RAY_COLOR_PREFIX"),
        }
        self.console = open(  # noqa: SIM115 (closed on exit)
            os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace", closefd=True
        )
        self._log = open(self.log_path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
        os.dup2(self._log.fileno(), 1)
        os.dup2(self._log.fileno(), 2)
        sys.stdout = sys.stderr = self._log
        # Forwarded worker lines without ANSI colour codes: a file, not a terminal (read by the
        # driver when it prints them: ray/_private/worker.py, lines 2389-2392).
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        if not root.handlers:  # one there already writes to fd 1 or 2: the log file now
            handler = logging.StreamHandler(self._log)
            handler.setFormatter(_LogFormatter())
            root.addHandler(handler)
        logging.captureWarnings(True)  # warnings as records of `py.warnings`, timestamped
        _console = self.console
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        global _console
        try:
            if exc is not None and not issubclass(exc_type, self.handled) and not self.verbose:
                traceback.print_exception(exc_type, exc, tb, file=self._log)
                if issubclass(exc_type, KeyboardInterrupt):
                    reason = "interrupted"
                else:
                    reason = traceback.format_exception_only(exc_type, exc)[-1].strip()
                self.console.write(f"error: {reason} (details in {self.log_path})\n")
                exc.reported = True
        finally:
            _console = None
            if self._saved is not None:
                self._restore()

    def _restore(self) -> None:
        saved, self._saved = self._saved, None
        _flush_all()
        logging.captureWarnings(False)
        root = logging.getLogger()
        for handler in root.handlers[:]:
            if handler not in saved["handlers"]:
                root.removeHandler(handler)
        sys.stdout, sys.stderr = saved["streams"]
        for fd, copy in zip((1, 2), saved["fds"], strict=True):
            os.dup2(copy, fd)
            os.close(copy)
        if saved["color"] is None:
            os.environ.pop("RAY_COLOR_PREFIX", None)
        self.console.close()
        self._log.close()


def _flush_all() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.flush()


def exit_code_of_reported(error: BaseException) -> int:
    """The exit code of an error the StudyLog already reported (traceback in the log, one line
    on the console); any other error propagates with its traceback."""
    if not getattr(error, "reported", False):
        raise error
    return 130 if isinstance(error, KeyboardInterrupt) else 1


def quiet_ray_kwargs(verbose: bool = False) -> dict[str, Any]:
    """Keyword arguments for ray.init.

    Quiet: `log_to_driver=True` explicitly (Ray's default unless RAY_LOG_TO_DRIVER=0,
    ray/_private/ray_constants.py line 28, ray/_private/worker.py lines 1629-1630), so the
    workers' output and tracebacks are forwarded to the driver (worker.py lines 2783-2792) and
    land in the study's log file beside everything else, instead of only in Ray's session
    folder. Nothing else is needed from ray.init: the redirection does the rest (module
    docstring), and `logging_level`/`logging_config` would only thin the log file, which is
    where a failure is investigated. Verbose: nothing (Ray's defaults).
    """
    return {} if verbose else {"log_to_driver": True}
