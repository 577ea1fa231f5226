"""Fronts compared, not only points: each method's confirmed front of (clean, robust) test
accuracy, its hypervolume and its robust accuracy at matched clean accuracy, each against the
method's, with intervals over seeds and test images.

A front is a method's confirmed configurations: the method's own (its search's front), a
searched baseline's (`pgd_at-c000`, ...), or a fixed baseline's single point. Its hypervolume
is the area its points dominate above (0, 0), in accuracy x accuracy (1 would be a perfect
model). Robust accuracy at a matched clean level is read off the front's non-dominated points,
joined by straight lines (linear interpolation in clean accuracy), inside the front's clean
range only: beyond its ends a front says nothing.

Intervals: these statistics are not means, so `analysis.intervals`' variance parts are
estimated directly. The seed part is the variance of the statistic computed at each seed alone
(every configuration at its j-th confirmation seed), over S; the image part is the variance of
the statistic over images resampled with replacement (one resample shared by every
configuration, which were scored on the same images; clean and robust accuracy resampled each
on its own images), seeds averaged. Both include the cells' own noise, so their sum errs wide;
the interval is the estimate ± Cochran and Cox's t quantile of the two parts
(`intervals.interval_from_parts`). With a single-point front (a fixed baseline), or a method
whose front has one configuration, matched-clean figures are empty: one point has no range.
"""

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.intervals import LEVEL, interval_from_parts
from analysis.pareto import nondominated
from analysis.results import BASELINES, METHOD, completed, outcome_matrix

CLEAN, ROBUST = "test_clean_acc", "test_robust_acc"
N_BOOT = 400
MATCHED_QUANTILES = (0.25, 0.5, 0.75)  # default clean levels: inside the fronts' common range
MATCHED_PREFIX = "robust_at_clean_"  # + the level: a statistic of fronts.csv


def front_of(config_id: str, method: str) -> str:
    """Which front a confirmed configuration belongs to: the method's, a searched baseline's
    ("pgd_at, searched") or a fixed baseline's ("pgd_at")."""
    if method == METHOD:
        return METHOD
    if config_id in BASELINES:
        return config_id
    return f"{method}, searched"


def hypervolume_2d(clean: np.ndarray, robust: np.ndarray) -> float:
    """The area dominated by the points above (0, 0), both accuracies maximised."""
    order = np.argsort(-clean, kind="stable")
    area, best_robust = 0.0, 0.0
    xs = np.append(clean[order], 0.0)
    for i, j in enumerate(order):
        best_robust = max(best_robust, robust[j])
        area += (xs[i] - xs[i + 1]) * best_robust
    return area


def front_line(clean: np.ndarray, robust: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-dominated points in order of clean accuracy: the line a front is read on."""
    points = np.stack([clean, robust], axis=1)
    x, y = points[nondominated(points, maximise=True)].T
    order = np.argsort(x, kind="stable")
    return x[order], y[order]


def robust_at(line: tuple[np.ndarray, np.ndarray], level: float) -> float:
    """Robust accuracy on a front's line, linearly interpolated at a clean level inside its
    clean range (NaN outside it, and for a single point)."""
    x, y = line
    if len(x) < 2 or not x[0] <= level <= x[-1]:
        return float("nan")
    return float(np.interp(level, x, y))


def _statistics(
    means: dict[str, np.ndarray], fronts: dict[str, list[str]], levels: Sequence[float]
) -> dict[tuple[str, str], float]:
    """{(front, statistic): value} of one draw; means: {config_id: (clean, robust)}."""
    out = {}
    for name, ids in fronts.items():
        clean = np.array([means[i][0] for i in ids])
        robust = np.array([means[i][1] for i in ids])
        out[(name, "hypervolume")] = hypervolume_2d(clean, robust)
        line = front_line(clean, robust) if levels else None
        for level in levels:
            out[(name, f"{MATCHED_PREFIX}{level:.3f}")] = robust_at(line, level)
    return out


def _matrices(done: pd.DataFrame, ids: list[str], seeds: list[int], robust_metric: str):
    """{config_id: (clean (S, Nc), robust (S, Nr))} over the shared seeds; None if any lacks
    per-image outcomes or the configurations' images differ in number."""
    out = {}
    for config_id in ids:
        rows = done[done["config_id"] == config_id].set_index("config/replicate").loc[seeds]
        clean, robust = outcome_matrix(rows, CLEAN), outcome_matrix(rows, robust_metric)
        if clean is None or robust is None:
            return None
        out[config_id] = (clean, robust)
    if len({m[0].shape for m in out.values()}) > 1 or len({m[1].shape for m in out.values()}) > 1:
        return None
    return out


def default_levels(fronts: dict[str, list[str]], means: dict[str, np.ndarray]) -> list[float]:
    """MATCHED_QUANTILES of the clean range every front of two or more points spans (empty
    when those ranges do not overlap, or no two fronts have two points)."""
    ranges = []
    for ids in fronts.values():
        clean = [means[i][0] for i in ids]
        if len(ids) >= 2:
            ranges.append((min(clean), max(clean)))
    if len(ranges) < 2:
        return []
    low, high = max(r[0] for r in ranges), min(r[1] for r in ranges)
    if low >= high:
        return []
    return [round(low + q * (high - low), 3) for q in MATCHED_QUANTILES]


def front_comparison(
    confirmation: pd.DataFrame,
    levels: Sequence[float] | None = None,
    level: float = LEVEL,
    n_boot: int = N_BOOT,
    seed: int = 0,
    robust_metric: str = ROBUST,
) -> pd.DataFrame:
    """One row per (front, statistic): its estimate and interval, and its difference from the
    method's front with interval and p-value (Holm is the caller's: these are few and
    planned). `levels`: the matched clean accuracies (default: `default_levels`); a level
    outside a front's range leaves that front's figure empty. `robust_metric`: the robust
    accuracy the fronts are drawn with (default the study's ε; e.g. test_robust_eps8_255_acc).
    Empty when the method has no confirmed configuration or a configuration lacks per-image
    outcomes."""
    done = completed(confirmation)
    if done.empty or CLEAN not in done or robust_metric not in done:
        return pd.DataFrame()
    done = done.assign(config_id=done["config/config_id"].astype(str))
    members = done.drop_duplicates("config_id")
    fronts: dict[str, list[str]] = {}
    for config_id, method in zip(members["config_id"], members["config/method"], strict=True):
        fronts.setdefault(front_of(config_id, method), []).append(config_id)
    if METHOD not in fronts:
        return pd.DataFrame()
    fronts = {METHOD: fronts.pop(METHOD), **dict(sorted(fronts.items()))}
    ids = [i for members in fronts.values() for i in members]
    seeds = sorted(set.intersection(*(set(done.loc[done["config_id"] == i, "config/replicate"])
                                      for i in ids)))  # fmt: skip
    matrices = _matrices(done, ids, seeds, robust_metric) if seeds else None
    if matrices is None:
        return pd.DataFrame()
    means = {i: (c.mean(), r.mean()) for i, (c, r) in matrices.items()}
    levels = default_levels(fronts, means) if levels is None else list(levels)
    estimate = _statistics(means, fronts, levels)

    per_seed = [
        _statistics({i: (c[j].mean(), r[j].mean()) for i, (c, r) in matrices.items()}, fronts,
                    levels)
        for j in range(len(seeds))
    ]  # fmt: skip
    rng = np.random.default_rng(seed)
    first = next(iter(matrices.values()))
    n_clean, n_robust = first[0].shape[1], first[1].shape[1]
    clean_avg = {i: c.mean(axis=0) for i, (c, _) in matrices.items()}  # seeds averaged
    robust_avg = {i: r.mean(axis=0) for i, (_, r) in matrices.items()}
    boot = []
    for _ in range(n_boot):
        ic, ir = rng.integers(0, n_clean, n_clean), rng.integers(0, n_robust, n_robust)
        draw = {i: (clean_avg[i][ic].mean(), robust_avg[i][ir].mean()) for i in matrices}
        boot.append(_statistics(draw, fronts, levels))

    rows = []
    n_images = min(n_clean, n_robust)
    for (name, statistic), value in estimate.items():
        row = {"front": name, "statistic": statistic, "n_configs": len(fronts[name]),
               "n_seeds": len(seeds), "estimate": value}  # fmt: skip
        part = _interval(value, per_seed, boot, (name, statistic), len(seeds), n_images)
        # an area or an accuracy: its interval within what it can be
        row.update(ci_low=max(part["ci_low"], 0.0), ci_high=min(part["ci_high"], 1.0))
        ref = (METHOD, statistic)
        if name != METHOD:
            diff = value - estimate[ref]
            keyed = [{"d": d[(name, statistic)] - d[ref]} for d in per_seed]
            boot_d = [{"d": d[(name, statistic)] - d[ref]} for d in boot]
            part = _interval(diff, keyed, boot_d, "d", len(seeds), n_images, level)
            row.update({"diff": diff, "diff_ci_low": part["ci_low"],
                        "diff_ci_high": part["ci_high"], "diff_p": part["p"]})  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


def outside_every_front(fronts: pd.DataFrame) -> list[float]:
    """The matched clean levels at which no front has a figure (outside every front's range)."""
    if fronts.empty:
        return []
    matched = fronts[fronts["statistic"].str.startswith(MATCHED_PREFIX)]
    empty = matched.groupby("statistic")["estimate"].apply(lambda v: v.isna().all())
    return [float(s.removeprefix(MATCHED_PREFIX)) for s in empty[empty].index]


def _interval(value, per_seed, boot, key, s: int, n: int, level: float = LEVEL) -> dict:
    if np.isnan(value):
        return {"ci_low": np.nan, "ci_high": np.nan, "p": np.nan}
    seed_values = np.array([d[key] for d in per_seed], dtype=float)
    boot_values = np.array([d[key] for d in boot], dtype=float)
    seed_values, boot_values = (
        seed_values[~np.isnan(seed_values)],
        boot_values[~np.isnan(boot_values)],
    )
    seed_part = seed_values.var(ddof=1) / s if len(seed_values) >= 2 else 0.0
    image_part = boot_values.var(ddof=1) if len(boot_values) >= 2 else 0.0
    low, high, p = interval_from_parts(value, seed_part, image_part, s, n, level)
    return {"ci_low": low, "ci_high": high, "p": p}
