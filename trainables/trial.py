"""The Ray Tune trainable: a plain function, config in, metrics out, in one of two modes.

- `num_workers: 0` (Ray Train's convention for local mode): the refinement loop runs in the Tune
  trial's own process, which holds the trial's CPUs and GPU (`trial_resources`). Each round goes
  to Tune with its checkpoint; Tune's FailureConfig retries a trial whose process died, from its
  last round. A trial then costs one process beside its compute.
- `num_workers >= 1`: the trial runs a Ray Train TorchTrainer (data parallel over the workers,
  NCCL on GPUs). Ray 2.60 (Train V2) no longer accepts a TorchTrainer as a Tune trainable; the
  supported pattern is a function trainable that builds the trainer, calls fit(), and forwards
  rank 0's reports to Tune with TuneReportCallback. Train's controller and workers are extra
  processes per trial: they pay off when a trial spans devices or nodes.

Ray Train's own local mode cannot serve a trial: in Ray 2.60 it keeps only the last report and
persists no checkpoint, so the in-process mode reports to Tune directly.
"""

import json
import os
import tempfile
import uuid
from typing import Any

import ray.tune
import torch
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from trainables.config import TrialConfig, make_trial_config
from trainables.refine import uses_lime
from trainables.worker import (
    lime_actor_gpus,
    load_state,
    run_refinement,
    save_state,
    train_loop_per_worker,
)

# Where an in-process trial records the reason it cannot finish, in its Tune trial directory: a
# retry (Tune retries every error) then ends at once with the same reason instead of recomputing
# the round that diverged or ran out of memory.
FATAL_FILE = "trial_error.txt"


class TrialError(RuntimeError):
    """A trial that cannot finish (it diverged or ran out of memory); Tune records it as ERROR."""


class _ReportToTune(TuneReportCallback):
    """Forwards each round's metrics to Tune, but not a trial_error report: Tune rejects a result
    without the study's objectives; run_trial raises the error instead."""

    def after_report(self, run_context, metrics, checkpoint):
        if "trial_error" not in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


def trial_resources(cfg: TrialConfig) -> list[dict[str, float]]:
    """The placement group bundles one trial holds. In-process: the trial's own process, then
    one bundle per LIME actor, so the actors can never wait on a full cluster. With Train
    workers: none beyond a little memory (Tune refuses an empty request), as the trial function
    only waits on its Train run, whose workers and actors hold the CPUs and GPUs."""
    if cfg.num_workers >= 1:
        return [{"CPU": 0, "memory": 64 * 1024**2}]
    bundles = [{"CPU": cfg.cpus_per_worker, "GPU": cfg.gpus_per_worker}]
    if uses_lime(cfg) and cfg.lime_actors > 0:
        actor = {"CPU": cfg.cpus_per_lime_actor, "GPU": lime_actor_gpus(cfg)}
        bundles += [actor] * cfg.lime_actors
    return [{k: v for k, v in b.items() if v > 0} or {"CPU": 0} for b in bundles]


def _trainer(config: dict[str, Any], name: str, storage: str, callbacks: list) -> TorchTrainer:
    cfg = make_trial_config(config)
    use_gpu = cfg.gpus_per_worker > 0
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, "GPU": cfg.gpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            # Dead workers and nodes are retried from the last checkpoint; a diverged or
            # out-of-memory trial is not (train_loop_per_worker reports it as trial_error).
            failure_config=FailureConfig(max_failures=2),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
            # Train's INFO records (a TrainingReport(...) dump per report) are noise beside the
            # study's own console; warnings and errors still reach the study's log.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


def run_trial(config: dict[str, Any], train_storage: str) -> None:
    """Config in, metrics out (through Tune); a restarted trial resumes from its checkpoints.

    train_storage: where Train runs keep checkpoints (a local path or URI every node sees);
    bind it with `tune.with_parameters`. In-process trials keep theirs in Tune's storage.
    """
    if config["num_workers"] == 0:
        _run_in_process(make_trial_config(config))
        return
    # A stable name derived from the trial id, so a restarted trial finds its checkpoints.
    name = ray.tune.get_context().get_trial_id()
    trainer = _trainer(config, name, train_storage, callbacks=[_ReportToTune()])
    error = (trainer.fit().metrics or {}).get("trial_error")
    if error:
        raise TrialError(error)


def _run_in_process(cfg: TrialConfig) -> None:
    """The refinement loop in this (the Tune trial's) process, reporting to Tune directly."""
    fatal_file = os.path.join(ray.tune.get_context().get_trial_dir(), FATAL_FILE)
    if os.path.exists(fatal_file):
        with open(fatal_file, encoding="utf-8") as f:
            raise TrialError(f.read())
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    if cfg.gpus_per_worker > 0 and not torch.cuda.is_available():
        raise TrialError("gpus_per_worker > 0, but this trial's process sees no CUDA device")
    device = torch.device("cuda" if cfg.gpus_per_worker > 0 else "cpu")

    def publish(metrics, state):
        if state is None:
            ray.tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            save_state(state, d)
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(d))

    reason = run_refinement(cfg, ray.tune.get_checkpoint(), publish, device)
    if reason is not None:
        with open(fatal_file, "w", encoding="utf-8") as f:
            f.write(reason)
        raise TrialError(reason)


def run_base(config: TrialConfig, train_storage: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Train a study's base model (trainables/base.py) as a Ray Train run from the driver:
    the same worker and refine() as a trial, with the base's one-round config. Returns the
    model's state_dict and its validation metrics, read back from the run's checksummed
    checkpoint (onto the CPU: the driver may have no GPU). The run has a fresh name each time:
    the base keeps one checkpoint, at its end, so an interrupted base has nothing to resume from
    and starts over.
    """
    name = f"base-{config.seed}-{uuid.uuid4().hex[:8]}"
    # Always a Train worker group: the base trains from the driver, which holds no resources.
    workers = max(1, config.num_workers)
    result = _trainer({**vars(config), "num_workers": workers}, name, train_storage, []).fit()
    error = (result.metrics or {}).get("trial_error")
    if error:
        raise TrialError(f"base model: {error}")
    if result.checkpoint is None:
        raise TrialError("base model: its Train run left no checkpoint")
    with result.checkpoint.as_directory() as d:
        state = load_state(d)
    return state["model"], json.loads(state["metrics"])
