"""Standard CIFAR augmentation, batched on the device: random translation by up to `pad` pixels
(reflect padding, then a random crop of the original size) and a random horizontal flip.

Hand-written rather than torchvision.transforms.v2 because those draw one random transform per
call, so a batch needs a Python loop over images; here one indexing operation moves the whole
batch, and the same draw moves the batch's per-pixel LIME weight maps with their images.
Seeded by the caller's generator, on the images' device so a GPU draws nothing on the host: the
same seed gives the same augmentation on the same device type, not across CPU and GPU.
"""

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("none", "flip_translate", "auto")


def resolve(name: str, dataset: str) -> str:
    """'auto': flip and translate for CIFAR (natural images), nothing for digits (a flipped 2 is
    not a 2)."""
    if name == "auto":
        return "flip_translate" if dataset.startswith("cifar") else "none"
    return name


def flip_translate(
    tensors: tuple[torch.Tensor, ...], generator: torch.Generator, pad: int = 4
) -> tuple[torch.Tensor, ...]:
    """The same random translation and flip applied to each (N, C, H, W) tensor of the tuple;
    `generator` must be on the tensors' device."""
    n, _, h, w = tensors[0].shape
    device = tensors[0].device
    shift = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    rows = (torch.arange(h, device=device)[None, :] + shift[0][:, None])[:, :, None]  # (n, h, 1)
    cols = torch.arange(w, device=device)[None, :] + shift[1][:, None]  # (n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, :]  # (n, 1, w)
    batch = torch.arange(n, device=device)[:, None, None]
    out = []
    for t in tensors:
        padded = F.pad(t, (pad, pad, pad, pad), mode="reflect").permute(0, 2, 3, 1)
        out.append(padded[batch, rows, cols].permute(0, 3, 1, 2).contiguous())
    return tuple(out)
