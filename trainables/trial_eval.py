"""The evaluation a confirmation trial reports on the test split after its last round, as flat
metric keys (`confirmation_metrics` prefixes them `test_`; search trials never run it).

FGSM and PGD-20 at each eps of `eval_grid` (`fgsm_eps2_255`, `pgd20_eps0p1`: the grid token
with '/' -> '_' and '.' -> 'p', so keys are valid pandas columns and Tune metrics) plus the
gradient-masking checks on that grid; on a fixed subset:
PGD-50 with restarts and AutoAttack at `final_grid`, PGD-20 at eps 0.5 (where a working attack
must reach about zero), CIFAR-10-C (`cifar10c_mean`, `cifar10c_<corruption>`) and attribution
robustness (`attr_<method>_<attack>_eps<tag>_<metric>`) for saliency, IG and LIME.
"""

import hashlib
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from study.store import pack_outcomes
from trainables.attribution_robustness import attribution_robustness_report
from trainables.attributions import lime_attribution_map, saliency
from trainables.config import TrialConfig, parse_grid
from trainables.corruptions import (
    CORRUPTIONS,
    GENERATOR_VERSION,
    SEVERITIES,
    corruption_accuracy,
    write_cifar10c,
)
from trainables.data import Splits, cache_dir, subset, subset_index
from trainables.evaluate import (
    gradient_masking_checks,
    make_attack,
    robust_outcomes,
    summarize_outcomes,
    worst_case_outcomes,
)
from trainables.explain import explain_images
from trainables.segmentation import segment_batch

LARGE_EPS = 0.5  # L-inf 0.5 reaches mid-grey from any image: accuracy must fall to about zero
ATTR_METRICS = (
    "topk", "kendall", "spearman", "lens_recall", "lens_precision",
    "lens_recall_div", "lens_precision_div",
)  # fmt: skip


def eps_tag(token: str) -> str:
    """'2/255' -> 'eps2_255', '0.1' -> 'eps0p1'."""
    return "eps" + token.replace("/", "_").replace(".", "p")


def _attack_metrics(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: tuple[str, ...],
    grid: tuple[tuple[str, float], ...],
    grid_acc: dict[tuple[str, float], float],
    *,
    restarts: int = 1,
    seed: int = 0,
    seconds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Accuracy under each attack at each eps, with its per-image outcomes
    (`outcomes_<attack>_<eps>`); `seconds[attack]` adds up the time each took."""
    out: dict[str, Any] = {}
    for name in attacks:
        for token, eps in grid:
            start = time.perf_counter()
            attack = make_attack(name, eps, restarts=restarts, seed=seed)
            correct = robust_outcomes(model, x, y, attack)
            acc = correct.float().mean().item() if len(x) else 0.0
            grid_acc[(name, eps)] = acc
            out[f"{name}_{eps_tag(token)}"] = acc
            out[f"outcomes_{name}_{eps_tag(token)}"] = pack_outcomes(correct.numpy())
            if seconds is not None:
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
    return out


def cifar10c_subset(splits: Splits, n: int) -> Path:
    """A fixed n-image CIFAR-10-C subset of the test set (15 corruptions x 5 severities),
    generated once and cached: trials of a study share it.

    The cache key is everything that determines the content: the dataset, a SHA-256 of the
    subset's own pixels and labels (so another copy of CIFAR-10, or CIFAR-100, never reuses
    it), the corruptions, severities and seed, and the generator's version.
    """
    x, y = subset(splits.test_x, splits.test_y, n, seed=0)
    images = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    labels = y.numpy()
    key = hashlib.sha256(images.tobytes() + labels.tobytes())
    key.update(repr((CORRUPTIONS, SEVERITIES, 0, GENERATOR_VERSION)).encode())
    out_dir = cache_dir() / "cifar10c" / f"{splits.name}-n{n}-{key.hexdigest()[:16]}"
    if not (out_dir / "labels.npy").exists():  # written last: present means complete
        write_cifar10c(images, labels, out_dir)
    return out_dir


def _cifar10c(model: nn.Module, images: Path) -> dict[str, float]:
    acc = corruption_accuracy(model, images)
    return {f"cifar10c_{k}": v for k, v in acc.items() if "/" not in k}


def lime_attribution(cfg: TrialConfig):
    """LIME as an attribution function for the attribution-robustness report.

    LIME has no gradient, so the top-k attack takes its steps along the saliency gradient of
    the model (a transfer attack on LIME's top-k pixels); the maps it is judged on are LIME's.
    """

    def attribute(model, x, y, create_graph=False):
        if create_graph:
            return saliency(model, x, y, create_graph=True)
        images = x.detach().cpu()
        segments = segment_batch(images.permute(0, 2, 3, 1).numpy(), cfg.segmentation, cfg.seed)
        expl = explain_images(
            model, images, y.cpu(), segments, backend=cfg.lime_backend,
            num_samples=cfg.lime_samples, seed=cfg.seed,
        )  # fmt: skip
        maps = lime_attribution_map(segments, [e.weights for e in expl])
        return maps.unsqueeze(1).to(x.device)

    return attribute


def _attribution(cfg: TrialConfig, model: nn.Module, x, y, grid) -> dict[str, float]:
    """NaN throughout when the model gets none of the images right (nothing to attack)."""
    names = [
        f"attr_{m}_{a}_{eps_tag(t)}_{k}"
        for m in ("saliency", "ig", "lime") for t, _ in grid for a in ("random", "topk")
        for k in ATTR_METRICS
    ]  # fmt: skip
    model.eval()
    with torch.no_grad():
        if not (model(x).argmax(1) == y).any():
            return dict.fromkeys(names, float("nan"))
    out = {}
    k = max(1, x.shape[-1] * x.shape[-2] // 10)  # top 10% of the pixels
    methods = {"saliency": "saliency", "ig": "ig", "lime": lime_attribution(cfg)}
    for name, method in methods.items():
        report = attribution_robustness_report(
            model, x, y, method=method, eps_list=[eps for _, eps in grid], k=k,
            steps=cfg.attr_steps, restarts=cfg.attr_restarts, ig_steps=cfg.ig_steps,
            seed=cfg.seed,
        )  # fmt: skip
        for token, eps in grid:
            for attack in ("random", "topk"):
                row = report[(attack, float(eps))]
                for metric in ATTR_METRICS:
                    out[f"attr_{name}_{attack}_{eps_tag(token)}_{metric}"] = row[metric]
    return out


def trial_evaluation(
    cfg: TrialConfig,
    model: nn.Module,
    splits: Splits,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    final_grid: tuple[tuple[str, float], ...],
) -> dict[str, Any]:
    """The flat metrics of the final evaluation on (test_x, test_y): the FGSM/PGD-20 grid at
    eval_grid, PGD-50 and AutoAttack at final_grid on the first final_eval_subset images, and
    the masking checks; CIFAR-10-C and attribution robustness where asked."""
    grid = parse_grid(cfg.eval_grid)
    device = next(model.parameters()).device
    grid_acc: dict[tuple[str, float], float] = {}
    seconds: dict[str, float] = {}  # what each part cost: `seconds_<part>` in the metrics
    out: dict[str, Any] = _attack_metrics(
        model, test_x, test_y, ("fgsm", "pgd20"), grid, grid_acc, seed=cfg.seed, seconds=seconds
    )
    n = cfg.final_eval_subset
    fx, fy = test_x[:n], test_y[:n]
    # the weaker attacks on the same subset, so the stronger-attack check compares like with like
    sub_acc: dict[tuple[str, float], float] = {}
    _attack_metrics(
        model, fx, fy, ("fgsm", "pgd20"), final_grid, sub_acc, seed=cfg.seed, seconds=seconds
    )
    out.update(
        _attack_metrics(
            model, fx, fy, ("pgd50", "autoattack"), final_grid, sub_acc,
            restarts=cfg.final_restarts, seed=cfg.seed, seconds=seconds,
        )
    )  # fmt: skip
    large = _attack_metrics(
        model, fx, fy, ("pgd20",), ((str(LARGE_EPS), LARGE_EPS),), sub_acc, seed=cfg.seed,
        seconds=seconds,
    )  # fmt: skip
    out.update(large)
    violations = gradient_masking_checks(grid_acc) + [
        f"final subset: {v}" for v in gradient_masking_checks(sub_acc)
    ]
    if cfg.cifar10c_images and cfg.dataset == "cifar10":
        images = cifar10c_subset(splits, cfg.cifar10c_images)  # generated once: not its cost
        start = time.perf_counter()
        out.update(_cifar10c(model, images))
        seconds["cifar10c"] = time.perf_counter() - start
    if cfg.attr_images:
        start = time.perf_counter()
        ax, ay = test_x[: cfg.attr_images].to(device), test_y[: cfg.attr_images].to(device)
        out.update(_attribution(cfg, model, ax, ay, grid or final_grid))
        seconds["attribution"] = time.perf_counter() - start
    out["masking_violations"] = len(violations)
    out["masking_report"] = "; ".join(violations) or "ok"
    out.update({f"seconds_{part}": round(t, 2) for part, t in seconds.items()})
    return out


def confirmation_queries(cfg: TrialConfig) -> int:
    """Square's budget in the test's worst case: `test_blackbox_queries`, else the search's."""
    return cfg.test_blackbox_queries or cfg.blackbox_queries


def _worst_case_at(
    cfg: TrialConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor, token: str, eps: float
) -> dict[str, Any]:
    """The worst case at another eps: `test_<part>_<eps tag>_acc` for pgd, blackbox and robust,
    their per-image outcomes, the masking test `test_masking_p_<eps tag>` and its cost."""
    start = time.perf_counter()
    outcomes = worst_case_outcomes(
        model, x, y, eps, pgd_steps=cfg.eval_steps, queries=confirmation_queries(cfg), seed=cfg.seed
    )
    tag = eps_tag(token)
    summary = summarize_outcomes({k: v for k, v in outcomes.items() if k != "clean"}, "test")
    out = {}
    for key, value in summary.items():
        if key.endswith("_acc"):  # test_pgd_acc -> test_pgd_eps8_255_acc
            out[f"{key.removesuffix('_acc')}_{tag}_acc"] = value
        else:  # test_outcomes_pgd, test_masking_p, test_masking -> ..._eps8_255
            out[f"{key}_{tag}"] = value
    out[f"test_seconds_worst_case_{tag}"] = round(time.perf_counter() - start, 2)
    return out


def test_order(n_test: int, eval_subset: int | None) -> tuple[torch.Tensor, int]:
    """The order a confirmation evaluates the test images in, and how many lead it: the fixed
    eval subset first, then the rest, so every evaluation's per-image outcomes cover a prefix
    of it and pair by position across trials (and with a later re-evaluation)."""
    subset = subset_index(n_test, eval_subset, seed=0)
    rest = torch.ones(n_test, dtype=torch.bool).index_fill_(0, subset, False)
    return torch.cat([subset, rest.nonzero().flatten()]), len(subset)


def confirmation_metrics(cfg: TrialConfig, model: nn.Module, splits: Splits) -> dict[str, Any]:
    """A confirmation trial's figures on the test split, each key prefixed `test_`.

    Clean accuracy on the whole test split; the search's worst-case robust accuracy (PGD and
    Square, per example) on `eval_subset` test images, at the eval epsilon and each other eps
    of `answer_epsilons`; then the final evaluation (FGSM/PGD-20 grid, PGD-50 with restarts
    and AutoAttack at `final_grid`, by default the study's eval epsilon, on the first
    `final_eval_subset` of those images, masking checks, CIFAR-10-C and attribution robustness
    where asked). `test_pgd50_acc` and `test_autoattack_acc` are the two at the eval epsilon.
    The test images are taken in one order, the eval subset first, so every evaluation's
    per-image outcomes cover a prefix of it and pair by position across trials.
    """
    order, n_subset = test_order(len(splits.test_x), cfg.eval_subset)
    all_x, all_y = splits.test_x[order], splits.test_y[order]
    x, y = all_x[:n_subset], all_y[:n_subset]
    start = time.perf_counter()
    outcomes = worst_case_outcomes(
        model, x, y, cfg.eval_epsilon,
        pgd_steps=cfg.eval_steps, queries=confirmation_queries(cfg), seed=cfg.seed,
    )  # fmt: skip
    out: dict[str, Any] = summarize_outcomes(outcomes, "test", order, all_y)
    clean = robust_outcomes(model, all_x, all_y, lambda m, xb, yb: xb)  # the whole split
    out["test_clean_acc"] = clean.float().mean().item()
    out["test_outcomes_clean"] = pack_outcomes(clean.numpy())
    out["test_seconds_worst_case"] = round(time.perf_counter() - start, 2)
    for token, eps in parse_grid(cfg.answer_epsilons):
        if not math.isclose(eps, cfg.eval_epsilon):
            out.update(_worst_case_at(cfg, model, x, y, token, eps))
    final_grid = parse_grid(cfg.final_grid)
    token = next((t for t, eps in final_grid if math.isclose(eps, cfg.eval_epsilon)), None)
    if token is None:
        token = repr(cfg.eval_epsilon)
        final_grid = ((token, cfg.eval_epsilon), *final_grid)
    final = trial_evaluation(cfg, model, splits, x, y, final_grid)
    out.update({f"test_{k}": v for k, v in final.items()})
    out["test_pgd50_acc"] = final[f"pgd50_{eps_tag(token)}"]
    out["test_autoattack_acc"] = final[f"autoattack_{eps_tag(token)}"]
    out["test_outcomes_autoattack"] = final[f"outcomes_autoattack_{eps_tag(token)}"]
    return out
