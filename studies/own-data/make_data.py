"""Make a small image folder of your own from the CIFAR-10 JPEG archive: 4 classes, a fixed
random choice of images per class, upscaled to 64x64 RGB, in the ImageFolder layout the engine
reads (`train/<class>/*.png`, `test/<class>/*.png`).

It stands in for a user's own photographs: plain Python, Pillow and tarfile, nothing of the
engine. From the repository root:

    python studies/own-data/make_data.py results/own-data/images

The archive's images are read where they are (`train/<class>/NNNN.jpg`, possibly under one top
folder); the choice is `random.Random(seed).sample` of each class's sorted file names, so the
same flags write the same images.
"""

import argparse
import io
import random
import sys
import tarfile
from collections import defaultdict
from pathlib import Path, PurePosixPath

from PIL import Image

ARCHIVE = "../shared/data/cifar10-jpeg.tar.gz"
CLASSES = ("airplane", "automobile", "ship", "truck")
SPLITS = ("train", "test")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the folder to write (must be empty or not exist)")
    p.add_argument("--archive", default=ARCHIVE, help=f"the CIFAR-10 JPEG archive ({ARCHIVE})")
    p.add_argument(
        "--classes", default=",".join(CLASSES), help="comma-separated class names (%(default)s)"
    )
    p.add_argument("--train-per-class", type=int, default=400, help="(%(default)s)")
    p.add_argument("--test-per-class", type=int, default=100, help="(%(default)s)")
    p.add_argument("--size", type=int, default=64, help="the side in pixels (%(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the choice of images (%(default)s)")
    p.add_argument("--format", choices=("png", "jpeg"), default="png", help="(%(default)s)")
    return p.parse_args(argv)


def split_and_class(name: str) -> tuple[str, str] | None:
    """('train', 'airplane') for '[top/]train/airplane/0001.jpg'; None for anything else."""
    parts = PurePosixPath(name).parts
    if len(parts) < 3 or parts[-3] not in SPLITS or not parts[-1].lower().endswith(".jpg"):
        return None
    return parts[-3], parts[-2]


def choose(names: list[str], n: int, rng: random.Random, where: str) -> list[str]:
    if n > len(names):
        sys.exit(f"error: {where} has {len(names)} images, fewer than the {n} asked for")
    return sorted(rng.sample(sorted(names), n))


def main(argv=None) -> None:
    args = parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"error: {out} is not empty; choose a new folder")
    wanted = {"train": args.train_per_class, "test": args.test_per_class}

    with tarfile.open(args.archive, "r:gz") as tar:
        found: dict[tuple[str, str], list[tarfile.TarInfo]] = defaultdict(list)
        for member in tar:  # one pass over the archive's index
            key = split_and_class(member.name) if member.isfile() else None
            if key is not None and key[1] in classes:
                found[key].append(member)
        rng = random.Random(args.seed)
        chosen = []
        for split in SPLITS:
            for cls in classes:
                members = {m.name: m for m in found[(split, cls)]}
                picked = choose(list(members), wanted[split], rng, f"{split}/{cls}")
                chosen += [(split, cls, members[name]) for name in picked]
        chosen.sort(key=lambda c: c[2].offset)  # read the gzip stream forward only
        suffix = ".png" if args.format == "png" else ".jpg"
        for split, cls, member in chosen:
            with Image.open(io.BytesIO(tar.extractfile(member).read())) as img:
                big = img.convert("RGB").resize((args.size, args.size), Image.Resampling.BICUBIC)
            folder = out / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / (PurePosixPath(member.name).stem + suffix)
            if args.format == "png":
                big.save(path, optimize=False)
            else:
                big.save(path, quality=95)
    counts = ", ".join(f"{wanted[s] * len(classes)} {s}" for s in SPLITS)
    print(f"wrote {counts} images ({len(classes)} classes, {args.size}x{args.size} RGB) to {out}")


if __name__ == "__main__":
    main()
