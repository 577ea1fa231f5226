"""How often the 95% intervals of `fronts.csv` cover the truth, on simulated confirmations.

    python -m benchmarks.front_coverage [--studies 200] [--seeds 2 3 10] [--seed-sd 0.2 0.5]

Each simulated study confirms two fronts with a known truth: the method's three configurations
(clean, robust) = (0.85, 0.30), (0.75, 0.45), (0.65, 0.55) and a searched baseline's two,
(0.85, 0.26) and (0.68, 0.42). Every trial scores 2,000 clean and 500 robust test images drawn
afresh per study; an image's difficulty (sd 1.5 on the logit scale) is shared by every
configuration and seed, as real test images are, and each trial adds its own seed effect
(`--seed-sd`, on the logit scale: 0.2 is about 4 points of accuracy, 0.5 about 10). The truth
is each configuration's accuracy averaged over images and seed effects; the statistics are
those of `analysis.fronts.front_comparison` (hypervolume, robust accuracy at clean 0.72 and
0.78, and the baseline's differences from the method's), read at the same levels. Printed per
setting (a table on stderr, the JSON on stdout): each statistic's coverage among the studies
that have a figure, the share without one (the level outside the estimated front) and the mean
interval width.
"""

import argparse
import sys

import numpy as np
import pandas as pd
from scipy.special import expit

from analysis.fronts import MATCHED_PREFIX, front_comparison, front_line, hypervolume_2d, robust_at
from analysis.synthetic import confirmation_row
from benchmarks.output import emit_json

FRONTS = {
    "lime_refine": {"c000": (0.85, 0.30), "c001": (0.75, 0.45), "c002": (0.65, 0.55)},
    "pgd_at": {"pgd_at-c000": (0.85, 0.26), "pgd_at-c001": (0.68, 0.42)},
}
FRONT_NAMES = {"lime_refine": "lime_refine", "pgd_at": "pgd_at, searched"}
LEVELS = (0.72, 0.78)
IMAGE_SD = 1.5
N_CLEAN, N_ROBUST = 2000, 500


def _logit_offset(p: float, difficulty: np.ndarray) -> float:
    """a with mean(expit(a + difficulty)) = p (bisection)."""
    low, high = -10.0, 10.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if expit(mid + difficulty).mean() < p else (low, mid)
    return (low + high) / 2


def coverage(
    studies: int, seeds: int, seed_sd: float, n_boot: int = 400, seed: int = 0
) -> pd.DataFrame:
    """One row per (front, statistic, estimate or difference): coverage, empty share, width."""
    rng = np.random.default_rng(seed)
    population = rng.normal(0, IMAGE_SD, 100_000)
    offsets = {
        cid: (method, _logit_offset(c, population), _logit_offset(r, population))
        for method, points in FRONTS.items()
        for cid, (c, r) in points.items()
    }
    hard = population + rng.normal(0, seed_sd, len(population))
    truth_of = {cid: (expit(a + hard).mean(), expit(b + hard).mean())
                for cid, (_, a, b) in offsets.items()}  # fmt: skip
    truth = {}
    for method, points in FRONTS.items():
        clean, robust = (np.array([truth_of[c][k] for c in points]) for k in (0, 1))
        line = front_line(clean, robust)
        truth[(FRONT_NAMES[method], "hypervolume")] = hypervolume_2d(clean, robust)
        for level in LEVELS:
            truth[(FRONT_NAMES[method], f"{MATCHED_PREFIX}{level:.3f}")] = robust_at(line, level)
    checks: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {}
    for _ in range(studies):
        rows = []
        hard_clean, hard_robust = (
            rng.normal(0, IMAGE_SD, N_CLEAN),
            rng.normal(0, IMAGE_SD, N_ROBUST),
        )
        for cid, (method, a, b) in offsets.items():
            for j in range(seeds):
                shift_clean, shift_robust = rng.normal(0, seed_sd, 2)
                clean = rng.random(N_CLEAN) < expit(a + shift_clean + hard_clean)
                robust = rng.random(N_ROBUST) < expit(b + shift_robust + hard_robust)
                rows.append(confirmation_row(cid, method, j, clean, robust))
        table = front_comparison(pd.DataFrame(rows), levels=LEVELS, n_boot=n_boot,
                                 seed=int(rng.integers(2**31)))  # fmt: skip
        by = table.set_index(["front", "statistic"])
        for (front, statistic), value in truth.items():
            row = by.loc[(front, statistic)]
            checks.setdefault((front, statistic, "estimate"), []).append(
                (value, row["ci_low"], row["ci_high"])
            )
            if front != FRONT_NAMES["lime_refine"]:
                diff = value - truth[(FRONT_NAMES["lime_refine"], statistic)]
                checks.setdefault((front, statistic, "difference"), []).append(
                    (diff, row["diff_ci_low"], row["diff_ci_high"])
                )
    out = []
    for (front, statistic, kind), values in checks.items():
        value, low, high = np.array(values, dtype=float).T
        has = ~np.isnan(low)
        covered = (low[has] <= value[has]) & (value[has] <= high[has])
        out.append({
            "seeds": seeds, "seed_sd": seed_sd, "front": front, "statistic": statistic,
            "kind": kind, "coverage": float(covered.mean()) if has.any() else np.nan,
            "empty": float(1 - has.mean()), "width": float(np.mean(high[has] - low[has])),
        })  # fmt: skip
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.front_coverage", description=__doc__)
    p.add_argument("--studies", type=int, default=200)
    p.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 10])
    p.add_argument("--seed-sd", type=float, nargs="+", default=[0.2, 0.5])
    p.add_argument("--json", help="also write the table here")
    args = p.parse_args(argv)
    tables = [coverage(args.studies, s, sd) for s in args.seeds for sd in args.seed_sd]
    table = pd.concat(tables, ignore_index=True)
    with pd.option_context("display.width", 200, "display.max_rows", None):
        print(table.round(3).to_string(index=False), file=sys.stderr)
    out = {"benchmark": "front_coverage", "studies": args.studies,
           "rows": table.to_dict("records")}  # fmt: skip
    emit_json(out, args.json)
    return out


if __name__ == "__main__":
    main()
