"""Train `my_model.build` on your own image folder, outside any study, and save the network's
state_dict: the classifier a study then refines (`base: {checkpoint: ...}`).

From the repository root:

    python studies/own-data/train_classifier.py results/own-data/images \\
        --out results/own-data/my_model.pt

Two things make the saved weights what the study expects:

- it trains on the engine's training split only: `load_splits` carves the same validation
  images the study selects on (a fixed seed) and seals the test split, so the classifier has
  seen neither. Give it the study's `val_size` and `image_size` when the study sets them.
- it normalizes each batch with that split's per-channel mean and std, as the `Normalize` the
  engine puts in front of the network does, and saves the network alone
  (`torch.save(net.state_dict(), path)`).

It prints the validation accuracy, never a test accuracy: the test split is the study's
confirmation's alone.
"""

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from my_model import build

from trainables.data import load_splits


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data_dir", help="the image folder (train/<class>/*, test/<class>/*)")
    p.add_argument("--out", required=True, help="where to save the state_dict (.pt)")
    p.add_argument("--epochs", type=int, default=20, help="(%(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="(%(default)s)")
    p.add_argument("--lr", type=float, default=0.1, help="SGD's peak learning rate (%(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(%(default)s)")
    p.add_argument("--val-size", type=int, default=None, help="the study's trial.val_size")
    p.add_argument("--image-size", type=int, default=None, help="the study's trial.image_size")
    return p.parse_args(argv)


def accuracy(net, x, y, mean, std, batch_size=256) -> float:
    net.eval()
    with torch.no_grad():
        hits = sum(
            (net((x[i : i + batch_size] - mean) / std).argmax(1) == y[i : i + batch_size])
            .sum()
            .item()
            for i in range(0, len(x), batch_size)
        )
    return hits / len(x)


def main(argv=None) -> float:
    """Train, save, and return the validation accuracy."""
    args = parse_args(argv)
    start = time.perf_counter()
    # the engine's own split: its training images, its validation images, the test sealed
    splits = load_splits(
        "imagefolder",
        args.data_dir,
        val_size=args.val_size,
        image_size=args.image_size,
        with_test=False,
    )
    mean = torch.tensor(splits.mean).view(1, -1, 1, 1)
    std = torch.tensor(splits.std).view(1, -1, 1, 1)
    x, y = splits.train_x, splits.train_y
    print(
        f"{len(x)} training and {len(splits.val_x)} validation images, classes "
        f"{', '.join(splits.classes)}; mean {tuple(round(m, 3) for m in splits.mean)}, "
        f"std {tuple(round(s, 3) for s in splits.std)}"
    )

    torch.manual_seed(args.seed)
    net = build(splits.in_channels, splits.num_classes, splits.image_size)
    opt = torch.optim.SGD(
        net.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    steps = args.epochs * -(-len(x) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(len(x))
        total = 0.0
        for i in range(0, len(x), args.batch_size):
            idx = order[i : i + args.batch_size]
            xb, yb = x[idx], y[idx]
            flip = torch.rand(len(xb)) < 0.5  # airplanes, cars, ships, trucks: mirror-safe
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
            loss = F.cross_entropy(net((xb - mean) / std), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{args.epochs}  loss {total / len(x):.3f}")

    val_acc = accuracy(net, splits.val_x, splits.val_y, mean, std)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out)  # the network alone: the engine adds its Normalize
    took = time.perf_counter() - start
    print(f"validation accuracy {100 * val_acc:.1f}%; saved {out} ({took:.0f} s)")
    return val_acc


if __name__ == "__main__":
    main()
