"""Hard NMS and soft-NMS for 1-D temporal instances of one class.

Both loops are greedy over instances (not snippets); each step is one vectorised overlap row against the
remaining instances. Ties in score are broken as in fusion (smaller start, then smaller end), so the output
does not depend on the input order.
"""

from __future__ import annotations

import numpy as np

from wtal.localize.fusion import copies_to_rows, greedy_groups, overlap_with, rank_order


def nms(start, end, score, iou_threshold: float, *, overlap: str = "iou") -> np.ndarray:
    """Kept indices, best first: greedily drops each instance overlapping a kept one by > threshold."""
    s, e, q = _as_arrays(start, end, score)
    return nms_by_class(np.zeros(len(q), dtype=np.int64), s, e, q, iou_threshold, overlap=overlap)


def nms_by_class(cls, start, end, score, iou_threshold: float, *, overlap: str = "iou",
                 count=None) -> np.ndarray:
    """:func:`nms` within each class at once; kept indices ordered by class, then descending score.

    ``count`` (default: all 1) is the number of identical copies each instance stands for; a kept instance
    whose copies would survive it too (``iou_threshold >= 1``) is listed once per copy.
    """
    s, e, q = _as_arrays(start, end, score)
    c = np.asarray(cls, dtype=np.int64).reshape(-1)
    if len(c) != len(q) or not np.isfinite(iou_threshold):
        raise ValueError("cls must match the instances and the IoU threshold must be finite")
    origin = np.arange(len(q))
    if count is not None:  # copies that suppress each other act as one instance
        origin, _ = copies_to_rows(count, s, e, iou_threshold, overlap)
        c, s, e, q = c[origin], s[origin], e[origin], q[origin]
    rank = rank_order(q, s, e, np.zeros_like(q), c)
    label = greedy_groups(s[rank], e[rank], iou_threshold, overlap, c[rank])
    seed = np.ones(len(label), dtype=bool)  # a group's seed is its first member in rank order
    seed[1:] = label[1:] > np.maximum.accumulate(label)[:-1]
    return origin[rank[seed]].astype(np.int64)


def soft_nms(start, end, score, sigma: float = 0.5, *, method: str = "gaussian", iou_threshold: float = 0.3,
             score_threshold: float = 0.0, overlap: str = "iou"):
    """Soft-NMS (Bodla et al. 2017); returns ``(start, end, decayed score)`` in selection order.

    ``gaussian`` decays each remaining score by ``exp(-ov^2 / sigma)``; ``linear`` by ``1 - ov`` where
    ``ov > iou_threshold``. The decay is multiplicative, which only lowers non-negative scores, so instances
    whose score is ``<= score_threshold`` (default 0) are dropped, before and after each decay.
    """
    if method not in ("gaussian", "linear"):
        raise ValueError(f"unknown soft-NMS method {method!r}; use 'gaussian' or 'linear'")
    if method == "gaussian" and not sigma > 0:
        raise ValueError(f"soft-NMS sigma must be > 0, got {sigma!r}")
    s, e, q = _as_arrays(start, end, score)
    order = rank_order(q, s, e, np.zeros_like(q))
    rs, re, rq = s[order], e[order], q[order]
    alive = rq > score_threshold
    rs, re, rq = rs[alive], re[alive], rq[alive]
    out = np.empty((len(rq), 3))
    n_out = 0
    while len(rq):
        top = int(np.argmax(rq))  # first maximum: the tie rule above survives the decays
        out[n_out] = rs[top], re[top], rq[top]
        n_out += 1
        rest = np.ones(len(rq), dtype=bool)
        rest[top] = False
        rs, re, rq = rs[rest], re[rest], rq[rest]
        ov = overlap_with(out[n_out - 1, 0], out[n_out - 1, 1], rs, re, overlap)
        if method == "gaussian":
            rq = rq * np.exp(-(ov * ov) / sigma)
        else:
            rq = np.where(ov > iou_threshold, rq * (1.0 - ov), rq)
        alive = rq > score_threshold
        rs, re, rq = rs[alive], re[alive], rq[alive]
    out = out[:n_out]
    return out[:, 0].copy(), out[:, 1].copy(), out[:, 2].copy()


def _as_arrays(start, end, score):
    s, e, q = (np.asarray(x, dtype=np.float64).reshape(-1) for x in (start, end, score))
    if not len(s) == len(e) == len(q):
        raise ValueError(f"start, end and score differ in length: {len(s)}, {len(e)}, {len(q)}")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(e)) and np.all(np.isfinite(q))):
        raise ValueError("instances must have finite start, end and score")
    return s, e, q
