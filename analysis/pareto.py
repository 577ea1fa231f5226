"""Pareto fronts, hypervolume and study comparison for any number of objectives.

Non-domination and hypervolume come from `moocore` (the C implementations of Fonseca,
Paquete and López-Ibáñez, the reference code of the multi-objective literature). Optuna 5 has
hypervolume code, but only in its private ``optuna._hypervolume`` module, which may change in
any release; pymoo would pull in a whole optimisation framework for one function.
"""

from collections.abc import Mapping

import moocore
import numpy as np
import pandas as pd

DIRECTIONS = ("max", "min")


def _maximise(objectives: Mapping[str, str]) -> list[bool]:
    bad = {k: v for k, v in objectives.items() if v not in DIRECTIONS}
    if bad or not objectives:
        raise ValueError(f"objectives must map metric names to 'max' or 'min', got {objectives}")
    return [v == "max" for v in objectives.values()]


def _points(df_or_points: pd.DataFrame | np.ndarray, objectives: Mapping[str, str]) -> np.ndarray:
    """The objective values as a float matrix, one column per objective in the given order."""
    if isinstance(df_or_points, pd.DataFrame):
        missing = [k for k in objectives if k not in df_or_points]
        if missing:
            raise KeyError(f"objective columns not in the table: {missing}")
        return df_or_points[list(objectives)].to_numpy(dtype=float, na_value=np.nan)
    points = np.asarray(df_or_points, dtype=float).reshape(-1, len(objectives))
    return points


def pareto_mask(df: pd.DataFrame, objectives: dict[str, str]) -> np.ndarray:
    """True for the rows no other row dominates; rows with a NaN objective are never on the front.

    Duplicates of a front point are all on the front: equal results are equally good trials.
    """
    return nondominated(_points(df, objectives), _maximise(objectives))


def nondominated(points: np.ndarray, maximise: list[bool] | bool) -> np.ndarray:
    """pareto_mask on an (n, objectives) array: what a bootstrap calls once per draw."""
    finite = ~np.isnan(points).any(axis=1)
    mask = np.zeros(len(points), dtype=bool)
    if finite.any():
        mask[finite] = moocore.is_nondominated(points[finite], maximise=maximise, keep_weakly=True)
    return mask


def pareto_front(df: pd.DataFrame, objectives: dict[str, str]) -> pd.DataFrame:
    """The non-dominated rows, sorted by the first objective (best last for 'max')."""
    first = next(iter(objectives))
    return df[pareto_mask(df, objectives)].sort_values(first, kind="stable")


def hypervolume(
    df_or_points: pd.DataFrame | np.ndarray,
    objectives: dict[str, str],
    reference: Mapping[str, float],
) -> float:
    """Volume of objective space dominated by the points and bounded by the reference point.

    Rows with NaN are ignored; points no better than the reference add nothing. For accuracies
    in [0, 1] to maximise, reference {name: 0.0} gives the area under the attainment curve.
    """
    maximise = _maximise(objectives)
    points = _points(df_or_points, objectives)
    points = points[~np.isnan(points).any(axis=1)]
    ref = [float(reference[k]) for k in objectives]
    if len(points) == 0:
        return 0.0
    return float(moocore.hypervolume(points, ref=ref, maximise=maximise))


def _dominated_by(points: np.ndarray, others: np.ndarray, maximise: list[bool]) -> np.ndarray:
    """For each point: does some point of `others` dominate it (at least as good, not equal)?"""
    if len(points) == 0 or len(others) == 0:
        return np.zeros(len(points), dtype=bool)
    sign = np.where(maximise, 1.0, -1.0)
    p, o = points[:, None, :] * sign, others[None, :, :] * sign
    return ((o >= p).all(axis=2) & (o > p).any(axis=2)).any(axis=1)


def compare_studies(
    df_a: pd.DataFrame,
    df_b: pd.DataFrame,
    objectives: dict[str, str],
    reference: Mapping[str, float],
    names: tuple[str, str] = ("a", "b"),
) -> pd.DataFrame:
    """Hypervolume and front size of each study, and how much of each front the other dominates."""
    maximise = _maximise(objectives)
    fronts = [_points(pareto_front(df, objectives), objectives) for df in (df_a, df_b)]
    rows = []
    for name, front, other in zip(names, fronts, fronts[::-1], strict=True):
        dominated = int(_dominated_by(front, other, maximise).sum())
        rows.append(
            {
                "study": name,
                "hypervolume": hypervolume(front, objectives, reference),
                "front_size": len(front),
                "dominated_by_other": dominated,
                "share_dominated": dominated / len(front) if len(front) else float("nan"),
            }
        )
    return pd.DataFrame(rows).set_index("study")
