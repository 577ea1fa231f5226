"""A synthetic study in seconds: real Ray Tune + OptunaSearch runs of a closed-form trainable.

It writes what a real sweep writes (Tune's files, study.json, the same metric names, one
errored trial, baselines as a second Tune experiment inside the study folder), so the analysis
code, the notebooks and the report can be tested and demonstrated without minutes of training.
The numbers are made up: a smooth clean/robust trade-off, not a measurement.
"""

import json
import math
import os
import zlib

from study.store import STUDY_FILE, pack_outcomes

SEARCH = {
    "mask_ratio": {"type": "uniform", "low": 0.0, "high": 0.5},
    "reg_weight": {"type": "loguniform", "low": 1e-3, "high": 10.0},
    "epsilon": {"type": "uniform", "low": 0.0, "high": 0.2},
}
OBJECTIVES = {"clean_acc": "max", "robust_acc": "max"}
# (clean, robust) accuracy of each baseline after its last round.
BASELINES = {"erm": (0.97, 0.18), "pgd_at": (0.86, 0.63), "ig_norm": (0.91, 0.47)}
DIVERGES_ABOVE = 5.0  # reg_weight beyond which a synthetic trial "diverges" (raises)


def final_accuracy(config: dict) -> tuple[float, float]:
    """Clean falls and robust rises with epsilon and mask_ratio; reg_weight is best near 0.1."""
    if config["method"] in BASELINES:
        return BASELINES[config["method"]]
    t, m = config["epsilon"] / 0.2, config["mask_ratio"] / 0.5
    penalty = 0.04 * (math.log10(config["reg_weight"]) + 1.0) ** 2
    clean = 0.97 - 0.14 * t**1.5 - 0.04 * m - penalty
    robust = 0.2 + 0.5 * t**0.7 * (0.6 + 0.4 * m) - penalty
    noise = (zlib.crc32(json.dumps(config, sort_keys=True).encode()) % 1000) / 1000 - 0.5
    return clean + 0.01 * noise, robust - 0.01 * noise


def synthetic_trainable(config: dict) -> None:
    """Report one result per round, approaching final_accuracy(); large reg_weight raises."""
    from ray import tune

    clean, robust = final_accuracy(config)
    rounds = config["rounds"]
    for r in range(rounds):
        if r == 1 and config["reg_weight"] > DIVERGES_ABOVE:
            raise RuntimeError(f"training diverged (reg_weight={config['reg_weight']:.3g})")
        frac = (r + 1) / rounds
        tune.report(
            {
                "round": r + 1,
                "clean_acc": 0.1 + (clean - 0.1) * frac,
                "robust_acc": 0.05 + (robust - 0.05) * frac,
                "train_loss": 2.3 * (1 - frac) + 0.1,
                "lime_seconds": 0.0 if config["method"] != "lime_refine" else 0.5,
                "train_seconds": 1.0,
            }
        )


def make_synthetic_study(
    storage: str | os.PathLike,
    name: str = "synthetic",
    num_samples: int = 8,
    seed: int = 0,
    searcher: str = "optuna",
    rounds: int = 3,
    baselines: bool = True,
    reuse: bool = False,
) -> str:
    """Run the synthetic study into storage/name (Ray must be initialised); returns its path.

    The searched trials include one with reg_weight above DIVERGES_ABOVE, which errors.
    With reuse=True a study already there is returned as it is (tests share one this way).
    """
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    study_dir = os.path.join(os.path.abspath(storage), name)
    if reuse and os.path.isfile(os.path.join(study_dir, STUDY_FILE)):
        return study_dir
    trial = {
        "method": "lime_refine",
        "dataset": "synthetic",
        "rounds": rounds,
        "eval_epsilon": 0.1,
        "eval_steps": 10,
        "seed": seed,
    }
    settings = {
        "name": name,
        "storage": os.path.abspath(storage),
        "preset": "synthetic",
        "num_samples": num_samples,
        "searcher": searcher,
        "seed": seed,
        "objectives": OBJECTIVES,
        "search": SEARCH,
        "trial": trial,
    }
    space = {**trial, **{k: _tune_space(v) for k, v in SEARCH.items()}}
    if searcher == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        # Optuna's default of 10 random start-up trials would make small studies pure random search.
        startup = max(2, num_samples // 3)
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup)
    fails = {"mask_ratio": 0.25, "reg_weight": 8.0, "epsilon": 0.1}
    search_alg = OptunaSearch(
        metric=list(OBJECTIVES),
        mode=list(OBJECTIVES.values()),
        sampler=sampler,
        points_to_evaluate=[fails],
    )
    _fit(
        space,
        tune.TuneConfig(
            search_alg=search_alg,
            num_samples=num_samples,
            max_concurrent_trials=2,
            reuse_actors=True,  # as the study's in-process trials: one process start per slot
        ),
        storage=os.path.abspath(storage),
        name=name,
    )
    if baselines:
        base_space = {**trial, "mask_ratio": 0.0, "reg_weight": 0.0, "epsilon": 0.1}
        base_space["method"] = tune.grid_search(list(BASELINES))
        base_config = tune.TuneConfig(max_concurrent_trials=2, reuse_actors=True)
        _fit(base_space, base_config, study_dir, "baselines")
    with open(os.path.join(study_dir, STUDY_FILE), "w") as f:  # last: marks a finished study
        json.dump(settings, f, indent=2)
    return study_dir


def _tune_space(spec: dict):
    from ray import tune

    if spec["type"] == "loguniform":
        return tune.loguniform(spec["low"], spec["high"])
    return tune.uniform(spec["low"], spec["high"])


def _fit(space: dict, tune_config, storage: str, name: str) -> None:
    from ray import tune

    tune.Tuner(
        synthetic_trainable,
        param_space=space,
        tune_config=tune_config,
        run_config=tune.RunConfig(storage_path=storage, name=name, verbose=0),
    ).fit()


def confirmation_row(config_id: str, method: str, replicate: int, clean, robust) -> dict:
    """One finished confirmation trial's result with per-image clean and robust outcomes
    (boolean arrays), as the study reports it: what the fronts' and answer's statistics read."""
    return {
        "trial_id": f"{config_id}-{replicate}", "status": "TERMINATED",
        "experiment": "confirmation", "config/config_id": config_id,
        "config/replicate": replicate, "config/method": method,
        "test_clean_acc": clean.mean(), "test_robust_acc": robust.mean(),
        "test_outcomes_clean": pack_outcomes(clean), "test_outcomes_robust": pack_outcomes(robust),
    }  # fmt: skip
