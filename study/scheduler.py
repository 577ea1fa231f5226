"""Multi-objective asynchronous successive halving (MO-ASHA) over the refinement rounds.

Hand-written because none of the tools the study stands on can stop a dominated trial early:
Ray Tune's ASHA and HyperBand take one metric; Optuna refuses pruning in multi-objective
studies (`Trial.report` raises with more than one direction, optuna/optuna#3450); Syne Tune's
`MOASHA` (Schmucker et al. 2021; Salinas et al. 2021) has the rule but is not a Ray scheduler.

The rule is study/mo_asha.py's (`promote`: successive non-dominated fronts, an epsilon-net
inside each, the top 1/eta go on); rungs are refinement rounds, so decisions are taken at round
boundaries only. `MOASHAScheduler` applies it to Tune trials, one decision per
configuration on the mean of its replicates; the replicate searcher (study/replicates.py) tells
Optuna that a configuration was stopped (PRUNED, never COMPLETE with a first-round figure).
"""

import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from study.mo_asha import candidate_place, rung_rounds
from study.store import is_remote, read_json, write_json

logger = logging.getLogger(__name__)

SCHEDULER_TYPES = ("fifo", "mo-asha")
SCHEDULER_DEFAULTS: dict[str, Any] = {"type": "fifo", "grace_rounds": 1, "reduction_factor": 3}
STATE_VERSION = 1


def validate_scheduler_settings(raw: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """The `scheduler:` setting, checked: a type name ('fifo' or 'mo-asha') or a mapping
    {type, grace_rounds, reduction_factor}. Returns the full mapping with defaults; raises
    ValueError with one line naming the bad key (the caller turns it into its ConfigError)."""
    if raw is None:
        raw = {}
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, Mapping):
        raise ValueError(f"scheduler: expected a mapping or a type name, got {raw!r}")
    unknown = sorted(set(raw) - set(SCHEDULER_DEFAULTS))
    if unknown:
        raise ValueError(
            f"scheduler: unknown key(s) {unknown}; allowed: {sorted(SCHEDULER_DEFAULTS)}"
        )
    out = {**SCHEDULER_DEFAULTS, **raw}
    if out["type"] not in SCHEDULER_TYPES:
        raise ValueError(f"scheduler.type: one of {list(SCHEDULER_TYPES)}, got {out['type']!r}")
    g = out["grace_rounds"]
    if isinstance(g, bool) or not isinstance(g, int) or g < 1:
        raise ValueError(f"scheduler.grace_rounds: an integer >= 1, got {g!r}")
    eta = out["reduction_factor"]
    if isinstance(eta, bool) or not isinstance(eta, int | float) or not 1 < eta < math.inf:
        raise ValueError(f"scheduler.reduction_factor: a number > 1, got {eta!r}")
    return out


# --------------------------------------------------------------------------------------------
# The Ray Tune scheduler


class MOASHAScheduler(FIFOScheduler):
    """MO-ASHA for Ray Tune (2.60): one stop-or-go decision per configuration and rung.

    objectives: metric name -> 'max' or 'min', any number. max_rounds: the trials' last round.
    Rungs: `rung_rounds(max_rounds, grace_rounds, reduction_factor)`. A result's round is
    `result['round']` (else `training_iteration`); a trial is recorded at the highest rung at or
    below it that it has not been recorded at yet (as Syne Tune's Bracket does), with the
    first result there that carries every objective.

    Configurations and replicates. A trial belongs to configuration `config['config_id']`,
    which has `replicates` trials; a trial without `config_id` is its own configuration of one.
    A configuration is decided at a rung when every one of its replicates has reached it,
    on the mean of their objective values, against the configurations decided at that rung
    before it (`promote`). Until then its value is pending: it is not among the rung's points,
    and the replicates that got there first CONTINUE (PAUSE would hold a finished round's
    resources hostage until the siblings are scheduled, and on a small cluster that waits on
    itself). So an early replicate trains on meanwhile: one extra round when the replicates run
    side by side (the ReplicateSearcher proposes them one after another, so Tune starts them
    together when resources allow), more if a sibling waits for resources. When a
    configuration is stopped, the trial that completed the rung gets STOP, every sibling gets
    STOP at its next result (also after a resume), and `on_config_stopped(config_id, rung)`
    is called once (before Tune tells the searcher the trial has finished).

    Errors. A replicate that errors before reaching a rung is not waited for: the
    configuration is decided on the replicates that did reach it (a replicate that reached it
    and errored later still counts there). A configuration whose replicates all errored is
    never decided. Tune calls `on_trial_error` also when it is about to retry a trial (and
    then `on_trial_add`), so an error takes effect at the scheduler's next call, unless the
    trial came back. A configuration whose replicates never all start is never decided: its
    trials run to the end (the safe side).

    Exempt trials: a trial whose config has `stage` other than 'search' (baselines, the
    confirmation) is never recorded or stopped.

    Resume. Ray Tune 2.60 does not checkpoint schedulers: `TuneController.save_to_dir` saves
    the trials, the searcher and the callbacks, and leaves `_scheduler_alg` out of its state
    (`ray/tune/execution/tune_controller.py`); on `Tuner.restore` the scheduler is the copy
    unpickled from `tuner.pkl`, which `TunerInternal` wrote when the Tuner was first built
    (`ray/tune/impl/tuner_internal.py`), i.e. a scheduler that has seen nothing. So this
    scheduler keeps its own state: every record and decision is written to `state_path` (a
    local path or URI; JSON, whole: study.store.write_bytes) as it happens,
    and read back both by the constructor and on unpickling when the file exists. A resumed
    study thus makes the same decisions: decided configurations keep their decision (STOP at
    the next result), pending replicate values are kept, and later candidates are ranked
    against the same points in the same order. `state_path` must be a local path (os file
    functions); it is made absolute at construction. After loading a state with stopped
    configurations, `on_config_stopped` is called again for each, once, at the scheduler's
    first call (the searcher's checkpoint may predate the decision): the callback must be
    idempotent. Without `state_path` the state lives in memory only.
    """

    def __init__(
        self,
        objectives: Mapping[str, str],
        max_rounds: int,
        grace_rounds: int = 1,
        reduction_factor: float = 3,
        replicates: int = 1,
        on_config_stopped: Callable[[str, int], None] | None = None,
        state_path: str | None = None,
        time_attr: str = "round",
    ):
        super().__init__()
        if not objectives or any(v not in ("max", "min") for v in objectives.values()):
            raise ValueError(f"objectives: metric names to 'max' or 'min', got {objectives!r}")
        if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
            raise ValueError(f"max_rounds: an integer >= 1, got {max_rounds!r}")
        if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
            raise ValueError(f"replicates: an integer >= 1, got {replicates!r}")
        validate_scheduler_settings(
            {"type": "mo-asha", "grace_rounds": grace_rounds, "reduction_factor": reduction_factor}
        )
        self.objectives = dict(objectives)
        self.maximise = [v == "max" for v in self.objectives.values()]
        self.max_rounds = max_rounds
        self.grace_rounds = grace_rounds
        self.reduction_factor = reduction_factor
        self.replicates = replicates
        self.on_config_stopped = on_config_stopped
        # A local path is made absolute: Tune's trial processes run in other folders.
        self.state_path = state_path
        if state_path and not is_remote(state_path):
            self.state_path = os.path.abspath(state_path)
        self.time_attr = time_attr
        self.rungs = rung_rounds(max_rounds, grace_rounds, reduction_factor)
        if not self.rungs:
            raise ValueError(
                f"scheduler: no rung below the last round (grace_rounds {grace_rounds} >= "
                f"rounds {max_rounds}): nothing could be stopped early; use 'fifo'"
            )
        self._supports_buffered_results = False  # one decision per round, as Tune's ASHA
        self._reset_state()
        self._load()

    # -- state ---------------------------------------------------------------------------

    def _reset_state(self) -> None:
        # config_id -> {"size": K, "trials": [trial ids], "errored": [trial ids]}
        self._configs: dict[str, dict[str, Any]] = {}
        self._config_of: dict[str, str] = {}  # trial id -> config id
        self._exempt: set[str] = set()
        # rung -> config id -> trial id -> objective values (each replicate, as reported)
        self._reports: dict[int, dict[str, dict[str, list[float]]]] = {r: {} for r in self.rungs}
        # rung -> [{"config_id", "values" (mean), "place", "n", "promoted"}], in decision order
        self._decided: dict[int, list[dict[str, Any]]] = {r: [] for r in self.rungs}
        self._stopped: dict[str, int] = {}  # config id -> rung
        self._maybe_errored: set[str] = set()
        self._announce_pending = False

    def _settings(self) -> dict[str, Any]:
        return {
            "objectives": self.objectives,
            "rungs": self.rungs,
            "reduction_factor": self.reduction_factor,
            "replicates": self.replicates,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything the decisions depend on, JSON-ready (what `state_path` holds)."""
        return {
            "version": STATE_VERSION,
            "settings": self._settings(),
            "configs": self._configs,
            "config_of": self._config_of,
            "exempt": sorted(self._exempt),
            "reports": {str(r): v for r, v in self._reports.items()},
            "decided": {str(r): v for r, v in self._decided.items()},
            "stopped": self._stopped,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"scheduler state: version {state.get('version')} is not supported")
        saved = json.loads(json.dumps(state["settings"]))
        if saved != json.loads(json.dumps(self._settings())):
            raise ValueError(
                f"scheduler state at {self.state_path} was written with other settings "
                f"({saved}) than this study's ({self._settings()}): its decisions would not "
                "be the same"
            )
        self._reset_state()
        self._configs = {k: dict(v) for k, v in state["configs"].items()}
        self._config_of = dict(state["config_of"])
        self._exempt = set(state["exempt"])
        self._reports = {r: dict(state["reports"].get(str(r), {})) for r in self.rungs}
        self._decided = {r: list(state["decided"].get(str(r), [])) for r in self.rungs}
        self._stopped = {k: int(v) for k, v in state["stopped"].items()}
        self._announce_pending = bool(self._stopped)

    def _load(self) -> None:
        state = read_json(self.state_path) if self.state_path else None
        if state is not None:
            self.load_state_dict(state)
            logger.info(
                "MO-ASHA: resumed from %s (%d configuration(s) stopped so far)",
                self.state_path,
                len(self._stopped),
            )

    def _persist(self) -> None:
        if self.state_path:
            write_json(self.state_path, self.state_dict())

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Tuner.restore unpickles the scheduler from tuner.pkl (its state when the Tuner was
        # built): take the decisions made since from the state file.
        self.__dict__.update(state)
        self._load()

    def save(self, checkpoint_path: str) -> None:
        write_json(checkpoint_path, self.state_dict())

    def restore(self, checkpoint_path: str) -> None:
        self.load_state_dict(read_json(checkpoint_path))

    # -- bookkeeping ---------------------------------------------------------------------

    def _register(self, trial) -> str | None:
        """The trial's configuration id (None for exempt trials), registering it if new."""
        tid = trial.trial_id
        if tid in self._exempt:
            return None
        if tid in self._config_of:
            return self._config_of[tid]
        config = getattr(trial, "config", None) or {}
        if config.get("stage", "search") != "search":
            self._exempt.add(tid)
            self._persist()
            return None
        cid = config.get("config_id")
        cid, size = (str(cid), self.replicates) if cid is not None else (str(tid), 1)
        entry = self._configs.setdefault(cid, {"size": size, "trials": [], "errored": []})
        entry["trials"].append(tid)
        self._config_of[tid] = cid
        self._persist()
        return cid

    def _round_of(self, result: Mapping[str, Any]) -> int | None:
        r = result.get(self.time_attr, result.get("training_iteration"))
        return None if r is None else int(r)

    def _values(self, result: Mapping[str, Any]) -> list[float] | None:
        if any(m not in result or result[m] is None for m in self.objectives):
            return None
        return [float(result[m]) for m in self.objectives]

    def _ready(self, cid: str, rung: int) -> bool:
        entry = self._configs[cid]
        if len(entry["trials"]) < entry["size"]:
            return False  # not every replicate has started
        reported = self._reports[rung].get(cid, {})
        if not reported:
            return False
        alive = [t for t in entry["trials"] if t not in entry["errored"]]
        return all(t in reported for t in alive)

    def _is_decided(self, cid: str, rung: int) -> bool:
        return any(d["config_id"] == cid for d in self._decided[rung])

    def _decide_ready(self, cid: str) -> None:
        """Take every decision this configuration is ready for, lowest rung first."""
        for rung in self.rungs:
            if cid in self._stopped:
                return
            if self._is_decided(cid, rung):
                continue
            if not self._ready(cid, rung):
                return
            self._decide(cid, rung)

    def _decide(self, cid: str, rung: int) -> None:
        reported = self._reports[rung][cid]
        mean = np.mean(np.array(list(reported.values()), dtype=float), axis=0).tolist()
        points = {d["config_id"]: d["values"] for d in self._decided[rung]}
        points[cid] = mean
        place = candidate_place(points, cid, self.maximise)
        go_on = place * self.reduction_factor <= len(points)  # = promote(points, cid, ...)
        self._decided[rung].append(
            {"config_id": cid, "values": mean, "place": place, "n": len(points), "promoted": go_on}
        )
        if not go_on:
            self._stopped[cid] = rung
        self._persist()
        logger.info(
            "MO-ASHA round %d: configuration %s %s (place %d of %d, mean %s over %d replicate(s))",
            rung,
            cid,
            "goes on" if go_on else "STOPPED",
            place + 1,
            len(points),
            dict(zip(self.objectives, mean, strict=True)),
            len(reported),
        )
        if not go_on and self.on_config_stopped is not None:
            self.on_config_stopped(cid, rung)

    def _settle(self) -> None:
        """Apply errors that stuck (the trial was not re-added), and, after a resume, announce
        the configurations stopped before it."""
        if self._announce_pending:
            self._announce_pending = False
            if self.on_config_stopped is not None:
                for cid, rung in self._stopped.items():
                    self.on_config_stopped(cid, rung)
        if not self._maybe_errored:
            return
        errored, self._maybe_errored = self._maybe_errored, set()
        touched = []
        for tid in sorted(errored):
            cid = self._config_of.get(tid)
            if cid is None:
                continue
            if tid not in self._configs[cid]["errored"]:
                self._configs[cid]["errored"].append(tid)
                touched.append(cid)
        if touched:
            self._persist()
        for cid in touched:
            self._decide_ready(cid)

    # -- Tune's TrialScheduler interface --------------------------------------------------

    def on_trial_add(self, tune_controller, trial) -> None:
        tid = trial.trial_id
        self._maybe_errored.discard(tid)  # a retried trial is back
        self._settle()
        cid = self._register(trial)
        if cid is None:
            return
        errored = self._configs[cid]["errored"]
        if getattr(trial, "status", None) == "ERROR":  # restored errored, not resumed
            if tid not in errored:
                errored.append(tid)
                self._persist()
                self._decide_ready(cid)
        elif tid in errored:  # resumed after an error
            errored.remove(tid)
            self._persist()

    def on_trial_error(self, tune_controller, trial) -> None:
        if trial.trial_id in self._config_of:
            self._maybe_errored.add(trial.trial_id)

    def on_trial_remove(self, tune_controller, trial) -> None:
        # A PENDING or PAUSED trial taken off: it will not report, like an errored one.
        self.on_trial_error(tune_controller, trial)
        self._settle()

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        self._settle()

    def choose_trial_to_run(self, tune_controller):
        self._settle()
        return super().choose_trial_to_run(tune_controller)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._settle()
        cid = self._register(trial)
        if cid is None:
            return TrialScheduler.CONTINUE
        if cid in self._stopped:
            return TrialScheduler.STOP
        rnd = self._round_of(result)
        values = self._values(result)
        if rnd is None or values is None:
            return TrialScheduler.CONTINUE
        tid = trial.trial_id
        unrecorded = [
            r for r in self.rungs if r <= rnd and tid not in self._reports[r].get(cid, {})
        ]
        if not unrecorded:
            return TrialScheduler.CONTINUE
        self._reports[unrecorded[-1]].setdefault(cid, {})[tid] = values
        self._persist()
        self._decide_ready(cid)
        return TrialScheduler.STOP if cid in self._stopped else TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        decided = {r: len(d) for r, d in self._decided.items()}
        return (
            f"MO-ASHA over {', '.join(f'{k} ({v})' for k, v in self.objectives.items())}: "
            f"rungs at rounds {self.rungs}, reduction factor {self.reduction_factor}, "
            f"decided per rung {decided}, stopped {len(self._stopped)}"
        )

    # -- read-only views -----------------------------------------------------------------

    @property
    def stopped(self) -> dict[str, int]:
        """config id -> the rung (round) at which it was stopped."""
        return dict(self._stopped)

    def decisions(self) -> list[dict[str, Any]]:
        """One row per decision: rung, config_id, values (mean), place, n, promoted."""
        return [{"rung": r, **d} for r in self.rungs for d in self._decided[r]]


def stopped_configs(state_path: str) -> dict[str, int]:
    """config id -> rung (round) at which MO-ASHA stopped it, from the scheduler's state file
    ({} if there is none: no scheduler, or nothing recorded yet)."""
    state = read_json(state_path)
    return {k: int(v) for k, v in (state or {}).get("stopped", {}).items()}


def rung_decisions(state_path: str) -> list[dict[str, Any]]:
    """Every decision from the state file, in the order taken per rung: rung, config_id,
    values (mean over replicates, in the objectives' order), place (0-based), n, promoted."""
    state = read_json(state_path)
    if state is None:
        return []
    return [
        {"rung": int(r), **d}
        for r, rows in sorted(state["decided"].items(), key=lambda kv: int(kv[0]))
        for d in rows
    ]
