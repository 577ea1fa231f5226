"""The LIME-guided refinement loop, and the baselines trained by the same loop.

One round: explain a pool of training images with LIME, hide the superpixels the explanations
rank lowest (`mask_ratio`), then train `epochs_per_round` epochs on the clean and masked images
with PGD adversarial training at `epsilon` and an input-gradient penalty (`reg_weight`, ramped up
over the first `reg_warmup_epochs`) that is weighted toward the superpixels LIME marks
irrelevant; evaluate; report and checkpoint.

`refine` is plain PyTorch (callable directly, as the tests and the overhead benchmark do);
trainables/worker.py runs it inside a Ray Train worker, with the explanation pool on Ray actors,
and keeps its checkpoints.
"""

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables import augment, distributed, objectives
from trainables.attacks import FGSM, PGD
from trainables.base import fit_base_weights, load_base_weights
from trainables.config import IG_METHODS, TrialConfig
from trainables.data import Splits, load_splits, subset, subset_index
from trainables.evaluate import summarize_outcomes, worst_case_outcomes
from trainables.explain import Explanation, explain_images
from trainables.models import build_model, fit_whitening
from trainables.segmentation import segment_batch, superpixel_defaults

# explain(model, images, labels, segments) -> one Explanation per image, in order
Explainer = Callable[[nn.Module, torch.Tensor, torch.Tensor, np.ndarray], list[Explanation]]
# report(metrics, state): state is the checkpoint to keep (None: no checkpoint this time)
Reporter = Callable[[dict[str, Any], dict[str, Any] | None], None]

# The loop checks its losses for NaN or inf every this many steps and at each epoch's end, not
# every step: a check reads them on the host, which waits for the GPU to finish its queued work.
FINITE_CHECK_EVERY = 16
WHITENING_IMAGES = 5000  # what a patch covariance of 12 dimensions needs, and cheap
ONE_CYCLE_PEAK = 0.2  # "one_cycle" reaches its peak learning rate after this share of the steps


# --- explanations -> masks and weight maps --------------------------------------------------


def _hidden_superpixels(weights: np.ndarray, ratio: float, strategy: str) -> np.ndarray:
    """Superpixel ids to hide: the `ratio` fraction ranked lowest (or highest) by LIME weight."""
    count = int(round(ratio * len(weights)))
    order = np.argsort(weights, kind="stable")  # least important (most negative) first
    if strategy == "most_important":
        order = order[::-1]
    return order[:count].copy()  # a reversed view has negative strides: torch rejects it


def mask_superpixels(
    images: torch.Tensor,
    explanations: Sequence[Explanation],
    ratio: float,
    strategy: str = "least_important",
    fill: str = "mean",
) -> torch.Tensor:
    """Images with the chosen superpixels replaced by their mean colour, zeros or a blur (its
    sigma grows with the image: superpixel_defaults)."""
    masked = images.clone()
    blurred = None
    if fill == "blur":
        # Imported here: torchvision pulls in torch._dynamo, about 2 s of start-up in every Ray
        # process that imports this module (measured with python -X importtime).
        import torchvision.transforms.functional as TF

        sigma = superpixel_defaults(*images.shape[-2:]).blur_sigma
        kernel = 2 * round(1.5 * sigma) + 1  # 5 at sigma 1.5
        blurred = TF.gaussian_blur(images, kernel_size=kernel, sigma=sigma)
    for i, expl in enumerate(explanations):
        # a copy: segments that came back from a Ray actor are read-only NumPy arrays
        segments = torch.tensor(expl.segments, dtype=torch.long)
        hide = torch.as_tensor(_hidden_superpixels(expl.weights, ratio, strategy))
        hidden = torch.isin(segments, hide)  # (H, W)
        if not hidden.any():
            continue
        if fill == "zero":
            replacement = torch.zeros_like(images[i])
        elif fill == "blur":
            replacement = blurred[i]
        else:  # per-superpixel mean colour, as LIME's own hide_color=None
            flat = segments.flatten()
            k = int(flat.max()) + 1
            sums = torch.zeros(images.shape[1], k).index_add_(1, flat, images[i].flatten(1))
            counts = torch.bincount(flat, minlength=k).clamp_min(1)
            replacement = (sums / counts)[:, flat].view_as(images[i])
        masked[i] = torch.where(hidden, replacement, images[i])
    return masked


def lime_weight_maps(explanations: Sequence[Explanation], shape: torch.Size) -> torch.Tensor:
    """Per-pixel penalty weights in [1, 2]: 2 on the superpixel LIME ranks least important,
    1 on the most important, linear in rank between (rank, not raw weight: scale-free)."""
    maps = torch.ones(len(explanations), 1, *shape[-2:])
    for i, expl in enumerate(explanations):
        k = len(expl.weights)
        ranks = np.empty(k)
        ranks[np.argsort(expl.weights, kind="stable")] = np.arange(k)
        per_segment = 2.0 - ranks / max(k - 1, 1)
        maps[i, 0] = torch.as_tensor(per_segment[expl.segments], dtype=torch.float32)
    return maps


# --- one training step per method -------------------------------------------------------------


def _train_attack(cfg: TrialConfig, step: int):
    seed = cfg.seed * 1_000_003 + step  # a fresh random start every step, reproducibly
    if cfg.train_attack == "none" or cfg.epsilon == 0:
        return None
    if cfg.train_attack == "fgsm":
        return FGSM(cfg.epsilon, random_start=True, seed=seed)
    return PGD(cfg.epsilon, steps=cfg.attack_steps, norm=cfg.attack_norm, seed=seed)


def _autocast(cfg: TrialConfig, device: torch.device):
    """bfloat16 autocast where the trial asks for it (amp "bf16"); otherwise it changes nothing.

    Parameters and their gradients stay float32 (autocast casts per op, and a cast's backward
    returns float32); bf16 has float32's exponent range, so no loss scaling is needed.
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16")


def _adversarial(model: nn.Module, attack, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Attack in eval() mode so the attack's own forward passes do not move BatchNorm stats."""
    if attack is None:
        return x
    model.eval()
    x_adv = attack(model, x, y)
    model.train()
    return x_adv


def training_loss(
    cfg: TrialConfig,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    weight_map: torch.Tensor,
    step: int,
    reg_scale: float = 1.0,
) -> torch.Tensor:
    """The loss of one batch for the trial's method; reg_scale multiplies reg_weight (warm-up).

    With amp "bf16", lime_refine's and pgd_at's attack (its forward and backward passes) and
    the forward pass on the adversarial example (and so its backward) run in bfloat16: the
    attack is most of a step's work and uses only its gradient's sign or direction, and the
    training pass is plain mixed-precision training. The cross-entropy itself runs in float32 on
    bf16 logits (autocast's float32 list). The input-gradient penalty, a double backward through
    gradients whose small terms bf16's 8-bit mantissa would round away, runs outside autocast.
    """
    smoothing = cfg.label_smoothing
    if cfg.method == "erm":
        return F.cross_entropy(model(x), y, label_smoothing=smoothing)
    if cfg.method == "pgd_at":
        attack = PGD(cfg.epsilon, steps=cfg.attack_steps, norm=cfg.attack_norm, seed=step)
        with _autocast(cfg, x.device):
            x_adv = _adversarial(model, attack, x, y)
            return F.cross_entropy(model(x_adv), y, label_smoothing=smoothing)
    if cfg.method == "ig_norm":
        return objectives.ig_norm_loss(
            model, x, y, lam=cfg.baseline_weight, steps=cfg.ig_steps, eps=cfg.epsilon,
            attack_steps=cfg.attack_steps,
        )  # fmt: skip
    if cfg.method == "ig_sum_norm":
        return objectives.ig_sum_norm_loss(
            model, x, y, beta=cfg.baseline_weight, steps=cfg.ig_steps, eps=cfg.epsilon,
            attack_steps=cfg.attack_steps,
        )  # fmt: skip
    if cfg.method == "trades":
        return objectives.trades_loss(
            model, x, y, beta=cfg.baseline_weight, eps=cfg.epsilon, steps=cfg.attack_steps
        )
    # lime_refine: adversarial cross-entropy + LIME-weighted input-gradient penalty
    with _autocast(cfg, x.device):
        x_adv = _adversarial(model, _train_attack(cfg, step), x, y)
        loss = F.cross_entropy(model(x_adv), y, label_smoothing=smoothing)
    if cfg.reg_weight > 0 and reg_scale > 0:  # float32: outside autocast
        weights = weight_map if cfg.reg_weighting == "lime" else None
        loss = loss + reg_scale * cfg.reg_weight * objectives.input_gradient_penalty(
            model, x, y, weights
        )
    return loss


def backward(
    cfg: TrialConfig,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    weight_map: torch.Tensor,
    step: int,
    reg_scale: float = 1.0,
) -> torch.Tensor:
    """The batch's training loss, back-propagated into the parameters' .grad; returned detached.

    IG-NORM and IG-SUM-NORM run in chunks of at most ig_micro_batch examples (balanced: 65 at 64
    is 33 + 32, never 64 + 1), each chunk's loss weighted by its share of the batch (gradient
    accumulation: the batch's gradient in a chunk's memory). Why: their loss holds the
    double-backward graph of ig_steps x batch images, which two CIFAR-10 trials at batch 256
    could not hold on 24 GB. Sound because every loss is a mean over its examples and no attack
    calls .backward() (they take input gradients with autograd.grad), so nothing else adds to
    .grad. The step then differs from the whole batch's in BatchNorm (each chunk normalized by
    its own statistics, which also update the running ones once per chunk) and in PGD's random
    starts (drawn per chunk).
    """
    chunks = 1
    if cfg.method in IG_METHODS and cfg.ig_micro_batch:
        chunks = math.ceil(len(x) / cfg.ig_micro_batch)
    total = torch.zeros((), device=x.device)
    parts = (t.tensor_split(chunks) for t in (x, y, weight_map))
    for xc, yc, wc in zip(*parts, strict=True):
        loss = training_loss(cfg, model, xc, yc, wc, step, reg_scale) * (len(xc) / len(x))
        loss.backward()
        total += loss.detach()
    return total


def learning_rate(cfg: TrialConfig, step: int, total_steps: int) -> float:
    """The step's learning rate: linear decay to zero (airbench-style), after a linear rise over
    the first fifth of the steps with "one_cycle" (training from scratch, where a high rate at
    the first step would throw the random initialization's BatchNorm statistics off)."""
    if cfg.lr_schedule == "linear":
        return cfg.lr * max(0.0, 1 - step / total_steps)
    peak = max(1, round(ONE_CYCLE_PEAK * total_steps))
    if step < peak:
        return cfg.lr * (step + 1) / peak
    return cfg.lr * max(0.0, (total_steps - step) / (total_steps - peak))


def penalty_warmup(cfg: TrialConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up of the input-gradient penalty from 0 to 1 over reg_warmup_epochs.

    Why: at initialization the penalty is two orders of magnitude above its value once the net
    has learned anything (fast_cnn width 16 on CIFAR-10: 47.7 at step 0, 0.2 to 0.4 from the
    second epoch on), so a constant weight of 0.1 flattens the net to a constant output (chance
    accuracy) before the cross-entropy can move it.
    """
    if cfg.reg_warmup_epochs <= 0:
        return 1.0
    return min(1.0, step / (cfg.reg_warmup_epochs * steps_per_epoch))


# --- the loop --------------------------------------------------------------------------------


def uses_lime(cfg: TrialConfig) -> bool:
    """Whether the trial explains a pool with LIME (the worker starts its actors only then)."""
    wants_masks = cfg.mask_ratio > 0
    wants_maps = cfg.reg_weight > 0 and cfg.reg_weighting == "lime"
    return cfg.method == "lime_refine" and cfg.pool_size > 0 and (wants_masks or wants_maps)


def _explain_pool(
    cfg: TrialConfig,
    model: nn.Module,
    explain: Explainer,
    x: torch.Tensor,
    y: torch.Tensor,
    round_: int,
    rank: int,
    world: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Explain this round's pool (each rank its share), then share masks and maps with all."""
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + round_)
    pool = torch.randperm(len(x), generator=gen)[: cfg.pool_size]
    mine = pool[rank::world]
    images = x[mine]
    segments = segment_batch(images.permute(0, 2, 3, 1).numpy(), cfg.segmentation, cfg.seed)
    explanations = explain(model, images, y[mine], segments)
    masked = mask_superpixels(
        images, explanations, cfg.mask_ratio, cfg.mask_strategy, cfg.mask_fill
    )
    maps = lime_weight_maps(explanations, images.shape)
    shares = [(r, i, m) for r, i, m in zip(mine.tolist(), masked, maps, strict=True)]
    parts = distributed.gather(shares, world)
    parts.sort(key=lambda p: p[0])
    idx = torch.tensor([p[0] for p in parts])
    return idx, torch.stack([p[1] for p in parts]), torch.stack([p[2] for p in parts]), y[idx]


def _evaluate(
    cfg: TrialConfig,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    index: torch.Tensor,
    world: int,
) -> dict[str, Any]:
    """The `val_*` metrics at the study's fixed eval epsilon: clean, PGD, Square and their
    per-example worst case, with the masking test and the per-image outcomes; each rank attacks
    its share."""
    rank, _ = distributed.world()
    outcomes = worst_case_outcomes(
        model, x[rank::world], y[rank::world], cfg.eval_epsilon,
        pgd_steps=cfg.eval_steps, queries=cfg.blackbox_queries, seed=cfg.seed,
    )  # fmt: skip
    if world > 1:  # every example's outcome, back in the images' order (ranks took r::world)
        order = torch.cat([torch.arange(len(x))[r::world] for r in range(world)])
        for k, v in outcomes.items():
            gathered = torch.cat(distributed.gather([v], world))
            outcomes[k] = torch.empty_like(gathered).index_put_((order,), gathered)
    return summarize_outcomes(outcomes, "val", index, y)


def load_trial_splits(cfg: TrialConfig, download: bool = True) -> Splits:
    """The trial's data; the test split stays sealed unless this is a confirmation trial."""
    return load_splits(
        cfg.dataset, cfg.data_dir, download=download, val_size=cfg.val_size,
        with_test=cfg.stage == "confirmation", image_size=cfg.image_size,
        channels=cfg.channels, test_fraction=cfg.test_fraction,
    )  # fmt: skip


def build_trial_model(cfg: TrialConfig, splits: Splits) -> nn.Module:
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    return build_model(cfg.model, **model_spec(cfg, splits))


def initial_model(cfg: TrialConfig, splits: Splits) -> nn.Module:
    """The model round 1 starts from: the base's weights when the trial has a base (read with
    weights_only=True, its checksum verified; either layout of fit_base_weights), else a
    seeded random initialization, its patch whitening (if any) fitted to the first
    WHITENING_IMAGES training images."""
    model = build_trial_model(cfg, splits)
    if cfg.base_checkpoint:
        weights = load_base_weights(cfg.base_checkpoint)
        model.load_state_dict(fit_base_weights(model, weights, cfg.base_checkpoint))
    else:
        fit_whitening(model, splits.train_x[:WHITENING_IMAGES])
    return model


def model_spec(cfg: TrialConfig, splits: Splits) -> dict[str, Any]:
    """Keyword arguments (besides the name) that rebuild the trial's model anywhere."""
    spec = {
        "in_channels": splits.in_channels,
        "num_classes": splits.num_classes,
        "image_size": splits.image_size,
        "mean": splits.mean,
        "std": splits.std,
    }
    if cfg.model_width:
        spec["width"] = cfg.model_width
    return spec


def _check_finite(
    losses: torch.Tensor, start: int, end: int, first: int, round_: int, world: int
) -> int:
    """Raise FloatingPointError, on every rank, when any rank's losses[start:end] hold NaN or
    inf (losses[i] is step first + i); returns `end`, the index checked up to. One host sync.

    A diverged run takes up to FINITE_CHECK_EVERY - 1 steps more before it stops; it reports
    no checkpoint past the divergence, since the loop reports only after an epoch's check.
    """
    bad = torch.nonzero(~torch.isfinite(losses[start:end])).flatten().tolist()
    if distributed.on_any_rank(bool(bad), world, losses.device):
        if bad:
            i = start + bad[0]
            where = f"{losses[i].item()} at round {round_}, step {first + i}"
        else:
            where = f"non-finite on another rank at round {round_}, by step {first + end - 1}"
        raise FloatingPointError(f"loss became {where}: lower lr, reg_weight or baseline_weight")
    return end


def refine(
    cfg: TrialConfig,
    *,
    explain: Explainer | None = None,
    report: Reporter | None = None,
    state: dict[str, Any] | None = None,
    splits: Splits | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Run the whole loop; returns the last round's metrics.

    explain: defaults to in-process `explain_images`; report: called once per round with the
    metrics and a checkpoint state; state: a checkpoint to resume from.
    """
    rank, world = distributed.world()
    device = torch.device(device)
    splits = splits or load_trial_splits(cfg)
    train_x, train_y = subset(splits.train_x, splits.train_y, cfg.train_subset, cfg.seed)
    val_index = subset_index(len(splits.val_x), cfg.eval_subset, seed=0)
    val_x, val_y = splits.val_x[val_index], splits.val_y[val_index]
    if explain is None:

        def explain(model, images, labels, segments):
            return explain_images(
                model, images, labels, segments, backend=cfg.lime_backend,
                num_samples=cfg.lime_samples, seed=cfg.seed,
            )  # fmt: skip

    # A resumed trial's own checkpoint replaces these weights below: read the base only when new.
    model = (initial_model if state is None else build_trial_model)(cfg, splits).to(device)
    # channels_last on every device: oneDNN's CPU convolutions run 1.1x (fast_cnn) to 1.5x
    # (airbench_cnn) faster with it (docs/benchmarks.md, "The base"), and so do cuDNN's
    model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        # Let cuDNN time its kernels for each new input shape and keep the fastest: a trial has
        # few shapes (the batch, an epoch's last, the evaluation's) and meets each many times.
        # Its choice may differ between runs, so GPU runs may differ in the last bits (as cuDNN's
        # default, non-deterministic kernels already made them); the random draws still repeat.
        torch.backends.cudnn.benchmark = True
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
    )
    first_round, step = 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        first_round, step = state["round"] + 1, state["step"]

    metrics: dict[str, Any] = {}
    for round_ in range(first_round, cfg.rounds):
        t0 = time.perf_counter()
        xs, ys, maps = train_x, train_y, torch.ones(len(train_x), 1, *train_x.shape[-2:])
        if uses_lime(cfg):
            idx, masked, pool_maps, pool_y = _explain_pool(
                cfg, model, explain, train_x, train_y, round_, rank, world
            )
            maps[idx] = pool_maps
            if cfg.mask_ratio > 0:
                xs, ys = torch.cat([xs, masked]), torch.cat([ys, pool_y])
                maps = torch.cat([maps, pool_maps])
        t_lime = time.perf_counter() - t0

        model.train()
        # the round's data goes to the device once; batches are indexed there
        xs, ys, maps = xs.to(device), ys.to(device), maps.to(device)
        steps_per_epoch = math.ceil(len(xs) / cfg.batch_size)
        total_steps = cfg.rounds * cfg.epochs_per_round * steps_per_epoch
        # each step's loss, kept on the device (no host sync per step); losses[i] is step first + i
        losses = torch.zeros(cfg.epochs_per_round * steps_per_epoch, device=device)
        first, done, checked = step, 0, 0
        augmentation = augment.resolve(cfg.augment, cfg.dataset)
        for epoch in range(cfg.epochs_per_round):
            seed = cfg.seed * 104729 + round_ * 1000 + epoch
            gen = torch.Generator().manual_seed(seed)
            # The batch order is drawn on the CPU, augmentation on the images' device (nothing
            # drawn on the host per step). On the CPU one generator serves both, interleaved, as
            # it always has, so CPU runs keep their numbers.
            aug_gen = gen
            if device.type != "cpu":
                aug_gen = torch.Generator(device=device).manual_seed(seed)
            order = torch.randperm(len(xs), generator=gen).to(device)
            for b in range(steps_per_epoch):
                batch = order[b * cfg.batch_size : (b + 1) * cfg.batch_size][rank::world]
                if len(batch) == 0:
                    continue
                x, y, w = xs[batch], ys[batch], maps[batch]
                if augmentation == "flip_translate":  # the weight map moves with its image
                    x, w = augment.flip_translate((x, w), aug_gen, cfg.translate)
                for group in opt.param_groups:
                    group["lr"] = learning_rate(cfg, step, total_steps)
                reg_scale = penalty_warmup(cfg, step, steps_per_epoch)
                opt.zero_grad(set_to_none=True)
                losses[done] = backward(cfg, model, x, y, w, step, reg_scale)
                distributed.average_gradients(model, world)
                opt.step()
                done, step = done + 1, step + 1
                if done - checked == FINITE_CHECK_EVERY:
                    checked = _check_finite(losses, checked, done, first, round_, world)
            checked = _check_finite(losses, checked, done, first, round_, world)
        t_train = time.perf_counter() - t0 - t_lime

        train_loss = float(np.mean(losses[:done].tolist()))  # float64 mean of float32 losses
        metrics = {
            "round": round_ + 1,
            **_evaluate(cfg, model, val_x, val_y, val_index, world),
            "train_loss": distributed.mean_over_ranks(train_loss, done, world),
            "lime_seconds": t_lime,
            "train_seconds": t_train,
            "eval_seconds": time.perf_counter() - t0 - t_lime - t_train,
            "train_examples": len(xs),
        }
        if cfg.stage == "confirmation" and round_ == cfg.rounds - 1 and rank == 0:
            from trainables.trial_eval import confirmation_metrics  # scipy and co.: when used

            t_final = time.perf_counter()
            metrics.update(confirmation_metrics(cfg, model, splits))
            metrics["final_eval_seconds"] = time.perf_counter() - t_final
        if report is not None:
            report(
                metrics,
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "round": round_,
                    "step": step,
                },
            )
    return metrics


def train_base_locally(cfg: TrialConfig, splits=None) -> tuple[dict[str, torch.Tensor], dict]:
    """Train a base in this process (plain refine(), no Ray): the tests' and notebooks' path.
    The study's path is trainables.trial.run_base (the same refine() in a Ray Train worker)."""
    kept: dict[str, Any] = {}
    metrics = refine(cfg, report=lambda m, state: kept.update(state or {}), splits=splits)
    return kept["model"], metrics
