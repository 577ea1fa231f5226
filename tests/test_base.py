"""The shared base model: the `base:` section's validation, the cache key, reuse by a second
call, a corrupted cache entry retrained, refinement that starts from the base's weights, one
base per confirmation seed, and (with Ray) the Ray Train path."""

import dataclasses
import json

import pandas as pd
import pytest
import torch
import yaml

from study import stages, sweep
from study.base import confirmation_bases, prepare_base, write_base_record
from study.config import ConfigError, build_study_config, confirm_seed
from study.stages import confirmation_points
from tests.conftest import TINY_TRIAL
from trainables import base as basemod
from trainables.base import (
    BASE_VERSION,
    BaseModelError,
    base_key,
    base_trial_config,
    data_fingerprint,
    ensure_base,
    load_base_weights,
    read_cached,
)
from trainables.data import load_splits, subset
from trainables.refine import initial_model, load_trial_splits, refine, train_base_locally

BASE = {"method": "erm", "epochs": 1}
CHEAP_EVAL = {"eval_steps": 2, "blackbox_queries": 20}  # each base evaluates itself once


def _study(storage, name="study", base=BASE, **trial):
    trial = {**TINY_TRIAL, **CHEAP_EVAL, **trial}
    return build_study_config({"name": name, "storage": str(storage), "trial": trial, "base": base})


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: these tiny trainings only lose time to a second one on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits_fp():
    return data_fingerprint(load_splits("digits", with_test=False))


class CountingTrainer:
    """train_base_locally, counting its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, cfg):
        self.calls += 1
        return train_base_locally(cfg)


# --- configuration -----------------------------------------------------------------------------


def test_base_section_is_validated_like_trial_keys(tmp_path):
    assert _study(tmp_path, base=None).base is None
    assert build_study_config({"name": "s", "storage": str(tmp_path)}).base is None
    cfg = _study(tmp_path, base={"epochs": 2, "lr": 0.1})
    assert cfg.base == {"method": "erm", "epochs": 2, "lr": 0.1}  # plain data, erm by default
    assert build_study_config(json.loads(json.dumps(cfg.to_dict()))).base == cfg.base  # study.json
    bad = [
        ({"epochs": 1, "widht": 3}, "base.widht: unknown key"),
        ({"epochs": 0}, "base.epochs: must be in [1, 1000]"),
        ({"epochs": "ten"}, "base.epochs: expected int"),
        ({"epochs": 1, "lr": -1}, "base.lr: must be in (0, 10]"),
        ({"epochs": 1, "augment": "rotate"}, "base.augment: must be one of"),
        ({"lr": 0.1}, "base.epochs: required"),
        ({"epochs": 1, "method": "lime_refine"}, "base.method: must be one of"),
        ({"epochs": 1, "rounds": 3}, "base.rounds: not a base key"),
        ({"epochs": 1, "seed": 3}, "base.seed: not a base key"),
        ({"epochs": 1, "confirmation": "each"}, "base.confirmation: must be one of"),
        ({"epochs": 1, "model_width": 8}, "base.model_width: must equal trial.model_width"),
        ({"epochs": 1, "attack_norm": "l2", "train_attack": "fgsm"}, "base: trial.attack_norm"),
        ([1, 2], "base: expected a mapping"),
    ]
    for base, message in bad:
        with pytest.raises(ConfigError) as e:
            _study(tmp_path, base=base)
        assert message in str(e.value) and "\n" not in str(e.value), (base, str(e.value))


def test_bad_base_exits_with_one_line_before_anything_starts(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"base": {"epochs": 1, "colour": "red"}}))
    code = sweep.main(["--config", str(path), "--storage", str(tmp_path / "store")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: base.colour: unknown key") and "\n" not in err
    assert not (tmp_path / "store").exists()


# --- the cache key -----------------------------------------------------------------------------


def test_key_follows_config_data_and_version_only(tmp_path, digits_fp):
    cfg = _study(tmp_path)
    key = base_key(base_trial_config(cfg.trial, cfg.base, 0), digits_fp)

    def key_of(base=BASE, seed=0, fp=digits_fp, **trial):
        c = _study(tmp_path, base=base, **trial)
        return base_key(base_trial_config(c.trial, c.base, seed), fp)

    assert key_of() == key  # deterministic
    # a changed base config, seed or training key of the trial: another base
    assert key_of(base={**BASE, "lr": 0.01}) != key
    assert key_of(base={**BASE, "epochs": 2}) != key
    assert key_of(base={**BASE, "method": "pgd_at"}) != key
    assert key_of(seed=1) != key
    assert key_of(train_subset=200) != key
    # other data: another validation split leaves other training images
    other_fp = data_fingerprint(load_splits("digits", val_size=310, with_test=False))
    assert other_fp != digits_fp and key_of(fp=other_fp) != key
    # another code version
    assert base_key(base_trial_config(cfg.trial, cfg.base, 0), digits_fp, BASE_VERSION + 1) != key
    # keys an ERM base never reads: the same base (studies with other searches share it)
    assert key_of(mask_ratio=0.4, reg_weight=3.0, epsilon=0.2, eval_steps=7, pool_size=4) == key
    assert key_of(cpus_per_worker=2.0, augment="none") == key  # "auto" is none for digits


# --- the cache -----------------------------------------------------------------------------------


def test_second_study_in_the_same_storage_reuses_the_base(tmp_path, digits_fp):
    train, lines = CountingTrainer(), []
    first = prepare_base(_study(tmp_path, "one"), train, digits_fp, say=lines.append)
    assert train.calls == 1
    path = first.trial.base_checkpoint
    key = base_key(base_trial_config(first.trial, first.base, 0), digits_fp)
    assert path == str(tmp_path / "bases" / key / "model.pt")
    info, problem = read_cached(str(tmp_path), key)
    assert problem == "" and info["metrics"]["val_clean_acc"] > 0.1  # better than chance
    write_base_record(first)  # the study directory says which base its trials refine
    record = json.loads((tmp_path / "one" / "base.json").read_text())
    assert record == {"base": first.base, "path": path, "seed": 0}
    # another study (or the same one resumed): no training, and one line says so
    lines.clear()
    second = prepare_base(_study(tmp_path, "two"), train, digits_fp, say=lines.append)
    assert train.calls == 1 and second.trial.base_checkpoint == path
    assert len(lines) == 1 and lines[0].startswith("[base] reusing") and "no training" in lines[0]
    # the baselines refine it too: every point carries the base
    assert {p["base_checkpoint"] for p in stages.baseline_points(second)} == {path}
    # no base: unchanged
    scratch = _study(tmp_path, "three", base=None)
    assert prepare_base(scratch, train, digits_fp) is scratch and train.calls == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "sidecar", "info"])
def test_a_corrupted_base_is_retrained_not_loaded(tmp_path, digits_fp, damage, monkeypatch):
    cfg = base_trial_config(_study(tmp_path).trial, BASE, 0)
    train = CountingTrainer()
    info = ensure_base(cfg, str(tmp_path), digits_fp, train, say=lambda _: None)
    model = tmp_path / "bases" / info["key"] / "model.pt"
    data = model.read_bytes()
    if damage == "truncate":
        model.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        model.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    elif damage == "sidecar":
        (model.parent / "model.pt.sha256").write_text("0" * 64)
    else:
        (model.parent / "base.json").write_text("{not json")
    if damage != "info":
        with pytest.raises(BaseModelError, match="SHA-256"):
            load_base_weights(str(model))  # a trial never loads it either
    loads = []
    real_load = torch.load
    monkeypatch.setattr(
        basemod.torch, "load", lambda *a, **k: loads.append(1) or real_load(*a, **k)
    )
    lines = []
    again = ensure_base(cfg, str(tmp_path), digits_fp, train, say=lines.append)
    assert train.calls == 2 and not again["reused"]
    assert "unusable" in lines[0] and "training it again" in lines[0]
    assert loads == []  # the damaged file was never unpickled
    assert read_cached(str(tmp_path), info["key"])[1] == ""  # intact again


def test_a_half_written_entry_is_not_used(tmp_path, digits_fp):
    cfg = base_trial_config(_study(tmp_path).trial, BASE, 0)
    info = ensure_base(cfg, str(tmp_path), digits_fp, CountingTrainer(), say=lambda _: None)
    (tmp_path / "bases" / info["key"] / "base.json").unlink()  # written last: never reached
    assert read_cached(str(tmp_path), info["key"]) == (None, "")


# --- refinement from the base -------------------------------------------------------------------


def test_refine_starts_from_the_base_weights(tmp_path, digits_fp, monkeypatch):
    study = prepare_base(_study(tmp_path), CountingTrainer(), digits_fp, say=lambda _: None)
    cfg = dataclasses.replace(study.trial, method="erm", seed=1)  # a replicate's seed
    base_state = load_base_weights(cfg.base_checkpoint)
    splits = load_trial_splits(cfg)
    model = initial_model(cfg, splits)
    for k, v in model.state_dict().items():
        assert torch.equal(v, base_state[k]), k
    # the base's accuracy before any refinement step: what the base itself reported
    info = json.loads((tmp_path / "bases" / cfg.base_checkpoint.split("/")[-2] / "base.json")
                      .read_text())  # fmt: skip
    val_x, val_y = subset(splits.val_x, splits.val_y, cfg.eval_subset, seed=0)
    with torch.no_grad():
        clean = (model.eval()(val_x).argmax(1) == val_y).float().mean().item()
    assert clean == pytest.approx(info["metrics"]["val_clean_acc"])
    scratch = initial_model(dataclasses.replace(cfg, base_checkpoint=None), splits)
    assert not torch.equal(scratch.state_dict()["1.0.weight"], base_state["1.0.weight"])

    # refine() itself: the first training step sees the base's weights
    import trainables.refine as refine_mod

    seen = []
    real_loss = refine_mod.training_loss

    def spy(cfg_, model_, *args, **kwargs):
        if not seen:
            seen.append({k: v.clone() for k, v in model_.state_dict().items()})
        return real_loss(cfg_, model_, *args, **kwargs)

    monkeypatch.setattr(refine_mod, "training_loss", spy)
    refine(dataclasses.replace(cfg, rounds=1, eval_subset=20, eval_steps=1, blackbox_queries=5))
    assert all(torch.equal(v, base_state[k]) for k, v in seen[0].items())


# --- confirmation: one base per seed ------------------------------------------------------------


def test_each_confirmation_seed_refines_its_own_base(tmp_path, digits_fp):
    study = _study(tmp_path)
    train = CountingTrainer()
    searched = prepare_base(study, train, digits_fp, say=lambda _: None).trial.base_checkpoint
    bases = confirmation_bases(study, 2, train, digits_fp, say=lambda _: None)
    assert train.calls == 3 and len(set(bases)) == 2 and searched not in bases
    assert confirmation_bases(study, 2, train, digits_fp, say=lambda _: None) == bases  # resumed
    assert train.calls == 3
    trials = pd.DataFrame(
        {
            "config/config_id": ["c000"],
            "config/replicate": [0],
            "config/base_checkpoint": [searched],
        }
    )
    points = confirmation_points(study, trials, ["c000"], 2, bases)
    assert [p["base_checkpoint"] for p in points] == bases
    assert [p["seed"] for p in points] == [confirm_seed(0, 0), confirm_seed(0, 1)]
    scratch = _study(tmp_path, base=None)
    assert confirmation_bases(scratch, 2, train, digits_fp) == [None, None]


def test_a_shared_base_is_refined_at_every_confirmation_seed(tmp_path, digits_fp):
    study = _study(tmp_path, base={**BASE, "confirmation": "shared"})
    train = CountingTrainer()
    prepared = prepare_base(study, train, digits_fp, say=lambda _: None)
    bases = confirmation_bases(prepared, 3, train, digits_fp, say=lambda _: None)
    assert bases == [prepared.trial.base_checkpoint] * 3 and train.calls == 1
    # the key decides nothing about the weights: the same cached base as without it
    plain = prepare_base(_study(tmp_path), train, digits_fp, say=lambda _: None)
    assert plain.trial.base_checkpoint == prepared.trial.base_checkpoint and train.calls == 1


def test_a_base_given_by_its_checkpoint_is_refined_everywhere_and_never_trained(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    study = _study(tmp_path, base={"checkpoint": "mine.pt"})
    path = str(tmp_path / "mine.pt")
    assert study.base == {"checkpoint": path}  # absolute: the trials run elsewhere
    assert build_study_config(json.loads(json.dumps(study.to_dict()))).base == study.base
    train, lines = CountingTrainer(), []
    prepared = prepare_base(study, train, "unused", say=lines.append)
    assert prepared.trial.base_checkpoint == path and train.calls == 0
    assert lines == [f"[base] refining the classifier in {path}; no training"]
    assert {p["base_checkpoint"] for p in stages.baseline_points(prepared)} == {path}
    bases = confirmation_bases(prepared, 3, train, "unused")
    assert bases == [path] * 3 and train.calls == 0
    write_base_record(prepared)
    record = json.loads((tmp_path / "study" / "base.json").read_text())
    assert record["base"] == {"checkpoint": path} and record["path"] == path
    # a checkpoint replaces a preset's base to train, whole
    cpu = build_study_config(
        {"preset": "cifar10-cpu", "storage": str(tmp_path), "base": {"checkpoint": path}}
    )
    assert cpu.base == {"checkpoint": path}
    for bad, fragment in [
        ({"checkpoint": path, "epochs": 2}, "base.epochs: a base given by its checkpoint"),
        ({"checkpoint": ""}, "base.checkpoint: expected a path or URI"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            _study(tmp_path, base=bad)


# --- the Ray Train path ----------------------------------------------------------------------


@pytest.mark.slow  # a Ray Train worker group, as every Train-mode test: the slow suite
def test_base_trains_as_a_ray_train_run(ray_local, tmp_path, digits_fp):
    from trainables.trial import run_base

    study = _study(tmp_path, eval_subset=20, blackbox_queries=10)  # a cheap evaluation
    cfg = base_trial_config(study.trial, BASE, 0)
    state, metrics = run_base(cfg, str(tmp_path / "train_runs"))
    local_state, local_metrics = train_base_locally(cfg)  # the same refine(), in this process
    assert metrics["val_clean_acc"] == pytest.approx(local_metrics["val_clean_acc"])
    for k, v in local_state.items():
        torch.testing.assert_close(state[k], v)
