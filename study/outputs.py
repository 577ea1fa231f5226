"""The study's tables, written into its directory after each stage, and the answer printed.

After the search and the baselines: trials.csv, configs.csv (each configuration's mean and
interval over its replicates), pareto.csv and pareto.png. After the confirmation: trials.csv
again, confirmation.csv, confirmed.csv, selection_bias.csv, an ablation's ablation.csv and,
last, answer.csv (its presence says the confirmation is done).
"""

import io
import json
import posixpath

import pandas as pd

from analysis.fronts import front_comparison, outside_every_front
from analysis.plots import config_front_figure, confirmed_fronts_figure
from analysis.replicates import (
    aggregate_configs,
    answer_metrics,
    answer_table,
    config_front,
    p_front,
    selection_bias,
)
from analysis.results import METHOD_LABEL, load_trials, outcome_table, searched_keys_of
from analysis.tables import answer_table_text, front_table, fronts_table_text
from study.config import ABLATION_REFERENCE, ABLATION_VARIANTS, ConfigError, StudyConfig
from study.console import console_stream
from study.scheduler import stopped_configs
from study.store import (
    ABLATION_FILE,
    ANSWER_FILE,
    CONFIGS_FILE,
    CONFIRMATION_DIR,
    CONFIRMATION_FILE,
    CONFIRMED_FILE,
    FRONTS_FIGURE,
    FRONTS_FILE,
    FRONTS_OTHER_EPS_FILE,
    OUTCOMES_FILE,
    OUTCOMES_MARK,
    PARETO_FIGURE,
    PARETO_FILE,
    SCHEDULER_STATE_FILE,
    SELECTION_BIAS_FILE,
    STUDY_FILE,
    TRIALS_FILE,
    StudyStore,
    baseline_search_name,
    open_fs,
)
from trainables.config import methods_reading

# Reported beside the objectives: the parts of the worst-case robust accuracy.
VAL_METRICS = ("val_clean_acc", "val_robust_acc", "val_pgd_acc", "val_blackbox_acc")


CONFIRM_METRICS = (
    "test_clean_acc", "test_robust_acc", "test_pgd_acc", "test_blackbox_acc",
    "test_pgd50_acc", "test_autoattack_acc", "test_cifar10c_mean",
)  # fmt: skip


def write_study_file(cfg: StudyConfig) -> None:
    """study.json: the resolved settings, for the analysis package and for --resume."""
    StudyStore(cfg.study_dir).write_text(STUDY_FILE, json.dumps(cfg.to_dict(), indent=2))


def write_trials_table(cfg: StudyConfig):
    """trials.csv: one row per trial of every stage so far (a `stage` column; early-stopped
    searched trials marked STOPPED with their rung). Returns the table."""
    store = StudyStore(cfg.study_dir)
    trials = load_trials(cfg.study_dir)
    if "config/stage" in trials:
        trials.insert(2, "stage", trials.pop("config/stage"))
    stopped = stopped_configs(store.path(SCHEDULER_STATE_FILE))
    if stopped and "config/config_id" in trials:  # stopped early: kept out of every front
        rung = trials["config/config_id"].map(stopped).where(trials["experiment"] == cfg.name)
        trials.loc[rung.notna(), "status"] = "STOPPED"
        trials["stopped_at_rung"] = rung
    write_outcome_files(store, trials)
    store.write_table(TRIALS_FILE, without_outcomes(trials))
    return trials


def without_outcomes(trials: pd.DataFrame) -> pd.DataFrame:
    """The table without the per-image outcome columns (they go to each trial's own file)."""
    return trials.drop(columns=[c for c in trials if OUTCOMES_MARK in c])


def write_outcome_files(store: StudyStore, trials: pd.DataFrame) -> None:
    """OUTCOMES_FILE in each trial's directory: one row per evaluated image of each split
    (`split`, `index` in the split, `label`, and whether each evaluation got it right), from
    the trial's last result; analysis.results.read_outcomes reads it back. A finished trial's
    file, once written, is final: the tables are written after every stage, the files once."""
    _, root = open_fs(store.study_dir)
    for _, row in trials.iterrows():
        path = f"{posixpath.relpath(row['trial_dir'], root)}/{OUTCOMES_FILE}"
        if row["status"] == "TERMINATED" and store.exists(path):
            continue
        table = outcome_table(row)
        if table is not None:
            buffer = io.BytesIO()
            table.to_parquet(buffer, index=False)
            store.write_bytes(path, buffer.getvalue())


def configs_table(cfg: StudyConfig, trials: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """aggregate_configs with every searched key (the method's and each searched baseline's),
    each shown only where the row's method reads it: PGD-AT's row has an epsilon but no mask
    ratio, IG-NORM's its weight."""
    keys = searched_keys_of(cfg.to_dict())
    configs = aggregate_configs(trials, metrics, keys)
    for key in keys:
        if key in configs:
            configs[key] = configs[key].where(configs["method"].isin(methods_reading(key)))
    return configs


def summarize(cfg: StudyConfig):
    """Write trials.csv (one row per trial), configs.csv (one row per configuration, with
    means, 95% intervals and p_front), pareto.csv and, once a configuration has finished,
    pareto.png (the front of the searched configurations by their means); print the front.
    Returns the front."""
    store = StudyStore(cfg.study_dir)
    trials = write_trials_table(cfg)
    study = trials[trials["experiment"] != CONFIRMATION_DIR]
    metrics = [*cfg.objectives, *(m for m in VAL_METRICS if m not in cfg.objectives)]
    configs = configs_table(cfg, study, metrics)
    # the method's search first (its front's first configuration is the answer's primary
    # one), then each searched baseline's: every one gets its own front
    searches = {cfg.name: (METHOD_LABEL, list(cfg.search))} | {
        baseline_search_name(b.method): (f"Baseline {b.method}, searched", list(b.search))
        for b in cfg.baseline_searches
    }
    fronts = []
    out = console_stream()
    if not configs.empty:
        configs["p_front"] = float("nan")
    for experiment, (label, keys) in searches.items():
        is_searched = (configs["experiment"] == experiment) if not configs.empty else None
        front, n_done = configs, 0
        if not configs.empty:
            shares = p_front(study[study["experiment"] == experiment], cfg.objectives)
            configs.loc[is_searched, "p_front"] = configs.loc[is_searched, "config_id"].map(shares)
            front = config_front(configs[is_searched], cfg.objectives)
            n_done = int(is_searched.sum())
        fronts.append(front)
        print(f"\nPareto-optimal configurations by validation means, {label} ({len(front)} of "
              f"{n_done}; 95% intervals over seeds and validation images):", file=out)  # fmt: skip
        print(front_table(front, cfg.objectives, keys), file=out)
    front = pd.concat([f for f in fronts if len(f)] or fronts[:1], ignore_index=True)
    store.write_table(CONFIGS_FILE, configs)
    store.write_table(PARETO_FILE, front)
    if not configs.empty:  # nothing finished yet: no figure
        figure = config_front_figure(configs, cfg.objectives, title=f"Study {cfg.name}")
        store.write_figure(PARETO_FIGURE, figure)
    print(f"Tables and figure: {cfg.study_dir}", file=out, flush=True)
    return front


def write_confirmation_tables(
    cfg: StudyConfig,
) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame]:
    """trials.csv again (now with the confirmation), confirmation.csv, confirmed.csv,
    selection_bias.csv, fronts.csv and confirmed_fronts.png (each method's confirmed front
    against the method's: analysis.fronts; fronts_other_eps.csv the same at each other answer
    eps, so the levels are fronts.csv's), for an ablation ablation.csv, and answer.csv (last:
    its presence says the confirmation is done); returns the answer, the ablation table (None
    for a search) and the fronts' comparison. The ablation is the answer's paired comparison
    with the full setting as the reference."""
    store = StudyStore(cfg.study_dir)
    trials = write_trials_table(cfg)  # with the confirmation trials now
    confirmation = trials[trials["experiment"] == CONFIRMATION_DIR]
    at_eps = [m for m in answer_metrics(confirmation) if m not in CONFIRM_METRICS]
    metrics = [m for m in (*CONFIRM_METRICS, *at_eps) if m in confirmation]
    confirmed = configs_table(cfg, confirmation, metrics)
    front = store.read_table(PARETO_FILE)
    bias = selection_bias(front, confirmed, cfg.objectives)
    answer = answer_table(confirmation, order=_front_ids(front))
    ablation = None
    if cfg.ablation is not None:
        ablation = answer_table(
            confirmation, reference=ABLATION_REFERENCE, order=list(ABLATION_VARIANTS)
        )
    fronts, other_eps = pd.DataFrame(), []
    if cfg.ablation is None:
        fronts = front_comparison(confirmation, levels=cfg.matched_clean or None)
        for level in outside_every_front(fronts):
            print(f"matched_clean: {level:.3f} is outside every confirmed front's clean range; "
                  "fronts.csv has no figure at it", file=console_stream())  # fmt: skip
        other_eps = [  # the same default levels: they depend on clean accuracy alone
            front_comparison(
                confirmation, levels=cfg.matched_clean or None, robust_metric=m
            ).assign(robust_metric=m)
            for m in at_eps
        ]
    store.write_table(CONFIRMATION_FILE, without_outcomes(confirmation))
    store.write_table(CONFIRMED_FILE, confirmed)
    store.write_table(SELECTION_BIAS_FILE, bias)
    store.write_table(FRONTS_FILE, fronts)
    if other_eps:
        store.write_table(FRONTS_OTHER_EPS_FILE, pd.concat(other_eps, ignore_index=True))
    if not fronts.empty:
        store.write_figure(FRONTS_FIGURE, confirmed_fronts_figure(confirmed, title=cfg.name))
    if ablation is not None:
        store.write_table(ABLATION_FILE, ablation)
    store.write_table(ANSWER_FILE, answer)
    return answer, ablation, fronts


def _front_ids(front: pd.DataFrame | None) -> list[str]:
    """The configuration ids of pareto.csv's table, in its order ([] when there is none)."""
    if front is None or "config_id" not in front:
        return []
    return front["config_id"].astype(str).tolist()


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


def check_matched_clean(cfg: StudyConfig) -> None:
    """Before a confirmation: every `matched_clean` level must be one the confirmed fronts can
    plausibly reach. Only the validation fronts (pareto.csv) are known then, so a level is
    refused only outside every front's validation clean range widened by its 95% intervals (the
    test split reads a little differently); one inside that but outside every confirmed front
    is named when the tables are written. Nothing to check for an ablation (it has no fronts to
    compare) or without a confirmation. Raises ConfigError with one line."""
    if not cfg.matched_clean or cfg.ablation is not None or not cfg.confirm_seeds:
        return
    store = StudyStore(cfg.study_dir)
    front = store.read_table(PARETO_FILE)
    low, high = "val_clean_acc_ci_low", "val_clean_acc_ci_high"
    if front is None or front.empty or low not in front or high not in front:
        return
    by_front = front.groupby("experiment", sort=False)
    ranges = pd.DataFrame({"low": by_front[low].min(), "high": by_front[high].max()})
    for level in cfg.matched_clean:
        if not ((ranges["low"] <= level) & (level <= ranges["high"])).any():
            spans = ", ".join(f"{e} [{r.low:.3f}, {r.high:.3f}]" for e, r in ranges.iterrows())
            raise ConfigError(
                f"matched_clean: {level:.3f} is outside every front's clean range on validation, "
                f"intervals included ({spans}); set levels inside one in "
                f"{store.path(STUDY_FILE)}"
            )


def front_ids_of(store: StudyStore) -> list[str]:
    """The configurations on the study's front (pareto.csv, written after the search)."""
    ids = _front_ids(store.read_table(PARETO_FILE))  # none: no search yet, or none finished
    if not ids:
        raise ConfigError(
            f"{store.study_dir}: the study has no front yet (no finished searched configuration in "
            "pareto.csv); run or resume the search first: python -m study.sweep --resume"
        )
    return ids


def print_answer(answer, ablation=None, fronts=None) -> None:
    """The study's answer: each method's confirmed front against the method's (hypervolume,
    robust accuracy at matched clean accuracy), then each confirmed front configuration against
    PGD-AT, paired by seed; then, for an ablation, each variant against the full setting."""
    out = console_stream()
    if fronts is not None and not fronts.empty:
        print("\nThe fronts (test split; each method's confirmed front, its hypervolume and its "
              "robust accuracy at matched clean accuracy, against the method's; 95% intervals "
              "over seeds and test images):", file=out)  # fmt: skip
        print(fronts_table_text(fronts), file=out, flush=True)
    if answer.empty:
        print("\nNo answer table: PGD-AT is not among the baselines or nothing was confirmed.",
              file=out)  # fmt: skip
    else:
        print("\nThe answer (test split, paired by seed and image; differences in points with "
              "95% intervals over seeds and test images; verdicts Holm-corrected):",
              file=out)  # fmt: skip
        print(answer_table_text(answer), file=out, flush=True)
    if ablation is None:
        return
    if ablation.empty:
        print("\nNo ablation table: the full setting was not confirmed, or nothing was.",
              file=out, flush=True)  # fmt: skip
        return
    print("\nThe ablation (test split, each variant minus the full setting, paired by seed and "
          "image; 95% intervals over seeds and test images; verdicts Holm-corrected):",
          file=out)  # fmt: skip
    print(answer_table_text(ablation), file=out, flush=True)
