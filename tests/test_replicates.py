"""The replicate searcher: K trials per configuration, and Optuna sees their mean."""

import optuna
import pytest
from optuna.trial import TrialState
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from study.replicates import ReplicateSearcher

METRICS = ["val_clean_acc", "val_robust_acc"]


def _searcher(replicates: int = 2) -> ReplicateSearcher:
    optuna_search = OptunaSearch(
        metric=METRICS, mode=["max", "max"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    searcher = ReplicateSearcher(optuna_search, replicates, study_seed=7)
    searcher.set_search_properties(None, None, {"mask_ratio": tune.uniform(0.0, 0.5)})
    return searcher


def _study(searcher: ReplicateSearcher) -> optuna.Study:
    return searcher.searcher._ot_study


def test_replicates_share_the_configuration_and_take_consecutive_seeds():
    s = _searcher()
    configs = [s.suggest(f"t{i}") for i in range(4)]
    assert [c["config_id"] for c in configs] == ["c000", "c000", "c001", "c001"]
    assert [c["replicate"] for c in configs] == [0, 1, 0, 1]
    assert [c["seed"] for c in configs] == [7, 8, 7, 8]
    assert configs[0]["mask_ratio"] == configs[1]["mask_ratio"] != configs[2]["mask_ratio"]
    assert len(_study(s).trials) == 2  # Optuna proposed two configurations, not four


def test_optuna_gets_the_mean_of_the_replicates_once_all_have_finished():
    s = _searcher()
    for i in range(2):
        s.suggest(f"t{i}")
    s.on_trial_complete("t0", {"val_clean_acc": 0.9, "val_robust_acc": 0.5})
    assert _study(s).trials[0].state == TrialState.RUNNING  # one replicate still running
    s.on_trial_complete("t1", {"val_clean_acc": 0.8, "val_robust_acc": 0.2})
    trial = _study(s).trials[0]
    assert trial.state == TrialState.COMPLETE
    assert trial.values == pytest.approx([0.85, 0.35])  # hand-computed means


def test_an_errored_replicate_fails_the_configuration_and_a_stopped_one_is_pruned():
    s = _searcher()
    for i in range(4):
        s.suggest(f"t{i}")
    s.on_trial_complete("t0", {"val_clean_acc": 0.9, "val_robust_acc": 0.5})
    s.on_trial_complete("t1", None, error=True)
    s.config_stopped("c001", rung=1)
    s.on_trial_complete("t2", {"val_clean_acc": 0.3, "val_robust_acc": 0.1})
    s.on_trial_complete("t3", {"val_clean_acc": 0.3, "val_robust_acc": 0.1})
    states = [t.state for t in _study(s).trials]
    assert states == [TrialState.FAIL, TrialState.PRUNED]
    assert _study(s).best_trials == []  # neither counts as an observed result


def test_state_survives_a_resume():
    s = _searcher()
    for i in range(3):
        s.suggest(f"t{i}")
    s.on_trial_complete("t0", {"val_clean_acc": 0.9, "val_robust_acc": 0.5})
    state = s.get_state()
    restored = _searcher()
    restored.searcher = s.searcher  # Tune restores the wrapped searcher separately
    restored.set_state(state)
    assert restored.suggest("t3")["config_id"] == "c001"  # fills the open group first
    restored.on_trial_complete("t1", {"val_clean_acc": 0.7, "val_robust_acc": 0.3})
    assert _study(restored).trials[0].values == pytest.approx([0.8, 0.4])
