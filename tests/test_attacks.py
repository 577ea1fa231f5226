"""Attacks stay inside the threat model; the AutoAttack wrapper keeps our interface."""

import pytest
import torch
from torch import nn

from trainables.attacks import FGSM, PGD, SPSA, AutoAttack

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


@pytest.mark.parametrize(
    "attack",
    [FGSM(eps=0.1), FGSM(eps=0.1, random_start=True), PGD(eps=0.1, steps=5, restarts=2),
     AutoAttack(eps=0.1), SPSA(eps=0.1, iterations=3, samples=4, chunk=16)],
    ids=["fgsm", "fgsm-rs", "pgd", "autoattack", "spsa"],
)  # fmt: skip
def test_attacks_stay_in_the_eps_ball_and_image_range(model, attack):
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    x_adv = attack(model, x, y)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_autoattack_eps_zero_and_bad_norm(model):
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    assert torch.equal(AutoAttack(eps=0)(model, x, y), x)
    with pytest.raises(ValueError):
        AutoAttack(eps=0.1, norm="l1")


def test_autoattack_fools_a_plain_model_at_a_large_eps(model):
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    x_adv = AutoAttack(eps=0.5)(model, x, y)
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).all()


@pytest.mark.parametrize("classes", [2, 3])
def test_autoattack_runs_with_fewer_than_four_classes(classes):
    """APGD-T's targeted loss needs four logits: with fewer the suite runs without it."""
    torch.manual_seed(0)
    few = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, classes))
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6) % classes
    x_adv = AutoAttack(eps=0.5)(few.eval(), x, y)
    assert (x_adv - x).abs().max() <= 0.5 + 1e-6
    with torch.no_grad():
        assert (few(x_adv).argmax(1) != y).all()
