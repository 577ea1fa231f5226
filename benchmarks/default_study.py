"""Wall time and peak memory of the default study, exactly as a new user runs it.

    python -m benchmarks.default_study [--json OUT.json] [-- extra sweep args]

Runs `python -m study.sweep` in a fresh process that starts its own local Ray (its console is
kept in console.txt beside the study, and its line count reported) and samples, every 3 s,
the proportional set size (PSS) of the whole process tree: the driver, Ray's GCS and
raylet, the Tune/Train workers and the LIME actors. PSS splits shared pages among the processes
that map them, so the sum does not count Ray's shared object store twice.
"""

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time

import psutil

from benchmarks.output import emit_json


def tree_pss_mb(root: psutil.Process) -> float:
    total = 0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_full_info().pss
    return total / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the figures here")
    args, extra = parser.parse_known_args()
    storage = tempfile.mkdtemp(prefix="default-study-")
    cmd = [sys.executable, "-m", "study.sweep", "--storage", storage, "--address", "local"]
    cmd += [a for a in extra if a != "--"]
    start = time.perf_counter()
    console_path = f"{storage}/console.txt"  # what the user sees: stdout and stderr
    console = open(console_path, "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, stdout=console, stderr=subprocess.STDOUT)
    root, peak = psutil.Process(proc.pid), 0.0
    while proc.poll() is None:
        try:
            peak = max(peak, tree_pss_mb(root))
        except psutil.NoSuchProcess:
            break
        time.sleep(3.0)  # sampling PSS costs CPU: about 10% of a core at once a second
    console.close()
    with open(console_path) as f:
        console_lines = len(f.read().splitlines())
    result = {
        "command": " ".join(["python -m study.sweep", *cmd[3:]]),
        "exit_code": proc.returncode,
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_pss_mb": round(peak),
        "console_lines": console_lines,
        "cpus": psutil.cpu_count(),
        "study_dir": storage,
    }
    emit_json(result, args.json)


if __name__ == "__main__":
    main()
