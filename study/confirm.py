"""Confirmation: re-train the front and the baselines with fresh seeds and test them once.

`python -m study.confirm STUDY_DIR [--confirm-seeds M]` runs, resumes or re-runs the
confirmation of a study whose search has finished; `python -m study.sweep` calls the same code
after its search. Every configuration on the front (by validation means; for an ablation, every
variant) and every baseline is trained with M seeds the search never used, as Tune trials in
study_dir/confirmation (stage "confirm": the only trials that read the test split), then
evaluated on the test split. The tables: confirmation.csv (one row per trial), confirmed.csv
(mean and 95% interval per configuration), selection_bias.csv (validation mean beside test mean
for the front), for an ablation ablation.csv (each variant against the full setting, paired by
seed) and answer.csv (each confirmed configuration against PGD-AT, paired by seed).
"""

import argparse
import json
import math
import sys
import time
from typing import Any

import pandas as pd

from study.config import (
    ABLATION_REFERENCE,
    ABLATION_VARIANTS,
    ConfigError,
    StudyConfig,
    build_study_config,
    confirm_seed,
)
from study.console import StudyLog, console_stream, print_error
from study.status import StageInterrupted
from study.store import (
    ABLATION_FILE,
    ANSWER_FILE,
    CONFIGS_FILE,
    CONFIRMATION_DIR,
    CONFIRMATION_FILE,
    CONFIRMATION_TABLES,
    CONFIRMED_FILE,
    LOG_FILE,
    PARETO_FILE,
    PLAN_FILE,
    SELECTION_BIAS_FILE,
    STUDY_FILE,
    StudyStore,
    join,
    keep_log,
    local_log_path,
)
from trainables.config import TRIAL_FIELDS, make_trial_config

CONFIRM_METRICS = (
    "test_clean_acc", "test_robust_acc", "test_pgd_acc", "test_blackbox_acc",
    "test_pgd50_acc", "test_autoattack_acc", "test_cifar10c_mean",
)  # fmt: skip


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
    with the study's `confirm_eval` test evaluation; with `bases`
    (study.base.confirmation_bases), seed j's trials refine bases[j]."""
    baseline_ids = [m for m in cfg.baselines if (trials["config/config_id"] == m).any()]
    points = []
    for config_id in [*config_ids, *baseline_ids]:
        for j in range(seeds):
            point = {
                **trial_config_of(trials, config_id),
                **cfg.confirm_eval,
                "stage": "confirm",
                "replicate": j,
                "seed": confirm_seed(cfg.trial.seed, j),
            }
            if bases is not None and bases[j] is not None:
                point["base_checkpoint"] = bases[j]
            points.append(point)
    return points


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
    from analysis.results import load_trials
    from study.base import confirmation_bases
    from study.sweep import run_fixed_trials

    trials = load_trials(cfg.study_dir)
    trials = trials[trials["experiment"] != CONFIRMATION_DIR]
    bases = confirmation_bases(cfg, cfg.confirm_seeds)  # one base per seed, or None each
    points = confirmation_points(cfg, trials, config_ids, cfg.confirm_seeds, bases)
    store = StudyStore(cfg.study_dir)
    previous = store.read_json(PLAN_FILE)
    if previous is not None and previous != json.loads(json.dumps(points)):
        _archive_previous(store)
        previous = None
    if previous is None:
        store.write_json(PLAN_FILE, points)
    n_configs = len(points) // max(cfg.confirm_seeds, 1)
    print(f"\nConfirmation: {n_configs} configurations x {cfg.confirm_seeds} fresh seeds, "
          "evaluated on the test split", file=console_stream())  # fmt: skip
    run_fixed_trials(cfg, join(cfg.study_dir, CONFIRMATION_DIR), points, "confirmation")
    return write_confirmation_tables(cfg)


def write_confirmation_tables(cfg: StudyConfig) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """trials.csv again (now with the confirmation), confirmation.csv, confirmed.csv,
    selection_bias.csv, for an ablation ablation.csv, and answer.csv (last: its presence says
    the confirmation is done); returns the answer and the ablation table (None for a search).
    The ablation is the answer's paired comparison with the full setting as the reference."""
    from analysis.replicates import aggregate_configs, answer_table, selection_bias
    from study.sweep import write_trials_table

    store = StudyStore(cfg.study_dir)
    trials = write_trials_table(cfg)  # with the confirmation trials now
    confirmation = trials[trials["experiment"] == CONFIRMATION_DIR]
    metrics = [m for m in CONFIRM_METRICS if m in confirmation]
    confirmed = aggregate_configs(confirmation, metrics, list(cfg.search))
    front = store.read_table(PARETO_FILE)
    bias = selection_bias(front, confirmed, cfg.objectives)
    answer = answer_table(confirmation)
    ablation = None
    if cfg.ablation is not None:
        ablation = answer_table(confirmation, reference=ABLATION_REFERENCE)
    store.write_table(CONFIRMATION_FILE, confirmation)
    store.write_table(CONFIRMED_FILE, confirmed)
    store.write_table(SELECTION_BIAS_FILE, bias)
    if ablation is not None:
        store.write_table(ABLATION_FILE, ablation)
    store.write_table(ANSWER_FILE, answer)
    return answer, ablation


def confirmed_ids(cfg: StudyConfig) -> list[str]:
    """What the confirmation re-trains beside the baselines: every variant of an ablation (the
    table compares them all with the full setting), else the study's front. Either needs the
    search (the variants' runs) finished: a configuration with no finished trial cannot be
    re-trained as it ran."""
    store = StudyStore(cfg.study_dir)
    front = front_ids_of(store)
    if cfg.ablation is None:
        return front
    configs = store.read_table(CONFIGS_FILE)
    missing = [v for v in ABLATION_VARIANTS if v not in set(configs["config_id"].astype(str))]
    if missing:
        raise ConfigError(
            f"{cfg.study_dir}: the ablation's {', '.join(missing)} has no finished trial; "
            "resume the study first: python -m study.sweep --resume"
        )
    return list(ABLATION_VARIANTS)


def front_ids_of(store: StudyStore) -> list[str]:
    """The configurations on the study's front (pareto.csv, written after the search)."""
    front = store.read_table(PARETO_FILE)  # None: no search yet; empty: nothing finished
    if front is None or front.empty or "config_id" not in front:
        raise ConfigError(
            f"{store.study_dir}: the study has no front yet (no finished searched configuration in "
            "pareto.csv); run or resume the search first: python -m study.sweep --resume"
        )
    return front["config_id"].astype(str).tolist()


def _key_values(items: list[str]) -> dict[str, Any]:
    """['final_eval_subset=200', 'eval_grid=1/255,8/255'] -> {key: value}: a text key keeps
    its text (eval_grid=0.1 is the grid '0.1'), any other is read as YAML (200 -> int)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--eval: expected KEY=VALUE, got {item!r}")
        if key in TRIAL_FIELDS and TRIAL_FIELDS[key].type is str:
            out[key] = value
            continue
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--eval {key}: not a value ({value!r})") from e
    return out


def main(argv: list[str] | None = None) -> int:
    from study.sweep import (
        connect_ray,
        exit_code_of_reported,
        print_answer,
        summarize,
        write_study_file,
    )

    p = argparse.ArgumentParser(
        prog="python -m study.confirm",
        description="Confirm a finished study's front (an ablation's variants) and baselines on "
        "the test split with fresh seeds (runs, resumes or re-runs the confirmation).",
    )
    p.add_argument("study_dir", metavar="STUDY_DIR", help="the study directory (local path)")
    p.add_argument("--confirm-seeds", type=int, metavar="M", help="default: the study's setting")
    p.add_argument(
        "--eval",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set the test evaluation (a key of confirm_eval, e.g. final_eval_subset=200); "
        "kept in study.json, so a resumed confirmation uses it too",
    )
    p.add_argument("--address", metavar="ADDR", help="Ray cluster to join (see study.sweep)")
    p.add_argument(
        "--verbose", action="store_true", help=f"Ray's own output too (default: {LOG_FILE})"
    )
    args = p.parse_args(argv)
    try:
        store = StudyStore(args.study_dir)
        values = store.read_json(STUDY_FILE)
        if values is None:
            raise ConfigError(f"{args.study_dir}: not a study directory (no {STUDY_FILE})")
        if args.confirm_seeds is not None:
            values["confirm_seeds"] = args.confirm_seeds
        if args.eval:
            values["confirm_eval"] = {**values.get("confirm_eval", {}), **_key_values(args.eval)}
        cfg = build_study_config(values)
        if args.eval:
            write_study_file(cfg)
        if cfg.confirm_seeds == 0:
            print("--confirm-seeds 0: nothing to confirm")
            return 0
        summarize(cfg)
        config_ids = confirmed_ids(cfg)
    except ConfigError as e:
        print_error(str(e))
        return 2
    log = local_log_path(cfg.study_dir, cfg.name)
    try:
        with StudyLog(log, args.verbose, handled=(ConfigError, StageInterrupted)):
            import ray

            train_runs = cfg.trial.num_workers > 0 or cfg.base is not None
            connected = connect_ray(args.address, train_runs)
            try:
                print_answer(*run_confirmation(cfg, config_ids))
            finally:
                if connected:
                    ray.shutdown()
    except ConfigError as e:
        print_error(str(e))
        return 2
    except StageInterrupted as e:
        print_error(f"interrupted: {e}; the same command goes on from there")
        return 130
    except BaseException as e:
        return exit_code_of_reported(e)
    finally:
        keep_log(cfg.study_dir, cfg.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
