"""Models: normalization inside, every architecture builds and runs on each dataset's shape."""

import pytest
import torch

from trainables.models import ARCHITECTURES, Normalize, PatchWhitening, build_model, fit_whitening


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("channels, size", [(1, 8), (3, 32)])
def test_every_architecture_builds_for_each_input_shape(name, channels, size):
    model = build_model(
        name, in_channels=channels, num_classes=10, image_size=size,
        mean=[0.5] * channels, std=[0.25] * channels,
    )  # fmt: skip
    out = model.eval()(torch.rand(4, channels, size, size))
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    assert isinstance(model[0], Normalize)


def test_normalization_is_part_of_the_model():
    norm = Normalize([0.5, 0.25, 0.0], [0.5, 0.25, 1.0])
    x = torch.ones(1, 3, 2, 2)
    assert torch.allclose(norm(x)[0, :, 0, 0], torch.tensor([1.0, 3.0, 1.0]))
    # Buffers, not parameters: they move with .to() and are saved, but never trained.
    assert not list(norm.parameters()) and len(dict(norm.named_buffers())) == 2


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'vit'"):
        build_model("vit", in_channels=3, num_classes=10, image_size=32, mean=[0] * 3, std=[1] * 3)


def test_patch_whitening_decorrelates_the_patches_it_was_fitted_to():
    gen = torch.Generator().manual_seed(0)
    # correlated pixels: a shared brightness per image plus a little noise
    x = 0.3 * torch.rand(200, 3, 8, 8, generator=gen) + torch.rand(200, 1, 1, 1, generator=gen)
    model = build_model(
        "airbench_cnn", in_channels=3, num_classes=10, image_size=8,
        mean=[0.5] * 3, std=[0.25] * 3, width=4,
    )  # fmt: skip
    whitening = model[1][0]
    assert isinstance(whitening, PatchWhitening)
    before = whitening.weight.clone()
    fit_whitening(model, x)
    assert not torch.equal(before, whitening.weight)
    out = whitening(model[0](x)).permute(0, 2, 3, 1).reshape(-1, 12)
    cov = out.T @ out / len(out)
    assert torch.allclose(cov, torch.eye(12), atol=0.05)
    # a buffer, so a base's weights carry it and no optimizer moves it
    assert "1.0.weight" in model.state_dict() and not list(whitening.parameters())


def test_a_model_without_whitening_is_left_as_it_is():
    model = build_model(
        "small_cnn", in_channels=1, num_classes=10, image_size=8, mean=[0.5], std=[0.25]
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit_whitening(model, torch.rand(10, 1, 8, 8))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_trial_from_scratch_fits_the_whitening_and_a_base_keeps_its_own(tmp_path):
    from trainables.base import model_file
    from trainables.config import make_trial_config
    from trainables.refine import initial_model, load_trial_splits

    cfg = make_trial_config({"model": "airbench_cnn", "model_width": 4})
    splits = load_trial_splits(cfg)
    fitted = initial_model(cfg, splits)[1][0].weight
    assert not torch.equal(fitted, PatchWhitening(1).weight)  # no longer the identity

    base = build_model(
        "airbench_cnn", in_channels=1, num_classes=10, image_size=8,
        mean=splits.mean, std=splits.std, width=4,
    )  # fmt: skip
    base[1][0].weight.mul_(3)  # a base's whitening, unlike any fitted to these images
    data, digest = model_file(base.state_dict())
    (tmp_path / "base.pt").write_bytes(data)
    (tmp_path / "base.pt.sha256").write_text(digest + "\n")
    refined = make_trial_config({**vars(cfg), "base_checkpoint": str(tmp_path / "base.pt")})
    assert torch.equal(initial_model(refined, splits)[1][0].weight, base[1][0].weight)
