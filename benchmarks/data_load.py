"""What a trial process pays to load its data: `load_splits` on a data set, into an empty cache
(the first load of a study, which decodes every image) and then again (every later trial, which
reads the decoded cache).

    python -m benchmarks.data_load [--dataset cifar10] [--data-dir ARCHIVE_OR_FOLDER]
                                   [--repeats 3] [--json OUT.json]

(default --data-dir: ../shared/data/cifar10-jpeg.tar.gz)

Each load runs in a fresh process, as a trial's does, with LIMEROBUST_CACHE set to a temporary
folder: the first with it empty, the next `--repeats` with it filled (the search trials' sealed
load, `with_test=False`, and the confirmation's full load alternate). Reported: the seconds of
each load, the median warm load of each kind, and the images loaded.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from benchmarks.output import emit_json

ONE_LOAD = """
import json, sys, time
from trainables.data import load_splits
start = time.perf_counter()
s = load_splits(sys.argv[1], sys.argv[2] or None, with_test=sys.argv[3] == "1")
n = len(s.train_x) + len(s.val_x) + (s.test_size if sys.argv[3] == "1" else 0)
print(json.dumps({"seconds": time.perf_counter() - start, "images": n}))
"""


def load_once(dataset: str, data_dir: str | None, with_test: bool, cache: str) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", ONE_LOAD, dataset, data_dir or "", "1" if with_test else "0"],
        env={**os.environ, "LIMEROBUST_CACHE": cache},
        capture_output=True,
        text=True,
        check=False,
    )
    if run.returncode != 0:
        raise SystemExit(f"load_splits failed: {run.stderr.strip().splitlines()[-1]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.data_load", description=__doc__)
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default="../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--repeats", type=int, default=3, help="warm loads of each kind (default 3)")
    p.add_argument("--json", help="also write the result to this file")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.data_dir and not os.path.exists(args.data_dir):
        p.error(f"--data-dir {args.data_dir} does not exist")
    with tempfile.TemporaryDirectory(prefix="data-load-cache-") as cache:
        cold = load_once(args.dataset, args.data_dir, True, cache)
        warm = {"sealed": [], "full": []}
        for _ in range(args.repeats):
            for kind in warm:
                warm[kind].append(load_once(args.dataset, args.data_dir, kind == "full", cache))
    result = {
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "cold_seconds": round(cold["seconds"], 2),
        "images": cold["images"],
        **{f"warm_{k}_seconds": [round(r["seconds"], 2) for r in v] for k, v in warm.items()},
        **{
            f"warm_{k}_median_seconds": round(statistics.median(r["seconds"] for r in v), 2)
            for k, v in warm.items()
        },
    }
    emit_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
