"""Run a multi-objective study: `python -m study.sweep --help`.

Validates everything first (bad input exits with one line, before Ray starts and before any
study directory exists), joins or starts Ray, runs Ray Tune with Optuna's multi-objective
search over trials that are Ray Train runs of the refinement loop (or, for an ablation, the
fixed variants of one setting), then the baselines; writes trials.csv, configs.csv, pareto.csv
and pareto.png into the study directory, prints the front, and confirms it (study/confirm.py).
"""

import argparse
import dataclasses
import json
import logging
import math
import os
import socket
import sys
from pathlib import Path
from typing import Any

from analysis.replicates import ANSWER_METRICS
from analysis.tables import answer_table_text, front_table
from study.base import prepare_base, write_base_record
from study.config import (
    ABLATION_VARIANTS,
    PRESETS,
    ConfigError,
    StudyConfig,
    build_study_config,
    load_config,
    read_yaml,
    replicate_seed,
)
from study.confirm import confirmed_ids, run_confirmation
from study.console import (
    QUIET_TUNE_RUN_CONFIG,
    StudyConsole,
    StudyLog,
    console_stream,
    logs_redirected,
    print_error,
    quiet_ray_kwargs,
)
from study.status import StageInterrupted, fit_stage, resume_command
from study.store import (
    BASELINES_DIR,
    CONFIGS_FILE,
    CONFIRMATION_DIR,
    LOG_FILE,
    PARETO_FIGURE,
    PARETO_FILE,
    SCHEDULER_STATE_FILE,
    STUDY_FILE,
    TRAIN_RUNS_DIR,
    TRIALS_FILE,
    StudyStore,
    is_remote,
    join,
    keep_log,
    local_log_path,
)
from trainables.base import base_trial_config
from trainables.config import make_trial_config
from trainables.data import DataError, load_splits

# How often Tune restarts an in-process trial whose process died (as Train does its workers).
TRIAL_RETRIES = 2
# Reported beside the objectives: the parts of the worst-case robust accuracy.
VAL_METRICS = ("val_clean_acc", "val_robust_acc", "val_pgd_acc", "val_blackbox_acc")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m study.sweep",
        description="LIME-guided robust refinement: a multi-objective Ray Tune + Optuna study.",
    )
    p.add_argument("--config", metavar="FILE.yaml", help="study YAML (keys: see README)")
    p.add_argument("--preset", choices=list(PRESETS), help="base settings (default: digits)")
    p.add_argument("--dataset", help="override the dataset: digits (embedded), cifar10 or cifar100")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="CIFAR data: torchvision's folder, an ImageFolder tree with train/ and test/, "
        "or its .tar.gz (default: download with torchvision into the cache)",
    )
    p.add_argument(
        "--num-samples",
        type=int,
        metavar="N",
        help="number of configurations the searcher proposes",
    )
    p.add_argument(
        "--replicates",
        type=int,
        metavar="K",
        help="seeds per configuration (and per baseline); the searcher sees their mean (default 2)",
    )
    p.add_argument(
        "--confirm-seeds",
        type=int,
        metavar="M",
        help="fresh seeds with which the front and the baselines are re-trained and evaluated on "
        "the test split after the search (default 3; 0 skips the confirmation)",
    )
    p.add_argument(
        "--storage",
        metavar="PATH",
        help="where study directories go: a local path or s3://... (default: ./results)",
    )
    p.add_argument("--name", help="study name, the folder under --storage (default: PRESET-study)")
    p.add_argument(
        "--resume", action="store_true", help="continue the study --name after an interruption"
    )
    p.add_argument(
        "--address",
        metavar="ADDR",
        help="Ray cluster to join, or 'local' for a new local instance (default: RAY_ADDRESS "
        "or a running local `ray start`, else a new local instance)",
    )
    p.add_argument(
        "--searcher", choices=["optuna", "random"], help="Optuna's sampler (default: optuna)"
    )
    p.add_argument(
        "--max-concurrent-trials",
        type=int,
        metavar="N",
        help="default: as many as the cluster's CPUs and GPUs fit",
    )
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        metavar="G",
        help="GPUs one trial holds, split evenly between its Train workers and their LIME "
        "actors; a fraction (0.25) packs several trials onto one GPU (default: 0, CPU only)",
    )
    p.add_argument(
        "--scheduler",
        choices=["fifo", "mo-asha"],
        help="stop dominated configurations early (multi-objective successive halving over the "
        "rounds; settings in YAML `scheduler:`); default: fifo (no early stopping)",
    )
    p.add_argument("--seed", type=int, help="seed of the search and of every trial")
    p.add_argument(
        "--verbose",
        action="store_true",
        help=f"print Ray's, Tune's and PyTorch's own output too (default: into {LOG_FILE} in "
        "the study directory, with the study's own lines on the console)",
    )
    p.add_argument(
        "--check-cluster",
        metavar="CLUSTER.yaml",
        help="only validate a `ray up` cluster config offline, as Ray does before it "
        "contacts the cloud, and exit",
    )
    return p.parse_args(argv)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line values in the shape of the YAML file (None = not given)."""
    out: dict[str, Any] = {}
    for key in ("preset", "name", "storage", "searcher", "seed"):
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    if args.num_samples is not None:
        out["num_samples"] = args.num_samples
    if args.max_concurrent_trials is not None:
        out["max_concurrent_trials"] = args.max_concurrent_trials
    if args.replicates is not None:
        out["replicates"] = args.replicates
    if args.confirm_seeds is not None:
        out["confirm_seeds"] = args.confirm_seeds
    if args.scheduler is not None:
        out["scheduler"] = {"type": args.scheduler}
    trial: dict[str, Any] = {}
    if args.dataset is not None:
        trial["dataset"] = args.dataset
    if args.data_dir is not None:
        trial["data_dir"] = args.data_dir
    if args.seed is not None:
        trial["seed"] = args.seed
    if trial:
        out["trial"] = trial
    return out


def with_gpus_per_trial(cfg: StudyConfig, gpus: float | None) -> StudyConfig:
    """Spread a trial's GPU share over its Train workers and, for lime_refine, their LIME
    actors (one share each), so the trial holds exactly `gpus` GPUs in all."""
    if gpus is None:
        return cfg
    t = cfg.trial
    holders = max(1, t.num_workers) * (2 if t.method == "lime_refine" and t.lime_actors else 1)
    each = gpus / holders
    if not 0 < gpus <= 1024 or (each > 1 and not each.is_integer()):
        raise ConfigError(
            f"--gpus-per-trial: must be positive and give each of the trial's {holders} GPU "
            f"users (Train workers and LIME actors) a fraction <= 1 or a whole number, got {gpus}"
        )
    trial = make_trial_config({**vars(t), "gpus_per_worker": each})
    return dataclasses.replace(cfg, trial=trial)


def check_paths(cfg: StudyConfig, resume: bool) -> None:
    """Fail early on a missing data directory, or a study that exists (or not) unexpectedly."""
    data_dir = cfg.trial.data_dir
    if data_dir is not None and not is_remote(data_dir) and not os.path.exists(data_dir):
        raise ConfigError(f"--data-dir: {data_dir} does not exist")
    if is_remote(cfg.study_dir):
        return  # checked by pyarrow when Tune opens it
    parent = Path(cfg.storage)
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ConfigError(f"--storage: {cfg.storage} cannot be created ({parent} is not a "
                          "writable directory)")  # fmt: skip
    exists = os.path.exists(os.path.join(cfg.study_dir, STUDY_FILE))
    if resume and not exists:
        raise ConfigError(f"--resume: no study named {cfg.name!r} under {cfg.storage}")
    if not resume and set(_listdir(cfg.study_dir)) - {LOG_FILE}:
        raise ConfigError(
            f"--name: study {cfg.name!r} already exists in {cfg.storage}; "
            "pass --resume to continue it or choose another --name"
        )


def _listdir(path: str) -> list[str]:
    return os.listdir(path) if os.path.isdir(path) else []


def check_cluster_file(path: str) -> None:
    """Ray's own preparation and schema validation of a cluster config, with no cloud calls."""
    import jsonschema

    from study.ray_internals import prepared_cluster_config

    config = read_yaml(path)
    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)  # one line of output, not logs
    try:
        prepared_cluster_config(config)
    except jsonschema.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "top level"
        raise ConfigError(f"{path}: {where}: {e.message}") from e
    except (ValueError, KeyError, RuntimeError) as e:
        raise ConfigError(f"{path}: {e}") from e


def check_data(cfg: StudyConfig) -> None:
    """Read a local --data-dir once (truncated archives, failed checksums) before anything
    starts; the workers read it again from the cache this leaves."""
    t = cfg.trial
    if t.data_dir is None or is_remote(t.data_dir):
        return
    try:
        load_splits(t.dataset, t.data_dir, val_size=t.val_size, with_test=False)
    except DataError as e:
        raise ConfigError(f"--data-dir: {e}") from e


def check_address(address: str | None) -> None:
    """Fail in seconds, not minutes, on a cluster address nobody answers at."""
    if not address or address in ("local", "auto"):
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"--address: expected HOST:PORT, ray://HOST:PORT or local, got {address!r}"
        )
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ConfigError(
            f"--address: nothing answers at {address} ({e.strerror or e}); "
            "is the cluster up (`ray status`)?"
        ) from e


def connect_ray(address: str | None, train_runs: bool = True) -> bool:
    """Join the given cluster, else RAY_ADDRESS or a local `ray start`, else start one here.
    Returns whether this call connected (the caller then owns the connection). train_runs:
    whether the study runs Ray Train (a base, or Train worker trials), which needs a local
    cluster's dashboard."""
    import ray

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
    from ray import tune

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


def make_searcher(cfg: StudyConfig):
    """Optuna through Ray Tune, multi-objective (metric and mode are lists, set only here:
    setting them on TuneConfig too would silently make the study single-objective), wrapped so
    each configuration runs `replicates` times and Optuna sees the mean."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from study.replicates import ReplicateSearcher

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
    return ReplicateSearcher(optuna_search, cfg.replicates, cfg.trial.seed)


def trial_resources(cfg: StudyConfig) -> dict[str, float]:
    """What one trial holds in all: its process or Train workers, and their LIME actors."""
    t = cfg.trial
    lime = t.method == "lime_refine" and t.lime_actors > 0
    processes = max(1, t.num_workers)  # in-process (num_workers 0): the trial's own process
    return {
        "CPU": processes
        * (t.cpus_per_worker + (t.lime_actors * t.cpus_per_lime_actor if lime else 0)),
        "GPU": processes * t.gpus_per_worker * (2 if lime else 1),
    }


def default_concurrency(cfg: StudyConfig, cluster: dict[str, float]) -> int:
    """As many trials at once as the cluster's CPUs and GPUs fit (at least one)."""
    need = trial_resources(cfg)
    fits = [math.floor(cluster.get(k, 0) / v + 1e-9) for k, v in need.items() if v > 0]
    return max(1, min(fits, default=1))


def resource_shortfall(cfg: StudyConfig, cluster: dict[str, float]) -> str | None:
    """A console warning when the cluster cannot hold even one trial now (e.g. a GPU share on a
    cluster without GPUs): Tune then waits, and its own warnings go to the log file. Not an
    error: an autoscaling cluster adds the nodes when the trials ask for them."""
    needs = {"a trial": trial_resources(cfg)}
    if cfg.base is not None:  # the base trains with the base section's resources
        base = base_trial_config(cfg.trial, cfg.base, cfg.trial.seed)
        needs["the base"] = trial_resources(dataclasses.replace(cfg, trial=base))
    for who, resources in needs.items():
        short = [
            f"{v:g} {k} (the cluster has {cluster.get(k, 0):g})"
            for k, v in resources.items()
            if v > cluster.get(k, 0) + 1e-9
        ]
        if short:
            return (
                f"warning: {who} needs {', '.join(short)}; it waits until the cluster has it "
                "(an autoscaling cluster adds nodes; otherwise stop with Ctrl-C and lower the "
                "request)"
            )
    return None


def _trainable(cfg: StudyConfig):
    from ray import tune

    from trainables import trial

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
    from ray import tune
    from ray.tune.search import Searcher

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
    import ray

    return cfg.max_concurrent_trials or default_concurrency(cfg, ray.cluster_resources())


def run_fixed_trials(cfg: StudyConfig, path: str, points: list[dict[str, Any]], stage: str):
    """Run exactly these (complete) trial configs, in order, to their end: an ablation's
    variants, the baselines and the confirmation. (Tune wants every key of a point in the
    param_space: the study's trial config is that space, and each point overrides it. A key
    some point sets otherwise is None in the space: Tune warns of every point that differs
    from a constant there, and every point sets all its keys.)"""
    from ray.tune.search.basic_variant import BasicVariantGenerator

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
        from study.scheduler import MOASHAScheduler

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
    return _replicated(cfg, {m: {"method": m} for m in cfg.baselines}, "baseline")


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
    """The baselines, `replicates` seeds each, in study_dir/baselines, run or resumed to their
    end."""
    run_fixed_trials(cfg, join(cfg.study_dir, BASELINES_DIR), baseline_points(cfg), "baselines")


def write_study_file(cfg: StudyConfig) -> None:
    """study.json: the resolved settings, for the analysis package and for --resume."""
    StudyStore(cfg.study_dir).write_text(STUDY_FILE, json.dumps(cfg.to_dict(), indent=2))


def write_trials_table(cfg: StudyConfig):
    """trials.csv: one row per trial of every stage so far (a `stage` column; early-stopped
    searched trials marked STOPPED with their rung). Returns the table."""
    from analysis.results import load_trials
    from study.scheduler import stopped_configs

    trials = load_trials(cfg.study_dir)
    if "config/stage" in trials:
        trials.insert(2, "stage", trials.pop("config/stage"))
    stopped = stopped_configs(scheduler_state_path(cfg))
    if stopped and "config/config_id" in trials:  # stopped early: kept out of every front
        rung = trials["config/config_id"].map(stopped).where(trials["experiment"] == cfg.name)
        trials.loc[rung.notna(), "status"] = "STOPPED"
        trials["stopped_at_rung"] = rung
    StudyStore(cfg.study_dir).write_table(TRIALS_FILE, trials)
    return trials


def summarize(cfg: StudyConfig):
    """Write trials.csv (one row per trial), configs.csv (one row per configuration, with
    means, 95% intervals and p_front), pareto.csv and, once a configuration has finished,
    pareto.png (the front of the searched configurations by their means); print the front.
    Returns the front."""
    from analysis.plots import config_front_figure
    from analysis.replicates import aggregate_configs, config_front, p_front

    store = StudyStore(cfg.study_dir)
    trials = write_trials_table(cfg)
    study = trials[trials["experiment"] != CONFIRMATION_DIR]
    metrics = [*cfg.objectives, *(m for m in VAL_METRICS if m not in cfg.objectives)]
    configs = aggregate_configs(study, metrics, list(cfg.search))
    searched = study[study["experiment"] == cfg.name]
    if not configs.empty:
        is_searched = configs["experiment"] == cfg.name
        shares = p_front(searched, cfg.objectives)
        configs["p_front"] = configs["config_id"].map(shares).where(is_searched)
        front = config_front(configs[is_searched], cfg.objectives)
    else:
        front = configs
    store.write_table(CONFIGS_FILE, configs)
    store.write_table(PARETO_FILE, front)
    if not configs.empty:  # nothing finished yet: no figure
        figure = config_front_figure(configs, cfg.objectives, title=f"Study {cfg.name}")
        store.write_figure(PARETO_FIGURE, figure)
    n_done = int(is_searched.sum()) if not configs.empty else 0
    out = console_stream()
    print(f"\nPareto-optimal configurations by validation means ({len(front)} of {n_done}; "
          "95% t-intervals over replicates):", file=out)  # fmt: skip
    print(front_table(front, cfg.objectives, list(cfg.search)), file=out)
    print(f"Tables and figure: {cfg.study_dir}", file=out, flush=True)
    return front


def run_study(
    cfg: StudyConfig, *, resume: bool = False, address: str | None = None, verbose: bool = True
) -> str:
    """Run (or resume) a validated study: search, baselines, tables, confirmation; returns the
    study directory. verbose=False sends Ray's, Tune's and PyTorch's output to study.log in the
    (local) study directory, leaving the study's own lines on the console."""
    check_paths(cfg, resume)
    log = local_log_path(cfg.study_dir, cfg.name)
    if not verbose:
        print(f"Study {cfg.name}: Ray's own output goes to {log}", file=console_stream())
    try:
        with StudyLog(log, verbose, handled=(ConfigError, DataError, StageInterrupted)):
            import ray

            train_runs = cfg.trial.num_workers > 0 or cfg.base is not None
            connected = connect_ray(address, train_runs)
            try:
                _run_stages(cfg, resume)
            finally:
                if connected:  # inside the log: Ray's shutdown has its say there too
                    ray.shutdown()
    finally:
        keep_log(cfg.study_dir, cfg.name)
    return cfg.study_dir


def _run_stages(cfg: StudyConfig, resume: bool) -> None:
    import ray

    shortfall = resource_shortfall(cfg, ray.cluster_resources())
    if shortfall:
        print(shortfall, file=console_stream(), flush=True)
    if not resume:  # first: a study interrupted from here on (even in its base) resumes
        write_study_file(cfg)
    cfg = prepare_base(cfg)  # the shared base model, trained or found in the cache
    write_base_record(cfg)
    run_search(cfg)
    if cfg.baselines:
        run_baselines(cfg)
    front = summarize(cfg)
    if cfg.confirm_seeds and not front.empty:
        print_answer(*run_confirmation(cfg, confirmed_ids(cfg)))
    elif cfg.confirm_seeds:
        print("No finished configuration: nothing to confirm.", file=console_stream())


def print_answer(answer, ablation=None) -> None:
    """The study's answer: each confirmed front configuration against PGD-AT, paired by seed;
    then, for an ablation, each variant against the full setting."""
    out = console_stream()
    if answer.empty:
        print("\nNo answer table: PGD-AT is not among the baselines or nothing was confirmed.",
              file=out)  # fmt: skip
    else:
        print("\nThe answer (test split, paired by seed; differences in points with 95% "
              "t-intervals):", file=out)  # fmt: skip
        print(answer_table_text(answer), file=out, flush=True)
    if ablation is None:
        return
    if ablation.empty:
        print("\nNo ablation table: the full setting was not confirmed, or nothing was.",
              file=out, flush=True)  # fmt: skip
        return
    print("\nThe ablation (test split, each variant minus the full setting, paired by seed; "
          "differences in points with 95% t-intervals):", file=out)  # fmt: skip
    print(answer_table_text(ablation), file=out, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.check_cluster:
            check_cluster_file(args.check_cluster)
            print(f"{args.check_cluster}: valid")
            return 0
        cfg = with_gpus_per_trial(
            load_config(args.config, overrides_from_args(args)), args.gpus_per_trial
        )
        if args.resume:
            cfg = _resumed_config(cfg)
        check_paths(cfg, args.resume)
        check_data(cfg)
        check_address(args.address or os.environ.get("RAY_ADDRESS"))
        run_study(cfg, resume=args.resume, address=args.address, verbose=args.verbose)
    except (ConfigError, DataError) as e:
        print_error(str(e))
        return 2
    except StageInterrupted as e:
        resume = resume_command(cfg.study_dir, {"name": cfg.name, "storage": cfg.storage})
        print_error(f"interrupted: {e}; every finished trial is saved. Resume with: {resume}")
        return 130  # 128 + SIGINT, as a shell reports a process Ctrl-C stopped
    except BaseException as e:
        return exit_code_of_reported(e)
    return 0


def exit_code_of_reported(error: BaseException) -> int:
    """The exit code of an error the StudyLog already reported (traceback in the log, one line
    on the console); any other error propagates with its traceback."""
    if not getattr(error, "reported", False):
        raise error
    return 130 if isinstance(error, KeyboardInterrupt) else 1


def _resumed_config(cfg: StudyConfig) -> StudyConfig:
    """On --resume the study's own study.json wins: a study keeps the settings it began with."""
    values = StudyStore(cfg.study_dir).read_json(STUDY_FILE)
    return cfg if values is None else build_study_config(values)


if __name__ == "__main__":
    sys.exit(main())
