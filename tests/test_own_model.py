"""Your own model (`package.module:factory`, `torchvision:NAME`) behind the engine's
normalization, and your own trained classifier's state_dict as the base: which layouts fit,
and the one-line errors for everything that does not."""

import sys
import textwrap

import pytest
import torch
from torch import nn

from trainables.base import BaseModelError, fit_base_weights, load_base_weights
from trainables.config import ConfigError, make_trial_config
from trainables.models import ModelError, Normalize, build_model, model_factory

FACTORIES = textwrap.dedent(
    """
    from torch import nn


    def net(in_channels, num_classes, image_size):
        return nn.Sequential(
            nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Linear(16, num_classes),
        )


    def positional_only(channels, classes):
        return net(channels, classes, 8)


    def wrong_output(in_channels, num_classes, image_size):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes + 1))


    def broken(in_channels, num_classes, image_size):
        raise RuntimeError("no such layer")


    def not_a_module(in_channels, num_classes, image_size):
        return "a string"
    """
)
SPEC = dict(in_channels=3, num_classes=3, image_size=16, mean=[0.5] * 3, std=[0.25] * 3)


@pytest.fixture(scope="module")
def own_models(tmp_path_factory):
    """A module `own_models_unit` in a folder on sys.path, as a user's file would be."""
    folder = tmp_path_factory.mktemp("user_code")
    (folder / "own_models_unit.py").write_text(FACTORIES)
    sys.path.insert(0, str(folder))
    yield "own_models_unit"
    sys.path.remove(str(folder))
    sys.modules.pop("own_models_unit", None)


def test_a_factory_from_a_module_is_wrapped_with_the_normalization(own_models):
    model = build_model(f"{own_models}:net", **SPEC)
    assert isinstance(model[0], Normalize) and isinstance(model[1][0], nn.Conv2d)
    assert model(torch.rand(5, 3, 16, 16)).shape == (5, 3)
    assert make_trial_config({"model": f"{own_models}:net"}).model == f"{own_models}:net"


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("no_such_module_here:net", "cannot import no_such_module_here (ModuleNotFoundError"),
        ("{m}:missing", "has no callable 'missing'"),
        ("{m}:positional_only", "must take in_channels, num_classes and image_size"),
        ("{m}:wrong_output", "gives output (2, 4) on a batch of shape (2, 3, 16, 16)"),
        ("{m}:broken", "fails to build (RuntimeError: no such layer)"),
        ("{m}:not_a_module", "returned a str, not a torch.nn.Module"),
        ("torchvision:resnet_nine", "torchvision has no classification model 'resnet_nine'"),
    ],
)
def test_a_bad_model_is_one_clear_error(own_models, name, fragment):
    with pytest.raises(ModelError, match=fragment.replace("(", r"\(").replace(")", r"\)")) as e:
        build_model(name.format(m=own_models), **SPEC)
    assert "\n" not in str(e.value)


def test_a_model_string_of_the_wrong_form_is_refused_by_the_config():
    for bad in ("vit", "my model:net", "pkg.mod:", ":net"):
        with pytest.raises(ConfigError, match="trial.model: must be one of"):
            make_trial_config({"model": bad})


def test_a_torchvision_model_gets_the_data_s_channels_and_classes():
    model = build_model(
        "torchvision:resnet18", **{**SPEC, "in_channels": 1, "mean": [0.5], "std": [0.25]}
    )
    assert model[1].conv1.in_channels == 1 and model[1].fc.out_features == 3
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, 3)
    assert callable(model_factory("torchvision:mobilenet_v3_small"))


# --- a base checkpoint ------------------------------------------------------------------------


def _saved(tmp_path, state, name="model.pt"):
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


def test_the_network_s_own_state_dict_runs_behind_the_engine_s_normalization(own_models, tmp_path):
    trained = build_model(f"{own_models}:net", **SPEC)
    path = _saved(tmp_path, trained[1].state_dict())  # what a user saves of their own net
    fresh = build_model(f"{own_models}:net", **{**SPEC, "mean": [0.1] * 3})
    fresh.load_state_dict(fit_base_weights(fresh, load_base_weights(path), path))
    assert torch.equal(fresh[1][0].weight, trained[1][0].weight)
    assert torch.allclose(fresh[0].mean.flatten(), torch.tensor([0.1] * 3))  # the engine's


@pytest.mark.parametrize("layout", ["wrapper", "engine_file"])
def test_the_whole_model_s_state_dict_keeps_its_own_normalization(own_models, tmp_path, layout):
    identity = nn.Sequential(
        Normalize([0.0] * 3, [1.0] * 3), build_model(f"{own_models}:net", **SPEC)[1]
    )
    state = identity.state_dict()
    path = _saved(tmp_path, state if layout == "wrapper" else {"model": state})
    fresh = build_model(f"{own_models}:net", **SPEC)
    fresh.load_state_dict(fit_base_weights(fresh, load_base_weights(path), path))
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(fresh(x), identity(x))  # images in [0, 1] as the net was trained on


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda s: s.pop("4.bias"), "missing key '4.bias'"),
        (lambda s: s.update(extra=torch.zeros(1)), "unexpected key 'extra'"),
        (lambda s: s.update({"4.weight": torch.zeros(5, 16)}), "key '4.weight' has shape (5, 16)"),
    ],
)
def test_a_checkpoint_that_does_not_fit_names_the_key(own_models, tmp_path, edit, fragment):
    state = build_model(f"{own_models}:net", **SPEC)[1].state_dict()
    edit(state)
    path = _saved(tmp_path, state)
    model = build_model(f"{own_models}:net", **SPEC)
    with pytest.raises(BaseModelError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        fit_base_weights(model, load_base_weights(path), path)


def test_the_sidecar_is_checked_when_present_and_code_is_never_unpickled(own_models, tmp_path):
    path = _saved(tmp_path, build_model(f"{own_models}:net", **SPEC)[1].state_dict())
    assert load_base_weights(path)  # no sidecar: loaded as it is
    (tmp_path / "model.pt.sha256").write_text("0" * 64)
    with pytest.raises(BaseModelError, match="fails its SHA-256"):
        load_base_weights(path)
    pickled = _saved(tmp_path, build_model(f"{own_models}:net", **SPEC)[1], "whole.pt")
    with pytest.raises(BaseModelError, match="cannot be loaded with weights_only=True"):
        load_base_weights(pickled)  # a pickled module, not a state_dict
    with pytest.raises(BaseModelError, match="holds no state_dict"):
        load_base_weights(_saved(tmp_path, {"epochs": 3}, "other.pt"))
