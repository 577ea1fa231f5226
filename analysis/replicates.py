"""Replicates into answers: per-configuration means with 95% intervals, the front of means, how
often each configuration is on the front under resampling, the confirmation tables, and the
paired comparison against PGD-AT.

Intervals are Student-t intervals of the mean over replicates (mean ± t(0.975, n-1)·s/√n):
with 2 to 5 seeds a bootstrap percentile interval is degenerate, and t is exact for normal
noise. With one replicate there is no interval (NaN).
"""

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.pareto import pareto_mask
from analysis.results import BASELINES, completed

REFERENCE = "pgd_at"  # the study's answer compares every confirmed configuration against it
# The answer's metrics: clean accuracy, the test split's worst case of PGD and Square at the
# study's eval epsilon (the search objective's measure, on eval_subset images) and AutoAttack
# (the standard, on final_eval_subset images: on a CPU study too few to decide alone).
ANSWER_METRICS = ("test_clean_acc", "test_robust_acc", "test_autoattack_acc")


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
            if "acc" in m:  # an accuracy: the interval within what an accuracy can be
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
    """Per configuration: the share of bootstrap resamples in which it is non-dominated.

    Each resample draws, for every configuration independently, n of its n replicates with
    replacement and recomputes all means; the front is then taken over all configurations.
    A configuration on the front by luck of its seeds gets a low share.
    """
    done = completed(trials).assign(config_id=_config_id(completed(trials)))
    names = list(objectives)
    groups = {cid: g[names].to_numpy(dtype=float) for cid, g in done.groupby("config_id")}
    groups = {cid: v[~np.isnan(v).any(axis=1)] for cid, v in groups.items()}
    groups = {cid: v for cid, v in groups.items() if len(v)}
    if not groups:
        return pd.Series(dtype=float, name="p_front")
    rng = np.random.default_rng(seed)
    ids = list(groups)
    hits = np.zeros(len(ids))
    for _ in range(resamples):
        means = np.stack([v[rng.integers(0, len(v), len(v))].mean(axis=0) for v in groups.values()])
        hits += pareto_mask(pd.DataFrame(means, columns=names), objectives)
    return pd.Series(hits / resamples, index=ids, name="p_front")


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


def answer_table(
    confirmation: pd.DataFrame,
    metrics: Sequence[str] = ANSWER_METRICS,
    reference: str = REFERENCE,
) -> pd.DataFrame:
    """Each confirmed searched configuration (not a baseline, not the reference) against
    `reference` (PGD-AT, same budget; an ablation's variants against its full setting): the
    paired difference (same confirmation seed) of each metric with its 95% t-interval, and a
    `verdict`: "dominates" when every difference's interval lies above zero (better in every
    metric, with confidence), "worse in <metric>" when one lies below zero, else "undecided"
    (the differences do not exceed their intervals). Empty when the reference has no finished
    trial: there is nothing to pair with. Metrics the confirmation lacks are left out."""
    metrics = [m for m in metrics if m in confirmation]
    if not metrics:  # nothing to compare: no verdict, rather than a vacuous "dominates"
        return pd.DataFrame()
    done = completed(confirmation).assign(config_id=_config_id(completed(confirmation)))
    ref = done[done["config_id"] == reference].set_index("config/replicate")
    if ref.empty:
        return pd.DataFrame()
    rows = []
    for config_id, group in done.groupby("config_id", sort=True):
        if config_id in BASELINES or config_id == reference:
            continue
        paired = group.set_index("config/replicate").join(ref[list(metrics)], rsuffix="_ref")
        row = {"config_id": config_id, "reference": reference}
        lows, highs = [], []
        for m in metrics:
            diff = (paired[m] - paired[f"{m}_ref"]).dropna().astype(float)
            mean, _, lo, hi = t_interval(diff.tolist())
            row.update({"n_pairs": len(diff), f"{m}_diff": mean})
            row.update({f"{m}_diff_ci_low": lo, f"{m}_diff_ci_high": hi})
            lows.append(lo)
            highs.append(hi)
        worse = [m for m, hi in zip(metrics, highs, strict=True) if hi < 0]
        if all(lo > 0 for lo in lows):
            row["verdict"] = "dominates"
        elif worse:
            row["verdict"] = "worse in " + ", ".join(worse)
        else:
            row["verdict"] = "undecided"
        rows.append(row)
    return pd.DataFrame(rows)
