"""A shared base model: trained once, cached by what determines it, refined by every trial.

The paper refines a trained classifier. A study with a `base:` section trains that classifier
once (before its search) and every searched trial and baseline loads it into its model before
round 1 (`TrialConfig.base_checkpoint`), then refines it with the study's own, equal budget.
`base: {checkpoint: PATH_OR_URI}` names a classifier trained elsewhere instead: nothing is
trained, and every trial (the confirmation's too) refines that file's weights
(`fit_base_weights` says which state_dicts fit; docs/data-and-models.md).

How the base is trained: with `refine()` itself, one round of `epochs` epochs of a non-LIME
method (ERM by default), through the same Ray Train worker as the trials. For every method
but lime_refine a round is only a slice of the epochs (no explanations, no masks), so one round
of N epochs is exactly N epochs of that method's training with the loop's learning-rate
schedule, augmentation, divergence checks, evaluation and checksummed checkpoint: no second
training loop to keep in step with the first.

The cache: `<storage>/bases/<key>/` holds model.pt (`{"model": state_dict}`), its SHA-256 in
model.pt.sha256 and base.json (the key's contents and the base's validation metrics). The key
hashes everything that decides the weights: the base's resolved trial config less the keys it
never reads (`base_weight_config`), the training images' bytes (`data_fingerprint`) and
BASE_VERSION. Studies in one storage share the folder; a second study with the same base loads
it without training. An entry whose file fails its checksum or does not load is retrained,
never used. Local paths and URIs (s3://...) both work, through pyarrow's file systems.
"""

import hashlib
import io
import json
import os
import pickle
import posixpath
import time
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs
import torch
from torch import nn

from trainables.augment import resolve
from trainables.config import (
    METHODS,
    TRIAL_FIELDS,
    ConfigError,
    TrialConfig,
    fields_with_role,
    make_trial_config,
    methods_reading,
    validate_trial_value,
)
from trainables.data import first_line

# Bump when anything that shapes a base's weights changes in code (the training loop, a loss,
# the models' initialization, the data pipeline): it is part of every base's key.
BASE_VERSION = 1
BASES_DIR = "bases"
MODEL_FILE = "model.pt"
INFO_FILE = "base.json"
BASE_METHODS = tuple(m for m in METHODS if m != "lime_refine")
# base.confirmation: the confirmation re-trains the base with each of its seeds (per_seed, the
# default), or refines the study's one base at every seed (shared; study.base says when).
BASE_CONFIRMATION = ("per_seed", "shared")
CHECKPOINT_KEY = "checkpoint"  # base: {checkpoint: PATH_OR_URI}, a classifier trained elsewhere

# Trial keys a `base:` section cannot set, and why.
_NOT_BASE_KEYS = {
    "rounds": "a base trains one run of base.epochs epochs; set base.epochs",
    "epochs_per_round": "a base trains one run of base.epochs epochs; set base.epochs",
    **dict.fromkeys(
        fields_with_role("data", "data_selection"),
        "a base trains on the study's data; set it under trial:",
    ),
    "seed": "a base trains with the study's seed (and each confirmation seed)",
    **dict.fromkeys(fields_with_role("bookkeeping", "base"), "set by the study"),
}
# Keys that decide the model's shape: every trial loads the base's weights into its own model.
_ARCHITECTURE_KEYS = fields_with_role("model")

# Trial keys that never change a base's weights (the data's fingerprint covers where the images
# come from; evaluation, bookkeeping, resources; LIME and the penalty, which no base method
# reads); every other key is hashed, so a new TrialConfig field counts unless its role is here.
_NOT_WEIGHTS = set(
    fields_with_role(
        "data_selection", "base", "lime", "evaluation", "test", "bookkeeping", "resources"
    )
)
# ... and the keys each base method ignores (trainables.refine.training_loss and backward).
_UNUSED_BY_METHOD = {
    m: {k for k in TRIAL_FIELDS if m not in methods_reading(k)} - _NOT_WEIGHTS for m in BASE_METHODS
}

# train(config) -> (the model's state_dict, the base's validation metrics)
BaseTrainer = Callable[[TrialConfig], tuple[dict[str, torch.Tensor], dict[str, Any]]]


class BaseModelError(RuntimeError):
    """A base model file that is missing, truncated, fails its checksum or does not load."""


# --- configuration ---------------------------------------------------------------------------


def validate_base(raw: Any, trial: TrialConfig) -> dict[str, Any] | None:
    """The `base:` section as plain data ({"method": ..., "epochs": ..., other trial keys}, or
    {"checkpoint": path or URI}), or None (train from scratch). A local checkpoint path comes
    back absolute (trials run in other directories). Raises ConfigError with one line on
    anything wrong."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"base: expected a mapping like {{method: erm, epochs: 10}}, {{checkpoint: PATH}} "
            f"or null, got {raw!r}"
        )
    if CHECKPOINT_KEY in raw:
        path = raw[CHECKPOINT_KEY]
        if not isinstance(path, str) or not path.strip():
            raise ConfigError(f"base.checkpoint: expected a path or URI, got {path!r}")
        others = sorted(set(raw) - {CHECKPOINT_KEY})
        if others:
            raise ConfigError(
                f"base.{others[0]}: a base given by its checkpoint takes no other key (nothing "
                "is trained)"
            )
        if "://" not in path:
            path = os.path.abspath(os.path.expanduser(path))
        return {CHECKPOINT_KEY: path}
    base: dict[str, Any] = {"method": "erm"}
    for key, value in raw.items():
        where = f"base.{key}"
        if key == "epochs":
            base[key] = validate_trial_value("epochs_per_round", value, where)
            continue
        if key == "confirmation":
            if value not in BASE_CONFIRMATION:
                raise ConfigError(f"{where}: must be one of {BASE_CONFIRMATION}, got {value!r}")
            base[key] = value
            continue
        if key in _NOT_BASE_KEYS:
            raise ConfigError(f"{where}: not a base key ({_NOT_BASE_KEYS[key]})")
        if key not in TRIAL_FIELDS:
            others = (k for k in TRIAL_FIELDS if k not in _NOT_BASE_KEYS)
            known = ", ".join(["epochs", "confirmation", *others])
            raise ConfigError(f"{where}: unknown key; known keys: {known}")
        base[key] = validate_trial_value(key, value, where)
    if "epochs" not in base:
        raise ConfigError("base.epochs: required (the base's training epochs)")
    if base["method"] not in BASE_METHODS:
        raise ConfigError(
            f"base.method: must be one of {BASE_METHODS} (a base has no LIME rounds), "
            f"got {base['method']!r}"
        )
    for key in _ARCHITECTURE_KEYS:
        if key in base and base[key] != getattr(trial, key):
            raise ConfigError(
                f"base.{key}: must equal trial.{key} ({getattr(trial, key)!r}; every trial "
                f"loads the base's weights into its own model), got {base[key]!r}"
            )
    base_trial_config(trial, base, trial.seed)  # the merged config passes the trial checks
    return base


def base_checkpoint(base: dict[str, Any] | None) -> str | None:
    """The classifier file a `base: {checkpoint: ...}` names (None: no base, or one to train)."""
    return (base or {}).get(CHECKPOINT_KEY)


def base_trial_config(trial: TrialConfig, base: dict[str, Any], seed: int) -> TrialConfig:
    """The trial config that trains the base: the study's trial config with the base's keys,
    one round of base.epochs epochs, the given seed, no base of its own, test split sealed."""
    values = {
        **vars(trial),
        **{k: v for k, v in base.items() if k not in ("epochs", "confirmation")},
        "rounds": 1,
        "epochs_per_round": base["epochs"],
        "seed": seed,
        "stage": "search",  # only the confirmation stage reads the test split
        "config_id": "base",
        "replicate": 0,
        "base_checkpoint": None,
    }
    try:
        return make_trial_config(values)
    except ConfigError as e:
        raise ConfigError(f"base: {e}") from e


# --- the cache key ---------------------------------------------------------------------------


def data_fingerprint(splits) -> str:
    """SHA-256 of the dataset's name and its training images and labels as the trials see them
    (after the validation split is carved out): exact for any source (digits, torchvision's
    batches, an image folder), whatever path or date the files have."""
    h = hashlib.sha256(f"{splits.name}\n".encode())
    for t in (splits.train_x, splits.train_y):
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(memoryview(t.contiguous().numpy()).cast("B"))
    return h.hexdigest()


def base_weight_config(cfg: TrialConfig) -> dict[str, Any]:
    """The keys of a base's trial config that decide its weights (augment resolved)."""
    ignored = _NOT_WEIGHTS | _UNUSED_BY_METHOD.get(cfg.method, set())
    out = {k: v for k, v in vars(cfg).items() if k not in ignored}
    out["augment"] = resolve(cfg.augment, cfg.dataset)
    return out


def base_key(cfg: TrialConfig, data_fp: str, version: int = BASE_VERSION) -> str:
    """The cache key of the base that `cfg` trains on data with fingerprint `data_fp`."""
    content = {"version": version, "config": base_weight_config(cfg), "data": data_fp}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:20]


def base_dir(storage: str, key: str) -> str:
    """<storage>/bases/<key>: a local path or a URI, like the storage."""
    return f"{storage.rstrip('/')}/{BASES_DIR}/{key}"


def model_path(storage: str, key: str) -> str:
    return f"{base_dir(storage, key)}/{MODEL_FILE}"


# --- reading and writing, local or remote ----------------------------------------------------


def _fs(uri: str):
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    return pafs.FileSystem.from_uri(uri)


def _read(fs, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _write(fs, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as f:
        f.write(data)


def load_base_weights(uri: str) -> dict[str, torch.Tensor]:
    """The state_dict in a model file, loaded with weights_only=True (tensors and plain data,
    never arbitrary code) onto the CPU, after its SHA-256 sidecar (PATH.sha256) matches when
    there is one (a base this module stored always has one; a user's checkpoint may).
    The file holds a state_dict, or {"model": state_dict} as this module stores a base."""
    fs, path = _fs(uri)
    try:
        data = _read(fs, path)
        sidecar = fs.get_file_info(path + ".sha256").type != pafs.FileType.NotFound
        expected = _read(fs, path + ".sha256").decode().strip() if sidecar else None
    except OSError as e:
        raise BaseModelError(f"base model {uri}: cannot read ({e})") from e
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise BaseModelError(f"base model {uri}: fails its SHA-256 (truncated or corrupted)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise BaseModelError(
            f"base model {uri}: cannot be loaded with weights_only=True ({first_line(e)})"
        ) from e
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise BaseModelError(f"base model {uri}: holds no state_dict (names to tensors)")
    return state


def fit_base_weights(
    model: nn.Sequential, weights: dict[str, torch.Tensor], uri: str
) -> dict[str, torch.Tensor]:
    """`weights` as a state_dict of `model` (Normalize, then the network; models.build_model),
    or a BaseModelError naming the first missing or unexpected key, or a key whose shape differs.

    Two layouts fit: the whole model's (keys "0.mean", "0.std", "1.<network key>": what the
    engine stores, its normalization kept), and the network's alone (what
    `torch.save(net.state_dict(), path)` writes), which then runs behind the engine's
    Normalize with the training split's mean and std.
    """
    whole = model.state_dict()
    network = [k.removeprefix("1.") for k in whole if k.startswith("1.")]
    hidden_prefix = ""  # the prefix the checkpoint's own keys lack, left out of messages
    if set(weights) == set(network):
        weights = {"0.mean": whole["0.mean"], "0.std": whole["0.std"]} | {
            f"1.{k}": v for k, v in weights.items()
        }
        hidden_prefix = "1."
    elif set(weights) != set(whole):  # name the mismatch in the layout it is closer to
        closer_to_whole = len(set(weights) & set(whole)) > len(set(weights) & set(network))
        expected = list(whole) if closer_to_whole else network
        missing = [k for k in expected if k not in weights]
        unexpected = [k for k in weights if k not in expected]
        what = f"missing key {missing[0]!r}" if missing else f"unexpected key {unexpected[0]!r}"
        raise BaseModelError(
            f"base model {uri} does not fit the model: {what} ({len(weights)} keys in the "
            f"checkpoint, {len(expected)} in the model)"
        )
    for key, value in whole.items():
        if tuple(weights[key].shape) != tuple(value.shape):
            name = key.removeprefix(hidden_prefix)
            raise BaseModelError(
                f"base model {uri} does not fit the model: key {name!r} has shape "
                f"{tuple(weights[key].shape)} in the checkpoint, {tuple(value.shape)} in the model"
            )
    return weights


def read_cached(storage: str, key: str) -> tuple[dict[str, Any] | None, str]:
    """(base.json's contents, "") for a complete, intact cache entry; (None, why) otherwise,
    with why "" for an entry that does not exist."""
    fs, root = _fs(base_dir(storage, key))
    info_path = posixpath.join(root, INFO_FILE)
    if fs.get_file_info(info_path).type == pafs.FileType.NotFound:
        return None, ""
    try:
        info = json.loads(_read(fs, info_path))
    except (OSError, ValueError) as e:
        return None, f"{INFO_FILE} is unreadable ({e})"
    if not isinstance(info, dict) or info.get("key") != key:
        return None, f"{INFO_FILE} names another key"
    uri = model_path(storage, key)
    try:
        load_base_weights(uri)
        sidecar = _read(fs, posixpath.join(root, MODEL_FILE + ".sha256")).decode().strip()
    except (BaseModelError, OSError) as e:
        return None, str(e)
    if sidecar != info.get("sha256"):
        return None, f"{MODEL_FILE} is not the file {INFO_FILE} describes"
    return info, ""


def model_file(state_dict: dict[str, torch.Tensor]) -> tuple[bytes, str]:
    """A base model file's bytes (`{"model": state_dict}`, tensors on the CPU) and their SHA-256,
    what its `.sha256` sidecar holds."""
    buffer = io.BytesIO()
    torch.save({"model": {k: v.detach().cpu() for k, v in state_dict.items()}}, buffer)
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def store_base(
    storage: str, key: str, state_dict: dict[str, torch.Tensor], info: dict[str, Any]
) -> dict[str, Any]:
    """Write model.pt, its SHA-256 sidecar and, last, base.json (an entry without base.json is
    incomplete and never used); returns the base.json contents."""
    fs, root = _fs(base_dir(storage, key))
    fs.create_dir(root, recursive=True)
    info_path = posixpath.join(root, INFO_FILE)
    if fs.get_file_info(info_path).type != pafs.FileType.NotFound:
        fs.delete_file(info_path)  # the entry is being replaced: incomplete until the end
    data, digest = model_file(state_dict)
    _write(fs, posixpath.join(root, MODEL_FILE), data)
    _write(fs, posixpath.join(root, MODEL_FILE + ".sha256"), digest.encode())
    info = {**info, "key": key, "sha256": digest}
    _write(fs, info_path, json.dumps(info, indent=2, default=float).encode())
    return info


# --- training or reusing ---------------------------------------------------------------------


def ensure_base(
    cfg: TrialConfig,
    storage: str,
    data_fp: str,
    train: BaseTrainer,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The base that `cfg` (from base_trial_config) trains, from the cache in `storage` or
    trained now with `train` and stored there. Returns its base.json contents plus "path" (the
    model file every trial loads) and "reused"."""
    key = base_key(cfg, data_fp)
    path = model_path(storage, key)
    info, problem = read_cached(storage, key)
    what = f"base {key} ({cfg.method}, {cfg.epochs_per_round} epochs, seed {cfg.seed})"
    if info is not None:
        say(f"[base] reusing {what} from {path}, trained before: {_accuracy(info)}; no training")
        return {**info, "path": path, "reused": True}
    if problem:
        say(f"[base] cached {what} is unusable ({problem}); training it again")
    say(f"[base] training {what}")
    t0 = time.perf_counter()
    state_dict, metrics = train(cfg)
    seconds = time.perf_counter() - t0
    info = {
        "version": BASE_VERSION,
        "config": base_weight_config(cfg),
        "data_fingerprint": data_fp,
        "trial_config": vars(cfg),
        "metrics": metrics,
        "train_seconds": seconds,
    }
    info = store_base(storage, key, state_dict, info)
    say(f"[base] trained {what} in {seconds:.0f}s: {_accuracy(info)}; stored at {path}")
    return {**info, "path": path, "reused": False}


def _accuracy(info: dict[str, Any]) -> str:
    metrics = info.get("metrics") or {}
    parts = [
        f"{label} {100 * metrics[k]:.1f}%"
        for label, k in (("val clean", "val_clean_acc"), ("robust", "val_robust_acc"))
        if isinstance(metrics.get(k), int | float)
    ]
    return "  ".join(parts) or "no metrics"
