"""Study configuration: plain data, presets, YAML loading and validation.

Everything is checked here, before Ray starts and before any study directory exists, so bad
input costs one clear line and nothing else. A trial's configuration is a flat dict (the Ray
Tune param_space); searched parameters are given as distributions over those same keys.
"""

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from study.presets import PRESETS
from study.store import DEFAULT_OBJECTIVES
from trainables.base import BASES_DIR, CHECKPOINT_KEY, validate_base
from trainables.config import (
    METHODS,
    ROLE_OF,
    TEST_EVAL_KEYS,
    TRIAL_FIELDS,
    ConfigError,
    TrialConfig,
    fields_with_role,
    make_trial_config,
    methods_reading,
    validate_trial_value,
)

SEARCHERS = ("optuna", "random")
# Seeds: replicate r of any configuration trains with seed + r (configurations and baselines
# share seeds, so comparisons are paired), and confirmation seed j with seed +
# CONFIRM_SEED_OFFSET + j, seeds the search never used (replicates stay below the offset).
MAX_REPLICATES = 1_000
CONFIRM_SEED_OFFSET = 10_000
BASELINE_METHODS = tuple(m for m in METHODS if m != "lime_refine")
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
# An ablation (`ablation:`) runs these configurations in place of a search: its setting
# ("full") and one variant per component of lime_refine switched off, each compared with full.
ABLATION_VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_masking": {"mask_ratio": 0.0},
    "uniform_penalty": {"reg_weighting": "uniform"},
    "no_penalty": {"reg_weight": 0.0},
    "no_adversarial": {"train_attack": "none"},
}
ABLATION_REFERENCE = "full"
# What switches a component off in a setting (trainables/refine.py: uses_lime, training_loss,
# _train_attack): (key, value, component). An ablation's setting must have every component on,
# or a variant would be the setting itself.
_COMPONENT_OFF = (
    ("pool_size", 0, "LIME"),
    ("mask_ratio", 0.0, "feature masking"),
    ("reg_weight", 0.0, "the penalty"),
    ("reg_weighting", "uniform", "the LIME weighting of the penalty"),
    ("train_attack", "none", "adversarial training"),
    ("epsilon", 0.0, "adversarial training"),
)
# Trial keys that belong to the study, not to the setting an ablation varies: the method whose
# components it switches, per-trial seeds and bookkeeping, and the resources every trial holds.
# The data, the model (which must fit the base) and the whole evaluation are the study's too:
# the variants are compared with baselines measured the same way.
_STUDY_WIDE_KEYS = fields_with_role(
    "method",
    "seed",
    "bookkeeping",
    "resources",
    "data",
    "data_selection",
    "model",
    "base",
    "evaluation",
    "test",
)


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter: a distribution over a TrialConfig field."""

    type: str
    low: float | None = None
    high: float | None = None
    values: tuple | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class BaselineSearch:
    """A baseline searched like the method: `num_samples` configurations of its keys, each at
    the study's replicate seeds, in its own experiment (study_dir/search-<method>)."""

    method: str
    search: dict[str, ParamSpec]
    num_samples: int

    def to_dict(self) -> dict[str, Any]:
        search = {k: v.to_dict() for k, v in self.search.items()}
        return {"method": self.method, "search": search, "num_samples": self.num_samples}


SEARCHABLE_ROLES = ("optimization", "adversarial", "baseline")  # what a baseline's search sets
SAMPLES_PER_SEARCHED_KEY = 5  # a searched baseline's default configurations per searched key


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: which trials to run, what to search, and where results go."""

    name: str
    storage: str
    preset: str = "digits"
    num_samples: int = 8
    max_concurrent_trials: int | None = None
    searcher: str = "optuna"
    seed: int = 0
    objectives: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_OBJECTIVES))
    search: dict[str, ParamSpec] = field(default_factory=dict)
    trial: TrialConfig = field(default_factory=TrialConfig)
    # Methods trained with the fixed trial settings beside the search (in study_dir/baselines),
    # so every front is read against them.
    baselines: tuple[str, ...] = ()
    # Baselines searched like the method (a `baselines:` entry with a `search:`), each with its
    # own front.
    baseline_searches: tuple[BaselineSearch, ...] = ()
    # Seeds per configuration (searched ones and baselines); the searcher sees their mean.
    replicates: int = 2
    # Fresh seeds with which the front and the baselines are re-trained and tested (0 = skip).
    confirm_seeds: int = 3
    # Early stopping of the search: {type: fifo} (none) or {type: mo-asha, grace_rounds,
    # reduction_factor} (study/scheduler.py); baselines and confirmation never stop early.
    scheduler: dict[str, Any] = field(default_factory=lambda: {"type": "fifo"})
    # A shared base model ({method, epochs, other trial keys}; trainables/base.py): trained once
    # before the search, cached in <storage>/bases, and refined by every trial. None: every
    # trial trains from scratch.
    base: dict[str, Any] | None = None
    # An ablation ({trial key: value}, the setting; trainables/config.py keys) in place of the
    # search: its ABLATION_VARIANTS run as the study's configurations (num_samples is their
    # number, search is empty) and are all confirmed. None: a search.
    ablation: dict[str, Any] | None = None
    # The confirmation's test evaluation ({key: value} of TEST_EVAL_KEYS), in place of the
    # trial config's: what the test costs is decided when confirming, and no key changes
    # training. {}: the trials' own settings.
    confirm_eval: dict[str, Any] = field(default_factory=dict)
    # The test evaluation of the answer's primary pair, on top of confirm_eval: the front's
    # first configuration (its most robust, the front being ordered by clean accuracy) and the
    # reference, at every confirmation seed; e.g. AutoAttack on more images than the other
    # trials can afford. {}: as every other confirmation trial.
    primary_eval: dict[str, Any] = field(default_factory=dict)
    # The clean accuracies at which fronts.csv reads each confirmed front's robust accuracy.
    # (): three levels inside the clean range every front spans (analysis/fronts.py).
    matched_clean: tuple[float, ...] = ()

    @property
    def study_dir(self) -> str:
        return (
            os.path.join(self.storage, self.name)
            if "://" not in self.storage
            else (self.storage.rstrip("/") + "/" + self.name)
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for study.json (read back by the analysis package)."""
        d = dataclasses.asdict(self)
        d["search"] = {k: v.to_dict() for k, v in self.search.items()}
        # `baselines:` as a user writes it: the fixed methods, then the searched ones
        d["baselines"] = [*self.baselines, *(b.to_dict() for b in self.baseline_searches)]
        del d["baseline_searches"]
        return d


STUDY_KEYS = {
    "name", "storage", "preset", "num_samples", "max_concurrent_trials", "searcher",
    "seed", "objectives", "search", "trial", "baselines", "replicates", "confirm_seeds",
    "scheduler", "base", "ablation", "confirm_eval", "primary_eval", "matched_clean",
}  # fmt: skip


def replicate_seed(study_seed: int, replicate: int) -> int:
    return study_seed + replicate


def confirm_seed(study_seed: int, index: int) -> int:
    return study_seed + CONFIRM_SEED_OFFSET + index


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def _check_int(where: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"{where}: must be {bound}, got {value!r}")
    return value


def _param_spec(name: str, spec: Any, where: str | None = None) -> ParamSpec:
    where = where or f"search.{name}"
    if name not in TRIAL_FIELDS:
        raise ConfigError(f"{where}: not a trial key; known keys: {', '.join(TRIAL_FIELDS)}")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping like {{type: uniform, low: 0, high: 1}}")
    kind = spec.get("type")
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}.type: must be one of {DISTRIBUTIONS}, got {kind!r}")
    expected = {"type", "values"} if kind == "choice" else {"type", "low", "high"}
    unknown = set(spec) - expected
    if unknown or not expected <= set(spec):
        raise ConfigError(f"{where}: a {kind} distribution takes exactly {sorted(expected)}")
    if kind == "choice":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.values: expected a non-empty list")
        return ParamSpec(kind, values=tuple(validate_trial_value(name, v, where) for v in values))
    low = validate_trial_value(name, spec["low"], f"{where}.low")
    high = validate_trial_value(name, spec["high"], f"{where}.high")
    if not isinstance(low, int | float) or not isinstance(high, int | float):
        raise ConfigError(f"{where}: {kind} needs numeric low and high")
    if kind == "int" and TRIAL_FIELDS[name].type not in (int, int | None):
        raise ConfigError(f"{where}: int distribution on a non-integer key")
    if low >= high:
        raise ConfigError(f"{where}: low must be below high, got {low} >= {high}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}.low: loguniform needs low > 0, got {low}")
    return ParamSpec(kind, low=low, high=high)


def _matched_clean(raw: Any) -> tuple[float, ...]:
    if raw is None:
        return ()
    numbers = (
        isinstance(raw, list)
        and len(raw) <= 10
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw)
    )
    if numbers and all(0 < v < 1 for v in raw):
        return tuple(float(v) for v in raw)
    raise ConfigError(
        f"matched_clean: expected a list of up to 10 clean accuracies in (0, 1), e.g. [0.8, 0.85], "
        f"got {raw!r}"
    )


def _baselines(raw: Any) -> tuple[tuple[str, ...], tuple[BaselineSearch, ...]]:
    """`baselines:`: method names (a fixed point each) and mappings {method, search,
    num_samples} (searched like the method). A method appears at most once in each kind."""
    if not isinstance(raw, list):
        raise ConfigError(f"baselines: expected a list of methods, got {raw!r}")
    fixed: list[str] = []
    searched: list[BaselineSearch] = []
    for i, entry in enumerate(raw):
        if isinstance(entry, str):
            if entry not in BASELINE_METHODS:
                raise ConfigError(f"baselines: {entry!r} is not one of {BASELINE_METHODS}")
            if entry in fixed:
                raise ConfigError(f"baselines: {entry!r} is listed twice")
            fixed.append(entry)
            continue
        where = f"baselines[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"method", "search", "num_samples"}:
            raise ConfigError(
                f"{where}: expected a method or a mapping {{method, search, num_samples}}, "
                f"got {entry!r}"
            )
        method = entry.get("method")
        if method not in BASELINE_METHODS:
            raise ConfigError(f"{where}.method: must be one of {BASELINE_METHODS}, got {method!r}")
        if any(b.method == method for b in searched):
            raise ConfigError(f"{where}: {method} is searched twice")
        space = entry.get("search")
        if not isinstance(space, dict) or not space:
            raise ConfigError(f"{where}.search: expected a mapping of trial key to distribution")
        specs = {}
        for key, spec in space.items():
            specs[key] = _param_spec(key, spec, f"{where}.search.{key}")
            if method not in methods_reading(key):
                raise ConfigError(
                    f"{where}.search.{key}: {method} does not read {key} (read by "
                    f"{', '.join(methods_reading(key))})"
                )
            if ROLE_OF[key] not in SEARCHABLE_ROLES:
                raise ConfigError(
                    f"{where}.search.{key}: not a training key a baseline can search (roles "
                    f"{', '.join(SEARCHABLE_ROLES)})"
                )
        default = SAMPLES_PER_SEARCHED_KEY * len(specs)
        n = _check_int(f"{where}.num_samples", entry.get("num_samples", default), 1, 100_000)
        searched.append(BaselineSearch(method, specs, n))
    return tuple(fixed), tuple(searched)


def _merge(base: dict, override: dict) -> dict:
    """Shallow-merge two study dicts; `trial`, `search` and `base` merge one level deeper (a
    base given by its checkpoint and a base to train replace each other whole)."""
    out = dict(base)
    for key, value in override.items():
        if (
            key in ("trial", "search", "base")
            and isinstance(value, dict)
            and isinstance(out.get(key), dict)
            and (key != "base" or (CHECKPOINT_KEY in value) == (CHECKPOINT_KEY in out[key]))
        ):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML mapping from a file, or a ConfigError saying why not."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot read ({e.strerror or e})") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path}: malformed YAML{at}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return data


def build_study_config(values: dict[str, Any]) -> StudyConfig:
    """Validate a study dict (preset, then file, then command-line values merged in)."""
    unknown = set(values) - STUDY_KEYS
    if unknown:
        known = ", ".join(sorted(STUDY_KEYS))
        raise ConfigError(f"unknown config key {sorted(unknown)[0]!r}; known keys: {known}")
    preset = values.get("preset", "digits")
    if preset not in PRESETS:
        raise ConfigError(f"preset: must be one of {tuple(PRESETS)}, got {preset!r}")
    given = values  # what the file and the command line set, before the preset fills in
    values = _merge(PRESETS[preset], values)

    name = values.get("name") or f"{preset}-study"
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"name: letters, digits, '.', '_' and '-' only, got {name!r}")
    if name == BASES_DIR:
        raise ConfigError(f"name: {BASES_DIR!r} is the storage's folder of base models")
    storage = values.get("storage") or "./results"
    if not isinstance(storage, str):
        raise ConfigError(f"storage: expected a path or URI, got {storage!r}")
    if "://" not in storage:
        storage = os.path.abspath(os.path.expanduser(storage))
    searcher = values.get("searcher", "optuna")
    if searcher not in SEARCHERS:
        raise ConfigError(f"searcher: must be one of {SEARCHERS}, got {searcher!r}")
    objectives = values.get("objectives", DEFAULT_OBJECTIVES)
    if not isinstance(objectives, dict) or not objectives:
        raise ConfigError("objectives: expected a mapping of metric name to max/min")
    for metric, mode in objectives.items():
        if mode not in ("max", "min"):
            raise ConfigError(f"objectives.{metric}: must be max or min, got {mode!r}")
        if not str(metric).startswith("val_"):
            raise ConfigError(
                f"objectives.{metric}: the search selects on validation metrics (val_*) only; "
                "the test split is read by the confirmation stage"
            )
    trial = values.get("trial") or {}
    if isinstance(trial, dict) and isinstance(trial.get("data_dir"), str):
        data_dir = trial["data_dir"]  # workers run elsewhere: make a local path absolute
        if "://" not in data_dir:
            trial = {**trial, "data_dir": os.path.abspath(os.path.expanduser(data_dir))}
    if isinstance(trial, dict) and isinstance(trial.get("base_checkpoint"), str):
        path = trial["base_checkpoint"]
        if path.strip() and "://" not in path:
            trial = {**trial, "base_checkpoint": os.path.abspath(os.path.expanduser(path))}
    search = values.get("search") or {}
    if not isinstance(search, dict):
        raise ConfigError("search: expected a mapping of trial key to distribution")
    baselines, baseline_searches = _baselines(values.get("baselines") or [])
    max_conc = values.get("max_concurrent_trials")
    trial_cfg = make_trial_config(trial)
    num_samples = _check_int("num_samples", values.get("num_samples", 8), 1, 100_000)
    scheduler = _scheduler(values.get("scheduler"))
    ablation = _ablation(values.get("ablation"), trial_cfg)
    if ablation is not None:
        _check_ablation_study(given, scheduler)
        search, num_samples = {}, len(ABLATION_VARIANTS)
    confirm_eval = validate_confirm_eval(values.get("confirm_eval"), trial_cfg)
    return StudyConfig(
        name=name,
        storage=storage,
        preset=preset,
        num_samples=num_samples,
        max_concurrent_trials=None
        if max_conc is None
        else _check_int("max_concurrent_trials", max_conc, 1, 10_000),
        searcher=searcher,
        seed=_check_int("seed", values.get("seed", 0), 0, 2**32 - 1),
        objectives=dict(objectives),
        search={k: _param_spec(k, v) for k, v in search.items() if v is not None},
        trial=trial_cfg,
        baselines=baselines,
        baseline_searches=baseline_searches,
        replicates=_check_int("replicates", values.get("replicates", 2), 1, MAX_REPLICATES),
        confirm_seeds=_check_int("confirm_seeds", values.get("confirm_seeds", 3), 0, 1000),
        scheduler=scheduler,
        base=validate_base(values.get("base"), trial_cfg),
        ablation=ablation,
        confirm_eval=confirm_eval,
        matched_clean=_matched_clean(values.get("matched_clean")),
        primary_eval=validate_confirm_eval(
            values.get("primary_eval"), trial_cfg, "primary_eval", confirm_eval
        ),
    )


def validate_confirm_eval(
    raw: Any, trial: TrialConfig, where: str = "confirm_eval", under: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`confirm_eval:` (or `primary_eval:`, applied over `under`) as validated trial values of
    TEST_EVAL_KEYS ({} when absent)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: expected a mapping like {{final_eval_subset: 200}}, got {raw!r}"
        )
    for key in raw:
        if key not in TEST_EVAL_KEYS:
            raise ConfigError(f"{where}.{key}: not a test-evaluation key; one of {TEST_EVAL_KEYS}")
    values = {k: validate_trial_value(k, v, f"{where}.{k}") for k, v in raw.items()}
    try:  # the checks across keys, on the trial config the confirmation will run
        make_trial_config({**vars(trial), **(under or {}), **values})
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
    return values


def _ablation(raw: Any, trial: TrialConfig) -> dict[str, Any] | None:
    """The `ablation:` setting as validated trial values, or None (a search)."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            "ablation: expected a mapping of trial keys giving the setting, e.g. "
            f"{{mask_ratio: 0.3, reg_weight: 0.5, epsilon: 0.0157}}, got {raw!r}"
        )
    for key in raw:
        if key in _STUDY_WIDE_KEYS:
            raise ConfigError(f"ablation.{key}: the study's, not the setting's; set it in trial:")
    setting = {k: validate_trial_value(k, v, f"ablation.{k}") for k, v in raw.items()}
    full = make_trial_config({**vars(trial), **setting})
    if full.method != "lime_refine":
        raise ConfigError(
            "ablation: the components it switches off are lime_refine's; trial.method must be "
            f"lime_refine, got {full.method!r}"
        )
    for key, value, component in _COMPONENT_OFF:
        if getattr(full, key) == value:
            raise ConfigError(
                f"ablation: the setting's {key} = {value!r} switches {component} off already; "
                f"every component must be on in it (set ablation.{key})"
            )
    return setting


def _check_ablation_study(given: dict[str, Any], scheduler: dict[str, Any]) -> None:
    """An ablation runs fixed variants: nothing to search, to sample or to stop early. `given`:
    the file's and the command line's values (the preset's search and num_samples are dropped)."""
    if any(spec is not None for spec in (given.get("search") or {}).values()):
        raise ConfigError("search: an ablation searches nothing (it runs fixed variants); drop it")
    n = len(ABLATION_VARIANTS)
    if given.get("num_samples", n) != n:
        raise ConfigError(f"num_samples: an ablation runs its {n} variants; drop num_samples")
    if scheduler["type"] != "fifo":
        raise ConfigError("scheduler: an ablation stops no variant early; use fifo")


def _scheduler(raw: Any) -> dict[str, Any]:
    from study.scheduler import validate_scheduler_settings  # imports Ray Tune: only here

    try:
        return validate_scheduler_settings(raw)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def load_config(path: str | os.PathLike | None, overrides: dict[str, Any]) -> StudyConfig:
    """Preset <- YAML file <- command-line overrides, validated as a whole."""
    values = read_yaml(path) if path is not None else {}
    return build_study_config(_merge(values, overrides))
