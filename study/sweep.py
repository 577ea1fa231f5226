"""The study's command line: `python -m study.sweep --help`.

Reads the preset, the YAML and the flags into one validated StudyConfig, runs the pre-flight
checks (study/preflight.py: bad input exits with one line, before Ray starts and before any
study directory exists), then runs the study's stages (study/stages.py): the search with
Optuna's multi-objective sampler over the refinement loop's trials (or an ablation's variants),
the baselines, the tables (study/outputs.py), and the confirmation on the test split.
"""

import argparse
import os
import sys
from typing import Any

from study.presets import PRESETS
from study.store import LOG_FILE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m study.sweep",
        description="LIME-guided robust refinement: a multi-objective Ray Tune + Optuna study.",
    )
    p.add_argument("--config", metavar="FILE.yaml", help="study YAML (keys: see README)")
    p.add_argument("--preset", choices=list(PRESETS), help="base settings (default: digits)")
    p.add_argument(
        "--dataset",
        help="override the dataset: digits (embedded), imagefolder (your own, in --data-dir), "
        "or torchvision's cifar10, cifar100, mnist, fashion_mnist, svhn, gtsrb, flowers102, "
        "stl10 (docs/data-and-models.md)",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="imagefolder: a folder with train/<class>/* (and test/<class>/*), its .tar.gz or "
        ".zip, or a CSV of path,label; a torchvision data set: torchvision's folder (CIFAR: "
        "also an ImageFolder tree or its .tar.gz; default: download into the cache)",
    )
    p.add_argument(
        "--num-samples",
        type=int,
        metavar="N",
        help="number of configurations the searcher proposes",
    )
    p.add_argument(
        "--replicates",
        type=int,
        metavar="K",
        help="seeds per configuration (and per baseline); the searcher sees their mean (default 2)",
    )
    p.add_argument(
        "--confirm-seeds",
        type=int,
        metavar="M",
        help="fresh seeds with which the front and the baselines are re-trained and evaluated on "
        "the test split after the search (default 3; 0 skips the confirmation)",
    )
    p.add_argument(
        "--storage",
        metavar="PATH",
        help="where study directories go: a local path or s3://... (default: ./results)",
    )
    p.add_argument("--name", help="study name, the folder under --storage (default: PRESET-study)")
    p.add_argument(
        "--resume", action="store_true", help="continue the study --name after an interruption"
    )
    p.add_argument(
        "--address",
        metavar="ADDR",
        help="Ray cluster to join, or 'local' for a new local instance (default: RAY_ADDRESS "
        "or a running local `ray start`, else a new local instance)",
    )
    p.add_argument(
        "--searcher", choices=["optuna", "random"], help="Optuna's sampler (default: optuna)"
    )
    p.add_argument(
        "--max-concurrent-trials",
        type=int,
        metavar="N",
        help="default: as many as the cluster's CPUs and GPUs fit",
    )
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        metavar="G",
        help="GPUs one trial holds, split evenly between its Train workers and their LIME "
        "actors; a fraction (0.25) packs several trials onto one GPU (default: 0, CPU only)",
    )
    p.add_argument(
        "--scheduler",
        choices=["fifo", "mo-asha"],
        help="stop dominated configurations early (multi-objective successive halving over the "
        "rounds; settings in YAML `scheduler:`); default: fifo (no early stopping)",
    )
    p.add_argument("--seed", type=int, help="seed of the search and of every trial")
    p.add_argument(
        "--verbose",
        action="store_true",
        help=f"print Ray's, Tune's and PyTorch's own output too (default: into {LOG_FILE} in "
        "the study directory, with the study's own lines on the console)",
    )
    p.add_argument(
        "--check-cluster",
        metavar="CLUSTER.yaml",
        help="only validate a `ray up` cluster config offline, as Ray does before it "
        "contacts the cloud, and exit",
    )
    return p.parse_args(argv)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line values in the shape of the YAML file (None = not given)."""
    out: dict[str, Any] = {}
    for key in ("preset", "name", "storage", "searcher", "seed"):
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    if args.num_samples is not None:
        out["num_samples"] = args.num_samples
    if args.max_concurrent_trials is not None:
        out["max_concurrent_trials"] = args.max_concurrent_trials
    if args.replicates is not None:
        out["replicates"] = args.replicates
    if args.confirm_seeds is not None:
        out["confirm_seeds"] = args.confirm_seeds
    if args.scheduler is not None:
        out["scheduler"] = {"type": args.scheduler}
    trial: dict[str, Any] = {}
    if args.dataset is not None:
        trial["dataset"] = args.dataset
    if args.data_dir is not None:
        trial["data_dir"] = args.data_dir
    if args.seed is not None:
        trial["seed"] = args.seed
    if trial:
        out["trial"] = trial
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # --help and a malformed flag answer before torch and Ray load
    from study.config import ConfigError, load_config
    from study.console import exit_code_of_reported, print_error
    from study.outputs import check_matched_clean
    from study.preflight import (
        check_address,
        check_cluster_file,
        check_data,
        check_model,
        check_paths,
        with_gpus_per_trial,
    )
    from study.stages import StageInterrupted, run_study
    from study.status import resume_command
    from trainables.data import DataError

    try:
        if args.check_cluster:
            check_cluster_file(args.check_cluster)
            print(f"{args.check_cluster}: valid")
            return 0
        cfg = with_gpus_per_trial(
            load_config(args.config, overrides_from_args(args)), args.gpus_per_trial
        )
        if args.resume:
            cfg = _resumed_config(cfg)
            check_matched_clean(cfg)  # the fronts are known once the search has finished
        check_paths(cfg, args.resume)
        check_model(cfg, check_data(cfg))
        check_address(args.address or os.environ.get("RAY_ADDRESS"))
        run_study(cfg, resume=args.resume, address=args.address, verbose=args.verbose)
    except (ConfigError, DataError) as e:
        print_error(str(e))
        return 2
    except StageInterrupted as e:
        resume = resume_command(cfg.study_dir, {"name": cfg.name, "storage": cfg.storage})
        print_error(f"interrupted: {e}; every finished trial is saved. Resume with: {resume}")
        return 130  # 128 + SIGINT, as a shell reports a process Ctrl-C stopped
    except BaseException as e:
        return exit_code_of_reported(e)
    return 0


def _resumed_config(cfg):
    """The study's own settings (study.json) when it has any: a resume runs what was started."""
    from study.config import build_study_config
    from study.store import STUDY_FILE, StudyStore

    values = StudyStore(cfg.study_dir).read_json(STUDY_FILE)
    return cfg if values is None else build_study_config(values)


if __name__ == "__main__":
    sys.exit(main())
