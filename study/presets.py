"""The presets: each a study's base settings, which a YAML file and the command line override.

Plain data, with no import beyond the standard library, so that the command line can offer
them (`--preset`, `--help`) before torch and Ray are imported; study/config.py validates them.
"""

from typing import Any

DEFAULT_SEARCH = {
    "mask_ratio": {"type": "uniform", "low": 0.0, "high": 0.5},
    "reg_weight": {"type": "loguniform", "low": 1e-3, "high": 10.0},
}

EPSILON_8_255 = {"type": "uniform", "low": 0.0, "high": 8 / 255}
BETA = {"type": "loguniform", "low": 0.1, "high": 10.0}  # TRADES' beta, IG-NORM's lambda
# ERM, PGD-AT at the trial's eps (the answer's reference), and PGD-AT, TRADES and IG-NORM
# searched like the method over their own keys, 5 configurations per searched key (TRADES's
# two keys: 6, to bound its cost)
CIFAR_BASELINES = [
    "erm",
    "pgd_at",
    {"method": "pgd_at", "search": {"epsilon": EPSILON_8_255}, "num_samples": 5},
    {
        "method": "trades",
        "search": {"baseline_weight": BETA, "epsilon": EPSILON_8_255},
        "num_samples": 6,
    },
    {"method": "ig_norm", "search": {"baseline_weight": BETA}, "num_samples": 5},
]

# Presets are plain data: the base a YAML file or the command line overrides.
PRESETS: dict[str, dict[str, Any]] = {
    # scikit-learn digits, 8x8 grayscale; eps 0.1 of [0, 1] is 1.6 of the 16 grey levels.
    "digits": {
        # configurations, each trained with `replicates` seeds: 4 keep the whole default study
        # (26 trials) within a few minutes on 2 cores (docs/benchmarks.md, "Default study")
        "num_samples": 4,
        "baselines": ["erm", "pgd_at", "ig_norm"],
        "trial": {
            "dataset": "digits",
            "model": "small_cnn",
            "rounds": 2,
            "epochs_per_round": 3,
            "batch_size": 64,
            "lr": 0.05,
            "pool_size": 48,
            "lime_samples": 200,
            "segmentation": "grid",
            "epsilon": 0.1,
            "attack_steps": 3,
            "eval_epsilon": 0.1,
            "eval_steps": 10,
            # confirmation, on the test split: FGSM and PGD-20 on the grid; PGD-50 x 2 restarts
            # and AutoAttack at eps 0.1 on 64 images (AutoAttack dominates its cost)
            "eval_grid": "0.05,0.1,0.2,0.3",
            "answer_epsilons": "0.1,0.2",  # the worst case at the eval eps and one larger
            "final_eval_subset": 64,
            "final_restarts": 2,
            # Each trial in its own Tune process (no Ray Train worker group), LIME in that
            # process with the batched torch back end (agreement with `lime`:
            # docs/benchmarks.md); one CPU each (on 2 cores, two trials at once take 0.87 of
            # the time and 0.71 of the memory of four at half a CPU: docs/benchmarks.md).
            "num_workers": 0,
            "lime_backend": "torch",
            "lime_actors": 0,
            "cpus_per_worker": 1.0,
        },
        "search": {**DEFAULT_SEARCH, "epsilon": {"type": "uniform", "low": 0.0, "high": 0.2}},
    },
    # CIFAR-10 with the airbench-style CNN; eps in the usual 0..8/255 range.
    "cifar10": {
        "num_samples": 16,
        "baselines": CIFAR_BASELINES,
        "trial": {
            "dataset": "cifar10",
            "model": "fast_cnn",
            "rounds": 4,
            "epochs_per_round": 5,
            "batch_size": 256,
            "lr": 0.05,
            "pool_size": 1024,
            "lime_samples": 1000,
            "lime_backend": "torch",
            "segmentation": "slic",
            "epsilon": 2 / 255,
            "attack_steps": 5,
            "eval_epsilon": 2 / 255,
            "eval_steps": 20,
            "eval_subset": 2000,
            "eval_grid": "1/255,2/255,4/255,8/255",
            "answer_epsilons": "2/255,8/255",
            "final_grid": "2/255,8/255",  # AutoAttack at both: the masking check at every eps
            # A Ray Train worker per trial (num_workers 1; more for data parallel over whole
            # GPUs), LIME on the worker's own GPU: a LIME actor would hold a GPU share that
            # idles while the worker trains, and the worker's while LIME runs.
            "num_workers": 1,
            "lime_actors": 0,
            # IG-NORM's step in chunks: the whole batch of 256 peaks at several times the
            # memory of the other methods (benchmarks.ig_memory)
            "ig_micro_batch": 64,
        },
        "search": {**DEFAULT_SEARCH, "epsilon": EPSILON_8_255},
        # AutoAttack on 500 test images per confirmation trial, 1,000 for the primary pair
        "confirm_eval": {"final_eval_subset": 500},
        "primary_eval": {"final_eval_subset": 1_000},
    },
    # CIFAR-10 on 2 CPU cores, no GPU: a width-16 airbench_cnn base trained once on both cores
    # (18 epochs of ERM, one-cycle learning rate, label smoothing, shifts of up to 2 pixels:
    # benchmarks.cifar_base), refined by every trial on a 3,000-image subset with a 128-image
    # LIME pool, two trials at a time, a core each (costs: docs/benchmarks.md, "CIFAR-10 on the
    # CPU"). PGD-AT, TRADES and IG-NORM
    # are searched like the method, each over its own keys. The confirmation refines the same
    # base at each seed (base.confirmation: shared; docs/results.md says why); clean accuracy
    # on the whole test split, the worst case at 2/255 and 8/255 on 1,000 test images, FGSM
    # and PGD-20 at four eps, PGD-50 and AutoAttack at 2/255 and 8/255 (on 500 images for the
    # primary pair, 100 for the others), CIFAR-10-C on 500.
    "cifar10-cpu": {
        "num_samples": 12,
        "baselines": CIFAR_BASELINES,
        "base": {
            "method": "erm",
            "epochs": 18,
            "lr": 0.3,
            "lr_schedule": "one_cycle",
            "label_smoothing": 0.2,
            "train_subset": None,
            "cpus_per_worker": 2.0,
            "confirmation": "shared",
        },  # fmt: skip
        "trial": {
            "dataset": "cifar10",
            "model": "airbench_cnn",
            "model_width": 16,
            "translate": 2,  # airbench's shift for short runs: a short base gains from less
            "train_subset": 3_000,
            "rounds": 2,
            "epochs_per_round": 1,
            "batch_size": 256,
            "lr": 0.02,  # refining a trained base: a fifteenth of its peak lr
            "pool_size": 128,
            "lime_samples": 200,
            "lime_backend": "torch",
            "lime_actors": 0,
            "segmentation": "slic",
            "epsilon": 2 / 255,
            "attack_steps": 2,
            "eval_epsilon": 2 / 255,
            "eval_steps": 10,
            "eval_subset": 500,
            "blackbox_queries": 100,
            "eval_grid": "1/255,2/255,4/255,8/255",
            "answer_epsilons": "2/255,8/255",
            # AutoAttack at both answer eps: Square-100 in the worst case is far weaker than PGD
            # at either (docs/benchmarks.md, "The query budget on CIFAR-10"), so it is the
            # masking check with power; at 8/255 it costs a few seconds a model
            "final_grid": "2/255,8/255",
            "final_eval_subset": 100,  # AutoAttack's images, but for the primary pair's
            "final_restarts": 1,
            "cifar10c_images": 500,
            "num_workers": 0,  # each trial in its own Tune process
            "cpus_per_worker": 1.0,
            # IG-NORM's step in chunks of 64: a whole batch of 256 peaks at about three times
            # the memory, which two trials on 24 GB do not have (benchmarks.ig_memory)
            "ig_micro_batch": 64,
        },
        "search": {**DEFAULT_SEARCH, "epsilon": EPSILON_8_255},
        # the test's worst case on 1,000 images (the search validates on 500); AutoAttack on 500
        # for the answer's primary pair (a 95% interval of about +-4 points near 50% accuracy,
        # against +-10 on 100 images), on 100 for the other trials
        "confirm_eval": {"eval_subset": 1_000},
        "primary_eval": {"final_eval_subset": 500},
    },
}
