"""How a benchmark leaves its results: one JSON object on stdout (and in --json FILE), or, for
the study benchmarks, NAME.csv (per-run rows), NAME.md (the command, what was measured, the
tables) and NAME.png under their storage folder, and the text on stdout."""

import json
import os
import sys

import pandas as pd
from matplotlib.figure import Figure


def benchmark_command(module: str, argv: list[str] | None) -> str:
    """The command line that produced the results, as docs/benchmarks.md quotes it."""
    return f"python -m {module} " + " ".join(sys.argv[1:] if argv is None else argv)


def write_results(storage: str, name: str, rows: pd.DataFrame, text: str, figure: Figure) -> None:
    rows.to_csv(os.path.join(storage, f"{name}.csv"), index=False)
    with open(os.path.join(storage, f"{name}.md"), "w") as f:
        f.write(text)
    figure.savefig(os.path.join(storage, f"{name}.png"), dpi=130)
    print(text)
    print(f"results: {storage}/{name}.{{csv,md,png}}")


def emit_json(result: dict, path: str | None) -> None:
    """Print the result, and write it to `path` when given (a benchmark's --json)."""
    print(json.dumps(result, indent=2))
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
