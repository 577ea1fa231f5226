"""A study's trials as an Optuna study: for parameter importance, and for `optuna-dashboard`.

    python -m analysis.optuna_study STUDY_DIR [--storage sqlite:///optuna.db] [--study-name NAME]
    optuna-dashboard sqlite:///optuna.db

Ray Tune's OptunaSearch keeps its Optuna study in memory; rebuilding one from the study
directory works for any searcher (random search too) and after the run, local or on S3.
"""

import argparse
import math
import os
import sys
import warnings

import optuna
import pandas as pd
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from analysis.results import load_study_settings, load_trials, objectives_of, searched_trials


def distributions(search: dict[str, dict]) -> dict[str, BaseDistribution]:
    """Optuna distributions for study.json's search specs (uniform, loguniform, int, choice)."""
    out: dict[str, BaseDistribution] = {}
    for name, spec in search.items():
        kind = spec["type"]
        if kind in ("uniform", "loguniform"):
            out[name] = FloatDistribution(spec["low"], spec["high"], log=kind == "loguniform")
        elif kind == "int":
            out[name] = IntDistribution(int(spec["low"]), int(spec["high"]))
        elif kind == "choice":
            out[name] = CategoricalDistribution(spec["values"])
        else:
            raise ValueError(f"search.{name}: unknown distribution type {kind!r}")
    return out


def _params(row: pd.Series, dists: dict[str, BaseDistribution]) -> dict:
    """The row's searched values that lie in their distribution (baselines may use others)."""
    params = {}
    for name, dist in dists.items():
        value = row.get(f"config/{name}")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        value = value.item() if hasattr(value, "item") else value
        try:
            if dist._contains(dist.to_internal_repr(value)):
                params[name] = value
        except (ValueError, TypeError):
            continue
    return params


def to_optuna_study(
    df: pd.DataFrame,
    settings: dict,
    *,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
) -> optuna.Study:
    """Finished trials as COMPLETE, errored ones as FAIL; running or pending ones are left out.

    Ray's trial id, the method and the error are kept as user attributes. With a storage URL
    an existing study of the same name is replaced, so exporting twice gives one study.
    """
    objectives = objectives_of(settings)
    dists = distributions(settings.get("search") or {})
    study_name = study_name or settings.get("name") or "study"
    if storage is not None and study_name in optuna.get_all_study_names(storage):
        optuna.delete_study(study_name=study_name, storage=storage)
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        directions=["maximize" if d == "max" else "minimize" for d in objectives.values()],
    )
    with warnings.catch_warnings():  # experimental since Optuna 3.2, and what the dashboard shows
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(objectives))
    trials = []
    for _, row in df.iterrows():
        values = [float(row.get(k, math.nan)) for k in objectives]
        if row["status"] == "TERMINATED" and not any(math.isnan(v) for v in values):
            state = TrialState.COMPLETE
        elif row["status"] == "ERROR":
            state, values = TrialState.FAIL, None
        else:
            continue
        params = _params(row, dists)
        attrs = {"ray_trial_id": row["trial_id"], "error": row.get("error") or ""}
        if "config/method" in row:
            attrs["method"] = row["config/method"]
        trials.append(
            optuna.trial.create_trial(
                state=state,
                values=values,
                params=params,
                distributions={k: dists[k] for k in params},
                user_attrs=attrs,
            )
        )
    study.add_trials(trials)
    return study


def param_importances(df: pd.DataFrame, settings: dict, seed: int = 0) -> pd.DataFrame:
    """fANOVA importance of each searched parameter (rows) for each objective (columns).

    Uses the method's own finished trials (baselines left out) and only parameters that vary.
    """
    study = to_optuna_study(searched_trials(df), settings)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    varying = [
        p
        for p in distributions(settings.get("search") or {})
        if len({t.params.get(p) for t in done if p in t.params}) > 1
    ]
    if len(done) < 2 or not varying:
        raise ValueError(
            f"parameter importance needs 2+ finished trials with varying parameters; "
            f"this study has {len(done)} finished trial(s)"
        )
    columns = {}
    for i, objective in enumerate(study.metric_names):
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        try:
            columns[objective] = optuna.importance.get_param_importances(
                study, evaluator=evaluator, params=varying, target=lambda t, i=i: t.values[i]
            )
        except RuntimeError as e:  # fANOVA's forest found no variance (too few trials)
            raise ValueError(
                f"parameter importance is undefined for {objective} with {len(done)} "
                f"finished trials ({e})"
            ) from e
    return pd.DataFrame(columns).reindex(varying).fillna(0.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m analysis.optuna_study",
        description="Copy a study's trials into an Optuna storage for optuna-dashboard.",
    )
    p.add_argument("study_dir", help="study directory: a local path or s3://...")
    p.add_argument(
        "--storage",
        default="sqlite:///optuna.db",
        help="Optuna storage URL (default: sqlite:///optuna.db, a file in the current folder)",
    )
    p.add_argument("--study-name", help="default: the study's name from study.json")
    args = p.parse_args(argv)
    settings = load_study_settings(args.study_dir)
    name = args.study_name or settings.get("name") or os.path.basename(args.study_dir.rstrip("/"))
    study = to_optuna_study(
        load_trials(args.study_dir), settings, storage=args.storage, study_name=name
    )
    print(f"{len(study.trials)} trials -> study {name!r} in {args.storage}")
    print(f"view: optuna-dashboard {args.storage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
