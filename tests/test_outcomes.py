"""Per-image outcomes from the trial to the answer: packed into a result, written per trial, read
back, and turned into intervals over seeds and images, paired by seed and image."""

import io

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.replicates import aggregate_configs, answer_metrics, answer_table, metric_label
from analysis.results import outcome_matrix, outcome_table, read_outcomes
from analysis.synthetic import confirmation_row
from study.store import StudyStore, outcomes_key, pack_ints, pack_outcomes, unpack_outcomes
from trainables.evaluate import summarize_outcomes


def test_outcomes_survive_packing_and_name_their_metric():
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 500, 10_000):
        correct = rng.random(n) < 0.6
        assert np.array_equal(unpack_outcomes(pack_outcomes(correct)), correct)
    assert len(pack_outcomes(np.ones(500, bool))) < 100  # small enough for every Tune result
    assert outcomes_key("test_clean_acc") == "test_outcomes_clean"
    assert outcomes_key("test_robust_eps8_255_acc") == "test_outcomes_robust_eps8_255"
    assert outcomes_key("test_cifar10c_mean") is None


def test_a_trial_reports_its_outcomes_and_the_study_writes_them_per_trial(tmp_path):
    outcomes = {
        "clean": torch.tensor([True, True, False, True]),
        "pgd": torch.tensor([True, False, False, True]),
        "blackbox": torch.tensor([True, False, False, False]),
    }
    outcomes["robust"] = outcomes["clean"] & outcomes["pgd"] & outcomes["blackbox"]
    metrics = summarize_outcomes(outcomes, "val", torch.tensor([9, 3, 5, 1]), torch.arange(4))
    assert metrics["val_robust_acc"] == 0.25
    row = {**metrics, "test_outcomes_autoattack": pack_outcomes([False, True])}
    table = outcome_table(row)
    val = table[table["split"] == "val"]
    assert list(val["index"]) == [9, 3, 5, 1] and list(val["label"]) == [0, 1, 2, 3]
    assert list(val["robust"]) == [True, False, False, False]
    test = table[table["split"] == "test"]
    assert list(test["autoattack"]) == [False, True]  # a split with its own images
    trial_dir = tmp_path / "trial_x"
    trial_dir.mkdir()
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    StudyStore(tmp_path).write_bytes("trial_x/outcomes.parquet", buffer.getvalue())
    pd.testing.assert_frame_equal(read_outcomes(trial_dir), table)


def _confirmation(rng, shift: float, seeds: int = 3, images: int = 200) -> pd.DataFrame:
    """Confirmation rows of PGD-AT and c000 whose per-image outcomes differ by `shift` in robust
    accuracy (c000 better), equal in clean accuracy."""
    rows = []
    base = rng.random(images)
    for config_id, method, boost in (("pgd_at", "pgd_at", 0.0), ("c000", "lime_refine", shift)):
        for j in range(seeds):
            clean = rng.random(images) < 0.9
            robust = rng.random(images) < np.clip(0.3 + boost + 0.2 * base, 0, 1)
            rows.append(confirmation_row(config_id, method, j, clean, robust))
    return pd.DataFrame(rows)


def test_the_answer_names_a_real_gain_and_no_difference_where_there_is_none():
    rng = np.random.default_rng(1)
    answer = answer_table(_confirmation(rng, shift=0.3))
    (row,) = answer.to_dict("records")
    assert row["verdict"] == "robust ↑"
    assert row["test_robust_acc_diff_ci_low"] > 0.15 and row["test_robust_acc_diff_p_holm"] < 0.05
    assert row["test_clean_acc_diff_ci_low"] < 0 < row["test_clean_acc_diff_ci_high"]
    none = answer_table(_confirmation(rng, shift=0.0)).iloc[0]
    assert none["verdict"] == "no difference beyond the intervals"


def test_arms_evaluated_on_more_images_pair_on_the_shared_prefix_and_order_follows_the_front():
    """The primary pair's AutoAttack runs on more images than another configuration's: the
    difference pairs on the images both saw (a prefix of one order), not on seeds alone."""
    rng = np.random.default_rng(2)
    second = _confirmation(rng, shift=0.3).iloc[3:]  # its c000 rows, renamed c001
    second = second.assign(**{"config/config_id": "c001"})
    frame = pd.concat([_confirmation(rng, shift=0.3), second], ignore_index=True)
    ref = frame["config/config_id"] == "pgd_at"
    full = [unpack_outcomes(t) for t in frame.loc[ref, "test_outcomes_robust"]]
    longer = [np.concatenate([o, rng.random(300) < 0.5]) for o in full]  # 500 images
    frame.loc[ref, "test_outcomes_robust"] = [pack_outcomes(o) for o in longer]
    answer = answer_table(frame, metrics=["test_robust_acc"], order=["c001", "c000"])
    assert list(answer["config_id"]) == ["c001", "c000"]
    row = answer.iloc[1]
    prefix = np.mean([unpack_outcomes(t).mean() for t in
                      frame.loc[frame["config/config_id"] == "c000", "test_outcomes_robust"]]) - \
        np.mean([o[:200].mean() for o in longer])  # fmt: skip
    assert row["test_robust_acc_diff"] == pytest.approx(prefix)
    assert row["test_robust_acc_diff_ci_low"] > 0.15  # images pair: a narrow interval


def test_intervals_cover_the_images_even_where_every_seed_agrees():
    """0 of 10 images robust at every seed: no zero-width interval (it was 0.0 [0.0, 0.0])."""
    rows = pd.DataFrame(
        {
            "trial_id": ["a", "b"], "status": "TERMINATED", "experiment": "confirmation",
            "config/config_id": "erm", "config/replicate": [0, 1], "config/method": "erm",
            "test_autoattack_acc": 0.0,
            "test_outcomes_autoattack": [pack_outcomes(np.zeros(10, bool))] * 2,
        }
    )  # fmt: skip
    (row,) = aggregate_configs(rows, ["test_autoattack_acc"]).to_dict("records")
    assert row["test_autoattack_acc_mean"] == 0.0 and row["test_autoattack_acc_ci_high"] > 0.1
    assert outcome_matrix(rows, "test_autoattack_acc").shape == (2, 10)


def test_the_answer_lists_every_eps_and_labels_it():
    columns = ["test_autoattack_acc", "test_robust_eps8_255_acc", "test_clean_acc", "x"]
    frame = pd.DataFrame(columns=[*columns, "test_robust_acc"])
    assert answer_metrics(frame) == [
        "test_clean_acc", "test_robust_acc", "test_robust_eps8_255_acc", "test_autoattack_acc"
    ]  # fmt: skip
    assert metric_label("test_robust_eps8_255_acc") == "robust {} at 8/255"
    assert metric_label("test_robust_eps0p2_acc") == "robust {} at 0.2"
    assert metric_label("test_autoattack_acc") == "AutoAttack"


def test_ints_pack_too():
    from study.store import unpack_ints

    assert list(unpack_ints(pack_ints([3, 1, 2]))) == [3, 1, 2]


@pytest.mark.parametrize("replicates, expect_nan", [(2, True), (5, False)])
def test_p_front_needs_five_replicates(replicates, expect_nan):
    from analysis.replicates import p_front

    rng = np.random.default_rng(0)
    trials = pd.DataFrame(
        [
            {"trial_id": f"{c}{j}", "status": "TERMINATED", "config/config_id": c,
             "config/replicate": j, "val_clean_acc": rng.random(), "val_robust_acc": rng.random()}
            for c in ("c000", "c001") for j in range(replicates)
        ]
    )  # fmt: skip
    shares = p_front(trials, {"val_clean_acc": "max", "val_robust_acc": "max"})
    assert shares.isna().all() == expect_nan
