"""Replicates: each configuration the searcher proposes runs as K Tune trials with K seeds, and
the searcher sees one result per configuration, the mean over its replicates.

Hand-written because Ray's `tune.search.Repeater` reads `result[searcher.metric]`, a single
metric: with OptunaSearch's list of objectives that lookup fails.
"""

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray.tune.search import Searcher

from study.config import replicate_seed


@dataclass
class _Group:
    """The replicates of one configuration: who has reported what."""

    config_id: str
    primary_trial_id: str  # the id the wrapped searcher knows the configuration by
    config: dict
    trial_ids: list[str] = field(default_factory=list)
    results: dict[str, dict | None] = field(default_factory=dict)  # None: errored
    stopped: bool = False
    told: bool = False


class ReplicateSearcher(Searcher):
    """Wraps a (multi-objective) searcher: K trials per suggested configuration, one result.

    Each trial's config gets `config_id` (shared by the replicates), `replicate` (0..K-1) and
    `seed` (replicate_seed). When all K replicates have finished, the wrapped searcher gets the
    mean of every objective; if any replicate errored it gets an error (a configuration that
    diverges at one seed is not one to pick); if the scheduler stopped the configuration early
    (`config_stopped`), it is told the trial was pruned (OptunaSearch records PRUNED when it
    gets no result and no error), so a first-round figure is never taken for a final one.
    """

    def __init__(self, searcher: Searcher, replicates: int, study_seed: int, id_prefix: str = "c"):
        self.searcher = searcher
        self.replicates = replicates
        self.study_seed = study_seed
        self.id_prefix = id_prefix  # config ids are <prefix>000, <prefix>001, ...
        self._groups: list[_Group] = []
        self._group_of: dict[str, _Group] = {}
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    @property
    def _metrics(self) -> list[str]:
        return self.metric if isinstance(self.metric, list) else [self.metric]

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | None:
        group = self._groups[-1] if self._groups else None
        if group is None or len(group.trial_ids) == self.replicates:
            config = self.searcher.suggest(trial_id)
            if config is None or config == Searcher.FINISHED:
                return config
            group_id = f"{self.id_prefix}{len(self._groups):03d}"
            group = _Group(group_id, trial_id, copy.deepcopy(config))
            self._groups.append(group)
        replicate = len(group.trial_ids)
        group.trial_ids.append(trial_id)
        self._group_of[trial_id] = group
        return {
            **group.config,
            "config_id": group.config_id,
            "replicate": replicate,
            "seed": replicate_seed(self.study_seed, replicate),
        }

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # the wrapped searcher learns from whole configurations only

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        group = self._group_of.get(trial_id)
        if group is None or group.told:
            return  # e.g. a trial re-run after resume whose group was already reported
        complete = bool(result) and not error and all(m in result for m in self._metrics)
        group.results[trial_id] = dict(result) if complete else None
        if len(group.results) == self.replicates:
            self._tell(group)

    def config_stopped(self, config_id: str, rung: int) -> None:
        """Called by an early-stopping scheduler: the configuration stops at this rung."""
        for group in self._groups:
            if group.config_id == config_id:
                group.stopped = True
                if len(group.results) == self.replicates:
                    self._tell(group)

    def _tell(self, group: _Group) -> None:
        if group.told:
            return
        group.told = True
        if group.stopped:
            self.searcher.on_trial_complete(group.primary_trial_id, result=None, error=False)
        elif any(r is None for r in group.results.values()):
            self.searcher.on_trial_complete(group.primary_trial_id, result=None, error=True)
        else:
            results = group.results.values()
            means = {m: float(np.mean([r[m] for r in results])) for m in self._metrics}
            self.searcher.on_trial_complete(group.primary_trial_id, result=means)

    # Tune's SearchGenerator saves wrappers (anything with a `.searcher`) through
    # get_state/set_state and the wrapped searcher through its own save_to_dir, and restores
    # both on resume: the groups survive an interruption.

    def get_state(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "searcher"}

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
