"""Pre-flight checks: everything a study can be told is wrong before Ray starts or any trial
runs, each as one ConfigError line, and the resources one trial holds.

Bad input costs one clear line and creates nothing: the command lines (study/sweep.py,
study/confirm.py) call these before they start anything.
"""

import dataclasses
import logging
import math
import os
import socket
from pathlib import Path

import jsonschema

from study.config import ConfigError, StudyConfig, read_yaml
from study.ray_internals import prepared_cluster_config
from study.store import LOG_FILE, STUDY_FILE, StudyStore, is_remote
from trainables.base import (
    BaseModelError,
    base_checkpoint,
    base_trial_config,
    fit_base_weights,
    load_base_weights,
)
from trainables.config import check_test_size, make_trial_config
from trainables.data import DataError, Splits
from trainables.models import ARCHITECTURES, ModelError, model_factory
from trainables.refine import build_trial_model, load_trial_splits, uses_lime


def with_gpus_per_trial(cfg: StudyConfig, gpus: float | None) -> StudyConfig:
    """Spread a trial's GPU share over its Train workers and, for lime_refine, their LIME
    actors (one share each), so the trial holds exactly `gpus` GPUs in all."""
    if gpus is None:
        return cfg
    t = cfg.trial
    holders = max(1, t.num_workers) * (2 if t.method == "lime_refine" and t.lime_actors else 1)
    each = gpus / holders
    if not 0 < gpus <= 1024 or (each > 1 and not each.is_integer()):
        raise ConfigError(
            f"--gpus-per-trial: must be positive and give each of the trial's {holders} GPU "
            f"users (Train workers and LIME actors) a fraction <= 1 or a whole number, got {gpus}"
        )
    trial = make_trial_config({**vars(t), "gpus_per_worker": each})
    return dataclasses.replace(cfg, trial=trial)


def check_paths(cfg: StudyConfig, resume: bool) -> None:
    """Fail early on a missing data directory, or a study that exists (or not) unexpectedly."""
    data_dir = cfg.trial.data_dir
    if data_dir is not None and not is_remote(data_dir) and not os.path.exists(data_dir):
        raise ConfigError(f"--data-dir: {data_dir} does not exist")
    if is_remote(cfg.study_dir):
        return  # checked by pyarrow when Tune opens it
    parent = Path(cfg.storage)
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ConfigError(f"--storage: {cfg.storage} cannot be created ({parent} is not a "
                          "writable directory)")  # fmt: skip
    store = StudyStore(cfg.study_dir)
    exists = store.exists(STUDY_FILE)
    if resume and not exists:
        raise ConfigError(f"--resume: no study named {cfg.name!r} under {cfg.storage}")
    if not resume and set(store.listdir()) - {LOG_FILE}:
        raise ConfigError(
            f"--name: study {cfg.name!r} already exists in {cfg.storage}; "
            "pass --resume to continue it or choose another --name"
        )


def check_cluster_file(path: str) -> None:
    """Ray's own preparation and schema validation of a cluster config, with no cloud calls."""
    config = read_yaml(path)
    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)  # one line of output, not logs
    try:
        prepared_cluster_config(config)
    except jsonschema.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "top level"
        raise ConfigError(f"{path}: {where}: {e.message}") from e
    except (ValueError, KeyError, RuntimeError) as e:
        raise ConfigError(f"{path}: {e}") from e


def check_data(cfg: StudyConfig) -> Splits | None:
    """Read a local --data-dir once before anything starts (truncated archives, unreadable
    images, failed checksums, classes that differ between train and test, test subsets larger
    than the test split); the workers read it again from the cache this leaves. Returns the
    data (test split sealed), or None when it is not on this machine."""
    t = cfg.trial
    if t.data_dir is None or is_remote(t.data_dir):
        return None
    try:
        splits = load_trial_splits(t, download=False)
    except DataError as e:
        raise ConfigError(f"--data-dir: {e}") from e
    evaluations = {
        "trial": {},
        "confirm_eval": cfg.confirm_eval,
        "primary_eval": {**cfg.confirm_eval, **cfg.primary_eval},
    }
    for where, values in evaluations.items():
        try:
            check_test_size(dataclasses.replace(t, **values), splits.test_size)
        except ConfigError as e:
            if where == "trial":
                raise
            raise ConfigError(f"{where}: {e}") from e
    if t.translate is not None and t.translate >= splits.image_size:
        raise ConfigError(
            f"trial.translate: {t.translate} pixels, not less than the images' side "
            f"({splits.image_size})"
        )
    return splits


def check_model(cfg: StudyConfig, splits: Splits | None) -> None:
    """A user's model (`package.module:factory`, `torchvision:NAME`) imports and takes the
    factory's keywords; built on the data (`splits`, or digits, always at hand) it gives
    logits of the right shape on one batch; the base checkpoint, if any, fits it. Each as one
    ConfigError line, before any trial starts. Without the data here (a remote data_dir, a
    torchvision data set still to download) the trials find what only the data can show."""
    t = cfg.trial
    checkpoint, where = base_checkpoint(cfg.base), "base.checkpoint"
    if checkpoint is None:
        checkpoint, where = t.base_checkpoint, "trial.base_checkpoint"
    if t.model in ARCHITECTURES and checkpoint is None:
        return
    try:
        model_factory(t.model)
        if splits is None and t.dataset == "digits":
            splits = load_trial_splits(t, download=False)
        if splits is None:
            return
        model = build_trial_model(t, splits)
    except ModelError as e:
        raise ConfigError(f"trial.model: {e}") from e
    if checkpoint is not None:
        try:
            fit_base_weights(model, load_base_weights(checkpoint), checkpoint)
        except BaseModelError as e:
            raise ConfigError(f"{where}: {e}") from e


def check_address(address: str | None) -> None:
    """Fail in seconds, not minutes, on a cluster address nobody answers at."""
    if not address or address in ("local", "auto"):
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"--address: expected HOST:PORT, ray://HOST:PORT or local, got {address!r}"
        )
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ConfigError(
            f"--address: nothing answers at {address} ({e.strerror or e}); "
            "is the cluster up (`ray status`)?"
        ) from e


def trial_total(cfg: StudyConfig) -> dict[str, float]:
    """What one trial holds in all, summed: its process or Train workers, and their LIME
    actors (trainables.trial.trial_resources lists an in-process trial's bundles)."""
    t = cfg.trial
    lime = uses_lime(t) and t.lime_actors > 0
    processes = max(1, t.num_workers)  # in-process (num_workers 0): the trial's own process
    return {
        "CPU": processes
        * (t.cpus_per_worker + (t.lime_actors * t.cpus_per_lime_actor if lime else 0)),
        "GPU": processes * t.gpus_per_worker * (2 if lime else 1),
    }


def default_concurrency(cfg: StudyConfig, cluster: dict[str, float]) -> int:
    """As many trials at once as the cluster's CPUs and GPUs fit (at least one)."""
    need = trial_total(cfg)
    fits = [math.floor(cluster.get(k, 0) / v + 1e-9) for k, v in need.items() if v > 0]
    return max(1, min(fits, default=1))


def resource_shortfall(cfg: StudyConfig, cluster: dict[str, float]) -> str | None:
    """A console warning when the cluster cannot hold even one trial now (e.g. a GPU share on a
    cluster without GPUs): Tune then waits, and its own warnings go to the log file. Not an
    error: an autoscaling cluster adds the nodes when the trials ask for them."""
    needs = {"a trial": trial_total(cfg)}
    # a base to train trains with the base section's resources
    if cfg.base is not None and base_checkpoint(cfg.base) is None:
        base = base_trial_config(cfg.trial, cfg.base, cfg.trial.seed)
        needs["the base"] = trial_total(dataclasses.replace(cfg, trial=base))
    for who, resources in needs.items():
        short = [
            f"{v:g} {k} (the cluster has {cluster.get(k, 0):g})"
            for k, v in resources.items()
            if v > cluster.get(k, 0) + 1e-9
        ]
        if short:
            return (
                f"warning: {who} needs {', '.join(short)}; it waits until the cluster has it "
                "(an autoscaling cluster adds nodes; otherwise stop with Ctrl-C and lower the "
                "request)"
            )
    return None
