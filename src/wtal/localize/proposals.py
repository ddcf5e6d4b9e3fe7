"""Multi-threshold proposals with an outer-inner contrast score, vectorised over thresholds and classes.

For each CAS column ("track": one class of one video) and each threshold, every run of consecutive
snippets with ``CAS > threshold`` and at least ``min_length`` snippets is a proposal. Runs come from
``np.diff`` of a ``(thresholds, snippets)`` activity matrix in which all tracks lie end to end, separated
by inactive slots; inner and outer means come from one prefix sum. The cost is O(K N) array work for N
snippets and K thresholds, with no per-snippet (or per-video) Python loop.

Two conventions:

* ``paper``: the proposal is the run ``[s, e)`` (``e`` exclusive). ``inner`` is the mean over ``[s, e)``;
  ``outer`` is the mean over ``[s - w, s) U [e, e + w)`` clipped to the video, with ``w = ceil(margin(L))``
  snippets and ``L = e - s`` (so any positive margin looks at least one snippet out on each side);
  ``outer = 0`` when both windows are empty. Identical ``(class, s, e)`` runs found at several thresholds
  are kept once (``dedup``), since each copy would otherwise count again in the fusion weights.
* ``reference``: the public GauFuse / RSKP code: ``inner`` also covers the
  snippet after the run, ``[s, min(e + 1, T))``; ``outer`` is the mean over ``[os, s) U [min(e + 1, T), oe)``
  with ``os = max(0, trunc(s - m))``, ``oe = min(T - 1, trunc(e + m + 1))``; the stored end is ``e + 1``;
  no de-duplication: each copy counts. With ``merge_copies`` the copies come back as one row whose ``count``
  is their number, which suppression treats exactly like the copies but with far fewer overlapping pairs.

``score = inner - outer + gamma * video_score``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

CONVENTIONS = ("paper", "reference")


@dataclass(frozen=True)
class LinearMargin:
    """Outer margin ``alpha * L`` (OIC, BaS-Net, RSKP, MMSD use alpha = 0.25)."""

    alpha: float = 0.25

    def __call__(self, length: np.ndarray) -> np.ndarray:
        return self.alpha * np.asarray(length, dtype=np.float64)


@dataclass(frozen=True)
class PowerMargin:
    """Outer margin ``coef * L ** exponent`` (the GauFuse reference code: 0.0785 * L^0.9)."""

    coef: float = 0.0785
    exponent: float = 0.9

    def __call__(self, length: np.ndarray) -> np.ndarray:
        return self.coef * np.power(np.asarray(length, dtype=np.float64), self.exponent)


class Proposals(NamedTuple):
    """Proposals of one class in snippet units (float64); ``end`` exclusive."""

    start: np.ndarray
    end: np.ndarray
    score: np.ndarray
    inner: np.ndarray


class TrackProposals(NamedTuple):
    """Proposals of many CAS columns ("tracks"): ``track`` indexes them, positions are within the track.

    ``count`` (int64) is how many identical copies a row stands for: 1 unless ``merge_copies`` merged them.
    """

    track: np.ndarray
    start: np.ndarray
    end: np.ndarray
    score: np.ndarray
    inner: np.ndarray
    count: np.ndarray


def multi_threshold_proposals(cas_1d, thresholds, margin=LinearMargin(), *, relative: bool = False,
                              min_length: int = 2, video_score: float = 0.0, gamma: float = 0.0,
                              convention: str = "paper", dedup: bool | None = None) -> Proposals:
    """Proposals of one class from its CAS column ``(T,)``; see the module docstring for the conventions.

    ``thresholds`` are absolute, or with ``relative=True`` fractions ``f`` of the column's range: a snippet
    is active when ``(x - min) / (max - min) > f`` (never, for a constant column). ``margin`` maps lengths
    to outer widths (:class:`LinearMargin`, :class:`PowerMargin` or any vectorised callable). ``dedup``
    defaults to ``convention == 'paper'``.
    """
    cas_1d = np.asarray(cas_1d, dtype=np.float64)
    if cas_1d.ndim != 1 or len(cas_1d) < 1:
        raise ValueError(f"expected a (T,) CAS column with T >= 1, got shape {cas_1d.shape}")
    p = track_proposals(cas_1d, [len(cas_1d)], thresholds, margin, relative=relative, min_length=min_length,
                        track_scores=[video_score], gamma=gamma, convention=convention, dedup=dedup)
    return Proposals(p.start, p.end, p.score, p.inner)


def class_proposals(cas, thresholds, margin=LinearMargin(), *, video_scores=None, **options) -> TrackProposals:
    """Proposals of every column of ``cas`` ``(T, C)``; ``track`` is the column index."""
    cas = np.asarray(cas, dtype=np.float64)
    n_t, n_c = cas.shape
    return track_proposals(cas.T.ravel(), np.full(n_c, n_t), thresholds, margin, track_scores=video_scores,
                           **options)


def track_ranges(values: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-track ``(min, max - min)`` of columns laid end to end (``values``, ``lengths`` >= 1 each)."""
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    low = np.minimum.reduceat(values, first)
    return low, np.maximum.reduceat(values, first) - low


def track_proposals(values, lengths, thresholds, margin=LinearMargin(), *, relative: bool = False,
                    min_length: int = 2, track_scores=None, gamma: float = 0.0, convention: str = "paper",
                    dedup: bool | None = None, merge_copies: bool = False) -> TrackProposals:
    """Proposals of many CAS columns at once: ``values`` holds the columns end to end, ``lengths`` their sizes.

    Batching every (video, class) column of a data set into one call keeps the number of numpy calls
    independent of the number of videos. ``track_scores`` (one per track) feed the ``gamma`` term. Without
    ``dedup``, ``merge_copies`` returns identical ``(track, start, end)`` runs once with their number in
    ``count``; rows are then ordered by track, start and end.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown proposal convention {convention!r}; use one of {CONVENTIONS}")
    dedup = convention == "paper" if dedup is None else dedup
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if np.any(lengths < 1) or lengths.sum() != len(values):
        raise ValueError("every track needs >= 1 snippet and the lengths must add up to len(values)")
    fractions = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    n_tracks, n_values = len(lengths), len(values)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    track_of = np.repeat(np.arange(n_tracks), lengths)
    level = values
    if relative:  # position within the track's range, 0 for a constant track
        low, span = track_ranges(values, lengths)
        span = span[track_of]
        level = np.divide(values - low[track_of], span, out=np.zeros(n_values), where=span > 0)

    # Tracks laid out with one inactive separator before, between and after them, so no run crosses a
    # track and every row of the (K, padded) activity matrix starts and ends inactive.
    padded_first = first + np.arange(n_tracks) + 1
    padded_len = n_values + n_tracks + 1
    padded = np.full(padded_len, -np.inf)
    padded[np.arange(n_values) + track_of + 1] = level
    active = np.empty((len(fractions), padded_len), dtype=bool)
    for k, theta in enumerate(fractions):  # one row per threshold, not per snippet
        np.greater(padded, theta, out=active[k])
    flat = active.reshape(-1)
    edges = np.flatnonzero(flat[1:] != flat[:-1])  # alternating run starts and ends, row by row
    run_start, run_end = edges[0::2] + 1, edges[1::2] + 1
    pos = run_start % padded_len
    track = np.searchsorted(padded_first, pos, side="right") - 1
    start = pos - padded_first[track]
    end = run_end % padded_len - padded_first[track]
    long_enough = end - start >= max(int(min_length), 1)
    track, start, end = track[long_enough], start[long_enough], end[long_enough]
    count = np.ones(len(track), dtype=np.int64)
    if (dedup or merge_copies) and len(track):
        span = int(lengths.max()) + 2
        _, first_copy, copies = np.unique((track * span + start) * span + end, return_index=True,
                                          return_counts=True)
        track, start, end = track[first_copy], start[first_copy], end[first_copy]
        count = np.ones(len(track), dtype=np.int64) if dedup else copies.astype(np.int64)

    csum = np.concatenate([[0.0], np.cumsum(values)])
    base = first[track]
    size = lengths[track]
    widths = np.asarray(margin(end - start), dtype=np.float64)
    if convention == "paper":
        stored_end, inner_end = end, end
        w = np.ceil(widths).astype(np.int64)
        left, right, right_from = np.maximum(0, start - w), np.minimum(size, end + w), end
    else:
        inner_end = np.minimum(end + 1, size)
        stored_end = end + 1
        left = np.maximum(0, np.trunc(start - widths).astype(np.int64))
        right = np.maximum(np.minimum(size - 1, np.trunc(end + widths + 1).astype(np.int64)), inner_end)
        right_from = inner_end
    inner = (csum[base + inner_end] - csum[base + start]) / (inner_end - start)
    outer_sum = (csum[base + start] - csum[base + left]) + (csum[base + right] - csum[base + right_from])
    outer_n = (start - left) + (right - right_from)
    outer = np.divide(outer_sum, outer_n, out=np.zeros(len(track)), where=outer_n > 0)
    score = inner - outer
    if gamma and track_scores is not None:
        score = score + gamma * np.asarray(track_scores, dtype=np.float64).reshape(-1)[track]
    return TrackProposals(track.astype(np.int64), start.astype(np.float64), stored_end.astype(np.float64),
                          score, inner, count)
