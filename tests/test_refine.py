"""The refinement loop: each component switched off changes the loss as it should, the masks and
weight maps on hand-made explanations, and the evaluation after the last round."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables import objectives
from trainables.attacks import PGD
from trainables.config import ConfigError, make_trial_config, parse_grid
from trainables.explain import Explanation
from trainables.models import build_model
from trainables.refine import (
    backward,
    lime_weight_maps,
    mask_superpixels,
    penalty_warmup,
    refine,
    training_loss,
)

SPEC = {"in_channels": 1, "num_classes": 10, "image_size": 8, "mean": (0.5,), "std": (0.25,)}


def _batch(n: int = 16):
    torch.manual_seed(0)
    model = build_model("small_cnn", **SPEC).train()
    x, y = torch.rand(n, 1, 8, 8), torch.randint(0, 10, (n,))
    return model, x, y


def _loss(model, x, y, weight_map=None, step: int = 3, **values):
    cfg = make_trial_config(values)
    w = torch.ones(len(x), 1, 8, 8) if weight_map is None else weight_map
    return cfg, training_loss(cfg, model, x, y, w, step)


def _expl(segments, weights) -> Explanation:
    return Explanation(0, np.asarray(segments), np.asarray(weights, float), 0.0, 0.0, 1.0)


# --- the loss with each component off ------------------------------------------------------------


def test_erm_is_plain_cross_entropy():
    model, x, y = _batch()
    _, loss = _loss(model, x, y, method="erm")
    torch.testing.assert_close(loss, F.cross_entropy(model(x), y))


def test_no_attack_and_no_penalty_is_clean_cross_entropy():
    model, x, y = _batch()
    clean = F.cross_entropy(model(x), y)
    for off in ({"train_attack": "none"}, {"epsilon": 0.0}):
        _, loss = _loss(model, x, y, reg_weight=0.0, **off)
        torch.testing.assert_close(loss, clean)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_reg_weight_zero_is_exactly_the_adversarial_cross_entropy(norm):
    model, x, y = _batch()
    cfg, loss = _loss(model, x, y, reg_weight=0.0, epsilon=0.3, attack_norm=norm)
    attack = PGD(0.3, steps=cfg.attack_steps, norm=norm, seed=cfg.seed * 1_000_003 + 3)
    x_adv = attack(model.eval(), x, y)
    expected = F.cross_entropy(model.train()(x_adv), y)
    torch.testing.assert_close(loss, expected)
    assert loss > F.cross_entropy(model(x), y)  # the attack raises the loss


def test_l2_and_linf_training_attacks_differ():
    model, x, y = _batch()
    _, linf = _loss(model, x, y, reg_weight=0.0, epsilon=0.3)
    _, l2 = _loss(model, x, y, reg_weight=0.0, epsilon=0.3, attack_norm="l2")
    assert not torch.isclose(linf, l2)


def test_penalty_adds_weighted_input_gradient_norm():
    model, x, y = _batch()
    clean = F.cross_entropy(model(x), y)
    plain = objectives.input_gradient_penalty(model, x, y)
    off = {"train_attack": "none", "reg_weight": 0.5}
    _, uniform = _loss(model, x, y, reg_weighting="uniform", **off)
    torch.testing.assert_close(uniform, clean + 0.5 * plain)
    # lime weighting: the weight map scales the gradient, so a map of 2 quadruples the penalty
    twos = torch.full((len(x), 1, 8, 8), 2.0)
    _, lime = _loss(model, x, y, weight_map=twos, reg_weighting="lime", **off)
    torch.testing.assert_close(lime, clean + 0.5 * 4 * plain)
    # uniform weighting ignores the map
    _, ignored = _loss(model, x, y, weight_map=twos, reg_weighting="uniform", **off)
    torch.testing.assert_close(ignored, uniform)


@pytest.mark.parametrize("method", ["ig_norm", "ig_sum_norm"])
def test_ig_micro_batches_accumulate_the_whole_batch_gradient(method, monkeypatch):
    """Chunks of 4, 4, 4 and 3 examples give the gradient of the batch of 15 at once (a model
    without BatchNorm, so the chunks see what the batch sees; the attack made deterministic)."""
    monkeypatch.setattr(objectives, "_adversarial", lambda m, x, y, eps, *a: (x + eps).clamp(0, 1))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.Tanh(),
                                torch.nn.Linear(32, 10))  # fmt: skip
    x, y = torch.rand(15, 1, 8, 8), torch.randint(0, 10, (15,))
    w = torch.ones(15, 1, 8, 8)
    grads, losses = [], []
    for micro in (0, 4):
        cfg = make_trial_config(
            {"method": method, "epsilon": 0.1, "baseline_weight": 0.5, "ig_micro_batch": micro}
        )
        model.zero_grad()
        losses.append(backward(cfg, model, x, y, w, step=0))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert not losses[0].requires_grad
    assert losses[1].item() == pytest.approx(losses[0].item(), rel=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    assert grads[0].abs().sum() > 0


def test_ig_micro_batch_leaves_other_methods_whole(monkeypatch):
    seen = []
    monkeypatch.setattr(
        "trainables.refine.training_loss",
        lambda cfg, model, x, *a: seen.append(len(x)) or model(x).sum() * 0,
    )
    model, x, y = _batch(16)
    for method, sizes in (("pgd_at", [16]), ("lime_refine", [16]), ("ig_norm", [4, 4, 4, 4])):
        seen.clear()
        cfg = make_trial_config({"method": method, "ig_micro_batch": 5})
        backward(cfg, model, x, y, torch.ones(16, 1, 8, 8), step=0)
        assert seen == sizes, method


def test_penalty_warms_up_linearly_then_stays_at_full_weight():
    cfg = make_trial_config({"reg_warmup_epochs": 2.0})
    assert [penalty_warmup(cfg, step, 10) for step in (0, 10, 20, 35)] == [0.0, 0.5, 1.0, 1.0]
    assert penalty_warmup(make_trial_config({"reg_warmup_epochs": 0.0}), 0, 10) == 1.0
    # reg_scale multiplies the penalty term only; 0 leaves the adversarial cross-entropy
    model, x, y = _batch()
    clean = F.cross_entropy(model(x), y)
    plain = objectives.input_gradient_penalty(model, x, y)
    cfg = make_trial_config({"train_attack": "none", "reg_weight": 0.5, "reg_weighting": "uniform"})
    w = torch.ones(len(x), 1, 8, 8)
    torch.testing.assert_close(training_loss(cfg, model, x, y, w, 3, 0.5), clean + 0.25 * plain)
    torch.testing.assert_close(training_loss(cfg, model, x, y, w, 3, 0.0), clean)


def test_l2_needs_pgd_and_width_needs_fast_cnn():
    with pytest.raises(ConfigError, match="attack_norm"):
        make_trial_config({"attack_norm": "l2", "train_attack": "fgsm"})
    with pytest.raises(ConfigError, match="model_width"):
        make_trial_config({"model": "small_cnn", "model_width": 16})
    with pytest.raises(ConfigError, match="attack_norm"):
        make_trial_config({"attack_norm": "l1"})


def test_eval_grid_is_parsed_and_checked():
    assert parse_grid("1/255, 0.1") == (("1/255", 1 / 255), ("0.1", 0.1))
    assert parse_grid("") == ()
    for bad in ("0", "2", "1/0", "x", "0.1,,nan"):
        with pytest.raises(ConfigError, match="eval_grid"):
            make_trial_config({"eval_grid": bad})


# --- masks and weight maps on hand-made explanations ---------------------------------------------


def test_mask_superpixels_hides_the_chosen_half():
    images = torch.arange(32, dtype=torch.float32).view(1, 2, 4, 4) / 32
    segments = np.repeat([[0, 0, 1, 1]], 4, axis=0)  # left half 0, right half 1
    expl = [_expl(segments, [-1.0, 1.0])]  # superpixel 0 is the least important
    left, right = (slice(None), slice(None), slice(0, 2)), (slice(None), slice(None), slice(2, 4))

    zero = mask_superpixels(images, expl, 0.5, "least_important", "zero")[0]
    assert (zero[left] == 0).all() and torch.equal(zero[right], images[0][right])
    most = mask_superpixels(images, expl, 0.5, "most_important", "zero")[0]
    assert (most[right] == 0).all() and torch.equal(most[left], images[0][left])
    mean = mask_superpixels(images, expl, 0.5, "least_important", "mean")[0]
    for c in range(2):
        torch.testing.assert_close(mean[c][:, :2], images[0, c][:, :2].mean().expand(4, 2))
    assert torch.equal(mask_superpixels(images, expl, 0.0, "least_important", "mean"), images)
    blur = mask_superpixels(images, expl, 0.5, "least_important", "blur")[0]
    assert torch.equal(blur[right], images[0][right]) and not torch.equal(blur, images[0])


def test_lime_weight_maps_rank_least_important_highest():
    segments = np.array([[0, 1, 2, 2]] * 4)
    maps = lime_weight_maps([_expl(segments, [0.3, -2.0, 5.0])], torch.Size([1, 1, 4, 4]))
    # ranks by weight: superpixel 1 lowest (2.0), 0 middle (1.5), 2 highest (1.0)
    torch.testing.assert_close(maps[0, 0, 0], torch.tensor([1.5, 2.0, 1.0, 1.0]))


# --- the loop ----------------------------------------------------------------------------------


def _never_explain(*_):
    raise AssertionError("LIME ran although it was switched off")


TINY = {
    "rounds": 1, "epochs_per_round": 1, "train_subset": 300, "eval_subset": 120,
    "attack_steps": 1, "lime_backend": "torch", "lime_samples": 30, "seed": 0,
}  # fmt: skip


def test_mask_ratio_zero_adds_no_masked_examples_and_pool_zero_skips_lime(digits):
    n = TINY["train_subset"]
    masked = refine(make_trial_config({**TINY, "pool_size": 16}), splits=digits)
    assert masked["train_examples"] == n + 16
    no_mask = make_trial_config({**TINY, "pool_size": 16, "mask_ratio": 0.0})
    assert refine(no_mask, splits=digits)["train_examples"] == n
    no_pool = make_trial_config({**TINY, "pool_size": 0})
    out = refine(no_pool, splits=digits, explain=_never_explain)
    assert out["train_examples"] == n and out["lime_seconds"] < 0.5


def test_confirmation_evaluates_on_test_with_the_final_evaluation(digits):
    cfg = make_trial_config({
        **TINY, "method": "pgd_at", "train_subset": 800, "epochs_per_round": 3, "epsilon": 0.1,
        "attack_steps": 7, "stage": "confirmation",
        "eval_grid": "0.05,0.1,0.2,0.3", "final_grid": "0.1",
        "final_eval_subset": 16, "final_restarts": 2, "attr_images": 4, "attr_steps": 2,
    })  # fmt: skip
    out = refine(cfg, splits=digits)
    for attack in ("fgsm", "pgd20"):
        for tag in ("eps0p05", "eps0p1", "eps0p2", "eps0p3"):
            assert 0 <= out[f"test_{attack}_{tag}"] <= 1
    assert {"test_pgd50_eps0p1", "test_autoattack_eps0p1", "test_pgd20_eps0p5"} <= out.keys()
    assert out["test_pgd50_acc"] == out["test_pgd50_eps0p1"]
    assert out["test_autoattack_acc"] <= out["test_pgd20_eps0p1"] + 0.2  # same order as PGD
    assert out["test_clean_acc"] > 0.3 and out["test_pgd20_eps0p5"] <= 0.05
    assert out["test_robust_acc"] <= min(out["test_pgd_acc"], out["test_blackbox_acc"])
    assert out["test_masking_violations"] == 0, out["test_masking_report"]
    assert out["test_masking_report"] == "ok"
    assert out["test_masking"] == float(out["test_masking_p"] < 0.05)
    for method in ("saliency", "ig", "lime"):
        for attack in ("random", "topk"):
            assert -1 <= out[f"test_attr_{method}_{attack}_eps0p1_kendall"] <= 1
    assert "test_cifar10c_mean" not in out  # digits: no CIFAR-10-C
    assert "val_clean_acc" in out  # per-round validation metrics as in the search
    # what each part of the test cost, for the study's cost table
    parts = ("worst_case", "fgsm", "pgd20", "pgd50", "autoattack", "attribution")
    assert all(out[f"test_seconds_{part}"] > 0 for part in parts)


def test_search_trials_never_read_the_test_split(digits):
    """Structural: a search trial's splits hold no test tensors; touching them fails loudly."""
    from trainables.data import SealedSplitError, load_splits
    from trainables.refine import load_trial_splits

    sealed = load_trial_splits(make_trial_config(TINY))
    assert sealed._test is None
    out = refine(make_trial_config({**TINY, "pool_size": 0}), splits=sealed)
    assert not any(k.startswith("test_") for k in out) and 0 <= out["val_robust_acc"] <= 1
    confirm = make_trial_config({**TINY, "pool_size": 0, "stage": "confirmation"})
    with pytest.raises(SealedSplitError):
        refine(confirm, splits=load_splits("digits", with_test=False))
    assert load_trial_splits(confirm).test_x.shape[0] == 450


def test_search_trials_report_validation_metrics_only(digits):
    out = refine(make_trial_config({**TINY, "pool_size": 0, "eval_grid": "0.1"}), splits=digits)
    assert {"val_clean_acc", "val_pgd_acc", "val_blackbox_acc", "val_masking"} <= out.keys()
    assert not any(k.startswith(("fgsm", "test_", "masking")) for k in out)


def test_augmentation_in_the_loop_is_seeded(digits):
    values = {**TINY, "pool_size": 8, "augment": "flip_translate"}
    a = refine(make_trial_config(values), splits=digits)
    b = refine(make_trial_config(values), splits=digits)
    plain = refine(make_trial_config({**values, "augment": "none"}), splits=digits)
    assert a["train_loss"] == b["train_loss"] != plain["train_loss"]


def test_learning_rate_schedules():
    import itertools

    """linear: from lr down to 0; one_cycle: up from lr/peak to lr over the first fifth, then
    down to 0 (a base trained from scratch)."""
    from trainables.config import make_trial_config
    from trainables.refine import ONE_CYCLE_PEAK, learning_rate

    linear = make_trial_config({"lr": 0.2})
    cycle = make_trial_config({"lr": 0.2, "lr_schedule": "one_cycle"})
    total = 100
    assert learning_rate(linear, 0, total) == 0.2 and learning_rate(linear, 50, total) == 0.1
    rates = [learning_rate(cycle, step, total) for step in range(total)]
    peak = round(ONE_CYCLE_PEAK * total)
    assert rates[0] == pytest.approx(0.2 / peak) and max(rates) == pytest.approx(0.2)
    assert rates.index(max(rates)) == peak - 1
    assert all(a <= b for a, b in itertools.pairwise(rates[:peak]))
    assert all(a >= b for a, b in itertools.pairwise(rates[peak - 1 :]))
    assert rates[-1] == pytest.approx(0.2 / (total - peak))


def test_label_smoothing_enters_the_training_loss():
    from trainables.config import make_trial_config
    from trainables.refine import training_loss

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    w = torch.ones(8, 1, 8, 8)
    for smoothing in (0.0, 0.2):
        cfg = make_trial_config({"method": "erm", "label_smoothing": smoothing})
        expected = F.cross_entropy(model(x), y, label_smoothing=smoothing)
        assert training_loss(cfg, model, x, y, w, 0).item() == pytest.approx(expected.item())
