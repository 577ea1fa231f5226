"""How a benchmark leaves its results: NAME.csv (per-run rows), NAME.md (the command, what was
measured, the tables) and NAME.png under its storage folder, and the text on stdout."""

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
