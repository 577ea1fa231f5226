"""A self-contained HTML report of a study: `python -m analysis.report STUDY_DIR [-o FILE]`.

One file, figures embedded as PNG, no scripts and nothing fetched: it opens anywhere, and can be
attached to an issue or mailed. Sections: settings, Pareto plot and hypervolume, searched
parameters against objectives, parameter importance, Pareto table, trial table.
"""

import argparse
import base64
import datetime
import html
import json
import os
import sys

import optuna
import pandas as pd

from analysis.optuna_study import param_importances
from analysis.pareto import hypervolume, pareto_front
from analysis.plots import (
    importance_figure,
    is_accuracy,
    params_figure,
    pareto_figure,
    to_png,
)
from analysis.results import (
    completed,
    load_study_settings,
    load_trials,
    objectives_of,
    searched_trials,
    write_text,
)

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0 1.5em; }
th, td { border: 1px solid #ddd; padding: .25em .5em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.note { color: #555; font-size: .9em; } img { max-width: 100%; }
.scroll { overflow-x: auto; }
"""


def accuracy_reference(objectives: dict[str, str]) -> dict[str, float] | None:
    """Hypervolume reference for accuracies: 0 for those maximised, 1 for those minimised
    (the worst possible value, so every trial counts); None if an objective is no accuracy."""
    if not all(is_accuracy(k) for k in objectives):
        return None
    return {k: 0.0 if d == "max" else 1.0 for k, d in objectives.items()}


def _table(df: pd.DataFrame) -> str:
    """An HTML table with accuracies in % and short column names."""
    out = df.copy()
    for col in out.columns:
        if is_accuracy(col) and pd.api.types.is_numeric_dtype(out[col]):
            out[col] = out[col] * 100
    out.columns = [
        f"{c.removeprefix('config/')} (%)" if is_accuracy(c) else c.removeprefix("config/")
        for c in out.columns
    ]
    table = out.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0)
    return f'<div class="scroll">{table}</div>'


def _img(fig, alt: str) -> str:
    data = base64.b64encode(to_png(fig)).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _settings_html(settings: dict) -> str:
    if not settings:
        return '<p class="note">No study.json: a plain Ray Tune experiment.</p>'
    search = settings.get("search") or {}
    rows = [{"parameter": k, **v} for k, v in search.items()]
    other = {k: v for k, v in settings.items() if k not in ("search", "trial", "objectives")}
    return (
        "<h3>Objectives</h3>"
        + _table(pd.DataFrame(objectives_of(settings).items(), columns=["metric", "direction"]))
        + "<h3>Searched parameters</h3>"
        + (_table(pd.DataFrame(rows)) if rows else '<p class="note">none</p>')
        + "<h3>Study</h3>"
        + _table(pd.DataFrame({"setting": other.keys(), "value": map(str, other.values())}))
        + "<h3>Fixed trial configuration</h3><pre>"
        + html.escape(json.dumps(settings.get("trial") or {}, indent=2))
        + "</pre>"
    )


def build_report(study_dir: str | os.PathLike) -> str:
    """The report's HTML text."""
    settings = load_study_settings(study_dir)
    objectives = objectives_of(settings)
    trials = load_trials(study_dir)
    name = settings.get("name") or os.path.basename(os.fspath(study_dir).rstrip("/"))
    done = completed(trials)
    method_done = searched_trials(done)
    front = pareto_front(method_done, objectives)
    search = settings.get("search") or {}
    params = [f"config/{p}" for p in search if f"config/{p}" in trials]
    key_cols = ["trial_id", "number", "config/method", *objectives, *params]
    key_cols = [c for c in key_cols if c in trials]

    parts = [f"<h1>Study {html.escape(name)}</h1>"]
    counts = ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items())
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    parts.append(
        f'<p class="note">{html.escape(os.fspath(study_dir))} &middot; {len(trials)} trials '
        f"({html.escape(counts)}) &middot; report written {stamp}</p>"
    )
    parts.append("<h2>Pareto front</h2>")
    if not len(done):
        parts.append('<p class="note">No trial has finished yet.</p>')
    if len(objectives) >= 2 and len(done):
        names = list(objectives)
        for i, y in enumerate(names[1:], start=1):
            fig = pareto_figure(trials, objectives, x=names[0], y=y, title=f"Study {name}")
            parts.append(_img(fig, f"{names[0]} against {names[i]}"))
    reference = accuracy_reference(objectives)
    if reference is not None and len(method_done):
        hv = hypervolume(method_done, objectives, reference)
        parts.append(
            f"<p>Hypervolume of the LIME-guided front: <b>{hv:.4f}</b> (accuracies as "
            f"fractions, reference point {reference}; 1 would be a perfect model).</p>"
        )
    parts.append(f"<h3>Pareto-optimal trials ({len(front)} of {len(method_done)} finished)</h3>")
    parts.append(_table(front[key_cols + ["rounds", "time_total_s"]]))

    parts.append("<h2>Searched parameters against objectives</h2>")
    if search and len(method_done):
        parts.append(_img(params_figure(trials, search, objectives), "parameters"))
    parts.append("<h2>Parameter importance</h2>")
    try:
        importances = param_importances(trials, settings)
        parts.append(_img(importance_figure(importances), "parameter importance"))
        parts.append(
            '<p class="note">fANOVA (Optuna) over the finished LIME-guided trials; with few '
            "trials it is a rough guide.</p>"
        )
    except ValueError as e:
        parts.append(f'<p class="note">Not computed: {html.escape(str(e))}</p>')

    parts.append("<h2>All trials</h2>")
    cols = key_cols + ["status", "rounds", "time_total_s", "node_ip", "error"]
    parts.append(_table(trials[[c for c in dict.fromkeys(cols) if c in trials]]))
    parts.append("<h2>Settings</h2>" + _settings_html(settings))
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Study {html.escape(name)}</title><style>{CSS}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m analysis.report", description="Write a study's HTML report."
    )
    p.add_argument("study_dir", help="study directory: a local path or s3://...")
    p.add_argument("-o", "--out", help="output file (default: STUDY_DIR/report.html)")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # quiet in-memory study for importance
    text = build_report(args.study_dir)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
        path = args.out
    else:
        path = write_text(args.study_dir, "report.html", text)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
