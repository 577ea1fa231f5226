"""The paper's CIFAR-10 figures beside this study's best trials (the reproduction notebook).

Paper: arXiv 2412.18952, LIME-guided refinement on CIFAR-10 at a small perturbation. The paper
and a study differ in dataset, model, attack and budget unless the study says otherwise, so the
comparison shows whether the direction of the effect reproduces, not the exact numbers.
"""

import pandas as pd
from matplotlib.figure import Figure

from analysis.results import BASELINES, METHOD_LABEL, completed, searched_trials

PAPER_SOURCE = "arXiv 2412.18952 (CIFAR-10)"
# model -> (clean accuracy, adversarial accuracy), fractions as the study stores them
PAPER = {"Baseline (standard training)": (0.87, 0.5429), METHOD_LABEL: (0.85, 0.7259)}
# The baselines shown even when the study lacks them (a row says they were not run).
SHOWN_BASELINES = ("erm", "pgd_at", "ig_norm")
BARS = (
    ("clean_acc", "Clean accuracy", "tab:blue"),
    ("robust_acc", "Adversarial accuracy", "tab:red"),
)


def _best(df: pd.DataFrame) -> pd.Series | None:
    """The trial with the highest robust accuracy (clean accuracy breaks ties)."""
    if df.empty:
        return None
    return df.sort_values(["robust_acc", "clean_acc"], ascending=False).iloc[0]


def reproduction_table(df: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """Rows: the paper's two models, then ours: the best LIME-guided trial and each baseline."""
    dataset = (settings.get("trial") or {}).get("dataset") or settings.get("preset") or "?"
    rows = [
        {"source": PAPER_SOURCE, "model": m, "clean_acc": c, "robust_acc": r, "note": ""}
        for m, (c, r) in PAPER.items()
    ]
    done = completed(df) if "status" in df else df
    ours = f"This study ({dataset})"
    candidates = [(METHOD_LABEL, searched_trials(done))]
    methods = done["config/method"] if "config/method" in done else pd.Series(dtype=str)
    shown = list(SHOWN_BASELINES) + [m for m in BASELINES if m in set(methods)]
    for method in dict.fromkeys(shown):
        candidates.append((f"Baseline: {BASELINES[method]}", done[methods == method]))
    for model, trials in candidates:
        best = _best(trials)
        if best is None:
            rows.append({"source": ours, "model": model, "note": "not run in this study"})
        else:
            note = f"best of {len(trials)} by robust accuracy: trial {best['trial_id']}"
            rows.append(
                {
                    "source": ours,
                    "model": model,
                    "clean_acc": best["clean_acc"],
                    "robust_acc": best["robust_acc"],
                    "note": note,
                }
            )
    return pd.DataFrame(rows, columns=["source", "model", "clean_acc", "robust_acc", "note"])


def reproduction_figure(table: pd.DataFrame, eval_note: str = "") -> Figure:
    """Two panels, the paper's numbers and ours: clean and robust accuracy bars per model."""
    sources = list(dict.fromkeys(table["source"]))
    fig = Figure(figsize=(5 + 1.2 * len(table), 4.5), layout="constrained")
    widths = [int((table["source"] == s).sum()) for s in sources]
    axes = fig.subplots(1, len(sources), sharey=True, squeeze=False, width_ratios=widths)[0]
    for ax, source in zip(axes, sources, strict=True):
        part = table[table["source"] == source].reset_index(drop=True)
        for i, (metric, name, color) in enumerate(BARS):
            xs = part.index + (i - 0.5) * 0.38
            values = part[metric].astype(float) * 100
            bars = ax.bar(xs, values.fillna(0), width=0.38, color=color, label=name)
            ax.bar_label(
                bars, labels=[f"{v:.1f}" if v == v else "" for v in values], fontsize=8, padding=2
            )
        for i, note in enumerate(part["note"]):
            if note == "not run in this study":
                ax.text(i, 3, "not run", ha="center", fontsize=8, rotation=90, color="0.3")
        ax.set_xticks(part.index, [m.replace(": ", ":\n") for m in part["model"]], fontsize=8)
        ax.set_title(source, fontsize=10)
        ax.set_ylim(0, 105)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("Accuracy (%)")
    fig.legend(
        *axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8
    )
    fig.suptitle("Clean and adversarial accuracy: paper vs this study" + eval_note, fontsize=11)
    return fig


def eval_note(settings: dict) -> str:
    """', PGD ε=0.1, 10 steps' from the study's trial settings (empty when unknown)."""
    trial = settings.get("trial") or {}
    if "eval_epsilon" not in trial:
        return ""
    steps = f", {trial['eval_steps']} steps" if "eval_steps" in trial else ""
    return f"\n(ours: PGD ε={trial['eval_epsilon']:.3g}{steps}; paper: its own small perturbation)"
