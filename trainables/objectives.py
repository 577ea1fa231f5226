"""Training losses of the baselines: IG-NORM, IG-SUM-NORM, TRADES and an input-gradient penalty.

Each returns a scalar tensor differentiable w.r.t. the model's parameters; the caller calls
backward() and steps the optimizer. Inputs are images in [0, 1], so eps is in pixel units.
Inner attacks run in eval() mode, so BatchNorm statistics are never updated on adversarial
batches, and draw their random start from torch's global RNG (seed it with torch.manual_seed).
"""

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import PGD
from .attributions import path_gradients

BASELINES = ("adv", "zeros")


def _adversarial(model: nn.Module, x, y, eps: float, steps: int, step_size: float | None):
    """PGD maximizing the cross-entropy, in eval() mode, with a fresh random start per call."""
    was_training = model.training
    model.eval()
    seed = int(torch.randint(2**31 - 1, (1,)).item())
    x_adv = PGD(eps=eps, steps=steps, step_size=step_size, seed=seed)(model, x, y)
    model.train(was_training)
    return x_adv


def loss_integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    x_end: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int = 50,
    create_graph: bool = True,
) -> torch.Tensor:
    """IG of the per-example cross-entropy along x -> x_end (Chen et al., 2019).

    Completeness: each example's attributions sum to loss(x_end) - loss(x), up to the Riemann
    error. With create_graph=True the result is differentiable w.r.t. the parameters.
    """
    ys = y.repeat(steps)
    grad = path_gradients(
        lambda p: F.cross_entropy(model(p), ys, reduction="none"), x, x_end, steps, create_graph
    )
    return (x_end - x) * grad


def _ig_l1(model, x, y, *, eps, attack_steps, steps, step_size, baseline):
    """Mean over the batch of ||IG||_1 and the path's far end (x' for "adv", x for "zeros")."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if baseline == "adv":
        start, end = x, _adversarial(model, x, y, eps, attack_steps, step_size)
    else:
        start, end = torch.zeros_like(x), x
    ig = loss_integrated_gradients(model, start, end, y, steps=steps)
    return ig.abs().flatten(1).sum(1).mean(), end


def ig_norm_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lam: float,
    eps: float,
    attack_steps: int,
    steps: int = 10,
    step_size: float | None = None,
    baseline: str = "adv",
) -> torch.Tensor:
    """IG-NORM (Chen et al., 2019): xent(x) + lam * ||IG of the loss along x -> x'||_1.

    x' is PGD on the cross-entropy, the approximation the authors' code makes of maximizing the
    IG norm itself. The paper uses steps=50 Riemann steps; each costs one forward and a double
    backward over the batch. baseline="zeros" integrates along 0 -> x instead (no attack):
    an attribution-magnitude penalty, an ablation rather than the paper's method.
    """
    ig_l1, _ = _ig_l1(
        model,
        x,
        y,
        eps=eps,
        attack_steps=attack_steps,
        steps=steps,
        step_size=step_size,
        baseline=baseline,
    )
    return F.cross_entropy(model(x), y) + lam * ig_l1


def ig_sum_norm_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    beta: float,
    eps: float,
    attack_steps: int,
    steps: int = 10,
    step_size: float | None = None,
) -> torch.Tensor:
    """IG-SUM-NORM (Chen et al., 2019): xent(x') + beta * ||IG along x -> x'||_1, x' from PGD.

    This is adversarial training plus the attribution term; beta=0 gives plain PGD training.
    """
    ig_l1, x_adv = _ig_l1(
        model,
        x,
        y,
        eps=eps,
        attack_steps=attack_steps,
        steps=steps,
        step_size=step_size,
        baseline="adv",
    )
    return F.cross_entropy(model(x_adv), y) + beta * ig_l1


def trades_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    beta: float,
    eps: float,
    steps: int,
    step_size: float | None = None,
) -> torch.Tensor:
    """TRADES (Zhang et al., 2019): xent(x) + beta * KL(p(x) || p(x')), x' maximizing the KL.

    As in the authors' code: start at x + 0.001 N(0, 1), L-inf steps on the summed KL in eval()
    mode; the training term is the batch-mean KL. step_size defaults to 2.5 eps / steps.
    """
    step = step_size if step_size is not None else 2.5 * eps / steps
    was_training = model.training
    model.eval()
    with torch.no_grad():
        p_nat = F.softmax(model(x), dim=1)
    x_adv = (x + 0.001 * torch.randn_like(x)).clamp(0, 1).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_nat, reduction="sum")
        (grad,) = torch.autograd.grad(kl, x_adv)
        x_adv = x_adv.detach() + step * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    model.train(was_training)
    logits = model(x)
    robust = F.kl_div(
        F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean"
    )
    return F.cross_entropy(logits, y) + beta * robust


def input_gradient_penalty(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over the batch of ||w * grad_x loss_i||_2^2, differentiable (double backprop).

    loss_i is each example's own cross-entropy (not divided by the batch size), so the penalty
    does not shrink as the batch grows. `weights` broadcasts against x, e.g. (N, 1, H, W) maps
    that are larger where LIME marks superpixels irrelevant; None weighs every pixel the same.
    """
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    if weights is not None:
        grad = grad * weights
    return grad.pow(2).flatten(1).sum(1).mean()
