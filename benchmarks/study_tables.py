"""Extra answer tables read from a finished study's confirmation: every confirmed configuration
against other references than the study's own (ERM, for the paper's claims; a searched
baseline's point), and the paper's claims point by point.

    python -m benchmarks.study_tables results/cifar10-cpu --reference erm --reference pgd_at-c000 \
        --out docs/results/cifar10-cpu

writes vs_<reference>.csv (analysis.replicates.answer_table: differences paired by seed and test
image, 95% intervals over both, verdicts Holm-corrected within the table) and paper_claims.csv
(analysis.paper.paper_claims for each confirmed LIME-guided configuration against ERM).
"""

import argparse
import sys
from pathlib import Path

import pandas as pd

from analysis.paper import paper_claims
from analysis.replicates import answer_metrics, answer_table
from analysis.results import completed, load_trials, searched_trials
from study.store import CONFIRMATION_DIR

CIFAR10C = "test_cifar10c_mean"  # beside the answer's metrics where it was measured


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.study_tables", description=__doc__)
    p.add_argument("study_dir")
    p.add_argument("--reference", action="append", default=[], help="a confirmed config_id")
    p.add_argument("--out", required=True, help="folder for the CSV files")
    args = p.parse_args(argv)
    trials = load_trials(args.study_dir)
    confirmation = trials[trials["experiment"] == CONFIRMATION_DIR]
    done = completed(confirmation)
    ids = set(done["config/config_id"])
    unknown = [r for r in args.reference if r not in ids]
    if unknown:
        print(
            f"error: --reference {unknown[0]!r} is not a confirmed configuration", file=sys.stderr
        )
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = answer_metrics(confirmation) + ([CIFAR10C] if CIFAR10C in confirmation else [])
    for reference in args.reference:
        table = answer_table(confirmation, metrics=metrics, reference=reference)
        table.to_csv(out / f"vs_{reference}.csv", index=False)
    methods = sorted(set(searched_trials(done)["config/config_id"]))
    claims = [paper_claims(confirmation, c).assign(config_id=c) for c in methods]
    claims = pd.concat(claims, ignore_index=True) if claims else pd.DataFrame()
    claims.to_csv(out / "paper_claims.csv", index=False)
    print(f"wrote {len(args.reference)} answer tables and paper_claims.csv to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
