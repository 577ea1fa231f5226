"""A self-contained HTML report of a study: `python -m analysis.report STUDY_DIR [-o FILE]`.

One file, figures embedded as PNG, no scripts and nothing fetched: it opens anywhere, and can be
attached to an issue or mailed. Sections, where the study has the sweep's tables (configs.csv,
pareto.csv, confirmed.csv, selection_bias.csv, answer.csv, ablation.csv, trials.csv; older
studies lack them and the sections are left out): the answer against PGD-AT on the test split
with its verdicts, an ablation's variants against its full setting, the front of configurations
with 95% intervals and masking flags, the trials stopped early, the selection bias. Then, for
every study: Pareto plot of the trials and hypervolume, searched parameters against objectives,
parameter importance, Pareto table, trial table, settings.
"""

import argparse
import base64
import datetime
import html
import json
import os
import sys
from collections.abc import Mapping, Sequence

import optuna
import pandas as pd

from analysis.optuna_study import param_importances
from analysis.pareto import hypervolume, pareto_front
from analysis.plots import (
    config_front_figure,
    confirmed_fronts_figure,
    importance_figure,
    is_accuracy,
    params_figure,
    pareto_figure,
    to_png,
)
from analysis.results import (
    BASELINES,
    completed,
    load_study_settings,
    load_trials,
    objectives_of,
    searched_keys_of,
    searched_trials,
)
from analysis.tables import fronts_table_text, interval_cell
from study.store import (
    ABLATION_FILE,
    ANSWER_FILE,
    CONFIGS_FILE,
    CONFIRMATION_DIR,
    CONFIRMED_FILE,
    FRONTS_FILE,
    PARETO_FILE,
    REPORT_FILE,
    SELECTION_BIAS_FILE,
    TRIALS_FILE,
    StudyStore,
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


# --- the protocol's tables (written by study.outputs) --------------


def mark_stopped(trials: pd.DataFrame, table: pd.DataFrame | None) -> pd.DataFrame:
    """The trials with the sweep's own statuses from its trials.csv (`table`): MO-ASHA's
    early-stopped trials are STOPPED there, with `stopped_at_rung` (Tune calls them TERMINATED),
    so completed() keeps them out of every front. Without live trials (only the tables were
    copied) the table itself is the trial table."""
    if table is None or table.empty or "trial_id" not in table:
        return trials
    if trials.empty:
        return table
    if "status" not in table or not (table["status"] == "STOPPED").any():
        return trials
    stopped = table[table["status"] == "STOPPED"].drop_duplicates("trial_id").set_index("trial_id")
    rung = stopped.get("stopped_at_rung")
    out = trials.copy()
    out.loc[out["trial_id"].isin(stopped.index), "status"] = "STOPPED"
    if rung is not None:
        out["stopped_at_rung"] = out["trial_id"].map(rung)
    return out


def search_stage(trials: pd.DataFrame) -> pd.DataFrame:
    """The search's and baselines' trials: confirmation trials (stage confirmation, fresh seeds,
    evaluated on the test split) belong in no validation front."""
    keep = pd.Series(True, index=trials.index)
    for col in ("config/stage", "stage"):
        if col in trials:
            keep &= trials[col] != "confirmation"
    if "experiment" in trials:
        keep &= trials["experiment"] != CONFIRMATION_DIR
    return trials[keep]


def interval_metrics(df: pd.DataFrame) -> list[str]:
    """The metrics a table gives an interval for: m where m_ci_low is a column (m_mean, or m
    itself for a difference, is its centre)."""
    return [c.removesuffix("_ci_low") for c in df.columns if c.endswith("_ci_low")]


def interval_frame(
    df: pd.DataFrame, columns: Sequence[str], headers: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """The table as the console prints it (analysis.tables.format_table), for HTML or a notebook:
    a metric with an interval reads '97.1 [96.0, 98.2]' (accuracies in %, differences in signed
    points), other values as they are; absent columns are left out."""

    cols = list(df.columns)
    shown = [c for c in columns if c in cols or f"{c}_mean" in cols]
    headers = dict(headers or {})
    for c in shown:
        if c not in headers:
            points = "acc" in c and ("_diff" in c or "_drop" in c)
            unit = " (points)" if points else " (%)" if "acc" in c else ""
            ci = " [95% CI]" if f"{c}_ci_low" in cols else ""
            headers[c] = f"{c}{unit}{ci}"
    rows = [[interval_cell(row, c, cols) for c in shown] for row in df.to_dict("records")]
    return pd.DataFrame(rows, columns=[headers[c] for c in shown])


def _text_table(frame: pd.DataFrame) -> str:
    table = frame.to_html(index=False, border=0)
    return f'<div class="scroll">{table}</div>'


def _config_columns(df: pd.DataFrame, objectives: Mapping[str, str], searched) -> list[str]:
    metrics = [*objectives, *(m for m in interval_metrics(df) if m not in objectives)]
    return ["config_id", "method", "n", *searched, *metrics, "p_front", "masking_flags"]


def _masking_note(configs: pd.DataFrame) -> str:
    if "masking_flags" not in configs:
        return ""
    flagged = configs[configs["masking_flags"].fillna(0) > 0]
    if flagged.empty:
        return (
            '<p class="note">Masking flags: no replicate was flagged (the gradient-free Square '
            "attack never did significantly better than PGD).</p>"
        )
    listed = ", ".join(f"{r.config_id} ({int(r.masking_flags)})" for r in flagged.itertuples())
    return (
        f"<p><b>Masking flags</b> (replicates whose Square accuracy lies below their PGD accuracy "
        f"beyond sampling noise: gradient masking, so PGD overstates their robustness): "
        f"{html.escape(listed)}.</p>"
    )


def _setting_text(setting: Mapping) -> str:
    """mask_ratio=0.25, reg_weight=0.1, epsilon=0.00784"""
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in setting.items()
    )


def paired_frame(table: pd.DataFrame) -> pd.DataFrame:
    """A paired-difference table (answer.csv, ablation.csv) as shown: each configuration, its
    reference, the pairs, each difference with its interval and the verdict."""
    columns = ["config_id", "reference", "n_pairs", *interval_metrics(table), "verdict"]
    return interval_frame(table, columns)


def variant_figures(ablation: pd.DataFrame, confirmed: pd.DataFrame) -> pd.DataFrame:
    """An ablation's confirmed test figures (confirmed.csv) of its variants and full setting,
    each metric's mean with its interval, as shown."""
    rows = confirmed[confirmed["config_id"].isin({*ablation["config_id"], *ablation["reference"]})]
    return interval_frame(rows, ["config_id", "n", *interval_metrics(rows), "masking_flags"])


def _paired_table(table: pd.DataFrame, why_empty: str) -> str:
    """paired_frame as HTML, or a note saying why the table is empty."""
    if table.empty:
        return f'<p class="note">Empty: {why_empty}.</p>'
    return _text_table(paired_frame(table))


# What a paired difference's interval covers and what its verdict says, in plain words.
PAIRED_NOTE = (
    "Differences are in percentage points, paired by confirmation seed and by test image, so what "
    "both models share (a seed's luck, an image's difficulty) cancels. The 95% interval covers "
    "both sources of noise: which seeds trained the models and which test images scored them. "
    "The verdict names a gain (↑) or a loss (↓) only where the interval excludes zero and the "
    "difference survives Holm's correction over every configuration and metric of the table; "
    "<i>no difference beyond the intervals</i> says these seeds and images cannot tell, not "
    "that the two are equal."
)


def _ablation_parts(ablation: pd.DataFrame, confirmed: pd.DataFrame | None) -> list[str]:
    """An ablation's section: each variant minus the full setting (ablation.csv), and the
    confirmed test figures of the variants and the setting (confirmed.csv) with intervals."""
    parts = ["<h2>Ablation: each variant against the full setting (test split)</h2>"]
    parts.append(_paired_table(ablation, "the full setting was not confirmed, or nothing was"))
    if ablation.empty:
        return parts
    parts.append(
        '<p class="note">Each variant switches one component of the setting off: '
        "<i>no_masking</i> (mask_ratio 0), <i>uniform_penalty</i> (the input-gradient penalty "
        "without the LIME weighting), <i>no_penalty</i> (reg_weight 0), <i>no_adversarial</i> "
        "(no adversarial training). Each difference is the variant minus the full setting. "
        f"{PAIRED_NOTE} A loss (↓) says the component helps that metric.</p>"
    )
    if confirmed is not None and not confirmed.empty:
        parts.append("<h3>The variants' confirmed test figures (mean [95% interval])</h3>")
        parts.append(_text_table(variant_figures(ablation, confirmed)))
    return parts


def _protocol_parts(study_dir, settings: dict, trials: pd.DataFrame, name: str) -> list[str]:
    """The answer, an ablation's table, the configuration front with intervals, masking flags,
    stopped trials and the selection bias; [] for a study without the sweep's tables."""
    objectives = objectives_of(settings)
    searched = searched_keys_of(settings)
    files = (CONFIGS_FILE, PARETO_FILE, CONFIRMED_FILE, SELECTION_BIAS_FILE)
    store = StudyStore(study_dir)
    tables = [store.read_table(f) for f in (*files, ANSWER_FILE, ABLATION_FILE)]
    configs, front, confirmed, bias, answer, ablation = tables
    stopped = trials[trials["status"] == "STOPPED"] if "status" in trials else trials.iloc[:0]
    if all(t is None for t in tables) and stopped.empty:
        return []
    parts = ["<h2>Protocol: selected on validation, answered on test</h2>"]
    replicates = settings.get("replicates")
    each = f"{replicates} replicate seeds" if replicates else "its replicate seeds"
    setting = settings.get("ablation")
    if setting:
        text = (
            "<p>An ablation, no search: each variant of one setting (<code>"
            f"{html.escape(_setting_text(setting))}</code>) ran on the <b>validation split</b> "
            f"with {each} (means with 95% intervals over the replicates and the validation "
            "images). "
        )
    else:
        text = (
            "<p>The search selected configurations on the <b>validation split</b>: each "
            f"configuration ran with {each}, and the front is taken over their means (95% "
            "intervals over the replicates and the validation images). "
        )
    retrained = "every variant" if setting else "every front configuration"
    if answer is not None:
        seeds = settings.get("confirm_seeds")
        text += (
            f"The answer is on the <b>test split</b>: {retrained} and every "
            f"baseline was re-trained with {seeds or 'fresh'} fresh seeds the search never used "
            "and evaluated once on test data that no search or baseline trial read.</p>"
        )
    else:
        text += (
            "No answer yet (no answer.csv): the confirmation on the test split has not run "
            f"(<code>python -m study.confirm {html.escape(os.fspath(study_dir))}</code>).</p>"
        )
    parts.append(text)

    fronts = store.read_table(FRONTS_FILE)
    if fronts is not None and not fronts.empty:
        parts.append("<h2>The fronts: each method's confirmed front against the method's "
                     "(test split)</h2>")  # fmt: skip
        parts.append(f"<pre>{html.escape(fronts_table_text(fronts))}</pre>")
        if confirmed is not None and not confirmed.empty:
            parts.append(_img(confirmed_fronts_figure(confirmed, title=name), "confirmed fronts"))
        parts.append(
            '<p class="note">Hypervolume: the area a front dominates above (0, 0) in clean x '
            "robust accuracy. Robust accuracy at matched clean accuracy: read off each front's "
            "line inside its clean range. Each with its 95% interval over seeds and test images "
            "and its difference from the method's front (docs/analysis.md, \"Fronts "
            'compared").</p>'
        )
    if answer is not None:
        which = "variant" if setting else "front configuration"
        parts.append(f"<h2>The answer: each {which} against PGD-AT (test split)</h2>")
        parts.append(_paired_table(answer, "PGD-AT was not confirmed, or nothing was"))
        parts.append(
            f'<p class="note">Each difference is the configuration minus PGD-AT. {PAIRED_NOTE}</p>'
        )
    if ablation is not None:
        parts.extend(_ablation_parts(ablation, confirmed))

    if configs is not None or front is not None:
        parts.append("<h2>Configuration front (validation split, means with 95% intervals)</h2>")
    all_configs = next((t for t in (configs, front) if t is not None), pd.DataFrame())
    ready = all(f"{m}_ci_low" in all_configs for m in list(objectives)[:2])
    if len(objectives) >= 2 and not all_configs.empty and "method" in all_configs and ready:
        fig = config_front_figure(all_configs, objectives, title=f"Study {name}")
        parts.append(_img(fig, "configurations with 95% intervals"))
    if front is not None:
        of = ""
        if "method" in all_configs:
            of = f" of {int((~all_configs['method'].isin(list(BASELINES))).sum())}"
        parts.append(f"<h3>Pareto-optimal configurations by mean ({len(front)}{of})</h3>")
        parts.append(
            _text_table(interval_frame(front, _config_columns(front, objectives, searched)))
        )
        parts.append(
            '<p class="note">Each cell: the mean over the replicates [95% interval]. The '
            "interval covers both sources of noise: which seeds trained the models and which "
            'validation images scored them (docs/analysis.md, "What an interval covers"). '
            "p_front: the share of bootstrap resamples of the replicate seeds in which the "
            "configuration is non-dominated (a low share: on the front by the luck of its "
            "seeds); empty below 5 replicates, too few for a resample to mean anything.</p>"
        )
    if configs is not None:
        parts.append(_masking_note(configs))
        parts.append("<h3>All configurations (searched and baselines)</h3>")
        parts.append(
            _text_table(interval_frame(configs, _config_columns(configs, objectives, searched)))
        )

    if not stopped.empty:
        parts.append(f"<h3>Stopped early ({len(stopped)} trials, kept out of the front)</h3>")
        cols = ["trial_id", "config/config_id", "config/replicate", "stopped_at_rung",
                *objectives, "rounds"]  # fmt: skip
        shown = stopped[[c for c in cols if c in stopped]]
        parts.append(_text_table(interval_frame(shown, list(shown.columns))))
        parts.append(
            '<p class="note">MO-ASHA stopped these configurations at the rung (round) shown; '
            "their last results come from fewer rounds than the others', so they enter neither "
            "configs.csv nor the front.</p>"
        )

    if bias is not None:
        parts.append("<h2>Selection bias: validation mean against confirmed test mean</h2>")
        if bias.empty:
            parts.append('<p class="note">Empty: no front configuration was confirmed.</p>')
        else:
            parts.append(_text_table(interval_frame(bias, list(bias.columns))))
        parts.append(
            '<p class="note"><code>&lt;m&gt;_drop</code> = validation mean (search) minus test '
            "mean (confirmation, fresh seeds), in points: positive means the search's estimate "
            "was optimistic, as a front picked on the validation split tends to be.</p>"
        )
    if confirmed is not None and not confirmed.empty:
        parts.append("<h3>Confirmed on the test split (mean [95% interval] over fresh seeds)</h3>")
        columns = ["config_id", "method", "n", *interval_metrics(confirmed), "masking_flags"]
        parts.append(_text_table(interval_frame(confirmed, columns)))
    return parts


def build_report(study_dir: str | os.PathLike) -> str:
    """The report's HTML text."""
    settings = load_study_settings(study_dir)
    objectives = objectives_of(settings)
    name = settings.get("name") or os.path.basename(os.fspath(study_dir).rstrip("/"))
    all_trials = mark_stopped(load_trials(study_dir), StudyStore(study_dir).read_table(TRIALS_FILE))
    trials = search_stage(all_trials)  # the validation fronts: no confirmation trial
    done = completed(trials)
    method_done = searched_trials(done)
    front = pareto_front(method_done, objectives)
    search = settings.get("search") or {}
    params = [f"config/{p}" for p in search if f"config/{p}" in trials]
    key_cols = ["trial_id", "number", "config/method", *objectives, *params]
    key_cols = [c for c in key_cols if c in trials]

    parts = [f"<h1>Study {html.escape(name)}</h1>"]
    counts = ", ".join(f"{n} {s}" for s, n in all_trials["status"].value_counts().items())
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    parts.append(
        f'<p class="note">{html.escape(os.fspath(study_dir))} &middot; {len(all_trials)} trials '
        f"({html.escape(counts)}) &middot; report written {stamp}</p>"
    )
    protocol = _protocol_parts(study_dir, settings, all_trials, name)
    parts.extend(protocol)
    parts.append("<h2>Pareto front of the trials</h2>")
    if protocol:
        parts.append(
            '<p class="note">Every finished search and baseline trial (each replicate on its '
            "own, validation split); the study's front is the one of configurations above.</p>"
        )
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
    parts.append(_table(front[[c for c in [*key_cols, "rounds", "time_total_s"] if c in front]]))

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
    cols = ["trial_id", "stage", "config/stage", "config/config_id", "config/replicate", *key_cols]
    cols += ["status", "stopped_at_rung", "rounds", "time_total_s", "node_ip", "error"]
    parts.append(_table(all_trials[[c for c in dict.fromkeys(cols) if c in all_trials]]))
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
        path = StudyStore(args.study_dir).write_text(REPORT_FILE, text)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
