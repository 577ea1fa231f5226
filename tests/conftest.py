"""Shared fixtures: a small local Ray instance and the repository's shared data folder."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CIFAR10_TARBALL = SHARED_DATA / "cifar10-jpeg.tar.gz"

# Tests only: no token auth and no usage reporting for the throwaway local clusters they start.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_local():
    """One small local Ray instance shared by the whole session (starting one costs ~5 s)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=True,  # Ray Train's state queries need it (localhost only)
            object_store_memory=200 * 1024**2,
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits with the project's fixed split."""
    from trainables.data import load_splits

    return load_splits("digits")


@pytest.fixture(scope="session")
def digits_model(digits):
    """small_cnn trained 4 epochs with Adam on the 8x8 digits (about 97% test accuracy), in eval().

    Shared by the attack, attribution and objective tests; none of them trains it further."""
    import torch
    import torch.nn.functional as F

    from trainables.models import build_model

    torch.manual_seed(0)
    model = build_model(
        "small_cnn", in_channels=1, num_classes=10, image_size=8, mean=digits.mean, std=digits.std
    )
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(4):
        for idx in torch.randperm(len(digits.train_x)).split(64):
            loss = F.cross_entropy(model(digits.train_x[idx]), digits.train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def archive_jpegs(archive: Path, n: int, folder: str = "") -> np.ndarray:
    """The first n JPEGs under `folder` in an archive's order (the shared CIFAR-10 copy lists
    each class folder sorted by name, as the loader orders it), uint8 (n, H, W, 3): a few real
    images without decoding all 60,000."""
    from PIL import Image

    out = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.name.startswith(folder) and member.name.endswith(".jpg"):
                with Image.open(io.BytesIO(tar.extractfile(member).read())) as im:
                    out.append(np.asarray(im.convert("RGB")))
                if len(out) == n:
                    break
    return np.stack(out)


@pytest.fixture(scope="session")
def cifar10_tarball() -> Path:
    if not CIFAR10_TARBALL.exists():
        pytest.skip(f"shared CIFAR-10 copy not found at {CIFAR10_TARBALL}")
    return CIFAR10_TARBALL


# A real study in under a minute: the digits preset, shrunk (tests/test_study.py checks it).
TINY_TRIAL = {
    "rounds": 2,
    "epochs_per_round": 1,
    "train_subset": 300,
    "eval_subset": 100,
    "pool_size": 8,
    "lime_samples": 50,
    "eval_steps": 5,
    "ig_steps": 4,
    "final_eval_subset": 16,  # AutoAttack's images: three quarters of a confirmation trial
    "cpus_per_worker": 0.5,  # four trials at once on 2 CPUs: MO-ASHA's tests need rung peers
}


TINY_STUDY = {
    "name": "tiny",
    "num_samples": 2,
    "replicates": 2,
    # PGD-AT at the trial's eps, and PGD-AT searched over eps (one configuration: the
    # machinery of a searched baseline, its own experiment, front and confirmation)
    "baselines": [
        "pgd_at",
        {
            "method": "pgd_at",
            "search": {"epsilon": {"type": "uniform", "low": 0.05, "high": 0.2}},
            "num_samples": 1,
        },
    ],  # fmt: skip
    "confirm_seeds": 2,
    "max_concurrent_trials": 2,  # on the suite's 2 CPUs more trial processes only add imports
    "trial": TINY_TRIAL,
}


@pytest.fixture(scope="session")
def tiny_study(ray_local, tmp_path_factory) -> str:
    """A real study (Ray Tune + OptunaSearch, in-process trials) through every stage: 2
    configurations x 2 replicates, PGD-AT x 2 replicates, PGD-AT searched over eps (1
    configuration x 2 replicates), then the fronts and PGD-AT confirmed at 2 seeds.

    Run as a user runs it, `python -m study.sweep --config FILE`, joined to the session's Ray
    instance, with its storage given as a URI (file://), so it takes the path of a remote
    (s3://) study: every file must land in the study directory itself, none in the working
    directory's results/ but the driver's log while it runs. What it printed on the console is
    kept in console.txt beside the study; the local path of the study directory is returned."""
    storage = tmp_path_factory.mktemp("real-studies")
    workdir = tmp_path_factory.mktemp("driver-cwd")
    config = storage / "tiny.yaml"
    config.write_text(json.dumps({**TINY_STUDY, "storage": f"file://{storage}"}))  # JSON is YAML
    address = ray_local.get_runtime_context().gcs_address
    run = subprocess.run(
        [sys.executable, "-m", "study.sweep", "--config", str(config), "--address", address],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=1800,  # about 1 min on a 2-core machine; a hang still ends
    )
    study_dir = storage / TINY_STUDY["name"]
    assert run.returncode == 0, run.stdout + run.stderr + _tail(study_dir / "study.log")
    (study_dir / "console.txt").write_text(run.stdout + run.stderr)
    local = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file())
    assert local == ["results/tiny/study.log"], local
    return str(study_dir)


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""


def run_notebook(path: Path, study_dir: str | os.PathLike):
    """Execute a notebook headlessly on a study ($STUDY_DIR) and return it with its outputs;
    raises CellExecutionError on any error."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if k not in ("BASELINE_DIRS", "STUDY_STORAGE")}
    resources = {"metadata": {"path": str(path.parent)}}
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources=resources)
    client.execute(env={**env, "STUDY_DIR": str(study_dir)})  # the kernel's environment
    return nb


def notebook_text(nb) -> str:
    """Everything the notebook's code cells printed or displayed as text or HTML."""
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            parts.append(o.get("text", ""))
            data = o.get("data", {})
            parts.append(data.get("text/plain", "") + data.get("text/html", ""))
    return "\n".join(parts)
