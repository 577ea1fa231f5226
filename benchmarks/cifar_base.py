"""The `cifar10-cpu` preset's base on the CPU: the clean test accuracy it reaches, and its time.

    python -m benchmarks.cifar_base --data-dir ../shared/data/cifar10-jpeg.tar.gz --json OUT.json

The project's target for a `cifar10-cpu` base: at least 85% clean accuracy on the CIFAR-10 test
split in at most 10 minutes on 2 cores (docs/benchmarks.md, "CIFAR-10 on the CPU"). The base is
the preset's (`trial:` and `base:` sections; `--width`, `--epochs`, `--lr`, `--lr-schedule` and
`--label-smoothing` override them), trained as a study's `base:` section trains it
(`train_base_locally`: refine() with one round of ERM, the loop's learning-rate schedule, flip
and translate augmentation), in this process with `--threads` threads; then its clean accuracy
is measured in eval mode, without test-time augmentation (the model under attack is the model
reported), on all 10,000 test images.
`--probe-steps N` times N training steps of each `--width` instead (images per second, for
choosing a width and an epoch count that fit the budget).
"""

import argparse
import time

import torch

from benchmarks.output import emit_json
from study.presets import PRESETS
from trainables.augment import resolve
from trainables.base import base_trial_config, model_file
from trainables.config import LR_SCHEDULES, make_trial_config
from trainables.data import load_splits
from trainables.evaluate import accuracy
from trainables.refine import build_trial_model, train_base_locally

BUDGET_S = 10 * 60
TARGET_ACC = 0.85
PRESET = PRESETS["cifar10-cpu"]


# The base keys this command can override (from the command line; None keeps the preset's).
BASE_OVERRIDES = ("epochs", "lr", "lr_schedule", "label_smoothing", "batch_size", "translate")


def base_config(
    data_dir: str,
    seed: int = 0,
    train_subset: int | None = None,
    model: str | None = None,
    width: int | None = None,
    **base_overrides,
):
    """The preset's base trial config, trained on `train_subset` images (None: all), with the
    given architecture, width and BASE_OVERRIDES; None keeps the preset's."""
    trial = {**PRESET["trial"], "data_dir": data_dir, "seed": seed, "train_subset": train_subset}
    trial["eval_subset"] = 200  # the round's own validation check, not the figure reported
    if model is not None:
        trial["model"] = model
    if width is not None:
        trial["model_width"] = width
    base = {k: v for k, v in PRESET["base"].items() if k != "cpus_per_worker"}
    base["train_subset"] = train_subset
    base.update({k: v for k, v in base_overrides.items() if v is not None})
    return base_trial_config(make_trial_config(trial), base, seed)


def _config(args: argparse.Namespace, width: int | None, epochs: int | None):
    """This command's base: base_config with its arguments."""
    overrides = {k: getattr(args, k) for k in BASE_OVERRIDES if k != "epochs"}
    return base_config(
        args.data_dir, args.seed, args.train_subset, args.model, width, epochs=epochs, **overrides
    )


def save_weights(weights: dict[str, torch.Tensor], path: str) -> None:
    """A base model file and its SHA-256 sidecar, as a study's base cache stores a base."""
    data, digest = model_file(weights)
    with open(path, "wb") as f:
        f.write(data)
    with open(path + ".sha256", "w") as f:
        f.write(digest + "\n")


def probe(args: argparse.Namespace, splits) -> list[dict]:
    """Images per second of `--probe-steps` ERM steps (with augmentation) at each width."""
    from trainables.augment import flip_translate
    from trainables.refine import training_loss

    rows = []
    for width in args.width or [None]:
        cfg = _config(args, width, 1)
        model = build_trial_model(cfg, splits).train().to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True)
        gen = torch.Generator().manual_seed(0)
        x_all, y_all = splits.train_x, splits.train_y
        w = torch.ones(cfg.batch_size, 1, *x_all.shape[-2:])
        for step in range(args.probe_steps + 2):  # two warm-up steps, not timed
            if step == 2:
                t0 = time.perf_counter()
            idx = torch.randint(len(x_all), (cfg.batch_size,), generator=gen)
            x, _ = flip_translate((x_all[idx], w), gen)
            loss = training_loss(cfg, model, x, y_all[idx], w, step, 1.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        seconds = time.perf_counter() - t0
        ips = args.probe_steps * cfg.batch_size / seconds
        rows.append({"model": cfg.model, "width": width, "images_per_s": round(ips, 1),
                     "epoch_s": round(len(x_all) / ips, 1)})  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cifar_base", description=__doc__)
    p.add_argument("--data-dir", required=True, help="CIFAR-10 (see python -m study.sweep -h)")
    p.add_argument("--model", help="the architecture (default: the preset's)")
    p.add_argument("--width", type=int, nargs="+", help="its width (default: the preset's)")
    p.add_argument("--epochs", type=int, help="default: the preset's")
    p.add_argument("--batch-size", type=int, help="default: the preset's")
    p.add_argument("--lr", type=float, help="default: the preset's")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="default: the preset's")
    p.add_argument("--label-smoothing", type=float, help="default: the preset's")
    p.add_argument("--translate", type=int, help="augmentation's largest shift (the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-subset", type=int, help="train on N images (default: all; a smoke run)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--probe-steps", type=int, default=0, help="only time N steps per width")
    p.add_argument("--json", help="write the numbers here")
    p.add_argument(
        "--save",
        help="write the base's weights here (a base model file, with its "
        ".sha256 sidecar: what benchmarks.square_budget --base reads)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    splits = load_splits("cifar10", args.data_dir, val_size=None, with_test=True)
    load_s = time.perf_counter() - t0
    if args.probe_steps:
        out: dict = {"probe": probe(args, splits), "threads": args.threads}
    else:
        if args.width is not None and len(args.width) != 1:
            p.error("--width: one width unless --probe-steps")
        cfg = _config(args, args.width and args.width[0], args.epochs)
        t0 = time.perf_counter()
        weights, metrics = train_base_locally(cfg, splits)
        train_s = time.perf_counter() - t0
        model = build_trial_model(cfg, splits)
        model.load_state_dict(weights)
        test_acc = accuracy(model, splits.test_x, splits.test_y)  # in eval() mode
        if args.save:
            save_weights(weights, args.save)
        n = metrics["train_examples"]
        out = {
            "model": cfg.model, "width": cfg.model_width, "epochs": cfg.epochs_per_round,
            "batch_size": cfg.batch_size, "lr": cfg.lr, "lr_schedule": cfg.lr_schedule,
            "label_smoothing": cfg.label_smoothing, "translate": cfg.translate,
            "augment": resolve(cfg.augment, cfg.dataset),
            "threads": args.threads, "seed": args.seed,
            "train_images": n, "data_load_s": round(load_s, 1),
            "train_s": round(train_s, 1),
            "images_per_s": round(n * cfg.epochs_per_round / train_s, 1),
            "round_train_s": round(metrics["train_seconds"], 1),
            "val_clean_acc": round(metrics["val_clean_acc"], 4),
            "test_clean_acc": round(test_acc, 4), "test_images": len(splits.test_y),
            "target": f">= {TARGET_ACC:.0%} in <= {BUDGET_S // 60} min",
            "target_met": test_acc >= TARGET_ACC and train_s <= BUDGET_S,
        }  # fmt: skip
    emit_json(out, args.json)
    return out


if __name__ == "__main__":
    main()
