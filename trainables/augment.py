"""Standard CIFAR augmentation, batched on the device: random translation by up to `pad` pixels
(an eighth of the image's side: 4 on 32x32; reflect padding, then a random crop of the original
size) and a random horizontal flip.

Hand-written rather than torchvision.transforms.v2 because those draw one random transform per
call, so a batch needs a Python loop over images; here one indexing operation moves the whole
batch, and the same draw moves the batch's per-pixel LIME weight maps with their images.
Seeded by the caller's generator, on the images' device so a GPU draws nothing on the host: the
same seed gives the same augmentation on the same device type, not across CPU and GPU.
"""

import torch
import torch.nn.functional as F

from trainables.data import FLIP_INVARIANT

AUGMENTATIONS = ("none", "flip_translate", "auto")


def resolve(name: str, dataset: str) -> str:
    """'auto': flip and translate for photographs (FLIP_INVARIANT), nothing for the others (a
    flipped 2 is not a 2)."""
    if name == "auto":
        return "flip_translate" if dataset in FLIP_INVARIANT else "none"
    return name


def flip_translate(
    tensors: tuple[torch.Tensor, ...], generator: torch.Generator, pad: int | None = None
) -> tuple[torch.Tensor, ...]:
    """The same random translation and flip applied to each (N, C, H, W) tensor of the tuple;
    `generator` must be on the tensors' device. pad None: an eighth of the side (at least 1)."""
    n, _, h, w = tensors[0].shape
    pad = max(1, min(h, w) // 8) if pad is None else pad
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
