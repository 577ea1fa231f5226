"""The study's shared base model: trained (or found in the cache) before the search, then
refined by every searched trial and baseline; one base per seed for the confirmation. A base
given by its checkpoint (`base: {checkpoint: ...}`) is never trained: every trial refines it.

trainables/base.py holds the model side (the key, the cache, the checksummed file); this module
decides which bases a study needs and points its trials at them.
"""

import dataclasses
from collections.abc import Callable

from study.config import StudyConfig, confirm_seed
from study.console import console_stream
from study.store import BASE_RECORD, TRAIN_RUNS_DIR, StudyStore, join
from trainables.base import (
    BaseTrainer,
    base_checkpoint,
    base_trial_config,
    data_fingerprint,
    ensure_base,
)
from trainables.config import TrialConfig, make_trial_config
from trainables.refine import load_trial_splits
from trainables.trial import run_base


def study_data_fingerprint(cfg: StudyConfig) -> str:
    """The fingerprint of the training images every base of the study trains on (loaded here,
    in the driver, with the test split sealed)."""
    return data_fingerprint(load_trial_splits(cfg.trial))


def ray_trainer(cfg: StudyConfig) -> BaseTrainer:
    """Bases train as Ray Train runs, their checkpoints under the study's train_runs."""
    storage = join(cfg.study_dir, TRAIN_RUNS_DIR)
    return lambda base_cfg: run_base(base_cfg, storage)


def _say(line: str) -> None:
    print(line, file=console_stream(), flush=True)


def _base_config(cfg: StudyConfig, seed: int) -> TrialConfig:
    assert cfg.base is not None
    return base_trial_config(cfg.trial, cfg.base, seed)


def prepare_base(
    cfg: StudyConfig,
    train: BaseTrainer | None = None,
    data_fp: str | None = None,
    say: Callable[[str], None] = _say,
) -> StudyConfig:
    """Train the study's base, or find it in <storage>/bases (a resumed study, or another study
    in the same storage with the same base), and return the config with every trial pointed at
    it (trial.base_checkpoint). Without a `base:` the config comes back unchanged.

    The search and the baselines share one base, trained with the study's seed: their
    replicates then differ in the refinement alone, and every row refines the same model with
    the same budget."""
    if cfg.base is None:
        return cfg
    path = base_checkpoint(cfg.base)
    if path is not None:
        say(f"[base] refining the classifier in {path}; no training")
    else:
        data_fp = data_fp or study_data_fingerprint(cfg)
        info = ensure_base(
            _base_config(cfg, cfg.trial.seed), cfg.storage, data_fp, train or ray_trainer(cfg), say
        )
        path = info["path"]
    trial = make_trial_config({**vars(cfg.trial), "base_checkpoint": path})
    return dataclasses.replace(cfg, trial=trial)


def write_base_record(cfg: StudyConfig) -> None:
    """base.json in the study directory: which base the trials refine (for the analysis)."""
    if cfg.base is None or not cfg.trial.base_checkpoint:
        return
    record = {"base": cfg.base, "path": cfg.trial.base_checkpoint, "seed": cfg.trial.seed}
    StudyStore(cfg.study_dir).write_json(BASE_RECORD, record)


def confirmation_bases(
    cfg: StudyConfig,
    seeds: int,
    train: BaseTrainer | None = None,
    data_fp: str | None = None,
    say: Callable[[str], None] = _say,
) -> list[str | None]:
    """The base model file of each confirmation seed j: a base trained with that seed (the
    confirmation trials' own seed, confirm_seed(study seed, j)), cached like the study's base.

    Why re-train the base per seed rather than reuse the study's: the confirmation estimates
    how the whole recipe (train a base, then refine it) does on the test split across seeds. A
    single shared base would be one draw that every confirmation seed inherits, so the seed
    spread and the 95% intervals would leave out the base's own variation and the answer would
    hold for that one base only. With one base per seed, every configuration and baseline at
    seed j refines the same base j, so the comparison with PGD-AT stays paired by seed and the
    base's variation cancels in the differences where it should. The cost: `seeds` more base
    trainings (cached by the same key, which includes the seed, so a resumed or re-run
    confirmation trains none again).

    `base.confirmation: shared` keeps the study's base for every seed: the intervals then cover
    the refinement's variation only and the answer holds for that one base, but no base is
    re-trained (the cifar10-cpu preset's choice: three more bases would cost about 45 of its
    150 minutes on 2 cores). Without a `base:` the list is all None (from scratch); a base
    given by its checkpoint is every seed's (there is no recipe to re-run)."""
    if cfg.base is None:
        return [None] * seeds
    if base_checkpoint(cfg.base) is not None:
        return [base_checkpoint(cfg.base)] * seeds
    data_fp = data_fp or study_data_fingerprint(cfg)
    train = train or ray_trainer(cfg)
    if cfg.base.get("confirmation") == "shared":  # the study's own base, from the cache
        info = ensure_base(_base_config(cfg, cfg.trial.seed), cfg.storage, data_fp, train, say)
        return [info["path"]] * seeds
    paths: list[str | None] = []
    for j in range(seeds):
        info = ensure_base(
            _base_config(cfg, confirm_seed(cfg.trial.seed, j)), cfg.storage, data_fp, train, say
        )
        paths.append(info["path"])
    return paths
