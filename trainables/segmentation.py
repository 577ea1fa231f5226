"""Superpixels that stay meaningful from 8x8 to 224x224 and beyond.

`lime`'s default quickshift (kernel_size=4, max_dist=200) collapses a 32x32 image to one or two
superpixels, which makes every explanation meaningless. The defaults here grow with the image
(SUPERPIXELS_BY_SIDE, the one place their numbers are set; docs/data-and-models.md tabulates
them): a 4x4 grid of 2x2 cells on 8x8, about 25 to 40 SLIC superpixels on 32x32, about 100 on
224x224. Labels are always 0..K-1, which is what `lime` assumes (it indexes its sample matrix by
segment label).
"""

import warnings
from typing import NamedTuple

import numpy as np
from skimage.segmentation import quickshift, slic

SEGMENTATIONS = ("auto", "grid", "quickshift", "slic")
MIN_SUPERPIXELS = 4
SMALL_IMAGE = 16  # at or below this size 'auto' uses the grid
# SLIC's compactness: RGB is converted to Lab (range ~100), grey stays in [0, 1]. skimage divides
# the spatial distance by the grid step, so one value keeps the same shapes at every size.
SLIC_COMPACTNESS = {3: 10.0, 1: 0.1}


class Superpixels(NamedTuple):
    """The defaults for one image size."""

    grid_cells: int  # cells per side of the 'grid' segmentation
    # SLIC's n_segments; it returns about 60 to 120% of them, depending on how its grid of
    # seeds fits the image (30 to 36 on 32x32, 91 to 101 on 224x224)
    slic_segments: int
    quickshift_kernel: int  # quickshift's kernel_size (max_dist: 6 per kernel pixel)
    blur_sigma: float  # the 'blur' mask fill's Gaussian sigma (trainables/refine.py)


# By the image's larger side: the first row whose bound is at least that side. The superpixels
# grow with the image, slower than its area: LIME's surrogate needs more samples per superpixel.
SUPERPIXELS_BY_SIDE: tuple[tuple[int | None, Superpixels], ...] = (
    (SMALL_IMAGE, Superpixels(4, 16, 1, 1.5)),
    (32, Superpixels(6, 50, 1, 1.5)),
    (64, Superpixels(7, 70, 1, 2.5)),
    (128, Superpixels(8, 85, 2, 4.0)),
    (None, Superpixels(10, 100, 3, 6.0)),
)


def superpixel_defaults(height: int, width: int) -> Superpixels:
    """The superpixel and masking defaults for an image of this size."""
    side = max(height, width)
    return next(row for bound, row in SUPERPIXELS_BY_SIDE if bound is None or side <= bound)


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
    if images.shape[-1] not in (1, 3):
        raise ValueError(
            f"images must be channels-last (N, H, W, C) with C = 1 or 3, got shape {images.shape}"
        )
    if not np.all(np.isfinite(images)):
        raise ValueError("images contain NaN or infinite values")
    if images.min() < 0 or images.max() > 1:
        raise ValueError(f"images must lie in [0, 1], got [{images.min()}, {images.max()}]")
    return images.astype(np.float64, copy=False)


def grid(height: int, width: int, cells: int) -> np.ndarray:
    """A regular cells x cells grid: deterministic and independent of content."""
    rows = np.arange(height) * cells // height
    cols = np.arange(width) * cells // width
    return (rows[:, None] * cells + cols[None, :]).astype(np.int32)


def _segment_one(image: np.ndarray, method: str, seed: int) -> np.ndarray:
    height, width, channels = image.shape
    defaults = superpixel_defaults(height, width)
    if method == "grid":
        return grid(height, width, defaults.grid_cells)
    if method == "quickshift":
        rgb = np.repeat(image, 3, axis=-1) if channels == 1 else image
        # kernel_size=1, max_dist=6, ratio=0.3: 9 to 39 (mean 19) superpixels on 32x32 CIFAR.
        k = defaults.quickshift_kernel
        return quickshift(rgb, kernel_size=k, max_dist=6 * k, ratio=0.3, rng=seed)
    return slic(
        image[..., 0] if channels == 1 else image,
        n_segments=defaults.slic_segments,
        compactness=SLIC_COMPACTNESS[channels],
        channel_axis=None if channels == 1 else -1,
        start_label=0,
    )


def segment_batch(images: np.ndarray, method: str = "auto", seed: int = 0) -> np.ndarray:
    """images (N, H, W, C) float in [0, 1], C = 1 or 3 -> (N, H, W) int32 labels 0..K_i-1.

    'auto' is the grid for images of at most 16 px (2x2 cells on 8x8: 16 superpixels) and SLIC
    above (about 25 to 40 superpixels on 32x32, about 100 on 224x224: superpixel_defaults).
    Warns when an image gets fewer than 4.
    """
    if method not in SEGMENTATIONS:
        raise ValueError(f"unknown segmentation {method!r}; choose one of {SEGMENTATIONS}")
    images = _check_images(images)
    if method == "auto":
        method = "grid" if max(images.shape[1:3]) <= SMALL_IMAGE else "slic"
    out = np.empty(images.shape[:3], dtype=np.int32)
    for i, image in enumerate(images):
        # Relabel to 0..K-1: SLIC can skip labels, and lime needs them contiguous.
        out[i] = np.unique(_segment_one(image, method, seed), return_inverse=True)[1].reshape(
            image.shape[:2]
        )
    few = [i for i, seg in enumerate(out) if seg.max() + 1 < MIN_SUPERPIXELS]
    if few:
        warnings.warn(
            f"{len(few)} image(s) got fewer than {MIN_SUPERPIXELS} superpixels with {method!r} "
            f"(first: image {few[0]}); their explanations carry little information",
            stacklevel=2,
        )
    return out
