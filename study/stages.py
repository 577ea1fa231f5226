"""The study's stages, run to their end: the shared base, the search (or an ablation's
variants), the baselines and the confirmation on the test split, each a Ray Tune experiment in
the study directory. `run_study` runs them all in order; `python -m study.sweep` and
`python -m study.confirm` are thin command lines over this module.

Every stage goes through `run_stage`, which builds a Tuner (or restores the one a previous run
left, so a resumed stage keeps its finished trials and its searcher's state) and `fit_stage`,
which tells a stage that finished from one Ctrl-C stopped.
"""

import dataclasses
import json
import math
import os
import time
from typing import Any

import optuna
import pandas as pd
import ray
from ray import tune
from ray.tune.search import BasicVariantGenerator, Searcher
from ray.tune.search.optuna import OptunaSearch

from analysis.replicates import ANSWER_METRICS, REFERENCE
from analysis.results import load_trials
from study.base import confirmation_bases, prepare_base, write_base_record
from study.config import (
    ABLATION_VARIANTS,
    BaselineSearch,
    ConfigError,
    StudyConfig,
    confirm_seed,
    replicate_seed,
)
from study.console import (
    QUIET_TUNE_RUN_CONFIG,
    StudyConsole,
    StudyLog,
    console_stream,
    logs_redirected,
    quiet_ray_kwargs,
)
from study.outputs import (
    confirmed_ids,
    print_answer,
    summarize,
    write_confirmation_tables,
    write_study_file,
)
from study.preflight import check_address, check_paths, default_concurrency, resource_shortfall
from study.replicates import ReplicateSearcher
from study.scheduler import MOASHAScheduler
from study.store import (
    BASELINES_DIR,
    CONFIRMATION_DIR,
    CONFIRMATION_TABLES,
    PLAN_FILE,
    SCHEDULER_STATE_FILE,
    TRAIN_RUNS_DIR,
    StudyStore,
    baseline_search_name,
    join,
    keep_log,
    local_log_path,
)
from trainables import trial
from trainables.base import base_checkpoint
from trainables.config import TRIAL_FIELDS, make_trial_config
from trainables.data import DataError

# How often Tune restarts an in-process trial whose process died (as Train does its workers).
TRIAL_RETRIES = 2


class StageInterrupted(RuntimeError):
    """A stage ended with trials unfinished: Ctrl-C (or SIGUSR1) made Tune stop it, save its
    state and return from fit() as if it had finished (ray/tune/tune.py, lines 1005-1022).
    Here, not in study/sweep.py: `python -m study.sweep` runs that module as __main__, where a
    second copy of the class would not catch the one study/confirm.py raises."""


def fit_stage(tuner, path: str, total: int, stage: str) -> None:
    """tuner.fit(), then raise StageInterrupted unless all `total` trials of the stage finished
    (TERMINATED or ERROR) in the experiment state Tune saved last. fit()'s own result cannot
    tell: after an interrupt Tune saves the trials it stops as RUNNING, then marks them
    TERMINATED in memory (tune_controller.py, `_cleanup_trials`)."""
    tuner.fit()
    trials = load_trials(path)
    trials = trials[trials["experiment"] == path.rstrip("/").rsplit("/", 1)[-1]]
    finished = int(trials["status"].isin(["TERMINATED", "ERROR"]).sum())
    if finished < total:
        raise StageInterrupted(
            f"the {stage} stage stopped with {total - finished} of its {total} trials unfinished"
        )


def connect_ray(address: str | None, train_runs: bool = True) -> bool:
    """Join the given cluster, else RAY_ADDRESS or a local `ray start`, else start one here.
    Returns whether this call connected (the caller then owns the connection). train_runs:
    whether the study runs Ray Train (a base, or Train worker trials), which needs a local
    cluster's dashboard."""
    address = address or os.environ.get("RAY_ADDRESS")
    check_address(address)
    if ray.is_initialized():  # e.g. a notebook or a test that started Ray itself
        return False
    quiet = quiet_ray_kwargs(verbose=not logs_redirected())
    if address and address != "local":
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as e:
            raise ConfigError(f"--address: cannot join the Ray cluster at {address}: {e}") from e
        return True
    if address is None:
        try:
            ray.init(address="auto", **quiet)
            return True
        except ConnectionError:
            pass
    # One machine has no spot node to lose: skip Train's preemption watcher, an actor process
    # per trial (about 1.3 s of CPU importing Ray Train; docs/benchmarks.md). Set by the user: kept.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    # Ray Train needs the state API, which the dashboard serves: bound to localhost only, and
    # started only for a study that runs Ray Train (one process less to start otherwise).
    ray.init(address="local", include_dashboard=train_runs, dashboard_host="127.0.0.1", **quiet)
    return True


def search_space(cfg: StudyConfig) -> dict[str, Any]:
    """The Tune param_space: the fixed trial config plus a Tune distribution per searched key."""
    space: dict[str, Any] = dict(vars(cfg.trial))
    for key, spec in cfg.search.items():
        if spec.type == "uniform":
            space[key] = tune.uniform(spec.low, spec.high)
        elif spec.type == "loguniform":
            space[key] = tune.loguniform(spec.low, spec.high)
        elif spec.type == "int":
            space[key] = tune.randint(int(spec.low), int(spec.high) + 1)
        else:
            space[key] = tune.choice(list(spec.values))
    return space


def make_searcher(cfg: StudyConfig, id_prefix: str = "c"):
    """Optuna through Ray Tune, multi-objective (metric and mode are lists, set only here:
    setting them on TuneConfig too would silently make the study single-objective), wrapped so
    each configuration runs `replicates` times and Optuna sees the mean."""

    if cfg.searcher == "random":
        sampler = optuna.samplers.RandomSampler(seed=cfg.seed)
    else:
        # TPE samples at random until n_startup_trials have finished (default 10): start
        # modelling after a third of the budget, or a small study would be random search.
        sampler = optuna.samplers.TPESampler(
            seed=cfg.seed, multivariate=True, n_startup_trials=max(2, cfg.num_samples // 3)
        )
    optuna_search = OptunaSearch(
        metric=list(cfg.objectives), mode=list(cfg.objectives.values()), sampler=sampler
    )
    return ReplicateSearcher(optuna_search, cfg.replicates, cfg.trial.seed, id_prefix)


def _trainable(cfg: StudyConfig):

    trainable = tune.with_parameters(
        trial.run_trial, train_storage=join(cfg.study_dir, TRAIN_RUNS_DIR)
    )
    bundles = trial.trial_resources(cfg.trial)
    return tune.with_resources(trainable, tune.PlacementGroupFactory(bundles))


# What the console shows per finished trial of each stage: the search's objectives, and for the
# confirmation the answer's metrics (test clean, robust and AutoAttack accuracy).
CONFIRMATION_SHOWN = dict.fromkeys(ANSWER_METRICS, "max")


def _console_callback(cfg: StudyConfig, stage: str, total: int) -> StudyConsole:
    shown = CONFIRMATION_SHOWN if stage == "confirmation" else cfg.objectives
    return StudyConsole(stage, total, shown, list(cfg.search), concurrency=_concurrency(cfg))


def _run_stage(
    cfg: StudyConfig,
    path: str,
    param_space: dict,
    search_alg,
    num_samples: int,
    stage: str,
    scheduler=None,
) -> None:
    """Run a stage's `num_samples` trials to their end (fit_stage: an interrupt raises
    StageInterrupted), with a new Tuner at path or the one already there (resumed with its
    searcher's state and its console callback: Tune keeps the RunConfig in tuner.pkl).

    search_alg: a Searcher (Tune limits its concurrency to max_concurrent_trials) or a
    BasicVariantGenerator that limits its own. stage: search, baselines or confirmation."""
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(
            path, trainable=_trainable(cfg), resume_unfinished=True, resume_errored=True
        )
    else:
        storage, name = path.rstrip("/").rsplit("/", 1)
        limit = _concurrency(cfg) if isinstance(search_alg, Searcher) else None
        tuner = tune.Tuner(
            _trainable(cfg),
            param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=search_alg,
                num_samples=num_samples,
                max_concurrent_trials=limit,
                trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
                scheduler=scheduler,
                # An in-process trial's process, and its imports, is kept for the next trial of
                # the same resources (docs/benchmarks.md, "Reusing trial processes").
                reuse_actors=cfg.trial.num_workers == 0,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                # In-process trials: a process that died is retried from its last round (a
                # Train run retries its own workers; trainables/trial.py).
                failure_config=tune.FailureConfig(
                    max_failures=TRIAL_RETRIES if cfg.trial.num_workers == 0 else 0
                ),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=[_console_callback(cfg, stage, num_samples)],
                **(QUIET_TUNE_RUN_CONFIG if logs_redirected() else {}),
            ),
        )
    fit_stage(tuner, path, num_samples, stage)


def _concurrency(cfg: StudyConfig) -> int:

    return cfg.max_concurrent_trials or default_concurrency(cfg, ray.cluster_resources())


def run_fixed_trials(cfg: StudyConfig, path: str, points: list[dict[str, Any]], stage: str):
    """Run exactly these (complete) trial configs, in order, to their end: an ablation's
    variants, the baselines and the confirmation. (Tune wants every key of a point in the
    param_space: the study's trial config is that space, and each point overrides it. A key
    some point sets otherwise is None in the space: Tune warns of every point that differs
    from a constant there, and every point sets all its keys.)"""
    space = dict(vars(cfg.trial))
    for point in points:
        if missing := set(space) - set(point):
            raise ValueError(f"a {stage} point lacks {sorted(missing)}: points are complete")
        space.update({k: None for k, v in point.items() if space.get(k) != v})
    generator = BasicVariantGenerator(points_to_evaluate=points, max_concurrent=_concurrency(cfg))
    _run_stage(cfg, path, space, generator, len(points), stage)


def run_search(cfg: StudyConfig) -> None:
    """The search: Optuna samples the searched keys, each configuration runs `replicates`
    times (stage "search"), the rest of the trial config is fixed; for an ablation, its
    variants instead."""
    if cfg.ablation is not None:
        run_ablation_variants(cfg)
        return
    space = {**search_space(cfg), "stage": "search"}
    searcher = make_searcher(cfg)
    scheduler = None
    if cfg.scheduler["type"] == "mo-asha":
        scheduler = MOASHAScheduler(
            cfg.objectives,
            max_rounds=cfg.trial.rounds,
            grace_rounds=cfg.scheduler["grace_rounds"],
            reduction_factor=cfg.scheduler["reduction_factor"],
            replicates=cfg.replicates,
            on_config_stopped=searcher.config_stopped,
            state_path=scheduler_state_path(cfg),
        )
    total = cfg.num_samples * cfg.replicates
    _run_stage(cfg, cfg.study_dir, space, searcher, total, "search", scheduler)


def scheduler_state_path(cfg: StudyConfig) -> str:
    """The early-stopping decisions, in the study directory (a local path or URI)."""
    return StudyStore(cfg.study_dir).path(SCHEDULER_STATE_FILE)


def _replicated(
    cfg: StudyConfig, configurations: dict[str, dict[str, Any]], stage: str
) -> list[dict[str, Any]]:
    """Each configuration (config_id -> its overrides of the trial config) at the replicate
    seeds, as complete trial points of the stage."""
    return [
        {
            **vars(cfg.trial),
            **overrides,
            "config_id": config_id,
            "replicate": r,
            "seed": replicate_seed(cfg.trial.seed, r),
            "stage": stage,
        }
        for config_id, overrides in configurations.items()
        for r in range(cfg.replicates)
    ]


def baseline_points(cfg: StudyConfig) -> list[dict[str, Any]]:
    """Every baseline method with the fixed trial config, at the search's replicate seeds."""
    return _replicated(cfg, {m: {"method": m} for m in cfg.baselines}, BASELINES_DIR)


def ablation_points(cfg: StudyConfig) -> list[dict[str, Any]]:
    """Every variant of the ablation's setting at the replicate seeds: the study's own
    configurations, in place of the searched ones (stage search: validation only)."""
    variants = {v: {**cfg.ablation, **switch} for v, switch in ABLATION_VARIANTS.items()}
    return _replicated(cfg, variants, "search")


def run_ablation_variants(cfg: StudyConfig) -> None:
    """The ablation's variants, `replicates` seeds each, in the study's own experiment folder
    where a search's trials would be, so every table treats them as its configurations."""
    run_fixed_trials(cfg, cfg.study_dir, ablation_points(cfg), "search")


def run_baselines(cfg: StudyConfig) -> None:
    """The fixed baselines, `replicates` seeds each, in study_dir/baselines, then each searched
    baseline in its own experiment, run or resumed to their end."""
    if cfg.baselines:
        path = join(cfg.study_dir, BASELINES_DIR)
        run_fixed_trials(cfg, path, baseline_points(cfg), BASELINES_DIR)
    for baseline in cfg.baseline_searches:
        run_baseline_search(cfg, baseline)


def baseline_study(cfg: StudyConfig, baseline: BaselineSearch) -> StudyConfig:
    """The study as a searched baseline runs it: its method, its space and its number of
    configurations; the same replicates, trial budget, searcher and seed as the method's, and
    no early stopping (a baseline never gets less than its full budget)."""
    return dataclasses.replace(
        cfg,
        trial=dataclasses.replace(cfg.trial, method=baseline.method),
        search=baseline.search,
        num_samples=baseline.num_samples,
        scheduler={"type": "fifo"},
    )


def run_baseline_search(cfg: StudyConfig, baseline: BaselineSearch) -> None:
    """One baseline searched like the method, in study_dir/search-<method>, its configurations
    named <method>-c000, ... (stage "baselines": never stopped early, test split sealed)."""
    bcfg = baseline_study(cfg, baseline)
    space = {**search_space(bcfg), "stage": BASELINES_DIR}
    searcher = make_searcher(bcfg, id_prefix=f"{baseline.method}-c")
    path = join(cfg.study_dir, baseline_search_name(baseline.method))
    total = bcfg.num_samples * bcfg.replicates
    _run_stage(bcfg, path, space, searcher, total, BASELINES_DIR)


def _plain(value: Any) -> Any:
    """A pandas cell back to the plain value a trial config holds (NaN -> None)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def trial_config_of(trials: pd.DataFrame, config_id: str) -> dict[str, Any]:
    """The full trial config of a configuration (its first replicate's), as Tune ran it."""
    rows = trials[trials["config/config_id"] == config_id].sort_values("config/replicate")
    if rows.empty:
        raise ConfigError(f"configuration {config_id!r} has no trial in the study")
    row = rows.iloc[0]
    values = {k: _plain(row[f"config/{k}"]) for k in TRIAL_FIELDS if f"config/{k}" in row}
    return vars(make_trial_config(values))


def confirmation_points(
    cfg: StudyConfig,
    trials: pd.DataFrame,
    config_ids: list[str],
    seeds: int,
    bases: list[str | None] | None = None,
) -> list[dict[str, Any]]:
    """The configurations (confirmed_ids), then the baselines, each at `seeds` fresh seeds,
    with the study's `confirm_eval` test evaluation, and `primary_eval` over it for the
    answer's primary pair (the first configuration and the reference; a search's only); with
    `bases` (study.base.confirmation_bases), seed j's trials refine bases[j]."""
    baseline_ids = [m for m in cfg.baselines if (trials["config/config_id"] == m).any()]
    primary = {config_ids[0], REFERENCE} if config_ids and cfg.ablation is None else set()
    points = []
    for config_id in [*config_ids, *baseline_ids]:
        test_eval = {**cfg.confirm_eval, **(cfg.primary_eval if config_id in primary else {})}
        for j in range(seeds):
            point = {
                **trial_config_of(trials, config_id),
                **test_eval,
                "stage": CONFIRMATION_DIR,
                "replicate": j,
                "seed": confirm_seed(cfg.trial.seed, j),
            }
            if bases is not None and bases[j] is not None:
                point["base_checkpoint"] = bases[j]
            points.append(point)
    return points


def same_plan(previous: Any, points: list[dict[str, Any]]) -> bool:
    """Whether the stored confirmation plan is these points. Its points are read back as trial
    configs first, so a plan written before a trial key existed (the key at its default, which
    the resumed trials take too) is still the same plan, not a new one to re-run from scratch."""
    try:
        stored = [vars(make_trial_config(p)) for p in previous]
    except (ConfigError, TypeError, ValueError):  # a key since removed, or not a plan at all
        return False
    return json.loads(json.dumps(stored)) == json.loads(json.dumps(points))


def _archive_previous(store: StudyStore) -> None:
    """A re-run with another plan keeps the old confirmation and its tables beside (never
    deletes them), so no table of the old one passes for the new one's."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (CONFIRMATION_DIR, PLAN_FILE, *CONFIRMATION_TABLES):
        if store.exists(name):
            store.rename(name, f"{name}.{stamp}")
            print(f"previous {name} kept as {name}.{stamp}", file=console_stream())


def run_confirmation(
    cfg: StudyConfig, config_ids: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Run (or resume) the confirmation of config_ids and the baselines; write the tables and
    return the answer and the ablation table (None for a search). Ray must be connected."""
    trials = load_trials(cfg.study_dir)
    trials = trials[trials["experiment"] != CONFIRMATION_DIR]
    bases = confirmation_bases(cfg, cfg.confirm_seeds)  # one base per seed, or None each
    points = confirmation_points(cfg, trials, config_ids, cfg.confirm_seeds, bases)
    store = StudyStore(cfg.study_dir)
    previous = store.read_json(PLAN_FILE)
    if previous is not None and not same_plan(previous, points):
        _archive_previous(store)
        previous = None
    if previous is None:
        store.write_json(PLAN_FILE, points)
    n_configs = len(points) // max(cfg.confirm_seeds, 1)
    print(f"\nConfirmation: {n_configs} configurations x {cfg.confirm_seeds} fresh seeds, "
          "evaluated on the test split", file=console_stream())  # fmt: skip
    run_fixed_trials(cfg, join(cfg.study_dir, CONFIRMATION_DIR), points, "confirmation")
    return write_confirmation_tables(cfg)


def run_study(
    cfg: StudyConfig, *, resume: bool = False, address: str | None = None, verbose: bool = True
) -> str:
    """Run (or resume) a validated study: search, baselines, tables, confirmation; returns the
    study directory. verbose=False sends Ray's, Tune's and PyTorch's output to study.log in the
    study directory (study.store.local_log_path), leaving the study's own lines on the
    console."""
    check_paths(cfg, resume)
    _with_ray(cfg, address, verbose, lambda: _run_stages(cfg, resume))
    return cfg.study_dir


def confirm_study(
    cfg: StudyConfig, config_ids: list[str], *, address: str | None = None, verbose: bool = True
) -> None:
    """Run, resume or re-run the confirmation of a study whose search has finished."""
    _with_ray(cfg, address, verbose, lambda: print_answer(*run_confirmation(cfg, config_ids)))


def _with_ray(cfg: StudyConfig, address: str | None, verbose: bool, body) -> None:
    """body() inside the study's log and a Ray connection (shut down after, inside the log,
    when this call made it); the log is copied into a remote study's directory at the end."""
    log = local_log_path(cfg.study_dir, cfg.name)
    if not verbose:
        print(f"Study {cfg.name}: Ray's own output goes to {log}", file=console_stream())
    try:
        with StudyLog(log, verbose, handled=(ConfigError, DataError, StageInterrupted)):
            base_to_train = cfg.base is not None and base_checkpoint(cfg.base) is None
            train_runs = cfg.trial.num_workers > 0 or base_to_train
            connected = connect_ray(address, train_runs)
            try:
                body()
            finally:
                if connected:
                    ray.shutdown()
    finally:
        keep_log(cfg.study_dir, cfg.name)


def _run_stages(cfg: StudyConfig, resume: bool) -> None:
    shortfall = resource_shortfall(cfg, ray.cluster_resources())
    if shortfall:
        print(shortfall, file=console_stream(), flush=True)
    if not resume:  # first: a study interrupted from here on (even in its base) resumes
        write_study_file(cfg)
    cfg = prepare_base(cfg)  # the shared base model, trained or found in the cache
    write_base_record(cfg)
    run_search(cfg)
    if cfg.baselines or cfg.baseline_searches:
        run_baselines(cfg)
    front = summarize(cfg)
    if cfg.confirm_seeds and not front.empty:
        print_answer(*run_confirmation(cfg, confirmed_ids(cfg)))
    elif cfg.confirm_seeds:
        print("No finished configuration: nothing to confirm.", file=console_stream())
