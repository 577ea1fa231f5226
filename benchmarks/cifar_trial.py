"""One refinement trial of the cifar10-cpu preset on the CPU: what each part of its work costs.

    python -m benchmarks.cifar_trial --data-dir ../shared/data/cifar10-jpeg.tar.gz \
        [--train-subset 5000] [--pool-size 128] [--threads 1] [--json OUT.json]

The preset's search trial (its fixed values: mask ratio 0.25, `reg_weight` 0.1, ε 2/255, PGD-2
in training, SLIC superpixels, the torch LIME back end, the per-round validation evaluation) run
as a study runs its work, `refine()` in one process with `--threads` threads (a study on 2 cores
runs two trials side by side, a core each), but from a random initialization rather than the
preset's base: the same work, without training the base first. `--train-subset` and
`--pool-size` override the preset's training images per round and LIME pool (default: the
preset's). Ray's fixed cost per trial is not in it (docs/benchmarks.md, "Ray overhead").

Reported: per round, the seconds of the LIME pool, the training and the evaluation (the metrics
the trial reports), the whole trial, and the data loading apart.
"""

import argparse
import time

import torch

from benchmarks.output import emit_json
from study.config import build_study_config
from trainables.refine import load_trial_splits, refine

ROUND_KEYS = ("lime_seconds", "train_seconds", "eval_seconds", "train_examples",
              "val_clean_acc", "val_robust_acc")  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cifar_trial", description=__doc__)
    p.add_argument("--data-dir", required=True, help="CIFAR-10 (see python -m study.sweep -h)")
    p.add_argument("--train-subset", type=int, help="training images per round (preset: 3,000)")
    p.add_argument("--pool-size", type=int, help="LIME pool per round (preset: 128)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (a trial's core: 1)")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    trial: dict = {"data_dir": args.data_dir}
    if args.train_subset is not None:
        trial["train_subset"] = args.train_subset
    if args.pool_size is not None:
        trial["pool_size"] = args.pool_size
    cfg = build_study_config({"preset": "cifar10-cpu", "trial": trial}).trial

    t0 = time.perf_counter()
    splits = load_trial_splits(cfg)
    load_s = time.perf_counter() - t0

    rounds: list[dict] = []

    def keep(metrics, state):
        rounds.append({k: metrics[k] for k in ROUND_KEYS if k in metrics})
        print(rounds[-1], flush=True)

    t0 = time.perf_counter()
    refine(cfg, report=keep, splits=splits)
    trial_s = time.perf_counter() - t0

    out = {
        "threads": args.threads,
        "train_subset": cfg.train_subset,
        "pool_size": cfg.pool_size,
        "lime_samples": cfg.lime_samples,
        "data_load_s": round(load_s, 1),
        "rounds": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
                   for r in rounds],
        "trial_s": round(trial_s, 1),
    }  # fmt: skip
    emit_json(out, args.json)
    return out


if __name__ == "__main__":
    main()
