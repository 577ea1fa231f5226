"""Memory of one IG-NORM training step, whole batch against chunks (`ig_micro_batch`).

    python -m benchmarks.ig_memory [--micro-batches 0 128 64] [--steps 2] [--batch-size 256]
                                   [--width W] [--json FILE]

The cifar10-cpu preset's IG-NORM baseline (its model at `--width`, by default the preset's;
batch 256, 10 IG path steps, PGD-2 at 2/255) on random 32x32 images: for each chunk size, a
fresh process builds the model, runs `--steps` training steps through
trainables.refine.backward and reports its peak resident memory (ru_maxrss, GiB) and its
seconds per step. One process per setting, so each peak is its own: the training step's,
without the data (CIFAR-10's splits as float32 add about 0.7 GiB), the evaluation or Ray's
processes. The seconds are for ratios between settings measured in one run, on one thread
each.
Why: two IG-NORM trials at batch 256 were killed by Ray's memory monitor on the 24 GB machine
(docs/results.md, the CIFAR-10 study); the chunked step must fit two of them beside Ray.
"""

import argparse
import json
import subprocess
import sys

from benchmarks.output import emit_json
from study.presets import PRESETS

ONE_SETTING = """
import json, resource, sys, time
import torch
from study.presets import PRESETS
from trainables.config import TrialConfig
from trainables.models import build_model
from trainables.refine import backward

torch.set_num_threads(1)
torch.manual_seed(0)
trial = PRESETS["cifar10-cpu"]["trial"]
micro_batch, steps, batch_size, width = map(int, sys.argv[1:])
cfg = TrialConfig(**{**trial, "method": "ig_norm", "ig_micro_batch": micro_batch,
                     "batch_size": batch_size, "model_width": width})
model = build_model(cfg.model, in_channels=3, num_classes=10, image_size=32, mean=(0.5,) * 3,
                    std=(0.25,) * 3, width=cfg.model_width)
model.train()
opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
x, y = torch.rand(cfg.batch_size, 3, 32, 32), torch.randint(10, (cfg.batch_size,))
w = torch.ones(cfg.batch_size, 1, 32, 32)
seconds = []
for step in range(steps):
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = backward(cfg, model, x, y, w, step)
    opt.step()
    seconds.append(time.perf_counter() - t0)
print(json.dumps({"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "seconds_per_step": min(seconds), "loss": float(loss)}))
"""


def measure(micro_batch: int, steps: int, batch_size: int, width: int) -> dict:
    """One setting in a fresh process: its peak memory and seconds per step."""
    values = [str(v) for v in (micro_batch, steps, batch_size, width)]
    out = subprocess.run(
        [sys.executable, "-c", ONE_SETTING, *values], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"ig_micro_batch={micro_batch} failed:\n{out.stderr}")
    return {"ig_micro_batch": micro_batch, **json.loads(out.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ig_memory", description=__doc__)
    p.add_argument("--micro-batches", type=int, nargs="+", default=[0, 128, 64])
    p.add_argument("--steps", type=int, default=2, help="training steps per setting")
    p.add_argument("--batch-size", type=int, default=256, help="the preset's")
    width = PRESETS["cifar10-cpu"]["trial"]["model_width"]
    p.add_argument("--width", type=int, default=width, help="the model's width (the preset's)")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    rows = [measure(m, args.steps, args.batch_size, args.width) for m in args.micro_batches]
    for row in rows:
        row["time_ratio_to_first"] = row["seconds_per_step"] / rows[0]["seconds_per_step"]
    setting = {"batch_size": args.batch_size, "width": args.width, "steps": args.steps}
    emit_json({"benchmark": "ig_memory", **setting, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
