"""The two trial modes (trainables/trial.py) on real Ray: what each holds, where its LIME actors
run, and checkpoints written on a GPU node read back on a CPU-only one."""

import pytest
import torch

from tests.test_multinode import TINY_TRIAL
from trainables.config import make_trial_config
from trainables.trial import trial_resources
from trainables.worker import load_state, save_state


def _cfg(**values):
    return make_trial_config({"dataset": "digits", "model": "small_cnn", **TINY_TRIAL, **values})


def test_an_in_process_trial_reserves_its_process_and_its_lime_actors():
    cfg = _cfg(num_workers=0, cpus_per_worker=0.5, lime_actors=2, cpus_per_lime_actor=0.25)
    assert trial_resources(cfg) == [{"CPU": 0.5}, {"CPU": 0.25}, {"CPU": 0.25}]
    gpu = _cfg(num_workers=0, gpus_per_worker=0.5, lime_actors=1)
    assert trial_resources(gpu) == [{"CPU": 1.0, "GPU": 0.5}, {"CPU": 1.0, "GPU": 0.5}]
    # no LIME (a baseline, or LIME in the trial's own process): one bundle
    assert trial_resources(_cfg(num_workers=0, method="pgd_at")) == [{"CPU": 1.0}]
    assert trial_resources(_cfg(num_workers=0, lime_actors=0)) == [{"CPU": 1.0}]
    # a Train worker group holds the resources itself; the trial function waits on it
    assert trial_resources(_cfg(num_workers=1)) == [{"CPU": 0, "memory": 64 * 1024**2}]


def _hog(ray, cpus: float):
    """An actor that holds `cpus` of the local cluster until killed."""

    @ray.remote(num_cpus=cpus)
    class Hog:
        def ready(self):
            return True

    hog = Hog.remote()
    ray.get(hog.ready.remote())
    return hog


def test_lime_actors_on_a_full_cluster_fail_with_a_clear_error(ray_local, digits):
    from trainables.explain import ExplainerPool, ExplainerStartError

    spec = {
        "name": "small_cnn", "in_channels": 1, "num_classes": 10, "image_size": 8,
        "mean": digits.mean, "std": digits.std,
    }  # fmt: skip
    hog = _hog(ray_local, 2)  # every CPU of the session's 2-CPU cluster
    try:
        with pytest.raises(ExplainerStartError, match="did not start within 2 s"):
            ExplainerPool(spec, 1, backend="torch", num_samples=50, start_timeout=2)
    finally:
        ray_local.kill(hog)


def test_an_in_process_trial_runs_its_lime_actors_in_its_own_placement_group(ray_local, tmp_path):
    """The rest of the cluster is held by another actor: the trial's LIME actor can only start
    in the bundle the trial reserved for it."""
    from ray import tune

    from trainables.trial import run_trial

    cfg = _cfg(
        num_workers=0, rounds=1, cpus_per_worker=0.5, lime_actors=1, cpus_per_lime_actor=0.5,
        lime_backend="torch",
    )  # fmt: skip
    hog = _hog(ray_local, 1)  # leaves exactly the trial's 0.5 + 0.5 CPU
    try:
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, train_storage=str(tmp_path / "train")),
            tune.PlacementGroupFactory(trial_resources(cfg)),
        )
        tuner = tune.Tuner(
            trainable,
            param_space=vars(cfg),
            run_config=tune.RunConfig(name="pg", storage_path=str(tmp_path), verbose=0),
        )
        (result,) = tuner.fit()
    finally:
        ray_local.kill(hog)
    assert result.error is None, result.error
    assert result.metrics["round"] == 1 and 0 <= result.metrics["val_clean_acc"] <= 1
    assert result.checkpoint is not None  # the round's checkpoint, in Tune's storage
    with result.checkpoint.as_directory() as d:
        assert load_state(d)["round"] == 0


def test_a_checkpoint_saved_on_a_gpu_loads_on_a_cpu_only_node(tmp_path, monkeypatch):
    """A state saved from cuda:0 tensors (made here without a GPU by tagging its storages
    cuda:0, as torch.save does on a GPU node) loads onto the CPU on every load path."""
    from trainables.base import load_base_weights

    state = {"model": {"w": torch.arange(4.0)}, "round": 0}
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    save_state(state, str(tmp_path))  # a trial's checkpoint
    monkeypatch.undo()
    base = tmp_path / "base.pt"  # a base model file: state.pt's bytes, its own sidecar
    base.write_bytes((tmp_path / "state.pt").read_bytes())
    base.with_suffix(".pt.sha256").write_text((tmp_path / "state.pt.sha256").read_text())
    if not torch.cuda.is_available():  # the file really names a CUDA device
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "state.pt", weights_only=True)
    loaded = load_state(str(tmp_path))
    assert loaded["model"]["w"].device.type == "cpu"
    assert torch.equal(loaded["model"]["w"], torch.arange(4.0))
    assert torch.equal(load_base_weights(str(tmp_path / "base.pt"))["w"], torch.arange(4.0))


def test_the_gpu_preset_keeps_lime_and_ig_norm_within_one_gpu():
    """LIME on the worker's own GPU (no actor holding an idle share), IG-NORM's step in chunks."""
    from study.presets import PRESETS

    trial = PRESETS["cifar10"]["trial"]
    assert trial["lime_actors"] == 0 and trial["lime_backend"] == "torch"
    assert trial["ig_micro_batch"] > 0 and trial["num_workers"] == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where there is no GPU")
def test_the_gpu_smoke_script_says_plainly_that_there_is_no_gpu():
    import subprocess
    import sys

    from tests.conftest import REPO

    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_smoke"], cwd=REPO, capture_output=True, text=True
    )
    assert run.returncode == 2, run.stderr
    lines = (run.stdout + run.stderr).strip().splitlines()
    assert len(lines) == 1 and "GPU" in lines[0], lines
