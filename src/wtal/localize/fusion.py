"""Weighted instance fusion (GauFuse §3.1) and the overlap measures shared with NMS.

Greedy loop, per class: take the highest-ranked remaining instance ``a*``, collect every remaining
instance that overlaps it by more than ``iou_threshold`` (``a*`` always belongs to its own group), fuse
the group's ``(start, end, score)`` into one instance, remove the group, repeat until none remain.

Fusion as a template fit. The group members carry weights ``g_k = softmax_k(w_k / T)`` (``w`` = the
ranking score, or ``weights_from``). Fitting a location template ``f(x - mu)`` to the points ``x_k`` by
minimising the cross-entropy ``-sum_k g_k log f(x_k - mu)`` gives, per coordinate (start, end, score):

* ``gaussian``: ``-log f`` is quadratic, so ``mu = sum_k g_k x_k`` (the weighted mean; paper Eq. 4).
* ``exponential``: the two-sided exponential (Laplace) template; ``-log f = |x - mu| / b``, so ``mu`` is
  the weighted median. (A one-sided exponential would put ``mu`` at the smallest member, a degenerate
  estimate, so the symmetric form is the only useful location template.) When the cumulative weight
  reaches exactly one half between two values, every point between them minimises; we return their
  midpoint.
* ``uniform``: ``f`` is flat on ``[mu - a, mu + a]``; the cross-entropy is finite only if the interval
  covers every member (all softmax weights are positive), and fitting ``a`` too shrinks it to the members'
  range, so ``mu`` is the midrange ``(min + max) / 2``. The weights drop out entirely, which is why this
  template ignores confidence (and does worst in the paper's Table 3).
* ``t``: Student-t with ``dof`` degrees of freedom and a scale fixed at the group's weighted standard
  deviation; ``sum_k g_k psi(x_k - mu) = 0`` has no closed form. We solve it by iteratively reweighted
  means (the EM fixed point, ``u_k = g_k / (1 + r_k^2 / dof)``), which decreases the objective at every
  step, unlike a plain Newton step where ``psi' < 0`` for large residuals.

Numerics: weights use a max-shifted exponent (log-sum-exp), everything is float64, ``T = 0`` is the
``T -> 0`` limit (equal weights on the members with the largest ``w``), and no input yields NaN.

Ties in the ranking are broken by a content-based rule, so the result does not depend on the input order:
higher score first, then smaller start, smaller end, larger weight. (The reference code sorts with numpy's
unstable quicksort, whose order among equal scores is unspecified.)

Copies. The reference keeps identical proposals found at several thresholds, and each copy counts. A row may
stand for ``count`` identical copies instead: a copy overlaps itself fully, so (for a threshold below that
overlap) all copies join the same group, and the row's softmax weight becomes ``count * exp(w / T)``. Copies
are adjacent in the ranking and never seed a group of their own, so groups, seeds and the output order are
those of the expanded input; only the number of overlapping pairs shrinks.
"""

from __future__ import annotations

import numpy as np

TEMPLATES = ("gaussian", "exponential", "uniform", "t")
OVERLAPS = ("iou", "reference")


def temporal_iou(s1, e1, s2, e2) -> np.ndarray:
    """Intersection over union of ``[s1, e1)`` and ``[s2, e2)``, broadcasting; 0 where the union is empty."""
    s1, e1, s2, e2 = (np.asarray(x, dtype=np.float64) for x in (s1, e1, s2, e2))
    inter = np.maximum(0.0, np.minimum(e1, e2) - np.maximum(s1, s2))
    union = np.maximum(0.0, e1 - s1) + np.maximum(0.0, e2 - s2) - inter
    return np.divide(inter, union, out=np.zeros(np.broadcast(inter, union).shape), where=union > 0)


def overlap_with(s0, e0, start, end, kind: str = "iou") -> np.ndarray:
    """Overlap of the instance(s) ``[s0, e0)`` with ``[start, end)``, broadcasting.

    ``iou`` is the temporal IoU (paper Eq. 1). ``reference`` reproduces the public reference code:
    intersection over the length of the *other* instance, both with inclusive "+1" lengths,
    ``max(0, min(e0, e) - max(s0, s) + 1) / (e - s + 1)``; it is not symmetric.
    """
    if kind == "iou":
        return temporal_iou(s0, e0, start, end)
    if kind == "reference":
        inter = np.maximum(0.0, np.minimum(e0, end) - np.maximum(s0, start) + 1.0)
        length = np.broadcast_to(np.asarray(end, dtype=np.float64) - start + 1.0, inter.shape)
        return np.divide(inter, length, out=np.zeros(inter.shape), where=length > 0)
    raise ValueError(f"unknown overlap {kind!r}; use one of {OVERLAPS}")


def rank_order(score, start, end, weight, category=None) -> np.ndarray:
    """Indices by category, then descending score; ties by smaller start, smaller end, larger weight.

    The rule depends only on the values, never on the input order (exact copies keep their input order).
    """
    score = np.asarray(score)
    order = np.argsort(-score)  # unstable and fast: equal scores are settled below
    if category is not None:
        category = np.asarray(category)
        order = order[_stable_argsort(category[order])]
    tied = score[order][1:] == score[order][:-1]
    if category is not None:
        tied &= category[order][1:] == category[order][:-1]
    if not tied.any():  # the usual case
        return order
    # Sort only the runs of equal (category, score) by the tie-breaking keys; the runs keep their places.
    in_run = np.zeros(len(order), dtype=bool)
    in_run[1:] |= tied
    in_run[:-1] |= tied
    at = np.flatnonzero(in_run)
    run = np.cumsum(np.concatenate([[True], ~tied]))[at]
    members = order[at]
    keys = (members, -np.asarray(weight)[members], np.asarray(end)[members], np.asarray(start)[members], run)
    order[at] = members[np.lexsort(keys)]
    return order


def _stable_argsort(values: np.ndarray) -> np.ndarray:
    """Stable argsort of integers; a radix sort when their range fits in 16 bits."""
    if len(values) and np.issubdtype(values.dtype, np.integer):
        low = values.min()
        if int(values.max()) - int(low) < 2**16:
            return np.argsort((values - low).astype(np.uint16), kind="stable")
    return np.argsort(values, kind="stable")


def greedy_groups(start: np.ndarray, end: np.ndarray, threshold: float, overlap: str = "iou",
                  category: np.ndarray | None = None, *, max_rounds: int = 32,
                  max_pairs: int = 20_000_000) -> np.ndarray:
    """Group label of each instance, for instances already in rank order (best first).

    Greedy: the best unassigned instance seeds group ``k`` and takes every unassigned instance of its
    ``category`` whose overlap with it exceeds ``threshold``; repeat. Labels count up in seed order; a
    group's seed is its first member; categories never mix.

    Instead of one Python step per group, this settles the same greedy order in a few vectorised rounds
    over the sparse set of overlapping pairs ("edges" from the better- to the worse-ranked instance):
    an undecided instance becomes a seed once no seed or undecided instance points at it, and is absorbed
    as soon as a seed does. Each round settles at least the best undecided instance; for multi-threshold
    proposals (runs are nested or disjoint) a round settles about one nesting level. After ``max_rounds``
    the rest is settled one seed at a time. Beyond ``max_pairs`` edges it uses
    :func:`greedy_groups_stepwise` (same labels, O(n) memory). An absorbed instance belongs to the
    best-ranked seed pointing at it.
    """
    n = len(start)
    category = np.zeros(n, dtype=np.int64) if category is None else np.asarray(category)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    edges = _overlap_edges(start, end, threshold, overlap, category, max_pairs)
    if edges is None:
        return greedy_groups_stepwise(start, end, threshold, overlap, category)
    src0, dst0 = edges
    src, dst = src0, dst0
    status = np.zeros(n, dtype=np.int8)  # 0 undecided, 1 seed, 2 absorbed
    for _ in range(max_rounds):
        blocked = np.zeros(n, dtype=bool)
        blocked[dst] = True
        status[(status == 0) & ~blocked] = 1
        status[dst[status[src] == 1]] = 2
        live = (status[src] != 2) & (status[dst] == 0)
        src, dst = src[live], dst[live]
        if not (status == 0).any():
            break
    else:
        _settle_in_order(status, src, dst)
    from_seed = status[src0] == 1
    owner = np.full(n, n)
    np.minimum.at(owner, dst0[from_seed], src0[from_seed])
    owner = np.where(status == 1, np.arange(n), owner)
    return (np.cumsum(status == 1) - 1)[owner].astype(np.int64)


def _settle_in_order(status: np.ndarray, src: np.ndarray, dst: np.ndarray) -> None:
    """Settle the undecided instances in rank order, one seed per step (for long dependency chains)."""
    by_src = np.argsort(src, kind="stable")
    src, dst = src[by_src], dst[by_src]
    for i in np.flatnonzero(status == 0):
        if status[i] == 0:  # every better instance is settled and none of the seeds took it
            status[i] = 1
            targets = dst[np.searchsorted(src, i, side="left"):np.searchsorted(src, i, side="right")]
            status[targets[status[targets] == 0]] = 2


def _overlap_edges(start, end, threshold, overlap, category, max_pairs):
    """Pairs ``(better, worse)`` of rank indices in one category whose overlap exceeds ``threshold``.

    Candidates come from a sweep in start order within each category: an instance can only overlap a
    later-starting one that starts before its end (one snippet later for the "+1" reference overlap).
    A negative threshold makes every pair of a category an edge. Returns None beyond ``max_pairs``.
    """
    n = len(start)
    slack = 1.0 if overlap == "reference" else 0.0
    keys = _integer_keys(start, end + slack, category)
    if keys is not None:  # integer boundaries (all proposals): one composite-key sort and a searchsorted
        item_key, reach_key = keys
        order = np.argsort(item_key, kind="stable")
        if threshold < 0:
            same = category[order]
            stop = np.searchsorted(same, same, side="right")
        else:
            stop = np.searchsorted(item_key[order], reach_key[order], side="left")
    else:
        order = np.lexsort((start, category))
        sorted_start, sorted_cat = start[order], category[order]
        if threshold < 0:
            stop = np.searchsorted(sorted_cat, sorted_cat, side="right")
        else:
            # per item, the number of items that sort before (its category, its reach): one merged lexsort
            # of items and queries, queries first on ties so that a start equal to the reach is not counted
            reach = end[order] + slack
            is_item = np.concatenate([np.ones(n, dtype=np.int8), np.zeros(n, dtype=np.int8)])
            merged = np.lexsort((is_item, np.concatenate([sorted_start, reach]), np.concatenate([sorted_cat] * 2)))
            items_before = np.cumsum(is_item[merged])
            query = merged >= n
            stop = np.empty(n, dtype=np.int64)
            stop[merged[query] - n] = items_before[query]
    count = np.maximum(stop - np.arange(n) - 1, 0)
    total = int(count.sum())
    if total > max_pairs:
        return None
    first = np.repeat(np.arange(n), count)
    second = first + 1 + np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    a, b = order[first], order[second]
    src, dst = np.minimum(a, b), np.maximum(a, b)
    keep = overlap_with(start[src], end[src], start[dst], end[dst], overlap) > threshold
    return src[keep], dst[keep]


def _integer_keys(start, reach, category):
    """``category * span + value`` as exact int64 keys when all values are integers, else None."""
    if not (np.all(start == np.floor(start)) and np.all(reach == np.floor(reach))):
        return None
    low = min(start.min(), reach.min())
    span = max(start.max(), reach.max()) - low + 1
    cat = np.asarray(category, dtype=np.int64)
    cat = cat - cat.min()
    if span * (int(cat.max()) + 1) >= 2**62:
        return None
    span = np.int64(span)
    return (cat * span + (start - low).astype(np.int64), cat * span + (reach - low).astype(np.int64))


def greedy_groups_stepwise(start: np.ndarray, end: np.ndarray, threshold: float, overlap: str = "iou",
                           category: np.ndarray | None = None) -> np.ndarray:
    """:func:`greedy_groups` with one vectorised overlap row per group (any overlap count, O(n) memory)."""
    n = len(start)
    category = np.zeros(n, dtype=np.int64) if category is None else np.asarray(category)
    label = np.empty(n, dtype=np.int64)
    free = np.ones(n, dtype=bool)
    top, k = 0, 0
    while n:
        members = overlap_with(start[top], end[top], start[top:], end[top:], overlap) > threshold
        members &= free[top:] & (category[top:] == category[top])
        members[0] = True
        label[top:][members] = k
        free[top:][members] = False
        k += 1
        step = int(free[top:].argmax())
        if not free[top + step]:
            break
        top += step
    return label


def copies_to_rows(count, start, end, threshold: float, overlap: str = "iou") -> tuple[np.ndarray, np.ndarray]:
    """``(origin, count)`` of the rows to process for instances standing for ``count`` identical copies each.

    A merged instance acts exactly like its copies when a copy overlaps it by more than ``threshold`` (then all
    copies fall into one group). Where it does not (``threshold >= 1``, or an empty interval under IoU), its
    copies are given back as separate rows of count 1. ``origin`` indexes the input instances.
    """
    count = np.asarray(count).reshape(-1)
    if len(count) != len(start) or not np.all((count >= 1) & (count == np.floor(count))):
        raise ValueError("count must hold one whole number >= 1 per instance")
    count = count.astype(np.int64)
    apart = overlap_with(start, end, start, end, overlap) <= threshold
    origin = np.repeat(np.arange(len(count)), np.where(apart, count, 1))
    return origin, np.where(apart, 1, count)[origin]


def fuse_instances(start, end, score, *, temperature: float, iou_threshold: float,
                   template: str = "gaussian", weights_from=None, overlap: str = "iou", dof: float = 3.0,
                   count=None, return_members: bool = False):
    """Fuse overlapping instances of one class; returns ``(start, end, score)`` sorted by fused score.

    ``score`` ranks the instances and is fused like the boundaries. ``weights_from`` (default: ``score``)
    gives the softmax logits; the reference preset passes the inner score here. ``overlap`` is ``iou``
    (paper) or ``reference`` (see :func:`overlap_with`). ``count`` (default: all 1) is the number of identical
    copies each instance stands for (see the module docstring). With ``return_members`` a fourth item lists,
    per output, the indices of the input instances fused into it (an index once per copy).
    """
    n = len(np.asarray(score).reshape(-1))
    _, *result = fuse_by_class(np.zeros(n, dtype=np.int64), start, end, score, temperature=temperature,
                               iou_threshold=iou_threshold, template=template, weights_from=weights_from,
                               overlap=overlap, dof=dof, count=count, return_members=return_members)
    return tuple(result)


def fuse_by_class(cls, start, end, score, *, temperature: float, iou_threshold: float,
                  template: str = "gaussian", weights_from=None, overlap: str = "iou", dof: float = 3.0,
                  count=None, return_members: bool = False):
    """:func:`fuse_instances` for instances of several classes at once (each class fused on its own).

    Returns ``(cls, start, end, score)`` ordered by class, then descending fused score (plus the members
    with ``return_members``).
    """
    c = np.asarray(cls, dtype=np.int64).reshape(-1)
    s, e, q = (np.asarray(x, dtype=np.float64).reshape(-1) for x in (start, end, score))
    w = q if weights_from is None else np.asarray(weights_from, dtype=np.float64).reshape(-1)
    _check_inputs(c, s, e, q, w, temperature, iou_threshold)
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; use one of {TEMPLATES}")
    if overlap not in OVERLAPS:
        raise ValueError(f"unknown overlap {overlap!r}; use one of {OVERLAPS}")
    origin = None
    if count is not None:
        origin, count = copies_to_rows(count, s, e, iou_threshold, overlap)
        c, s, e, q, w = c[origin], s[origin], e[origin], q[origin], w[origin]
    if not len(q):
        empty = (np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0), np.zeros(0))
        return (*empty, []) if return_members else empty
    rank = rank_order(q, s, e, w, c)
    label = greedy_groups(s[rank], e[rank], iou_threshold, overlap, c[rank])
    by_group = rank[np.argsort(label, kind="stable")]  # members contiguous, each group in rank order
    sizes = np.bincount(label)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    group = np.repeat(np.arange(len(sizes)), sizes)
    g = group_softmax(w[by_group], group, bounds, temperature, None if count is None else count[by_group])
    values = np.stack([s[by_group], e[by_group], q[by_group]])
    fused = fit_template(values, g, bounds, template, dof)
    # rounding in the weight normalisation may step an ulp outside the members' range: clip it back
    fused = np.clip(fused, np.minimum.reduceat(values, bounds[:-1], axis=1),
                    np.maximum.reduceat(values, bounds[:-1], axis=1))
    crossed = fused[0] > fused[1]  # only possible for the t template; the midpoint stays inside both hulls
    fused[:2, crossed] = 0.5 * (fused[0, crossed] + fused[1, crossed])
    fused_cls = c[by_group[bounds[:-1]]]
    out = np.lexsort((-fused[2], fused_cls))  # stable: equal scores keep seed order
    result = (fused_cls[out], fused[0, out], fused[1, out], fused[2, out])
    if return_members:
        if origin is None:
            members = by_group
        else:  # an input index once per copy it stands for
            members = np.repeat(origin[by_group], count[by_group])
            bounds = np.concatenate([[0], np.cumsum(np.add.reduceat(count[by_group], bounds[:-1]))])
        return (*result, [members[bounds[j]:bounds[j + 1]] for j in out])
    return result


def group_softmax(logits: np.ndarray, group: np.ndarray, bounds: np.ndarray, temperature: float,
                  count: np.ndarray | None = None) -> np.ndarray:
    """``softmax(logits / T)`` within each contiguous group, max-shifted; ``T = 0``: the ``T -> 0`` limit.

    An entry with ``count`` k weighs as k copies: ``k * exp(logit / T)`` before normalising.
    """
    top = np.maximum.reduceat(logits, bounds[:-1])[group]
    if temperature == 0:
        g = (logits == top).astype(np.float64)
    else:
        g = np.exp((logits - top) / temperature)
    if count is not None:
        g = g * count
    return g / np.add.reduceat(g, bounds[:-1])[group]


def fit_template(values: np.ndarray, g: np.ndarray, bounds: np.ndarray, template: str = "gaussian",
                 dof: float = 3.0) -> np.ndarray:
    """Template location per group and per row of ``values`` ``(k, n)``.

    Members of group ``j`` are the columns ``bounds[j]:bounds[j + 1]``; ``g`` ``(n,)`` are their weights,
    normalised within each group. Returns ``(k, n_groups)``.
    """
    offsets = bounds[:-1]
    if template == "gaussian":
        return np.add.reduceat(values * g, offsets, axis=1)
    if template == "uniform":
        low, high = np.minimum.reduceat(values, offsets, axis=1), np.maximum.reduceat(values, offsets, axis=1)
        return 0.5 * (low + high)
    if template == "exponential":
        return np.stack([_weighted_median(row, g, bounds) for row in values])
    if template == "t":
        return _t_location(values, g, bounds, dof)
    raise ValueError(f"unknown template {template!r}; use one of {TEMPLATES}")


def _weighted_median(x: np.ndarray, g: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    # a cumulative weight within 1e-9 of one half is a tie: return the midpoint of the two minimisers
    group = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    order = np.lexsort((x, group))
    xs, cw = x[order], np.cumsum(g[order])
    before = np.concatenate([[0.0], cw[bounds[1:-1] - 1]])
    local = cw - before[group]
    lower = _first_true(local >= 0.5 - 1e-9, group, bounds)
    upper = _first_true(local > 0.5 + 1e-9, group, bounds)
    return 0.5 * (xs[lower] + xs[upper])


def _first_true(mask: np.ndarray, group: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Index of the first True of each group (the group's last index if it has none)."""
    idx = np.where(mask, np.arange(len(mask)), bounds[1:][group] - 1)
    return np.minimum.reduceat(idx, bounds[:-1])


def _t_location(values: np.ndarray, g: np.ndarray, bounds: np.ndarray, dof: float,
                max_iter: int = 200) -> np.ndarray:
    offsets = bounds[:-1]
    group = np.repeat(np.arange(len(offsets)), np.diff(bounds))
    mu = np.add.reduceat(values * g, offsets, axis=1)
    scale2 = dof * np.add.reduceat((values - mu[:, group]) ** 2 * g, offsets, axis=1)
    # a zero spread means the weighted mean is already exact; a unit scale there avoids 0/0
    spread = scale2 > 0
    scale2 = np.where(spread, scale2, 1.0)
    for _ in range(max_iter):
        # a near-one-hot weighting (a low softmax temperature) leaves a tiny scale: a squared distance over it can
        # pass the float range, which gives the weight 0, its limit; a group whose weights all vanish keeps mu
        with np.errstate(over="ignore"):
            u = g / (1.0 + (values - mu[:, group]) ** 2 / scale2[:, group])
        total = np.add.reduceat(u, offsets, axis=1)
        new = np.add.reduceat(u * values, offsets, axis=1) / np.where(total > 0, total, 1.0)
        new = np.where(spread & (total > 0), new, mu)
        done = np.all(np.abs(new - mu) <= 1e-12 * (1.0 + np.abs(mu)))
        mu = new
        if done:
            break
    return mu


def _check_inputs(c, s, e, q, w, temperature, threshold) -> None:
    if not (len(c) == len(s) == len(e) == len(q) == len(w)):
        raise ValueError(f"class, start, end, score and weights differ in length: {len(c)}, {len(s)}, "
                         f"{len(e)}, {len(q)}, {len(w)}")
    if not all(np.all(np.isfinite(x)) for x in (s, e, q, w)):
        raise ValueError("instances must have finite start, end, score and weight")
    if not (np.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if not np.isfinite(threshold):
        raise ValueError(f"the overlap threshold must be finite, got {threshold!r}")
