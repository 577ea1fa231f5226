"""Clean and adversarial accuracy, always in eval() mode and in batches, plus the robustness
grid, the final evaluation (PGD-50 with restarts, AutoAttack) and gradient-masking checks."""

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from study.store import OUTCOMES_MARK, pack_ints, pack_outcomes

from .attacks import FGSM, PGD, AutoAttack, Square

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of x classified as y, in eval() mode (the caller's mode is restored)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
            correct += (model(xb).argmax(1) == yb).sum().item()
    model.train(was_training)
    return correct / max(len(x), 1)


def robust_outcomes(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack, batch_size: int = 256
) -> torch.Tensor:
    """Per example: is attack(model, x, y) still classified as y? (bool, on the CPU; eval mode)"""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        x_adv = attack(model, xb, yb)
        with torch.inference_mode():
            out.append((model(x_adv).argmax(1) == yb).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def robust_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack, batch_size: int = 256
) -> float:
    """Accuracy on attack(model, x, y), with the model attacked in eval() mode."""
    return robust_outcomes(model, x, y, attack, batch_size).float().mean().item() if len(x) else 0.0


MASKING_ALPHA = 0.05


def masking_p_value(pgd_ok: torch.Tensor, blackbox_ok: torch.Tensor) -> float:
    """One-sided exact McNemar test: p-value of "the gradient-free attack breaks more examples
    than PGD" on the same examples.

    Only the discordant examples carry information (b: PGD fails, black box succeeds; c: the
    reverse); under no masking either attack is as likely to win each of them, so b ~
    Binomial(b + c, 1/2). A small p says the gap exceeds the sampling noise of this evaluation
    set: gradients mislead PGD (gradient masking), and PGD's figure is not a robustness figure.
    """
    from scipy.stats import binomtest  # scipy.stats: ~0.5 s of import, only when evaluated

    b = int((pgd_ok & ~blackbox_ok).sum())
    c = int((~pgd_ok & blackbox_ok).sum())
    if b == 0:
        return 1.0
    return float(binomtest(b, b + c, 0.5, alternative="greater").pvalue)


def worst_case_outcomes(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    pgd_steps: int,
    queries: int,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """Per-example outcomes of the clean pass, PGD and Square at eps, and their worst case: an
    example counts as robust only if it is classified correctly clean and under both attacks
    (RobustBench's convention), so neither gradient masking nor a lucky attack inflates it."""
    clean = robust_outcomes(model, x, y, lambda m, xb, yb: xb, batch_size)
    pgd = robust_outcomes(model, x, y, PGD(eps, steps=pgd_steps, seed=seed), batch_size)
    blackbox = robust_outcomes(model, x, y, Square(eps, queries=queries, seed=seed), batch_size)
    return {"clean": clean, "pgd": pgd, "blackbox": blackbox, "robust": clean & pgd & blackbox}


def summarize_outcomes(
    outcomes: dict[str, torch.Tensor],
    prefix: str,
    index: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> dict[str, Any]:
    """`<prefix>_clean_acc`, `_pgd_acc`, `_blackbox_acc`, `_robust_acc`, each with its per-image
    outcomes `<prefix>_outcomes_<name>` (study.store.pack_outcomes: what the intervals resample),
    the masking test's p-value `_masking_p` and its flag `_masking` (1.0 when p <
    MASKING_ALPHA). `index` and `labels` (the evaluated images' indices in their split and their
    labels) go with the outcomes as `<prefix>_outcomes_index` and `_label`."""
    out: dict[str, Any] = {}
    for name, correct in outcomes.items():
        out[f"{prefix}_{name}_acc"] = correct.float().mean().item()
        out[f"{prefix}{OUTCOMES_MARK}{name}"] = pack_outcomes(correct.numpy())
    if index is not None:
        out[f"{prefix}{OUTCOMES_MARK}index"] = pack_ints(index.numpy())
    if labels is not None:
        out[f"{prefix}{OUTCOMES_MARK}label"] = pack_ints(labels.cpu().numpy())
    p = masking_p_value(outcomes["pgd"], outcomes["blackbox"])
    out[f"{prefix}_masking_p"] = p
    out[f"{prefix}_masking"] = float(p < MASKING_ALPHA)
    return out


Grid = dict[tuple[str, float], float]  # (attack name, eps) -> robust accuracy


def make_attack(name: str, eps: float, *, restarts: int = 1, seed: int = 0) -> Attack:
    """'fgsm', 'pgd<steps>' (e.g. 'pgd20', L-inf, random start) or 'autoattack' (standard)."""
    if name == "fgsm":
        return FGSM(eps=eps, seed=seed)
    if m := re.fullmatch(r"pgd(\d+)", name):
        return PGD(eps=eps, steps=int(m.group(1)), restarts=restarts, seed=seed)
    if name == "autoattack":
        return AutoAttack(eps=eps, seed=seed)
    raise ValueError(f"unknown attack {name!r}; use 'fgsm', 'pgd<steps>' or 'autoattack'")


def robustness_grid(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps_list: Sequence[float],
    attacks: Sequence[str] = ("fgsm", "pgd20"),
    *,
    restarts: int = 1,
    batch_size: int = 256,
    seed: int = 0,
) -> Grid:
    """Robust accuracy for every (attack, eps); eps = 0 gives the clean accuracy."""
    return {
        (name, float(eps)): robust_accuracy(
            model, x, y, make_attack(name, eps, restarts=restarts, seed=seed), batch_size
        )
        for name in attacks
        for eps in eps_list
    }


def _strength(name: str) -> tuple[int, int]:
    """Order of attack strength: FGSM < PGD (more steps stronger) < AutoAttack."""
    if name == "fgsm":
        return (0, 1)
    if m := re.fullmatch(r"pgd(\d+)", name):
        return (1, int(m.group(1)))
    if name == "autoattack":
        return (2, 0)
    raise ValueError(f"unknown attack {name!r}")


def gradient_masking_checks(
    grid: Grid, *, large_eps: float = 0.5, near_zero: float = 0.05, tol: float = 0.01
) -> list[str]:
    """Signs of gradient masking or a broken evaluation (Carlini et al., 2019, Sec. 5), as text.

    1. Accuracy rising with eps for one attack. 2. A stronger attack (PGD vs FGSM, more PGD
    steps, AutoAttack vs PGD) leaving a higher accuracy at the same eps. 3. An iterative attack
    leaving more than `near_zero` accuracy at eps >= `large_eps`: at L-inf 0.5 every image in
    [0, 1] is within reach of the same mid-grey image, so a working attack must get to at most
    chance level, and in practice to about zero (FGSM is exempt: one step may overshoot).
    `tol` (accuracy points) absorbs random-start noise: 0.01 is one example in a hundred.
    """
    out = []
    names = sorted({name for name, _ in grid}, key=_strength)
    for name in names:
        curve = sorted((eps, acc) for (n, eps), acc in grid.items() if n == name)
        for i, (eps, acc) in enumerate(curve[1:], start=1):
            low_eps, low_acc = min(curve[:i], key=lambda p: p[1])
            if acc > low_acc + tol:
                out.append(
                    f"{name}: accuracy rises with eps ({low_acc:.3f} at eps={low_eps:.4g} "
                    f"-> {acc:.3f} at eps={eps:.4g})"
                )
    for (name, eps), acc in sorted(grid.items()):
        for weaker in names:
            if _strength(weaker) >= _strength(name) or (weaker, eps) not in grid:
                continue
            if acc > grid[(weaker, eps)] + tol:
                out.append(
                    f"eps={eps:.4g}: {name} leaves {acc:.3f} accuracy, more than the weaker "
                    f"{weaker} ({grid[(weaker, eps)]:.3f})"
                )
        if name != "fgsm" and eps >= large_eps and acc > near_zero:
            out.append(f"{name}: {acc:.3f} accuracy at eps={eps:.4g}, expected about 0")
    return out
