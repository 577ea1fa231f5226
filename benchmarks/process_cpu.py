"""Where a study's CPU goes: CPU seconds per Ray process type during a digits search.

    python -m benchmarks.process_cpu [--num-samples 4] [--num-workers N] [--json OUT.json]
                                     [-- extra sweep args]

Runs `python -m study.sweep` on its own local Ray with a search-only study of the digits preset
(`num_samples` configurations x the preset's 2 replicates, `baselines: []`, `confirm_seeds: 0`;
`--num-workers` sets the trial mode, default the preset's: 0 runs each trial in its own Tune
process, N >= 1 as a Ray Train run of N workers) and, every `--interval` seconds (0.5), reads
the CPU time (user + system) of every process in its tree: the driver, Ray's GCS, raylet and
dashboard, and the worker processes, named by the title Ray gives them (`ray::RayTrainWorker.run`
-> `RayTrainWorker`; an idle worker keeps the name of the last actor or task it ran). The last
value read is kept per process, so a process that ends between two reads loses at most one
interval of CPU. Every `--busy-interval` seconds (5) it also reads /proc/stat: the share of the
whole machine's CPU time that was busy.

Reported: CPU seconds per process name, summed over the run and divided by the number of
search trials (trials.csv), the processes per name, the wall time, and the busy samples.
"""

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time

import pandas as pd
import psutil
import yaml

from benchmarks.output import emit_json


def ray_name(proc: psutil.Process) -> str | None:
    """`RayTrainWorker` for a process titled `ray::RayTrainWorker.run`; None for an idle Ray
    worker; the executable's name for everything else (raylet, gcs_server, python...)."""
    cmdline = proc.cmdline()
    title = cmdline[0] if cmdline else ""
    if title.startswith("ray::"):
        name = title[len("ray::") :].split()[0].split(".")[0]
        return None if name == "IDLE" else name
    return proc.name()


def proc_stat_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.process_cpu", description=__doc__)
    p.add_argument("--num-samples", type=int, default=4, help="configurations (default 4)")
    p.add_argument("--num-workers", type=int, help="trial key num_workers (default: the preset's)")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between CPU reads")
    p.add_argument("--busy-interval", type=float, default=5.0, help="seconds between /proc/stat")
    p.add_argument("--json", help="write the figures here")
    args, extra = p.parse_known_args(argv)

    storage = tempfile.mkdtemp(prefix="process-cpu-")
    config = os.path.join(storage, "search_only.yaml")
    study = {"preset": "digits", "name": "search-only", "num_samples": args.num_samples,
             "baselines": [], "confirm_seeds": 0}  # fmt: skip
    if args.num_workers is not None:
        study["trial"] = {"num_workers": args.num_workers}
    with open(config, "w") as f:
        yaml.safe_dump(study, f)
    cmd = [sys.executable, "-m", "study.sweep", "--config", config, "--storage", storage,
           "--address", "local", *[a for a in extra if a != "--"]]  # fmt: skip

    cpu: dict[int, float] = {}  # pid -> last CPU seconds read
    names: dict[int, str] = {}  # pid -> last non-idle name
    busy: list[float] = []
    start = time.perf_counter()
    with open(os.path.join(storage, "console.txt"), "w") as console:
        proc = subprocess.Popen(cmd, stdout=console, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        last_stat, next_stat = proc_stat_busy(), time.monotonic() + args.busy_interval
        while proc.poll() is None:
            procs: list[psutil.Process] = []
            with contextlib.suppress(psutil.NoSuchProcess):
                procs = [root, *root.children(recursive=True)]
            for q in procs:
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    t = q.cpu_times()
                    name = "driver (study.sweep)" if q.pid == root.pid else ray_name(q)
                    cpu[q.pid] = t.user + t.system
                    if name is not None:
                        names[q.pid] = name
                    names.setdefault(q.pid, "IDLE")
            if time.monotonic() >= next_stat:
                stat = proc_stat_busy()
                d_busy, d_total = stat[0] - last_stat[0], stat[1] - last_stat[1]
                busy.append(round(100 * d_busy / max(d_total, 1), 1))
                last_stat, next_stat = stat, next_stat + args.busy_interval
            time.sleep(args.interval)
    wall = time.perf_counter() - start

    trials = pd.read_csv(os.path.join(storage, "search-only", "trials.csv"))
    n_trials = int((trials["stage"] == "search").sum()) if "stage" in trials else len(trials)
    per_name: dict[str, dict] = {}
    for pid, seconds in cpu.items():
        row = per_name.setdefault(names[pid], {"processes": 0, "cpu_s": 0.0})
        row["processes"] += 1
        row["cpu_s"] += seconds
    table = {
        name: {"processes": row["processes"], "cpu_s": round(row["cpu_s"], 1),
               "cpu_s_per_trial": round(row["cpu_s"] / max(n_trials, 1), 2)}
        for name, row in sorted(per_name.items(), key=lambda kv: -kv[1]["cpu_s"])
    }  # fmt: skip
    out = {
        "num_workers": args.num_workers,
        "command": " ".join(["python -m study.sweep", *cmd[3:]]),
        "exit_code": proc.returncode,
        "search_trials": n_trials,
        "wall_s": round(wall, 1),
        "cpus": psutil.cpu_count(),
        "busy_percent_samples": busy,
        "busy_samples_at_least_99": sum(b >= 99 for b in busy),
        "per_process_name": table,
        "study_dir": os.path.join(storage, "search-only"),
    }
    emit_json(out, args.json)
    return out


if __name__ == "__main__":
    main()
