"""The configuration of one trial: a flat dict of plain values, typed and range-checked.

It is the Ray Tune param_space of a study and the train_loop_config of its Ray Train workers;
`study.config` validates it before anything starts, and the worker validates it again on entry.
"""

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from study.store import STAGES
from trainables.attacks import NORMS
from trainables.augment import AUGMENTATIONS
from trainables.data import DATASETS, TEST_SIZES, TRAIN_SIZES, VARIABLE_SIZE
from trainables.explain import BACKENDS
from trainables.models import MODEL_HELP, WIDTH_MODELS, is_model_name
from trainables.segmentation import SEGMENTATIONS

METHODS = ("lime_refine", "erm", "pgd_at", "ig_norm", "ig_sum_norm", "trades")
IG_METHODS = ("ig_norm", "ig_sum_norm")  # losses with an integrated-gradients path
MASK_STRATEGIES = ("least_important", "most_important")
MASK_FILLS = ("mean", "zero", "blur")
REG_WEIGHTINGS = ("uniform", "lime")
TRAIN_ATTACKS = ("pgd", "fgsm", "none")
AMP_MODES = ("none", "bf16")
LR_SCHEDULES = ("linear", "one_cycle")


class ConfigError(ValueError):
    """A configuration value that is missing, mistyped, out of range or unknown."""


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs; every field can be fixed in YAML or searched."""

    # data (docs/data-and-models.md): a dataset by name, or "imagefolder" with data_dir a
    # folder, a .tar.gz or .zip of one, or a CSV of path,label
    dataset: str = "digits"
    data_dir: str | None = None
    image_size: int | None = None  # resize every image to image_size x image_size on load
    channels: int | None = None  # 1 (grey) or 3 (RGB); None = 1 when every image is grey, else 3
    # an imagefolder without test/ (or a CSV): the share of its images held out as the test split
    test_fraction: float | None = None
    train_subset: int | None = None  # None = the whole training set (less validation)
    val_size: int | None = None  # validation images carved from train; None = dataset default
    eval_subset: int | None = None  # validation images of the per-round evaluation (None = all)
    # model and method: a built-in architecture, "torchvision:NAME" or "package.module:factory"
    model: str = "small_cnn"
    model_width: int = 0  # fast_cnn's or airbench_cnn's base width; 0 = the architecture's default
    method: str = "lime_refine"
    # the model file (path or URI, with a .sha256 sidecar) whose weights the model starts from
    # instead of a random initialization; set by the study from its `base:` (trainables/base.py)
    base_checkpoint: str | None = None
    # optimization
    rounds: int = 2
    epochs_per_round: int = 2
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    # the learning rate over all steps: "linear" decays from lr to 0; "one_cycle" rises from 0
    # to lr over the first fifth, then decays to 0 (a base trained from scratch)
    lr_schedule: str = "linear"
    # the training cross-entropy's label smoothing (erm, pgd_at, lime_refine)
    label_smoothing: float = 0.0
    # flip_translate | none | auto (flip_translate for photographs, trainables/data.py
    # FLIP_INVARIANT; none for digits, letters, signs and an imagefolder)
    augment: str = "auto"
    # flip_translate's largest shift, in pixels; None: an eighth of the image's side (4 on 32x32)
    translate: int | None = None
    # mixed precision, opt-in: "bf16" runs lime_refine's and pgd_at's training attack and the
    # cross-entropy on its adversarial example under bfloat16 autocast (trainables/refine.py
    # training_loss); the input-gradient penalty, the other methods and evaluation stay float32
    amp: str = "none"
    # LIME explanation of the pool
    pool_size: int = 64
    lime_samples: int = 300
    lime_backend: str = "lime"
    segmentation: str = "auto"
    lime_actors: int = 1  # 0: explain in the trial's own process or Train worker
    cpus_per_lime_actor: float = 1.0
    # feature masking
    mask_ratio: float = 0.25
    mask_strategy: str = "least_important"
    mask_fill: str = "mean"
    # sensitivity regularization (input-gradient penalty)
    reg_weight: float = 0.1
    reg_weighting: str = "lime"
    reg_warmup_epochs: float = 1.0  # the penalty weight ramps up from 0 over these epochs
    # adversarial training of lime_refine and pgd_at (epsilon in pixel units, in attack_norm)
    train_attack: str = "pgd"
    attack_norm: str = "linf"
    epsilon: float = 0.1
    attack_steps: int = 5
    # baselines: IG-NORM / IG-SUM-NORM / TRADES strength and IG path steps
    baseline_weight: float = 1.0
    ig_steps: int = 10
    # IG-NORM / IG-SUM-NORM: examples per backward pass, the batch's gradient accumulated over
    # its chunks (0 = the whole batch at once). Their loss holds the double-backward graph of
    # ig_steps x batch images, several times the memory of the other methods' step
    # (benchmarks.ig_memory measures it).
    ig_micro_batch: int = 0
    # evaluation: one fixed epsilon for every trial so trials are comparable; robust accuracy
    # is the per-example worst case of PGD (eval_steps) and the gradient-free Square attack
    # (blackbox_queries), so gradient masking cannot inflate it
    eval_epsilon: float = 0.1
    eval_steps: int = 10
    blackbox_queries: int = 200
    # confirmation trials only (stage "confirmation"), on the test split, after the last round:
    # FGSM and PGD-20 at every eps of eval_grid ("1/255,2/255", "" = none); PGD-50 with restarts
    # and AutoAttack at the eval epsilon and final_grid on final_eval_subset test images,
    # gradient-masking checks, CIFAR-10-C on cifar10c_images images and attribution robustness
    # on attr_images images (0 = skip either)
    eval_grid: str = ""
    # the worst case of the search (PGD and Square, per image) on the same test images at each
    # of these eps too, besides the eval epsilon: the answer's robust accuracy at every eps it
    # reports ("" = the eval epsilon only)
    answer_epsilons: str = ""
    final_grid: str = ""
    final_eval_subset: int = 100
    final_restarts: int = 3
    # Square's queries per image in the test's worst case (0 = blackbox_queries): the masking
    # check has power only at a budget that brings Square near PGD on honest models, more than
    # a search round can pay for (docs/benchmarks.md, "The query budget on CIFAR-10")
    test_blackbox_queries: int = 0
    cifar10c_images: int = 0
    attr_images: int = 0
    attr_steps: int = 20
    attr_restarts: int = 1
    # study bookkeeping: which configuration this is, which replicate (seed), which stage
    # (search and baseline trials never read the test split; confirm trials do)
    config_id: str = ""
    replicate: int = 0
    stage: str = "search"
    # resources: num_workers 0 runs the loop in the Tune trial's own process; N >= 1 runs a Ray
    # Train worker group of N (data parallel; trainables/trial.py)
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    seed: int = 0


# (check, message) per field; types are checked separately from the annotations.
_RANGES: dict[str, tuple[Any, str]] = {
    "dataset": (lambda v: v in DATASETS, f"must be one of {DATASETS}"),
    "image_size": (lambda v: v is None or 8 <= v <= 1024, "must be in [8, 1024] (or null)"),
    "channels": (lambda v: v in (None, 1, 3), "must be 1, 3 or null"),
    "test_fraction": (lambda v: v is None or 0 < v < 1, "must be in (0, 1) (or null)"),
    "model": (is_model_name, MODEL_HELP),
    "model_width": (lambda v: 0 <= v <= 4096, "must be in [0, 4096] (0 = default)"),
    "method": (lambda v: v in METHODS, f"must be one of {METHODS}"),
    "base_checkpoint": (lambda v: v is None or v.strip() != "", "must be a path or URI (or null)"),
    "train_subset": (lambda v: v is None or v >= 10, "must be at least 10"),
    "eval_subset": (lambda v: v is None or v >= 1, "must be at least 1"),
    "val_size": (lambda v: v is None or v >= 10, "must be at least 10 (null = default)"),
    "blackbox_queries": (lambda v: 1 <= v <= 100_000, "must be in [1, 100000]"),
    "test_blackbox_queries": (
        lambda v: 0 <= v <= 100_000,
        "must be in [0, 100000] (0 = blackbox_queries)",
    ),
    "config_id": (lambda v: len(v) <= 100, "must be at most 100 characters"),
    "replicate": (lambda v: 0 <= v < 100_000, "must be in [0, 100000)"),
    "stage": (lambda v: v in STAGES, f"must be one of {STAGES}"),
    "rounds": (lambda v: 1 <= v <= 1000, "must be in [1, 1000]"),
    "epochs_per_round": (lambda v: 1 <= v <= 1000, "must be in [1, 1000]"),
    "batch_size": (lambda v: 1 <= v <= 65536, "must be in [1, 65536]"),
    "lr": (lambda v: 0 < v <= 10, "must be in (0, 10]"),
    "weight_decay": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "lr_schedule": (lambda v: v in LR_SCHEDULES, f"must be one of {LR_SCHEDULES}"),
    "label_smoothing": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "augment": (lambda v: v in AUGMENTATIONS, f"must be one of {AUGMENTATIONS}"),
    "translate": (lambda v: v is None or 0 <= v <= 64, "must be null or in [0, 64] pixels"),
    "amp": (lambda v: v in AMP_MODES, f"must be one of {AMP_MODES}"),
    "pool_size": (lambda v: 0 <= v <= 1_000_000, "must be in [0, 1000000]"),
    "lime_samples": (lambda v: 10 <= v <= 100_000, "must be in [10, 100000]"),
    "lime_backend": (lambda v: v in BACKENDS, f"must be one of {BACKENDS}"),
    "segmentation": (lambda v: v in SEGMENTATIONS, f"must be one of {SEGMENTATIONS}"),
    "lime_actors": (lambda v: 0 <= v <= 1024, "must be in [0, 1024] (0 = in the worker)"),
    "cpus_per_lime_actor": (lambda v: 0 < v <= 256, "must be in (0, 256]"),
    "mask_ratio": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "mask_strategy": (lambda v: v in MASK_STRATEGIES, f"must be one of {MASK_STRATEGIES}"),
    "mask_fill": (lambda v: v in MASK_FILLS, f"must be one of {MASK_FILLS}"),
    "reg_weight": (lambda v: 0 <= v <= 1e4, "must be in [0, 10000]"),
    "reg_weighting": (lambda v: v in REG_WEIGHTINGS, f"must be one of {REG_WEIGHTINGS}"),
    "reg_warmup_epochs": (lambda v: 0 <= v <= 1000, "must be in [0, 1000] (0 = no warm-up)"),
    "train_attack": (lambda v: v in TRAIN_ATTACKS, f"must be one of {TRAIN_ATTACKS}"),
    "attack_norm": (lambda v: v in NORMS, f"must be one of {NORMS}"),
    "epsilon": (lambda v: 0 <= v <= 1, "must be in [0, 1] (pixel units)"),
    "attack_steps": (lambda v: 1 <= v <= 1000, "must be in [1, 1000]"),
    "baseline_weight": (lambda v: 0 <= v <= 1e4, "must be in [0, 10000]"),
    "ig_steps": (lambda v: 1 <= v <= 1000, "must be in [1, 1000]"),
    "ig_micro_batch": (lambda v: 0 <= v <= 100_000, "must be in [0, 100000] (0 = the batch)"),
    "eval_epsilon": (lambda v: 0 <= v <= 1, "must be in [0, 1] (pixel units)"),
    "eval_steps": (lambda v: 1 <= v <= 1000, "must be in [1, 1000]"),
    "eval_grid": (lambda v: _grid_ok(v), "must be comma-separated eps in (0, 1], e.g. '1/255,0.1'"),
    "final_grid": (lambda v: _grid_ok(v), "must be comma-separated eps in (0, 1], e.g. '8/255'"),
    "answer_epsilons": (
        lambda v: _grid_ok(v),
        "must be comma-separated eps in (0, 1], e.g. '2/255,8/255'",
    ),
    "final_eval_subset": (lambda v: 1 <= v <= 100_000, "must be in [1, 100000]"),
    "final_restarts": (lambda v: 1 <= v <= 100, "must be in [1, 100]"),
    "cifar10c_images": (lambda v: 0 <= v <= 10_000, "must be in [0, 10000]"),
    "attr_images": (lambda v: 0 <= v <= 10_000, "must be in [0, 10000]"),
    "attr_steps": (lambda v: 1 <= v <= 1000, "must be in [1, 1000]"),
    "attr_restarts": (lambda v: 1 <= v <= 100, "must be in [1, 100]"),
    "num_workers": (
        lambda v: 0 <= v <= 1024,
        "must be in [0, 1024] (0 = in the Tune trial's own process)",
    ),
    "cpus_per_worker": (lambda v: 0 < v <= 256, "must be in (0, 256]"),
    "gpus_per_worker": (lambda v: 0 <= v <= 16, "must be in [0, 16]"),
    "seed": (lambda v: 0 <= v < 2**32, "must be in [0, 2**32)"),
}


def parse_grid(text: str) -> tuple[tuple[str, float], ...]:
    """'1/255, 0.1' -> (('1/255', 0.00392...), ('0.1', 0.1)); raises ValueError when malformed."""
    out = []
    for token in (t.strip() for t in text.split(",") if t.strip()):
        num, _, den = token.partition("/")
        eps = float(num) / float(den) if den else float(num)
        if not 0 < eps <= 1:
            raise ValueError(f"eps {token} is outside (0, 1]")
        out.append((token, eps))
    return tuple(out)


def _grid_ok(text: str) -> bool:
    try:
        parse_grid(text)
    except (ValueError, ZeroDivisionError):
        return False
    return True


TRIAL_FIELDS = {f.name: f for f in dataclasses.fields(TrialConfig)}

# Each field's role, declared once: the groups other modules need (which keys a base's cache key
# holds, which a `base:` or an ablation may set, which only the test evaluation reads) are derived
# from it. A field without a role fails at import (check_roles).
FIELD_ROLES: dict[str, tuple[str, ...]] = {
    "data": ("dataset",),
    # where the images are read from, how they are decoded and how the test and validation
    # splits are carved from them: a base's key holds the training images' fingerprint instead
    "data_selection": ("data_dir", "image_size", "channels", "test_fraction", "val_size"),
    "model": ("model", "model_width"),
    "base": ("base_checkpoint",),  # set by the study from its `base:`
    "method": ("method",),
    "optimization": (
        "train_subset", "rounds", "epochs_per_round", "batch_size", "lr", "weight_decay",
        "lr_schedule", "label_smoothing", "augment", "translate", "amp",
    ),
    # LIME, masking and the penalty: read by lime_refine alone
    "lime": (
        "pool_size", "lime_samples", "lime_backend", "segmentation", "mask_ratio",
        "mask_strategy", "mask_fill", "reg_weight", "reg_weighting", "reg_warmup_epochs",
    ),
    "adversarial": ("train_attack", "attack_norm", "epsilon", "attack_steps"),
    "baseline": ("baseline_weight", "ig_steps", "ig_micro_batch"),
    # the per-round validation evaluation, the same for every trial of a study
    "evaluation": ("eval_epsilon", "eval_steps", "blackbox_queries"),
    # only a confirmation trial's test evaluation (trainables/trial_eval.py), never its training
    # (eval_subset also sizes the per-round validation evaluation): a study's `confirm_eval:`
    # may set them
    "test": (
        "eval_subset", "eval_grid", "answer_epsilons", "final_grid", "final_eval_subset",
        "final_restarts", "test_blackbox_queries",
        "cifar10c_images", "attr_images", "attr_steps", "attr_restarts",
    ),
    "bookkeeping": ("config_id", "replicate", "stage"),  # set by the study
    "seed": ("seed",),
    "resources": (
        "num_workers", "cpus_per_worker", "gpus_per_worker", "lime_actors", "cpus_per_lime_actor",
    ),
}  # fmt: skip


def check_roles(fields: Sequence[str], roles: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """{field: role}, when every field has exactly one role and every role names fields."""
    listed = [name for names in roles.values() for name in names]
    problems = sorted(
        {f"{n} has no role" for n in fields if n not in listed}
        | {f"{n} has more than one role" for n in listed if listed.count(n) > 1}
        | {f"{n} is not a field" for n in listed if n not in fields}
    )
    if problems:
        raise TypeError(f"trainables/config.py FIELD_ROLES: {'; '.join(problems)}")
    return {name: role for role, names in roles.items() for name in names}


ROLE_OF = check_roles(list(TRIAL_FIELDS), FIELD_ROLES)
# The methods that read a field, where not every method does (trainables/refine.py,
# training_loss and backward); the "lime" role is lime_refine's alone.
_READ_BY = {
    "amp": ("lime_refine", "pgd_at"),
    "label_smoothing": ("erm", "lime_refine", "pgd_at"),
    "train_attack": ("lime_refine",),
    "attack_norm": ("lime_refine", "pgd_at"),
    "epsilon": tuple(m for m in METHODS if m != "erm"),
    "attack_steps": tuple(m for m in METHODS if m != "erm"),
    "baseline_weight": (*IG_METHODS, "trades"),
    "ig_steps": IG_METHODS,
    "ig_micro_batch": IG_METHODS,
}


def fields_with_role(*roles: str) -> tuple[str, ...]:
    """The TrialConfig fields of these roles, in the dataclass's order."""
    unknown = set(roles) - set(FIELD_ROLES)
    if unknown:
        raise ValueError(f"unknown role(s) {sorted(unknown)}; roles: {list(FIELD_ROLES)}")
    return tuple(name for name in TRIAL_FIELDS if ROLE_OF[name] in roles)


def methods_reading(name: str) -> tuple[str, ...]:
    """The methods whose training reads this field."""
    if ROLE_OF[name] == "lime":
        return ("lime_refine",)
    return _READ_BY.get(name, METHODS)


TEST_EVAL_KEYS = fields_with_role("test")


def _check_type(where: str, value: Any, annotation: Any) -> Any:
    """Accept value if it has the annotated type (ints count as floats; bools never as numbers)."""
    allowed = getattr(annotation, "__args__", (annotation,))
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{where}: must not be empty")
    if isinstance(value, bool) and bool not in allowed:
        raise ConfigError(f"{where}: expected {_type_name(allowed)}, got {value!r}")
    if float in allowed and isinstance(value, int | float):
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
        return value
    if not isinstance(value, tuple(t for t in allowed if t is not type(None))):
        raise ConfigError(f"{where}: expected {_type_name(allowed)}, got {value!r}")
    return value


def _type_name(types: tuple) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def validate_trial_value(name: str, value: Any, where: str | None = None) -> Any:
    """Type- and range-check one trial field; returns the value (ints widened to float)."""
    where = where or f"trial.{name}"
    if name not in TRIAL_FIELDS:
        raise ConfigError(f"{where}: unknown key; known keys: {', '.join(TRIAL_FIELDS)}")
    value = _check_type(where, value, TRIAL_FIELDS[name].type)
    check = _RANGES.get(name)
    if check and value is not None and not check[0](value):
        raise ConfigError(f"{where}: {check[1]}, got {value!r}")
    return value


def make_trial_config(values: dict[str, Any]) -> TrialConfig:
    """A validated TrialConfig from a (partial) flat dict."""
    if not isinstance(values, dict):
        raise ConfigError(f"trial: expected a mapping, got {values!r}")
    checked = {k: validate_trial_value(k, v) for k, v in values.items()}
    cfg = TrialConfig(**checked)
    if cfg.attack_norm == "l2" and cfg.train_attack == "fgsm":
        raise ConfigError("trial.attack_norm: 'l2' needs train_attack 'pgd' (FGSM is L-inf only)")
    if cfg.model_width and cfg.model not in WIDTH_MODELS:
        have = " and ".join(WIDTH_MODELS)
        raise ConfigError(f"trial.model_width: only {have} have a width; leave it 0")
    if cfg.cifar10c_images:
        from trainables.corruptions import require_frost  # CIFAR-10-C runs every corruption

        try:
            require_frost()
        except RuntimeError as e:
            raise ConfigError(f"trial.cifar10c_images: {e}") from e
    _check_gpu_layout(cfg)
    _check_data_keys(cfg)
    if cfg.dataset in TEST_SIZES:  # an imagefolder's sizes: checked once it is scanned
        check_test_size(cfg, TEST_SIZES[cfg.dataset])
    train_size = TRAIN_SIZES.get(cfg.dataset)
    if cfg.val_size is not None and train_size and cfg.val_size >= train_size - 100:
        raise ConfigError(
            f"trial.val_size: {cfg.dataset} has {train_size} training images; val_size must "
            f"leave at least 100 of them for training, got {cfg.val_size}"
        )
    return cfg


def check_test_size(cfg: TrialConfig, test_size: int) -> None:
    """The test-split subsets fit a test split of `test_size` images."""
    for key in ("eval_subset", "final_eval_subset"):
        if (getattr(cfg, key) or 0) > test_size:
            raise ConfigError(
                f"trial.{key}: {cfg.dataset}'s test split has {test_size} images, fewer than "
                f"{getattr(cfg, key)}"
            )


def _check_data_keys(cfg: TrialConfig) -> None:
    """What a dataset needs of the data keys, known from its name alone."""
    if cfg.dataset == "imagefolder" and not cfg.data_dir:
        raise ConfigError(
            "trial.data_dir: imagefolder needs one (a folder, a .tar.gz or .zip of one, or a "
            "CSV of path,label)"
        )
    if cfg.dataset in VARIABLE_SIZE and cfg.image_size is None:
        raise ConfigError(
            f"trial.image_size: {cfg.dataset}'s images differ in size; set image_size (e.g. "
            "32) to resize them on load"
        )
    if (
        cfg.cifar10c_images
        and cfg.dataset == "cifar10"
        and (cfg.image_size not in (None, 32) or cfg.channels == 1)
    ):
        raise ConfigError(
            "trial.cifar10c_images: CIFAR-10-C corrupts 32x32 RGB images; with image_size or "
            "channels changed set it to 0"
        )
    if cfg.test_fraction is not None and cfg.dataset != "imagefolder":
        raise ConfigError(
            f"trial.test_fraction: applies to imagefolder only; {cfg.dataset} has a test split"
        )


def _check_gpu_layout(cfg: TrialConfig) -> None:
    """GPU shares the loop can use: one device per process (the trial's own, or each worker's)."""
    g = cfg.gpus_per_worker
    if cfg.num_workers == 0 and g > 1:
        raise ConfigError(
            f"trial.gpus_per_worker: an in-process trial (num_workers 0) runs on one device, "
            f"so it can use at most 1 GPU, got {g:g}; set num_workers to the number of GPUs"
        )
    if cfg.num_workers > 1 and 0 < g < 1:
        raise ConfigError(
            f"trial.gpus_per_worker: {cfg.num_workers} workers with {g:g} GPU each would be "
            "packed onto one physical GPU, where NCCL fails ('Duplicate GPU detected'); give "
            "each worker a whole GPU, or use num_workers 0 or 1 to share a GPU between trials"
        )
