"""Gradient attributions (saliency, integrated gradients) and LIME maps as per-pixel tensors.

All take images in [0, 1] (the model normalizes inside) and return a tensor shaped like x.
With `create_graph=True` the result stays differentiable w.r.t. x and the parameters, which the
attribution attacks (double backprop) need. The caller chooses the model's mode.
"""

import numpy as np
import torch
from torch import nn


def _class_logit(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x).gather(1, y.view(-1, 1)).squeeze(1)


def path_gradients(
    f, x: torch.Tensor, x_end: torch.Tensor, steps: int, create_graph: bool
) -> torch.Tensor:
    """Mean of grad f along the straight path x -> x_end, midpoint Riemann rule.

    `f` maps a batch to one scalar per example. The midpoint rule is exact for linear f and
    converges faster than the left or right rule, so completeness holds with fewer steps.
    All steps run as one batch of steps * N inputs.
    """
    n = x.shape[0]
    alphas = (torch.arange(steps, device=x.device, dtype=x.dtype) + 0.5) / steps
    alphas = alphas.view(-1, 1, *([1] * (x.dim() - 1)))
    path = (x + alphas * (x_end - x).unsqueeze(0)).reshape(steps * n, *x.shape[1:])
    if not (create_graph and path.requires_grad):
        path = path.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(path).sum(), path, create_graph=create_graph)
    return grad.view(steps, n, *x.shape[1:]).mean(0)


def saliency(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, create_graph: bool = False
) -> torch.Tensor:
    """Gradient of the class logit w.r.t. the input (Simonyan et al., 2014), signed."""
    if not (create_graph and x.requires_grad):
        x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(_class_logit(model, x, y).sum(), x, create_graph=create_graph)
    return grad


def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    baseline: torch.Tensor | None = None,
    steps: int = 50,
    create_graph: bool = False,
) -> torch.Tensor:
    """Integrated gradients of the class logit (Sundararajan et al., 2017); baseline = zeros.

    Completeness: the attributions of each example sum to logit(x) - logit(baseline), up to the
    Riemann error, which shrinks with `steps`.
    """
    baseline = torch.zeros_like(x) if baseline is None else baseline.expand_as(x)
    ys = y.repeat(steps)
    grad = path_gradients(lambda p: _class_logit(model, p, ys), baseline, x, steps, create_graph)
    return (x - baseline) * grad


def lime_attribution_map(segments, weights) -> torch.Tensor:
    """Per-pixel map from a LIME explanation: each pixel gets its superpixel's weight.

    `segments`: integer superpixel ids, (H, W) or (N, H, W) (as `explanation.segments`).
    `weights`: per superpixel, a dict {id: weight}, a list of (id, weight) pairs (as
    `explanation.local_exp[label]`) or a 1-D array indexed by id; for a batch, one per image.
    Superpixels without a weight get 0.
    """
    segments = np.asarray(segments)
    if segments.ndim == 3:
        return torch.stack(
            [lime_attribution_map(s, w) for s, w in zip(segments, weights, strict=True)]
        )
    table = np.zeros(int(segments.max()) + 1, dtype=np.float32)
    if isinstance(weights, dict):
        items = weights.items()
    elif np.asarray(weights).ndim == 2:
        items = weights
    else:
        items = enumerate(np.asarray(weights))
    for seg_id, w in items:
        if 0 <= int(seg_id) < len(table):
            table[int(seg_id)] = w
    return torch.from_numpy(table[segments])
