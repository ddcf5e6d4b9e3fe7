"""Sentence-grounding evaluation: CPL's recall metric, grounding result files, and trivial baselines.

**Metric** (:func:`grounding_recall`), exactly as CPL computes it. Moments and predictions are fractions of the
video duration. ``IoU(a, b) = (min(a_e, b_e) - max(a_s, b_s) + 1e-10) / (max(a_e, b_e) - min(a_s, b_s) + 1e-10)``,
set to 0 when negative: the denominator is the convex hull, equal to the union whenever the segments overlap.
Per query, the R@1 IoU is that of the first prediction and the R@5 IoU the largest among the first five (no
non-maximum suppression, no re-scoring; a list shorter than five uses what it has). ``R@n, IoU=m`` is the
percentage of queries (sentences, not videos) whose IoU is **>= m**, for ``m`` in 0.1/0.3/0.5/0.7 by default
(0.9 on request); ``mIoU`` is the mean R@1 IoU in percent (``mIoU@5`` that of the R@5 IoU). Charades-STA papers
report 0.3/0.5/0.7, ActivityNet Captions papers 0.1/0.3/0.5.

**Result files**::

    {"task": "grounding",
     "results": [{"query": 0, "video": "AO8RW", "segments": [[s, e], ...], "scores": [...]}, ...]}

with segments in seconds, best first (a model writes at least five per query). ``query`` is the query's
position in its annotation file. Reading validates every entry and ranks each query's segments by score,
descending (equal scores keep the file order); writing is atomic. Evaluating against an annotation file clips
predicted segments to the video and requires exactly one entry per query, with the query's video.

**Baselines** (fractions of the duration, for comparison with a trained model): the whole video
(:func:`whole_video_segments`); a fixed-length prior (:func:`fit_prior_segments`, fitted on moments the caller
may use: the validation part carved from the training videos, never the training timestamps used for
learning, never the test moments); uniformly random segments (:func:`random_segments`); a model's own
predictions moved to other queries (:func:`permute_within`), to see how much of its score the sentence earns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wtal.atomic import write_json_atomic
from wtal.data.grounding import QuerySet
from wtal.data.timebase import fraction_to_seconds, seconds_to_fraction
from wtal.data.validate import read_json_file
from wtal.errors import WtalInputError

GROUNDING_THRESHOLDS = (0.1, 0.3, 0.5, 0.7)
TOP_N = 5
IOU_SMOOTHING = 1e-10
RESULTS_FIX = ('write {"task": "grounding", "results": [{"query": ID, "video": VIDEO, "segments": '
               '[[START_S, END_S], ...], "scores": [...]}, ...]}')


def segment_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CPL's IoU of ``[..., 2]`` segments ``a`` and ``b`` (broadcast), float64, hull-based, 0 when negative."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    inter = np.minimum(a[..., 1], b[..., 1]) - np.maximum(a[..., 0], b[..., 0])
    hull = np.maximum(a[..., 1], b[..., 1]) - np.minimum(a[..., 0], b[..., 0])
    return np.maximum((inter + IOU_SMOOTHING) / (hull + IOU_SMOOTHING), 0.0)


@dataclass(frozen=True)
class GroundingReport:
    thresholds: tuple[float, ...]
    recall_at_1: tuple[float, ...]  # percent, per threshold
    recall_at_5: tuple[float, ...]
    miou: float  # percent, mean R@1 IoU
    miou_at_5: float  # percent, mean R@5 IoU
    num_queries: int

    def table(self) -> str:
        """Printable rows: threshold -> R@1 and R@5 (%), then mIoU."""
        lines = [f"{'IoU':<6}  {'R@1 (%)':>8}  {'R@5 (%)':>8}"]
        lines += [f"{t:<6g}  {r1:8.2f}  {r5:8.2f}"
                  for t, r1, r5 in zip(self.thresholds, self.recall_at_1, self.recall_at_5, strict=True)]
        lines.append(f"{'mIoU':<6}  {self.miou:8.2f}  {self.miou_at_5:8.2f}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        keys = [f"{t:g}" for t in self.thresholds]
        return {"R@1": dict(zip(keys, self.recall_at_1, strict=True)),
                "R@5": dict(zip(keys, self.recall_at_5, strict=True)),
                "mIoU": self.miou, "mIoU@5": self.miou_at_5, "queries": self.num_queries}


def grounding_recall(segments: np.ndarray, counts: np.ndarray, moments: np.ndarray,
                     thresholds: Sequence[float] = GROUNDING_THRESHOLDS) -> GroundingReport:
    """R@1, R@5 and mIoU of ranked ``segments`` ``(N, K, 2)`` (fractions; row ``i`` has ``counts[i] >= 1`` valid
    segments, best first) against ``moments`` ``(N, 2)`` (fractions)."""
    segments, moments = np.asarray(segments, dtype=np.float64), np.asarray(moments, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.int64)
    if len(moments) == 0:
        raise WtalInputError("no queries to evaluate", fix="evaluate on an annotation file with queries")
    if (counts < 1).any():
        raise WtalInputError(f"query {int(np.argmax(counts < 1))} (row) has no predicted segment",
                             fix="predict at least one segment per query")
    top = segments[:, :TOP_N]
    iou = segment_iou(top, moments[:, None, :])
    iou = np.where(np.arange(top.shape[1])[None, :] < counts[:, None], iou, -np.inf)
    best1, best5 = iou[:, 0], iou.max(axis=1)
    thr = np.asarray(thresholds, dtype=np.float64)
    r1 = 100.0 * (best1[:, None] >= thr[None, :]).mean(axis=0)
    r5 = 100.0 * (best5[:, None] >= thr[None, :]).mean(axis=0)
    return GroundingReport(tuple(float(t) for t in thr), tuple(r1.tolist()), tuple(r5.tolist()),
                           100.0 * float(best1.mean()), 100.0 * float(best5.mean()), len(moments))


def vote_top1(segments: np.ndarray, *, weight_by_first: bool) -> np.ndarray:
    """CPL*'s vote-based choice among ranked ``(N, K, 2)`` proposals: the index of each row's winner.

    Proposal ``i`` scores ``sum_j IoU(p_i, p_j) * c_j`` with ``c_j = IoU(p_j, p_0)`` (``weight_by_first``, CPL's
    Charades setting) or 1 (its ActivityNet setting); the first of equal scores wins.
    """
    segments = np.asarray(segments, dtype=np.float64)
    pairwise = segment_iou(segments[:, :, None, :], segments[:, None, :, :])  # (N, K, K)
    weight = pairwise[:, 0, :] if weight_by_first else np.ones(segments.shape[:2])
    return np.argmax((pairwise * weight[:, None, :]).sum(axis=2), axis=1)


# ------------------------------------------------------------------------------------------ result files


@dataclass(frozen=True)
class GroundingPrediction:
    query: int
    video: str
    segments: np.ndarray  # (k, 2) float64 seconds, best first
    scores: np.ndarray  # (k,) float64, non-increasing


def grounding_results_json(predictions: Sequence[GroundingPrediction]) -> dict:
    """The result-file dictionary of ``predictions`` (refuses non-finite values)."""
    results = []
    for p in predictions:
        seg, score = np.asarray(p.segments, dtype=np.float64), np.asarray(p.scores, dtype=np.float64)
        if seg.ndim != 2 or seg.shape[1] != 2 or len(seg) != len(score) or len(seg) == 0:
            raise WtalInputError(f"query {p.query}: need k >= 1 segments (k, 2) and k scores, got {seg.shape} and "
                                 f"{score.shape}", video=p.video, fix="pass matching segments and scores")
        if not (np.isfinite(seg).all() and np.isfinite(score).all()):
            raise WtalInputError(f"query {p.query}: refusing to write non-finite segments or scores", video=p.video,
                                 fix="remove or repair predictions with NaN/infinite values")
        results.append({"query": int(p.query), "video": p.video, "segments": seg.tolist(), "scores": score.tolist()})
    return {"task": "grounding", "results": results}


def write_grounding_results(path: str | Path, predictions: Sequence[GroundingPrediction]) -> Path:
    """Write a grounding result file atomically."""
    return write_json_atomic(path, grounding_results_json(predictions))


def read_grounding_results(path: str | Path) -> list[GroundingPrediction]:
    """Read and validate a grounding result file; each query's segments come back ranked by score."""
    path = Path(path)
    data = read_json_file(path, missing="result file not found", missing_fix="check the --pred path",
                          fix=RESULTS_FIX)
    if not isinstance(data, dict) or data.get("task") != "grounding" or not isinstance(data.get("results"), list):
        raise WtalInputError('not a grounding result file (needs "task": "grounding" and a "results" list)',
                             path=path, fix=RESULTS_FIX)
    out, seen = [], set()
    for i, entry in enumerate(data["results"]):
        p = _parse_prediction(entry, i, path)
        if p.query in seen:
            raise WtalInputError(f"result {i}: query {p.query} appears twice", path=path, video=p.video,
                                 fix="write one entry per query")
        seen.add(p.query)
        out.append(p)
    return out


def _parse_prediction(entry, index: int, path: Path) -> GroundingPrediction:
    where = f"result {index}"
    if not isinstance(entry, dict) or not {"query", "video", "segments", "scores"} <= entry.keys():
        raise WtalInputError(f"{where} lacks query, video, segments or scores", path=path, fix=RESULTS_FIX)
    query, video = entry["query"], entry["video"]
    if not isinstance(query, int) or isinstance(query, bool) or query < 0 or not isinstance(video, str):
        raise WtalInputError(f"{where}: query {query!r} is not a non-negative integer or video {video!r} not a "
                             "string", path=path, fix=RESULTS_FIX)
    try:
        seg = np.asarray(entry["segments"], dtype=np.float64)
        score = np.asarray(entry["scores"], dtype=np.float64)
    except (TypeError, ValueError):
        seg = score = np.empty(0)
    if seg.ndim != 2 or seg.shape[1:] != (2,) or score.shape != (len(seg),) or len(seg) == 0:
        raise WtalInputError(f"{where} (query {query}): segments must be k >= 1 pairs [start, end] with k scores",
                             path=path, video=video, fix=RESULTS_FIX)
    if not (np.isfinite(seg).all() and np.isfinite(score).all()):
        raise WtalInputError(f"{where} (query {query}): non-finite segment or score", path=path, video=video,
                             fix="write finite numbers (no NaN or infinity)")
    if (seg[:, 1] < seg[:, 0]).any():
        raise WtalInputError(f"{where} (query {query}): a segment ends before it starts", path=path, video=video,
                             fix="write segments as [start_s, end_s] with end >= start")
    order = np.argsort(-score, kind="stable")
    return GroundingPrediction(query, video, seg[order], score[order])


# ------------------------------------------------------------------------------------------ evaluation


def evaluate_grounding(predictions: Sequence[GroundingPrediction], queries: QuerySet,
                       thresholds: Sequence[float] = GROUNDING_THRESHOLDS) -> GroundingReport:
    """Evaluate predictions (seconds) against annotated queries: one prediction per query, same video."""
    fractions, counts = prediction_fractions(predictions, queries)
    durations = np.array([q.duration for q in queries], dtype=np.float64)
    moments = seconds_to_fraction(queries.moments(), durations[:, None])
    return grounding_recall(fractions, counts, moments, thresholds)


def prediction_fractions(predictions: Sequence[GroundingPrediction],
                         queries: QuerySet) -> tuple[np.ndarray, np.ndarray]:
    """The ranked segments of ``predictions`` in the order of ``queries`` as fractions of the duration clipped to
    [0, 1] (``(N, k, 2)``, NaN-padded, at most five) and their counts; one prediction per query, same video."""
    by_query = {p.query: p for p in predictions}
    missing = [q.id for q in queries if q.id not in by_query]
    if missing:
        raise WtalInputError(f"{len(missing)} of {len(queries)} queries have no prediction (first: query "
                             f"{missing[0]})", path=queries.source, fix="predict every query of the annotation file")
    extra = sorted(set(by_query) - {q.id for q in queries})
    if extra:
        raise WtalInputError(f"{len(extra)} predictions are for queries not in the annotations (first: query "
                             f"{extra[0]})", path=queries.source, fix="evaluate against the file that was predicted")
    for q in queries:
        if by_query[q.id].video != q.video:
            raise WtalInputError(f"query {q.id} is about video {q.video!r} but its prediction names "
                                 f"{by_query[q.id].video!r}", path=queries.source, video=q.video,
                                 fix="evaluate against the file that was predicted")
    segments, counts = pad_segments([by_query[q.id].segments for q in queries])
    durations = np.array([q.duration for q in queries], dtype=np.float64)
    return np.clip(seconds_to_fraction(segments, durations[:, None, None]), 0.0, 1.0), counts


def pad_segments(ranked: Sequence[np.ndarray], limit: int = TOP_N) -> tuple[np.ndarray, np.ndarray]:
    """Ragged ``(k_i, 2)`` lists -> ``(N, min(max k_i, limit), 2)`` (NaN-padded) and the counts (capped)."""
    counts = np.array([min(len(s), limit) for s in ranked], dtype=np.int64)
    out = np.full((len(ranked), int(counts.max(initial=1)), 2), np.nan)
    for i, (s, n) in enumerate(zip(ranked, counts, strict=True)):
        out[i, :n] = np.asarray(s, dtype=np.float64)[:n]
    return out, counts


def predictions_from_fractions(queries: QuerySet, segments: np.ndarray,
                               scores: np.ndarray | None = None) -> list[GroundingPrediction]:
    """Ranked ``(N, K, 2)`` fraction segments (and ``(N, K)`` scores; default ``K, K-1, ...``) -> predictions in
    seconds for ``queries``, in order."""
    segments = np.asarray(segments, dtype=np.float64)
    if scores is None:
        scores = np.broadcast_to(np.arange(segments.shape[1], 0, -1, dtype=np.float64), segments.shape[:2])
    durations = np.array([q.duration for q in queries], dtype=np.float64)
    seconds = fraction_to_seconds(segments, durations[:, None, None])
    return [GroundingPrediction(q.id, q.video, seconds[i], np.asarray(scores[i], dtype=np.float64))
            for i, q in enumerate(queries)]


# ------------------------------------------------------------------------------------------ baselines


def whole_video_segments(num_queries: int) -> np.ndarray:
    """``(N, 1, 2)``: every query answered with the whole video."""
    return np.tile(np.array([[[0.0, 1.0]]]), (num_queries, 1, 1))


def random_segments(num_queries: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``(N, k, 2)`` segments with start and end the sorted pair of two uniform draws in [0, 1]."""
    return np.sort(rng.random((num_queries, k, 2)), axis=2)


def permute_within(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random permutation ``perm`` of ``range(len(groups))`` with ``groups[perm[i]] == groups[i]``: row ``i``
    takes the row of a random member of its own group (itself included). With every query's video as its group,
    ``segments[perm]`` scores each query with the prediction for a sentence of the same video: a control for
    whether a model's ranking depends on the sentence; with one group, on the query at all."""
    groups = np.asarray(groups)
    by_group = np.lexsort((np.arange(len(groups)), groups))  # each group's rows in order
    shuffled = np.lexsort((rng.random(len(groups)), groups))  # each group's rows in random order
    perm = np.empty(len(groups), dtype=np.int64)
    perm[by_group] = shuffled
    return perm


def fit_prior_segments(moments: np.ndarray, k: int = TOP_N, grid: float = 0.01) -> np.ndarray:
    """``(k, 2)`` fixed-length segments at the most common positions of ``moments`` ``(M, 2)`` (fractions).

    The length is the median moment length; starts lie on a ``grid`` in ``[0, 1 - length]``. The first segment
    has the largest mean IoU with the moments; each next one adds the most to the mean of the best IoU over the
    chosen ones (so the five cover different positions). Fit it on moments a method may use for model
    selection (the validation part), never on test moments.
    """
    moments = np.asarray(moments, dtype=np.float64)
    if len(moments) == 0:
        raise WtalInputError("no moments to fit the prior on", fix="fit on a non-empty validation part")
    length = float(np.median(moments[:, 1] - moments[:, 0]))
    starts = np.linspace(0.0, 1.0 - length, int(math.floor((1.0 - length) / grid + 1e-9)) + 1)
    candidates = np.stack([starts, starts + length], axis=1)
    iou = segment_iou(candidates[:, None, :], moments[None, :, :])  # (C, M)
    chosen, best = [], np.zeros(len(moments))
    for _ in range(min(k, len(candidates))):
        gain = np.maximum(iou, best[None, :]).mean(axis=1)
        gain[chosen] = -np.inf
        c = int(np.argmax(gain))
        chosen.append(c)
        best = np.maximum(best, iou[c])
    return candidates[chosen]


# ------------------------------------------------------------------------------------------ wtal eval


def grounding_eval_command(pred: str, gt: str, thresholds: Sequence[float] | None = None,
                           json_out: str | None = None, durations: Mapping[str, float] | None = None) -> int:
    """``wtal eval --task grounding``: print R@1/R@5/mIoU of ``pred`` against ``gt``; write ``json_out``."""
    from wtal.data.grounding import read_queries

    queries = read_queries(gt, durations)
    predictions = read_grounding_results(pred)
    report = evaluate_grounding(predictions, queries, thresholds or GROUNDING_THRESHOLDS)
    print(f"sentence grounding, CPL recall (IoU >= threshold, top-5 without NMS)\n  pred: {pred}\n  gt:   {gt} "
          f"({len(queries)} queries, {len(queries.videos())} videos, {queries.clipped} moments clipped to the video)")
    print(report.table())
    if json_out:
        write_json_atomic(Path(json_out), report.to_json(), indent=1)
    return 0
