"""Models: normalization inside, every architecture builds and runs on each dataset's shape."""

import pytest
import torch

from trainables.models import ARCHITECTURES, Normalize, build_model


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
