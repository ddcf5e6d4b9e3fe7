"""Detection mAP with the exact semantics of the official ActivityNet evaluator (``eval_detection.py``).

Per class (the classes that have ground truth in the evaluated subset), detections are taken in decreasing
score order; each one is matched to the unmatched ground truth of highest tIoU in its video, if that tIoU
reaches the threshold, else it is a false positive. AP is the area under the interpolated precision envelope
(VOC 2011), mAP the mean over classes, the average the mean over thresholds.

Order and tie rules, as in the official code (which builds a table of the result file and groups it by
class, keeping row order):

- row order: the result file's order, videos in the order of its ``results`` object and each video's
  detections in list order (as the evaluator's Python 3 ports read it; the Python 2 original iterates its
  dictionaries in hash order). ``wtal eval`` reads files in that order; for a :class:`SegmentTable`
  :func:`detection_map` uses the order of the file :func:`~wtal.evaluation.results.write_results` writes for
  it: rows grouped by video in order of first appearance, table order within a video;
- equal scores: each class's detections are visited in the order ``score.argsort()[::-1]``, computed with
  numpy's default sort on that class's float64 scores in row order, i.e. the official expression itself;
- equal tIoUs: a detection tries the ground truth of its class and video in the order
  ``tiou.argsort()[::-1]`` over their tIoUs, ground truth in file order, likewise computed with numpy;
- numpy's default sort is not stable (an introsort, with SIMD sorting networks on recent x86 CPUs: numpy 2.4
  on an AVX-512 CPU already reorders equal values in arrays of 8 elements), so the order among equal values
  is whatever numpy gives for those exact arrays; results equal the official code run with the same numpy on
  the same kind of CPU;
- a tIoU equal to the threshold matches (``tIoU >= threshold``), compared in float64 seconds;
- detections on videos without ground truth of their class (including videos outside the subset) are false
  positives; the blocked-video list that the official code fetches over the network is not used.

Differences, all on inputs the official code cannot handle: a detection label that is not a ground-truth class
raises :class:`WtalInputError` (official: ``KeyError``); detections of a class in the class list that has no
ground truth in the subset are ignored (official: ``KeyError``).

Reproduced quirk: the tIoU of a zero-length detection and a zero-length ground truth of the same video is
0/0 = NaN in the official code, whose reversed argsort visits NaN first and which never rejects it
(``NaN < thr`` is false), so such a pair always matches, before any other ground truth, wherever the two
points are. It is kept (as tIoU = +inf, and as NaN in the arrays given to the tie sort) so that results stay
identical; ActivityNet 1.2 has 10 zero-length ground-truth segments.

Speed: the greedy matching is sequential only inside one (class, video) group. Candidate (detection, ground
truth) pairs with tIoU >= the smallest threshold are found with vectorised range arithmetic; the greedy loop
then walks only those pairs, once for all thresholds, keeping per ground truth a bit mask of the thresholds at
which it is already matched. The score order costs one numpy sort per class; the official tIoU order is
computed only for detections with equal tIoUs among their candidates (elsewhere the values decide), batched
as one row-wise sort per group size (numpy sorts each row exactly as it sorts that row alone).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from wtal.data.segments import SegmentTable
from wtal.errors import WtalInputError
from wtal.evaluation.results import result_file_order

THUMOS14_TIOU = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
ACTIVITYNET_TIOU = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
THUMOS14_AVERAGES = {"AVG(0.1:0.5)": (0.1, 0.5), "AVG(0.3:0.7)": (0.3, 0.7), "AVG(0.1:0.7)": (0.1, 0.7)}

_MAX_PAIRS_PER_CHUNK = 2_000_000  # bounds the memory of the candidate-pair search
_BITS_PER_BLOCK = 62  # thresholds handled together in one int64 bit mask


@dataclass
class DetectionReport:
    """mAP per threshold and its averages, all in percent.

    ``ap_per_class`` is ``(n_thresholds, n_classes)`` in percent, columns in the order of ``classes`` (the
    evaluated classes: those with ground truth). ``averages`` always holds ``"AVG"`` (mean over all
    thresholds, equal to ``average``) and, when every THUMOS14 threshold 0.1..0.7 is present, the customary
    ``AVG(0.1:0.5)``, ``AVG(0.3:0.7)`` and ``AVG(0.1:0.7)``.
    """

    thresholds: list[float]
    mAP: list[float]
    average: float
    ap_per_class: np.ndarray
    classes: list[str]
    averages: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        """A printable two-column table: tIoU -> mAP, then the averages."""
        width = max([12, *(len(k) for k in self.averages)])
        lines = [f"{'tIoU':<{width}}  mAP (%)"]
        lines += [f"{t:<{width}.2f}  {m:7.2f}" for t, m in zip(self.thresholds, self.mAP, strict=True)]
        lines += [f"{k:<{width}}  {v:7.2f}" for k, v in self.averages.items()]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"thresholds": list(self.thresholds), "mAP": list(self.mAP), "average": self.average,
                "averages": dict(self.averages), "classes": list(self.classes),
                "ap_per_class": np.asarray(self.ap_per_class, dtype=float).tolist()}


def detection_map(gt: SegmentTable, pred: SegmentTable, thresholds: Sequence[float] = THUMOS14_TIOU
                  ) -> DetectionReport:
    """Detection mAP of ``pred`` against ``gt`` (the ground truth of the evaluated subset only).

    Identical to the official ActivityNet evaluator (see the module docstring for the order and tie rules).
    Segments are in seconds; ``pred`` may use a different class list than ``gt``: labels are matched by name.
    """
    thr = check_thresholds(thresholds)
    check_segments(gt, "ground truth")
    check_segments(pred, "detections")
    pred = pred.select(result_file_order(pred.video))
    eval_classes, gt_cls, det_cls = evaluated_classes(gt, pred)
    # Classes without ground truth in the subset are not evaluated; the others in the official visit order.
    score = np.asarray(pred.score, dtype=np.float64)
    visit = class_visit_order(det_cls, len(eval_classes),
                              lambda rows: rows[np.argsort(score[rows])[::-1]])
    det_cls, det_start, det_end = det_cls[visit], pred.start[visit], pred.end[visit]
    gt_vid, det_vid = video_ids(gt.video, pred.video[visit])
    det_key, gt_key = group_keys(det_cls, det_vid, gt_vid), group_keys(gt_cls, gt_vid, gt_vid)

    def tiou(d: np.ndarray, g: np.ndarray, both_empty: float = np.inf) -> np.ndarray:
        return interval_iou(det_start[d], det_end[d], gt.start[g], gt.end[g], both_empty=both_empty)

    def official_tie_order(d: np.ndarray, g: np.ndarray) -> np.ndarray:
        return official_tiou_positions(d, g, det_key, gt_key, lambda dd, gg: tiou(dd, gg, np.nan))

    tp = greedy_match(det_key, gt_key, tiou, thr, n_gt=len(gt), tie_order=official_tie_order)
    npos = np.bincount(gt_cls, minlength=len(eval_classes))
    ap = class_aps(tp, det_cls, npos)
    return build_report(thr, ap, [gt.classes[c] for c in eval_classes])


def official_tiou_positions(det: np.ndarray, gt: np.ndarray, det_key: np.ndarray, gt_key: np.ndarray,
                            tiou_fn) -> np.ndarray:
    """Position of each pair's ground truth in its detection's official visit order.

    The official code visits the ground truth of a detection's (class, video) group in the order
    ``tiou.argsort()[::-1]``, ``tiou`` over the whole group in ground-truth table order (``tiou_fn`` must give
    the official values, NaN for 0/0). Groups of equal size are sorted together, row-wise: numpy sorts each
    row of a 2-D array exactly as it sorts that row on its own.
    """
    gt_sorted = np.argsort(gt_key, kind="stable")  # each group contiguous, in table order
    keys = gt_key[gt_sorted]
    slot = np.empty(len(gt_key), dtype=np.int64)
    slot[gt_sorted] = np.arange(len(gt_key))
    dets, pair_det = np.unique(det, return_inverse=True)
    lo = np.searchsorted(keys, det_key[dets], "left")
    size = np.searchsorted(keys, det_key[dets], "right") - lo
    offset = np.cumsum(size) - size  # each distinct detection's positions, flat
    position = np.empty(int(size.sum()), dtype=np.int64)
    for s in np.unique(size).tolist():
        rows = np.flatnonzero(size == s)
        for part in np.array_split(rows, max(1, len(rows) * s // _MAX_PAIRS_PER_CHUNK)):
            members = gt_sorted[lo[part][:, None] + np.arange(s)]
            values = tiou_fn(np.repeat(dets[part], s), members.ravel()).reshape(len(part), s)
            visit = np.argsort(values, axis=1)[:, ::-1]
            rank = np.empty_like(visit)
            np.put_along_axis(rank, visit, np.broadcast_to(np.arange(s), visit.shape), axis=1)
            position[offset[part][:, None] + np.arange(s)] = rank
    return position[offset[pair_det] + slot[gt] - lo[pair_det]]


# --- shared by both evaluators ---------------------------------------------------------------------------

def check_thresholds(thresholds: Sequence[float]) -> np.ndarray:
    """tIoU thresholds as float64, each in (0, 1]; WtalInputError otherwise."""
    try:
        thr = np.asarray(list(thresholds), dtype=np.float64)
    except (TypeError, ValueError):
        thr = np.array([np.nan])
    if thr.ndim != 1 or len(thr) == 0 or not np.all(np.isfinite(thr)) or np.any(thr <= 0) or np.any(thr > 1):
        raise WtalInputError(f"invalid tIoU thresholds {list(thresholds)!r}",
                             fix="give a non-empty list of numbers in (0, 1], e.g. 0.1,0.3,0.5,0.7")
    return thr


def check_segments(table: SegmentTable, what: str, path=None) -> None:
    """Finite start/end/score, end >= start and labels inside the class list; WtalInputError otherwise."""
    bad = ~(np.isfinite(table.start) & np.isfinite(table.end))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise WtalInputError(f"{what}: non-finite segment [{table.start[i]}, {table.end[i]}]", path=path,
                             video=str(table.video[i]), fix="write finite start and end times in seconds")
    bad = table.end < table.start
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise WtalInputError(f"{what}: segment ends before it starts ([{table.start[i]}, {table.end[i]}])",
                             path=path, video=str(table.video[i]),
                             fix="write segments as [start, end] with end >= start")
    bad = ~np.isfinite(table.score)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise WtalInputError(f"{what}: non-finite score {table.score[i]}", path=path,
                             video=str(table.video[i]), fix="write finite scores (no NaN or infinity)")
    if len(table) and (table.label.min() < 0 or table.label.max() >= len(table.classes)):
        raise WtalInputError(f"{what}: label index outside the class list of {len(table.classes)} classes",
                             path=path, fix="build the table with labels that index its class list")


def evaluated_classes(gt: SegmentTable, pred: SegmentTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The classes with ground truth, and each ground-truth and detection row's index among them (-1: none).

    Returns ``(eval_classes, gt_cls, det_cls)``; ``eval_classes`` index ``gt.classes``, detections are matched
    to them by class name.
    """
    pred_label = labels_in(pred, gt.classes)
    eval_classes = np.unique(gt.label)
    cls_index = np.full(len(gt.classes), -1, dtype=np.int64)
    cls_index[eval_classes] = np.arange(len(eval_classes))
    return eval_classes, cls_index[gt.label], cls_index[pred_label]


def labels_in(pred: SegmentTable, classes: Sequence[str], path=None) -> np.ndarray:
    """``pred``'s labels as indices into ``classes`` (matched by name); WtalInputError for unknown names."""
    index = {c: i for i, c in enumerate(classes)}
    remap = np.array([index.get(c, -1) for c in pred.classes], dtype=np.int64)
    label = remap[pred.label] if len(pred) else np.zeros(0, dtype=np.int64)
    unknown = label < 0
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        name = pred.classes[int(pred.label[i])]
        raise WtalInputError(f"detection label {name!r} is not a ground-truth class", path=path,
                             video=str(pred.video[i]),
                             fix=f"use the class names of the ground truth ({len(classes)} classes, e.g. "
                                 f"{', '.join(map(repr, list(classes)[:3]))}) or drop these detections")
    return label


def video_ids(gt_video: np.ndarray, det_video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer ids of the ground-truth videos; detections on other videos get -1."""
    ids: dict[str, int] = {}
    for v in gt_video:
        ids.setdefault(v, len(ids))
    gt_ids = np.fromiter((ids[v] for v in gt_video), dtype=np.int64, count=len(gt_video))
    det_ids = np.fromiter((ids.get(v, -1) for v in det_video), dtype=np.int64, count=len(det_video))
    return gt_ids, det_ids


def group_keys(cls: np.ndarray, vid: np.ndarray, gt_vid: np.ndarray) -> np.ndarray:
    """One int64 key per (class, video) group; -1 where the video has no ground truth."""
    n_videos = int(gt_vid.max()) + 1 if len(gt_vid) else 1
    return np.where(vid >= 0, cls * n_videos + vid, -1)


def interval_iou(s1: np.ndarray, e1: np.ndarray, s2: np.ndarray, e2: np.ndarray,
                 both_empty: float = 0.0) -> np.ndarray:
    """IoU of intervals ``[s1, e1]`` and ``[s2, e2]`` with the official evaluator's float operations.

    ``inter = max(0, min(e) - max(s))``, ``union = len2 + len1 - inter``; ``both_empty`` where the union is 0
    (both intervals empty). Integer inputs give ``int / int`` rounded once, as the snippet-set IoU of W-TALC.
    """
    inter = np.clip(np.minimum(e1, e2) - np.maximum(s1, s2), 0, None)
    union = (e2 - s2) + (e1 - s1) - inter
    out = np.full(len(inter), both_empty, dtype=np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def candidate_pairs(det_key: np.ndarray, gt_key: np.ndarray,
                    max_pairs: int = _MAX_PAIRS_PER_CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """All (detection, ground truth) index pairs with equal group keys, in chunks of about ``max_pairs``."""
    gt_order = np.argsort(gt_key, kind="stable")
    sorted_keys = gt_key[gt_order]
    lo = np.searchsorted(sorted_keys, det_key, "left")
    counts = np.searchsorted(sorted_keys, det_key, "right") - lo
    counts[det_key < 0] = 0
    ends = np.cumsum(counts)
    first = 0
    while first < len(det_key):
        base = ends[first - 1] if first else 0
        last = max(int(np.searchsorted(ends, base + max_pairs, "right")), first + 1)
        c = counts[first:last]
        det = np.repeat(np.arange(first, last), c)
        offset_in_group = np.arange(len(det)) - np.repeat(ends[first:last] - c - base, c)
        yield det, gt_order[np.repeat(lo[first:last], c) + offset_in_group]
        first = last


def class_visit_order(det_cls: np.ndarray, n_classes: int, order_rows) -> np.ndarray:
    """Detection indices grouped by class (increasing index), each class in its visit order.

    ``det_cls`` is each detection's evaluated class (-1: not evaluated, left out). ``order_rows(rows)`` gets the
    indices of one class's detections in row order and returns them in visit order (it may drop some).
    """
    by_class = np.argsort(det_cls, kind="stable")
    bounds = np.searchsorted(det_cls[by_class], np.arange(n_classes + 1))
    parts = [order_rows(by_class[bounds[c]:bounds[c + 1]]) for c in range(n_classes)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def greedy_match(det_key: np.ndarray, gt_key: np.ndarray, iou_fn, thresholds: np.ndarray, *, n_gt: int,
                 tie_order) -> np.ndarray:
    """Greedy one-to-one matching; returns the true-positive matrix ``(n_thresholds, n_det)`` (bool).

    Detections are processed in index order (give them in visit order); each takes the unmatched ground
    truth of its group with the highest IoU >= threshold. ``iou_fn(det_idx, gt_idx)`` gives the IoU of index
    pairs. Among equal IoUs of one detection the pair with the lowest ``tie_order(det_idx, gt_idx)`` comes
    first; it is called only with the pairs of such ties, which are rare outside synthetic grids.
    """
    n_det = len(det_key)
    unique_thr, thr_pos = np.unique(thresholds, return_inverse=True)
    dets, gts, ious = [], [], []
    for d, g in candidate_pairs(det_key, gt_key):
        iou = iou_fn(d, g)
        ok = iou >= unique_thr[0]
        dets.append(d[ok])
        gts.append(g[ok])
        ious.append(iou[ok])
    det = np.concatenate(dets) if dets else np.zeros(0, np.int64)
    gt = np.concatenate(gts) if gts else np.zeros(0, np.int64)
    iou = np.concatenate(ious) if ious else np.zeros(0)
    # Visit order: detection, then decreasing IoU, then the tie rule among equal IoUs.
    visit = np.lexsort((-iou, det))
    det, gt, iou = det[visit], gt[visit], iou[visit]
    same = (det[1:] == det[:-1]) & (iou[1:] == iou[:-1])
    if same.any():
        tied = np.zeros(len(det), dtype=bool)
        tied[1:] |= same
        tied[:-1] |= same
        key = np.zeros(len(det), dtype=np.int64)
        key[tied] = tie_order(det[tied], gt[tied])
        visit = np.lexsort((key, -iou, det))
        det, gt, iou = det[visit], gt[visit], iou[visit]
    # Number of (sorted, unique) thresholds each pair passes: thresholds t with t <= iou.
    n_pass = np.searchsorted(unique_thr, iou, side="right")

    tp_unique = np.zeros((len(unique_thr), n_det), dtype=bool)
    for block in range(0, len(unique_thr), _BITS_PER_BLOCK):
        n_bits = min(_BITS_PER_BLOCK, len(unique_thr) - block)
        passed = np.clip(n_pass - block, 0, n_bits)
        masks = (np.left_shift(np.int64(1), passed) - 1).tolist()
        tp_bits = _lock_loop(det.tolist(), gt.tolist(), masks, n_det, n_gt, (1 << n_bits) - 1)
        bits = np.arange(n_bits, dtype=np.int64)
        tp_unique[block:block + n_bits] = ((tp_bits[None, :] >> bits[:, None]) & 1).astype(bool)
    return tp_unique[thr_pos]


def _lock_loop(det: list[int], gt: list[int], masks: list[int], n_det: int, n_gt: int,
               full: int) -> np.ndarray:
    """The sequential core, for up to 62 thresholds at once as bit masks.

    Pairs come grouped by detection in visit order, each group sorted by decreasing IoU; ``masks`` marks the
    thresholds each pair passes. Per threshold, a detection walks its pairs: it stops (false positive) at the
    first pair below the threshold, skips ground truth already matched at that threshold, else matches it.
    """
    locked = [0] * n_gt  # per ground truth: thresholds at which it is already matched
    tp = [0] * n_det
    current, searching = -1, 0  # searching: thresholds at which the current detection is still looking
    for d, g, m in zip(det, gt, masks, strict=True):
        if d != current:
            current, searching = d, full
        active = searching & m
        if not active:
            searching = 0
            continue
        take = active & ~locked[g]
        if take:
            locked[g] |= take
            tp[d] |= take
        searching = active & ~take
    return np.array(tp, dtype=np.int64)


def interpolated_ap(tp: np.ndarray, npos: int) -> np.ndarray:
    """AP per row of a true-positive matrix ``(n_thr, n)`` in score order (VOC 2011 precision envelope)."""
    n_thr, n = tp.shape
    if n == 0 or npos == 0:
        return np.zeros(n_thr)
    tp_cum = np.cumsum(tp, axis=1, dtype=np.float64)
    rec = tp_cum / npos
    prec = tp_cum / np.arange(1, n + 1, dtype=np.float64)  # tp_cum + fp_cum
    zeros, ones = np.zeros((n_thr, 1)), np.ones((n_thr, 1))
    mprec = np.hstack([zeros, prec, zeros])
    mrec = np.hstack([zeros, rec, ones])
    envelope = np.maximum.accumulate(mprec[:, ::-1], axis=1)[:, ::-1]
    # Steps where recall does not change contribute exactly 0.
    return np.sum((mrec[:, 1:] - mrec[:, :-1]) * envelope[:, 1:], axis=1)


def class_aps(tp: np.ndarray, det_cls: np.ndarray, npos: np.ndarray) -> np.ndarray:
    """AP ``(n_thr, n_classes)`` from the TP matrix of detections grouped by class, each class in visit order."""
    bounds = np.searchsorted(det_cls, np.arange(len(npos) + 1))
    return np.stack([interpolated_ap(tp[:, bounds[c]:bounds[c + 1]], int(npos[c]))
                     for c in range(len(npos))], axis=1) if len(npos) else np.zeros((tp.shape[0], 0))


def build_report(thresholds: np.ndarray, ap: np.ndarray, classes: list[str],
                 map_override: np.ndarray | None = None) -> DetectionReport:
    """Report from per-class AP (fractions); ``map_override`` replaces the class means (W-TALC quirk)."""
    if ap.shape[1] == 0:
        raise WtalInputError("the ground truth has no segment in the evaluated subset",
                             fix="pass ground truth with at least one segment, or choose another --subset")
    m = 100.0 * ap.mean(axis=1) if map_override is None else np.asarray(map_override, dtype=np.float64)
    m_list = [float(x) for x in m]
    averages = {"AVG": float(np.mean(m))}
    # The customary THUMOS14 averages, over exactly those thresholds, when all seven are present.
    where = [np.flatnonzero(np.isclose(thresholds, t)) for t in THUMOS14_TIOU]
    if all(len(w) for w in where):
        at = {t: m[w[0]] for t, w in zip(THUMOS14_TIOU, where, strict=True)}
        for name, (lo, hi) in THUMOS14_AVERAGES.items():
            averages[name] = float(np.mean([v for t, v in at.items() if lo - 1e-9 <= t <= hi + 1e-9]))
    return DetectionReport(thresholds=[float(t) for t in thresholds], mAP=m_list, average=averages["AVG"],
                           ap_per_class=100.0 * ap, classes=classes, averages=averages)
