"""The paper's CIFAR-10 figures beside this study's (the reproduction notebook).

Paper: arXiv 2412.18952, LIME-guided refinement on CIFAR-10 at a small perturbation. The paper
and a study differ in dataset, model, attack and budget unless the study says otherwise, so the
comparison shows whether the direction of the effect reproduces, not the exact numbers.
"""

import pandas as pd
from matplotlib.figure import Figure

from analysis.replicates import aggregate_configs, answer_table
from analysis.results import BASELINES, METHOD_LABEL, completed, searched_trials
from study.store import CONFIRMATION_DIR

PAPER_SOURCE = "arXiv 2412.18952 (CIFAR-10)"
# model -> (clean accuracy, adversarial accuracy), fractions as the study stores them
PAPER = {"Baseline (standard training)": (0.87, 0.5429), METHOD_LABEL: (0.85, 0.7259)}
# The paper's claims for its method against standard training: (what, metric, the paper's
# difference in accuracy or None for a direction only, the paper's words)
PAPER_CLAIMS = (
    ("clean accuracy", "test_clean_acc", 0.85 - 0.87, "85% against 87%: a 2-point cost"),
    ("robust accuracy", "test_robust_acc", 0.7259 - 0.5429, "72.59% against 54.29%"),
    ("CIFAR-10-C accuracy", "test_cifar10c_mean", None, "better on CIFAR-10-C"),
)
# The baselines shown even when the study lacks them (a row says they were not run).
SHOWN_BASELINES = ("erm", "pgd_at", "ig_norm")
BARS = (
    ("clean_acc", "Clean accuracy", "tab:blue"),
    ("robust_acc", "Adversarial accuracy", "tab:red"),
)


def _split_of(df: pd.DataFrame) -> str:
    """The metric prefix to report: the test split when the confirmation ran, else validation,
    else none (a plain Tune experiment with clean_acc / robust_acc)."""
    confirmed = "experiment" in df and (df["experiment"] == CONFIRMATION_DIR).any()
    if confirmed and "test_clean_acc" in df:
        return "test_"
    return "val_" if "val_clean_acc" in df else ""


def _by_config(trials: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """clean_acc, robust_acc (means over replicates or seeds) and n per configuration (per trial
    when the trials have no config_id)."""
    key = "config/config_id" if "config/config_id" in trials else "trial_id"
    cols = {f"{prefix}clean_acc": "clean_acc", f"{prefix}robust_acc": "robust_acc"}
    grouped = trials.rename(columns=cols).groupby(key)
    return grouped[["clean_acc", "robust_acc"]].mean().assign(n=grouped.size())


def _pick(confirmed: pd.DataFrame, ranking: pd.DataFrame) -> str | None:
    """The configuration shown for the method: the highest robust accuracy (clean breaks ties)
    in `ranking` (validation means) among the confirmed ones, so the choice is made on
    validation and only its figures come from the test split."""
    ranked = ranking.loc[ranking.index.isin(confirmed.index)]
    if ranked.empty:
        return None
    return ranked.sort_values(["robust_acc", "clean_acc"], ascending=False).index[0]


def reproduction_table(df: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """Rows: the paper's two models, then ours: the LIME-guided configuration with the best
    validation robust accuracy and each baseline, with their confirmed test-split figures (means
    over the confirmation seeds) when the study ran its confirmation, else validation means."""
    dataset = (settings.get("trial") or {}).get("dataset") or settings.get("preset") or "?"
    rows = [
        {"source": PAPER_SOURCE, "model": m, "clean_acc": c, "robust_acc": r, "note": ""}
        for m, (c, r) in PAPER.items()
    ]
    done = completed(df) if "status" in df else df
    prefix = _split_of(done)
    in_confirmation = done["experiment"] == CONFIRMATION_DIR if "experiment" in done else False
    reported = done[in_confirmation] if prefix == "test_" else done[~in_confirmation]
    search = done[~in_confirmation]
    val = "val_" if "val_clean_acc" in done else ""
    split = {"test_": "test split", "val_": "validation"}.get(prefix, "")
    ours = f"This study ({dataset})"
    methods = reported["config/method"] if "config/method" in reported else pd.Series(dtype=str)
    candidates = [(METHOD_LABEL, searched_trials(reported), searched_trials(search))]
    shown = list(SHOWN_BASELINES) + [m for m in BASELINES if m in set(methods)]
    for method in dict.fromkeys(shown):
        candidates.append((f"Baseline: {BASELINES[method]}", reported[methods == method], None))
    for model, trials, ranking_trials in candidates:
        by_config = _by_config(trials, prefix) if not trials.empty else pd.DataFrame()
        if ranking_trials is not None and not by_config.empty:
            chosen = _pick(by_config, _by_config(ranking_trials, val))
        else:
            chosen = None if by_config.empty else by_config.index[0]
        if chosen is None:
            rows.append({"source": ours, "model": model, "note": "not run in this study"})
            continue
        best, n = by_config.loc[chosen], int(by_config.loc[chosen, "n"])
        note = f"{chosen}: mean of {n} on the {split}" if split else f"trial {chosen}"
        if ranking_trials is not None and len(by_config) > 1:
            note += f", best of {len(by_config)} by validation robust accuracy"
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
    """', worst case of PGD and Square at ε=0.1' from the study's trial settings (empty when
    unknown)."""
    trial = settings.get("trial") or {}
    if "eval_epsilon" not in trial:
        return ""
    steps = f"PGD-{trial['eval_steps']}" if "eval_steps" in trial else "PGD"
    attack = f"worst case of {steps} and Square" if "blackbox_queries" in trial else steps
    return f"\n(ours: {attack} at ε={trial['eval_epsilon']:.3g}; paper: its own small perturbation)"


def _oriented(low: float, high: float, sign: float) -> tuple[float, float] | None:
    """The interval along the paper's sign (a cost counts as positive), ordered; None for NaN."""
    if low != low or high != high:  # no interval (one pair without per-image outcomes)
        return None
    return tuple(sorted((sign * low, sign * high)))


def _direction(low: float, high: float, sign: float) -> str:
    """Where the interval lies against zero, on the paper's side (`sign`) or the other."""
    interval = _oriented(low, high, sign)
    if interval is None:
        return "cannot say"
    return "supported" if interval[0] > 0 else ("contradicted" if interval[1] < 0 else "cannot say")


def _size(low: float, high: float, paper: float, sign: float = 1.0) -> str:
    """Ours against the paper's figure along the paper's sign: "within" the interval, "larger"
    or "smaller" beyond it; "" without an interval."""
    interval = _oriented(low, high, sign)
    if interval is None:
        return ""
    paper = sign * paper
    return "larger" if interval[0] > paper else ("smaller" if interval[1] < paper else "within")


def paper_claims(
    confirmation: pd.DataFrame, config_id: str, reference: str = "erm"
) -> pd.DataFrame:
    """The paper's claims against standard training, one row each, read on the confirmation:
    `config_id` minus `reference` (ERM, the study's standard training) paired by seed and test
    image (answer_table's differences and 95% intervals). `direction`: "supported" when the
    interval lies on the paper's side of zero, "contradicted" on the other, else "cannot say";
    `size` compares the paper's difference (`paper_value`) with the interval ("within", or ours
    "larger" / "smaller"). A last row sets the paper's standard-training robust accuracy (54.29%)
    beside the reference's own (`ours`: an accuracy there, a difference above). Empty when
    either arm has no finished trial."""
    metrics = [m for _, m, _, _ in PAPER_CLAIMS if m in confirmation]
    if not metrics:
        return pd.DataFrame()
    answer = answer_table(confirmation, metrics=metrics, reference=reference, order=[config_id])
    if answer.empty or config_id not in set(answer["config_id"]):
        return pd.DataFrame()
    row = answer.set_index("config_id").loc[config_id]
    rows = []
    for claim, metric, paper, words in PAPER_CLAIMS:
        if metric not in metrics:
            continue
        diff, low, high = (row[f"{metric}_diff{s}"] for s in ("", "_ci_low", "_ci_high"))
        sign = -1.0 if paper is not None and paper < 0 else 1.0
        size = "" if paper is None else _size(low, high, paper, sign)
        rows.append({"claim": claim, "paper": words, "paper_value": paper, "ours": diff,
                     "ci_low": low, "ci_high": high, "n": row["n_pairs"],
                     "direction": _direction(low, high, sign), "size": size})  # fmt: skip
    done = completed(confirmation)
    ref = aggregate_configs(done[done["config/config_id"] == reference], ["test_robust_acc"])
    if not ref.empty:
        r, paper = ref.iloc[0], PAPER["Baseline (standard training)"][1]
        low, high = r["test_robust_acc_ci_low"], r["test_robust_acc_ci_high"]
        rows.append({"claim": "standard training's robust accuracy", "paper": "54.29%",
                     "paper_value": paper, "ours": r["test_robust_acc_mean"], "ci_low": low,
                     "ci_high": high, "n": r["n"], "direction": "",
                     "size": _size(low, high, paper)})  # fmt: skip
    return pd.DataFrame(rows)
