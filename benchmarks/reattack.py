"""AutoAttack and PGD-20 at another ε on a finished confirmation's trained models, on the test
images the trial evaluated: the masking check at an ε whose confirmation ran no attack stronger
than PGD (one whose `final_grid` left it out, as the committed cifar10-cpu study's did at 8/255).

    python -m benchmarks.reattack results/cifar10-cpu --config c001 --config pgd_at \
        --eps 8/255 --images 500 --out docs/results/cifar10-cpu/autoattack_eps8_255.csv

Each trial's model is rebuilt from its config and its last round's checksummed checkpoint
(read with weights_only=True), in eval() mode; the images are the first `--images` of the test
order its confirmation used (the eval subset first), so the figures pair with its own. One row
per trial: PGD-20 and AutoAttack (standard) accuracy on the same images, the images AutoAttack
breaks that PGD-20 leaves (a large count is what masked gradients look like), seconds, and the
clean accuracy on the whole test split beside the trial's own, which the rebuilt model must
reproduce.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from study.store import CONFIRMATION_DIR
from trainables.config import TRIAL_FIELDS, make_trial_config, parse_grid
from trainables.evaluate import accuracy, make_attack, robust_outcomes
from trainables.refine import build_trial_model, load_trial_splits
from trainables.trial_eval import test_order
from trainables.worker import load_state


def _trials(study_dir: Path, configs: list[str]) -> list[tuple[Path, dict]]:
    """(trial folder, params) of every confirmation trial of `configs` with a checkpoint."""
    out = []
    for params_file in sorted((study_dir / CONFIRMATION_DIR).glob("*/params.json")):
        params = json.loads(params_file.read_text())
        if params.get("config_id") in configs and list(params_file.parent.glob("checkpoint_*")):
            out.append((params_file.parent, params))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reattack", description=__doc__)
    p.add_argument("study_dir")
    p.add_argument("--config", action="append", required=True, help="a confirmed config_id")
    p.add_argument("--eps", default="8/255", help="L-inf radius, e.g. 8/255")
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True, help="CSV file")
    args = p.parse_args(argv)
    try:
        ((_, eps),) = parse_grid(args.eps)
    except (ValueError, ZeroDivisionError):
        p.error(f"--eps: expected one radius in (0, 1], e.g. 8/255; got {args.eps!r}")
    trials = _trials(Path(args.study_dir), args.config)
    if not trials:
        print(f"error: no confirmation trial of {args.config} in {args.study_dir}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    rows, splits = [], None
    for folder, params in trials:
        cfg = make_trial_config({k: v for k, v in params.items() if k in TRIAL_FIELDS})
        splits = splits or load_trial_splits(cfg, download=False)
        model = build_trial_model(cfg, splits)
        last = sorted(folder.glob("checkpoint_*"))[-1]
        model.load_state_dict(load_state(str(last))["model"])
        model.eval()
        order = test_order(len(splits.test_x), cfg.eval_subset)[0][: args.images]
        x, y = splits.test_x[order], splits.test_y[order]
        row = {"config_id": params["config_id"], "replicate": params["replicate"],
               "seed": cfg.seed, "epsilon": args.eps, "images": len(x)}  # fmt: skip
        outcomes = {}
        for name in ("pgd20", "autoattack"):
            start = time.perf_counter()
            outcomes[name] = robust_outcomes(model, x, y, make_attack(name, eps, seed=cfg.seed))
            row[f"{name}_acc"] = outcomes[name].float().mean().item()
            row[f"{name}_seconds"] = round(time.perf_counter() - start, 1)
        row["broken_by_autoattack_only"] = int((outcomes["pgd20"] & ~outcomes["autoattack"]).sum())
        # clean accuracy on the whole test split, beside the trial's own: the same figure says
        # the model is the one the trial evaluated
        row["clean_acc"] = accuracy(model, splits.test_x, splits.test_y)
        last_result = (folder / "result.json").read_text().strip().splitlines()[-1]
        row["trial_clean_acc"] = json.loads(last_result)["test_clean_acc"]
        rows.append(row)
        print(row, flush=True)
    pd.DataFrame(rows).to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
