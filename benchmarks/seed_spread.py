"""Run-to-run spread of a reproduction: re-train each row of `reproduce_cifar10` at other seeds.

    python -m benchmarks.seed_spread results/reproduce_cifar10/results.json --seeds 1 2

Each row's exact config (the LIME-guided row with the sweep's winner) is trained again with only
the seed changed (model initialization, training subset, evaluation subset, attack starts),
without the final evaluation: clean and PGD accuracy at eval_epsilon, as the per-round evaluation
reports them. A difference between rows smaller than this spread is not a result.
"""

import argparse
import json
from pathlib import Path

import torch

from benchmarks.reproduce_cifar10 import run_row
from trainables.config import make_trial_config
from trainables.data import load_splits


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="results.json written by benchmarks.reproduce_cifar10")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rows", help="comma-separated subset of the file's rows (default: all)")
    p.add_argument("--json", help="write the spread here")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # as reproduce_cifar10 trains
    rows = json.loads(Path(args.results).read_text())["rows"]
    names = args.rows.split(",") if args.rows else list(rows)
    splits = None
    out = []
    for name in names:
        config = rows[name]["config"]
        splits = splits or load_splits(config["dataset"], config["data_dir"])
        for seed in args.seeds:
            cfg = make_trial_config({**config, "seed": seed, "stage": "search"})
            result = run_row(cfg, splits, device)
            m = result["metrics"]
            out.append({"row": name, "seed": seed, "val_clean_acc": m["val_clean_acc"],
                        "val_robust_acc": m["val_robust_acc"],
                        "seconds": round(result["wall_seconds"])})  # fmt: skip
            print(json.dumps(out[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
