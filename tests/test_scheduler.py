"""MO-ASHA (study/scheduler.py): the promotion rule against hand-worked examples, replicates,
resume, Optuna's view of a stopped configuration, and a real Ray Tune run."""

import json
import pickle
import time

import optuna
import pytest
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import TrialScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from study.mo_asha import (
    candidate_place,
    epsilon_net_order,
    nondominated_ranks,
    priority_order,
    promote,
    rung_rounds,
)
from study.scheduler import (
    MOASHAScheduler,
    rung_decisions,
    stopped_configs,
    validate_scheduler_settings,
)

CONT, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP
OBJ = {"val_clean_acc": "max", "val_robust_acc": "max"}
MAX2 = [True, True]


# ------------------------------------------------------------------------------------------
# (a) The rule, by hand


def test_two_objectives_hand_worked():
    """n = 7 configurations at a rung, (clean, robust) both maximised, eta = 3.

        P1 (0.90, 0.10)  P2 (0.85, 0.30)  P3 (0.70, 0.60)  P4 (0.50, 0.70)
        Q  (0.60, 0.20)  R  (0.40, 0.05)  S  (0.70, 0.60), a copy of P3

    Fronts: F0 = {P1, P2, P3, P4, S}; Q is dominated (by P2 only): F1 = {Q}; R (by Q): F2.
    Epsilon-net in F0, normalised by F0's ranges (clean 0.50..0.90, robust 0.10..0.70):
        P1 (1, 0)   P2 (0.875, 0.333)   P3 = S (0.5, 0.833)   P4 (0, 1)
      first: best clean, P1
      distance to P1: P2 0.356, P3 0.972, P4 1.414                          -> P4
      distance to the nearer of P1, P4: P2 min(0.356, 1.100) = 0.356,
                                        P3 min(0.972, 0.527) = 0.527          -> P3, then P2
      S, a copy of P3, comes right after P3 and shares its place.
    Order P1, P4, P3, S, P2, Q, R: places 0, 1, 2, 2 (S), 4, 5, 6.
    Go on iff place * eta <= n, i.e. place <= 2: P1, P4, P3 and S go on; P2, Q, R stop.
    P2 is non-dominated and still stops: it sits next to P1, and the net keeps the spread.
    """
    pts = {
        "P1": (0.90, 0.10),
        "P2": (0.85, 0.30),
        "P3": (0.70, 0.60),
        "P4": (0.50, 0.70),
        "Q": (0.60, 0.20),
        "R": (0.40, 0.05),
        "S": (0.70, 0.60),
    }
    ids, X = list(pts), list(pts.values())
    assert nondominated_ranks(X, MAX2) == [0, 0, 0, 0, 1, 2, 0]
    assert [ids[i] for i in epsilon_net_order(X[:4], MAX2)] == ["P1", "P4", "P3", "P2"]
    assert [ids[i] for i in priority_order(X, MAX2)] == ["P1", "P4", "P3", "S", "P2", "Q", "R"]
    places = {c: candidate_place(pts, c, MAX2) for c in ids}
    assert places == {"P1": 0, "P4": 1, "P3": 2, "S": 2, "P2": 4, "Q": 5, "R": 6}
    go_on = {c for c in ids if promote(pts, c, 3, MAX2)}
    assert go_on == {"P1", "P4", "P3", "S"}
    # eta = 2: place <= 3.5, so P2 (place 4) still stops; eta = 1.5: place <= 4.67, it goes on
    assert {c for c in ids if promote(pts, c, 2, MAX2)} == {"P1", "P4", "P3", "S"}
    assert {c for c in ids if promote(pts, c, 1.5, MAX2)} == {"P1", "P4", "P3", "S", "P2"}


def test_three_objectives_one_minimised_hand_worked():
    """n = 6, objectives (clean max, robust max, seconds min).

        U (0.9, 0.5, 10)  V (0.9, 0.5, 20)  W (0.7, 0.7, 30)
        X (0.6, 0.4,  5)  Y (0.6, 0.4, 40)  Z (0.5, 0.3, 50)

    V is U but slower: dominated by U. X is the fastest: non-dominated only because seconds
    are minimised. Y is X but slower. Fronts: F0 = {U, W, X}, F1 = {V}, F2 = {Y} (V and X
    dominate it), F3 = {Z} (Y dominates it).
    Epsilon-net in F0, normalised (clean 0.6..0.9, robust 0.4..0.7, seconds 5..30):
        U (1, 0.333, 0.2)   W (0.333, 1, 1)   X (0, 0, 0)
      first: best clean, U; distance to U: W sqrt(0.444 + 0.444 + 0.64) = 1.236,
      X sqrt(1 + 0.111 + 0.04) = 1.073 -> W, then X.
    Order U, W, X, V, Y, Z. eta = 4: place * 4 <= 6, place <= 1: U and W go on, X stops.
    eta = 2: place <= 3: U, W, X and V go on, Y and Z stop.
    """
    pts = {
        "U": (0.9, 0.5, 10),
        "V": (0.9, 0.5, 20),
        "W": (0.7, 0.7, 30),
        "X": (0.6, 0.4, 5),
        "Y": (0.6, 0.4, 40),
        "Z": (0.5, 0.3, 50),
    }
    ids, X, m = list(pts), list(pts.values()), [True, True, False]
    assert nondominated_ranks(X, m) == [0, 1, 0, 0, 2, 3]
    assert [ids[i] for i in priority_order(X, m)] == ["U", "W", "X", "V", "Y", "Z"]
    assert {c for c in ids if promote(pts, c, 4, m)} == {"U", "W"}
    assert {c for c in ids if promote(pts, c, 2, m)} == {"U", "W", "X", "V"}
    # The direction matters: with seconds maximised, V dominates U, U and Y dominate X,
    # and Y and Z (the slowest) are non-dominated.
    assert nondominated_ranks(X, [True, True, True]) == [1, 0, 0, 2, 0, 0]


def test_ties():
    # Equidistant points on one front: A (1, 0) first, B (0, 1) farthest; C (0.4, 0.6) and
    # D (0.6, 0.4) are both 0.566 from the nearer of A and B: the one recorded first wins.
    # n = 4, eta = 2: place <= 2, so exactly one of C and D goes on.
    first_c = {"A": (1.0, 0.0), "B": (0.0, 1.0), "C": (0.4, 0.6), "D": (0.6, 0.4)}
    first_d = {k: first_c[k] for k in ("A", "B", "D", "C")}
    for pts, winner, loser in ((first_c, "C", "D"), (first_d, "D", "C")):
        assert candidate_place(pts, winner, MAX2) == 2
        assert candidate_place(pts, loser, MAX2) == 3
        assert promote(pts, winner, 2, MAX2) and not promote(pts, loser, 2, MAX2)

    # Identical points share the best place among them: three copies all go on at eta = 3
    # (each has place 0, 0 * 3 <= 3), and a copy of a stopped point stops too.
    same = {"a": (0.5, 0.5), "b": (0.5, 0.5), "c": (0.5, 0.5)}
    assert all(promote(same, c, 3, MAX2) for c in same)
    assert epsilon_net_order(list(same.values()), MAX2) == [0, 1, 2]
    # A copy of a stopped point stops too: fronts {top}, {y}, {x, x2}; x and x2 share
    # place 2, and with n = 4, eta = 3: 2 * 3 > 4.
    dup = {"top": (0.9, 0.9), "x": (0.1, 0.1), "y": (0.5, 0.5), "x2": (0.1, 0.1)}
    assert priority_order(list(dup.values()), MAX2) == [0, 2, 1, 3]
    assert candidate_place(dup, "x2", MAX2) == candidate_place(dup, "x", MAX2) == 2
    assert not promote(dup, "x", 3, MAX2) and not promote(dup, "x2", 3, MAX2)
    assert promote(dup, "x2", 2, MAX2)  # eta = 2: 2 * 2 <= 4, both go on


def test_first_pick_ties_go_to_the_next_objective_then_the_earlier_point():
    # Same best clean accuracy on one front (three objectives): the better robust one first.
    pts = [(0.9, 0.2, 0.8), (0.9, 0.8, 0.2), (0.5, 0.9, 0.9)]
    assert epsilon_net_order(pts, [True, True, True])[0] == 1
    # All equal on every objective but distinct indices: the earliest first.
    assert epsilon_net_order([(1.0, 2.0), (1.0, 2.0)]) == [0, 1]


def test_one_objective_matches_syne_tunes_own_bracket_test():
    # syne-tune tst/test_moasha.py::test_bucket: Bracket(1, 10, 2, 0) with losses 2, 0, 3
    # -> CONTINUE, CONTINUE, STOP (minimised, reduction factor 2).
    rung: dict[str, tuple] = {}
    decisions = []
    for name, loss in (("t0", 2.0), ("t1", 0.0), ("t2", 3.0)):
        rung[name] = (loss,)
        decisions.append(promote(rung, name, 2, [False]))
    assert decisions == [True, True, False]
    # (moocore 0.3.2 alone gets one objective with maximise=[False] backwards)
    assert nondominated_ranks([[2.0], [0.0], [3.0]], [False]) == [1, 0, 2]
    assert nondominated_ranks([[2.0], [0.0], [3.0]], [True]) == [1, 2, 0]
    # and test_moasha_mode_max (both metrics equal, maximised): 2, 4, 1 -> C, C, S
    rung = {}
    decisions = []
    for name, v in (("t0", 2.0), ("t1", 4.0), ("t2", 1.0)):
        rung[name] = (v, v)
        decisions.append(promote(rung, name, 2, MAX2))
    assert decisions == [True, True, False]


def test_nan_is_worst_and_the_first_at_a_rung_always_goes_on():
    pts = {"nan": (float("nan"), 0.9), "ok": (0.1, 0.1), "good": (0.5, 0.5)}
    assert nondominated_ranks(list(pts.values()), MAX2) == [2, 1, 0]
    assert candidate_place(pts, "nan", MAX2) == 2
    assert promote({"only": (0.0, 0.0)}, "only", 3, MAX2)


def test_rungs_and_settings():
    assert rung_rounds(2) == [1]  # the digits preset: 2 rounds, one rung
    assert rung_rounds(10, 1, 3) == rung_rounds(27, 1, 3) == [1, 3, 9]
    assert rung_rounds(9, 2, 2) == [2, 4, 8]
    assert rung_rounds(3, 1, 2.5) == [1]
    assert validate_scheduler_settings(None)["type"] == "fifo"
    assert validate_scheduler_settings("mo-asha") == {
        "type": "mo-asha",
        "grace_rounds": 1,
        "reduction_factor": 3,
    }
    bad = [
        {"type": "asha"},
        {"type": "mo-asha", "grace": 1},
        {"type": "mo-asha", "grace_rounds": 0},
        {"type": "mo-asha", "grace_rounds": 1.5},
        {"type": "mo-asha", "reduction_factor": 1},
        {"type": "mo-asha", "reduction_factor": "3"},
        ["mo-asha"],
    ]
    for raw in bad:
        with pytest.raises(ValueError, match="scheduler"):
            validate_scheduler_settings(raw)
    with pytest.raises(ValueError, match="no rung"):
        MOASHAScheduler(OBJ, max_rounds=1)
    with pytest.raises(ValueError, match="objectives"):
        MOASHAScheduler({"a": "maximize"}, max_rounds=3)


# ------------------------------------------------------------------------------------------
# (b) Replicates, with stand-in trials (the scheduler reads only trial_id, config, status)


class FakeTrial:
    def __init__(self, trial_id, config_id=None, replicate=0, stage="search", status="RUNNING"):
        self.trial_id = trial_id
        self.config = {"stage": stage, "replicate": replicate}
        if config_id is not None:
            self.config["config_id"] = config_id
        self.status = status


def _res(rnd, clean, robust):
    return {
        "round": rnd,
        "training_iteration": rnd,
        "val_clean_acc": clean,
        "val_robust_acc": robust,
    }


def _sched(calls=None, **kw):
    kw = {"max_rounds": 3, "reduction_factor": 3, "replicates": 2, **kw}
    cb = (lambda cid, rung: calls.append((cid, rung))) if calls is not None else None
    return MOASHAScheduler(OBJ, on_config_stopped=cb, **kw)


def _trials(n_configs, k=2):
    return {
        f"c{c}r{r}": FakeTrial(f"c{c}r{r}", f"c{c}", r) for c in range(n_configs) for r in range(k)
    }


def test_a_configuration_is_decided_on_the_mean_once_all_replicates_reach_the_rung():
    calls: list = []
    s = _sched(calls)
    t = _trials(2)
    for tr in t.values():
        s.on_trial_add(None, tr)
    assert s.rungs == [1]
    # c0: the first configuration at the rung goes on, once both replicates are there.
    assert s.on_trial_result(None, t["c0r0"], _res(1, 0.6, 0.6)) == CONT
    assert s.decisions() == []  # pending: one replicate of two
    assert s.on_trial_result(None, t["c0r1"], _res(1, 0.6, 0.6)) == CONT
    assert [d["config_id"] for d in s.decisions()] == ["c0"]
    # c1: its first replicate alone (0.9, 0.9) would dominate c0, but the mean with the
    # second (0.1, 0.1) is (0.5, 0.5): dominated, place 1 of 2, 1 * 3 > 2 -> stopped.
    assert s.on_trial_result(None, t["c1r0"], _res(1, 0.9, 0.9)) == CONT
    assert s.on_trial_result(None, t["c1r0"], _res(2, 0.9, 0.9)) == CONT  # early one goes on
    assert calls == []
    assert s.on_trial_result(None, t["c1r1"], _res(1, 0.1, 0.1)) == STOP
    assert calls == [("c1", 1)]
    assert s.decisions()[-1]["values"] == pytest.approx([0.5, 0.5])
    # The sibling that went ahead is stopped at its next result; the callback is not repeated.
    assert s.on_trial_result(None, t["c1r0"], _res(3, 0.9, 0.9)) == STOP
    assert calls == [("c1", 1)]
    assert s.stopped == {"c1": 1}
    # c0 goes on to the end.
    assert s.on_trial_result(None, t["c0r0"], _res(2, 0.6, 0.6)) == CONT
    assert s.on_trial_result(None, t["c0r0"], _res(3, 0.6, 0.6)) == CONT


def test_no_decision_before_every_replicate_has_started():
    s = _sched()
    tr = FakeTrial("a", "c0", 0)
    s.on_trial_add(None, tr)
    assert s.on_trial_result(None, tr, _res(1, 0.1, 0.1)) == CONT
    assert s.on_trial_result(None, tr, _res(2, 0.1, 0.1)) == CONT
    assert s.decisions() == []


def test_an_errored_replicate_is_not_waited_for_but_a_retried_one_is():
    calls: list = []
    s = _sched(calls)
    t = _trials(3)
    for tr in t.values():
        s.on_trial_add(None, tr)
    for tr in ("c0r0", "c0r1"):
        s.on_trial_result(None, t[tr], _res(1, 0.8, 0.8))
    # c1r1 errors before the rung and Tune retries it (on_trial_error, then on_trial_add):
    # the decision still waits for it.
    s.on_trial_result(None, t["c1r0"], _res(1, 0.2, 0.2))
    s.on_trial_error(None, t["c1r1"])
    s.on_trial_add(None, t["c1r1"])
    s.choose_trial_to_run(_Controller([]))
    assert [d["config_id"] for d in s.decisions()] == ["c0"]
    assert s.on_trial_result(None, t["c1r1"], _res(1, 0.2, 0.2)) == STOP
    assert calls == [("c1", 1)]
    # c2r0 errors for good: at the scheduler's next call, c2 is decided on c2r1 alone.
    s.on_trial_result(None, t["c2r1"], _res(1, 0.1, 0.1))
    s.on_trial_error(None, t["c2r0"])
    assert len(s.decisions()) == 2  # not yet: Tune may still re-add the trial
    s.choose_trial_to_run(_Controller([]))
    assert s.decisions()[-1]["config_id"] == "c2"
    assert s.decisions()[-1]["values"] == [0.1, 0.1]
    assert calls == [("c1", 1), ("c2", 1)]
    assert s.on_trial_result(None, t["c2r1"], _res(2, 0.1, 0.1)) == STOP


def test_trials_without_config_id_and_exempt_stages():
    s = _sched(replicates=3)
    solo = [FakeTrial(f"s{i}") for i in range(2)]
    baseline = FakeTrial("b0", "pgd_at", 0, stage="baselines")
    assert s.on_trial_result(None, solo[0], _res(1, 0.9, 0.9)) == CONT
    assert s.on_trial_result(None, solo[1], _res(1, 0.1, 0.1)) == STOP  # its own config of one
    assert s.stopped == {"s1": 1}
    for rnd in (1, 2, 3):  # a baseline is never recorded nor stopped, however bad
        assert s.on_trial_result(None, baseline, _res(rnd, 0.0, 0.0)) == CONT
    assert [d["config_id"] for d in s.decisions()] == ["s0", "s1"]


class _Controller:
    def __init__(self, trials):
        self._trials = trials

    def get_trials(self):
        return self._trials


# ------------------------------------------------------------------------------------------
# (c) Resume


def _script():
    """Results of four configurations x two replicates, in arrival order (rungs: round 1)."""
    vals = {"c0": (0.6, 0.6), "c1": (0.3, 0.3), "c2": (0.7, 0.5), "c3": (0.2, 0.4)}
    out = []
    for c in ("c0", "c1", "c2", "c3"):
        out += [(f"{c}r0", 1, vals[c]), (f"{c}r1", 1, vals[c]), (f"{c}r0", 2, vals[c])]
    return out


def _play(s, trials, events):
    return [s.on_trial_result(None, trials[tid], _res(rnd, *v)) for tid, rnd, v in events]


def test_a_resumed_scheduler_makes_the_same_decisions(tmp_path):
    events = _script()
    t = _trials(4)
    reference = _sched(state_path=str(tmp_path / "ref.json"))
    expected = _play(reference, t, events)
    assert reference.stopped == {"c1": 1, "c3": 1}

    # Interrupted after c2r0's first round (c2 pending), then a new scheduler from the file.
    path = str(tmp_path / "state.json")
    calls: list = []
    first = _sched(calls, state_path=path)
    cut = 7
    got = _play(first, t, events[:cut])
    assert calls == [("c1", 1)]
    calls2: list = []
    second = _sched(calls2, state_path=path)
    assert second.stopped == {"c1": 1}
    got += _play(second, t, events[cut:])
    assert got == expected
    assert second.decisions() == reference.decisions()
    # The stopped configuration is announced again once (the searcher's checkpoint may
    # predate it), then c3 as it is stopped.
    assert calls2 == [("c1", 1), ("c3", 1)]
    assert stopped_configs(path) == {"c1": 1, "c3": 1}
    assert [d["config_id"] for d in rung_decisions(path)] == ["c0", "c1", "c2", "c3"]
    assert stopped_configs(str(tmp_path / "none.json")) == {}
    # A sibling of a configuration stopped before the interruption is stopped after it.
    assert second.on_trial_result(None, t["c1r0"], _res(3, 0.3, 0.3)) == STOP


def test_tuner_restore_path_unpickles_the_initial_scheduler_which_reloads_its_file(tmp_path):
    # Ray 2.60 keeps no scheduler state: Tuner.restore unpickles tuner.pkl, written when the
    # Tuner was built. Emulate that: pickle a fresh scheduler, run it, unpickle the old copy.
    events, t = _script(), _trials(4)
    path = str(tmp_path / "state.json")
    live = _sched(state_path=path)
    pickled_at_start = pickle.dumps(live)
    _play(live, t, events)
    assert live.stopped == {"c1": 1, "c3": 1}
    restored = pickle.loads(pickled_at_start)
    assert restored.stopped == live.stopped
    assert restored.decisions() == live.decisions()
    assert _play(restored, t, events) == [
        STOP if tid[:2] in live.stopped else CONT for tid, _, _ in events
    ]
    # Other settings than the state file's: refused, the decisions would differ.
    with pytest.raises(ValueError, match="other settings"):
        _sched(state_path=path, reduction_factor=2)
    # The file is plain JSON, written whole.
    assert json.loads((tmp_path / "state.json").read_text())["stopped"] == live.stopped
    assert not list(tmp_path.glob(".scheduler-*"))


# ------------------------------------------------------------------------------------------
# (d) Optuna's view of a stopped configuration


def _optuna_search(sampler):
    s = OptunaSearch(metric=list(OBJ), mode=["max", "max"], sampler=sampler)
    s.set_search_properties(None, None, {"x": tune.uniform(0.0, 1.0)})
    return s


@pytest.mark.parametrize("kind", ["tpe", "nsga2"])
def test_optuna_records_a_stopped_configuration_as_pruned(kind):
    sampler = (
        optuna.samplers.TPESampler(seed=0, n_startup_trials=2, multivariate=True)
        if kind == "tpe"
        else optuna.samplers.NSGAIISampler(seed=0, population_size=2)
    )
    s = _optuna_search(sampler)
    for i in range(4):
        s.suggest(f"t{i}")
    s.on_trial_complete("t0", {"val_clean_acc": 0.8, "val_robust_acc": 0.3})
    s.on_trial_complete("t1", {"val_clean_acc": 0.3, "val_robust_acc": 0.8})
    # t2 was stopped after a first round that looked excellent: that figure must not count.
    # No result and no error is how the replicate searcher tells it (study/replicates.py).
    s.on_trial_complete("t2", result=None, error=False)
    # What Tune itself does with a stopped trial: COMPLETE with its cut-off values, which
    # then sit on the front (t3 is dominated by neither t0 nor t1).
    s.on_trial_complete("t3", {"val_clean_acc": 0.35, "val_robust_acc": 0.35})
    study = s._ot_study
    states = [t.state for t in study.trials]
    assert states == [
        TrialState.COMPLETE,
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.COMPLETE,
    ]
    assert study.trials[2].values is None
    assert sorted(t.number for t in study.best_trials) == [0, 1, 3]  # not the pruned t2
    # The sampler goes on with the model (TPE: past its 2 startup trials) or the population.
    for i in range(4, 8):
        assert 0.0 <= s.suggest(f"t{i}")["x"] <= 1.0
        s.on_trial_complete(f"t{i}", {"val_clean_acc": 0.5, "val_robust_acc": 0.5})


def test_tpe_puts_a_pruned_trial_among_the_bad_ones():
    """TPE splits trials into 'below' (good) and 'above': a PRUNED multi-objective trial has no
    values and scores after every COMPLETE one (optuna 5.0 `_split_trials`; private API,
    checked here because it is the claim that a stopped configuration is not a good one)."""
    split = pytest.importorskip("optuna.samplers._tpe.sampler")._split_trials
    s = _optuna_search(optuna.samplers.TPESampler(seed=0))
    for i in range(3):
        s.suggest(f"t{i}")
    s.on_trial_complete("t0", {"val_clean_acc": 0.8, "val_robust_acc": 0.3})
    s.on_trial_complete("t1", result=None, error=False)
    s.on_trial_complete("t2", {"val_clean_acc": 0.1, "val_robust_acc": 0.1})
    study = s._ot_study
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    for n_below in (1, 2):
        below, above = split(study, trials, n_below)
        assert 1 in {t.number for t in above}


# ------------------------------------------------------------------------------------------
# (e) A real Ray Tune run


def _ordered_trainable(config, state_path, order):
    """Reports `round` 1..3 with fixed objectives (replicate 0 +0.02, replicate 1 -0.02: the
    mean is the configuration's value). So that the asynchronous arrival order at each rung is
    the configurations' order (the test's hand computation needs one), a trial reports round 1
    only once the previous configuration has been decided there, and round 2 only once its
    own configuration has been decided at round 1 (so the replicate that got there first is
    stopped at its next result) and every earlier one at round 2 (or stopped)."""
    cid = config["config_id"]
    earlier = order[: order.index(cid)]
    sign = 1 if config["replicate"] == 0 else -1
    clean, robust = config["clean"] + 0.02 * sign, config["robust"] + 0.02 * sign

    def wait(ready):
        deadline = time.time() + 30
        while time.time() < deadline:
            decided = {(d["config_id"], d["rung"]) for d in rung_decisions(state_path)}
            if ready(decided, stopped_configs(state_path)):
                return
            time.sleep(0.05)

    for rnd in (1, 2, 3):
        if rnd == 1 and earlier:
            wait(lambda decided, stopped: (earlier[-1], 1) in decided)
        if rnd == 2:
            wait(
                lambda decided, stopped: (
                    cid in stopped
                    or (
                        (cid, 1) in decided
                        and all(e in stopped or (e, 2) in decided for e in earlier)
                    )
                )
            )
        time.sleep(0.1)
        tune.report({"round": rnd, "val_clean_acc": clean, "val_robust_acc": robust})


def test_a_real_tune_run_stops_the_dominated_configurations(ray_local, tmp_path):
    """Six configurations x two replicates, 3 rounds, eta = 2: rungs at rounds 1 and 2.
    The rule by hand, in arrival order (n: configurations at the rung so far, this one too):

    Round 1   (clean, robust)  n  place                                     decision
      c0      (0.90, 0.60)     1  0                                         goes on
      c1      (0.60, 0.90)     2  1 (front {c0, c1}; c0 best clean): 2 <= 2 goes on
      c2      (0.30, 0.30)     3  2: 4 > 3                                  STOPPED
      c3      (0.80, 0.80)     4  2 (front c0, c1, c3: c1 farthest from c0) goes on
      c4      (0.20, 0.25)     5  4: 8 > 5                                  STOPPED
      c5      (0.25, 0.28)     6  4 (fronts {c0,c1,c3} {c2} {c5} {c4}): 8>6 STOPPED
    Round 2 (the survivors)
      c0 1 0 goes on; c1 2 1, 2 <= 2 goes on; c3 3 2, 4 > 3 STOPPED (on the front, but the
      middle of it: at n = 3 and eta = 2, two places).
    So the dominated configurations stop at the grace rung (their first replicate at its next
    round), c3 at round 2, and c0 and c1 run all 3 rounds.
    """
    values = {
        "c0": (0.90, 0.60),
        "c1": (0.60, 0.90),
        "c2": (0.30, 0.30),
        "c3": (0.80, 0.80),
        "c4": (0.20, 0.25),
        "c5": (0.25, 0.28),
    }
    expected_stopped = {"c2": 1, "c3": 2, "c4": 1, "c5": 1}
    ids = list(values)
    points = [
        {"config_id": c, "replicate": r, "clean": v[0], "robust": v[1], "stage": "search"}
        for c, v in values.items()
        for r in (0, 1)
    ]
    state_path = str(tmp_path / "mo_asha_state.json")
    calls: list = []
    scheduler = MOASHAScheduler(
        OBJ,
        max_rounds=3,
        grace_rounds=1,
        reduction_factor=2,
        replicates=2,
        on_config_stopped=lambda cid, rung: calls.append((cid, rung)),
        state_path=state_path,
    )
    assert scheduler.rungs == [1, 2]
    trainable = tune.with_resources(
        tune.with_parameters(_ordered_trainable, state_path=state_path, order=ids), {"cpu": 0.5}
    )
    tuner = tune.Tuner(
        trainable,
        param_space=dict(points[0]),
        tune_config=tune.TuneConfig(
            search_alg=BasicVariantGenerator(points_to_evaluate=points, max_concurrent=4),
            scheduler=scheduler,
            num_samples=len(points),
            reuse_actors=True,  # as the study runs in-process trials
        ),
        run_config=tune.RunConfig(name="moasha", storage_path=str(tmp_path), verbose=0),
    )
    grid = tuner.fit()
    assert not grid.errors
    df = grid.get_dataframe()
    rounds = df.groupby("config/config_id")["training_iteration"].apply(sorted).to_dict()

    decisions = rung_decisions(state_path)
    assert [d["config_id"] for d in decisions if d["rung"] == 1] == ids
    assert [d["config_id"] for d in decisions if d["rung"] == 2] == ["c0", "c1", "c3"]
    assert [d["place"] for d in decisions] == [0, 1, 2, 2, 4, 4, 0, 1, 2]
    assert stopped_configs(state_path) == scheduler.stopped == expected_stopped
    assert sorted(calls) == sorted(expected_stopped.items())  # once each
    assert rounds == {
        "c0": [3, 3],
        "c1": [3, 3],
        "c2": [1, 2],  # stopped at the rung, and the replicate that went ahead one round later
        "c3": [2, 3],  # (the one ahead was at its last round anyway)
        "c4": [1, 2],
        "c5": [1, 2],
    }
    # Each decision is the pure rule applied to the configurations decided before it.
    for rung in (1, 2):
        pts: dict = {}
        for d in (d for d in decisions if d["rung"] == rung):
            pts[d["config_id"]] = d["values"]
            assert promote(pts, d["config_id"], 2, MAX2) == d["promoted"]

    # Tuner.restore builds the scheduler from tuner.pkl (its state at the start; ray==2.60.0,
    # private `_local_tuner._tune_config`): it reads the decisions back from the state file.
    restored = tune.Tuner.restore(str(tmp_path / "moasha"), trainable=trainable)
    assert restored._local_tuner._tune_config.scheduler.stopped == expected_stopped


def _x_trainable(config):
    off = 0.02 if config["replicate"] == 0 else -0.02
    for rnd in (1, 2, 3):
        time.sleep(0.1)
        tune.report(
            {"round": rnd, "val_clean_acc": config["x"] + off, "val_robust_acc": config["x"] + off}
        )


def test_optuna_sees_the_stopped_configurations_of_a_real_run_as_pruned(ray_local, tmp_path):
    """The wiring the study uses: OptunaSearch inside the ReplicateSearcher, whose
    `config_stopped` is the scheduler's callback. Four configurations (x = 0.9, 0.8, 0.1, 0.05,
    both objectives = x) x two replicates, at most four trials at once, so c000 and c001 reach
    round 1 first and the worst, c003, is stopped there (place 3 of 4 or 2 of 3, eta = 2)."""
    from study.replicates import ReplicateSearcher

    optuna_search = OptunaSearch(
        metric=list(OBJ),
        mode=["max", "max"],
        sampler=optuna.samplers.RandomSampler(seed=0),
        points_to_evaluate=[{"x": 0.9}, {"x": 0.8}, {"x": 0.1}, {"x": 0.05}],
    )
    searcher = ReplicateSearcher(optuna_search, replicates=2, study_seed=0)
    state_path = str(tmp_path / "state.json")
    scheduler = MOASHAScheduler(
        OBJ,
        max_rounds=3,
        reduction_factor=2,
        replicates=2,
        on_config_stopped=searcher.config_stopped,
        state_path=state_path,
    )
    tuner = tune.Tuner(
        tune.with_resources(_x_trainable, {"cpu": 0.5}),
        param_space={"x": tune.uniform(0.0, 1.0)},
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=8,
            max_concurrent_trials=4,
            reuse_actors=True,  # as the study runs in-process trials
        ),
        run_config=tune.RunConfig(name="optuna", storage_path=str(tmp_path), verbose=0),
    )
    assert not tuner.fit().errors
    stopped = stopped_configs(state_path)
    assert "c003" in stopped
    study = optuna_search._ot_study
    states = {f"c{t.number:03d}": t.state for t in study.trials}
    assert states == {c: TrialState.PRUNED if c in stopped else TrialState.COMPLETE for c in states}
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            assert t.values == pytest.approx([t.params["x"]] * 2)  # the mean of the replicates
    assert {f"c{t.number:03d}" for t in study.best_trials}.isdisjoint(stopped)
    # On Tuner.restore the scheduler and the searcher come out of the same pickle (tuner.pkl),
    # so the callback still reaches the searcher Tune uses (ray==2.60.0, private attributes).
    restored = tune.Tuner.restore(
        str(tmp_path / "optuna"), trainable=tune.with_resources(_x_trainable, {"cpu": 0.5})
    )
    tune_config = restored._local_tuner._tune_config
    assert tune_config.scheduler.on_config_stopped.__self__ is tune_config.search_alg
    assert tune_config.scheduler.stopped == stopped


@pytest.mark.slow  # 4 configurations x 2 replicates, 3 rounds, from the command line: ~1-3 min
@pytest.mark.parametrize("num_workers", [0, 1], ids=["in-process", "train-worker"])
def test_mo_asha_in_a_real_study_from_the_command_line(ray_local, tmp_path, num_workers):
    """Joined to pytest's shared Ray instance: with a second local instance beside it, Ray Train's
    PlacementGroupCleaner cannot tell which to ask about a stopped trial's controller ("multiple
    active Ray instances") and the stopped trials' placement groups are never freed."""
    import json

    import pandas as pd

    from tests.test_multinode import sweep, write_config

    config = json.loads(
        write_config(tmp_path / "t.yaml", rounds=3, num_workers=num_workers).read_text()
    )
    config.update({"replicates": 2, "scheduler": {"type": "mo-asha", "reduction_factor": 2}})
    (tmp_path / "c.yaml").write_text(json.dumps(config))
    out = sweep(
        "--config", str(tmp_path / "c.yaml"), "--num-samples", "4", "--name", "asha",
        "--storage", str(tmp_path / "s"),
        "--address", ray_local.get_runtime_context().gcs_address,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    study = tmp_path / "s" / "asha"
    trials = pd.read_csv(study / "trials.csv")
    stopped = trials[trials["status"] == "STOPPED"]
    state = json.loads((study / "scheduler_state.json").read_text())
    assert len(stopped) >= 2 and stopped["stopped_at_rung"].isin([1, 2]).all(), state
    # all replicates of a stopped configuration are stopped together, none reaches the front
    assert (stopped.groupby("config/config_id").size() == 2).all()
    front = pd.read_csv(study / "pareto.csv")
    assert not set(front["config_id"]) & set(stopped["config/config_id"])
