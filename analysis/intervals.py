"""Intervals that cover both sources of noise in a study: which seeds and which test images.

A trial is one configuration at one seed, scored on a fixed set of test images. Its outcomes are
a 0/1 row per seed, every seed on the same images: a (seeds, images) matrix, seeds crossed with
images. An accuracy computed from it varies with the seeds drawn (training randomness) and with
the images drawn (the test split is a sample), and an interval over seeds alone, or over images
alone, leaves one of the two out.

Two methods (``method=``):

``"t"`` (the default), a studentised interval: mean ± q·√V. V is the sum of two parts. The
    seed part, s²(per-seed accuracies)/S, is the mean's variance over seeds with these images
    (the per-image noise of each trial included), on S − 1 degrees of freedom. The image part,
    s²(per-image accuracies)/N − MS_residual/(S·N) (two-way ANOVA mean squares, at least 0), is
    the variance of the images' population mean, on N − 1. The sum is an unbiased estimate of
    what the two-level bootstrap below estimates with bias (resampling seeds and images
    independently counts the residual noise more than once, Owen 2007, and shrinks the seed
    variance by (S−1)/S, by half at 2 seeds). q is Cochran & Cox's (1957) critical value, the
    two parts' t quantiles weighted by their variances: t(S−1) where seeds dominate (12.7 at 2
    seeds, as a Student-t over seeds must be), t(N−1) ≈ 1.97 where images do. Satterthwaite's
    (1946) degrees of freedom, the usual alternative, under-cover at 2 and 3 seeds (down to 81%
    in the coverage test's settings): the estimated degrees of freedom are largest exactly when
    the seed variance, on 1 degree of freedom, came out small by chance.
``"percentile"``: the two-level bootstrap itself (seeds and images resampled with replacement,
    one image resample shared by all seeds; Davison & Hinkley 1997, ch. 3, on hierarchical
    data; Field & Welsh 2007), percentile interval. With 2 or 3 seeds it has 3 or 10 distinct
    seed resamples, and it under-covers once seeds differ by more than a point or two (77 and
    84% at 2 seeds with the coverage test's larger seed effect); kept to show that.

With one seed the seed part cannot be estimated, and the interval covers the images only:
Wilson (1927) for an accuracy, Newcombe's (1998) hybrid score interval for a paired difference,
with McNemar's mid-p test (Fagerland, Lydersen & Laake 2013) for its p-value. An accuracy's
interval is also never narrower than the Wilson interval at the effective number of images
(m(1−m)/V, the design effect's sample size as in Korn & Graubard 1998, at most S·N), which
gives it the right asymmetry near 0 and 1, and where the outcomes do not vary at all (0 of 10
images at every seed) the Wilson interval of the N images: 0/10 at any number of seeds is
0.0 [0.0, 0.278], not [0, 0] (the seeds share the images, so in the worst case the images, not
the S·N trials, are the independent units).

Functions accept a single (seeds, images) matrix (and return floats) or a stack of them with
leading batch axes (and return arrays), which is how the coverage test runs 1,000 studies at
once.
"""

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

LEVEL = 0.95
N_BOOT = 2000
MIN_FRONT_REPLICATES = 5  # below this, a bootstrap over replicates is too coarse to report
METHODS = ("t", "percentile")
NO_DIFFERENCE = "no difference beyond the intervals"
Seed = int | np.random.Generator | None  # anything np.random.default_rng takes


def _outcomes(x: ArrayLike) -> np.ndarray:
    """A float (..., seeds, images) array; one row (a 1-D input) is one seed."""
    y = np.asarray(x, dtype=float)
    y = y[None, :] if y.ndim == 1 else y
    if y.ndim < 2 or y.shape[-2] < 1 or y.shape[-1] < 2:
        raise ValueError(f"outcomes must be (seeds, images) with at least 2 images, got {y.shape}")
    if np.isnan(y).any():
        raise ValueError("outcomes contain NaN: leave failed trials (rows) out first")
    return y


def _scalar(*arrays):
    """Floats for a single study, arrays for a batch."""
    return tuple(float(a) if np.ndim(a) == 0 else a for a in arrays)


def _parts(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, and the two parts of its variance: the seeds' (with these images) and the images'.

    Seed part: s²(per-seed means)/S, unbiased for the mean's variance over seeds with the images
    fixed, the cells' own noise included (S - 1 degrees of freedom). Image part: s²(per-image
    means)/N - MS_residual/(S·N), unbiased for the variance of the images' population mean
    (two-way ANOVA mean squares; N - 1 degrees of freedom), and at least 0."""
    s, n = y.shape[-2:]
    mean = y.mean(axis=(-2, -1))
    seeds, images = y.mean(axis=-1), y.mean(axis=-2)
    if s == 1:
        return mean, np.zeros_like(mean), images.var(axis=-1, ddof=1) / n
    resid = y - seeds[..., :, None] - images[..., None, :] + mean[..., None, None]
    ms_resid = (resid**2).sum(axis=(-2, -1)) / ((s - 1) * (n - 1))
    image_part = images.var(axis=-1, ddof=1) / n - ms_resid / (s * n)
    return mean, seeds.var(axis=-1, ddof=1) / s, np.maximum(image_part, 0)


def _quantile(level: np.ndarray | float, seed_part, image_part, s: int, n: int) -> np.ndarray:
    """Cochran & Cox's critical value for a sum of variance estimates: the t quantiles of the
    two parts (S - 1 and N - 1 degrees of freedom) weighted by the parts; the interval is
    mean ± this · √(sum of parts). Conservative where the parts are alike, exact where one
    dominates; the normal quantile where both are 0."""
    q = 0.5 + np.asarray(level) / 2
    total = seed_part + image_part
    with np.errstate(divide="ignore", invalid="ignore"):
        mixed = (stats.t.ppf(q, s - 1) * seed_part + stats.t.ppf(q, n - 1) * image_part) / total
    return np.where(total > 0, mixed, stats.norm.ppf(q))


def _t_p_value(est, seed_part, image_part, s: int, n: int) -> np.ndarray:
    """The two-sided p-value that inverts the interval: the smallest 1 - level at which it
    excludes 0, by bisection on log10(alpha) in [-15, 0] (so never below 1e-15, never 0)."""
    se = np.sqrt(seed_part + image_part)
    lo, hi = np.full(np.shape(est), -15.0), np.zeros(np.shape(est))
    for _ in range(50):
        mid = (lo + hi) / 2
        excludes = np.abs(est) > _quantile(1 - 10**mid, seed_part, image_part, s, n) * se
        lo, hi = np.where(excludes, lo, mid), np.where(excludes, mid, hi)
    return np.where(np.abs(est) > 0, 10**hi, 1.0)


def interval_from_parts(est, seed_part, image_part, s: int, n: int, level: float = LEVEL):
    """(low, high, p_value) of a statistic whose variance has a seed part (S − 1 degrees of
    freedom) and an image part (N − 1), as `accuracy_interval`'s "t" method builds them; for
    statistics other than a mean (a front's hypervolume), whose parts the caller estimates."""
    est, seed_part, image_part = (np.asarray(v, dtype=float) for v in (est, seed_part, image_part))
    if s < 2:  # one seed: the images alone
        seed_part, s = np.zeros_like(seed_part), n
    half = _quantile(level, seed_part, image_part, s, n) * np.sqrt(seed_part + image_part)
    p = _t_p_value(est, seed_part, image_part, s, n)
    return _scalar(est - half, est + half, p)


def _wilson(p: np.ndarray, n: np.ndarray | float, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson's (1927) score interval for a proportion p of n trials (n may be fractional)."""
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    low, high = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
    return np.where(p == 0, 0.0, low), np.where(p == 1, 1.0, high)  # exact at 0 of n, n of n


def _counts(index: np.ndarray, k: int) -> np.ndarray:
    """How often each of 0..k-1 occurs in each row of an index matrix (one bincount)."""
    rows = len(index)
    flat = (index + k * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * k).reshape(rows, k).astype(float)


def bootstrap_means(y: ArrayLike, n_boot: int = N_BOOT, seed: Seed = 0) -> np.ndarray:
    """The two-level bootstrap distribution of the mean of a (..., seeds, images) array, shape
    (..., n_boot): seeds resampled with replacement and, independently, images with replacement,
    one image resample shared by all seeds (they were scored on the same images). Vectorised as
    multiplicities: mean* = w_seeds' · Y · w_images / (S·N). A batch shares the draws."""
    y = _outcomes(y)
    s, n = y.shape[-2:]
    rng = np.random.default_rng(seed)
    seeds = _counts(rng.integers(0, s, (n_boot, s)), s)  # (B, S)
    images = _counts(rng.integers(0, n, (n_boot, n)), n)  # (B, N)
    per_seed = y @ images.T  # (..., S, B): each seed's correct count on each image resample
    return np.einsum("...sb,bs->...b", per_seed, seeds) / (s * n)


def _check(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def accuracy_interval(
    outcomes: ArrayLike,
    level: float = LEVEL,
    *,
    method: str = "t",
    n_boot: int = N_BOOT,
    seed: Seed = 0,
):
    """(estimate, low, high) of the accuracy, an interval over seeds and test images.

    `outcomes`: (seeds, images) 0/1, row j the trial at seed j, column i the same image for all
    (or a stack (..., seeds, images)). One seed: Wilson's interval on the images (scipy's
    `binomtest(k, n).proportion_ci(method="wilson")`). Several: the interval of `method`
    (module docstring), widened where needed to the Wilson interval at the effective number of
    images, so it respects [0, 1] and is never of zero width: 0 of 10 images at every seed is
    0.0 [0.0, 0.278], the Wilson interval of 0/10.
    """
    _check(method)
    y = _outcomes(outcomes)
    s, n = y.shape[-2:]
    z = stats.norm.ppf(0.5 + level / 2)
    mean, seed_part, image_part = _parts(y)
    if s == 1:
        return _scalar(mean, *_wilson(mean, n, z))
    var = seed_part + image_part
    with np.errstate(divide="ignore", invalid="ignore"):  # no variance: the N images count
        n_eff = np.where(var > 0, np.minimum(mean * (1 - mean) / var, s * n), n)
    low, high = _wilson(mean, np.maximum(n_eff, 1e-9), z)
    if method == "t":
        half = _quantile(level, seed_part, image_part, s, n) * np.sqrt(var)
        low, high = np.minimum(low, mean - half), np.maximum(high, mean + half)
    else:
        boot = bootstrap_means(y, n_boot, seed)
        b_low, b_high = np.quantile(boot, [0.5 - level / 2, 0.5 + level / 2], axis=-1)
        low, high = np.minimum(low, b_low), np.maximum(high, b_high)
    low, high = np.clip(low, 0, 1), np.clip(high, 0, 1)
    return _scalar(mean, low, high)


def _images_only(a: np.ndarray, b: np.ndarray, z: float):
    """Newcombe's (1998, method 10) hybrid score interval for a paired difference of
    proportions, on the per-image accuracies (a seed average where there are several), with
    their correlation as φ (0 where undefined), and McNemar's mid-p test on the images where the
    two arms differ. For one seed, or a difference that does not vary at any level."""
    ca, cb = a.mean(axis=-2), b.mean(axis=-2)
    n = ca.shape[-1]
    p1, p2 = ca.mean(axis=-1), cb.mean(axis=-1)
    (l1, u1), (l2, u2) = _wilson(p1, n, z), _wilson(p2, n, z)
    da, db = ca - p1[..., None], cb - p2[..., None]
    norm = np.sqrt((da**2).sum(axis=-1) * (db**2).sum(axis=-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = np.where(norm > 0, (da * db).sum(axis=-1) / norm, 0.0)
    d = p1 - p2
    low = d - np.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    high = d + np.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    up, down = (ca > cb).sum(axis=-1), (ca < cb).sum(axis=-1)
    k, m = np.minimum(up, down), up + down
    p = 2 * stats.binom.cdf(k, m, 0.5) - stats.binom.pmf(k, m, 0.5)  # 1 when m = 0
    return low, high, np.clip(p, 0, 1)


def difference_interval(
    a: ArrayLike,
    b: ArrayLike,
    level: float = LEVEL,
    *,
    method: str = "t",
    n_boot: int = N_BOOT,
    seed: Seed = 0,
):
    """(estimate, low, high, p_value) of mean(a) − mean(b), paired by seed and by image.

    `a`, `b`: (seeds, images) 0/1 for two configurations, row j of both trained with seed j,
    column i the same image. Pairing cancels what the two share (an image's difficulty), and the
    interval of the per-cell differences covers seeds and images as `accuracy_interval` does.
    p_value: two-sided, for "no difference". "t": the smallest 1 − level at which the interval
    excludes 0 (so p < 0.05 exactly when the 95% interval excludes 0; never below 1e-15).
    "percentile": 2·min(1 + #{d* ≤ 0}, 1 + #{d* ≥ 0}) / (n_boot + 1) over the bootstrap draws
    d*, capped at 1, never 0 (Davison & Hinkley 1997, ch. 4). One seed, or a difference whose
    mean shows no variance at all (identical arms; 0 of 10 in both): Newcombe's
    interval and McNemar's mid-p over the images (`_images_only`).
    """
    _check(method)
    a, b = _outcomes(a), _outcomes(b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must be paired (same shape), got {a.shape} and {b.shape}")
    s = a.shape[-2]
    z = stats.norm.ppf(0.5 + level / 2)
    d = a - b
    est, seed_part, image_part = _parts(d)
    i_low, i_high, i_p = _images_only(a, b, z)
    if s == 1:
        return _scalar(est, i_low, i_high, i_p)
    varies = seed_part + image_part > 0
    if method == "t":
        half = _quantile(level, seed_part, image_part, s, a.shape[-1])
        half = half * np.sqrt(seed_part + image_part)
        low, high = est - half, est + half
        p = _t_p_value(est, seed_part, image_part, s, a.shape[-1])
    else:
        boot = bootstrap_means(d, n_boot, seed)
        low, high = np.quantile(boot, [0.5 - level / 2, 0.5 + level / 2], axis=-1)
        tail = np.minimum((boot <= 0).sum(axis=-1), (boot >= 0).sum(axis=-1))
        p = np.minimum(1, 2 * (1 + tail) / (n_boot + 1))
    low, high = np.where(varies, low, i_low), np.where(varies, high, i_high)
    p = np.where(varies, p, i_p)
    return _scalar(est, low, high, p)


def holm(p_values: ArrayLike) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values, in the order given: the k-th smallest of m is
    multiplied by m − k + 1, then made non-decreasing and capped at 1 (as statsmodels'
    `multipletests(method="holm")`). Controls the chance of any false "better" or "worse" among
    the m comparisons at alpha, where each 95% interval alone controls only its own. NaN stays
    NaN and is not counted in m."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    order = np.argsort(p[ok], kind="stable")
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(1, np.maximum.accumulate((m - np.arange(m)) * p[ok][order]))
    out[ok] = adjusted
    return out


def verdict(differences: Mapping[str, Sequence[float]], alpha: float = 0.05) -> str:
    """A short verdict from {label: (estimate, low, high, p_adjusted)}: the labels whose
    difference survives Holm at `alpha` (p_adjusted < alpha) and whose interval excludes 0,
    with ↑ (a gain) or ↓ (a loss), e.g. "robust ↑ at 8/255, clean ↓"; `{}` in a label marks
    where the arrow goes ("robust {} at 8/255"), else it follows the label. Otherwise
    "no difference beyond the intervals" (which is not evidence that they are equal)."""
    parts = []
    for label, (est, low, high, p) in differences.items():
        if p < alpha and (low > 0 or high < 0):  # False for NaN
            arrow = "↑" if est > 0 else "↓"
            parts.append(label.replace("{}", arrow) if "{}" in label else f"{label} {arrow}")
    return ", ".join(parts) or NO_DIFFERENCE


def _non_dominated(points: np.ndarray) -> np.ndarray:
    """(draws, configs, objectives), larger is better -> (draws, configs): True where no other
    configuration of the same draw is at least as good everywhere and better somewhere (ties
    are all kept, as `analysis.pareto.pareto_mask`); a NaN point is never on the front."""
    p, o = points[:, None, :, :], points[:, :, None, :]  # [draw, other, config, objective]
    dominated = ((o >= p).all(axis=-1) & (o > p).any(axis=-1)).any(axis=1)
    return ~dominated & ~np.isnan(points).any(axis=-1)


def p_front(
    values_by_config: Mapping[str, ArrayLike],
    maximise: Sequence[bool] | bool,
    n_boot: int = N_BOOT,
    seed: Seed = 0,
    min_replicates: int = MIN_FRONT_REPLICATES,
) -> dict[str, float]:
    """Per configuration: the share of bootstrap resamples of the seeds in which its means are
    non-dominated.

    `values_by_config`: {config: (replicates, objectives)}, row j of every configuration the
    trial at seed j (a NaN row for a replicate that failed). The configurations share their
    seeds, so a resample draws one set of seed indices for all of them (jointly), which keeps
    whatever a seed does to every configuration alike; resampling each configuration on its own
    would treat shared seeds as independent. With fewer than `min_replicates` seeds (5) a
    resample has too few distinct outcomes (3 for 2 seeds, 10 for 3) for a share to mean
    anything: every configuration gets NaN and the caller says why.
    """
    ids = list(values_by_config)
    arrays = [np.asarray(values_by_config[c], dtype=float) for c in ids]
    arrays = [v.reshape(len(v), -1) for v in arrays]
    if len({v.shape for v in arrays}) > 1:
        raise ValueError("every configuration needs the same seeds: one row each (NaN if failed)")
    if not ids or len(arrays[0]) < min_replicates:
        return {c: float("nan") for c in ids}
    values = np.stack(arrays)  # (C, R, K)
    sign = np.where(np.broadcast_to(maximise, values.shape[-1:]), 1.0, -1.0)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, values.shape[1], (n_boot, values.shape[1]))  # shared by all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample of only failed rows: NaN
        means = np.nanmean(values[:, index, :], axis=2)  # (C, B, K)
    shares = _non_dominated(np.moveaxis(means, 0, 1) * sign).mean(axis=0)
    return dict(zip(ids, shares.tolist(), strict=True))
