"""Figures a researcher can read: axes labelled with units, the front distinct, baselines named.

Accuracies are stored as fractions and shown in %. Functions named *_figure return a matplotlib
Figure (notebooks display it, the report embeds it); plot_pareto saves one to a file. Figures
are built without pyplot: no GUI backend, no global state, nothing to close.
"""

import io
import math
import os
import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.fronts import CLEAN, ROBUST, front_line, front_of
from analysis.pareto import pareto_mask
from analysis.results import BASELINES, METHOD, METHOD_LABEL, searched_trials
from analysis.tables import is_accuracy
from study.store import BASELINES_DIR

_BASELINE_STYLE = {
    "erm": ("s", "tab:blue"),
    "pgd_at": ("^", "tab:green"),
    "ig_norm": ("D", "tab:purple"),
    "ig_sum_norm": ("v", "tab:brown"),
    "trades": ("P", "tab:olive"),
}
FRONT_COLOR = "tab:red"
_NAMES = {
    "clean_acc": "Clean accuracy",
    "robust_acc": "Robust accuracy under PGD",
    "train_loss": "Training loss",
    "mask_ratio": "Masked superpixel fraction",
    "reg_weight": "Regularisation weight",
    "epsilon": "Training ε (L∞)",
}


def scale(df: pd.DataFrame, column: str) -> pd.Series:
    """Column values as plotted: accuracies in %."""
    values = pd.to_numeric(df[column], errors="coerce")
    return values * 100 if is_accuracy(column) else values


def display_name(column: str) -> str:
    """'config/reg_weight' -> 'Regularisation weight'; unknown names are made readable."""
    name = column.removeprefix("config/")
    return _NAMES.get(name, name.replace("_", " ").capitalize())


def label(column: str, direction: str | None = None, df: pd.DataFrame | None = None) -> str:
    """Axis label with units, e.g. 'Robust accuracy under PGD, ε=0.1 (%, higher is better)'."""
    name = column.removeprefix("config/")
    text = display_name(name)
    if name == "robust_acc" and df is not None and "config/eval_epsilon" in df:
        eps = df["config/eval_epsilon"].dropna().unique()
        if len(eps) == 1:
            text += f", ε={eps[0]:.3g}"
    units = ["%"] if is_accuracy(name) else ["s"] if name.endswith("_seconds") else []
    if direction:
        units.append("higher is better" if direction == "max" else "lower is better")
    return f"{text} ({', '.join(units)})" if units else text


def method_label(method: str) -> str:
    return BASELINES.get(method, METHOD_LABEL if method == METHOD else str(method))


def _finished(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "TERMINATED"] if "status" in df else df


def _staircase(xs: np.ndarray, ys: np.ndarray, dx: str, dy: str) -> tuple[np.ndarray, np.ndarray]:
    """The attainment curve through 2-D front points: the boundary of what they dominate."""
    sx, sy = (1 if dx == "max" else -1), (1 if dy == "max" else -1)
    order = np.argsort(xs * sx)  # in "maximise" space: x ascending, so y descending
    px, py = xs[order] * sx, ys[order] * sy
    vx, vy = [px[0]], [py[0]]
    for i in range(1, len(px)):
        vx += [px[i - 1], px[i]]
        vy += [py[i], py[i]]
    return np.array(vx) * sx, np.array(vy) * sy


def pareto_figure(
    df: pd.DataFrame,
    objectives: dict[str, str],
    *,
    x: str | None = None,
    y: str | None = None,
    baselines_col: str = "config/method",
    title: str | None = None,
) -> Figure:
    """x against y for finished trials; the front of the searched (non-baseline) trials in
    these two objectives highlighted and joined by its attainment curve; baselines named."""
    names = list(objectives)
    x, y = x or names[0], y or names[1]
    dx, dy = objectives.get(x, "max"), objectives.get(y, "max")
    finished = _finished(df)
    is_base = pd.Series(False, index=finished.index)
    if baselines_col in finished:
        is_base = finished[baselines_col].isin(list(BASELINES))
    searched, base = finished[~is_base], finished[is_base]

    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.subplots()
    front_mask = pareto_mask(searched, {x: dx, y: dy})
    front = searched[front_mask]
    ax.scatter(
        scale(searched, x),
        scale(searched, y),
        s=30,
        c="0.65",
        edgecolors="0.4",
        linewidths=0.5,
        label=f"{METHOD_LABEL}: finished trials ({len(searched)})",
        zorder=2,
    )
    if len(front):
        fx, fy = scale(front, x).to_numpy(), scale(front, y).to_numpy()
        sx, sy = _staircase(fx, fy, dx, dy)
        ax.plot(sx, sy, color=FRONT_COLOR, lw=1.5, alpha=0.8, zorder=3)
        ax.scatter(
            fx,
            fy,
            s=90,
            marker="*",
            c=FRONT_COLOR,
            edgecolors="black",
            linewidths=0.7,
            label=f"{METHOD_LABEL}: Pareto-optimal ({len(front)}), #trial number",
            zorder=4,
        )
        if "number" in front:
            for px, py, n in zip(fx, fy, front["number"], strict=True):
                if pd.notna(n):
                    ax.annotate(
                        f"#{n}",
                        (px, py),
                        xytext=(5, 4),
                        textcoords="offset points",
                        fontsize=8,
                        color="0.2",
                    )
    for method, group in base.groupby(baselines_col, sort=False) if len(base) else []:
        marker, color = _BASELINE_STYLE.get(method, ("X", "black"))
        ax.scatter(
            scale(group, x),
            scale(group, y),
            s=80,
            marker=marker,
            c=color,
            edgecolors="black",
            linewidths=0.7,
            label=f"Baseline: {method_label(method)}",
            zorder=5,
        )
    ax.set_xlabel(label(x, dx, finished))
    ax.set_ylabel(label(y, dy, finished))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    title = title or f"{label(x)} vs {label(y)}".replace(" (%)", "")
    if len(finished) < len(df):
        title += f"\n({len(df) - len(finished)} errored or unfinished trials not shown)"
    ax.set_title(title, fontsize=11)
    return fig


def plot_pareto(
    df: pd.DataFrame,
    objectives: dict[str, str],
    path: str | os.PathLike,
    *,
    x: str | None = None,
    y: str | None = None,
    baselines_col: str = "config/method",
    title: str | None = None,
) -> None:
    """Save pareto_figure() to path (PNG at 150 dpi unless the suffix says otherwise)."""
    fig = pareto_figure(df, objectives, x=x, y=y, baselines_col=baselines_col, title=title)
    fig.savefig(path, dpi=150)


def to_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (for embedding in HTML)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def params_figure(df: pd.DataFrame, search: dict[str, dict], objectives: dict[str, str]) -> Figure:
    """Each searched parameter (columns) against each objective (rows), finished trials only;
    Pareto-optimal trials starred. Log-scaled x for log-uniform parameters."""
    df = searched_trials(_finished(df))
    params = [p for p in search if f"config/{p}" in df]
    front = pareto_mask(df, objectives)
    fig = Figure(figsize=(3.4 * max(len(params), 1), 3 * len(objectives)), layout="constrained")
    axes = fig.subplots(len(objectives), max(len(params), 1), squeeze=False)
    for row, obj in enumerate(objectives):
        for col, param in enumerate(params):
            ax, xs, ys = axes[row][col], df[f"config/{param}"], scale(df, obj)
            numeric = pd.api.types.is_numeric_dtype(xs)
            xs = xs if numeric else xs.astype(str)
            ax.scatter(xs[~front], ys[~front], s=20, c="0.6", label="trial")
            ax.scatter(
                xs[front],
                ys[front],
                s=60,
                marker="*",
                c=FRONT_COLOR,
                edgecolors="black",
                linewidths=0.5,
                label="Pareto-optimal",
            )
            if search[param].get("type") == "loguniform":
                ax.set_xscale("log")
            ax.set_xlabel(label(param))
            ax.set_ylabel(textwrap.fill(label(obj, None, df), 26) if col == 0 else "")
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{METHOD_LABEL}: searched parameters against objectives", fontsize=11)
    return fig


def importance_figure(importances: pd.DataFrame) -> Figure:
    """Horizontal bars: parameter importance (rows) for each objective (columns)."""
    n_params, n_obj = importances.shape
    fig = Figure(figsize=(7, 1.2 + 0.5 * n_params * max(n_obj, 1) ** 0.5), layout="constrained")
    ax = fig.subplots()
    height = 0.8 / max(n_obj, 1)
    pos = np.arange(n_params)
    for i, obj in enumerate(importances.columns):
        ax.barh(pos + i * height, importances[obj], height=height, label=display_name(obj))
    ax.set_yticks(pos + height * (n_obj - 1) / 2, [display_name(p) for p in importances.index])
    ax.invert_yaxis()
    ax.set_xlabel("Importance (fANOVA share of variance, sums to 1 per objective)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_xlim(0, max(1.0, math.ceil(importances.to_numpy().max() * 10) / 10))
    return fig


def config_front_figure(
    configs: pd.DataFrame, objectives: dict[str, str], *, title: str | None = None
) -> Figure:
    """Configurations' means with 95% interval error bars (x and y: the first two objectives),
    the front of the method's configurations highlighted, each searched baseline's
    configurations with its front as a dashed line, fixed baselines named."""
    from analysis.replicates import config_front

    x, y = list(objectives)[:2]
    dx, dy = objectives[x], objectives[y]
    is_base = configs["method"].isin(list(BASELINES)) if len(configs) else pd.Series(dtype=bool)
    is_fixed = is_base & (configs["experiment"] == BASELINES_DIR) if len(configs) else is_base
    searched, base = configs[~is_base], configs[is_fixed]
    baseline_searches = configs[is_base & ~is_fixed]
    front = config_front(searched, {x: dx, y: dy})
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.subplots()

    def bars(df, **style):
        mx, my = 100 * df[f"{x}_mean"], 100 * df[f"{y}_mean"]
        ex = [mx - 100 * df[f"{x}_ci_low"], 100 * df[f"{x}_ci_high"] - mx]
        ey = [my - 100 * df[f"{y}_ci_low"], 100 * df[f"{y}_ci_high"] - my]
        ax.errorbar(mx, my, xerr=ex, yerr=ey, linestyle="none", capsize=2, **style)

    bars(searched, marker="o", color="0.55", label=f"{METHOD_LABEL} ({len(searched)} configs)")
    if len(front):
        bars(front, marker="*", markersize=12, color=FRONT_COLOR, label="Pareto-optimal by mean")
        for _, row in front.iterrows():
            share = row.get("p_front")
            text = row["config_id"] + (f" (p_front {share:.2f})" if pd.notna(share) else "")
            ax.annotate(text, (100 * row[f"{x}_mean"], 100 * row[f"{y}_mean"]),
                        xytext=(5, 4), textcoords="offset points", fontsize=8)  # fmt: skip
    for method, group in baseline_searches.groupby("method", sort=True):
        marker, color = _BASELINE_STYLE.get(method, ("X", "black"))
        bars(group, marker=marker, color=color, markersize=5, alpha=0.6,
             label=f"{method_label(method)}, searched ({len(group)} configs)")  # fmt: skip
        line = config_front(group, {x: dx, y: dy}).sort_values(f"{x}_mean")
        ax.plot(100 * line[f"{x}_mean"], 100 * line[f"{y}_mean"], "--", color=color, lw=1)
    for _, row in base.iterrows():
        marker, color = _BASELINE_STYLE.get(row["method"], ("X", "black"))
        bars(row.to_frame().T.astype({f"{x}_mean": float}), marker=marker, color=color,
             markersize=8, label=f"Baseline: {method_label(row['method'])}")  # fmt: skip
    ax.set_xlabel(label(x, dx) + " (mean, 95% CI)")
    ax.set_ylabel(label(y, dy) + " (mean, 95% CI)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    ax.set_title(title or "Configurations by their mean over replicates", fontsize=11)
    return fig


def confirmed_fronts_figure(confirmed: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Each method's confirmed configurations on the test split (clean against robust accuracy,
    means with 95% intervals over seeds and test images), its front joined by a line: the
    fronts that analysis.fronts compares."""
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.subplots()
    fronts = confirmed.assign(
        front=[front_of(str(c), m) for c, m in zip(confirmed["config_id"], confirmed["method"],
                                                   strict=True)]
    )  # fmt: skip
    for name, group in fronts.groupby("front", sort=True):
        method = group["method"].iloc[0]
        marker, color = _BASELINE_STYLE.get(method, ("*", FRONT_COLOR))
        mx, my = 100 * group[f"{CLEAN}_mean"], 100 * group[f"{ROBUST}_mean"]
        ex = [mx - 100 * group[f"{CLEAN}_ci_low"], 100 * group[f"{CLEAN}_ci_high"] - mx]
        ey = [my - 100 * group[f"{ROBUST}_ci_low"], 100 * group[f"{ROBUST}_ci_high"] - my]
        label = (
            METHOD_LABEL
            if name == METHOD
            else method_label(method) + (", searched" if name.endswith("searched") else "")
        )
        ax.errorbar(mx, my, xerr=ex, yerr=ey, linestyle="none", marker=marker, color=color,
                    capsize=2, markersize=7, label=label)  # fmt: skip
        x, y = front_line(group[f"{CLEAN}_mean"].to_numpy(), group[f"{ROBUST}_mean"].to_numpy())
        ax.plot(100 * x, 100 * y, "-", color=color, lw=1)
    ax.set_xlabel("Test clean accuracy % (mean, 95% CI over seeds and images)")
    ax.set_ylabel("Test robust accuracy % (worst case; mean, 95% CI)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    ax.set_title(title or "Confirmed fronts", fontsize=11)
    return fig
