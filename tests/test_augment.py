"""CIFAR augmentation: seeded, shape- and label-preserving, the map moving with its image."""

import pytest
import torch

from trainables.augment import flip_translate, resolve


def test_deterministic_under_a_seed_and_shapes_kept():
    x = torch.rand(16, 3, 32, 32)
    a = flip_translate((x,), torch.Generator().manual_seed(3))[0]
    b = flip_translate((x,), torch.Generator().manual_seed(3))[0]
    c = flip_translate((x,), torch.Generator().manual_seed(4))[0]
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == x.shape


def test_each_image_is_a_translated_or_flipped_copy_of_itself():
    """Labels are untouched by construction (the function never sees them); check that image i
    stays image i: its centre crop (unaffected by up to 4 pixels of shift) matches image i's
    shifted or flipped centre, and no other image's."""
    x = torch.rand(8, 1, 16, 16)
    (out,) = flip_translate((x,), torch.Generator().manual_seed(0))
    for i in range(8):
        matches = []
        for j in range(8):
            for img in (x[j], x[j].flip(-1)):
                for dy in range(-4, 5):
                    for dx in range(-4, 5):
                        ref = img[:, 4 + dy : 12 + dy, 4 + dx : 12 + dx]
                        if torch.equal(out[i, :, 4:12, 4:12], ref):
                            matches.append(j)
        assert set(matches) == {i}


def test_the_weight_map_moves_with_its_image():
    x = torch.rand(4, 3, 8, 8)
    w = x[:, :1].clone()  # a map equal to the first channel must stay equal to it
    out_x, out_w = flip_translate((x, w), torch.Generator().manual_seed(1))
    assert torch.equal(out_x[:, :1], out_w)


def test_auto_is_on_for_photographs_only():
    for dataset in ("cifar10", "cifar100", "stl10", "flowers102"):
        assert resolve("auto", dataset) == "flip_translate"
    for dataset in ("digits", "mnist", "fashion_mnist", "svhn", "gtsrb", "imagefolder"):
        assert resolve("auto", dataset) == "none"  # a flipped 2 or sign is another class
    assert resolve("none", "cifar10") == "none"
    assert resolve("flip_translate", "imagefolder") == "flip_translate"


def test_the_translation_grows_with_the_image():
    x = torch.zeros(64, 1, 64, 64)
    x[:, :, 32, 32] = 1  # one lit pixel: where it lands is the shift
    (out,) = flip_translate((x,), torch.Generator().manual_seed(0))
    rows, cols = (out[:, 0] == 1).nonzero()[:, 1:].T
    assert (rows - 32).abs().max() == 8  # an eighth of 64
    assert ((cols - 32).abs() <= 9).all()  # a flip moves column 32 to 31


@pytest.mark.parametrize("pad", [0, 2])
def test_translate_caps_the_shift(pad):
    x = torch.zeros(64, 1, 32, 32)
    x[:, :, 16, 16] = 1
    (out,) = flip_translate((x,), torch.Generator().manual_seed(0), pad)
    rows, cols = (out[:, 0] == 1).nonzero()[:, 1:].T
    assert (rows - 16).abs().max() == pad
    assert ((cols - 16).abs() <= pad + 1).all()  # a flip moves column 16 to 15
