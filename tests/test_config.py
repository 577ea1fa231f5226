"""Configuration validation and the command line's answer to bad input."""

import dataclasses
import subprocess
import sys

import pytest

from study import outputs, preflight, stages, sweep
from study.config import ConfigError, load_config
from study.presets import PRESETS
from tests.conftest import REPO
from trainables.base import base_trial_config


def test_default_config_is_the_digits_preset():
    cfg = load_config(None, {})
    assert cfg.preset == "digits" and cfg.trial.dataset == "digits"
    assert cfg.num_samples * cfg.replicates >= 8  # 4 configurations x 2 seeds
    assert set(cfg.search) == {"mask_ratio", "reg_weight", "epsilon"}
    assert cfg.objectives == {"val_clean_acc": "max", "val_robust_acc": "max"}
    assert cfg.replicates == 2 and cfg.confirm_seeds == 3


def test_yaml_then_command_line_override(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("num_samples: 3\ntrial:\n  rounds: 4\nsearch:\n  epsilon: null\n")
    cfg = load_config(f, {"num_samples": 5, "trial": {"lr": 0.1}})
    assert cfg.num_samples == 5 and cfg.trial.rounds == 4 and cfg.trial.lr == 0.1
    assert "epsilon" not in cfg.search and "mask_ratio" in cfg.search  # preset search kept


def test_ints_are_accepted_where_floats_are_expected():
    assert load_config(None, {"trial": {"lr": 1}}).trial.lr == 1.0


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"preset": "imagenet"}, "preset"),
        ({"trial": {"dataset": "imagenet"}}, "trial.dataset"),
        ({"trial": {"mask_ratio": 1.5}}, "trial.mask_ratio"),
        ({"trial": {"rounds": "three"}}, "trial.rounds"),
        ({"trial": {"rounds": 2.5}}, "trial.rounds"),
        ({"trial": {"use_gpu": True}}, "trial.use_gpu"),
        ({"trial": {"lr": True}}, "trial.lr"),
        ({"trial": {"lr": float("nan")}}, "trial.lr"),
        ({"trial": {"translate": -1}}, "trial.translate"),
        ({"trial": {"translate": 2.5}}, "trial.translate"),
        ({"bogus": 1}, "bogus"),
        ({"num_samples": 0}, "num_samples"),
        ({"searcher": "grid"}, "searcher"),
        ({"objectives": {"val_clean_acc": "up"}}, "objectives.val_clean_acc"),
        ({"objectives": {"clean_acc": "max"}}, "validation metrics"),
        ({"replicates": 0}, "replicates"),
        ({"confirm_seeds": -1}, "confirm_seeds"),
        ({"trial": {"val_size": 1300}}, "val_size"),
        ({"search": {"mask_ratio": {"type": "uniform", "low": 0.6, "high": 0.2}}}, "low"),
        ({"search": {"reg_weight": {"type": "loguniform", "low": 0.0, "high": 1}}}, "loguniform"),
        ({"search": {"mask_ratio": {"type": "uniform", "low": 0, "high": 2}}}, "mask_ratio.high"),
        ({"search": {"nope": {"type": "uniform", "low": 0, "high": 1}}}, "search.nope"),
        ({"search": {"mask_ratio": {"type": "normal", "low": 0, "high": 1}}}, "type"),
        ({"name": "../escape"}, "name"),
    ],
)
def test_bad_values_name_the_field(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(None, overrides)


def _run_main(tmp_path, capsys, *argv):
    code = sweep.main([*argv, "--storage", str(tmp_path / "store")])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--preset", "digits", "--dataset", "imagenet"], "trial.dataset"),
        (["--num-samples", "-1"], "num_samples"),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "does not exist"),
        (["--resume", "--name", "never-ran"], "--resume"),
    ],
)
def test_cli_bad_input_exits_before_anything_starts(tmp_path, capsys, monkeypatch, argv, fragment):
    def no_ray(*_args, **_kwargs):
        raise AssertionError("Ray was started for a bad input")

    monkeypatch.setattr(stages, "connect_ray", no_ray)
    code, err = _run_main(tmp_path, capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and fragment in err and "\n" not in err
    assert not (tmp_path / "store").exists()


def test_malformed_and_unknown_keys_in_yaml(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trial: {rounds: 2\n")
    code, err = _run_main(tmp_path, capsys, "--config", str(bad))
    assert code == 2 and "malformed YAML" in err
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("trial:\n  roundz: 2\n")
    code, err = _run_main(tmp_path, capsys, "--config", str(unknown))
    assert code == 2 and "trial.roundz" in err
    code, err = _run_main(tmp_path, capsys, "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "cannot read" in err
    assert not (tmp_path / "store").exists()


def test_existing_study_is_not_overwritten(tmp_path, capsys):
    study = tmp_path / "store" / "digits-study"
    study.mkdir(parents=True)
    (study / "trials.csv").write_text("")  # anything but the log of a run that never began
    code, err = _run_main(tmp_path, capsys)
    assert code == 2 and "already exists" in err


def test_cli_help_and_exit_code_from_a_real_process():
    out = subprocess.run(
        [sys.executable, "-m", "study.sweep", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0
    for flag in ["--config", "--preset", "--dataset", "--data-dir", "--num-samples", "--storage",
                 "--name", "--resume", "--address"]:  # fmt: skip
        assert flag in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "study.sweep", "--preset", "mnist"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "--preset" in bad.stderr
    # the command line is parsed before torch and Ray are imported: --help answers at once
    heavy = "import sys, study.sweep; sys.exit(' '.join({'torch', 'ray'} & set(sys.modules)) or 0)"
    imported = subprocess.run(
        [sys.executable, "-c", heavy], cwd=REPO, capture_output=True, text=True
    )
    assert imported.returncode == 0, f"study.sweep imports {imported.stderr}"


def test_a_cluster_that_cannot_hold_one_trial_is_named_on_the_console():
    cfg = preflight.with_gpus_per_trial(load_config(None, {}), 1.0)  # one GPU per trial
    warning = preflight.resource_shortfall(cfg, {"CPU": 2.0})
    assert warning.startswith("warning: a trial needs 1 GPU (the cluster has 0)")
    assert preflight.resource_shortfall(cfg, {"CPU": 2.0, "GPU": 1.0}) is None
    assert preflight.resource_shortfall(load_config(None, {}), {"CPU": 2.0}) is None
    cpu_study = load_config(None, {"preset": "cifar10-cpu"})  # its base trains on 2 CPUs
    assert preflight.resource_shortfall(cpu_study, {"CPU": 2.0}) is None
    warning = preflight.resource_shortfall(cpu_study, {"CPU": 1.0})
    assert warning.startswith("warning: the base needs 2 CPU (the cluster has 1)")


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_builds_from_the_command_line(preset):
    args = sweep.parse_args(["--preset", preset])  # the command line offers every preset
    cfg = load_config(None, {"preset": args.preset})
    assert cfg.preset == preset and cfg.replicates == 2 and cfg.confirm_seeds == 3
    if cfg.base is not None:  # the base trains the trials' own architecture, one round
        base = base_trial_config(cfg.trial, cfg.base, cfg.seed)
        assert (base.model, base.model_width) == (cfg.trial.model, cfg.trial.model_width)
        assert base.rounds == 1 and base.method != "lime_refine"


def test_confirm_eval_sets_the_test_evaluation_of_the_confirmation_points(tmp_path):
    import json

    import pandas as pd

    from study.config import build_study_config

    values = {"name": "s", "storage": str(tmp_path), "baselines": ["pgd_at"], "confirm_seeds": 2}
    cfg = build_study_config({**values, "confirm_eval": {"final_eval_subset": 7, "eval_grid": ""}})
    assert cfg.confirm_eval == {"final_eval_subset": 7, "eval_grid": ""}
    assert build_study_config(json.loads(json.dumps(cfg.to_dict()))) == cfg  # study.json
    trials = pd.DataFrame([{f"config/{k}": v for k, v in p.items()} for p in
                           stages.baseline_points(cfg)])  # fmt: skip
    points = stages.confirmation_points(cfg, trials, [], cfg.confirm_seeds)
    assert [p["final_eval_subset"] for p in points] == [7, 7]
    assert {p["epsilon"] for p in points} == {cfg.trial.epsilon}  # training untouched
    for bad, message in [
        ({"lr": 0.1}, "confirm_eval.lr: not a test-evaluation key"),
        ({"final_eval_subset": 0}, "confirm_eval.final_eval_subset: must be in"),
        ({"test_blackbox_queries": -1}, "confirm_eval.test_blackbox_queries: must be in"),
        ([1], "confirm_eval: expected a mapping"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_study_config({**values, "confirm_eval": bad})


def test_primary_eval_sizes_the_primary_pair_only(tmp_path):
    import pandas as pd

    from study.config import build_study_config

    values = {"name": "s", "storage": str(tmp_path), "baselines": ["erm", "pgd_at"],
              "confirm_seeds": 2, "confirm_eval": {"final_eval_subset": 10}}  # fmt: skip
    cfg = build_study_config({**values, "primary_eval": {"final_eval_subset": 50}})
    rows = [*stages.baseline_points(cfg), {**vars(cfg.trial), "config_id": "c001"},
            {**vars(cfg.trial), "config_id": "c000"}]  # fmt: skip
    trials = pd.DataFrame([{f"config/{k}": v for k, v in p.items()} for p in rows])
    points = stages.confirmation_points(cfg, trials, ["c001", "c000"], cfg.confirm_seeds)
    sizes = {(p["config_id"], p["seed"]): p["final_eval_subset"] for p in points}
    assert {k: v for k, v in sizes.items() if v == 50} == {
        ("c001", s): 50 for s in {p["seed"] for p in points}
    } | {("pgd_at", s): 50 for s in {p["seed"] for p in points}}
    assert sizes[("c000", points[0]["seed"])] == sizes[("erm", points[0]["seed"])] == 10
    with pytest.raises(ConfigError, match="primary_eval.lr: not a test-evaluation key"):
        build_study_config({**values, "primary_eval": {"lr": 1.0}})
    with pytest.raises(
        ConfigError, match="primary_eval: trial.final_eval_subset: digits.s test split has 450"
    ):
        build_study_config({**values, "primary_eval": {"final_eval_subset": 1000}})


def test_confirm_eval_on_the_command_line_is_kept_in_study_json(tmp_path, capsys):
    import json

    from study import confirm

    cfg = load_config(None, {"name": "s", "storage": str(tmp_path)})
    outputs.write_study_file(cfg)
    study_dir = tmp_path / "s"
    # no front yet: the error comes after the settings are read, checked and kept
    assert confirm.main([str(study_dir), "--eval", "final_eval_subset=9"]) == 2
    assert "no front yet" in capsys.readouterr().err
    assert json.loads((study_dir / "study.json").read_text())["confirm_eval"] == {
        "final_eval_subset": 9
    }
    assert confirm.main([str(study_dir), "--eval", "lr=1"]) == 2
    assert "confirm_eval.lr: not a test-evaluation key" in capsys.readouterr().err
    assert confirm.main([str(study_dir), "--eval", "final_eval_subset"]) == 2
    assert "--eval: expected KEY=VALUE" in capsys.readouterr().err
    assert confirm.main([str(study_dir), "--primary-eval", "final_eval_subset=20"]) == 2
    kept = json.loads((study_dir / "study.json").read_text())
    assert kept["primary_eval"] == {"final_eval_subset": 20}
    assert kept["confirm_eval"] == {"final_eval_subset": 9}
    assert confirm.main([str(study_dir), "--primary-eval", "lr=1"]) == 2
    assert "primary_eval.lr" in capsys.readouterr().err


def test_a_matched_clean_level_outside_every_validation_front_stops_a_resume(tmp_path, capsys):
    """Once the search has written its fronts, a resumed study (or study.confirm, after it
    rewrites them) checks matched_clean against them before Ray starts."""
    import pandas as pd

    from study.store import StudyStore

    cfg = load_config(None, {"name": "s", "storage": str(tmp_path), "matched_clean": [0.75, 0.95]})
    outputs.write_study_file(cfg)
    study_dir = tmp_path / "s"
    front = pd.DataFrame({
        "config_id": ["c000", "c001", "pgd_at-c000"],
        "experiment": ["search", "search", "search-pgd_at"],
        "val_clean_acc_ci_low": [0.55, 0.75, 0.66],
        "val_clean_acc_ci_high": [0.65, 0.85, 0.74],
    })  # fmt: skip
    StudyStore(study_dir).write_table("pareto.csv", front)
    before = sorted(p.name for p in study_dir.iterdir())
    assert sweep.main(["--resume", "--name", "s", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "matched_clean: 0.950 is outside every front's clean range" in err
    assert "search [0.550, 0.850], search-pgd_at [0.660, 0.740]" in err and "study.json" in err
    assert sorted(p.name for p in study_dir.iterdir()) == before  # nothing started or written
    for fine in ((0.75, 0.84), (0.55,)):  # inside a front's range with its intervals
        outputs.check_matched_clean(dataclasses.replace(cfg, matched_clean=fine))
    for unused in ({"confirm_seeds": 0}, {"ablation": {"mask_ratio": 0.1}}):  # no fronts read
        outputs.check_matched_clean(dataclasses.replace(cfg, **unused))


def test_configs_csv_shows_every_searched_key_where_the_method_reads_it(tmp_path):
    """A key only a baseline searches (IG-NORM's weight) gets its column; a key a method never
    reads (PGD-AT's mask ratio) is left empty in its row, not shown at the trial's default."""
    import pandas as pd

    from analysis.results import searched_keys_of
    from study.config import build_study_config

    cfg = build_study_config({
        "name": "s", "storage": str(tmp_path), "baselines": [
            "pgd_at", {"method": "ig_norm", "search": {"baseline_weight": {
                "type": "loguniform", "low": 0.01, "high": 1.0}}, "num_samples": 2},
        ],
    })  # fmt: skip
    keys = searched_keys_of(cfg.to_dict())  # what study.json says, read as analysis/ reads it
    assert keys == ["mask_ratio", "reg_weight", "epsilon", "baseline_weight"]
    rows = [("c000", "s", "lime_refine", 0.3), ("pgd_at", "baselines", "pgd_at", 1.0),
            ("ig_norm-c000", "search-ig_norm", "ig_norm", 0.05)]  # fmt: skip
    trials = pd.DataFrame([
        {"trial_id": f"{c}-{r}", "status": "TERMINATED", "experiment": e,
         "config/config_id": c, "config/method": m,
         "config/replicate": r, "config/mask_ratio": 0.2, "config/reg_weight": 0.1,
         "config/epsilon": 0.1, "config/baseline_weight": w, "val_clean_acc": 0.9 - r / 10}
        for c, e, m, w in rows for r in (0, 1)
    ])  # fmt: skip
    configs = outputs.configs_table(cfg, trials, ["val_clean_acc"]).set_index("config_id")
    assert configs.loc["ig_norm-c000", "baseline_weight"] == 0.05
    assert configs.loc[["ig_norm-c000", "pgd_at"], "mask_ratio"].isna().all()
    assert configs.loc["pgd_at", "epsilon"] == 0.1 and configs.loc["c000", "mask_ratio"] == 0.2
    assert configs[["baseline_weight"]].loc[["c000", "pgd_at"]].isna().all().all()


def test_a_plan_written_before_a_trial_key_existed_is_the_same_plan(tmp_path):
    """A study resumed on newer code must not re-run its confirmation from scratch because the
    code added a trial key: the stored plan's points take the new key's default."""
    import pandas as pd

    from study.config import build_study_config

    cfg = build_study_config({"name": "s", "storage": str(tmp_path), "baselines": ["pgd_at"]})
    trials = pd.DataFrame([{f"config/{k}": v for k, v in p.items()} for p in
                           stages.baseline_points(cfg)])  # fmt: skip
    points = stages.confirmation_points(cfg, trials, [], 2)
    older = [{k: v for k, v in p.items() if k != "test_blackbox_queries"} for p in points]
    assert stages.same_plan(older, points)
    assert not stages.same_plan([{**p, "final_eval_subset": 7} for p in older], points)
    assert not stages.same_plan([{**p, "gone_key": 1} for p in older], points)
    assert not stages.same_plan(older[:1], points)


def test_a_confirmation_rerun_with_another_plan_keeps_the_old_tables_beside(tmp_path):
    from study.store import StudyStore

    out = tmp_path / "s"
    (out / "confirmation").mkdir(parents=True)
    old = {"answer.csv", "confirmed.csv", "confirmation_plan.json"}
    for name in old:
        (out / name).write_text("old\n")
    stages._archive_previous(StudyStore(out))
    left = sorted(p.name for p in out.iterdir())
    assert not (old | {"confirmation"}) & set(left)
    assert {n.split(".2")[0] for n in left} == old | {"confirmation"}  # name.<date> each


def test_every_trial_field_has_one_role_and_the_groups_follow_from_it():
    from trainables import base
    from trainables.config import FIELD_ROLES, TRIAL_FIELDS, check_roles, fields_with_role

    check_roles(list(TRIAL_FIELDS), FIELD_ROLES)
    with pytest.raises(TypeError, match="new_field has no role"):
        check_roles([*TRIAL_FIELDS, "new_field"], FIELD_ROLES)
    with pytest.raises(TypeError, match="lr has more than one role"):
        check_roles(list(TRIAL_FIELDS), {**FIELD_ROLES, "extra": ("lr",)})
    # what a base's key ignores: no key that shapes its weights, every one that cannot
    assert {"lr", "epsilon", "model", "dataset", "seed", "amp"}.isdisjoint(base._NOT_WEIGHTS)
    assert set(fields_with_role("test", "lime", "resources")) <= base._NOT_WEIGHTS
    assert "epsilon" in base._UNUSED_BY_METHOD["erm"]
    assert "epsilon" not in base._UNUSED_BY_METHOD["pgd_at"]
