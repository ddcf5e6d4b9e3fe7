"""W-TALC compatibility evaluator: hand-computed quirks, and a cross-check against a plain set-based port of
the reference evaluator (``getActLoc`` sorting and Ambiguous filter, then ``getLocMAP``)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import grouped_by_video, voc_interpolated_ap
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wtal.data.segments import SegmentTable
from wtal.data.timebase import snippets_to_seconds
from wtal.evaluation.detection import detection_map
from wtal.evaluation.wtalc import detection_snippet_range, gt_snippet_range, wtalc_detection_map

R = 25 / 16  # I3D snippets per second


def reference_wtalc_map(gt_rows, pred_rows, factor, thresholds, ambiguous=None, empty_class_zero=False):
    """gt_rows: (video, label, start_s, end_s); pred_rows: (video, label, start_snippet, end_snippet, score).

    The detections are taken in result-file order (grouped by video in order of first appearance).
    """
    gt_videos = {g[0] for g in gt_rows}
    pred_rows = grouped_by_video(pred_rows)
    classes = sorted({g[1] for g in gt_rows})
    result = []
    for th in thresholds:
        aps, some_class_empty = [], False
        for c in classes:
            preds = [p for p in pred_rows if p[1] == c and p[0] in gt_videos]
            preds = by_decreasing_score(preds)  # getActLoc: np.argsort(-score), numpy's default sort
            if ambiguous:
                def overlaps_ambiguous(p):
                    P = set(range(int(p[2]), int(p[3])))
                    return any(P & set(range(round(a * factor), round(b * factor)))
                               for a, b in ambiguous.get(p[0], []))
                preds = [p for p in preds if not overlaps_ambiguous(p)]
            preds = by_decreasing_score(preds)  # getLocMAP sorts again
            some_class_empty |= not preds
            remaining = [[g[0], g[2], g[3]] for g in gt_rows if g[1] == c]
            npos = len(remaining)
            tp = []
            for p in preds:
                P = set(range(int(p[2]), int(p[3])))
                best_j, best_iou = None, 0.0
                for j, (video, ts, te) in enumerate(remaining):
                    if video != p[0]:
                        continue
                    G = set(range(round(ts * factor), round(te * factor)))
                    union = P | G
                    iou = len(P & G) / len(union) if union else 0.0
                    if iou >= th and iou > best_iou:  # strict: the first of equal IoUs wins
                        best_j, best_iou = j, iou
                if best_j is None:
                    tp.append(0)
                else:
                    del remaining[best_j]
                    tp.append(1)
            aps.append(voc_interpolated_ap(tp, npos))
        result.append(0.0 if (empty_class_zero and some_class_empty) else 100.0 * float(np.mean(aps)))
    return result


def by_decreasing_score(preds: list) -> list:
    return [preds[i] for i in np.argsort(-np.array([p[4] for p in preds], dtype=np.float64))]


def seconds_table(pred_rows, classes, factor=R) -> SegmentTable:
    """Detections given in snippets -> table in seconds (as a localizer exports them)."""
    return SegmentTable.from_rows(classes, [(v, c, float(snippets_to_seconds(s, factor)),
                                             float(snippets_to_seconds(e, factor)), q)
                                            for v, c, s, e, q in pred_rows])


def gt_table(rows, classes) -> SegmentTable:
    return SegmentTable.from_rows(classes, [(*r, 1.0) for r in rows])


# --- hand-computed quirks (snippets_per_second = 1 so seconds are snippets) ------------------------------

def test_round_half_even_ground_truth():
    # GT [2.5, 6.5] -> [2, 6) with half-to-even (half-up would give [3, 7), IoU 0.6 with the detection)
    gt = gt_table([("v", "x", 2.5, 6.5)], ["x"])
    pred = SegmentTable.from_rows(["x"], [("v", "x", 2.0, 6.0, 1.0)])
    assert wtalc_detection_map(gt, pred, 1.0, [0.7]).mAP == pytest.approx([100.0])
    start, end = gt_snippet_range(np.array([0.5, 1.5, 2.5]), np.array([3.5, 4.5, 5.5]), 1.0)
    assert start.tolist() == [0, 2, 2] and end.tolist() == [4, 4, 6]


def test_detection_boundaries_are_truncated():
    gt = gt_table([("v", "x", 2.0, 6.0)], ["x"])
    pred = SegmentTable.from_rows(["x"], [("v", "x", 2.9, 6.9, 1.0)])  # -> [2, 6): IoU 1
    assert wtalc_detection_map(gt, pred, 1.0, [0.9]).mAP == pytest.approx([100.0])
    assert detection_map(gt, pred, [0.9]).mAP == pytest.approx([0.0])  # continuous tIoU 3.1/4.9


def test_empty_ground_truth_range_counts_but_never_matches():
    # [1.0, 1.5] s -> [round(1.5625), round(2.34375)) = [2, 2): empty at 25/16 snippets per second.
    gt = gt_table([("v", "x", 1.0, 1.5), ("v", "x", 3.2, 6.4)], ["x"])
    pred = SegmentTable.from_rows(["x"], [("v", "x", 3.2, 6.4, 0.9), ("v", "x", 1.0, 1.5, 0.8)])
    assert wtalc_detection_map(gt, pred, R, [0.5]).mAP == pytest.approx([50.0])
    assert detection_map(gt, pred, [0.5]).mAP == pytest.approx([100.0])


def test_equal_iou_first_ground_truth_wins():
    # p1 [2,12) has IoU 8/12 with both g1 [0,10) and g2 [4,14); W-TALC takes g1, so p2 [0,8) only has g2
    # (IoU 4/14) -> TP, FP -> AP 0.5. (The official evaluator takes g2 and scores 100.)
    gt = gt_table([("v", "x", 0, 10), ("v", "x", 4, 14)], ["x"])
    pred = SegmentTable.from_rows(["x"], [("v", "x", 2, 12, 0.9), ("v", "x", 0, 8, 0.8)])
    assert wtalc_detection_map(gt, pred, 1.0, [0.5]).mAP == pytest.approx([50.0])
    assert detection_map(gt, pred, [0.5]).mAP == pytest.approx([100.0])


def test_integer_threshold_ties_are_accepted():
    gt = gt_table([("v", "x", 0, 10)], ["x"])
    pred = SegmentTable.from_rows(["x"], [("v", "x", 0, 3, 1.0)])  # IoU exactly 3/10
    assert wtalc_detection_map(gt, pred, 1.0, [0.3, 0.4]).mAP == pytest.approx([100.0, 0.0])


def test_equal_scores_follow_the_reference_numpy_sorts():
    # the reference sorts with np.argsort(-score) twice (numpy's default sort); row 0 is the TP, row 1 the FP
    gt = gt_table([("v", "x", 0, 10)], ["x"])
    pred = SegmentTable.from_rows(["x"], [("v", "x", 0, 10, 0.5), ("v", "x", 50, 60, 0.5)])
    neg = -np.array([0.5, 0.5])
    order = np.argsort(neg)
    first = order[np.argsort(neg[order])][0]
    assert wtalc_detection_map(gt, pred, 1.0, [0.5]).mAP == pytest.approx([100.0 if first == 0 else 50.0])


def test_ambiguous_filter_any_class_and_only_on_overlap():
    gt = gt_table([("v", "x", 0, 10), ("w", "y", 0, 10)], ["x", "y"])
    pred = SegmentTable.from_rows(["x", "y"], [
        ("v", "x", 20, 30, 0.9),  # FP that overlaps the Ambiguous segment [25, 40) of v -> dropped
        ("v", "x", 0, 10, 0.8),
        ("v", "x", 40, 45, 0.7),  # touches [25, 40) only at its end: kept, FP
        ("w", "y", 0, 10, 0.6),
        ("w", "y", 30, 35, 0.95),  # Ambiguous segments of v do not affect w
    ])
    ambiguous = {"v": [(25.0, 40.0)]}
    without = wtalc_detection_map(gt, pred, 1.0, [0.5])
    with_filter = wtalc_detection_map(gt, pred, 1.0, [0.5], ambiguous=ambiguous)
    # x: without: FP TP FP -> 0.5; with: TP FP -> 1.   y: FP TP -> 0.5 in both
    assert without.ap_per_class[0] == pytest.approx([50.0, 50.0])
    assert with_filter.ap_per_class[0] == pytest.approx([100.0, 50.0])


def test_videos_without_ground_truth_are_dropped():
    gt = gt_table([("v", "x", 0, 10)], ["x"])
    pred = SegmentTable.from_rows(["x"], [("elsewhere", "x", 0, 10, 0.9), ("v", "x", 0, 10, 0.8)])
    assert wtalc_detection_map(gt, pred, 1.0, [0.5]).mAP == pytest.approx([100.0])
    assert detection_map(gt, pred, [0.5]).mAP == pytest.approx([50.0])


def test_empty_class_zero_flag_reproduces_return_zero_bug():
    gt = gt_table([("v", "x", 0, 10), ("v", "y", 20, 30)], ["x", "y"])
    pred = SegmentTable.from_rows(["x", "y"], [("v", "x", 0, 10, 0.9)])
    assert wtalc_detection_map(gt, pred, 1.0, [0.5]).mAP == pytest.approx([50.0])
    buggy = wtalc_detection_map(gt, pred, 1.0, [0.5, 0.7], empty_class_zero=True)
    assert buggy.mAP == [0.0, 0.0] and buggy.ap_per_class[:, 0] == pytest.approx([100.0, 100.0])
    # a class emptied by the Ambiguous filter also triggers it
    pred2 = SegmentTable.from_rows(["x", "y"], [("v", "x", 0, 10, 0.9), ("v", "y", 20, 30, 0.9)])
    assert wtalc_detection_map(gt, pred2, 1.0, [0.5], ambiguous={"v": [(25, 26)]},
                               empty_class_zero=True).mAP == [0.0]


def test_seconds_round_trip_keeps_integer_snippet_boundaries():
    # k / r * r can land just below k; the boundary must still truncate to k, and k + 0.5 to k
    k = np.arange(0, 3000)
    start, end = detection_snippet_range(snippets_to_seconds(k, R), snippets_to_seconds(k + 0.5, R), R)
    assert np.array_equal(start, k) and np.array_equal(end, k)


# --- cross-check against the plain loop version -------------------------------------------------------------

CLASSES = ["x", "y", "z"]
VIDEOS = ["a", "b", "c"]


@st.composite
def gt_row(draw):
    start = draw(st.integers(0, 60)) / 10  # THUMOS-like 0.1 s grid, many values land on .5 snippets
    return draw(st.sampled_from(VIDEOS)), draw(st.sampled_from(CLASSES)), start, start + draw(
        st.integers(0, 40)) / 10


@st.composite
def pred_row(draw):
    start = draw(st.integers(0, 20)) / 2  # snippets, half-integers are truncated
    end = start + draw(st.integers(0, 12)) / 2
    return (draw(st.sampled_from([*VIDEOS, "nogt"])), draw(st.sampled_from(CLASSES)), start, end,
            draw(st.sampled_from([0.2, 0.5, 0.7])))


ambiguous_st = st.dictionaries(st.sampled_from(VIDEOS),
                               st.lists(st.tuples(st.integers(0, 60), st.integers(0, 20)).map(
                                   lambda t: (t[0] / 10, (t[0] + t[1]) / 10)), max_size=2), max_size=2)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(gt_row(), min_size=1, max_size=10), st.lists(pred_row(), max_size=20),
       st.lists(st.sampled_from([0.1, 0.2, 0.3, 0.5, 0.7, 1.0]), min_size=1, max_size=4), ambiguous_st,
       st.booleans())
def test_matches_plain_reference(gt_rows, pred_rows, thresholds, ambiguous, empty_class_zero):
    rep = wtalc_detection_map(gt_table(gt_rows, CLASSES), seconds_table(pred_rows, CLASSES), R, thresholds,
                              ambiguous=ambiguous, empty_class_zero=empty_class_zero)
    expected = reference_wtalc_map(gt_rows, pred_rows, R, thresholds, ambiguous, empty_class_zero)
    np.testing.assert_allclose(rep.mAP, expected, atol=1e-6)


def test_real_thumos14_snippet_grid_and_cross_check(thumos14_annotations):
    from wtal.data.sources import load_annotations

    ann = load_annotations(thumos14_annotations).subset("test")
    gt = ann.ground_truth()
    start, end = gt_snippet_range(gt.start, gt.end, R)
    assert len(gt) == 3358
    assert int(np.sum(end <= start)) == 17  # 17 test segments become empty on the snippet grid
    assert int(np.sum(end - start == 1)) == 229

    # jittered ground truth as detections on 40 videos, including the Ambiguous ones
    rng = np.random.default_rng(0)
    names = sorted(ann.ambiguous)[:20] + [n for n in ann.names() if n not in ann.ambiguous][:20]
    gt_rows = [r[:4] for r in gt.rows() if r[0] in set(names)]
    pred_rows = []
    for v, c, s, e in gt_rows:
        for _ in range(3):
            a, b = sorted((s * R + rng.normal(0, 2), e * R + rng.normal(0, 2)))
            pred_rows.append((v, c if rng.random() < 0.9 else ann.classes[rng.integers(20)], max(a, 0.0),
                              max(b, 0.0), round(float(rng.random()), 2)))
    thresholds = [0.1, 0.3, 0.5, 0.7]
    rep = wtalc_detection_map(gt_table(gt_rows, ann.classes), seconds_table(pred_rows, ann.classes), R,
                              thresholds, ambiguous=ann.ambiguous)
    expected = reference_wtalc_map(gt_rows, pred_rows, R, thresholds, ann.ambiguous)
    np.testing.assert_allclose(rep.mAP, expected, atol=1e-6)


tight = st.tuples(st.integers(0, 6), st.integers(1, 4)).map(lambda r: ("a", "x", float(r[0]), float(r[0] + r[1])))


@settings(max_examples=150, deadline=None)
@given(st.lists(tight, min_size=1, max_size=6),
       st.lists(st.tuples(tight, st.sampled_from([0.2, 0.8])).map(lambda t: (*t[0], t[1])), max_size=8),
       st.lists(st.sampled_from([0.1, 0.25, 0.5, 2 / 3, 0.75]), min_size=1, max_size=3))
@example([("a", "x", 0.0, 2.0), ("a", "x", 2.0, 4.0)], [("a", "x", 1.0, 3.0, 0.8), ("a", "x", 0.0, 2.0, 0.2)],
         [0.25])  # equal IoU 1/3 with both ground truths: the choice decides whether the second is a TP
def test_matches_plain_reference_crowded(gt_rows, pred_rows, thresholds):
    # one video, one class, integer snippets (rate 1): equal IoUs between different ground truth are frequent
    rep = wtalc_detection_map(gt_table(gt_rows, ["x"]), seconds_table(pred_rows, ["x"], 1.0), 1.0, thresholds)
    np.testing.assert_allclose(rep.mAP, reference_wtalc_map(gt_rows, pred_rows, 1.0, thresholds), atol=1e-6)


def test_many_ties_beyond_16_per_class_match_the_reference():
    # every distinct score shared by 4 detections, about 100 detections per class in shuffled row order, and
    # an Ambiguous filter between the reference's two sorts
    rng = np.random.default_rng(7)
    gt_rows = [(v, c, float(s) / 10, float(s + rng.integers(10, 60)) / 10)
               for v in VIDEOS for c in CLASSES for s in rng.integers(0, 400, 4)]
    pred_rows = []
    for _ in range(300):
        v, c, s, e = gt_rows[rng.integers(len(gt_rows))]
        a = max(0.0, round(s * R) + float(rng.integers(-2, 3)))
        pred_rows.append((v, c, a, a + float(rng.integers(1, 10))))
    for _ in range(100):
        a = float(rng.integers(0, 60))
        pred_rows.append((str(rng.choice([*VIDEOS, "nogt"])), str(rng.choice(CLASSES)), a, a + 4.0))
    scores = np.repeat(rng.permutation(100) / 100, 4)
    rng.shuffle(scores)
    pred_rows = [(*r, float(q)) for r, q in zip(pred_rows, scores, strict=True)]
    ambiguous = {"a": [(10.0, 14.0), (30.0, 31.0)], "c": [(0.0, 2.0)]}
    thresholds = [0.1, 0.3, 0.5, 0.7]
    rep = wtalc_detection_map(gt_table(gt_rows, CLASSES), seconds_table(pred_rows, CLASSES), R, thresholds,
                              ambiguous=ambiguous)
    np.testing.assert_allclose(rep.mAP, reference_wtalc_map(gt_rows, pred_rows, R, thresholds, ambiguous),
                               atol=1e-9)
    file_rows = grouped_by_video(pred_rows)
    neg = [-np.array([p[4] for p in file_rows if p[1] == c and p[0] != "nogt"]) for c in CLASSES]
    assert any(not np.array_equal(np.argsort(x), np.argsort(x, kind="stable")) for x in neg)
