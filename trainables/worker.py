"""The Ray Train side of a trial: what runs inside the Train worker, and the checkpoint files.

`run_refinement` runs `refine` (trainables/refine.py), resumed from a checkpoint, with the
explanation pool on Ray actors when asked; `train_loop_per_worker` runs it in a Ray Train worker.
Each round's checkpoint is state.pt and its SHA-256, read back with weights_only=True (onto the
CPU, wherever it was saved) and, when the newest is unreadable, from the one before it.
"""

import hashlib
import io
import json
import os
import pickle
import posixpath
import tempfile
from collections.abc import Callable
from typing import Any

import pyarrow.fs
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint

from trainables.config import make_trial_config
from trainables.explain import ExplainerPool
from trainables.refine import load_trial_splits, model_spec, refine, uses_lime

CHECKPOINT_FILE = "state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or fails its checksum."""


def fatal_reason(error: BaseException) -> str | None:
    """Why a trial cannot finish, in one line, for errors a retry from the last checkpoint would
    only repeat (divergence, out of memory); None for any other error."""
    text = (str(error) or type(error).__name__).splitlines()[0]
    if isinstance(error, FloatingPointError):
        return f"diverged: {text}"
    cpu_oom = isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    if isinstance(error, torch.OutOfMemoryError | MemoryError) or cpu_oom:
        return (
            f"out of memory ({text}); lower batch_size, pool_size or lime_samples, "
            "or give the trial more memory"
        )
    return None


def save_state(state: dict[str, Any], directory: str) -> None:
    """state.pt and its SHA-256, so a truncated or corrupted copy is caught on load."""
    path = os.path.join(directory, CHECKPOINT_FILE)
    torch.save(state, path)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open(path + ".sha256", "w") as f:
        f.write(digest)


def load_state(directory: str) -> dict[str, Any]:
    """Load a checkpoint with weights_only=True: tensors and plain data, never arbitrary code."""
    path = os.path.join(directory, CHECKPOINT_FILE)
    try:
        with open(path, "rb") as f:
            data = f.read()
        with open(path + ".sha256") as f:
            expected = f.read().strip()
    except OSError as e:
        raise CheckpointError(f"checkpoint {directory}: cannot read ({e.strerror or e})") from e
    if hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(f"checkpoint {directory}: {CHECKPOINT_FILE} fails its SHA-256 "
                              "(truncated or corrupted)")  # fmt: skip
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        first_line = str(e).splitlines()[0]
        raise CheckpointError(
            f"checkpoint {directory}: cannot be loaded with weights_only=True ({first_line})"
        ) from e


def restore_state(checkpoint) -> dict[str, Any] | None:
    """The newest readable checkpoint's state: the given (latest) one, else the ones before it
    in the same run directory, newest first. None without a checkpoint."""
    if checkpoint is None:
        return None
    fs, parent = checkpoint.filesystem, posixpath.dirname(checkpoint.path)
    older = sorted(
        (
            info.path
            for info in fs.get_file_info(pyarrow.fs.FileSelector(parent))
            if info.type == pyarrow.fs.FileType.Directory
            and info.base_name.startswith("checkpoint_")
            and info.base_name < posixpath.basename(checkpoint.path)
        ),
        reverse=True,
    )
    errors = []
    for candidate in [checkpoint, *(Checkpoint(p, filesystem=fs) for p in older)]:
        try:
            with candidate.as_directory() as d:
                return load_state(d)
        except CheckpointError as e:
            print(f"{e}; falling back to the previous checkpoint", flush=True)
            errors.append(str(e))
    raise CheckpointError("no readable checkpoint: " + " | ".join(errors))


def run_refinement(cfg, checkpoint, publish: Callable, device: torch.device) -> str | None:
    """The refinement loop of one trial, resumed from `checkpoint`, with LIME on a pool of Ray
    actors when `lime_actors` > 0. Each round goes to `publish(metrics, state)` (state: the
    checkpoint to keep, None for none). Returns the one-line reason when the trial cannot finish
    (divergence, out of memory, or such an end already checkpointed), else None. Any other error
    propagates: the caller's retry resumes from the last checkpoint.

    Shared by both trial modes (trainables/trial.py): a Ray Train worker, and the Tune trial's
    own process (`num_workers: 0`), which differ only in `publish` and where the checkpoint lives.
    """
    state = restore_state(checkpoint)
    if state is not None and "trial_error" in state:
        return state["trial_error"]
    if state is not None and state["round"] + 1 >= cfg.rounds:
        # Finished before the study was interrupted: report the same end again.
        publish(json.loads(state["metrics"]), None)
        return None

    splits = load_trial_splits(cfg)
    pool, explain = None, None  # None: refine explains in this process
    if uses_lime(cfg) and cfg.lime_actors > 0:
        pool = ExplainerPool(
            {"name": cfg.model, **model_spec(cfg, splits)},
            cfg.lime_actors,
            backend=cfg.lime_backend,
            num_samples=cfg.lime_samples,
            seed=cfg.seed,
            cpus_per_actor=cfg.cpus_per_lime_actor,
            gpus_per_actor=lime_actor_gpus(cfg),
            # In-process trials reserve the actors' bundles in their own placement group; a
            # Train worker's bundle holds exactly the worker, so its actors go outside it.
            in_caller_placement_group=cfg.num_workers == 0,
        )

        def explain(model, images, labels, segments):
            pool.update_weights({k: v.cpu() for k, v in model.state_dict().items()})
            return pool.explain(images, labels, segments)

    def report(metrics, state):
        publish(metrics, {**state, "metrics": json.dumps(metrics, default=float)})

    try:
        refine(cfg, explain=explain, report=report, state=state, splits=splits, device=device)
    except Exception as e:
        reason = fatal_reason(e)
        if reason is None:
            raise
        return reason
    finally:
        if pool is not None:
            pool.shutdown()
    return None


def lime_actor_gpus(cfg) -> float:
    """Each LIME actor's GPU share: together the actors hold one more worker's share."""
    return cfg.gpus_per_worker / cfg.lime_actors if cfg.gpus_per_worker and cfg.lime_actors else 0.0


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker (`num_workers` >= 1): every rank runs the loop, rank 0 checkpoints."""
    cfg = make_trial_config(config)
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    rank = ray.train.get_context().get_world_rank()

    def publish(metrics, state):
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0 and state is not None:
                save_state(state, d)
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=checkpoint)

    reason = run_refinement(cfg, ray.train.get_checkpoint(), publish, ray.train.torch.get_device())
    if reason is not None:
        # Checkpointed, so Train's result carries it to run_trial, which raises it unretried.
        publish({"trial_error": reason}, {"trial_error": reason})
