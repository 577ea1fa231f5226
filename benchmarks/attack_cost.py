"""What the per-round robustness evaluation costs: PGD against the gradient-free Square attack.

    python -m benchmarks.attack_cost [--preset digits] [--threads 1] [--json OUT.json]

Every round of every trial evaluates `val_robust_acc` as the per-example worst case of the clean
pass, PGD (`eval_steps`) and Square (`blackbox_queries`) at `eval_epsilon`
(trainables/refine.py `_evaluate`). This runs one trial of the preset (its fixed values, nothing
searched) with `refine` in this process, LIME in-process, then times each attack alone on the
trained model and on the same validation images a round evaluates (`eval_subset` of the
validation split; all 300 for digits). CIFAR presets need `--data-dir`.

Reported: the data loading, the whole trial (`refine`: every round trains and is evaluated with
both attacks), PGD's and Square's seconds and accuracies, and Square's share of the trial's own
work (rounds x Square's seconds / the trial's seconds).
"""

import argparse
import time

import torch

from benchmarks.output import emit_json
from study.config import build_study_config
from study.presets import PRESETS
from trainables.attacks import PGD, Square
from trainables.data import subset
from trainables.evaluate import robust_outcomes
from trainables.refine import build_trial_model, load_trial_splits, refine


def timed_outcomes(model, x, y, attack) -> tuple[float, float]:
    """Seconds of one attack over (x, y), in eval() mode, and the accuracy it leaves."""
    t0 = time.perf_counter()
    ok = robust_outcomes(model, x, y, attack)
    return time.perf_counter() - t0, ok.float().mean().item()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.attack_cost", description=__doc__)
    p.add_argument("--preset", default="digits", choices=sorted(PRESETS))
    p.add_argument("--data-dir", help="CIFAR data (see `python -m study.sweep --help`)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (a trial's core: 1)")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    trial = {"data_dir": args.data_dir} if args.data_dir else {}
    cfg = build_study_config({"preset": args.preset, "trial": trial}).trial

    t0 = time.perf_counter()
    splits = load_trial_splits(cfg)  # the test split stays sealed, as in a search trial
    load_s = time.perf_counter() - t0

    last: dict = {}

    def keep_last(metrics, state):
        last.update(metrics=metrics, state=state)

    t0 = time.perf_counter()
    refine(cfg, report=keep_last, splits=splits)
    trial_s = time.perf_counter() - t0

    model = build_trial_model(cfg, splits)
    model.load_state_dict(last["state"]["model"])
    x, y = subset(splits.val_x, splits.val_y, cfg.eval_subset, seed=0)  # as refine() evaluates
    pgd_s, pgd_acc = timed_outcomes(
        model, x, y, PGD(cfg.eval_epsilon, steps=cfg.eval_steps, seed=cfg.seed)
    )
    square_s, square_acc = timed_outcomes(
        model, x, y, Square(cfg.eval_epsilon, queries=cfg.blackbox_queries, seed=cfg.seed)
    )

    out = {
        "preset": args.preset,
        "threads": args.threads,
        "rounds": cfg.rounds,
        "eval_images": len(y),
        "eval_epsilon": cfg.eval_epsilon,
        "pgd_steps": cfg.eval_steps,
        "square_queries": cfg.blackbox_queries,
        "data_load_s": round(load_s, 2),
        "trial_s": round(trial_s, 2),
        "pgd_s": round(pgd_s, 2),
        "square_s": round(square_s, 2),
        "square_over_pgd": round(square_s / max(pgd_s, 1e-9), 1),
        "square_share_of_trial": round(cfg.rounds * square_s / trial_s, 2),
        "val_pgd_acc": round(pgd_acc, 4),
        "val_blackbox_acc": round(square_acc, 4),
        "last_round_metrics": {
            k: round(v, 4) for k, v in last["metrics"].items() if isinstance(v, float)
        },
    }
    emit_json(out, args.json)
    return out


if __name__ == "__main__":
    main()
