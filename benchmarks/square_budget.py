"""The query budget the gradient-free half of the worst case needs: Square (and, to compare,
SPSA and a transfer attack) against PGD.

    python -m benchmarks.square_budget --data-dir ../shared/data/cifar10-jpeg.tar.gz \
        --base BASE.pt --json OUT.json

The worst-case robust accuracy counts an image as robust only if both PGD (`eval_steps`) and
Square (`blackbox_queries`) fail on it, and the masking check asks whether Square breaks images
PGD does not. Both need a Square strong enough to come within a few points of PGD on a model
whose gradients are honest: on ERM and on PGD-AT models, Square should be close to PGD, and far
above it only where gradients mislead PGD.

The models: the `cifar10-cpu` preset's ERM base (`--base`, a file written by
`benchmarks.cifar_base --save`; trained here when absent), and PGD-AT refined from it with the
preset's budget, ε and attack steps (one search trial's work). On `--images` validation images
(the test split stays sealed), in eval mode: PGD with the preset's `eval_steps` and Square at
each `--queries` budget, at each `--eps`; with `--spsa`, SPSA at each setting, alone and with
each Square budget (an image counts as broken if either breaks it); with `--transfer`, PGD on
the ERM base transferred to the PGD-AT model (gradient-free to that model). Reported: every
accuracy, its gap to PGD in points, each attack's seconds, and the smallest Square budget
within `--within` points of PGD on both models at every ε (the budget a preset should
choose); with `--autoattack-images N`, AutoAttack's accuracy and seconds per image on the first
N images (what the confirmation's AutoAttack costs).
"""

import argparse
import dataclasses
import os
import re
import tempfile
import time

import torch

from benchmarks.output import emit_json
from study.presets import PRESETS
from trainables.attacks import PGD, SPSA, AutoAttack, Square
from trainables.base import load_base_weights
from trainables.config import make_trial_config, parse_grid
from trainables.data import load_splits, subset
from trainables.evaluate import robust_outcomes
from trainables.refine import build_trial_model, refine, train_base_locally

PRESET = "cifar10-cpu"


def preset_trial(args: argparse.Namespace, **values):
    trial = {**PRESETS[PRESET]["trial"], "data_dir": args.data_dir, "seed": args.seed}
    return make_trial_config({**trial, **values})


def base_file(args: argparse.Namespace, splits, folder: str) -> str:
    """--base, or the preset's base trained here and written into `folder`."""
    if args.base:
        return args.base
    from benchmarks.cifar_base import base_config, save_weights

    weights, _ = train_base_locally(base_config(args.data_dir, args.seed), splits)
    path = os.path.join(folder, "base.pt")
    save_weights(weights, path)
    return path


def pgd_at_model(args: argparse.Namespace, splits, base: str):
    """PGD-AT refined from the base with one search trial's budget (the preset's rounds,
    epochs, training images, ε and attack steps)."""
    cfg = preset_trial(args, method="pgd_at", eval_subset=50, base_checkpoint=base)
    if args.train_subset:
        cfg = dataclasses.replace(cfg, train_subset=args.train_subset)
    kept: dict = {}
    metrics = refine(cfg, report=lambda m, state: kept.update(state), splits=splits)
    model = build_trial_model(cfg, splits)
    model.load_state_dict(kept["model"])
    return model, metrics


def measure(
    model, x, y, eps: float, pgd_steps: int, budgets: list[int], spsa: list[tuple[int, int]],
    seed: int, aa_images: int, surrogate=None,
) -> dict:  # fmt: skip
    t0 = time.perf_counter()
    pgd = robust_outcomes(model, x, y, PGD(eps, steps=pgd_steps, seed=seed))
    row = {"pgd_acc": round(pgd.float().mean().item(), 4),
           "pgd_s": round(time.perf_counter() - t0, 1)}  # fmt: skip

    def record(name: str, ok: torch.Tensor, seconds: float | None = None) -> None:
        row[f"{name}_acc"] = round(ok.float().mean().item(), 4)
        row[f"{name}_gap"] = round(100 * (row[f"{name}_acc"] - row["pgd_acc"]), 1)  # points
        if seconds is not None:
            row[f"{name}_s"] = round(seconds, 1)
        # images it breaks and PGD does not: what the masking check counts
        row[f"{name}_only"] = int((pgd & ~ok).sum())

    squares, spsas = {}, {}
    for q in budgets:
        t0 = time.perf_counter()
        squares[q] = robust_outcomes(model, x, y, Square(eps, queries=q, seed=seed))
        record(f"square{q}", squares[q], time.perf_counter() - t0)
    for iterations, samples in spsa:
        attack = SPSA(eps, iterations=iterations, samples=samples, seed=seed)
        name = f"spsa{iterations}x{samples}"
        t0 = time.perf_counter()
        spsas[name] = robust_outcomes(model, x, y, attack)
        record(name, spsas[name], time.perf_counter() - t0)
        row[f"{name}_queries"] = attack.queries  # per image, at most
    if surrogate is not None:  # PGD on the surrogate's honest gradients, transferred
        t0 = time.perf_counter()
        on_surrogate = PGD(eps, steps=pgd_steps, seed=seed)
        transfer = robust_outcomes(model, x, y, lambda m, xb, yb: on_surrogate(surrogate, xb, yb))
        record("transfer", transfer, time.perf_counter() - t0)
    for q, square in squares.items():  # the worst case's gradient-free half: both attacks
        for name, ok in spsas.items():
            record(f"square{q}+{name}", square & ok)
    if aa_images:  # what the confirmation's AutoAttack costs per image on this model
        t0 = time.perf_counter()
        ok = robust_outcomes(model, x[:aa_images], y[:aa_images], AutoAttack(eps, seed=seed))
        row["autoattack_acc"] = round(ok.float().mean().item(), 4)
        row["autoattack_s_per_image"] = round((time.perf_counter() - t0) / aa_images, 2)
    return row


def _spsa_setting(text: str) -> tuple[int, int]:
    if not (m := re.fullmatch(r"(\d+)x(\d+)", text)):
        raise argparse.ArgumentTypeError(f"expected ITERATIONSxSAMPLES, e.g. 20x32; got {text!r}")
    return int(m.group(1)), int(m.group(2))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.square_budget", description=__doc__)
    p.add_argument("--data-dir", required=True, help="CIFAR-10 (see python -m study.sweep -h)")
    p.add_argument("--base", help="the ERM base's model file (default: train it here)")
    p.add_argument("--images", type=int, default=500, help="validation images attacked")
    p.add_argument("--eps", default="2/255,8/255")
    p.add_argument("--queries", type=int, nargs="+", default=[100, 300, 1000, 3000])
    p.add_argument(
        "--spsa", type=_spsa_setting, nargs="*", default=[],
        help="SPSA settings ITERATIONSxSAMPLES (e.g. 20x32) to measure beside Square",
    )  # fmt: skip
    p.add_argument(
        "--transfer", action="store_true",
        help="also PGD on the ERM base transferred to the PGD-AT model (a black box to it)",
    )  # fmt: skip
    p.add_argument("--within", type=float, default=5.0, help="points above PGD allowed")
    p.add_argument("--autoattack-images", type=int, default=0, help="time AutoAttack on N images")
    p.add_argument("--train-subset", type=int, help="PGD-AT's training images (a smoke run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    splits = load_splits("cifar10", args.data_dir, with_test=False)
    with tempfile.TemporaryDirectory() as folder:
        base = base_file(args, splits, folder)
        cfg = preset_trial(args, method="erm")
        erm = build_trial_model(cfg, splits)
        erm.load_state_dict(load_base_weights(base))
        t0 = time.perf_counter()
        pgd_at, pgd_at_metrics = pgd_at_model(args, splits, base)
        refine_s = time.perf_counter() - t0
    x, y = subset(splits.val_x, splits.val_y, args.images, seed=1)
    rows = []
    for name, model in (("erm", erm), ("pgd_at", pgd_at)):
        for token, eps in parse_grid(args.eps):
            row = {"model": name, "eps": token, "images": len(y)}
            row.update(
                measure(model, x, y, eps, cfg.eval_steps, args.queries, args.spsa, args.seed,
                        args.autoattack_images, erm if args.transfer and model is not erm else None)
            )  # fmt: skip
            rows.append(row)
            print(row, flush=True)
    chosen = next(
        (q for q in sorted(args.queries)
         if all(r[f"square{q}_gap"] <= args.within for r in rows)),
        None,
    )  # fmt: skip
    out = {
        "preset": PRESET, "eval_steps": cfg.eval_steps, "threads": args.threads,
        "pgd_at_refine_s": round(refine_s, 1),
        "pgd_at_val_clean_acc": round(pgd_at_metrics["val_clean_acc"], 4),
        "rows": rows, "within_points": args.within, "smallest_budget_within": chosen,
    }  # fmt: skip
    emit_json(out, args.json)
    return out


if __name__ == "__main__":
    main()
