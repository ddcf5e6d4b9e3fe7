"""LinPro pseudo labels (GauFuse §3.2): per class, min ||g||_1 s.t. W g = q, g >= 0, then class averaging.

For the fused instances ``j`` of one class (snippet units, end exclusive, float boundaries allowed) the
weighting row ``W_j`` is +1 on the instance's inner snippets, -1 on its outer snippets and 0 elsewhere.
The pseudo label ``g`` of the class solves

    min sum_t g_t   s.t.   W g = q,   0 <= g_t (<= upper_bound)

and is then averaged over *equivalent* snippets (snippets whose columns of ``W`` are equal), the paper's
uniformity step.

Equivalence-class reduction (what :func:`solve_class` solves). The breakpoints of all inner/outer
ranges cut ``[0, T)`` into at most ``4n+1`` pieces; pieces with the same column signature form a class
``k`` of ``n_k`` snippets with signature ``sigma_k``. With the class mass ``x_k = n_k v_k`` the reduced LP is

    min sum_k x_k   s.t.   sum_k sigma_kj x_k = q_j,   0 <= x_k (<= n_k * upper_bound)

and ``g_t = x_k / n_k`` for every snippet ``t`` of class ``k``. It is exactly "dense LP, then average":

* Let ``P`` average a vector within classes. For any dense-feasible ``g``, ``W P g = W g`` (every row is
  constant on a class, so a class contributes ``sigma_kj * (class sum)`` before and after), the bounds hold
  (an average of values in ``[0, u]`` is in ``[0, u]``) and ``sum P g = sum g``. So ``P`` maps dense optima
  to class-uniform dense optima.
* Class-uniform vectors are exactly the reduced vectors ``v``, with the same constraints and objective.
  Hence both problems have the same optimal value and {``P g``: ``g`` dense-optimal} equals the set of
  reduced optima. Classes with signature 0 occur only in the objective and are 0 at every optimum.

Solver status is always checked. If the LP is infeasible or the solver fails, the deterministic fallback
(``fallback="relax"``, the default) solves the least-violation problem lexicographically: first the
smallest L1 violation ``min sum_j |W_j g - q_j|`` over ``0 <= g <= upper_bound`` (always feasible), then
the smallest ``||g||_1`` among those violation-minimal labels. Both phases use the same class reduction, so
the result stays class-uniform. If that also fails, or with ``fallback="zeros"``, the class gets zeros
(which is what the reference's interior-point presolve returned for infeasible problems). Every outcome is
counted in :class:`LinProStats` and fallbacks are logged; labels are never NaN and always lie in bounds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from scipy.optimize import linprog

from wtal.errors import WtalInputError
from wtal.parallel import available_cores, map_chunks

logger = logging.getLogger(__name__)

MarginFn = Callable[[np.ndarray], np.ndarray]

#: margin of GauFuse's code: 0.0785 * length^0.9
POWER_MARGIN_SCALE = 0.0785
POWER_MARGIN_EXPONENT = 0.9

#: videos below this count are solved serially by default: a process pool costs more than it saves
#: (pool start ~25 ms; break-even near 20-30 videos on 2 cores, see benchmarks/bench_linpro.py).
MIN_VIDEOS_FOR_POOL = 32

# Slack added to the optimal violation when phase 2 of the relaxed fallback constrains it, so that
# solver round-off cannot make phase 2 infeasible.
_VIOLATION_SLACK = 1e-9
# Scores this close to 0 count as satisfied when no variable is left (HiGHS' feasibility tolerance).
_FEASIBILITY_TOL = 1e-7


@dataclass
class LinProConfig:
    """How the weighting rows are built and how the LP is bounded.

    variant: ``"paper"`` (float boundaries; snippet ``i`` covers ``[i, i+1)`` and lies in a range
        ``[x, y)`` when its centre ``i + 0.5`` does; inner ``[s, e)``, outer ``[s - m, s)`` and
        ``[e, e + m)`` with ``m = margin(e - s)``, clipped to the video; an instance too short to hold a
        centre keeps the snippet holding its midpoint) or ``"reference"`` (GauFuse code:
        ``a=int(s)``, ``b=int(e)``, ``m = margin(b - a)``, left outer ``[max(0, int(a-m)), a)``,
        right outer ``[b, min(T-1, int(b+m+1)))``).
    margin: outer margin as a function of the instance length: ``"alpha"`` (``alpha * len``),
        ``"power"`` (``0.0785 * len**0.9``), a callable on an array of lengths, or None for the variant's
        default (``"alpha"`` for paper, ``"power"`` for reference).
    alpha: the factor of the ``"alpha"`` margin.
    upper_bound: per-snippet upper bound of the label (GauFuse code: 1.0; the paper has none: None).
    fallback: ``"relax"`` (least-violation LP, see the module docstring) or ``"zeros"``.
    """

    variant: str = "paper"
    margin: str | MarginFn | None = None
    alpha: float = 0.25
    upper_bound: float | None = 1.0
    fallback: str = "relax"

    def __post_init__(self) -> None:
        if self.variant not in ("paper", "reference"):
            raise WtalInputError(f"unknown LinPro variant {self.variant!r}", fix="use 'paper' or 'reference'")
        if not (self.margin is None or callable(self.margin) or self.margin in ("alpha", "power")):
            raise WtalInputError(f"unknown LinPro margin {self.margin!r}",
                                 fix="use 'alpha', 'power', a callable of the lengths, or None")
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise WtalInputError(f"LinPro alpha must be finite and >= 0, got {self.alpha}")
        if self.upper_bound is not None and not (math.isfinite(self.upper_bound) and self.upper_bound > 0):
            raise WtalInputError(f"LinPro upper_bound must be > 0 or None, got {self.upper_bound}")
        if self.fallback not in ("relax", "zeros"):
            raise WtalInputError(f"unknown LinPro fallback {self.fallback!r}", fix="use 'relax' or 'zeros'")

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> LinProConfig:
        """``"paper"``: paper variant, alpha margin 0.25; ``"reference"``: GauFuse code (power margin)."""
        if preset == "paper":
            base: dict[str, Any] = {"variant": "paper", "margin": "alpha", "alpha": 0.25, "upper_bound": 1.0}
        elif preset == "reference":
            base = {"variant": "reference", "margin": "power", "upper_bound": 1.0}
        else:
            raise WtalInputError(f"unknown LinPro preset {preset!r}", fix="use 'paper' or 'reference'")
        base.update(overrides)
        return cls(**base)

    @property
    def snippet_bound(self) -> float:
        """``upper_bound`` as a number (``inf`` when there is none)."""
        return math.inf if self.upper_bound is None else float(self.upper_bound)

    def margin_of(self, length: np.ndarray) -> np.ndarray:
        """Outer margin (snippets) for instance lengths ``length`` (float64 array)."""
        margin = self.margin
        if margin is None:
            margin = "alpha" if self.variant == "paper" else "power"
        if margin == "alpha":
            return self.alpha * length
        if margin == "power":
            return POWER_MARGIN_SCALE * np.power(np.maximum(length, 0.0), POWER_MARGIN_EXPONENT)
        out = np.asarray(margin(length), dtype=np.float64)
        if out.shape != length.shape or not np.all(np.isfinite(out)) or np.any(out < 0):
            raise WtalInputError("the LinPro margin callable must return finite values >= 0, one per length")
        return out


@dataclass
class LinProStats:
    """Outcome counts of the per-class LPs: solved exactly, relaxed fallback, or zeroed."""

    solved: int = 0
    relaxed: int = 0
    failed: int = 0

    def merge(self, other: LinProStats) -> LinProStats:
        """Add ``other``'s counts to this object (in place) and return it."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    @property
    def total(self) -> int:
        return self.solved + self.relaxed + self.failed

    def __str__(self) -> str:
        return (f"LinPro: {self.solved} solved, {self.relaxed} relaxed (infeasible), "
                f"{self.failed} zeroed (failed)")


# ----------------------------------------------------------------------------------------------------
# weighting rows as integer ranges


@dataclass(frozen=True)
class _Ranges:
    """Per instance: inner ``[lo, hi)``, left outer ``[left, lo)``, right outer ``[hi, right)``, in [0, T]."""

    left: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    right: np.ndarray


def _check_instances(T: int, start: Any, end: Any, score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if int(T) != T or T < 1:
        raise WtalInputError(f"the video length must be a positive number of snippets, got T={T}")
    s = np.asarray(start, dtype=np.float64).reshape(-1)
    e = np.asarray(end, dtype=np.float64).reshape(-1)
    q = np.asarray(score, dtype=np.float64).reshape(-1)
    if not (s.shape == e.shape == q.shape):
        raise WtalInputError(
            f"start, end and score must have the same length, got {s.size}, {e.size}, {q.size}")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(e)) and np.all(np.isfinite(q))):
        raise WtalInputError("instance boundaries and scores must be finite (found NaN or inf)",
                             fix="check the CAS / fused instances for NaN")
    if np.any(e < s):
        raise WtalInputError("every instance needs end >= start (snippet units, end exclusive)")
    return s, e, q


def _ranges(T: int, s: np.ndarray, e: np.ndarray, cfg: LinProConfig) -> _Ranges:
    if cfg.variant == "reference":
        # GauFuse utils.py:188-205, int() truncates toward zero (boundaries are >= 0 here).
        a = np.trunc(s)
        b = np.trunc(e)
        m = cfg.margin_of(b - a)
        left = np.maximum(0.0, np.trunc(a - m))
        right = np.minimum(T - 1.0, np.trunc(b + m + 1.0))
    else:
        # Snippet i covers [i, i+1); it belongs to a range [x, y) when its centre i + 0.5 does, i.e.
        # ceil(x - 0.5) <= i < ceil(y - 0.5). Integer boundaries map to themselves.
        a = np.ceil(s - 0.5)
        b = np.ceil(e - 0.5)
        # An instance shorter than the rule resolves keeps the snippet holding its midpoint, so that
        # every instance constrains at least one snippet.
        short = b <= a
        mid = np.clip(np.floor(0.5 * (s + e)), 0.0, T - 1.0)
        a = np.where(short, mid, a)
        b = np.where(short, mid + 1.0, b)
        m = cfg.margin_of(e - s)
        left = np.ceil(s - m - 0.5)
        right = np.ceil(e + m - 0.5)
    # Clip to the video; clipping is monotone, so the three ranges stay ordered and disjoint.
    lo = np.clip(a, 0, T).astype(np.int64)
    hi = np.clip(b, 0, T).astype(np.int64)
    left = np.minimum(np.clip(left, 0, T).astype(np.int64), lo)
    right = np.maximum(np.clip(right, 0, T).astype(np.int64), hi)
    return _Ranges(left=left, lo=lo, hi=hi, right=right)


def _signs_at(positions: np.ndarray, r: _Ranges) -> np.ndarray:
    """Sign of every instance (columns) at every snippet position (rows): +1 inner, -1 outer, 0 else."""
    p = positions[:, None]
    inner = (r.lo <= p) & (p < r.hi)
    outer = ((r.left <= p) & (p < r.lo)) | ((r.hi <= p) & (p < r.right))
    return inner.astype(np.int8) - outer.astype(np.int8)


def constraint_matrix(T: int, start: Any, end: Any, cfg: LinProConfig | None = None) -> np.ndarray:
    """The dense weighting matrix ``W`` (n, T) int8 in {-1, 0, +1} of the instances (for checks)."""
    cfg = cfg or LinProConfig()
    s, e, _ = _check_instances(T, start, end, np.zeros(np.size(start)))
    return _signs_at(np.arange(T), _ranges(T, s, e, cfg)).T.copy()


# ----------------------------------------------------------------------------------------------------
# LP with status check and deterministic fallback


def _linprog(c: np.ndarray, A_eq: np.ndarray, b_eq: np.ndarray, bounds: np.ndarray,
             A_ub: np.ndarray | None = None, b_ub: np.ndarray | None = None) -> np.ndarray | None:
    """HiGHS; returns x only for an optimal, finite solution, else None."""
    try:
        res = linprog(c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=bounds, method="highs")
    except (ValueError, RuntimeError) as err:  # scipy raises on numerically broken input
        logger.debug("linprog raised %s", err)
        return None
    if res.status != 0 or res.x is None or not np.all(np.isfinite(res.x)):
        logger.debug("linprog status %s: %s", res.status, res.message)
        return None
    return res.x


def _relaxed(A: np.ndarray, q: np.ndarray, upper: np.ndarray) -> np.ndarray | None:
    """Least-violation masses: min ||A x - q||_1, then min sum x among those, 0 <= x <= upper."""
    n, K = A.shape
    eye = np.eye(n)
    # variables [x (K), over (n), under (n)]: A x - over + under = q
    A_eq = np.hstack([A, -eye, eye])
    bounds = np.vstack([np.column_stack([np.zeros(K), upper]),
                        np.column_stack([np.zeros(2 * n), np.full(2 * n, np.inf)])])
    violation_cost = np.concatenate([np.zeros(K), np.ones(2 * n)])
    first = _linprog(violation_cost, A_eq, q, bounds)
    if first is None:
        return None
    best_violation = float(violation_cost @ first)
    limit = best_violation * (1 + _VIOLATION_SLACK) + _VIOLATION_SLACK
    mass_cost = np.concatenate([np.ones(K), np.zeros(2 * n)])
    second = _linprog(mass_cost, A_eq, q, bounds, A_ub=violation_cost[None, :], b_ub=np.array([limit]))
    # Phase 1 is itself a valid (violation-minimal) answer if phase 2 stumbles on round-off.
    return (first if second is None else second)[:K]


def _solve_masses(A: np.ndarray, q: np.ndarray, upper: np.ndarray, cfg: LinProConfig,
                  stats: LinProStats) -> np.ndarray:
    """min sum x s.t. A x = q, 0 <= x <= upper, with the fallback; always finite and in bounds."""
    if A.shape[1] == 0:  # no snippet is constrained (empty ranges): 0 is the only and least-violation label
        if np.all(np.abs(q) <= _FEASIBILITY_TOL):
            stats.solved += 1
        elif cfg.fallback == "relax":
            stats.relaxed += 1
            logger.warning("LinPro: %d instances cover no snippet but have nonzero scores; labels 0", len(q))
        else:
            stats.failed += 1
            logger.warning("LinPro: %d instances cover no snippet but have nonzero scores; labels 0", len(q))
        return np.zeros(0)
    x = _linprog(np.ones(A.shape[1]), A, q, np.column_stack([np.zeros(A.shape[1]), upper]))
    if x is not None:
        stats.solved += 1
    else:
        x = _relaxed(A, q, upper) if cfg.fallback == "relax" else None
        if x is not None:
            stats.relaxed += 1
            logger.warning("LinPro: infeasible or failed LP (%d instances); used the least-violation labels",
                           len(q))
        else:
            stats.failed += 1
            logger.warning("LinPro: LP failed (%d instances); the class gets zero labels", len(q))
            x = np.zeros(A.shape[1])
    return np.clip(x, 0.0, upper)


# ----------------------------------------------------------------------------------------------------
# per class


def _equivalence_classes(T: int, r: _Ranges) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elementary pieces of [0, T) grouped by signature.

    Returns ``(signature (K, n) int8, class_of_piece (R,), piece_length (R,))``.
    """
    cuts = np.unique(np.concatenate([[0, T], r.left, r.lo, r.hi, r.right]))
    piece_start, piece_length = cuts[:-1], np.diff(cuts)
    signature, class_of_piece = np.unique(_signs_at(piece_start, r), axis=0, return_inverse=True)
    return signature, class_of_piece.reshape(-1), piece_length


def _class_inputs(T: int, start: Any, end: Any, score: Any, cfg: LinProConfig | None,
                  stats: LinProStats | None) -> tuple[LinProConfig, LinProStats, tuple[np.ndarray, ...]]:
    """The defaults for ``cfg`` and ``stats``, and the checked instances ``(s, e, q)`` of one class."""
    cfg = cfg or LinProConfig()
    stats = stats if stats is not None else LinProStats()
    return cfg, stats, _check_instances(T, start, end, score)


def solve_class(T: int, start: Any, end: Any, score: Any, cfg: LinProConfig | None = None,
                stats: LinProStats | None = None) -> np.ndarray:
    """LinPro label (T,) float64 of one class via the equivalence-class reduced LP (see module docstring)."""
    cfg, stats, (s, e, q) = _class_inputs(T, start, end, score, cfg, stats)
    if s.size == 0:
        return np.zeros(T)
    signature, class_of_piece, piece_length = _equivalence_classes(T, _ranges(T, s, e, cfg))
    size = np.bincount(class_of_piece, weights=piece_length, minlength=len(signature))
    active = np.any(signature != 0, axis=1)  # signature-0 classes are 0 at every optimum
    ub = cfg.snippet_bound
    mass = np.zeros(len(signature))
    mass[active] = _solve_masses(signature[active].T.astype(np.float64), q, size[active] * ub, cfg, stats)
    value = mass / size
    return np.repeat(value[class_of_piece], piece_length)


def solve_class_dense(T: int, start: Any, end: Any, score: Any, cfg: LinProConfig | None = None,
                      stats: LinProStats | None = None) -> np.ndarray:
    """Reference approach: the LP over all T snippets (HiGHS), then averaging within equivalent snippets."""
    cfg, stats, (s, e, q) = _class_inputs(T, start, end, score, cfg, stats)
    if s.size == 0:
        return np.zeros(T)
    W = _signs_at(np.arange(T), _ranges(T, s, e, cfg)).T.astype(np.float64)
    ub = cfg.snippet_bound
    g = _solve_masses(W, q, np.full(T, ub), cfg, stats)
    _, snippet_class = np.unique(W.T, axis=0, return_inverse=True)
    snippet_class = snippet_class.reshape(-1)
    mean = np.bincount(snippet_class, weights=g) / np.bincount(snippet_class)
    return mean[snippet_class]


# ----------------------------------------------------------------------------------------------------
# per video and per data set


def video_pseudo_labels(T: int, num_classes: int, cls: Any, start: Any, end: Any, score: Any,
                        cfg: LinProConfig | None = None, stats: LinProStats | None = None) -> np.ndarray:
    """LinPro labels (T, num_classes) float64 of one video from its fused instances.

    ``cls``/``start``/``end``/``score``: one entry per fused instance (class index, snippet-unit
    boundaries with exclusive end, confidence). Classes without instances get 0.
    """
    cfg = cfg or LinProConfig()
    s, e, q = _check_instances(T, start, end, score)
    c = np.asarray(cls).reshape(-1)
    if c.shape != s.shape:
        raise WtalInputError(f"cls has {c.size} entries but there are {s.size} instances")
    if c.size and (not np.issubdtype(c.dtype, np.integer) or c.min() < 0 or c.max() >= num_classes):
        raise WtalInputError(f"instance classes must be integers in [0, {num_classes})")
    labels = np.zeros((int(T), int(num_classes)))
    for k in np.unique(c):
        member = c == k
        labels[:, k] = solve_class(T, s[member], e[member], q[member], cfg, stats)
    return labels


VideoInstances = tuple[int, Sequence[int] | np.ndarray, Any, Any, Any]


def _solve_chunk(items: list[tuple[str, VideoInstances]], num_classes: int,
                 cfg: LinProConfig) -> tuple[dict[str, np.ndarray], LinProStats]:
    stats = LinProStats()
    out = {}
    for name, (T, cls, start, end, score) in items:
        try:
            out[name] = video_pseudo_labels(T, num_classes, cls, start, end, score, cfg, stats)
        except WtalInputError as err:
            raise WtalInputError(err.problem, path=err.path, video=name, fix=err.fix) from None
    return out, stats


def pseudo_labels_for_videos(videos: Mapping[str, VideoInstances], num_classes: int,
                             cfg: LinProConfig | None = None,
                             workers: int | None = None) -> tuple[dict[str, np.ndarray], LinProStats]:
    """LinPro labels for many videos: ``{name: (T, cls, start, end, score)}`` -> ``({name: (T, C)}, stats)``.

    ``workers``: process count; None picks serial for fewer than ``MIN_VIDEOS_FOR_POOL`` videos and
    otherwise one process per available core (at most 2 gains on the 2-core target machine; see the
    benchmark). The result does not depend on ``workers``.
    """
    cfg = cfg or LinProConfig()
    items = list(videos.items())
    if workers is None:
        workers = 1 if len(items) < MIN_VIDEOS_FOR_POOL else available_cores()
    labels: dict[str, np.ndarray] = {}
    stats = LinProStats()
    for part, part_stats in map_chunks(_solve_chunk, items, workers, num_classes, cfg):
        labels.update(part)
        stats.merge(part_stats)
    return {name: labels[name] for name, _ in items}, stats


__all__ = [
    "LinProConfig",
    "LinProStats",
    "constraint_matrix",
    "pseudo_labels_for_videos",
    "solve_class",
    "solve_class_dense",
    "video_pseudo_labels",
]
