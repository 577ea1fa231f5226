"""The MO-ASHA rule: which configuration a rung stops, as pure functions (NumPy and moocore,
no Ray).

At each rung, a configuration that has just reached it is ranked with every configuration
recorded at that rung before it by successive non-dominated fronts, each front ordered by an
epsilon-net (spread, Salinas et al. 2021), and stopped if its place falls outside the top
1/eta (`promote`). Rungs are refinement rounds (`rung_rounds`). study/scheduler.py applies the
rule to Ray Tune trials.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import moocore
import numpy as np

_TIE_TOL = 1e-12  # distances this close count as equal in the epsilon-net (then: earliest)


def _as_points(points: Any) -> np.ndarray:
    arr = np.asarray(points, dtype=float)
    if arr.ndim == 1:
        arr = arr.reshape(len(arr), -1) if len(arr) else arr.reshape(0, 1)
    if arr.ndim != 2:
        raise ValueError(f"points must be a (n, m) array of objective values, got {arr.shape}")
    return arr


def _to_loss(points: np.ndarray, maximise: Sequence[bool] | bool | None) -> np.ndarray:
    """The points with every objective turned into one to minimise (maximised ones negated)."""
    if maximise is None:
        return points.copy()
    flags = np.broadcast_to(np.asarray(maximise, dtype=bool), (points.shape[1],))
    return np.where(flags, -points, points)


def _finite_rows(points: np.ndarray) -> np.ndarray:
    return np.isfinite(points).all(axis=1)


def nondominated_ranks(points: Any, maximise: Sequence[bool] | bool) -> list[int]:
    """Successive non-dominated fronts: 0 for the points no other point dominates, 1 for those
    only front 0 dominates, and so on (moocore's `pareto_rank`, Deb et al.'s sorting).

    Equal points get the same rank. A point with a NaN or infinite value (a diverged or
    missing metric) is worse than any finite one: such points form one last front together.
    """
    pts = _to_loss(_as_points(points), maximise)
    ranks = np.zeros(len(pts), dtype=int)
    finite = _finite_rows(pts)
    if finite.any():
        # Rank the distinct points only: equal points share a rank anyway, and moocore 0.3.1
        # crashed on duplicates with more than three objectives (multi-objective/moocore#74).
        # Always minimise: moocore 0.3.2 negates a single objective when `maximise` is any
        # non-empty list, [False] included (`if maximise:` in its one-objective branch).
        unique, inverse = np.unique(pts[finite], axis=0, return_inverse=True)
        unique_ranks = moocore.pareto_rank(unique, maximise=False)
        ranks[finite] = np.asarray(unique_ranks)[np.ravel(inverse)]
    if (~finite).any():
        ranks[~finite] = ranks[finite].max() + 1 if finite.any() else 0
    return ranks.tolist()


def epsilon_net_order(points: Any, maximise: Sequence[bool] | bool | None = None) -> list[int]:
    """Order points so that each next one is spread from those before it (an epsilon-net,
    Clarkson 2005, as Syne Tune's `compute_epsilon_net` orders a front).

    - Direction: `maximise` as in `nondominated_ranks`; None means every objective is to be
      minimised (Syne Tune's convention).
    - Normalisation: each objective is scaled by its range over the given points,
      (x - min) / (max - min), so that accuracy and, say, seconds count alike; an objective
      on which all points agree is left out of the distances. Distances are Euclidean.
    - First pick: the best point on the first objective (Syne Tune's default `dim=0`), ties
      broken by the second objective, then the third, ..., then the earliest index.
    - Then repeatedly the point whose distance to the nearest point already picked is the
      largest; ties (within 1e-12) go to the earliest index.
    - Equal points: only the first of them takes part; each copy is placed right after it.
    - Points with a NaN or infinite value come last, in index order.
    """
    pts = _as_points(points)
    n = len(pts)
    if n == 0:
        return []
    loss = _to_loss(pts, maximise)
    finite = [i for i in range(n) if np.isfinite(loss[i]).all()]
    rest = sorted(set(range(n)) - set(finite))
    if not finite:
        return rest
    # Distinct points (first occurrence, in index order) and the copies of each.
    reps: list[int] = []
    copies: dict[int, list[int]] = {}
    for i in finite:
        for r in reps:
            if np.array_equal(loss[i], loss[r]):
                copies[r].append(i)
                break
        else:
            reps.append(i)
            copies[i] = []
    x = loss[reps]
    lo, hi = x.min(axis=0), x.max(axis=0)
    span = hi - lo
    z = np.divide(x - lo, span, out=np.zeros_like(x), where=span > 0)
    # First pick: lexicographic minimum of the loss over the objectives, then the index.
    first = min(range(len(reps)), key=lambda j: (*x[j].tolist(), j))
    picked = [first]
    nearest = np.linalg.norm(z - z[first], axis=1)
    remaining = [j for j in range(len(reps)) if j != first]
    while remaining:
        best = max(nearest[j] for j in remaining)
        choice = next(j for j in remaining if nearest[j] >= best - _TIE_TOL)
        picked.append(choice)
        remaining.remove(choice)
        nearest = np.minimum(nearest, np.linalg.norm(z - z[choice], axis=1))
    order: list[int] = []
    for j in picked:
        order.append(reps[j])
        order.extend(copies[reps[j]])
    return order + rest


def priority_order(points: Any, maximise: Sequence[bool] | bool) -> list[int]:
    """All points, best first: front 0 (`nondominated_ranks`), then front 1, ..., each front
    in its own `epsilon_net_order` (normalised over that front's points)."""
    pts = _as_points(points)
    ranks = np.asarray(nondominated_ranks(pts, maximise), dtype=int)
    order: list[int] = []
    for front in sorted(set(ranks.tolist())):
        idx = np.flatnonzero(ranks == front)
        order.extend(int(idx[k]) for k in epsilon_net_order(pts[idx], maximise))
    return order


def _same_point(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(a, b, equal_nan=True))


def candidate_place(
    rung_points: Mapping[str, Sequence[float]], candidate: str, maximise: Sequence[bool] | bool
) -> int:
    """The candidate's 0-based place in `priority_order` of the rung's points; a point equal
    to one placed before it shares that place (equal results are equally good)."""
    ids = list(rung_points)
    if candidate not in rung_points:
        raise KeyError(f"candidate {candidate!r} is not among the rung's points")
    pts = _as_points([list(rung_points[i]) for i in ids])
    place = {idx: p for p, idx in enumerate(priority_order(pts, maximise))}
    c = ids.index(candidate)
    return min(place[j] for j in range(len(ids)) if _same_point(pts[j], pts[c]))


def promote(
    rung_points: Mapping[str, Sequence[float]],
    candidate: str,
    reduction_factor: float,
    maximise: Sequence[bool] | bool,
) -> bool:
    """Does `candidate` go on from this rung? `rung_points`: every configuration recorded at
    the rung so far, the candidate included (in the order they reached it: earlier ones win
    exact ties in the epsilon-net), as objective vectors.

    With n points and the candidate at 0-based place p (`candidate_place`), it goes on iff
    p / n <= 1 / eta, i.e. p * eta <= n: the best floor(n / eta) + 1 places go on, so the first
    configuration at a rung always does, and an exact copy of a promoted point is promoted too.

    This is Syne Tune's rule (syne-tune@d9970f2, `syne_tune/optimizer/schedulers/asha.py`,
    `Bracket.on_result`, lines 253-267: `ranks = np.searchsorted(sorted(priorities),
    priorities) / len(priorities)`, STOP iff `ranks[-1] > 1 / self.rf`; an empty rung
    CONTINUEs, lines 247-249), with `NonDominatedPriority(dim=0)`'s order
    (`multiobjective/non_dominated_priority.py`, `nondominated_sort` and
    `compute_epsilon_net`, lines 37-147). Three differences, all deliberate:
    - Syne Tune's `nondominated_sort` returns the sorted *indices* and `NonDominatedPriority`
      uses them as each point's *priority*. Those agree when all points are on one front, not
      otherwise (points [[3, 3], [1, 1], [2, 2]] to minimise get priorities [1, 2, 0]: the
      middle point first). Here each point's priority is its place in the order.
    - Objectives are normalised by their range before the epsilon-net (Syne Tune uses raw
      values), and the first pick's ties are broken by the later objectives.
    - Exact copies share a place (Syne Tune's epsilon-net puts a copy last in its front).
    """
    if not reduction_factor > 1:
        raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
    place = candidate_place(rung_points, candidate, maximise)
    return place * reduction_factor <= len(rung_points)


def rung_rounds(max_rounds: int, grace_rounds: int = 1, reduction_factor: float = 3) -> list[int]:
    """The rounds at which configurations are compared: ceil(grace * eta**k) < max_rounds (a
    trial at its last round has nothing left to save)."""
    rungs: list[int] = []
    k = 0
    while True:
        r = math.ceil(grace_rounds * reduction_factor**k - 1e-9)
        if r >= max_rounds:
            return rungs
        if not rungs or r > rungs[-1]:
            rungs.append(r)
        k += 1
