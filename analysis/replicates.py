"""Replicates into answers: per-configuration means with 95% intervals, the front of means, how
often each configuration is on the front under resampling, the confirmation tables, and the
paired comparison against PGD-AT.

An accuracy whose trials reported their per-image outcomes (study.store, `<split>_outcomes_*`)
gets an interval over both sources of noise, the seeds and the evaluated images, and a
difference between two configurations pairs them by seed and by image (analysis/intervals.py;
docs/analysis.md says what that covers). Any other metric (CIFAR-10-C's mean, attribution
metrics, a study from before per-image outcomes) gets a Student-t interval over its replicates
(mean ± t(0.975, n-1)·s/√n), which covers the seeds only; with one replicate, none (NaN).
"""

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from analysis import intervals
from analysis.pareto import pareto_mask
from analysis.results import BASELINES, completed, outcome_matrix

REFERENCE = "pgd_at"  # the study's answer compares every confirmed configuration against it
# The answer's metrics: clean accuracy, the test split's worst case of PGD and Square at the
# study's eval epsilon (the search objective's measure, on eval_subset images) and AutoAttack
# (the standard, on final_eval_subset images: on a CPU study too few to decide alone).
ANSWER_METRICS = ("test_clean_acc", "test_robust_acc", "test_autoattack_acc")
# ... and the worst case at each other eps of the study's `answer_epsilons`
# (test_robust_eps8_255_acc), placed after test_robust_acc.
ROBUST_AT_EPS = re.compile(r"test_robust_eps(.+)_acc")


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sample std, ci_low, ci_high) of the mean; NaN interval below two values."""
    from scipy.stats import t

    x = np.asarray([v for v in values if v == v], dtype=float)  # drop NaN
    if len(x) == 0:
        return (np.nan,) * 4
    mean = float(x.mean())
    if len(x) < 2:
        return mean, np.nan, np.nan, np.nan
    std = float(x.std(ddof=1))
    half = float(t.ppf(0.5 + level / 2, len(x) - 1)) * std / np.sqrt(len(x))
    return mean, std, mean - half, mean + half


def _config_id(df: pd.DataFrame) -> pd.Series:
    """config/config_id, falling back to the trial id (a study from before replicates)."""
    if "config/config_id" in df:
        ids = df["config/config_id"].astype(object).where(df["config/config_id"].astype(bool))
        return ids.fillna(df["trial_id"])
    return df["trial_id"]


def aggregate_configs(
    trials: pd.DataFrame, metrics: Mapping[str, str] | Sequence[str], searched: Sequence[str] = ()
) -> pd.DataFrame:
    """One row per (experiment, configuration) of the finished trials: `config_id`,
    `experiment`, `method`, the searched values, `n`, and `<metric>_mean/_std/_ci_low/_ci_high`
    for each metric (an accuracy's interval clipped to [0, 1]: with 2 replicates a t-interval
    easily reaches past 100%); `masking_flags` counts replicates whose gradient-masking test
    fired."""
    done = completed(trials).assign(config_id=_config_id(completed(trials)))
    rows = []
    for (experiment, config_id), group in done.groupby(["experiment", "config_id"], sort=True):
        first = group.iloc[0]
        row = {"config_id": config_id, "experiment": experiment, "n": len(group)}
        row["method"] = first.get("config/method")
        row.update({k: first.get(f"config/{k}") for k in searched})
        for m in metrics:
            values = group[m].astype(float) if m in group else pd.Series(dtype=float)
            mean, std, lo, hi = t_interval(values.tolist())
            per_image = outcome_matrix(group, m)
            if per_image is not None:  # seeds and images: the interval covers both
                mean, lo, hi = intervals.accuracy_interval(per_image)
            elif "acc" in m:  # an accuracy: the interval within what an accuracy can be
                lo, hi = max(lo, 0.0), min(hi, 1.0)
            row.update({f"{m}_mean": mean, f"{m}_std": std, f"{m}_ci_low": lo, f"{m}_ci_high": hi})
        flags = [c for c in ("val_masking", "test_masking") if c in group]
        row["masking_flags"] = int(sum(group[c].fillna(0).astype(float).sum() for c in flags))
        rows.append(row)
    return pd.DataFrame(rows)


def _means(objectives: Mapping[str, str]) -> dict[str, str]:
    return {f"{m}_mean": d for m, d in objectives.items()}


def config_front(configs: pd.DataFrame, objectives: Mapping[str, str]) -> pd.DataFrame:
    """The non-dominated configurations by their means, sorted by the first objective."""
    if configs.empty:
        return configs
    means = _means(objectives)
    return configs[pareto_mask(configs, means)].sort_values(next(iter(means)), kind="stable")


def p_front(
    trials: pd.DataFrame,
    objectives: Mapping[str, str],
    resamples: int = 1000,
    seed: int = 0,
) -> pd.Series:
    """Per configuration: the share of bootstrap resamples of the replicate seeds in which it is
    non-dominated (intervals.p_front: the seeds drawn jointly for every configuration, as they
    share them). NaN for every configuration below intervals.MIN_FRONT_REPLICATES replicates:
    with 2 or 3 seeds a resample has too few distinct outcomes for a share to mean anything."""
    done = completed(trials).assign(config_id=_config_id(completed(trials)))
    names = list(objectives)
    if done.empty:
        return pd.Series(dtype=float, name="p_front")
    replicate = (
        done["config/replicate"]
        if "config/replicate" in done
        else done.groupby("config_id").cumcount()
    )
    table = done.assign(replicate=replicate).pivot(
        index="replicate", columns="config_id", values=names
    )  # one row per seed, NaN where a configuration's replicate did not finish
    ids = sorted(done["config_id"].unique())
    values = {
        c: np.stack([table[(m, c)].to_numpy(dtype=float) for m in names], axis=1) for c in ids
    }
    maximise = [objectives[m] == "max" for m in names]
    shares = intervals.p_front(values, maximise, n_boot=resamples, seed=seed)
    return pd.Series(shares, name="p_front").reindex(ids)


def selection_bias(front: pd.DataFrame, confirmed: pd.DataFrame, objectives: Mapping[str, str]):
    """For each front configuration: its search-time validation mean beside its confirmed test
    mean (`val_x` objectives are matched with `test_x` metrics), and the difference."""
    rows = []
    by_id = confirmed.set_index("config_id") if not confirmed.empty else None
    for _, config in front.iterrows():
        row = {"config_id": config["config_id"]}
        for m in objectives:
            test = "test_" + m.removeprefix("val_")
            test_mean = np.nan
            if by_id is not None and config["config_id"] in by_id.index:
                test_mean = by_id.loc[config["config_id"], f"{test}_mean"]
            row.update({f"{m}_mean": config[f"{m}_mean"], f"{test}_mean": test_mean})
            row[f"{test.removeprefix('test_')}_drop"] = config[f"{m}_mean"] - test_mean
        rows.append(row)
    return pd.DataFrame(rows)


def answer_metrics(confirmation: pd.DataFrame) -> list[str]:
    """The answer's metrics the confirmation has, in order: clean, robust at the study's eps
    (the two primary ones), robust at each other eps of `answer_epsilons`, AutoAttack."""
    at_eps = sorted(c for c in confirmation if ROBUST_AT_EPS.fullmatch(c))
    order = ["test_clean_acc", "test_robust_acc", *at_eps, "test_autoattack_acc"]
    return [m for m in order if m in confirmation]


def metric_label(metric: str) -> str:
    """How a verdict names a metric: 'clean', 'robust', 'robust {} at 8/255', 'AutoAttack'."""
    if m := ROBUST_AT_EPS.fullmatch(metric):
        eps = m.group(1).replace("_", "/").replace("p", ".")
        return f"robust {{}} at {eps}"
    return {"test_clean_acc": "clean", "test_robust_acc": "robust"}.get(
        metric,
        metric.removeprefix("test_").removesuffix("_acc").replace("autoattack", "AutoAttack"),
    )


def _paired_difference(group: pd.DataFrame, ref: pd.DataFrame, metric: str):
    """(estimate, low, high, p, n_pairs) of metric(group) - metric(ref), paired by replicate
    (the confirmation seed) and, where both report per-image outcomes, by image."""
    seeds = sorted(set(group["config/replicate"]) & set(ref["config/replicate"]))
    a = group.set_index("config/replicate").loc[seeds]
    b = ref.set_index("config/replicate").loc[seeds]
    ma, mb = outcome_matrix(a, metric), outcome_matrix(b, metric)
    if ma is not None and mb is not None:
        # every evaluation covers a prefix of one image order (trainables/trial_eval.py): the
        # arms pair on the images both saw, e.g. the primary pair's larger AutoAttack subset
        # against another configuration's smaller one
        n = min(ma.shape[1], mb.shape[1])
        return (*intervals.difference_interval(ma[:, :n], mb[:, :n]), len(seeds))
    diff = (a[metric].astype(float) - b[metric].astype(float)).dropna()
    mean, _, lo, hi = t_interval(diff.tolist())
    p_value = np.nan  # one pair: no test
    if len(diff) >= 2 and diff.std() > 1e-9:  # below: floating-point noise on equal differences
        from scipy.stats import ttest_1samp  # the fallback only: studies without outcomes

        p_value = float(ttest_1samp(diff, 0.0).pvalue)
    elif len(diff) >= 2:  # the same difference at every seed: the t statistic is infinite
        p_value = 0.0 if mean != 0 else 1.0
    return mean, lo, hi, p_value, len(diff)


def answer_table(
    confirmation: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    reference: str = REFERENCE,
    order: Sequence[str] = (),
) -> pd.DataFrame:
    """Each confirmed searched configuration (not a baseline, not the reference) against
    `reference` (PGD-AT, same budget; an ablation's variants against its full setting): the
    paired difference of each metric (same confirmation seed and, with per-image outcomes, the
    same test images) with its 95% interval over seeds and images and its p-value; the p-values
    Holm-adjusted over every configuration x metric of the table (`_p_holm`), and a `verdict`
    naming the gains and losses that survive (e.g. "robust ↑ at 8/255, clean ↓"), else "no
    difference beyond the intervals". Primary metrics: clean, and robust at the study's eps.
    Empty when the reference has no finished trial. Metrics the confirmation lacks are left
    out; `metrics` defaults to answer_metrics(confirmation). Rows follow `order` (the front's
    order, so the primary configuration comes first), then the other ids alphabetically."""
    metrics = [m for m in (metrics or answer_metrics(confirmation)) if m in confirmation]
    if not metrics:  # nothing to compare: no verdict, rather than a vacuous one
        return pd.DataFrame()
    done = completed(confirmation).assign(config_id=_config_id(completed(confirmation)))
    ref = done[done["config_id"] == reference]
    if ref.empty:
        return pd.DataFrame()
    rows = []
    rank = {config_id: i for i, config_id in enumerate(order)}
    groups = sorted(done.groupby("config_id"), key=lambda g: (rank.get(g[0], len(rank)), g[0]))
    for config_id, group in groups:
        if config_id in BASELINES or config_id == reference:
            continue
        row = {"config_id": config_id, "reference": reference}
        for m in metrics:
            est, lo, hi, p_value, n = _paired_difference(group, ref, m)
            row.update({"n_pairs": n, f"{m}_diff": est})
            row.update({f"{m}_diff_ci_low": lo, f"{m}_diff_ci_high": hi, f"{m}_diff_p": p_value})
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    p_columns = [f"{m}_diff_p" for m in metrics]
    raw = table[p_columns].to_numpy(dtype=float)
    adjusted = np.full_like(raw, np.nan)
    finite = np.isfinite(raw)
    adjusted[finite] = intervals.holm(raw[finite])
    for j, m in enumerate(metrics):
        table[f"{m}_diff_p_holm"] = adjusted[:, j]
    table["verdict"] = [
        intervals.verdict(
            {
                metric_label(m): (
                    row[f"{m}_diff"], row[f"{m}_diff_ci_low"], row[f"{m}_diff_ci_high"],
                    row[f"{m}_diff_p_holm"],
                )
                for m in metrics
            }
        )
        for _, row in table.iterrows()
    ]  # fmt: skip
    return table
