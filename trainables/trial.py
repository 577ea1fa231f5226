"""The Ray Tune trainable: a plain function that runs one Ray Train TorchTrainer.

Ray 2.60 (Train V2) no longer accepts a TorchTrainer as a Tune trainable; the supported pattern
is a function trainable that builds the trainer, calls fit(), and forwards rank 0's reports to
Tune with TuneReportCallback.
"""

import json
import uuid
from typing import Any

import ray.tune
import torch
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from trainables.config import TrialConfig, make_trial_config
from trainables.worker import load_state, train_loop_per_worker


class TrialError(RuntimeError):
    """A trial that cannot finish (it diverged or ran out of memory); Tune records it as ERROR."""


class _ReportToTune(TuneReportCallback):
    """Forwards each round's metrics to Tune, but not a trial_error report: Tune rejects a result
    without the study's objectives; run_trial raises the error instead."""

    def after_report(self, run_context, metrics, checkpoint):
        if "trial_error" not in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


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
    """Config in, metrics out (through Tune); resumes its Train run's checkpoints on restart.

    train_storage: where Train runs keep checkpoints (a local path or URI every node sees);
    bind it with `tune.with_parameters`.
    """
    # A stable name derived from the trial id, so a restarted trial finds its checkpoints.
    name = ray.tune.get_context().get_trial_id()
    trainer = _trainer(config, name, train_storage, callbacks=[_ReportToTune()])
    error = (trainer.fit().metrics or {}).get("trial_error")
    if error:
        raise TrialError(error)


def run_base(config: TrialConfig, train_storage: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Train a study's base model (trainables/base.py) as a Ray Train run from the driver:
    the same worker and refine() as a trial, with the base's one-round config. Returns the
    model's state_dict and its validation metrics, read back from the run's checksummed
    checkpoint. The run has a fresh name each time: the base keeps one checkpoint, at its end,
    so an interrupted base has nothing to resume from and starts over.
    """
    name = f"base-{config.seed}-{uuid.uuid4().hex[:8]}"
    result = _trainer(vars(config), name, train_storage, callbacks=[]).fit()
    error = (result.metrics or {}).get("trial_error")
    if error:
        raise TrialError(f"base model: {error}")
    if result.checkpoint is None:
        raise TrialError("base model: its Train run left no checkpoint")
    with result.checkpoint.as_directory() as d:
        state = load_state(d)
    return state["model"], json.loads(state["metrics"])
