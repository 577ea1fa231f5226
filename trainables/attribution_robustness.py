"""Attribution robustness: similarity metrics between attribution maps and attacks on attributions.

Metrics (Kamath et al., 2024) take maps (N, H, W) (the LENS ones need the spatial layout) or
(N, D), and return one value per example. Top-k sets break ties by the lower flat index (a
stable sort), so they are deterministic. Attacks: uniform random noise, and the Ghorbani et al.
(2019) top-k attack, which moves the attribution mass off the original top-k pixels while
keeping the predicted label.
"""

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from .attributions import integrated_gradients, saliency

AttributionFn = Callable[..., torch.Tensor]  # (model, x, y, *, create_graph) -> like x
EPS_LIST = (1 / 255, 2 / 255, 4 / 255, 8 / 255)


def _flat(a: torch.Tensor) -> torch.Tensor:
    return a.detach().reshape(a.shape[0], -1).float().cpu()


def topk_mask(a: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask, shaped like a, of each example's k largest entries (ties: lower index)."""
    flat = _flat(a)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :k]
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)
    return mask.view(a.shape)


def topk_diversity(a: torch.Tensor, k: int, w: int) -> torch.Tensor:
    """Top-k-div mask of maps (N, H, W): greedy from the largest value down, skipping pixels
    inside the w x w window of a pixel already chosen. May hold fewer than k when the map is
    too small to fit k separated pixels."""
    n, h, wd = a.shape
    order = torch.sort(_flat(a), dim=1, descending=True, stable=True).indices.numpy()
    r = w // 2
    out = np.zeros((n, h, wd), dtype=bool)
    for i in range(n):
        blocked = np.zeros((h, wd), dtype=bool)
        chosen = 0
        for flat_idx in order[i]:
            row, col = divmod(int(flat_idx), wd)
            if blocked[row, col]:
                continue
            out[i, row, col] = True
            blocked[max(row - r, 0) : row + r + 1, max(col - r, 0) : col + r + 1] = True
            chosen += 1
            if chosen == k:
                break
    return torch.from_numpy(out)


def _dilate(mask: torch.Tensor, w: int) -> torch.Tensor:
    """Expand a boolean (N, H, W) mask by a w x w window centred on each True pixel."""
    if w % 2 != 1:
        raise ValueError(f"window w must be odd, got {w}")
    grown = F.max_pool2d(mask.float().unsqueeze(1), w, stride=1, padding=w // 2)
    return grown.squeeze(1) > 0


def topk_intersection(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """Fraction of a's top-k entries that are also in b's top-k."""
    both = topk_mask(a, k) & topk_mask(b, k)
    return both.reshape(both.shape[0], -1).sum(1).float() / k


def _per_example(fn, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    fa, fb = _flat(a).double().numpy(), _flat(b).double().numpy()
    return torch.tensor([fn(u, v).statistic for u, v in zip(fa, fb, strict=True)])


def kendall_tau(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kendall's tau-b (ties counted as in scipy); NaN for a constant map."""
    return _per_example(stats.kendalltau, a, b)


def spearman_rho(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rho on average ranks (ties share their mean rank); NaN for a constant map."""
    return _per_example(stats.spearmanr, a, b)


def _sets(a, b, k, w, div):
    if a.dim() != 3:
        raise ValueError("LENS metrics need (N, H, W) maps")
    if div:
        return topk_diversity(a, k, w), topk_diversity(b, k, w)
    return topk_mask(a, k), topk_mask(b, k)


def lens_recall_at_k(
    a: torch.Tensor, b: torch.Tensor, k: int, w: int, *, div: bool = False
) -> torch.Tensor:
    """w-LENS-recall@k: |(a's top-k grown by a w x w window) & b's top-k| / |b's top-k|.

    a is the original map, b the perturbed one; definition as in the authors' code (see
    /work/shared/notes). With div=True both top-k sets are the top-k-div ones.
    """
    ta, tb = _sets(a, b, k, w, div)
    hit = (_dilate(ta, w) & tb).flatten(1).sum(1).float()
    return hit / tb.flatten(1).sum(1).clamp_min(1)


def lens_precision_at_k(
    a: torch.Tensor, b: torch.Tensor, k: int, w: int, *, div: bool = False
) -> torch.Tensor:
    """w-LENS-prec@k: |(b's top-k grown by a w x w window) & a's top-k| / |a's top-k|."""
    ta, tb = _sets(a, b, k, w, div)
    hit = (_dilate(tb, w) & ta).flatten(1).sum(1).float()
    return hit / ta.flatten(1).sum(1).clamp_min(1)


# --- attacks on attributions -------------------------------------------------------------------


def attribution_map(attr: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) attributions -> (N, H, W) maps: absolute value summed over channels."""
    return attr.abs().sum(1)


def _method(method: str | AttributionFn, ig_steps: int) -> AttributionFn:
    if callable(method):
        return method
    if method == "saliency":
        return saliency
    if method == "ig":
        return lambda m, x, y, create_graph=False: integrated_gradients(
            m, x, y, steps=ig_steps, create_graph=create_graph
        )
    raise ValueError(f"method must be 'saliency', 'ig' or a callable, got {method!r}")


def _smooth(model: nn.Module, beta: float) -> nn.Module:
    """A copy with every nn.ReLU replaced by Softplus(beta), as in Ghorbani et al.: the input
    gradient of a ReLU net is piecewise constant, so its own second derivative is zero and the
    attack would get no signal. Functional relu calls (torch.relu in forward) stay as they are."""
    if not any(isinstance(m, nn.ReLU) for m in model.modules()):
        return model
    smooth = copy.deepcopy(model)
    for module in smooth.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.Softplus(beta=beta))
    return smooth


def _predicts(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


def random_noise_attack(x: torch.Tensor, eps: float, *, seed: int = 0) -> torch.Tensor:
    """x plus i.i.d. uniform noise in [-eps, eps], clipped to [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    noise = (2 * torch.rand(x.shape, generator=gen) - 1).to(x.device) * eps
    return (x + noise).clamp(0, 1)


def topk_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    k: int,
    method: str | AttributionFn = "saliency",
    steps: int = 100,
    step_size: float | None = None,
    restarts: int = 3,
    ig_steps: int = 16,
    softplus_beta: float = 10.0,
    seed: int = 0,
) -> torch.Tensor:
    """Ghorbani et al. (2019) top-k attack, L-inf eps, label kept; best restart by Kendall.

    Each step is a signed gradient step that lowers the share of attribution mass on the
    original top-k pixels, computed on a softplus copy of the model; a step is kept, per
    example, only while the real model still predicts y. Restarts after the first start from
    uniform noise; the restart whose final map has the lowest Kendall tau with the original
    map wins. step_size defaults to 2.5 eps / steps, as for PGD.
    """
    attribute = _method(method, ig_steps)
    step = step_size if step_size is not None else 2.5 * eps / steps
    smooth = _smooth(model, softplus_beta)
    original = attribution_map(attribute(model, x, y)).detach()
    top = topk_mask(original, k).to(x.device).float()
    best, best_tau = x.clone(), torch.full((len(x),), float("inf"))
    shape = (-1, *([1] * (x.dim() - 1)))
    for restart in range(restarts):
        x_adv = x.clone()
        if restart > 0:
            start = random_noise_attack(x, eps, seed=seed + restart)
            x_adv = torch.where(_predicts(model, start, y).view(shape), start, x)
        for _ in range(steps):
            x_adv = x_adv.detach().requires_grad_(True)
            amap = attribution_map(attribute(smooth, x_adv, y, create_graph=True))
            share = (amap * top).flatten(1).sum(1) / amap.flatten(1).sum(1).clamp_min(1e-12)
            (grad,) = torch.autograd.grad(share.sum(), x_adv)
            cand = x_adv.detach() - step * grad.sign()
            cand = torch.min(torch.max(cand, x - eps), x + eps).clamp(0, 1)
            x_adv = torch.where(_predicts(model, cand, y).view(shape), cand, x_adv.detach())
        tau = kendall_tau(original, attribution_map(attribute(model, x_adv, y)))
        better = torch.nan_to_num(tau, nan=1.0) < best_tau
        best = torch.where(better.to(x.device).view(shape), x_adv, best)
        best_tau = torch.where(better, torch.nan_to_num(tau, nan=1.0), best_tau)
    return best.detach()


def attribution_robustness_report(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    method: str | AttributionFn = "saliency",
    eps_list: Sequence[float] = EPS_LIST,
    k: int,
    w: int = 3,
    attacks: Sequence[str] = ("random", "topk"),
    steps: int = 100,
    restarts: int = 3,
    ig_steps: int = 16,
    seed: int = 0,
) -> dict[tuple[str, float], dict[str, float]]:
    """Mean metrics per (attack, eps) over the correctly classified examples of x.

    Metrics: topk (intersection), kendall, spearman, lens_recall, lens_precision and their
    top-k-div versions lens_recall_div, lens_precision_div; label_kept is the fraction of
    attacked inputs still classified as y (1 for the top-k attack by construction); n counts
    the examples. Runs in eval() mode and restores the caller's mode.
    """
    was_training = model.training
    model.eval()
    attribute = _method(method, ig_steps)
    correct = _predicts(model, x, y)
    x, y = x[correct], y[correct]
    original = attribution_map(attribute(model, x, y)).detach()
    report = {}
    for attack in attacks:
        for eps in eps_list:
            if attack == "random":
                x_adv = random_noise_attack(x, eps, seed=seed)
            elif attack == "topk":
                x_adv = topk_attack(
                    model,
                    x,
                    y,
                    eps=eps,
                    k=k,
                    method=attribute,
                    steps=steps,
                    restarts=restarts,
                    seed=seed,
                )
            else:
                raise ValueError(f"unknown attribution attack {attack!r}")
            perturbed = attribution_map(attribute(model, x_adv, y)).detach()
            metrics = {
                "topk": topk_intersection(original, perturbed, k),
                "kendall": kendall_tau(original, perturbed),
                "spearman": spearman_rho(original, perturbed),
                "lens_recall": lens_recall_at_k(original, perturbed, k, w),
                "lens_precision": lens_precision_at_k(original, perturbed, k, w),
                "lens_recall_div": lens_recall_at_k(original, perturbed, k, w, div=True),
                "lens_precision_div": lens_precision_at_k(original, perturbed, k, w, div=True),
                "label_kept": _predicts(model, x_adv, y).float().cpu(),
            }
            row = {name: float(v.float().nanmean()) for name, v in metrics.items()}
            row["n"] = float(len(x))
            report[(attack, float(eps))] = row
    model.train(was_training)
    return report
