"""Clean and adversarial accuracy, always in eval() mode and in batches."""

from collections.abc import Callable

import torch
from torch import nn

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


def robust_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack, batch_size: int = 256
) -> float:
    """Accuracy on attack(model, x, y), with the model attacked in eval() mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        x_adv = attack(model, xb, yb)
        with torch.inference_mode():
            correct += (model(x_adv).argmax(1) == yb).sum().item()
    model.train(was_training)
    return correct / max(len(x), 1)
