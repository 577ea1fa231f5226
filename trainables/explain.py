"""LIME explanations of image classifiers: the `lime` library (the reference) and a torch back end.

Both back ends mean the same thing. Image i draws its S binary superpixel masks from
`np.random.RandomState([seed, first_index + i])` exactly as `lime` does (`randint(0, 2, S * K)`,
first row all ones), hides a superpixel with its mean colour, weights samples by
`sqrt(exp(-d**2 / 0.25**2))` of the cosine distance to the unperturbed mask, and fits
`Ridge(alpha=1)` with an intercept. `lime`'s feature_selection 'auto' with its default
num_features=100000 is 'highest_weights' keeping every feature, so the final fit uses all K
superpixels, as the torch back end does. The torch back end composes the perturbed images by
indexing the segment maps, runs the model in large batches and solves all ridge regressions at
once; the `lime` back end runs `LimeImageExplainer.explain_instance` as it is (batches of 10).
"""

from collections import deque
from dataclasses import dataclass
from unittest import mock

import numpy as np
import ray
import torch
from torch import nn

from trainables.models import Normalize, build_model

BACKENDS = ("lime", "torch")
KERNEL_WIDTH = 0.25
RIDGE_ALPHA = 1.0
ROWS_PER_CHUNK = 2**16  # perturbed samples held at once: bounds memory for any pool size
# Image values (C x H x W each) held at once by a chunk's images and by one forward batch, 64 MB
# in float32: large images get smaller chunks and batches (111 images at 224x224 RGB; a 32x32
# RGB chunk or batch stays within it 21 times over, so small images are not affected).
MAX_VALUES = 2**24
MAX_CHUNK_RETRIES = 3


@dataclass
class Explanation:
    """One image's LIME explanation for one class."""

    label: int  # the class explained
    segments: np.ndarray  # (H, W) int labels 0..K-1
    weights: np.ndarray  # (K,) one weight per superpixel, for `label`
    intercept: float
    local_pred: float  # the surrogate's prediction on the unperturbed image
    score: float  # R^2 of the weighted ridge surrogate


def _check_arrays(
    images: torch.Tensor, labels: torch.Tensor, segments: np.ndarray, num_samples: int
) -> np.ndarray:
    """Validate what needs no model; return the number of superpixels per image."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(
            f"images must be a (N, C, H, W) tensor, got {getattr(images, 'shape', images)}"
        )
    n, c, h, w = images.shape
    if c not in (1, 3):
        hint = " (channels-last? pass (N, C, H, W))" if images.shape[-1] in (1, 3) else ""
        raise ValueError(
            f"images must be (N, C, H, W) with C = 1 or 3, got {tuple(images.shape)}{hint}"
        )
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values")
    if images.min() < 0 or images.max() > 1:
        raise ValueError(
            f"images must lie in [0, 1], the models' input range; got "
            f"[{images.min().item():.3g}, {images.max().item():.3g}]"
        )
    labels = torch.as_tensor(labels)
    if labels.shape != (n,) or labels.is_floating_point() or (labels < 0).any():
        raise ValueError(f"labels must be {n} non-negative class ids, got {labels}")
    segments = np.asarray(segments)
    if segments.shape != (n, h, w) or not np.issubdtype(segments.dtype, np.integer):
        raise ValueError(f"segments must be integer (N, H, W) = {(n, h, w)}, got {segments.shape}")
    k = segments.reshape(n, -1).max(axis=1) + 1
    for i, seg in enumerate(segments):
        if seg.min() != 0 or len(np.unique(seg)) != k[i]:
            raise ValueError(
                f"segments of image {i} must use every label 0..K-1 (see segment_batch)"
            )
    if num_samples < k.max():
        raise ValueError(
            f"num_samples={num_samples} is below the number of superpixels ({k.max()}); "
            "the surrogate would be underdetermined"
        )
    return k


def _check_model(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Grayscale vs RGB and class ids against the model, with one forward pass."""
    first = next((m for m in model.modules() if isinstance(m, Normalize | nn.Conv2d)), None)
    if first is not None:
        expected = first.mean.shape[1] if isinstance(first, Normalize) else first.in_channels
        if images.shape[1] != expected:
            kind = {1: "grayscale", 3: "RGB"}.get(expected, f"{expected}-channel")
            raise ValueError(f"the model expects {kind} images, got {images.shape[1]} channel(s)")
    with torch.inference_mode():
        num_classes = model(images[:1].to(_device(model))).shape[1]
    if labels.max() >= num_classes:
        raise ValueError(f"label {labels.max().item()} is out of range for {num_classes} classes")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _rng(seed: int, index: int) -> np.random.RandomState:
    return np.random.RandomState([seed, index])


def _lime_backend(model, images, labels, segments, num_samples, seed, first_index):
    from lime import lime_image  # the reference back end only: lime imports scikit-image

    device, channels = _device(model), images.shape[1]

    def classifier_fn(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).permute(0, 3, 1, 2)
        if channels == 1:  # lime works in RGB; the float64 mean of 3 equal float32 values is exact
            x = x.to(torch.float64).mean(dim=1, keepdim=True)
        with torch.inference_mode():
            return torch.softmax(model(x.to(device, torch.float32)).float(), 1).cpu().numpy()

    out = []
    for i, (image, label, seg) in enumerate(zip(images, labels.tolist(), segments, strict=True)):
        rgb = image.permute(1, 2, 0).cpu().numpy()
        if channels == 1:
            rgb = np.repeat(rgb, 3, axis=-1)
        explainer = lime_image.LimeImageExplainer(
            kernel_width=KERNEL_WIDTH, random_state=_rng(seed, first_index + i)
        )
        with mock.patch.object(lime_image, "tqdm", lambda rows: rows):  # no progress bars
            exp = explainer.explain_instance(
                rgb,
                classifier_fn,
                labels=(label,),
                hide_color=None,
                top_labels=None,
                num_samples=num_samples,
                segmentation_fn=lambda _image, seg=seg: seg,
                random_seed=seed,
            )
        weights = np.zeros(seg.max() + 1)
        for feature, weight in exp.local_exp[label]:
            weights[feature] = weight
        out.append(
            Explanation(
                label=label,
                segments=seg,
                weights=weights,
                intercept=float(exp.intercept[label]),
                local_pred=float(np.ravel(exp.local_pred)[0]),
                score=float(exp.score),
            )
        )
    return out


def lime_ridge(masks: torch.Tensor, y: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """lime's kernel-weighted Ridge(alpha=1) with intercept, for B problems at once.

    masks (B, S, Kmax) 0/1 with columns past each image's K all zero (they get coefficient 0,
    exactly), y (B, S), k (B,). Returns coef (B, Kmax), intercept, local_pred, score (B,).
    """
    x = masks.to(torch.float64)
    y = y.to(torch.float64)
    # Cosine distance of a 0/1 mask to all ones: 1 - sqrt(ones / K); 1 for the empty mask (sklearn).
    d = 1 - torch.sqrt(x.sum(-1) / k[:, None].to(torch.float64))
    w = torch.sqrt(torch.exp(-(d**2) / KERNEL_WIDTH**2))
    w_sum = w.sum(1, keepdim=True)
    x_mean = (w[..., None] * x).sum(1) / w_sum
    y_mean = (w * y).sum(1, keepdim=True) / w_sum
    xc, yc = x - x_mean[:, None], y - y_mean
    xw = xc * w[..., None]
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    coef = torch.linalg.solve(xw.mT @ xc + RIDGE_ALPHA * eye, xw.mT @ yc[..., None])[..., 0]
    intercept = y_mean[:, 0] - (x_mean * coef).sum(1)
    pred = intercept[:, None] + (x @ coef[..., None])[..., 0]
    ss_res = (w * (y - pred) ** 2).sum(1)
    ss_tot = (w * yc**2).sum(1)
    # sklearn's r2_score: 1 when both are zero, 0 when only the total is.
    perfect = torch.where(ss_res == 0, 1.0, 0.0).to(ss_res)
    score = torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp(min=1e-300), perfect)
    return coef, intercept, pred[:, 0], score


def _torch_chunk(model, images, labels, segments, k, num_samples, rngs, batch_size, amp):
    """Explain one chunk of images: masks, composition, batched forward, batched ridge."""
    device = _device(model)
    n, c, h, w = images.shape
    s, kmax = num_samples, int(k.max())
    masks = np.zeros((n, s, kmax), dtype=np.bool_)
    for i, rng in enumerate(rngs):  # the same draws as lime's data_labels
        draw = rng.randint(0, 2, s * k[i]).reshape(s, k[i])
        draw[0, :] = 1
        masks[i, :, : k[i]] = draw
    masks_t = torch.from_numpy(masks).to(device)
    seg = torch.from_numpy(segments.reshape(n, h * w).astype(np.int64)).to(device)
    seg_c = seg[:, None].expand(n, c, h * w)
    flat = images.reshape(n, c, h * w).to(torch.float64)
    sums = torch.zeros(n, c, kmax, dtype=torch.float64, device=device).scatter_add_(2, seg_c, flat)
    counts = torch.zeros(n, kmax, dtype=torch.float64, device=device)
    counts.scatter_add_(1, seg, torch.ones_like(flat[:, 0]))
    means = sums / counts.clamp(min=1)[:, None]
    hidden = means.gather(2, seg_c).reshape(n, c, h, w).to(torch.float32)  # hide colour
    on_cuda = device.type == "cuda"
    probs = torch.empty(n * s, dtype=torch.float32, device=device)
    rows_masks = masks_t.reshape(n * s, kmax)
    for start in range(0, n * s, batch_size):
        rows = torch.arange(start, min(start + batch_size, n * s), device=device)
        img = rows // s
        keep = rows_masks[rows].gather(1, seg[img]).reshape(-1, 1, h, w)
        x = torch.where(keep, images[img], hidden[img])
        if on_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp and on_cuda):
            logits = model(x)
        probs[rows] = torch.softmax(logits.float(), 1).gather(1, labels[img, None])[:, 0]
    k_t = torch.from_numpy(k).to(device)
    coef, intercept, local_pred, score = lime_ridge(masks_t, probs.reshape(n, s), k_t)
    coef, intercept, local_pred, score = (t.cpu() for t in (coef, intercept, local_pred, score))
    return [
        Explanation(
            label=int(labels[i]),
            segments=segments[i],
            weights=coef[i, : k[i]].numpy(),
            intercept=float(intercept[i]),
            local_pred=float(local_pred[i]),
            score=float(score[i]),
        )
        for i in range(n)
    ]


def explain_images(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    segments: np.ndarray,
    *,
    backend: str = "lime",
    num_samples: int = 1000,
    seed: int = 0,
    batch_size: int = 256,
    first_index: int = 0,
    amp: bool = True,
) -> list[Explanation]:
    """Explain class labels[i] of image i of (N, C, H, W) in [0, 1]; one Explanation each, in order.

    The model is put in eval() mode. `batch_size` is the torch back end's forward batch; the lime
    back end keeps lime's own batches of 10 (it is the reference). `first_index` offsets the
    per-image random streams, so explaining a pool in chunks equals explaining it at once.
    `amp` enables float16 autocast (and channels_last) only on CUDA.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    k = _check_arrays(images, labels, segments, num_samples)
    segments = np.asarray(segments)
    labels = torch.as_tensor(labels)
    model.eval()
    _check_model(model, images, labels)
    if backend == "lime":
        return _lime_backend(model, images, labels, segments, num_samples, seed, first_index)
    device = _device(model)
    values = images[0].numel()
    per_chunk = max(1, min(ROWS_PER_CHUNK // num_samples, MAX_VALUES // values))
    batch_size = max(1, min(batch_size, MAX_VALUES // values))
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), per_chunk):
            stop = start + per_chunk
            rngs = [_rng(seed, first_index + i) for i in range(start, min(stop, len(images)))]
            out += _torch_chunk(
                model,
                images[start:stop].to(device, torch.float32),
                labels[start:stop].to(device),
                segments[start:stop],
                k[start:stop],
                num_samples,
                rngs,
                batch_size,
                amp,
            )
    return out


class ExplainerStartError(RuntimeError):
    """The LIME actors found no resources to start on."""


@ray.remote
class _ExplainerActor:
    """Holds one model copy; explains chunks with the settings fixed at creation."""

    def __init__(self, model_spec: dict, settings: dict, threads: int, use_gpu: bool):
        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.model = build_model(**model_spec).to(self.device).eval()
        self.settings = settings

    def set_weights(self, state_dict: dict) -> None:
        self.model.load_state_dict(state_dict)

    def ready(self) -> bool:
        return True

    def explain(self, images, labels, segments, first_index: int) -> list[Explanation]:
        return explain_images(
            self.model, images, labels, segments, first_index=first_index, **self.settings
        )


class ExplainerPool:
    """Long-lived Ray actors holding a copy of the model; explain a pool in chunks, in input order.

    Works from a driver and from inside another actor (a Ray Train worker or a Tune trial); the
    actors need CPUs (or GPU fractions) of their own. `in_caller_placement_group`: start them in
    the caller's placement group (a Tune trial that reserved bundles for them), else outside
    any. Actors that cannot start within `start_timeout` seconds (a full cluster) raise
    ExplainerStartError rather than wait forever. An actor that dies mid-pool is replaced (with
    the current weights) and its chunk retried.
    """

    def __init__(
        self,
        model_spec: dict,
        num_actors: int,
        *,
        backend: str = "lime",
        num_samples: int = 1000,
        seed: int = 0,
        cpus_per_actor: float = 1.0,
        gpus_per_actor: float = 0.0,
        batch_size: int = 256,
        chunk_size: int = 32,
        in_caller_placement_group: bool = False,
        start_timeout: float = 600.0,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        if num_actors < 1 or chunk_size < 1:
            raise ValueError("num_actors and chunk_size must be at least 1")
        self._model_spec = model_spec
        self._settings = dict(
            backend=backend, num_samples=num_samples, seed=seed, batch_size=batch_size
        )
        # "DEFAULT" keeps the actors out of the caller's placement group: a Ray Train worker's
        # bundle holds exactly the worker, so captured actors would wait for it forever. The
        # study reserves their share when it decides how many trials run at once. None: Ray's
        # default, which places an actor started inside a placement group in that group.
        self._options = dict(
            num_cpus=cpus_per_actor,
            num_gpus=gpus_per_actor,
            scheduling_strategy=None if in_caller_placement_group else "DEFAULT",
        )
        self._threads = max(1, int(cpus_per_actor))
        self._chunk_size = chunk_size
        self._weights = None  # object ref of the latest state dict, for replacement actors
        self.replaced = 0  # actors replaced after dying
        self._actors = [self._start_actor() for _ in range(num_actors)]
        self._wait_started(start_timeout)

    def _start_actor(self):
        actor = _ExplainerActor.options(**self._options).remote(
            self._model_spec, self._settings, self._threads, self._options["num_gpus"] > 0
        )
        if self._weights is not None:
            actor.set_weights.remote(self._weights)  # runs before any chunk sent later
        return actor

    def _wait_started(self, timeout: float) -> None:
        pending = [a.ready.remote() for a in self._actors]
        _, not_started = ray.wait(pending, num_returns=len(pending), timeout=timeout)
        if not_started:
            self.shutdown()
            raise ExplainerStartError(
                f"{len(not_started)} of {len(pending)} LIME actors did not start within "
                f"{timeout:g} s: the cluster has no free {self._options['num_cpus']:g} CPU / "
                f"{self._options['num_gpus']:g} GPU for each; lower --max-concurrent-trials, "
                "add nodes, or set lime_actors: 0 to explain in the trial's own process"
            )

    def update_weights(self, state_dict: dict) -> None:
        """New weights for every actor, put in the object store once."""
        self._weights = ray.put({k: v.detach().cpu() for k, v in state_dict.items()})
        ray.get([a.set_weights.remote(self._weights) for a in self._actors])

    def explain(
        self, images: torch.Tensor, labels: torch.Tensor, segments: np.ndarray
    ) -> list[Explanation]:
        """Explain every image, one chunk per idle actor at a time; results in input order."""
        images, labels = images.detach().cpu(), torch.as_tensor(labels).cpu()
        segments = np.asarray(segments)
        _check_arrays(images, labels, segments, self._settings["num_samples"])
        starts = list(range(0, len(images), self._chunk_size))
        todo, idle, in_flight = deque(starts), list(self._actors), {}
        results, retries = {}, dict.fromkeys(starts, 0)
        while todo or in_flight:
            while todo and idle:
                start, actor = todo.popleft(), idle.pop()
                stop = start + self._chunk_size
                ref = actor.explain.remote(
                    images[start:stop], labels[start:stop], segments[start:stop], start
                )
                in_flight[ref] = (start, actor)
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            start, actor = in_flight.pop(ref)
            try:
                results[start] = ray.get(ref)
                idle.append(actor)
            except ray.exceptions.RayActorError:
                retries[start] += 1
                if retries[start] > MAX_CHUNK_RETRIES:
                    raise
                self._actors.remove(actor)
                self._actors.append(self._start_actor())
                self.replaced += 1
                idle.append(self._actors[-1])
                todo.appendleft(start)
        return [e for start in starts for e in results[start]]

    def shutdown(self) -> None:
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
