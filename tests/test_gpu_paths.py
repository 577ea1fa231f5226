"""The GPU path of the loop (data on the device once a round, losses checked for NaN every few
steps, random draws on the device, opt-in bf16 autocast) against what the CPU did before it:
the same numbers, bit for bit, on the CPU. The CUDA tests run only where torch sees a GPU."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables import augment, objectives
from trainables import refine as refine_module
from trainables.attacks import PGD, _generator, _random_start
from trainables.config import ConfigError, make_trial_config
from trainables.data import subset
from trainables.explain import explain_images
from trainables.refine import (
    FINITE_CHECK_EVERY,
    _explain_pool,
    backward,
    initial_model,
    penalty_warmup,
    refine,
    training_loss,
    uses_lime,
)

torch.set_num_threads(1)  # as the other model tests: 2 shared cores, one thread each

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]  # fmt: skip
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

# 308 examples (300 + an 8-image LIME pool) in batches of 16: 20 steps an epoch, so the NaN check
# runs both mid-epoch (after step 16) and at the epoch's end.
LOOP = {
    "rounds": 2, "epochs_per_round": 2, "train_subset": 300, "batch_size": 16, "pool_size": 8,
    "lime_backend": "torch", "lime_samples": 30, "attack_steps": 2, "ig_steps": 3,
    "eval_subset": 20, "eval_steps": 2, "blackbox_queries": 10, "seed": 3,
}  # fmt: skip


def _explainer(cfg):
    def explain(model, images, labels, segments):
        return explain_images(
            model, images, labels, segments, backend=cfg.lime_backend,
            num_samples=cfg.lime_samples, seed=cfg.seed,
        )  # fmt: skip

    return explain


def _old_flip_translate(tensors, gen, pad=4):
    """flip_translate as it drew before (shift, then flip, on the CPU generator), written
    image by image: a reflect-padded crop at the drawn shift, mirrored when flipped."""
    n, _, h, w = tensors[0].shape
    shift = torch.randint(0, 2 * pad + 1, (2, n), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = []
    for t in tensors:
        padded = F.pad(t, (pad, pad, pad, pad), mode="reflect")
        crops = [padded[i, :, r : r + h, c : c + w] for i, (r, c) in enumerate(shift.T.tolist())]
        flips = flip.tolist()
        out.append(torch.stack([c.flip(-1) if f else c for c, f in zip(crops, flips, strict=True)]))
    return tuple(out)


def _old_loop(cfg, splits, explain):
    """The training loop as it was before the GPU path, on the CPU and without evaluation:
    batches indexed on the host, every step's loss read and checked, one generator for the
    batch order and the augmentation. Returns each round's (mean loss, model state, momenta)."""
    train_x, train_y = subset(splits.train_x, splits.train_y, cfg.train_subset, cfg.seed)
    # channels_last, as refine() lays out every model: another layout rounds differently
    model = initial_model(cfg, splits).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
    )
    step, rounds = 0, []
    for round_ in range(cfg.rounds):
        xs, ys, maps = train_x, train_y, torch.ones(len(train_x), 1, *train_x.shape[-2:])
        if uses_lime(cfg):
            idx, masked, pool_maps, pool_y = _explain_pool(
                cfg, model, explain, train_x, train_y, round_, 0, 1
            )
            maps[idx] = pool_maps
            if cfg.mask_ratio > 0:
                xs, ys = torch.cat([xs, masked]), torch.cat([ys, pool_y])
                maps = torch.cat([maps, pool_maps])
        model.train()
        steps_per_epoch = math.ceil(len(xs) / cfg.batch_size)
        total_steps = cfg.rounds * cfg.epochs_per_round * steps_per_epoch
        losses = []
        for epoch in range(cfg.epochs_per_round):
            gen = torch.Generator().manual_seed(cfg.seed * 104729 + round_ * 1000 + epoch)
            order = torch.randperm(len(xs), generator=gen)
            for b in range(steps_per_epoch):
                batch = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                x, y, w = xs[batch], ys[batch], maps[batch]
                if augment.resolve(cfg.augment, cfg.dataset) == "flip_translate":
                    # the function itself, its draws checked against the old ones below (a
                    # stacked copy has other strides, which oneDNN's kernels round differently)
                    x, w = augment.flip_translate((x, w), gen)
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * max(0.0, 1 - step / total_steps)
                opt.zero_grad(set_to_none=True)
                reg_scale = penalty_warmup(cfg, step, steps_per_epoch)
                loss = backward(cfg, model, x, y, w, step, reg_scale)
                assert torch.isfinite(loss)
                opt.step()
                losses.append(loss.item())
                step += 1
        momenta = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
        rounds.append((float(np.mean(losses)), copy.deepcopy(model.state_dict()), momenta))
    return rounds


# --- on the CPU: the same numbers as before -----------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"method": "lime_refine", "augment": "flip_translate"},
        {"method": "lime_refine", "attack_norm": "l2"},
        {"method": "pgd_at"},
        {"method": "trades"},
    ],
    ids=["lime_refine-flip", "lime_refine-l2", "pgd_at", "trades"],
)
def test_the_loop_gives_the_old_loops_numbers_bit_for_bit(digits, values):
    cfg = make_trial_config({**LOOP, **values})
    explain = _explainer(cfg)
    reported = []  # copies: the reported state holds the live weights, which train on
    refine(
        cfg, splits=digits, explain=explain,
        report=lambda m, s: reported.append((m, copy.deepcopy(s))),
    )  # fmt: skip
    expected = _old_loop(cfg, digits, explain)
    assert len(reported) == len(expected) == cfg.rounds
    for (metrics, state), (loss, weights, momenta) in zip(reported, expected, strict=True):
        assert metrics["train_loss"] == loss
        assert state["model"].keys() == weights.keys()
        for k, v in weights.items():
            assert torch.equal(state["model"][k], v), k
        buffers = [s["momentum_buffer"] for s in state["optimizer"]["state"].values()]
        assert all(torch.equal(a, b) for a, b in zip(buffers, momenta, strict=True))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_starts_on_the_cpu_are_the_cpu_generators_stream(norm):
    """Drawn on x's device now; on the CPU that is the stream the attack drew (and copied) from
    a seeded CPU generator before, so CPU attacks and their numbers are unchanged."""
    x, eps = torch.rand(5, 3, 4, 4), 0.2
    got = _random_start(x, eps, norm, _generator(x, 7))
    old = torch.Generator().manual_seed(7)
    if norm == "linf":
        expected = (2 * torch.rand(x.shape, generator=old) - 1) * eps
    else:
        g, r = torch.randn(x.shape, generator=old), torch.rand(5, generator=old)
        expected = g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * (eps * r).view(-1, 1, 1, 1)
    assert _generator(x, 7).device == x.device
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_flip_translate_on_the_cpu_draws_as_before():
    """The same images out and the same generator state after (the loop draws its batch order
    and the augmentation from one generator on the CPU, so both must stay in step)."""
    x, w = torch.rand(6, 3, 32, 32), torch.rand(6, 1, 32, 32)  # 32x32: pad 4, as it was
    new, old = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for a, b in zip(
        augment.flip_translate((x, w), new), _old_flip_translate((x, w), old), strict=True
    ):
        assert torch.equal(a, b)
    assert torch.equal(torch.rand(3, generator=new), torch.rand(3, generator=old))


def test_amp_none_is_the_float32_loss_bit_for_bit(digits_model, digits):
    """amp "none" (the default) computes lime_refine's and pgd_at's loss exactly as written out
    here: the attack, the cross-entropy on its example and the penalty, all in float32."""
    model = copy.deepcopy(digits_model)
    x, y = digits.train_x[:32], digits.train_y[:32]
    w = 1 + torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = make_trial_config({"reg_weight": 0.5, "amp": "none"})
    attack = PGD(cfg.epsilon, steps=cfg.attack_steps, seed=cfg.seed * 1_000_003 + 4)
    x_adv = attack(model.eval(), x, y)
    expected = F.cross_entropy(model.train()(x_adv), y)
    expected = expected + 0.5 * 0.5 * objectives.input_gradient_penalty(model, x, y, w)
    assert torch.equal(training_loss(cfg, model, x, y, w, 4, reg_scale=0.5), expected)
    pgd_at = make_trial_config({"method": "pgd_at", "amp": "none"})
    x_adv = PGD(0.1, steps=pgd_at.attack_steps, seed=4)(model.eval(), x, y)
    expected = F.cross_entropy(model.train()(x_adv), y)
    assert torch.equal(training_loss(pgd_at, model, x, y, w, 4), expected)


def test_amp_takes_none_or_bf16():
    assert make_trial_config({}).amp == "none"
    assert make_trial_config({"amp": "bf16"}).amp == "bf16"
    with pytest.raises(ConfigError, match="trial.amp: must be one of"):
        make_trial_config({"amp": "fp16"})


# --- bf16 autocast: close to float32, the penalty in float32 --------------------------------------

# Measured on the CPU (8 digits batches of 64, reg_weight 0.5): |bf16 - fp32| / fp32 of one
# step's loss is at most 0.7% for a trained small_cnn and 1.7% for a freshly initialized
# fast_cnn (BatchNorm; pgd_at); 3% leaves room for other batches and for the GPU's kernels.
BF16_RTOL = 0.03


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "values",
    [
        {"method": "lime_refine"},
        {"method": "lime_refine", "attack_norm": "l2"},
        {"method": "pgd_at"},
    ],
    ids=["lime_refine", "lime_refine-l2", "pgd_at"],
)
def test_bf16_loss_is_within_tolerance_of_float32(digits_model, digits, device, values):
    x, y = digits.train_x[:64].to(device), digits.train_y[:64].to(device)
    w = (1 + torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))).to(device)
    losses = {}
    for amp in ("none", "bf16"):
        cfg = make_trial_config({**values, "amp": amp, "reg_weight": 0.5})
        model = copy.deepcopy(digits_model).to(device)
        losses[amp] = training_loss(cfg, model, x, y, w, step=1)
    assert losses["bf16"].dtype == torch.float32
    assert losses["bf16"].item() != losses["none"].item()  # autocast did run
    assert losses["bf16"].item() == pytest.approx(losses["none"].item(), rel=BF16_RTOL)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_runs_the_attack_in_bf16_and_the_penalty_in_float32(
    digits_model, digits, device, monkeypatch
):
    """Every layer's output dtype, tagged with where it was computed: the attack's and the
    adversarial example's passes in bf16, every pass of the penalty (so its double backward,
    which follows the forward's dtypes) in float32, outside autocast."""
    model = copy.deepcopy(digits_model).to(device)
    now, seen, autocast_in_penalty, penalties = ["attack and cross-entropy"], [], [], []
    for layer in model.modules():
        if isinstance(layer, torch.nn.Conv2d | torch.nn.Linear):
            layer.register_forward_hook(lambda m, i, out: seen.append((now[0], out.dtype)))
    penalty = objectives.input_gradient_penalty

    def recorded_penalty(*args, **kwargs):
        now[0] = "penalty"
        autocast_in_penalty.append(torch.is_autocast_enabled(device))
        penalties.append(penalty(*args, **kwargs))
        return penalties[-1]

    monkeypatch.setattr(objectives, "input_gradient_penalty", recorded_penalty)
    cfg = make_trial_config({"amp": "bf16", "reg_weight": 0.5, "attack_steps": 3})
    x, y = digits.train_x[:16].to(device), digits.train_y[:16].to(device)
    training_loss(cfg, model, x, y, torch.ones(16, 1, 8, 8, device=device), step=0)
    layers = sum(isinstance(m, torch.nn.Conv2d | torch.nn.Linear) for m in model.modules())
    passes = [("attack and cross-entropy", torch.bfloat16)] * layers * (cfg.attack_steps + 1)
    assert seen == passes + [("penalty", torch.float32)] * layers
    assert autocast_in_penalty == [False]
    assert len(penalties) == 1 and penalties[0].dtype == torch.float32


# --- the NaN check every FINITE_CHECK_EVERY steps ------------------------------------------------


@pytest.mark.parametrize(
    ("bad_step", "value", "steps_run"),
    [(21, float("nan"), 2 * FINITE_CHECK_EVERY), (36, float("inf"), 38)],
    ids=["caught-mid-epoch", "caught-at-epoch-end"],
)
def test_a_non_finite_loss_stops_the_loop_at_the_next_check(
    digits, monkeypatch, bad_step, value, steps_run
):
    """300 examples in batches of 8: 38 steps an epoch, checked after steps 16 and 32 and at
    the epoch's end; the error names the step whose loss went bad, as the per-step check did."""
    calls = []

    def diverging(cfg, model, x, y, w, step, reg_scale):
        calls.append(step)
        return torch.tensor(value) if step == bad_step else torch.tensor(1.0)

    monkeypatch.setattr(refine_module, "backward", diverging)
    cfg = make_trial_config({**LOOP, "pool_size": 0, "batch_size": 8})
    message = (
        f"loss became {value} at round 0, step {bad_step}: lower lr, reg_weight or baseline_weight"
    )
    with pytest.raises(FloatingPointError) as error:
        refine(cfg, splits=digits)
    assert str(error.value) == message
    assert len(calls) == steps_run


def test_another_ranks_divergence_stops_this_rank_too(digits, monkeypatch):
    flags = []

    def second_check_fails(flag, world, device):
        flags.append(flag)
        return len(flags) == 2

    monkeypatch.setattr(refine_module.distributed, "on_any_rank", second_check_fails)
    cfg = make_trial_config({**LOOP, "pool_size": 0, "batch_size": 8})
    message = "loss became non-finite on another rank at round 0, by step 31: lower lr"
    with pytest.raises(FloatingPointError, match=f"^{message}, reg_weight or baseline_weight$"):
        refine(cfg, splits=digits)
    assert flags == [False, False]


# --- on a GPU -----------------------------------------------------------------------------------


@needs_cuda
def test_random_starts_and_augmentation_draw_on_the_gpu():
    x = torch.rand(8, 3, 8, 8, device="cuda")
    gen = _generator(x, 3)
    assert gen.device.type == "cuda"
    start = _random_start(x, 0.1, "linf", gen)
    assert start.device == x.device
    assert torch.equal(start, _random_start(x, 0.1, "linf", _generator(x, 3)))
    (a,) = augment.flip_translate((x,), torch.Generator(device="cuda").manual_seed(0))
    (b,) = augment.flip_translate((x,), torch.Generator(device="cuda").manual_seed(0))
    assert a.device == x.device and torch.equal(a, b)
    with pytest.raises(RuntimeError):  # a CPU generator for CUDA images: refused, not copied
        augment.flip_translate((x,), torch.Generator().manual_seed(0))


@needs_cuda
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_a_gpu_training_step_never_waits_for_the_host(digits_model, digits, amp):
    """One step as refine() runs it (device indexing, augmentation, PGD and the penalty, the
    optimizer, the loss stored on the device) under CUDA's sync debug mode, which raises on any
    operation that makes the host wait for the GPU."""
    model = copy.deepcopy(digits_model).cuda().to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    cfg = make_trial_config({"amp": amp, "reg_weight": 0.5})
    xs, ys = digits.train_x[:256].cuda(), digits.train_y[:256].cuda()
    maps = torch.ones(256, 1, 8, 8, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    order = torch.randperm(256, generator=torch.Generator().manual_seed(0)).cuda()
    losses = torch.zeros(4, device="cuda")

    def one_step(i):
        batch = order[64 * i : 64 * (i + 1)]
        x, w = augment.flip_translate((xs[batch], maps[batch]), gen)
        opt.zero_grad(set_to_none=True)
        losses[i] = backward(cfg, model, x, ys[batch], w, i, 0.5)
        opt.step()

    one_step(0)  # warm-up: cuDNN's and the allocator's first-use work
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(1, 4):
            one_step(i)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(losses).all()


@needs_cuda
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_the_loop_runs_on_a_gpu(digits, amp):
    cfg = make_trial_config({**LOOP, "augment": "flip_translate", "amp": amp})
    out = refine(cfg, splits=digits, device="cuda")
    assert math.isfinite(out["train_loss"]) and 0 <= out["val_robust_acc"] <= 1
    assert out["train_examples"] == 308
