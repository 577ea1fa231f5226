"""Robustness grid, AutoAttack against PGD and gradient-masking checks on a real small CNN."""

import dataclasses

import pytest
import torch
from torch import nn

from trainables.evaluate import (
    accuracy,
    gradient_masking_checks,
    make_attack,
    robust_accuracy,
    robustness_grid,
)

torch.set_num_threads(1)
EPS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)


@pytest.fixture(scope="module")
def grid(digits_model, digits):
    model, s = digits_model, digits
    return robustness_grid(model, s.test_x[:200], s.test_y[:200], EPS, ("fgsm", "pgd20"))


def test_accuracy_falls_with_eps_and_reaches_zero(grid):
    for attack in ("fgsm", "pgd20"):
        curve = [grid[(attack, eps)] for eps in EPS]
        assert curve[0] > 0.9
        assert all(b <= a for a, b in zip(curve, curve[1:], strict=False)), curve
        assert curve[-1] == 0.0


def test_pgd_never_beats_fgsm(grid):
    assert all(grid[("pgd20", eps)] <= grid[("fgsm", eps)] for eps in EPS)


def test_a_sound_evaluation_raises_no_masking_flags(grid):
    assert gradient_masking_checks(grid) == []


class _Quantize(nn.Module):
    """Rounds pixels to 4 levels: zero gradient almost everywhere, so gradient attacks stall."""

    def forward(self, x):
        return torch.round(x * 3) / 3


def test_masked_gradients_are_flagged(digits_model, digits):
    model, s = digits_model, digits
    masked = nn.Sequential(_Quantize(), model).eval()
    g = robustness_grid(masked, s.test_x[:100], s.test_y[:100], (0.1, 0.5), ("fgsm", "pgd10"))
    flags = gradient_masking_checks(g)
    assert any("pgd10" in f and "eps=0.5" in f and "expected about 0" in f for f in flags), flags


def test_checks_flag_each_kind_of_violation():
    bad = {
        ("fgsm", 0.1): 0.5,
        ("fgsm", 0.2): 0.6,  # rises with eps
        ("pgd20", 0.1): 0.55,  # PGD above FGSM
        ("pgd20", 0.2): 0.3,
        ("autoattack", 0.1): 0.6,  # AutoAttack above PGD
        ("pgd20", 0.5): 0.2,  # not near zero at a large eps
        ("fgsm", 0.5): 0.2,  # FGSM is exempt from that check
    }
    flags = gradient_masking_checks(bad)
    assert any(f.startswith("fgsm: accuracy rises") for f in flags)
    assert any("pgd20 leaves 0.550" in f and "fgsm" in f for f in flags)
    assert any("autoattack leaves 0.600" in f and "pgd20" in f for f in flags)
    assert any(f.startswith("pgd20: 0.200 accuracy at eps=0.5") for f in flags)
    assert not any(f.startswith("fgsm: 0.200") for f in flags)
    assert len(flags) == 5  # the four above and autoattack above fgsm at eps 0.1


def test_make_attack_names():
    assert make_attack("pgd7", 0.1).steps == 7
    with pytest.raises(ValueError):
        make_attack("cw", 0.1)


def test_autoattack_never_beats_pgd_and_the_grid_shows_no_masking(digits_model, digits):
    model, s = digits_model, digits
    x, y = s.test_x[:32], s.test_y[:32]
    grid = robustness_grid(model, x, y, (0.05, 0.1, 0.5), ("fgsm", "pgd20"))
    pgd50 = robust_accuracy(model, x, y, make_attack("pgd50", 0.1, restarts=2))
    autoattack = robust_accuracy(model, x, y, make_attack("autoattack", 0.1))
    grid[("pgd50", 0.1)], grid[("autoattack", 0.1)] = pgd50, autoattack
    assert autoattack <= pgd50 <= grid[("pgd20", 0.1)] + 1 / 32
    assert pgd50 <= robust_accuracy(model, x, y, make_attack("pgd50", 0.1))
    assert accuracy(model, x, y) > pgd50
    assert gradient_masking_checks(grid) == []


def test_worst_case_robust_accuracy_sees_through_masked_gradients(digits_model, digits):
    """PGD stalls on the quantized model; Square does not: the masking test fires, and the
    worst-case robust accuracy is the black-box one, not PGD's inflated figure."""
    from trainables.evaluate import summarize_outcomes, worst_case_outcomes

    model, s = digits_model, digits
    masked = nn.Sequential(_Quantize(), model).eval()
    x, y = s.val_x[:100], s.val_y[:100]
    out = summarize_outcomes(worst_case_outcomes(masked, x, y, 0.2, pgd_steps=10, queries=200), "v")
    assert out["v_pgd_acc"] > out["v_blackbox_acc"] + 0.2, out
    assert out["v_masking"] == 1.0 and out["v_masking_p"] < 1e-3
    assert out["v_robust_acc"] <= out["v_blackbox_acc"]
    # The same attacks on the plain model: no flag.
    sound = summarize_outcomes(
        worst_case_outcomes(model, x, y, 0.2, pgd_steps=10, queries=200), "v"
    )
    assert sound["v_masking"] == 0.0, sound


def test_the_confirmation_checks_masking_at_its_own_square_budget(digits_model, digits):
    """`test_blackbox_queries` gives the test's worst case a budget of its own: on the quantized
    model the masking test stays quiet at a search round's few queries and fires at the test's."""
    from trainables.config import TrialConfig
    from trainables.trial_eval import confirmation_metrics

    masked = nn.Sequential(_Quantize(), digits_model).eval()
    cfg = TrialConfig(
        dataset="digits", eval_epsilon=0.1, eval_steps=10, blackbox_queries=1, eval_subset=100,
        final_eval_subset=2, final_restarts=1, test_blackbox_queries=200,
    )  # fmt: skip
    search_budget = confirmation_metrics(dataclasses.replace(cfg, test_blackbox_queries=0),
                                         masked, digits)  # fmt: skip
    test_budget = confirmation_metrics(cfg, masked, digits)
    assert search_budget["test_masking"] == 0.0, search_budget["test_masking_p"]
    assert test_budget["test_masking"] == 1.0, test_budget["test_masking_p"]
    assert test_budget["test_robust_acc"] < search_budget["test_robust_acc"] - 0.05


def test_spsa_is_a_real_seeded_attack(digits_model, digits):
    """SPSA estimates the gradient from outputs alone: on an honest model it breaks most images
    at a large eps, fewer at a smaller one, the same ones again with the same seed."""
    from trainables.attacks import SPSA

    model, s = digits_model, digits
    x, y = s.val_x[:100], s.val_y[:100]
    clean = accuracy(model, x, y)
    small = robust_accuracy(model, x, y, SPSA(0.1, iterations=10, samples=16))
    large = robust_accuracy(model, x, y, SPSA(0.2, iterations=10, samples=16))
    assert large < 0.5 < clean - 0.2 and large < small < clean, (clean, small, large)
    spsa = SPSA(0.1, iterations=3, samples=8, seed=5)
    assert torch.equal(spsa(model, x, y), spsa(model, x, y))


def test_masking_p_value_is_an_exact_one_sided_mcnemar_test():
    from trainables.evaluate import masking_p_value

    def outcomes(pgd, bb):
        return torch.tensor(pgd, dtype=torch.bool), torch.tensor(bb, dtype=torch.bool)

    # b = 5 examples only Square breaks, c = 0 the other way: p = 0.5 ** 5
    assert masking_p_value(*outcomes([1] * 5 + [0] * 5, [0] * 5 + [0] * 5)) == pytest.approx(1 / 32)
    # b = 3, c = 1: P(Binomial(4, 1/2) >= 3) = 5/16
    assert masking_p_value(*outcomes([1, 1, 1, 0, 1], [0, 0, 0, 1, 1])) == pytest.approx(5 / 16)
    assert masking_p_value(*outcomes([0, 1], [1, 1])) == 1.0  # PGD stronger: never a flag
