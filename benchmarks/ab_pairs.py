"""Two settings of one JSON benchmark, run alternately in pairs: an A/B comparison in one sitting.

    python -m benchmarks.ab_pairs --pairs 3 \
        --a-env RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=1 --b-env RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0
    python -m benchmarks.ab_pairs --pairs 3 --a-dir ../before --b-dir . [--json OUT.json] \
        [-- benchmarks.ray_overhead --preset digits]

On a shared machine the load drifts between runs, so a before/after figure taken minutes apart
compares the load as much as the change. This runs the benchmark (default:
`benchmarks.ray_overhead --preset digits`) as A, then as B, `--pairs` times, each run in a fresh
process (`python -m MODULE ARGS --json FILE`; the module must write its figures there, as the
JSON benchmarks do through benchmarks.output.emit_json). A side differs from the other by its
environment variables (`--a-env` / `--b-env KEY=VALUE`, repeatable) and/or by the checkout it
runs from (`--a-dir` / `--b-dir`, e.g. a `git worktree` of the commit before a change: the run's
working directory and first PYTHONPATH entry, so that checkout's modules are the ones imported,
by Ray's workers too). Both sides use this Python and its installed packages.

Printed (and written to --json): every run's figures, and per side, for each numeric figure, the
value of each pair and the mean over pairs.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from benchmarks.output import emit_json

DEFAULT_BENCHMARK = ["benchmarks.ray_overhead", "--preset", "digits"]


def parse_env(items: list[str], flag: str) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag}: expected KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def run_once(benchmark: list[str], workdir: str, env_extra: dict[str, str]) -> dict:
    """One run of the benchmark in a fresh process; its JSON figures."""
    workdir = os.path.abspath(workdir)
    env = {**os.environ, **env_extra}
    env["PYTHONPATH"] = os.pathsep.join([workdir, *filter(None, [env.get("PYTHONPATH")])])
    with tempfile.TemporaryDirectory(prefix="ab-pairs-") as tmp:
        out = os.path.join(tmp, "out.json")
        cmd = [sys.executable, "-m", *benchmark, "--json", out]
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(out):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise SystemExit(f"{' '.join(cmd)} in {workdir} failed:\n" + "\n".join(tail))
        with open(out) as f:
            return json.load(f)


def summarize(runs: list[dict]) -> dict[str, dict]:
    """For each numeric figure of the runs: its value per pair and the mean."""
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
    return {
        k: {"pairs": [r[k] for r in runs], "mean": round(statistics.mean(r[k] for r in runs), 2)}
        for k in keys
    }


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    ours, benchmark = argv, []
    if "--" in argv:  # what follows is the benchmark: module and its arguments
        ours, benchmark = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab_pairs", description=__doc__)
    p.add_argument("--pairs", type=int, default=3, help="A-then-B pairs (default 3)")
    p.add_argument("--a-dir", default=".", help="checkout that side A runs from (default: .)")
    p.add_argument("--b-dir", default=".", help="checkout that side B runs from (default: .)")
    p.add_argument("--a-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--b-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(ours)
    if args.pairs < 1:
        p.error("--pairs: at least 1")
    benchmark = benchmark or DEFAULT_BENCHMARK
    sides = {
        "a": (args.a_dir, parse_env(args.a_env, "--a-env")),
        "b": (args.b_dir, parse_env(args.b_env, "--b-env")),
    }
    if sides["a"] == sides["b"]:
        p.error("A and B are the same: give --a-dir/--b-dir or --a-env/--b-env")

    runs: dict[str, list[dict]] = {"a": [], "b": []}
    for i in range(args.pairs):
        for side, (workdir, env) in sides.items():
            runs[side].append(run_once(benchmark, workdir, env))
            print(f"pair {i + 1} {side}: {json.dumps(runs[side][-1])}", file=sys.stderr, flush=True)

    out = {
        "benchmark": "python -m " + " ".join(benchmark),
        "pairs": args.pairs,
        "order": "A then B in each pair",
        **{
            side: {"dir": os.path.abspath(workdir), "env": env, "runs": runs[side],
                   "summary": summarize(runs[side])}
            for side, (workdir, env) in sides.items()
        },
    }  # fmt: skip
    emit_json(out, args.json)
    return out


if __name__ == "__main__":
    main()
