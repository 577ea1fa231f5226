"""A first run on a GPU: a two-trial `cifar10` study and the figures docs/cluster.md needs.

    python -m benchmarks.gpu_smoke [--data-dir DIR] [--gpus-per-trial 0.5] [--json FILE]

No GPU has run this project yet: run this first on a machine of a new cluster's GPU type (same
AMI and image), before a real study. It runs `python -m study.sweep` itself on a YAML written to
a temporary folder: the cifar10 preset with a 1-epoch base, one configuration x 2 replicates (two
trials, side by side on one GPU at --gpus-per-trial 0.5), 2 rounds of 1 epoch on 5,000 training
images, a 128-image LIME pool, no baselines, no confirmation. Then, in this process once the
study has ended, 20 training steps of the preset's lime_refine loss (PGD and the LIME-weighted
penalty, batch 256) on random images.

Prints each trial's status, wall time and seconds of LIME, training and evaluation (with images
per second), the base's and the study's wall time, the GPU memory in use at its peak during the
study (nvidia-smi each second: both trials, their CUDA contexts and anything else on the GPU),
and the training step's images per second and torch.cuda.max_memory_allocated.
Exits 2 with one line, before Ray starts, where torch sees no CUDA device.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHIVE = "cifar10-jpeg.tar.gz"  # the shared JPEG copy, beside the clone or in it
TRIAL = {  # small: minutes, not hours, on one GPU
    "train_subset": 5000, "rounds": 2, "epochs_per_round": 1, "pool_size": 128,
    "lime_samples": 200, "eval_subset": 500, "blackbox_queries": 100,
}  # fmt: skip


def default_data_dir() -> str | None:
    for folder in ("../shared/data", "shared/data"):
        path = os.path.join(REPO, folder, ARCHIVE)
        if os.path.isfile(path):
            return os.path.normpath(path)
    return None  # torchvision's copy, downloaded into the cache


def gpu_memory_used_mib() -> int:
    """Memory in use on the busiest GPU of this machine (nvidia-smi), 0 without nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return 0
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True, text=True,
    )  # fmt: skip
    used = [int(v) for v in out.stdout.split() if v.isdigit()]  # "[N/A]" on some setups
    return max(used, default=0) if out.returncode == 0 else 0


def run_study(yaml_path: str, storage: str, gpus: float) -> dict:
    """study.sweep as a user runs it; its wall time and the GPU memory peak while it runs."""
    cmd = [sys.executable, "-m", "study.sweep", "--config", yaml_path, "--storage", storage,
           "--gpus-per-trial", str(gpus), "--address", "local"]  # fmt: skip
    start, peak = time.perf_counter(), 0
    proc = subprocess.Popen(cmd, cwd=REPO)
    while proc.poll() is None:
        peak = max(peak, gpu_memory_used_mib())
        time.sleep(1.0)
    return {
        "command": " ".join(["python -m study.sweep", *cmd[3:]]),
        "exit_code": proc.returncode,
        "study_wall_s": round(time.perf_counter() - start, 1),
        "gpu_memory_peak_mib": peak,
    }


def trial_rows(study_dir: str) -> list[dict]:
    """Per trial: status, wall time, and its rounds' own seconds (trainables.refine's metrics)
    with the images per second they give (LIME: model evaluations of perturbed images)."""
    from analysis.results import load_history, load_trials

    trials, history = load_trials(study_dir), load_history(study_dir)
    rows = []
    for _, t in trials.iterrows():
        rounds = history[history["trial_id"] == t["trial_id"]]
        row = {
            "trial": f"{t.get('config/config_id')}/r{t.get('config/replicate')}",
            "status": t["status"],
            "error": t["error"] if isinstance(t["error"], str) and t["error"] else None,
            "wall_s": round(float(t["time_total_s"]), 1),
            "rounds": int(t["rounds"]),
            "val_clean_acc": t.get("val_clean_acc"),
            "val_robust_acc": t.get("val_robust_acc"),
        }
        for part in ("lime", "train", "eval"):
            if f"{part}_seconds" in rounds:
                row[f"{part}_s"] = round(float(rounds[f"{part}_seconds"].sum()), 1)
        images = {
            "train": rounds["train_examples"].sum() * TRIAL["epochs_per_round"]
            if "train_examples" in rounds
            else 0,
            "lime": len(rounds) * TRIAL["pool_size"] * TRIAL["lime_samples"],
        }
        for part, n in images.items():
            if row.get(f"{part}_s"):
                row[f"{part}_images_per_s"] = round(float(n) / row[f"{part}_s"])
        rows.append(row)
    return rows


def base_seconds(study_dir: str) -> float | None:
    """The base's training time, from its cache record (trainables/base.py)."""
    try:
        with open(os.path.join(study_dir, "base.json")) as f:
            path = json.load(f)["path"]
        with open(os.path.join(os.path.dirname(path), "base.json")) as f:
            return round(json.load(f)["train_seconds"], 1)
    except (OSError, KeyError, ValueError):
        return None


def training_step(steps: int = 20) -> dict:
    """The preset's lime_refine step on random images, directly on this GPU: throughput and the
    peak of torch's allocations (tensors only; the CUDA context adds a few hundred MiB)."""
    from study.presets import PRESETS
    from trainables.config import make_trial_config
    from trainables.models import build_model
    from trainables.refine import backward

    cfg = make_trial_config({**PRESETS["cifar10"]["trial"], **TRIAL, "method": "lime_refine"})
    torch.manual_seed(0)
    spec = {"in_channels": 3, "num_classes": 10, "image_size": 32, "mean": (0.5,) * 3}
    model = build_model(cfg.model, **spec, std=(0.25,) * 3, width=cfg.model_width or None)
    model = model.cuda().to(memory_format=torch.channels_last).train()  # as refine() does
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True)
    x = torch.rand(cfg.batch_size, 3, 32, 32, device="cuda")
    y = torch.randint(10, (cfg.batch_size,), device="cuda")
    w = torch.ones(cfg.batch_size, 1, 32, 32, device="cuda")
    torch.cuda.reset_peak_memory_stats()
    for step in range(steps + 3):  # 3 warm-up steps: cuDNN's choices, the allocator's pools
        if step == 3:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        backward(cfg, model, x, y, w, step)
        opt.step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / steps
    return {
        "batch_size": cfg.batch_size, "attack_steps": cfg.attack_steps,
        "seconds_per_step": round(seconds, 4),
        "train_images_per_s": round(cfg.batch_size / seconds),
        "max_memory_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_smoke", description=__doc__)
    p.add_argument(
        "--data-dir",
        default=default_data_dir(),
        help=f"CIFAR-10 (default: ../shared/data/{ARCHIVE} where it exists, else torchvision's "
        "copy, downloaded)",
    )
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        default=0.5,
        help="each trial's GPU share (default 0.5: both trials on one GPU at once)",
    )
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        why = f"no GPU, or a driver too old for CUDA {torch.version.cuda}"
        print(f"gpu_smoke: torch sees no CUDA device ({why}); nothing was run", file=sys.stderr)
        return 2

    from benchmarks.output import emit_json

    storage = tempfile.mkdtemp(prefix="gpu-smoke-")
    study = {
        "preset": "cifar10", "name": "gpu-smoke", "num_samples": 1, "replicates": 2,
        "confirm_seeds": 0, "baselines": [], "base": {"epochs": 1},
        "trial": {**TRIAL, **({"data_dir": args.data_dir} if args.data_dir else {})},
    }  # fmt: skip
    yaml_path = os.path.join(storage, "gpu-smoke.yaml")
    with open(yaml_path, "w") as f:
        json.dump(study, f, indent=2)  # JSON is YAML
    result = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "data_dir": args.data_dir,
        **run_study(yaml_path, os.path.join(storage, "studies"), args.gpus_per_trial),
    }
    study_dir = os.path.join(storage, "studies", "gpu-smoke")
    result["base_train_s"] = base_seconds(study_dir)
    try:
        result["trials"] = trial_rows(study_dir)
    except Exception as e:  # a study that failed early leaves nothing to read: say so, go on
        result["trials"], result["trials_error"] = [], f"{type(e).__name__}: {e}"
    result["training_step"] = training_step()
    result["study_dir"] = study_dir
    emit_json(result, args.json)
    return 0 if result["exit_code"] == 0 and result["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
