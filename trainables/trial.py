"""The Ray Tune trainable: a plain function that runs one Ray Train TorchTrainer.

Ray 2.60 (Train V2) no longer accepts a TorchTrainer as a Tune trainable; the supported pattern
is a function trainable that builds the trainer, calls fit(), and forwards rank 0's reports to
Tune with TuneReportCallback.
"""

from typing import Any

import ray.tune
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from trainables.config import make_trial_config
from trainables.refine import train_loop_per_worker


def run_trial(config: dict[str, Any], train_storage: str) -> None:
    """Config in, metrics out (through Tune); resumes its Train run's checkpoints on restart.

    train_storage: where Train runs keep checkpoints (a local path or URI every node sees);
    bind it with `tune.with_parameters`.
    """
    cfg = make_trial_config(config)
    context = ray.tune.get_context()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.gpus_per_worker > 0,
            resources_per_worker={"CPU": cfg.cpus_per_worker, "GPU": cfg.gpus_per_worker},
        ),
        run_config=RunConfig(
            # A stable name derived from the trial id, so a restarted trial finds its checkpoints.
            name=context.get_trial_id(),
            storage_path=train_storage,
            failure_config=FailureConfig(max_failures=2),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()
