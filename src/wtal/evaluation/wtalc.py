"""Compatibility mode: the snippet-grid detection mAP of the W-TALC family (RSKP, GauFuse, MMSD).

Use it only to compare with numbers published from those code bases; :func:`detection_map` is the standard.
It reproduces their ``getLocMAP`` evaluator (reference-notes §5.1, §9.5), including its quirks:

- everything is compared as integer snippet sets: ground truth ``[round(ts·r), round(te·r))`` with Python 3
  ``round`` (half to even, so e.g. ``[1.0, 1.5]`` s becomes an empty range at r = 25/16 and can never be
  matched, yet still counts as a positive), detections ``[int(s·r), int(e·r))`` (truncation);
- IoU = ``|P ∩ G| / |P ∪ G|`` as one ``int / int`` division, matched when ``>= threshold``;
- each detection takes the remaining ground truth of highest IoU in its video, ties to the *first* in list
  order (the official ActivityNet code takes the last);
- **Ambiguous filtering**: before matching, every detection whose snippet range overlaps an "Ambiguous"
  segment of its video (any class) is dropped, which removes false positives;
- detections on videos without ground truth are dropped (not counted as false positives);
- AP from the same interpolated precision envelope; mAP = mean over the classes with ground truth.

Choices where the reference is unspecified or crashes: equal scores keep table order (the reference uses an
unstable quicksort); a detection range and a ground-truth range that are both empty have IoU 0 (the
reference divides by zero). Detection boundaries within 1e-6 snippets of an integer are snapped to it before
truncation, so integer snippet boundaries survive the round trip through seconds.

``empty_class_zero=True`` reproduces the reference's ``return 0`` bug: when any evaluated class has no
detection left (after the Ambiguous filter), the mAP at every threshold is reported as 0. It is off by
default; per-class AP is reported unchanged either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from wtal.data.segments import SegmentTable
from wtal.data.timebase import seconds_to_snippets
from wtal.evaluation.detection import (
    THUMOS14_TIOU,
    DetectionReport,
    build_report,
    check_segments,
    check_thresholds,
    class_aps,
    evaluated_classes,
    greedy_match,
    group_keys,
    interval_iou,
    video_ids,
)

_SNAP = 1e-6  # snippets


def gt_snippet_range(start_s, end_s, snippets_per_second: float) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth seconds -> integer snippet range ``[round(ts·r), round(te·r))``, rounding half to even."""
    return (np.rint(seconds_to_snippets(start_s, snippets_per_second)).astype(np.int64),
            np.rint(seconds_to_snippets(end_s, snippets_per_second)).astype(np.int64))


def detection_snippet_range(start_s, end_s, snippets_per_second: float) -> tuple[np.ndarray, np.ndarray]:
    """Detection seconds -> integer snippet range ``[int(s·r), int(e·r))`` (truncation toward zero)."""
    def truncate(x: np.ndarray) -> np.ndarray:
        nearest = np.rint(x)
        snapped = np.where(np.abs(x - nearest) < _SNAP, nearest, x)
        return np.trunc(snapped).astype(np.int64)
    return (truncate(seconds_to_snippets(start_s, snippets_per_second)),
            truncate(seconds_to_snippets(end_s, snippets_per_second)))


def ambiguous_mask(video: np.ndarray, start: np.ndarray, end: np.ndarray,
                   ambiguous: Mapping[str, Sequence[tuple[float, float]]],
                   snippets_per_second: float) -> np.ndarray:
    """Detections (snippet ranges) sharing at least one snippet with an Ambiguous segment of their video."""
    hit = np.zeros(len(video), dtype=bool)
    flagged = np.flatnonzero(np.fromiter((v in ambiguous for v in video), dtype=bool, count=len(video)))
    for name in dict.fromkeys(video[flagged].tolist()):
        segments = ambiguous[name]
        if not len(segments):
            continue
        rows = flagged[video[flagged] == name]
        seg = np.asarray(segments, dtype=np.float64).reshape(-1, 2)
        a_start, a_end = gt_snippet_range(seg[:, 0], seg[:, 1], snippets_per_second)
        inter = np.minimum(end[rows, None], a_end[None, :]) - np.maximum(start[rows, None], a_start[None, :])
        hit[rows] = (inter > 0).any(axis=1)
    return hit


def wtalc_detection_map(gt: SegmentTable, pred: SegmentTable, snippets_per_second: float,
                        thresholds: Sequence[float] = THUMOS14_TIOU,
                        ambiguous: Mapping[str, Sequence[tuple[float, float]]] | None = None,
                        empty_class_zero: bool = False) -> DetectionReport:
    """Detection mAP as computed by the W-TALC-family evaluator (see the module docstring).

    ``gt`` and ``pred`` are in seconds and are converted to snippets at ``snippets_per_second``;
    ``ambiguous`` maps a video to its Ambiguous segments in seconds.
    """
    thr = check_thresholds(thresholds)
    check_segments(gt, "ground truth")
    check_segments(pred, "detections")
    eval_classes, gt_cls, det_cls = evaluated_classes(gt, pred)
    gt_vid, det_vid = video_ids(gt.video, pred.video)
    det_start, det_end = detection_snippet_range(pred.start, pred.end, snippets_per_second)
    keep = (det_cls >= 0) & (det_vid >= 0)
    if ambiguous:
        keep &= ~ambiguous_mask(pred.video, det_start, det_end, ambiguous, snippets_per_second)
    det_cls, det_vid = det_cls[keep], det_vid[keep]
    det_start, det_end, det_score = det_start[keep], det_end[keep], pred.score[keep]
    gt_start, gt_end = gt_snippet_range(gt.start, gt.end, snippets_per_second)

    # Decreasing score; equal scores keep table order (the reference's quicksort leaves them unspecified).
    n_det = len(det_cls)
    order = np.lexsort((np.arange(n_det), -det_score, det_cls))
    rank = np.empty(n_det, dtype=np.int64)
    rank[order] = np.arange(n_det)

    def snippet_iou(d: np.ndarray, g: np.ndarray) -> np.ndarray:
        # Empty ranges have length 0, not a negative one.
        ds, de = det_start[d], np.maximum(det_end[d], det_start[d])
        gs, ge = gt_start[g], np.maximum(gt_end[g], gt_start[g])
        return interval_iou(ds, de, gs, ge)

    tp = greedy_match(group_keys(det_cls, det_vid, gt_vid), group_keys(gt_cls, gt_vid, gt_vid), rank,
                      snippet_iou, thr, n_gt=len(gt), later_gt_first=False)
    npos = np.bincount(gt_cls, minlength=len(eval_classes))
    ap = class_aps(tp, order, det_cls, npos)
    override = None
    if empty_class_zero and np.any(np.bincount(det_cls, minlength=len(eval_classes)) == 0):
        override = np.zeros(len(thr))
    return build_report(thr, ap, [gt.classes[c] for c in eval_classes], map_override=override)
