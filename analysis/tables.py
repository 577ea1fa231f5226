"""Plain-text tables of a study: the console's lines, `python -m study.status` and the report.

Accuracies (a metric name with "acc") in percent with one decimal, differences of accuracies
(`_diff`) as signed points, and a metric with `<m>_ci_low`/`<m>_ci_high` beside it as
"97.1 [96.0, 98.2]". No Ray or torch here: the analysis and a status query read studies
without them.
"""

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from study.store import BASELINE_SEARCH_PREFIX, BASELINES_DIR, CONFIRMATION_DIR

# Tune's trial statuses (plus the sweep's STOPPED, for early-stopped trials) -> our buckets.
COUNT_KEYS = ("done", "running", "pending", "errored", "stopped")
STATUS_BUCKET = {
    "TERMINATED": "done",
    "RUNNING": "running",
    "PENDING": "pending",
    "PAUSED": "pending",
    "ERROR": "errored",
    "STOPPED": "stopped",
}


def stage_of(experiment: str, study_name: str) -> str:
    """The stage of a Tune experiment folder: the study's own folder is the search;
    `baselines` and `confirmation` are theirs, and a searched baseline's `search-<method>` is
    the baselines'; a kept earlier confirmation (`confirmation.<timestamp>`) is "archived",
    anything else "other"."""
    if experiment == study_name:
        return "search"
    if experiment in (BASELINES_DIR, CONFIRMATION_DIR):
        return experiment
    if experiment.startswith(BASELINE_SEARCH_PREFIX):
        return BASELINES_DIR
    if experiment.startswith("confirmation."):
        return "archived"
    return "other"


def count_statuses(statuses: Iterable[str], total: int | None = None) -> dict[str, int]:
    """Counts of done, running, pending, errored and stopped trials. Trials the searcher has not
    created yet count as pending: pass the stage's planned `total`."""
    counts = dict.fromkeys(COUNT_KEYS, 0)
    for status in statuses:
        counts[STATUS_BUCKET.get(str(status), "pending")] += 1
    if total is not None:
        counts["pending"] += max(0, total - sum(counts.values()))
    return counts


def eta_seconds(
    counts: Mapping[str, int], mean_wall_s: float | None, concurrency: int | None
) -> float | None:
    """Time left: remaining (running + pending) trials x mean finished-trial wall time /
    concurrency; None until a trial has finished."""
    remaining = counts.get("running", 0) + counts.get("pending", 0)
    if remaining == 0:
        return 0.0
    if mean_wall_s is None or not math.isfinite(mean_wall_s):
        return None
    return remaining * mean_wall_s / max(1, concurrency or 1)


def format_duration(seconds: float) -> str:
    """45s, 3m05s, 1h02m."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_counts(
    counts: Mapping[str, int],
    total: int | None = None,
    eta_s: float | None = None,
    show_stopped: bool | None = None,
) -> str:
    """'12/16 done, 2 running, 2 pending, 0 errored' (+ ', 1 stopped' when any, or always with
    show_stopped=True) (+ '; ~4m10s left')."""
    total = sum(counts.get(k, 0) for k in COUNT_KEYS) if total is None else total
    parts = [f"{counts.get('done', 0)}/{total} done"]
    parts += [f"{counts.get(k, 0)} {k}" for k in ("running", "pending", "errored")]
    if show_stopped or (show_stopped is None and counts.get("stopped", 0)):
        parts.append(f"{counts.get('stopped', 0)} stopped")
    text = ", ".join(parts)
    if eta_s is not None and (counts.get("running", 0) or counts.get("pending", 0)):
        text += f"; ~{format_duration(eta_s)} left"
    return text


def short_metric(name: str) -> str:
    """val_clean_acc -> clean, test_autoattack_acc -> autoattack, val_loss -> loss."""
    for prefix in ("val_", "test_"):
        name = name.removeprefix(prefix)
    return name.removesuffix("_acc")


def is_accuracy(name: str) -> bool:
    """An accuracy, shown in percent: a name with "acc", or CIFAR-10-C's mean accuracy over
    its corruptions (test_cifar10c_mean), and their differences (`_diff`)."""
    return "acc" in name or "cifar10c_mean" in name


def is_missing(v: Any) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # a list or an array: not a missing scalar
        return False


def format_value(v: Any, name: str = "") -> str:
    """Accuracies (a name with 'acc') as percent with one decimal (signed for a `_diff`), other
    floats with 3 significant digits, integers and text as they are; missing values as '-'."""
    if is_missing(v):
        return "-"
    if isinstance(v, str | bool | np.bool_) or not isinstance(v, numbers.Real):
        return str(v)
    if is_accuracy(name):
        return f"{100 * float(v):+.1f}" if "_diff" in name else f"{100 * float(v):.1f}"
    if isinstance(v, numbers.Integral):
        return str(int(v))
    return f"{float(v):.3g}"


def interval_cell(row: Mapping[str, Any], column: str, df_columns: Sequence[str]) -> str:
    """One cell: an interval 'center [low, high]' where <column>_ci_low/_ci_high exist (center:
    the column itself, else <column>_mean), else the plain value."""
    center = column if column in df_columns else f"{column}_mean"
    lo, hi = f"{column}_ci_low", f"{column}_ci_high"
    text = format_value(row.get(center), column)
    if lo in df_columns and hi in df_columns and not (is_missing(row[lo]) or is_missing(row[hi])):
        text += f" [{format_value(row[lo], column)}, {format_value(row[hi], column)}]"
    return text


def format_table(
    df: pd.DataFrame,
    columns: Sequence[str],
    headers: Mapping[str, str] | None = None,
    indent: str = "  ",
) -> str:
    """A plain aligned text table. Each column is a column of df, or a metric m whose m_mean (and
    m_ci_low, m_ci_high) are: then the cell reads '97.1 [96.0, 98.2]'. Accuracies are in percent,
    differences of accuracies (`_diff`) signed percentage points. Absent columns are left out."""
    headers = dict(headers or {})
    cols = list(df.columns)
    shown = [c for c in columns if c in cols or f"{c}_mean" in cols]
    if not shown:
        return ""
    rows = [[interval_cell(row, c, cols) for c in shown] for row in df.to_dict("records")]
    names = [headers.get(c, c) for c in shown]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    left = [
        c in cols and df[c].map(lambda v: isinstance(v, str) or is_missing(v)).all() for c in shown
    ]

    def line(cells: Sequence[str]) -> str:
        out = [
            cell.ljust(w) if is_left else cell.rjust(w)
            for cell, w, is_left in zip(cells, widths, left, strict=True)
        ]
        return (indent + "  ".join(out)).rstrip()

    return "\n".join([line(names), *(line(r) for r in rows)])


def front_table(front: pd.DataFrame, objectives: Mapping[str, str], searched: Sequence[str]) -> str:
    """The front of configurations (analysis.replicates.config_front): id, replicates, searched
    values, each objective's mean with its 95% interval, and masking flags when any."""
    columns = ["config_id", "n", *searched, *objectives]
    if "masking_flags" in front and (front["masking_flags"].fillna(0) > 0).any():
        columns.append("masking_flags")
    headers = {m: f"{short_metric(m)} %" if is_accuracy(m) else m for m in objectives}
    headers["masking_flags"] = "masking"
    return format_table(front, columns, headers)


def answer_table_text(answer: pd.DataFrame) -> str:
    """answer.csv: each confirmed configuration against the reference, the paired differences
    (percentage points, 95% intervals) and the verdict."""
    diffs = [c for c in answer.columns if c.endswith("_diff")]
    headers = {d: f"{short_metric(d.removesuffix('_diff'))} diff" for d in diffs}
    return format_table(answer, ["config_id", "reference", "n_pairs", *diffs, "verdict"], headers)


def fronts_table_text(fronts: pd.DataFrame) -> str:
    """fronts.csv: per front and statistic, the estimate and its difference from the method's
    front, each with its 95% interval (hypervolume as a fraction of the unit square; robust
    accuracy at a matched clean level in percent, differences in signed points)."""
    rows = []
    for row in fronts.to_dict("records"):
        statistic = row["statistic"]
        name = "hypervolume"
        if statistic.startswith("robust_at_clean_"):
            level = float(statistic.removeprefix("robust_at_clean_"))
            statistic, name = f"robust % at clean {100 * level:.1f}%", "robust_acc"
        cells = {"front": row["front"], "statistic": statistic, "n_configs": row["n_configs"]}
        cells["estimate"] = _cell(row, "estimate", "ci_low", "ci_high", name)
        cells["vs method"] = _cell(row, "diff", "diff_ci_low", "diff_ci_high", f"{name}_diff")
        rows.append(cells)
    table = pd.DataFrame(rows)
    return format_table(table, list(table.columns))


def _cell(row: Mapping[str, Any], center: str, low: str, high: str, name: str) -> str:
    if is_missing(row.get(center)):
        return "-"
    if name.startswith("hypervolume"):
        sign = "+" if name.endswith("_diff") else ""
        text = f"{row[center]:{sign}.3f}"
        if not (is_missing(row.get(low)) or is_missing(row.get(high))):
            text += f" [{row[low]:{sign}.3f}, {row[high]:{sign}.3f}]"
        return text
    text = format_value(row[center], name)
    if not (is_missing(row.get(low)) or is_missing(row.get(high))):
        text += f" [{format_value(row[low], name)}, {format_value(row[high], name)}]"
    return text
