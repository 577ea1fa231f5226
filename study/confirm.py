"""Confirmation: re-train the front and the baselines with fresh seeds and test them once.

`python -m study.confirm STUDY_DIR [--confirm-seeds M]` runs, resumes or re-runs the
confirmation of a study whose search has finished; `python -m study.sweep` calls the same code
after its search. Every configuration on the front (by validation means; for an ablation, every
variant) and every baseline is trained with M seeds the search never used, as Tune trials in
study_dir/confirmation (stage "confirmation": the only trials that read the test split), then
evaluated on the test split. The tables: confirmation.csv (one row per trial), confirmed.csv
(mean and 95% interval per configuration), selection_bias.csv (validation mean beside test mean
for the front), for an ablation ablation.csv (each variant against the full setting, paired by
seed) and answer.csv (each confirmed configuration against PGD-AT, paired by seed).
"""

import argparse
import sys
from typing import Any

import yaml

from study.config import ConfigError, build_study_config
from study.console import exit_code_of_reported, print_error
from study.outputs import check_matched_clean, confirmed_ids, summarize, write_study_file
from study.stages import StageInterrupted, confirm_study
from study.store import LOG_FILE, STUDY_FILE, StudyStore
from trainables.config import TRIAL_FIELDS


def _key_values(items: list[str], flag: str = "--eval") -> dict[str, Any]:
    """['final_eval_subset=200', 'eval_grid=1/255,8/255'] -> {key: value}: a text key keeps
    its text (eval_grid=0.1 is the grid '0.1'), any other is read as YAML (200 -> int)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag}: expected KEY=VALUE, got {item!r}")
        if key in TRIAL_FIELDS and TRIAL_FIELDS[key].type is str:
            out[key] = value
            continue
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"{flag} {key}: not a value ({value!r})") from e
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m study.confirm",
        description="Confirm a finished study's front (an ablation's variants) and baselines on "
        "the test split with fresh seeds (runs, resumes or re-runs the confirmation).",
    )
    p.add_argument("study_dir", metavar="STUDY_DIR", help="the study directory (local path)")
    p.add_argument("--confirm-seeds", type=int, metavar="M", help="default: the study's setting")
    p.add_argument(
        "--eval",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set the test evaluation (a key of confirm_eval, e.g. final_eval_subset=200); "
        "kept in study.json, so a resumed confirmation uses it too",
    )
    p.add_argument(
        "--primary-eval",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set the primary pair's test evaluation on top of --eval (a key of primary_eval, "
        "e.g. final_eval_subset=500); kept in study.json too",
    )
    p.add_argument("--address", metavar="ADDR", help="Ray cluster to join (see study.sweep)")
    p.add_argument(
        "--verbose", action="store_true", help=f"Ray's own output too (default: {LOG_FILE})"
    )
    args = p.parse_args(argv)
    try:
        store = StudyStore(args.study_dir)
        values = store.read_json(STUDY_FILE)
        if values is None:
            raise ConfigError(f"{args.study_dir}: not a study directory (no {STUDY_FILE})")
        if args.confirm_seeds is not None:
            values["confirm_seeds"] = args.confirm_seeds
        for flag, key, items in (
            ("--eval", "confirm_eval", args.eval),
            ("--primary-eval", "primary_eval", args.primary_eval),
        ):
            if items:
                values[key] = {**values.get(key, {}), **_key_values(items, flag)}
        cfg = build_study_config(values)
        if args.eval or args.primary_eval:
            write_study_file(cfg)
        if cfg.confirm_seeds == 0:
            print("--confirm-seeds 0: nothing to confirm")
            return 0
        summarize(cfg)
        config_ids = confirmed_ids(cfg)
        check_matched_clean(cfg)
    except ConfigError as e:
        print_error(str(e))
        return 2
    try:
        confirm_study(cfg, config_ids, address=args.address, verbose=args.verbose)
    except ConfigError as e:
        print_error(str(e))
        return 2
    except StageInterrupted as e:
        print_error(f"interrupted: {e}; the same command goes on from there")
        return 130
    except BaseException as e:
        return exit_code_of_reported(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
