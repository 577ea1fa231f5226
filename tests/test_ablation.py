"""The ablation (`ablation:` in a study YAML): its validation, its variants' trial points, its
table (each variant minus the full setting, paired by seed) and, end to end, a real study."""

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import report
from analysis.replicates import t_interval
from study import outputs, stages, sweep
from study.config import (
    ABLATION_VARIANTS,
    CONFIRM_SEED_OFFSET,
    ConfigError,
    build_study_config,
    load_config,
)
from study.status import format_summary, summarize_study
from study.store import ABLATION_FILE, ANSWER_FILE
from tests.conftest import REPO, TINY_TRIAL, notebook_text, run_notebook

SETTING = {"mask_ratio": 0.3, "reg_weight": 0.5, "epsilon": 0.0157}
VARIANTS = ["full", "no_masking", "uniform_penalty", "no_penalty", "no_adversarial"]


def _ablation(tmp_path, **values):
    return load_config(None, {"storage": str(tmp_path), "ablation": SETTING, **values})


# --- validation -----------------------------------------------------------------------------


def test_an_ablation_runs_its_variants_instead_of_a_search(tmp_path):
    cfg = _ablation(tmp_path, name="abl")
    assert cfg.ablation == SETTING and list(ABLATION_VARIANTS) == VARIANTS
    assert cfg.search == {} and cfg.num_samples == 5  # the preset's search is dropped
    assert cfg.trial.epsilon == 0.1  # the setting is the variants', not the study's trial config
    # study.json round trip: --resume and study.confirm rebuild the same study
    assert build_study_config(json.loads(json.dumps(cfg.to_dict()))) == cfg
    # what adds nothing is accepted: a null search key, num_samples equal to the variants
    assert _ablation(tmp_path, search={"epsilon": None}, num_samples=5).search == {}
    assert load_config(None, {}).ablation is None  # a search, as before


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("ablation-*.yaml")))
def test_the_ablation_studies_load(path):
    cfg = load_config(path, {})
    assert cfg.name == path.stem and cfg.ablation and cfg.search == {}
    assert cfg.preset == path.stem.removeprefix("ablation-")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"ablation": [0.3]}, "ablation: expected a mapping of trial keys"),
        ({"ablation": {}}, "ablation: expected a mapping of trial keys"),
        ({"ablation": {"mask_ratio": 1.5}}, "ablation.mask_ratio: must be in [0, 1]"),
        ({"ablation": {"mask_ration": 0.3}}, "ablation.mask_ration: unknown key"),
        ({"ablation": {"seed": 3}}, "ablation.seed: the study's, not the setting's"),
        ({"ablation": {"method": "erm"}}, "ablation.method: the study's, not the setting's"),
        ({"ablation": {"mask_ratio": 0}}, "mask_ratio = 0.0 switches feature masking off"),
        ({"ablation": {"reg_weight": 0}}, "reg_weight = 0.0 switches the penalty off"),
        ({"ablation": {"reg_weighting": "uniform"}}, "switches the LIME weighting of the penalty"),
        ({"ablation": {"train_attack": "none"}}, "switches adversarial training off"),
        ({"ablation": {"epsilon": 0}}, "epsilon = 0.0 switches adversarial training off"),
        ({"ablation": {"pool_size": 0}}, "pool_size = 0 switches LIME off"),
        ({"ablation": SETTING, "trial": {"method": "pgd_at"}}, "trial.method must be lime_refine"),
        (
            {
                "ablation": SETTING,
                "search": {"mask_ratio": {"type": "uniform", "low": 0, "high": 1}},
            },
            "search: an ablation searches nothing",
        ),
        ({"ablation": SETTING, "num_samples": 8}, "num_samples: an ablation runs its 5 variants"),
        ({"ablation": SETTING, "scheduler": "mo-asha"}, "scheduler: an ablation stops no variant"),
    ],
)
def test_bad_ablations_fail_with_one_line(values, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, values)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_bad_ablation_exits_before_anything_starts(tmp_path, capsys, monkeypatch):
    def no_ray(*_args, **_kwargs):
        raise AssertionError("Ray was started for a bad input")

    monkeypatch.setattr(stages, "connect_ray", no_ray)
    path = tmp_path / "ablation.yaml"
    path.write_text(json.dumps({"ablation": SETTING}))  # JSON is YAML
    code = sweep.main(
        ["--config", str(path), "--num-samples", "3", "--storage", str(tmp_path / "s")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: num_samples: an ablation") and "\n" not in err
    assert not (tmp_path / "s").exists()


# --- the variants' trial points -------------------------------------------------------------


def test_each_variant_switches_one_component_at_the_replicate_seeds(tmp_path):
    cfg = _ablation(tmp_path, replicates=3, seed=7, trial={"seed": 7})
    points = stages.ablation_points(cfg)
    assert [p["config_id"] for p in points] == [v for v in VARIANTS for _ in range(3)]
    assert [p["replicate"] for p in points] == [0, 1, 2] * 5
    assert [p["seed"] for p in points] == [7, 8, 9] * 5  # the baselines' seeds: paired
    assert {p["stage"] for p in points} == {"search"}  # validation only
    full = {v: points[3 * i] for i, v in enumerate(VARIANTS)}
    assert {k: full["full"][k] for k in SETTING} == SETTING
    switched = {
        "no_masking": {"mask_ratio": 0.0},
        "uniform_penalty": {"reg_weighting": "uniform"},
        "no_penalty": {"reg_weight": 0.0},
        "no_adversarial": {"train_attack": "none"},
    }
    bookkeeping = {"config_id"}
    for variant, switch in switched.items():
        differs = {k: v for k, v in full[variant].items() if full["full"][k] != v}
        assert set(differs) - bookkeeping == set(switch)
        assert {k: differs[k] for k in switch} == switch
    # the baselines keep the study's trial config (the search study's baselines)
    base = stages.baseline_points(cfg)
    assert base and {p["epsilon"] for p in base} == {cfg.trial.epsilon}


def test_the_confirmation_retrains_every_variant_and_the_baselines(tmp_path):
    cfg = _ablation(tmp_path, name="abl", baselines=["pgd_at"], confirm_seeds=2)
    points = [*stages.ablation_points(cfg), *stages.baseline_points(cfg)]
    trials = pd.DataFrame([{f"config/{k}": v for k, v in p.items()} for p in points])
    out = tmp_path / "abl"
    out.mkdir()
    with pytest.raises(ConfigError, match="has no front yet"):  # the search has not run
        outputs.confirmed_ids(cfg)
    configs = pd.DataFrame({"config_id": VARIANTS[:-1], "val_clean_acc_mean": 0.5})
    configs.to_csv(out / "configs.csv", index=False)
    configs.to_csv(out / "pareto.csv", index=False)
    with pytest.raises(ConfigError, match="no_adversarial has no finished trial"):
        outputs.confirmed_ids(cfg)
    configs = pd.DataFrame({"config_id": VARIANTS, "val_clean_acc_mean": 0.5})
    configs.to_csv(out / "configs.csv", index=False)
    ids = outputs.confirmed_ids(cfg)  # every variant, on the front or not
    assert ids == VARIANTS
    planned = stages.confirmation_points(cfg, trials, ids, cfg.confirm_seeds)
    assert [p["config_id"] for p in planned] == [v for v in [*VARIANTS, "pgd_at"] for _ in "ab"]
    assert {p["seed"] for p in planned} == {CONFIRM_SEED_OFFSET, CONFIRM_SEED_OFFSET + 1}
    assert {p["stage"] for p in planned} == {"confirmation"}
    assert [p["mask_ratio"] for p in planned[:4]] == [0.3, 0.3, 0.0, 0.0]  # full, no_masking


# --- the ablation table ---------------------------------------------------------------------

FULL_CLEAN, FULL_AA = (0.80, 0.82, 0.78), (0.40, 0.42, 0.38)


def _confirmation() -> pd.DataFrame:
    """Confirmation trials of an ablation with PGD-AT, rows out of seed order. Per seed j the
    differences from full are (clean, AutoAttack):
      no_masking       (-0.01, -0.05), (-0.02, -0.06), (-0.03, -0.04)
      uniform_penalty  (+0.01, +0.02) at every seed
      no_penalty       (+0.02, -0.10), (+0.04, -0.12); its seed 2 errored
      no_adversarial   (+0.05, -0.30) at every seed"""

    def row(config_id, j, clean, aa, status="TERMINATED"):
        method = "pgd_at" if config_id == "pgd_at" else "lime_refine"
        return {
            "trial_id": f"{config_id}-{j}",
            "experiment": "confirmation",
            "status": status,
            "stage": "confirmation",
            "config/config_id": config_id,
            "config/replicate": j,
            "config/seed": CONFIRM_SEED_OFFSET + j,
            "config/method": method,
            "test_clean_acc": clean,
            "test_autoattack_acc": aa,
            "test_robust_acc": aa + 0.05,
        }

    diffs = {
        "no_masking": [(-0.01, -0.05), (-0.02, -0.06), (-0.03, -0.04)],
        "uniform_penalty": [(0.01, 0.02)] * 3,
        "no_penalty": [(0.02, -0.10), (0.04, -0.12), None],
        "no_adversarial": [(0.05, -0.30)] * 3,
    }
    rows = [row("full", j, FULL_CLEAN[j], FULL_AA[j]) for j in (2, 0, 1)]
    rows += [row("pgd_at", j, 0.75, 0.45) for j in range(3)]
    for variant, per_seed in diffs.items():
        for j in (1, 2, 0):
            d = per_seed[j]
            if d is None:
                rows.append(row(variant, j, 0.0, 0.0, status="ERROR"))
            else:
                rows.append(row(variant, j, FULL_CLEAN[j] + d[0], FULL_AA[j] + d[1]))
    return pd.DataFrame(rows)


@pytest.fixture
def ablation_tables(tmp_path, monkeypatch):
    """study.outputs.write_confirmation_tables on a hand-made ablation (no Tune files: the trial
    table it reads is the one above, with the search-stage rows); the directory is a study the
    report and study.status read."""
    cfg = _ablation(tmp_path, name="abl", baselines=["pgd_at"], confirm_seeds=3)
    out_dir = Path(cfg.study_dir)
    out_dir.mkdir()
    (out_dir / "study.json").write_text(json.dumps(cfg.to_dict()))
    search = pd.DataFrame(
        {
            "trial_id": [f"s-{v}" for v in VARIANTS],
            "experiment": "abl",
            "status": "TERMINATED",
            "stage": "search",
            "config/config_id": VARIANTS,
            "config/replicate": 0,
            "config/method": "lime_refine",
            "val_clean_acc": [0.8, 0.79, 0.81, 0.82, 0.9],
            "val_robust_acc": [0.4, 0.35, 0.41, 0.3, 0.1],
        }
    )
    trials = pd.concat([search, _confirmation()], ignore_index=True)
    trials.to_csv(out_dir / "trials.csv", index=False)
    pd.DataFrame(
        {
            "config_id": ["uniform_penalty"],
            "val_clean_acc_mean": [0.81],
            "val_robust_acc_mean": [0.41],
        }
    ).to_csv(out_dir / "pareto.csv", index=False)
    monkeypatch.setattr(outputs, "write_trials_table", lambda _cfg: trials)
    answer, ablation, _ = outputs.write_confirmation_tables(cfg)
    return out_dir, answer, ablation


def test_the_ablation_table_is_each_variant_minus_full_paired_by_seed(ablation_tables):
    out_dir, answer, ablation = ablation_tables
    written = pd.read_csv(out_dir / ABLATION_FILE)
    pd.testing.assert_frame_equal(written, ablation, check_dtype=False)
    table = ablation.set_index("config_id")
    assert list(table.index) == VARIANTS[1:]  # in the ablation's order; no full, no baseline
    assert (table["reference"] == "full").all()
    half = 4.302653 * 0.01 / np.sqrt(3)  # three differences with s = 0.01: t(0.975, 2) s/sqrt(3)
    m = table.loc["no_masking"]
    assert m["n_pairs"] == 3
    assert m["test_clean_acc_diff"] == pytest.approx(-0.02)
    assert m["test_clean_acc_diff_ci_low"] == pytest.approx(-0.02 - half, abs=1e-6)
    assert m["test_clean_acc_diff_ci_high"] == pytest.approx(-0.02 + half, abs=1e-6)
    assert m["test_autoattack_acc_diff"] == pytest.approx(-0.05)
    assert m["test_autoattack_acc_diff_ci_high"] == pytest.approx(-0.05 + half, abs=1e-6)
    assert m["test_robust_acc_diff"] == pytest.approx(-0.05)  # robust = AutoAttack + 5 here
    # no per-image outcomes here: t-tests over the 3 seeds, Holm over the table's 4 x 3
    assert m["verdict"] == "no difference beyond the intervals"
    u = table.loc["uniform_penalty"]
    assert u["test_clean_acc_diff"] == pytest.approx(0.01)
    assert u["verdict"] == "clean ↑, robust ↑, AutoAttack ↑"
    p = table.loc["no_penalty"]  # seed 2 errored: two pairs
    _, _, lo, hi = t_interval([0.02, 0.04])
    assert p["n_pairs"] == 2 and p["test_clean_acc_diff"] == pytest.approx(0.03)
    assert (p["test_clean_acc_diff_ci_low"], p["test_clean_acc_diff_ci_high"]) == pytest.approx(
        (lo, hi)
    )
    assert p["verdict"] == "no difference beyond the intervals"  # 2 pairs: t(0.975, 1) = 12.7
    a = table.loc["no_adversarial"]
    assert a["test_autoattack_acc_diff"] == pytest.approx(-0.30)
    assert a["verdict"] == "clean ↑, robust ↓, AutoAttack ↓"
    # the answer is still every confirmed configuration against PGD-AT, full included
    assert set(answer["config_id"]) == set(VARIANTS) and (answer["reference"] == "pgd_at").all()
    assert (out_dir / ANSWER_FILE).is_file()


def test_without_its_reference_a_paired_table_is_empty():
    from analysis.replicates import answer_table

    trials = _confirmation()
    no_pgd_at = trials[trials["config/config_id"] != "pgd_at"]
    no_full = trials[trials["config/config_id"] != "full"]
    assert answer_table(no_pgd_at).empty and answer_table(no_full, reference="full").empty
    out = io.StringIO()
    with redirect_stdout(out):
        outputs.print_answer(answer_table(no_pgd_at), answer_table(no_full, reference="full"))
    assert "No answer table: PGD-AT" in out.getvalue()
    assert "No ablation table: the full setting was not confirmed" in out.getvalue()


def test_the_console_the_status_and_the_report_show_the_ablation(ablation_tables):
    out_dir, answer, ablation = ablation_tables
    out = io.StringIO()
    with redirect_stdout(out):
        outputs.print_answer(answer, ablation)
    text = out.getvalue()
    assert text.index("The answer") < text.index("The ablation (test split, each variant minus")
    line = next(x for x in text.splitlines() if x.split()[:2] == ["no_masking", "full"])
    assert "-2.0 [-4.5, +0.5]" in line
    assert line.endswith("no difference beyond the intervals")
    status = format_summary(summarize_study(out_dir))
    assert "Ablation (test split" in status and "no_adversarial" in status
    html = report.build_report(out_dir)
    assert "Ablation: each variant against the full setting" in html
    assert "An ablation, no search" in html and "mask_ratio=0.3" in html
    section = html.split("Ablation: each variant")[1].split("<h2>")[0]
    assert "-30.0 [" in section and "<td>full</td>" in section
    assert "<td>clean ↑, robust ↑, AutoAttack ↑</td>" in section


# --- end to end (Ray: `pytest -m slow tests/test_ablation.py`) -------------------------------

TINY_ABLATION = {
    "name": "tiny-ablation",
    "ablation": {"mask_ratio": 0.25, "reg_weight": 0.1, "epsilon": 0.1},
    "replicates": 1,
    "baselines": ["pgd_at"],
    "confirm_seeds": 2,
    "trial": TINY_TRIAL,
}


@pytest.fixture(scope="module")
def tiny_ablation(ray_local, tmp_path_factory) -> tuple[Path, str]:
    """A real ablation through every stage, as `python -m study.sweep --config FILE` runs it but
    in this process (joined to the session's Ray instance; --verbose keeps pytest's output
    where it is): 5 variants x 1 replicate, PGD-AT x 1, then 6 configurations x 2 fresh seeds."""
    storage = tmp_path_factory.mktemp("ablation-studies")
    config = storage / "tiny-ablation.yaml"
    config.write_text(json.dumps({**TINY_ABLATION, "storage": str(storage)}))  # JSON is YAML
    console = io.StringIO()
    with redirect_stdout(console):
        code = sweep.main(["--config", str(config), "--verbose"])
    assert code == 0, console.getvalue()[-5000:]
    return storage / TINY_ABLATION["name"], console.getvalue()


@pytest.mark.slow  # 6 + 12 tiny digits trials (tiny_study: 12 in about 8 min on 2 cores)
def test_end_to_end_ablation_runs_every_variant_and_confirms_them(tiny_ablation):
    d, console = tiny_ablation
    trials = pd.read_csv(d / "trials.csv")
    own = trials[trials["experiment"] == TINY_ABLATION["name"]]
    assert sorted(own["config/config_id"]) == sorted(VARIANTS) and set(own["stage"]) == {"search"}
    assert set(trials["status"]) == {"TERMINATED"}
    by_id = own.set_index("config/config_id")
    assert by_id.loc["no_masking", "config/mask_ratio"] == 0.0
    assert by_id.loc["full", "config/mask_ratio"] == 0.25
    assert by_id.loc["uniform_penalty", "config/reg_weighting"] == "uniform"
    assert by_id.loc["no_penalty", "config/reg_weight"] == 0.0
    assert by_id.loc["no_adversarial", "config/train_attack"] == "none"
    configs = pd.read_csv(d / "configs.csv")
    assert set(configs["config_id"]) == {*VARIANTS, "pgd_at"}
    confirmation = pd.read_csv(d / "confirmation.csv")
    assert set(confirmation["config/config_id"]) == {*VARIANTS, "pgd_at"}
    assert (confirmation.groupby("config/config_id").size() == 2).all()
    assert not set(own["config/seed"]) & set(confirmation["config/seed"])
    assert "The ablation (test split" in console


@pytest.mark.slow  # shares the study above
def test_end_to_end_ablation_csv_pairs_each_variant_with_full(tiny_ablation):
    d, _ = tiny_ablation
    ablation = pd.read_csv(d / ABLATION_FILE)
    confirmation = pd.read_csv(d / "confirmation.csv")
    assert sorted(ablation["config_id"]) == sorted(VARIANTS[1:])
    assert (ablation["reference"] == "full").all() and (ablation["n_pairs"] == 2).all()
    seeds = confirmation.set_index(["config/config_id", "config/replicate"])
    for _, row in ablation.iterrows():
        for m in ("test_clean_acc", "test_autoattack_acc"):
            diffs = seeds.loc[row["config_id"], m] - seeds.loc["full", m]
            assert row[f"{m}_diff"] == pytest.approx(diffs.mean())
    answer = pd.read_csv(d / ANSWER_FILE)
    assert set(answer["config_id"]) == set(VARIANTS)  # every variant against PGD-AT
    html = report.build_report(d)
    assert "Ablation: each variant against the full setting" in html


@pytest.mark.slow  # shares the study above
def test_end_to_end_the_notebook_shows_the_ablation(tiny_ablation):
    d, _ = tiny_ablation
    nb = run_notebook(REPO / "analysis" / "notebooks" / "pareto_fronts.ipynb", d)
    text = notebook_text(nb)
    assert "No ablation.csv" not in text and "ablation.csv is empty" not in text
    for variant in VARIANTS[1:]:
        assert variant in text
    assert "test_clean_acc_diff (points) [95% CI]" in text
    assert "Confirmed test figures of the variants" in text
