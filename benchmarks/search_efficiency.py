"""Search efficiency: Optuna's multi-objective sampler against random search, same trial budget.

    python -m benchmarks.search_efficiency --seeds 0 1 2 --num-samples 16

For every seed, one digits-preset study per searcher (`study.stages.run_study`, searcher "optuna"
= multivariate TPE, "random" = Optuna's RandomSampler; everything else equal), then the
hypervolume of the final front of finished trials: accuracies as fractions, reference point
(0, 0), so 1.0 would be a perfect model. Writes search_efficiency.csv (one row per study),
search_efficiency.md (the table) and search_efficiency.png (hypervolume against trials run,
and the final hypervolume per seed) into --storage. Finished studies (with trials.csv) are
reused, so an interrupted benchmark continues where it stopped. `--synthetic` swaps in the
closed-form trainable of analysis.synthetic: a one-minute smoke run of the whole pipeline.
"""

import argparse
import os
import sys
from collections.abc import Callable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.pareto import hypervolume
from analysis.results import completed, load_trials, searched_trials
from benchmarks.output import benchmark_command, write_results

SEARCHERS = ("optuna", "random")
OBJECTIVES = {"clean_acc": "max", "robust_acc": "max"}
REFERENCE = {"clean_acc": 0.0, "robust_acc": 0.0}
COLORS = {"optuna": "tab:red", "random": "tab:blue"}
Runner = Callable[[str, int, int, str], str]  # (searcher, seed, num_samples, storage) -> dir


def run_digits_study(searcher: str, seed: int, num_samples: int, storage: str) -> str:
    """One real digits study; a finished one (trials.csv present) is reused."""
    import ray

    from study.config import load_config
    from study.stages import run_study

    name = f"digits-{searcher}-seed{seed}"
    study_dir = os.path.join(storage, name)
    if os.path.isfile(os.path.join(study_dir, "trials.csv")):
        return study_dir
    overrides = {
        "preset": "digits",
        "name": name,
        "storage": storage,
        "searcher": searcher,
        "seed": seed,
        "num_samples": num_samples,
        "baselines": [],  # the same for both searchers: not what is compared
    }
    try:
        return str(run_study(load_config(None, overrides), address="local"))
    finally:
        ray.shutdown()  # run_study starts (or joins) Ray itself, once per study


def run_synthetic_study(searcher: str, seed: int, num_samples: int, storage: str) -> str:
    """The same protocol on analysis.synthetic's closed-form trainable (seconds per study)."""
    import ray

    from analysis.synthetic import make_synthetic_study

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2)
    name = f"synthetic-{searcher}-seed{seed}"
    return make_synthetic_study(
        storage, name, num_samples, seed, searcher, baselines=False, reuse=True
    )


def hypervolume_curve(trials: pd.DataFrame) -> np.ndarray:
    """Hypervolume of the front of the first k trials, for k = 1..n in the order they started.

    Errored trials use up budget and add nothing; baselines are not part of the search.
    """
    trials = searched_trials(trials).sort_values("number", ignore_index=True)
    finished = (trials["status"] == "TERMINATED").to_numpy()
    points = trials[list(OBJECTIVES)]
    return np.array(
        [
            hypervolume(points[:k][finished[:k]], OBJECTIVES, REFERENCE)
            for k in range(1, len(trials) + 1)
        ]
    )


def run_benchmark(
    seeds: list[int], num_samples: int, storage: str, run: Runner = run_digits_study
) -> pd.DataFrame:
    """One row per (searcher, seed) study: final hypervolume, front size and the curve."""
    rows = []
    for seed in seeds:
        for searcher in SEARCHERS:
            study_dir = run(searcher, seed, num_samples, storage)
            trials = load_trials(study_dir)
            curve = hypervolume_curve(trials)
            rows.append(
                {
                    "searcher": searcher,
                    "seed": seed,
                    "trials": len(curve),
                    "finished": len(completed(searched_trials(trials))),
                    "hypervolume": curve[-1] if len(curve) else 0.0,
                    "curve": " ".join(f"{v:.5f}" for v in curve),
                    "study_dir": study_dir,
                }
            )
    return pd.DataFrame(rows)


def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per searcher: mean, sd, min and max of the final hypervolume, and seeds won."""
    table = results.groupby("searcher")["hypervolume"].agg(["mean", "std", "min", "max", "count"])
    wide = results.pivot(index="seed", columns="searcher", values="hypervolume")
    table["seeds_won"] = [
        int((wide[s] > wide.drop(columns=s).max(axis=1)).sum()) for s in table.index
    ]
    return table.rename(columns={"count": "seeds", "std": "sd"})


def _cell(value) -> str:
    return f"{value:.4f}" if isinstance(value, float | np.floating) else str(value)


def markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas' to_markdown needs the tabulate package)."""
    cols = [table.index.name or "", *table.columns]
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for name in table.index:
        cells = [_cell(table.at[name, c]) for c in table.columns]
        lines.append("| " + " | ".join([str(name), *cells]) + " |")
    return "\n".join(lines) + "\n"


def benchmark_figure(results: pd.DataFrame) -> Figure:
    """Left: hypervolume against trials run (mean over seeds, band = min..max);
    right: final hypervolume per seed, the two searchers joined."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    for searcher, group in results.groupby("searcher"):
        curves = [np.array(c.split(), dtype=float) for c in group["curve"]]
        n = min(len(c) for c in curves)
        stack = np.stack([c[:n] for c in curves])
        ks = np.arange(1, n + 1)
        label = f"{searcher} ({len(curves)} seeds)"
        left.plot(ks, stack.mean(axis=0), color=COLORS.get(searcher), label=label)
        left.fill_between(
            ks, stack.min(axis=0), stack.max(axis=0), color=COLORS.get(searcher), alpha=0.2
        )
    left.set_xlabel("Trials run")
    left.set_ylabel("Hypervolume (accuracy fraction²)")
    left.set_title(
        "Hypervolume of the clean/robust front as trials run\n"
        "(line: mean over seeds, band: min–max)",
        fontsize=10,
    )
    left.legend(fontsize=8)
    left.grid(True, alpha=0.3)
    wide = results.pivot(index="seed", columns="searcher", values="hypervolume")
    for seed, row in wide.iterrows():
        right.plot(range(len(row)), row.to_numpy(), color="0.6", lw=0.8, zorder=1)
        right.annotate(
            f"seed {seed}",
            (len(row) - 1, row.iloc[-1]),
            xytext=(5, 0),
            textcoords="offset points",
            fontsize=7,
            va="center",
        )
    for i, searcher in enumerate(wide.columns):
        right.scatter([i] * len(wide), wide[searcher], s=40, color=COLORS.get(searcher), zorder=2)
    right.set_xticks(range(len(wide.columns)), list(wide.columns))
    right.set_xlim(-0.5, len(wide.columns) - 0.3)
    right.set_ylabel("Final hypervolume (accuracy fraction²)")
    right.set_title("Final hypervolume per seed", fontsize=10)
    right.grid(True, axis="y", alpha=0.3)
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.search_efficiency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--num-samples", type=int, default=16, help="trials per study (default: 16)")
    p.add_argument("--storage", default="results/search-efficiency", help="where studies go")
    p.add_argument("--synthetic", action="store_true", help="closed-form trainable: smoke run")
    args = p.parse_args(argv)
    storage = os.path.abspath(args.storage)
    os.makedirs(storage, exist_ok=True)
    run = run_synthetic_study if args.synthetic else run_digits_study
    results = run_benchmark(args.seeds, args.num_samples, storage, run)
    table = summary_table(results)
    command = benchmark_command("benchmarks.search_efficiency", argv)
    text = (
        f"Command: `{command.strip()}`\n\n"
        f"{args.num_samples} trials per study, seeds {args.seeds}; final hypervolume of the "
        "front (accuracies as fractions, reference (0, 0)).\n\n" + markdown(table)
    )
    write_results(storage, "search_efficiency", results, text, benchmark_figure(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
