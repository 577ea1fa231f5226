"""Per-trial overhead of Ray: one trial through Tune (and Train) vs the same loop called directly.

    python -m benchmarks.ray_overhead --preset digits --json OUT.json
    python -m benchmarks.ray_overhead --preset digits --num-workers 1   # a Ray Train worker
    python -m benchmarks.ray_overhead --preset cifar10 --data-dir ../shared/data --gpus-per-trial 1

Same trial config both ways: the preset's fixed values, nothing searched.
Direct: `refine` in this process, LIME in-process. Through Ray: `run_study` with one trial (one
replicate, no baselines, no confirmation) on an already started Ray instance (its start-up is
reported apart), in the preset's trial mode (`num_workers`; digits: 0, the loop in the Tune
trial's own process) or the one given, LIME where the preset puts it.
"""

import argparse
import importlib
import tempfile
import time

import torch

from benchmarks.output import emit_json
from study.config import load_config
from study.preflight import with_gpus_per_trial
from study.presets import PRESETS
from study.stages import connect_ray, run_study
from trainables.refine import refine


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ray_overhead", description=__doc__)
    p.add_argument("--preset", default="digits", choices=sorted(PRESETS))
    p.add_argument("--data-dir", help="CIFAR data (see `python -m study.sweep --help`)")
    p.add_argument("--gpus-per-trial", type=float, help="default: 0 (CPU)")
    p.add_argument("--num-workers", type=int, help="trial mode (default: the preset's)")
    p.add_argument("--address", default="local", help="Ray cluster to use (default: a new one)")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)

    storage = tempfile.mkdtemp(prefix="ray-overhead-")
    trial = {"data_dir": args.data_dir} if args.data_dir else {}
    if args.num_workers is not None:
        trial["num_workers"] = args.num_workers
    # Nothing searched: Tune still needs a space, so "search" one value of the seed.
    fixed = {k: None for k in PRESETS[args.preset]["search"]} | {
        "seed": {"type": "choice", "values": [0]}
    }
    cfg = load_config(
        None,
        {"preset": args.preset, "name": "overhead", "storage": storage, "num_samples": 1,
         "search": fixed, "trial": trial, "baselines": [], "replicates": 1, "confirm_seeds": 0},
    )  # fmt: skip
    cfg = with_gpus_per_trial(cfg, args.gpus_per_trial)
    device = "cuda" if cfg.trial.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu"

    # refine imports the final evaluation's modules lazily; import them before the clock, as
    # every other module of the direct loop is, so the direct time is the loop's own work
    importlib.import_module("trainables.trial_eval")
    t0 = time.perf_counter()
    refine(cfg.trial, device=device)  # loads (and caches) the data too, as a trial does
    direct = time.perf_counter() - t0

    t0 = time.perf_counter()
    connect_ray(args.address)
    ray_start = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_study(cfg, address=args.address)
    through_ray = time.perf_counter() - t0

    out = {
        "preset": args.preset,
        "num_workers": cfg.trial.num_workers,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "direct_s": round(direct, 2),
        "tune_train_s": round(through_ray, 2),
        "overhead_s": round(through_ray - direct, 2),
        "overhead_pct": round(100 * (through_ray - direct) / direct, 1),
        "ray_start_s": round(ray_start, 2),
    }
    emit_json(out, args.json)
    return out


if __name__ == "__main__":
    main()
