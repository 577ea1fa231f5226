"""Training losses: IG completeness, gradients reach every parameter, and each loss can be
minimized; on real digits with a small CNN."""

import pytest
import torch
import torch.nn.functional as F

from trainables.attacks import PGD
from trainables.models import build_model
from trainables.objectives import (
    ig_norm_loss,
    ig_sum_norm_loss,
    input_gradient_penalty,
    loss_integrated_gradients,
    trades_loss,
)

torch.set_num_threads(1)

LOSSES = {
    "ig_norm": lambda m, x, y: ig_norm_loss(m, x, y, lam=0.1, eps=0.1, attack_steps=5, steps=5),
    "ig_norm_zeros": lambda m, x, y: ig_norm_loss(
        m, x, y, lam=0.1, eps=0.1, attack_steps=5, steps=5, baseline="zeros"
    ),
    "ig_sum_norm": lambda m, x, y: ig_sum_norm_loss(
        m, x, y, beta=0.1, eps=0.1, attack_steps=5, steps=5
    ),
    "trades": lambda m, x, y: trades_loss(m, x, y, beta=6.0, eps=0.1, steps=5),
    "input_gradient": lambda m, x, y: input_gradient_penalty(m, x, y),
}


def _model(s, arch="small_cnn"):
    return build_model(arch, in_channels=1, num_classes=10, image_size=8, mean=s.mean, std=s.std)


def test_loss_ig_completeness(digits_model, digits):
    x, y = digits.test_x[:32], digits.test_y[:32]
    x_adv = PGD(eps=0.3, steps=10)(digits_model, x, y)
    ig = loss_integrated_gradients(digits_model, x, x_adv, y, steps=50, create_graph=False)
    with torch.no_grad():
        gap = F.cross_entropy(digits_model(x_adv), y, reduction="none") - F.cross_entropy(
            digits_model(x), y, reduction="none"
        )
    assert gap.min() > 0.1  # the attack moved the loss, so the relative error is meaningful
    assert ((ig.flatten(1).sum(1) - gap).abs() / gap.abs()).max() < 0.01


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("arch", ["small_cnn", "fast_cnn"])
def test_gradients_reach_every_parameter_and_mode_is_kept(name, arch, digits):
    torch.manual_seed(0)
    model = _model(digits, arch).train()
    loss = LOSSES[name](model, digits.train_x[:16], digits.train_y[:16])
    assert loss.dim() == 0 and torch.isfinite(loss)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert all(g.abs().sum() > 0 for g in grads)
    assert model.training


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_each_loss_goes_down_when_minimized(name, digits):
    torch.manual_seed(0)
    model = _model(digits)
    x, y = digits.train_x[:64], digits.train_y[:64]
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    losses = []
    for _ in range(20):
        loss = LOSSES[name](model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_regularizers_add_to_the_cross_entropy(digits_model, digits):
    x, y = digits.test_x[:32], digits.test_y[:32]
    xent = F.cross_entropy(digits_model(x), y)
    kw = dict(eps=0.1, attack_steps=5, steps=5)
    torch.testing.assert_close(ig_norm_loss(digits_model, x, y, lam=0.0, **kw), xent)
    assert ig_norm_loss(digits_model, x, y, lam=1.0, **kw) > xent
    torch.testing.assert_close(trades_loss(digits_model, x, y, beta=0.0, eps=0.3, steps=3), xent)
    assert trades_loss(digits_model, x, y, beta=6.0, eps=0.3, steps=3) > xent
    # beta = 0 is PGD training: the loss on x' from the attack is above the clean loss
    assert ig_sum_norm_loss(digits_model, x, y, beta=0.0, **kw) > xent
    with pytest.raises(ValueError):
        ig_norm_loss(digits_model, x, y, lam=1.0, baseline="ones", **kw)


def test_input_gradient_penalty_weights(digits_model, digits):
    x, y = digits.test_x[:16], digits.test_y[:16]
    plain = input_gradient_penalty(digits_model, x, y)
    assert plain > 0
    torch.testing.assert_close(
        input_gradient_penalty(digits_model, x, y, torch.full_like(x, 2.0)), 4 * plain
    )
    assert input_gradient_penalty(digits_model, x, y, torch.zeros(16, 1, 8, 8)) == 0
    # a map that keeps only the left half penalizes only the gradient there
    left = torch.zeros(1, 1, 8, 8)
    left[..., :4] = 1
    x_ = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(digits_model(x_), y, reduction="sum"), x_)
    expected = g[..., :4].pow(2).flatten(1).sum(1).mean()
    torch.testing.assert_close(input_gradient_penalty(digits_model, x, y, left), expected)
