"""Compatibility mode: the snippet-grid detection mAP of the W-TALC family (RSKP, GauFuse, MMSD).

Use it only to compare with numbers published from those code bases; :func:`detection_map` is the standard.
It reproduces their evaluator (``getActLoc`` and ``getLocMAP`` in ``detectionMAP.py``), including its quirks:

- everything is compared as integer snippet sets: ground truth ``[round(ts·r), round(te·r))`` with Python 3
  ``round`` (half to even, so e.g. ``[1.0, 1.5]`` s becomes an empty range at r = 25/16 and can never be
  matched, yet still counts as a positive), detections ``[int(s·r), int(e·r))`` (truncation);
- IoU = ``|P ∩ G| / |P ∪ G|`` as one ``int / int`` division, matched when ``>= threshold``;
- each detection takes the remaining ground truth of highest IoU in its video, ties to the *first* in list
  order (the official ActivityNet code follows its tIoU sort);
- detection order: per class, the detections in row order (the result file's order, see
  :mod:`wtal.evaluation.detection`) are sorted with ``np.argsort(-score)``, those overlapping Ambiguous
  segments dropped, and the rest sorted again with ``np.argsort(-score)``, as the reference does; numpy's
  default sort is not stable, so equal scores come in whatever order numpy gives for those exact arrays.
  The reference gathers a class's detections video by video in test-loader order; a result file in that
  order gives its tie order;
- **Ambiguous filtering**: before matching, every detection whose snippet range overlaps an "Ambiguous"
  segment of its video (any class) is dropped, which removes false positives;
- detections on videos without ground truth are dropped (not counted as false positives);
- AP from the same interpolated precision envelope; mAP = mean over the classes with ground truth.

Choices where the reference crashes: a detection range and a ground-truth range that are both empty have
IoU 0 (the reference divides by zero). Detection boundaries within 1e-6 snippets of an integer are snapped to
it before truncation, so integer snippet boundaries survive the round trip through seconds.

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
    class_visit_order,
    evaluated_classes,
    greedy_match,
    group_keys,
    interval_iou,
    video_ids,
)
from wtal.evaluation.results import result_file_order

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
    pred = pred.select(result_file_order(pred.video))
    eval_classes, gt_cls, det_cls = evaluated_classes(gt, pred)
    gt_vid, det_vid = video_ids(gt.video, pred.video)
    det_start, det_end = detection_snippet_range(pred.start, pred.end, snippets_per_second)
    det_cls = np.where(det_vid >= 0, det_cls, -1)  # the reference never sees videos without ground truth
    dropped = np.zeros(len(pred), dtype=bool)
    if ambiguous:
        dropped = ambiguous_mask(pred.video, det_start, det_end, ambiguous, snippets_per_second)
    neg_score = -np.asarray(pred.score, dtype=np.float64)

    def reference_order(rows: np.ndarray) -> np.ndarray:
        # Sorted by -score (numpy's default sort), Ambiguous detections dropped, sorted by -score again.
        rows = rows[np.argsort(neg_score[rows])]
        rows = rows[~dropped[rows]]
        return rows[np.argsort(neg_score[rows])]

    visit = class_visit_order(det_cls, len(eval_classes), reference_order)
    det_cls, det_vid, det_start, det_end = det_cls[visit], det_vid[visit], det_start[visit], det_end[visit]
    gt_start, gt_end = gt_snippet_range(gt.start, gt.end, snippets_per_second)

    def snippet_iou(d: np.ndarray, g: np.ndarray) -> np.ndarray:
        # Empty ranges have length 0, not a negative one.
        ds, de = det_start[d], np.maximum(det_end[d], det_start[d])
        gs, ge = gt_start[g], np.maximum(gt_end[g], gt_start[g])
        return interval_iou(ds, de, gs, ge)

    tp = greedy_match(group_keys(det_cls, det_vid, gt_vid), group_keys(gt_cls, gt_vid, gt_vid), snippet_iou, thr,
                      n_gt=len(gt), tie_order=lambda d, g: g)  # equal IoUs: the first ground truth in list order
    npos = np.bincount(gt_cls, minlength=len(eval_classes))
    ap = class_aps(tp, det_cls, npos)
    override = None
    if empty_class_zero and np.any(np.bincount(det_cls, minlength=len(eval_classes)) == 0):
        override = np.zeros(len(thr))
    return build_report(thr, ap, [gt.classes[c] for c in eval_classes], map_override=override)
