"""Early stopping: MO-ASHA against no early stopping (FIFO), same searcher, seeds and budget.

    python -m benchmarks.early_stopping --storage DIR [--preset digits|cifar10-cpu]
                                        [--data-dir CIFAR] [--seeds 0 1 2] [--num-samples 9]
                                        [--rounds 4] [--replicates 1] [--confirm-seeds 2]

For every seed, two real studies of the preset (`study.stages.run_study`, each on its own local
Ray): one with `scheduler: {type: fifo}`, one with `{type: mo-asha, grace_rounds: 1,
reduction_factor: 3}`; everything else equal (Optuna's sampler, the seed, `--num-samples`
configurations x `--replicates` seeds, `--rounds` refinement rounds per trial, so the scheduler
has rungs to stop at, no baselines: the confirmation needs none). Each study then confirms its
front on the test split with `--confirm-seeds` fresh seeds, as every study does. digits runs
the preset as it is; cifar10-cpu (CIFAR-10 from `--data-dir`) is made cheap (PRESET_OVERRIDES)
and keeps the preset's base, trained by the first study and loaded by the others.

Per study (one row of early_stopping.csv): the search's trial-seconds (the sum of `time_total_s`
over the search-stage trials of trials.csv, the early-stopped ones included: the compute the
search spent, whatever the concurrency), the confirmation's trial-seconds, how many trials were
stopped, and the hypervolume (accuracies as fractions, reference point (0, 0)) of the confirmed
front: the confirmed configurations' mean test clean and robust accuracy (confirmed.csv), the
dominated ones removed; the validation front's hypervolume (pareto.csv means) beside it. The
issue's target: the same confirmed hypervolume within the spread between seeds, for at most half
the trial-seconds. early_stopping.md has the table and the verdict, early_stopping.png the
confirmed hypervolume against the search's trial-seconds, one point per study. A finished study
(its answer.csv written, the confirmation's last table) is reused and an interrupted one resumed,
so an interrupted benchmark continues where it stopped. Study names and result files carry
the preset (early_stopping.* for digits, early_stopping-<preset>.* otherwise), so both
benchmarks can share a storage without mixing.
"""

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.pareto import hypervolume, pareto_mask
from analysis.results import BASELINES
from benchmarks.output import benchmark_command, write_results
from study.store import ANSWER_FILE, CONFIRMATION_DIR, STUDY_FILE

SCHEDULERS: dict[str, dict[str, Any]] = {
    "fifo": {"type": "fifo"},
    "mo-asha": {"type": "mo-asha", "grace_rounds": 1, "reduction_factor": 3},
}
BASE, EARLY = "fifo", "mo-asha"
COLORS = {BASE: "tab:blue", EARLY: "tab:red"}
TARGET_RATIO = 0.5  # at most half the search's trial-seconds
CONFIRMED = {"test_clean_acc_mean": "max", "test_robust_acc_mean": "max"}
VALIDATION = {"val_clean_acc_mean": "max", "val_robust_acc_mean": "max"}
REFERENCE_POINT = 0.0  # for every objective: accuracies as fractions, 1.0 would be perfect
DEFAULT_PRESET = "digits"
# What the benchmark changes in each preset (study.config PRESETS), merged over it by
# study_overrides. digits: nothing (its trials take --rounds). cifar10-cpu: 2 schedulers x 3
# seeds in about 95 minutes on 2 CPU cores plus the base once (an estimate, not a measurement:
# docs/benchmarks.md "Early stopping"). It keeps the preset's base, as refining a trained base
# is the method's real setting; the base's key depends neither on the seed the benchmark varies
# (Optuna's) nor on any value below, so the first study trains it (14.5 minutes on both cores)
# and the other five load it.
PRESET_OVERRIDES: dict[str, dict[str, Any]] = {
    "digits": {},
    "cifar10-cpu": {
        "trial": {
            # a third of the preset's 3,000 images per round: about 15 s of training on a core
            # (PGD-2 and the penalty); with LIME and the evaluation a round (about 27 s) still
            # outweighs Ray's fixed cost per trial (about 22 s), which no early stop saves
            "train_subset": 1_000,
            "epochs_per_round": 1,  # the preset's: rounds are the rungs, not epochs
            "pool_size": 32,  # a quarter of the preset's LIME pool: about 5 s a round
            "lime_samples": 100,  # half the preset's samples per explanation
            # validation images of each round's evaluation (the figures the rungs rank by; the
            # confirmation's worst case reads as many test images): PGD-10 and Square, ~6 s
            "eval_subset": 200,
            "blackbox_queries": 50,  # Square's budget on the images PGD leaves standing
        },
        # The confirmation's test evaluation: the hypervolume reads only the test clean and
        # worst-case robust accuracy (on eval_subset images), so the rest is cut to its least.
        "confirm_eval": {
            "eval_grid": "",  # no FGSM / PGD-20 grid
            "final_eval_subset": 10,  # PGD-50 and AutoAttack, which always run, on 10 images
            "final_restarts": 1,
            "cifar10c_images": 0,  # no CIFAR-10-C (the preset's 500 images)
        },
    },
}


@dataclass(frozen=True)
class Settings:
    """What every study of the benchmark shares."""

    num_samples: int = 9
    rounds: int = 4
    replicates: int = 1
    confirm_seeds: int = 2
    trial_overrides: dict[str, Any] = field(default_factory=dict)  # hidden: tests shrink trials
    preset: str = DEFAULT_PRESET
    data_dir: str | None = None  # CIFAR-10 (absolute: study.json stores it so)


Runner = Callable[[str, int, Settings, str], str]  # (scheduler, seed, settings, storage) -> dir


def study_name(preset: str, scheduler: str, seed: int) -> str:
    return f"{preset}-{scheduler}-seed{seed}"


def results_name(preset: str) -> str:
    """The result files' name: early_stopping for digits (as before presets),
    early_stopping-<preset> otherwise, so one storage holds both benchmarks' tables."""
    return "early_stopping" if preset == DEFAULT_PRESET else f"early_stopping-{preset}"


def study_overrides(scheduler: str, seed: int, settings: Settings, storage: str) -> dict:
    """The preset's overrides for one study of the benchmark."""
    cheap = PRESET_OVERRIDES[settings.preset]
    data = {} if settings.data_dir is None else {"data_dir": settings.data_dir}
    overrides = {
        "preset": settings.preset,
        "name": study_name(settings.preset, scheduler, seed),
        "storage": storage,
        "seed": seed,
        "num_samples": settings.num_samples,
        "replicates": settings.replicates,
        "confirm_seeds": settings.confirm_seeds,
        "baselines": [],  # the confirmation runs without: answer.csv then has no PGD-AT pairs
        "scheduler": dict(SCHEDULERS[scheduler]),
        "trial": {
            **cheap.get("trial", {}),
            **data,
            **settings.trial_overrides,
            "rounds": settings.rounds,
        },
    }
    if "confirm_eval" in cheap:
        overrides["confirm_eval"] = dict(cheap["confirm_eval"])
    return overrides


def check_inputs(settings: Settings, storage: str) -> None:
    """Bad input costs one line (a ConfigError) before any study starts: an unknown preset,
    settings the study would reject, CIFAR without --data-dir or with data that does not load
    (read once here, as `python -m study.sweep` checks it)."""
    from study.config import ConfigError, load_config
    from study.preflight import check_data

    if settings.preset not in PRESET_OVERRIDES:
        raise ConfigError(
            f"--preset: must be one of {', '.join(PRESET_OVERRIDES)}, got {settings.preset!r}"
        )
    cfg = load_config(None, study_overrides(BASE, 0, settings, storage))
    if cfg.trial.dataset != "digits" and cfg.trial.data_dir is None:
        raise ConfigError(
            f"--data-dir: required with --preset {settings.preset} (CIFAR-10, e.g. "
            "../shared/data/cifar10-jpeg.tar.gz)"
        )
    check_data(cfg)


def study_finished(study_dir: str) -> bool:
    """The confirmation's last table is there, or the search left no front to confirm."""
    if os.path.isfile(os.path.join(study_dir, ANSWER_FILE)):
        return True
    front = os.path.join(study_dir, "pareto.csv")
    return os.path.isfile(front) and _read_csv(front).empty


def settings_mismatch(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """The keys in which an existing study's study.json differs from the overrides the
    benchmark would run it with now (`study_overrides`; trial keys it does not set are not
    compared, so a study written before a new trial setting existed still matches)."""
    bad = [
        key
        for key in ("preset", "seed", "num_samples", "replicates", "confirm_seeds")
        if stored.get(key) != wanted.get(key)
    ]
    if list(stored.get("baselines") or []) != list(wanted.get("baselines") or []):
        bad.append("baselines")
    scheduler = stored.get("scheduler") or {}
    if any(scheduler.get(k) != v for k, v in wanted.get("scheduler", {}).items()):
        bad.append("scheduler")
    if (stored.get("confirm_eval") or {}) != (wanted.get("confirm_eval") or {}):
        bad.append("confirm_eval")
    trial = stored.get("trial") or {}
    bad += [f"trial.{k}" for k, v in wanted.get("trial", {}).items() if trial.get(k) != v]
    return bad


def run_preset_study(scheduler: str, seed: int, settings: Settings, storage: str) -> str:
    """One real study of the preset: reused when finished, resumed when interrupted."""
    import ray

    from study.config import load_config
    from study.stages import run_study

    overrides = study_overrides(scheduler, seed, settings, storage)
    cfg = load_config(None, overrides)
    study_file = os.path.join(cfg.study_dir, STUDY_FILE)
    resume = os.path.isfile(study_file)
    if resume:
        with open(study_file) as f:
            bad = settings_mismatch(json.load(f), overrides)
        if bad:
            raise SystemExit(
                f"error: {cfg.study_dir} was run with other settings ({', '.join(bad)}); "
                "choose another --storage"
            )
        if study_finished(cfg.study_dir):
            return cfg.study_dir
    try:
        return str(run_study(cfg, resume=resume, address="local"))
    finally:
        ray.shutdown()  # run_study starts Ray itself, once per study


# --- one study directory into one row -----------------------------------------------------


def _read_csv(path: str) -> pd.DataFrame:
    """A CSV table, or an empty one when the file is missing or has no columns."""
    try:
        return pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def _trial_seconds(trials: pd.DataFrame) -> float:
    if trials.empty or "time_total_s" not in trials:
        return 0.0
    return float(pd.to_numeric(trials["time_total_s"], errors="coerce").sum())  # NaN: none yet


def _search_trials(trials: pd.DataFrame, name: str) -> pd.DataFrame:
    """The search stage's trials (not the baselines', not the confirmation's)."""
    if trials.empty:
        return trials
    for column in ("stage", "config/stage"):
        if column in trials:
            return trials[trials[column] == "search"]
    return trials[trials["experiment"] == name]


def _front_hypervolume(table: pd.DataFrame, objectives: dict[str, str]) -> tuple[float, int]:
    """(hypervolume, size) of the non-dominated rows of a table of configuration means."""
    if table.empty or not set(objectives) <= set(table.columns):
        return 0.0, 0
    front = table[pareto_mask(table, objectives)]
    reference = dict.fromkeys(objectives, REFERENCE_POINT)
    return hypervolume(front, objectives, reference), len(front)


def study_row(study_dir: str) -> dict[str, Any]:
    """One study's row: search and confirmation trial-seconds, stopped trials, hypervolumes."""
    with open(os.path.join(study_dir, STUDY_FILE)) as f:
        settings = json.load(f)
    trials = _read_csv(os.path.join(study_dir, "trials.csv"))
    search = _search_trials(trials, settings.get("name", os.path.basename(study_dir)))
    status = search["status"] if "status" in search else pd.Series(dtype=object)
    stopped = search[status == "STOPPED"]
    config_ids = "config/config_id"
    confirmation = _read_csv(os.path.join(study_dir, "confirmation.csv"))
    if confirmation.empty and "experiment" in trials:  # a study confirmed before that table
        confirmation = trials[trials["experiment"] == CONFIRMATION_DIR]
    confirmed = _read_csv(os.path.join(study_dir, "confirmed.csv"))
    if not confirmed.empty:  # the front's configurations only, were a baseline confirmed too
        baseline = confirmed["config_id"].astype(str).isin(list(BASELINES))
        if "method" in confirmed:
            baseline |= confirmed["method"].isin(list(BASELINES))
        confirmed = confirmed[~baseline]
    hv_confirmed, confirmed_front = _front_hypervolume(confirmed, CONFIRMED)
    pareto = _read_csv(os.path.join(study_dir, "pareto.csv"))
    hv_validation, validation_front = _front_hypervolume(pareto, VALIDATION)
    scheduler = (settings.get("scheduler") or {}).get("type", BASE)
    return {
        "preset": settings.get("preset", DEFAULT_PRESET),
        "scheduler": scheduler,
        "seed": settings.get("seed"),
        "search_trials": len(search),
        "search_configs": search[config_ids].nunique() if config_ids in search else len(search),
        "search_rounds": int(search["rounds"].sum()) if "rounds" in search else np.nan,
        "stopped_trials": len(stopped),
        "stopped_configs": stopped[config_ids].nunique() if config_ids in stopped else 0,
        "errored_trials": int((status == "ERROR").sum()),
        "search_trial_s": _trial_seconds(search),
        "confirm_trials": len(confirmation),
        "confirm_trial_s": _trial_seconds(confirmation),
        "confirmed_configs": len(confirmed),
        "confirmed_front": confirmed_front,
        "hv_confirmed": hv_confirmed,
        "validation_front": validation_front,
        "hv_validation": hv_validation,
        "study_dir": study_dir,
    }


def run_benchmark(
    seeds: list[int], settings: Settings, storage: str, run: Runner = run_preset_study
) -> pd.DataFrame:
    """One row per (scheduler, seed) study, each study run (or reused) first."""
    return pd.DataFrame(
        [
            study_row(run(scheduler, seed, settings, storage))
            for seed in seeds
            for scheduler in SCHEDULERS
        ]
    )


# --- the summary -------------------------------------------------------------------------


def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per scheduler: mean and sample sd over seeds of the search's trial-seconds, the
    confirmed and validation hypervolumes, the confirmation's trial-seconds; mean stopped."""
    g = results.groupby("scheduler", sort=False)
    table = pd.DataFrame({"seeds": g["seed"].nunique()})
    for column in ("search_trial_s", "hv_confirmed", "hv_validation", "confirm_trial_s"):
        table[f"{column}_mean"] = g[column].mean()
        table[f"{column}_sd"] = g[column].std(ddof=1)
    table["stopped_trials_mean"] = g["stopped_trials"].mean()
    table["search_trials_mean"] = g["search_trials"].mean()
    order = [s for s in SCHEDULERS if s in table.index]
    return table.loc[order + [s for s in table.index if s not in order]]


def paired_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per seed with both studies: the search trial-seconds and confirmed hypervolume of
    each, the ratio of trial-seconds mo-asha / fifo and the hypervolume difference."""
    if not {BASE, EARLY} <= set(results["scheduler"]):
        return pd.DataFrame(columns=["seed", "ratio", "hv_diff"])
    wide = results.pivot_table(
        index="seed", columns="scheduler", values=["search_trial_s", "hv_confirmed"]
    )
    out = pd.DataFrame(
        {
            f"{BASE}_trial_s": wide["search_trial_s"][BASE],
            f"{EARLY}_trial_s": wide["search_trial_s"][EARLY],
            f"{BASE}_hv": wide["hv_confirmed"][BASE],
            f"{EARLY}_hv": wide["hv_confirmed"][EARLY],
        }
    ).dropna()
    out["ratio"] = out[f"{EARLY}_trial_s"] / out[f"{BASE}_trial_s"]
    out["hv_diff"] = out[f"{EARLY}_hv"] - out[f"{BASE}_hv"]
    return out.reset_index()


@dataclass(frozen=True)
class Verdict:
    met: bool | None  # None: undecided (fewer than two seeds: no spread between seeds)
    time_ok: bool | None
    hv_ok: bool | None
    mean_ratio: float
    hv_diff: float  # mean confirmed hypervolume, mo-asha minus fifo
    spread: float  # the larger of the two schedulers' sd over seeds
    text: str


def verdict(results: pd.DataFrame, target_ratio: float = TARGET_RATIO) -> Verdict:
    """The issue's target: the same confirmed hypervolume within the spread between seeds, for
    at most half the trial-seconds.

    Time: the mean over seeds of the per-seed ratio mo-asha / fifo is <= target_ratio.
    Hypervolume: mo-asha's mean confirmed hypervolume is below fifo's by no more than the
    spread between seeds (the larger of the two schedulers' sample sd over seeds); above it
    is fine too (no worse is what early stopping must show). Undecided with fewer than two
    seeds, which give no spread."""
    pairs = paired_table(results)
    table = summary_table(results)
    if pairs.empty or not {BASE, EARLY} <= set(table.index):
        nan = float("nan")
        return Verdict(None, None, None, nan, nan, nan, "undecided: no seed with both studies")
    mean_ratio = float(pairs["ratio"].mean())
    hv_diff = float(table.at[EARLY, "hv_confirmed_mean"] - table.at[BASE, "hv_confirmed_mean"])
    sds = [float(table.at[s, "hv_confirmed_sd"]) for s in (BASE, EARLY)]
    spread = max((sd for sd in sds if sd == sd), default=float("nan"))
    time_ok = bool(mean_ratio <= target_ratio)
    facts = (
        f"mean trial-seconds ratio {EARLY}/{BASE} {mean_ratio:.2f} (target <= {target_ratio:g}), "
        f"confirmed hypervolume {EARLY} - {BASE} {hv_diff:+.4f}"
    )
    if len(pairs) < 2 or math.isnan(spread):
        return Verdict(
            None, time_ok, None, mean_ratio, hv_diff, spread,
            f"undecided: {facts}; one seed gives no spread between seeds to judge it by",
        )  # fmt: skip
    hv_ok = bool(hv_diff >= -spread)
    met = time_ok and hv_ok
    facts += f" (spread between seeds {spread:.4f})"
    if met:
        text = f"target met: {facts}"
    else:
        missed = [
            *([] if time_ok else [f"more than {target_ratio:g} of the trial-seconds"]),
            *([] if hv_ok else ["confirmed hypervolume lower by more than the spread"]),
        ]
        text = f"target not met ({'; '.join(missed)}): {facts}"
    return Verdict(met, time_ok, hv_ok, mean_ratio, hv_diff, spread, text)


def _pm(mean: float, sd: float, digits: int) -> str:
    if mean != mean:
        return "-"
    return f"{mean:.{digits}f}" + ("" if sd != sd else f" ± {sd:.{digits}f}")


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def markdown(results: pd.DataFrame) -> str:
    """The scheduler table (mean ± sd over seeds), the per-seed ratios and the verdict."""
    table = summary_table(results)
    head = [
        "scheduler", "seeds", "search trial-s", "confirmed HV", "validation HV",
        "confirmation trial-s", "trials stopped / run",
    ]  # fmt: skip
    lines = [_row(head), "|" + "---|" * len(head)]
    for name, r in table.iterrows():
        lines.append(
            _row(
                [
                    name,
                    int(r["seeds"]),
                    _pm(r["search_trial_s_mean"], r["search_trial_s_sd"], 0),
                    _pm(r["hv_confirmed_mean"], r["hv_confirmed_sd"], 4),
                    _pm(r["hv_validation_mean"], r["hv_validation_sd"], 4),
                    _pm(r["confirm_trial_s_mean"], r["confirm_trial_s_sd"], 0),
                    f"{r['stopped_trials_mean']:.1f} / {r['search_trials_mean']:.1f}",
                ]
            )
        )
    pairs = paired_table(results)
    head = [
        "seed", f"{BASE} trial-s", f"{EARLY} trial-s", f"ratio {EARLY}/{BASE}",
        f"{BASE} HV", f"{EARLY} HV", "HV difference",
    ]  # fmt: skip
    lines += ["", _row(head), "|" + "---|" * len(head)]
    for _, p in pairs.iterrows():
        lines.append(
            _row(
                [
                    int(p["seed"]),
                    f"{p[f'{BASE}_trial_s']:.0f}",
                    f"{p[f'{EARLY}_trial_s']:.0f}",
                    f"{p['ratio']:.2f}",
                    f"{p[f'{BASE}_hv']:.4f}",
                    f"{p[f'{EARLY}_hv']:.4f}",
                    f"{p['hv_diff']:+.4f}",
                ]
            )
        )
    if not pairs.empty:
        lines.append(_row(["mean", "", "", f"{pairs['ratio'].mean():.2f}", "", "", ""]))
    lines += ["", f"Verdict: {verdict(results).text}."]
    return "\n".join(lines) + "\n"


def benchmark_figure(results: pd.DataFrame, preset: str) -> Figure:
    """Confirmed hypervolume against the search's trial-seconds, one point per study, coloured
    by scheduler and labelled by seed; a grey line joins the two studies of a seed."""
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for _, group in results.groupby("seed"):
        group = group.sort_values("search_trial_s")
        ax.plot(group["search_trial_s"], group["hv_confirmed"], color="0.75", lw=0.8, zorder=1)
    for scheduler, group in results.groupby("scheduler", sort=False):
        ax.scatter(
            group["search_trial_s"],
            group["hv_confirmed"],
            s=45,
            color=COLORS.get(scheduler),
            label=f"{scheduler} ({len(group)} seeds)",
            zorder=2,
        )
        for _, r in group.iterrows():
            ax.annotate(
                f"seed {r['seed']}",
                (r["search_trial_s"], r["hv_confirmed"]),
                xytext=(5, 3),
                textcoords="offset points",
                fontsize=7,
            )
    ax.set_xlabel("Search trial-seconds (sum of the search's trial times)")
    ax.set_ylabel("Confirmed hypervolume (test accuracy fraction²)")
    ax.set_title(
        f"Early stopping ({preset} preset): confirmed front against search compute\n"
        "(test clean and robust accuracy of the confirmed front, reference (0, 0))",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return fig


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None, run: Runner = run_preset_study) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.early_stopping",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--storage", required=True, help="where the studies and the results go")
    p.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        metavar="{" + ",".join(PRESET_OVERRIDES) + "}",
        help="the studies' preset (default digits)",
    )
    p.add_argument("--data-dir", help="CIFAR-10 for cifar10-cpu (see python -m study.sweep -h)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--num-samples", type=_positive, default=9, help="configurations per study")
    p.add_argument("--rounds", type=_positive, default=4, help="refinement rounds per trial")
    p.add_argument("--replicates", type=_positive, default=1, help="seeds per configuration")
    p.add_argument("--confirm-seeds", type=_positive, default=2, help="fresh seeds, test split")
    p.add_argument("--trial-overrides", type=json.loads, default={}, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not isinstance(args.trial_overrides, dict):
        p.error("--trial-overrides: a JSON object of trial settings")
    from study.config import ConfigError
    from study.console import print_error
    from study.stages import StageInterrupted

    data_dir = None if args.data_dir is None else os.path.abspath(os.path.expanduser(args.data_dir))
    settings = Settings(
        num_samples=args.num_samples,
        rounds=args.rounds,
        replicates=args.replicates,
        confirm_seeds=args.confirm_seeds,
        trial_overrides=args.trial_overrides,
        preset=args.preset,
        data_dir=data_dir,
    )
    storage = os.path.abspath(args.storage)
    try:
        check_inputs(settings, storage)
    except ConfigError as e:
        print_error(str(e))
        return 2
    os.makedirs(storage, exist_ok=True)
    try:
        results = run_benchmark(args.seeds, settings, storage, run)
    except StageInterrupted as e:
        print_error(f"interrupted: {e}; the same command goes on from there (studies resume)")
        return 130
    command = benchmark_command("benchmarks.early_stopping", argv)
    cheap = PRESET_OVERRIDES[settings.preset]
    changed = f" with {json.dumps(cheap)}" if cheap else ""
    text = (
        f"Command: `{command.strip()}`\n\n"
        f"Preset {settings.preset}{changed}, {settings.num_samples} configurations x "
        f"{settings.replicates} replicate(s), {settings.rounds} rounds per trial, no baselines, "
        f"confirmation with {settings.confirm_seeds} fresh seeds; seeds {args.seeds}. "
        "Search trial-s: the sum of "
        "the search trials' time_total_s (early-stopped ones included); HV: hypervolume of the "
        "front by configuration means, accuracies as fractions, reference (0, 0) (confirmed: "
        "test split, confirmed.csv; validation: pareto.csv). Mean ± sample sd over seeds.\n\n"
        + markdown(results)
    )
    figure = benchmark_figure(results, settings.preset)
    write_results(storage, results_name(settings.preset), results, text, figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
