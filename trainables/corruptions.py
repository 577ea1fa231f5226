"""CIFAR-10-C (Hendrycks & Dietterich, 2019), regenerated: the 15 benchmark corruptions at the
CIFAR severities, without OpenCV or ImageMagick and working with numpy 2 / scikit-image 0.26.

Each corruption follows the authors' CIFAR code (make_cifar_c.py) with numpy/scipy/PIL stand-ins:
cv2.filter2D -> scipy correlate (mode "mirror" is OpenCV's reflect-101), cv2.warpAffine ->
map_coordinates, ImageMagick's motion blur -> the shift-and-add kernel of `imagecorruptions`.
Frost blends in the authors' frost photos, which ship with this package (`trainables/frost/`,
Apache-2.0, copied from the `imagecorruptions` wheel; see the README there); `require_frost`
fails before any work when an install lacks them.
Randomness comes from one generator per (seed, corruption, severity, image index), so any
subset of images is corrupted exactly as in the full set.
"""

import hashlib
import math
import os
from collections.abc import Sequence
from functools import cache
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from skimage import color
from skimage.filters import gaussian
from torch import nn

from .evaluate import accuracy

CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
SEVERITIES = (1, 2, 3, 4, 5)
# Bump when a corruption's code or parameters change: cached sets are keyed by it.
GENERATOR_VERSION = 1


# --- helpers -------------------------------------------------------------------------------------


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """The authors' anti-aliased disk: a 17x17 disk mask, then a 3x3 Gaussian (cv2.GaussianBlur)."""
    grid = np.arange(-8, 9)
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float32)
    disk /= disk.sum()
    g = np.exp(-(np.arange(-1, 2) ** 2) / (2 * alias_blur**2))
    g /= g.sum()
    return ndimage.correlate(disk, np.outer(g, g), mode="mirror")


def _clipped_zoom(img: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre by `factor` (bilinear) and crop back to the input size."""
    h = img.shape[0]
    ch = int(np.ceil(h / factor))
    top = (h - ch) // 2
    zoom = (factor, factor) + (1,) * (img.ndim - 2)
    out = ndimage.zoom(img[top : top + ch, top : top + ch], zoom, order=1)
    trim = (out.shape[0] - h) // 2
    return out[trim : trim + h, trim : trim + h]


def _shift(img: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Shift by (dx, dy) pixels, repeating the edge row/column (ImageMagick-like)."""
    out = img
    if dx < 0:
        out = np.roll(out, dx, axis=1)
        out[:, dx:] = out[:, dx - 1 : dx]
    elif dx > 0:
        out = np.roll(out, dx, axis=1)
        out[:, :dx] = out[:, dx : dx + 1]
    if dy < 0:
        out = np.roll(out, dy, axis=0)
        out[dy:] = out[dy - 1 : dy]
    elif dy > 0:
        out = np.roll(out, dy, axis=0)
        out[:dy] = out[dy : dy + 1]
    return out


def _motion_blur(img: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """Shift-and-add with a one-sided Gaussian kernel of width 2 radius + 1 along `angle`."""
    width = 2 * radius + 1
    kernel = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    py, px = np.sin(np.deg2rad(angle)), np.cos(np.deg2rad(angle))
    out = np.zeros_like(img, dtype=np.float64)
    for i in range(width):
        dy, dx = -math.ceil(i * py - 0.5), -math.ceil(i * px - 0.5)
        if abs(dy) >= img.shape[0] or abs(dx) >= img.shape[1]:
            break
        out += kernel[i] * _shift(img, dx, dy)
    return out


def _plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square height map in [0, 1] (the authors' fog texture); size a power of two."""
    grid = np.zeros((size, size))
    step, wibble = size, 100.0

    def wibbled_mean(a):
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        half = step // 2
        corners = grid[0:size:step, 0:size:step]
        square = corners + np.roll(corners, -1, axis=0)
        square += np.roll(square, -1, axis=1)
        grid[half:size:step, half:size:step] = wibbled_mean(square)
        centres = grid[half:size:step, half:size:step]
        corners = grid[0:size:step, 0:size:step]
        lt = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        grid[0:size:step, half:size:step] = wibbled_mean(lt)
        tt = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        grid[half:size:step, 0:size:step] = wibbled_mean(tt)
        step //= 2
        wibble /= decay
    grid -= grid.min()
    return grid / grid.max()


FROST_DIR = Path(__file__).with_name("frost")
# The authors' first five frost photos (the CIFAR generator samples from these five), with the
# SHA-256 of each as it ships in imagecorruptions 1.1.2: checked before use, because a cached
# CIFAR-10-C set is keyed by GENERATOR_VERSION, not by the photos.
FROST_SHA256 = {
    "frost1.png": "ff9f907860bd7a835d459e32f9d588062b7f61ee267343cc7222b56753a14755",
    "frost2.png": "fe211a89b336999c207a852ce05818d4545d0b57c5beadd824b4cc9d9a9b6137",
    "frost3.png": "2d0d50b4a9bb213f38b024ef7768731bb83cc08d2f26b5766bbc167cdfa0e504",
    "frost4.jpg": "3f8b91ca1a9fa7167b09e773da53f5ae60d0a1fd88f02a783f6e328a72887f6e",
    "frost5.jpg": "5fc6a19df4a429ba68abdcc8f8a4278d4c9f81c9ccafd2c92ab0c8cf8992ebd2",
}
FROST_FILES = tuple(FROST_SHA256)


def _frost_folder() -> Path | None:
    """The folder of the frost photos, or None when this install lacks any of them."""
    return FROST_DIR if all((FROST_DIR / f).is_file() for f in FROST_FILES) else None


def require_frost(corruptions: Sequence[str] = ("frost",)) -> None:
    """Fail before any work when frost is asked for and its photos are missing (an install
    without the package data: they ship with the project)."""
    if "frost" in corruptions and _frost_folder() is None:
        raise RuntimeError(
            f"CIFAR-10-C frost needs the frost photos in {FROST_DIR}, which this install lacks: "
            "reinstall the project (pip install -e . in its clone)"
        )


@cache
def _frost_textures() -> tuple[np.ndarray, ...]:
    """The five frost photos, RGB, scaled by 0.2 as the authors do for CIFAR."""
    require_frost()
    textures = []
    for name, digest in FROST_SHA256.items():
        data = (FROST_DIR / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise RuntimeError(
                f"{FROST_DIR / name} is not the authors' frost photo (SHA-256 mismatch): "
                "reinstall the project (pip install -e . in its clone)"
            )
        with Image.open(BytesIO(data)) as im:
            im = im.convert("RGB")
            size = (round(im.width * 0.2), round(im.height * 0.2))
            textures.append(np.asarray(im.resize(size, Image.BILINEAR), dtype=np.float64))
    return tuple(textures)


# --- the corruptions: x is an (H, W, 3) float image in [0, 1]; results are in [0, 1] -----------


def gaussian_noise(x, s, rng):
    c = (0.04, 0.06, 0.08, 0.09, 0.10)[s - 1]
    return x + rng.normal(scale=c, size=x.shape)


def shot_noise(x, s, rng):
    c = (500, 250, 100, 75, 50)[s - 1]
    return rng.poisson(x * c) / c


def impulse_noise(x, s, rng):
    """Salt and pepper on a fraction c of the values (skimage.util.random_noise 's&p')."""
    c = (0.01, 0.02, 0.03, 0.05, 0.07)[s - 1]
    flip = rng.random(x.shape) <= c
    salt = rng.random(x.shape) <= 0.5
    out = x.copy()
    out[flip & salt] = 1.0
    out[flip & ~salt] = 0.0
    return out


def defocus_blur(x, s, rng):
    radius, alias = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))[s - 1]
    kernel = _disk(radius, alias)
    return np.stack([ndimage.correlate(x[..., d], kernel, mode="mirror") for d in range(3)], -1)


def glass_blur(x, s, rng):
    sigma, delta, iterations = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))[
        s - 1
    ]
    img = np.uint8(gaussian(x, sigma=sigma, channel_axis=-1) * 255)
    h, w = img.shape[:2]
    for _ in range(iterations):
        for row in range(h - delta, delta, -1):
            for col in range(w - delta, delta, -1):
                dx, dy = rng.integers(-delta, delta, size=2)
                # The authors' tuple "swap" of numpy views copies one way; the release did this.
                img[row, col] = img[row + dy, col + dx]
    return gaussian(img / 255.0, sigma=sigma, channel_axis=-1)


def motion_blur(x, s, rng):
    radius, sigma = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))[s - 1]
    return _motion_blur(x, radius, sigma, rng.uniform(-45, 45))


def zoom_blur(x, s, rng):
    top = (1.06, 1.11, 1.16, 1.21, 1.26)[s - 1]
    factors = np.arange(1, top, 0.01)
    out = sum(_clipped_zoom(x, f) for f in factors)
    return (x + out) / (len(factors) + 1)


def snow(x, s, rng):
    mean, std, zoom, thresh, radius, sigma, blend = (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    )[s - 1]
    layer = rng.normal(loc=mean, scale=std, size=x.shape[:2])
    layer = _clipped_zoom(layer, zoom)
    layer[layer < thresh] = 0
    layer = _motion_blur(np.clip(layer, 0, 1), radius, sigma, rng.uniform(-135, -45))
    layer = (np.round(layer * 255) / 255)[..., None]  # the authors round-trip it through a PNG
    gray = (x @ np.array([0.299, 0.587, 0.114]))[..., None]
    x = blend * x + (1 - blend) * np.maximum(x, gray * 1.5 + 0.5)
    return x + layer + np.rot90(layer, k=2)


def frost(x, s, rng):
    img_w, frost_w = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))[s - 1]
    texture = _frost_textures()[rng.integers(5)]
    h, w = x.shape[:2]
    top, left = rng.integers(0, texture.shape[0] - h), rng.integers(0, texture.shape[1] - w)
    return img_w * x + frost_w * texture[top : top + h, left : left + w] / 255.0


def fog(x, s, rng):
    strength, decay = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))[s - 1]
    h, w = x.shape[:2]
    size = 1 << (max(h, w) - 1).bit_length()
    max_val = x.max()
    x = x + strength * _plasma_fractal(size, decay, rng)[:h, :w, None]
    return x * max_val / (max_val + strength)


def brightness(x, s, rng):
    c = (0.05, 0.1, 0.15, 0.2, 0.3)[s - 1]
    hsv = color.rgb2hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return color.hsv2rgb(hsv)


def contrast(x, s, rng):
    c = (0.75, 0.5, 0.4, 0.3, 0.15)[s - 1]
    means = x.mean(axis=(0, 1), keepdims=True)
    return (x - means) * c + means


def elastic_transform(x, s, rng):
    """Random affine (cv2.warpAffine, reflect-101), then a smooth random displacement field."""
    size = x.shape[0]
    alpha, sigma, affine = (
        np.array([(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                  (0.1, 0.03, 0.03)][s - 1]) * size
    )  # fmt: skip
    centre, half = np.float32(size) // 2, size // 3
    src = np.array([[centre + half] * 2, [centre + half, centre - half], [centre - half] * 2])
    dst = src + rng.uniform(-affine, affine, size=src.shape)
    # Affine map dst -> src in (col, row) coordinates; sample the input where it lands.
    inv = np.linalg.solve(np.c_[dst, np.ones(3)], src).T  # 2x3
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    src_cols = inv[0, 0] * cols + inv[0, 1] * rows + inv[0, 2]
    src_rows = inv[1, 0] * cols + inv[1, 1] * rows + inv[1, 2]
    x = np.stack(
        [ndimage.map_coordinates(x[..., d], [src_rows, src_cols], order=1, mode="mirror")
         for d in range(3)], -1,
    )  # fmt: skip
    field = [gaussian(rng.uniform(-1, 1, size=(size, size)), sigma, mode="reflect", truncate=3)
             * alpha for _ in range(2)]  # fmt: skip
    dx, dy = field
    return np.stack(
        [ndimage.map_coordinates(x[..., d], [rows + dy, cols + dx], order=1, mode="reflect")
         for d in range(3)], -1,
    )  # fmt: skip


def pixelate(x, s, rng):
    c = (0.95, 0.9, 0.85, 0.75, 0.65)[s - 1]
    h, w = x.shape[:2]
    im = Image.fromarray(np.uint8(np.round(np.clip(x, 0, 1) * 255)))
    im = im.resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX)
    return np.asarray(im) / 255.0


def jpeg_compression(x, s, rng):
    quality = (80, 65, 58, 50, 40)[s - 1]
    buffer = BytesIO()
    Image.fromarray(np.uint8(np.round(np.clip(x, 0, 1) * 255))).save(
        buffer, "JPEG", quality=quality
    )
    with Image.open(buffer) as im:
        return np.asarray(im) / 255.0


_FUNCTIONS = {name: globals()[name] for name in CORRUPTIONS}


def corrupt(image: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """One (H, W, 3) uint8 image -> its corrupted uint8 version (truncated, as in the release)."""
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {CORRUPTIONS}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be in {SEVERITIES}, got {severity}")
    out = _FUNCTIONS[name](image.astype(np.float64) / 255.0, severity, rng)
    return np.uint8(np.clip(out, 0, 1) * 255 + 1e-6)  # + 1e-6: k / 255 * 255 may land below k


def corrupt_images(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """(N, H, W, 3) uint8 -> corrupted uint8. Image i draws from the generator (seed, name, i)
    at every severity (common random numbers), so severities differ by their parameters only."""
    ci = CORRUPTIONS.index(name)
    return np.stack(
        [corrupt(img, name, severity, np.random.default_rng((seed, ci, i)))
         for i, img in enumerate(images)]
    )  # fmt: skip


def write_cifar10c(
    images_uint8: np.ndarray,
    labels: np.ndarray,
    out_dir: str | Path,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
) -> Path:
    """Write `<corruption>.npy` (len(severities) * N, 32, 32, 3) uint8, severity-major, and
    `labels.npy` (the labels tiled once per severity), the layout of the public release."""
    images_uint8 = np.asarray(images_uint8)
    if images_uint8.dtype != np.uint8 or images_uint8.ndim != 4 or images_uint8.shape[-1] != 3:
        raise ValueError("images must be uint8 (N, H, W, 3)")
    require_frost(corruptions)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in corruptions:
        data = np.concatenate([corrupt_images(images_uint8, name, s, seed) for s in severities])
        _save_atomic(out / f"{name}.npy", data)
    # labels.npy last: its presence means the set is complete
    _save_atomic(out / "labels.npy", np.tile(np.asarray(labels, dtype=np.int64), len(severities)))
    return out


def _save_atomic(path: Path, array: np.ndarray) -> None:
    """np.save through a temporary file of this process's own, then a rename: a killed run never
    leaves a half-written file, and trials writing the same set at once never share one."""
    tmp = path.with_name(f"{path.stem}.{os.getpid()}-{os.urandom(4).hex()}.tmp.npy")
    try:
        np.save(tmp, array)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def load_cifar10c(
    data_dir: str | Path, corruption: str, severity: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One (corruption, severity) block of a CIFAR-10-C folder (ours or the public release)
    as float (N, 3, H, W) in [0, 1] and int64 labels. Assumes all five severities are stored."""
    data_dir = Path(data_dir)
    data = np.load(data_dir / f"{corruption}.npy", mmap_mode="r")
    labels = np.load(data_dir / "labels.npy")
    n = len(data) // len(SEVERITIES)
    block = slice((severity - 1) * n, severity * n)
    x = torch.from_numpy(np.ascontiguousarray(data[block].transpose(0, 3, 1, 2))).float() / 255
    return x, torch.from_numpy(labels[block].astype(np.int64))


def corruption_accuracy(
    model: nn.Module,
    data_dir: str | Path,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    batch_size: int = 512,
) -> dict[str, float]:
    """Accuracy per `<corruption>/<severity>`, per corruption (mean over severities), and the
    mean over corruptions under "mean" (the CIFAR-10-C headline number)."""
    result: dict[str, float] = {}
    for name in corruptions:
        accs = []
        for s in severities:
            acc = accuracy(model, *load_cifar10c(data_dir, name, s), batch_size=batch_size)
            result[f"{name}/{s}"] = acc
            accs.append(acc)
        result[name] = float(np.mean(accs))
    result["mean"] = float(np.mean([result[name] for name in corruptions]))
    return result
