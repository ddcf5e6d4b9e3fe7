"""Detection mAP with official ActivityNet semantics: hand-computed cases, properties, and a cross-check
against a plain port of the official evaluator (its loops, without pandas)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import grouped_by_video, voc_interpolated_ap
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wtal.data.segments import SegmentTable
from wtal.errors import WtalInputError
from wtal.evaluation.detection import ACTIVITYNET_TIOU, THUMOS14_TIOU, DetectionReport, detection_map
from wtal.evaluation.results import read_results, write_results

# --- plain port of the official evaluator (eval_detection.py), pandas replaced by lists ---------------------


def official_segment_iou(target: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """tIoU of one segment with N segments, with the official float operations (0/0 gives NaN)."""
    tt1 = np.maximum(target[0], candidates[:, 0])
    tt2 = np.minimum(target[1], candidates[:, 1])
    inter = (tt2 - tt1).clip(0)
    union = (candidates[:, 1] - candidates[:, 0]) + (target[1] - target[0]) - inter
    with np.errstate(invalid="ignore"):
        return inter.astype(float) / union


def official_class_ap(gts: list, preds: list, thresholds: np.ndarray) -> np.ndarray:
    """compute_average_precision_detection: one class, rows in table order."""
    lock = np.full((len(thresholds), len(gts)), -1)
    scores = np.array([p[4] for p in preds], dtype=np.float64)
    preds = [preds[i] for i in scores.argsort()[::-1]]  # numpy's default sort, as the official code
    by_video: dict[str, list[int]] = {}
    for j, g in enumerate(gts):
        by_video.setdefault(g[0], []).append(j)
    tp = np.zeros((len(thresholds), len(preds)))
    for idx, (video, _, s, e, _) in enumerate(preds):
        if video not in by_video:
            continue  # false positive at every threshold
        index = by_video[video]
        tiou = official_segment_iou(np.array([s, e]), np.array([[gts[j][2], gts[j][3]] for j in index]))
        visit = tiou.argsort()[::-1]
        for t, thr in enumerate(thresholds):
            for jdx in visit:
                if tiou[jdx] < thr:
                    break
                if lock[t, index[jdx]] >= 0:
                    continue
                tp[t, idx] = 1
                lock[t, index[jdx]] = idx
                break
    return np.array([voc_interpolated_ap(row.tolist(), len(gts)) for row in tp])


def reference_anet_map(gt_rows, pred_rows, thresholds) -> tuple[list[float], list[str]]:
    """mAP (percent) per threshold and the evaluated classes (sorted), as the official evaluator computes them
    on the result file written for ``pred_rows``.

    gt_rows: (video, label, start, end); pred_rows: (video, label, start, end, score). Both are read as files:
    grouped by video in order of first appearance; each class's rows keep that order (pandas groupby).
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    gt_rows, pred_rows = grouped_by_video(gt_rows), grouped_by_video(pred_rows)
    classes = sorted({r[1] for r in gt_rows})
    ap = [official_class_ap([r for r in gt_rows if r[1] == c], [r for r in pred_rows if r[1] == c], thresholds)
          for c in classes]
    return list(100.0 * np.mean(ap, axis=0)), classes


def table(rows, classes) -> SegmentTable:
    return SegmentTable.from_rows(classes, [(r[0], r[1], r[2], r[3], r[4] if len(r) > 4 else 1.0) for r in rows])


# --- hand-computed cases ------------------------------------------------------------------------------------

def test_hand_computed_two_thresholds():
    # g1 [0,10], g2 [20,30]; p1 hits g2; p2 [0,4] has tIoU 0.4 with g1; p3 = g1.
    # tIoU 0.3: TP TP FP -> AP 1.   tIoU 0.5: TP FP TP -> prec 1, .5, 2/3 at rec .5, .5, 1 -> AP .5 + .5*2/3.
    gt = table([("v", "x", 0, 10), ("v", "x", 20, 30)], ["x"])
    pred = table([("v", "x", 20, 30, 0.9), ("v", "x", 0, 4, 0.8), ("v", "x", 0, 10, 0.7)], ["x"])
    rep = detection_map(gt, pred, [0.3, 0.5])
    assert rep.mAP == pytest.approx([100.0, 100 * (0.5 + 0.5 * 2 / 3)], abs=1e-9)
    assert rep.average == pytest.approx((100.0 + 100 * (0.5 + 1 / 3)) / 2)
    assert rep.classes == ["x"] and rep.ap_per_class.shape == (2, 1)


def test_equal_scores_follow_numpy_argsort_reversed():
    # Same score: the official order is np.argsort(scores)[::-1] (numpy's default sort). Row 0 is the TP and
    # row 1 the FP: TP first gives AP 1, FP first gives precision 0, 1/2 -> AP 0.5.
    gt = table([("v", "x", 0, 10)], ["x"])
    pred = table([("v", "x", 0, 10, 0.5), ("v", "x", 50, 60, 0.5)], ["x"])
    first = int(np.argsort(np.array([0.5, 0.5]))[::-1][0])
    assert detection_map(gt, pred, [0.5]).mAP == pytest.approx([100.0 if first == 0 else 50.0])
    swapped = table([("v", "x", 50, 60, 0.5), ("v", "x", 0, 10, 0.5)], ["x"])
    assert detection_map(gt, swapped, [0.5]).mAP == pytest.approx([50.0 if first == 0 else 100.0])


def test_equal_tiou_follows_numpy_argsort_reversed():
    # p1 [2,12] has tIoU 8/12 with both g1 [0,10] and g2 [4,14]. The official order np.argsort(tiou)[::-1]
    # decides: taking g2 leaves g1 for p2 [0,8] (tIoU 0.8) -> two TP -> AP 1; taking g1 leaves p2 with g2
    # (tIoU 4/14) -> AP 0.5.
    gt = table([("v", "x", 0, 10), ("v", "x", 4, 14)], ["x"])
    pred = table([("v", "x", 2, 12, 0.9), ("v", "x", 0, 8, 0.8)], ["x"])
    first = int(np.argsort(np.array([8 / 12, 8 / 12]))[::-1][0])
    assert detection_map(gt, pred, [0.5]).mAP == pytest.approx([100.0 if first == 1 else 50.0])


def test_best_tiou_not_first_ground_truth():
    # p1 overlaps g1 with tIoU 0.6 and g2 with 0.9: it takes g2, so p2 (= g1) is a TP as well.
    gt = table([("v", "x", 0, 10), ("v", "x", 5, 15)], ["x"])
    pred = table([("v", "x", 5, 14, 0.9), ("v", "x", 0, 10, 0.8)], ["x"])
    assert detection_map(gt, pred, [0.5]).mAP == pytest.approx([100.0])


def test_outside_videos_and_other_classes_are_false_positives():
    gt = table([("v", "x", 0, 10), ("w", "y", 0, 10)], ["x", "y"])
    pred = table([("elsewhere", "x", 0, 10, 0.9), ("w", "x", 0, 10, 0.8), ("v", "x", 0, 10, 0.7),
                  ("w", "y", 0, 10, 0.6)], ["x", "y"])
    rep = detection_map(gt, pred, [0.5])
    # class x: FP FP TP -> AP 1/3; class y: AP 1
    assert rep.ap_per_class[0] == pytest.approx([100 / 3, 100.0])
    assert rep.mAP == pytest.approx([(100 / 3 + 100) / 2])


def test_class_without_detections_has_ap_zero_and_classes_follow_ground_truth():
    gt = table([("v", "x", 0, 10), ("v", "y", 20, 30)], ["x", "y", "z"])
    pred = table([("v", "x", 0, 10, 0.9)], ["x", "y", "z"])
    rep = detection_map(gt, pred, [0.5])
    assert rep.classes == ["x", "y"]
    assert rep.mAP == pytest.approx([50.0])
    # a detection of 'z' (known, but no ground truth in the subset) is not evaluated
    pred_z = table([("v", "x", 0, 10, 0.9), ("v", "z", 0, 10, 1.0)], ["x", "y", "z"])
    assert detection_map(gt, pred_z, [0.5]).mAP == pytest.approx([50.0])


def test_threshold_equal_to_tiou_matches():
    gt = table([("v", "x", 0.0, 4.0)], ["x"])
    pred = table([("v", "x", 0.0, 2.0, 1.0)], ["x"])  # tIoU exactly 0.5
    assert detection_map(gt, pred, [0.5, 0.6]).mAP == pytest.approx([100.0, 0.0])


def test_thresholds_any_order_and_duplicates():
    gt = table([("v", "x", 0, 10), ("v", "x", 20, 30)], ["x"])
    pred = table([("v", "x", 20, 30, 0.9), ("v", "x", 0, 4, 0.8), ("v", "x", 0, 10, 0.7)], ["x"])
    a = detection_map(gt, pred, [0.5, 0.3, 0.5]).mAP
    b = detection_map(gt, pred, [0.3, 0.5]).mAP
    assert a == pytest.approx([b[1], b[0], b[1]])


def test_report_averages_table_and_json():
    gt = table([("v", "x", 0, 10)], ["x"])
    pred = table([("v", "x", 0, 10, 1.0)], ["x"])
    rep = detection_map(gt, pred)
    assert isinstance(rep, DetectionReport)
    assert rep.thresholds == THUMOS14_TIOU
    assert set(rep.averages) == {"AVG", "AVG(0.1:0.5)", "AVG(0.3:0.7)", "AVG(0.1:0.7)"}
    assert "AVG(0.3:0.7)" in rep.table() and "0.70" in rep.table()
    js = rep.to_json()
    assert js["thresholds"] == THUMOS14_TIOU and js["average"] == pytest.approx(100.0)
    anet = detection_map(gt, pred, ACTIVITYNET_TIOU)
    assert list(anet.averages) == ["AVG"] and len(anet.mAP) == 10
    assert ACTIVITYNET_TIOU == pytest.approx(list(np.linspace(0.5, 0.95, 10)))


def test_thumos_averages_are_over_their_thresholds():
    # tIoU of p is 0.5: mAP 100 at 0.1..0.5, 0 at 0.6, 0.7
    gt = table([("v", "x", 0.0, 4.0)], ["x"])
    rep = detection_map(gt, table([("v", "x", 0.0, 2.0, 1.0)], ["x"]))
    assert rep.averages["AVG(0.1:0.5)"] == pytest.approx(100.0)
    assert rep.averages["AVG(0.3:0.7)"] == pytest.approx(60.0)
    assert rep.averages["AVG(0.1:0.7)"] == pytest.approx(500 / 7)


# --- bad inputs ---------------------------------------------------------------------------------------------

def test_bad_inputs_raise_wtal_input_error():
    gt = table([("v", "x", 0, 10)], ["x"])
    with pytest.raises(WtalInputError, match="not a ground-truth class") as info:
        detection_map(gt, table([("v", "q", 0, 10, 1.0)], ["q"]))
    assert info.value.fix and info.value.video == "v"
    with pytest.raises(WtalInputError, match="score"):
        detection_map(gt, table([("v", "x", 0, 10, float("nan"))], ["x"]))
    with pytest.raises(WtalInputError, match="ends before it starts"):
        detection_map(gt, table([("v", "x", 5, 4, 1.0)], ["x"]))
    with pytest.raises(WtalInputError, match="non-finite segment"):
        detection_map(gt, table([("v", "x", 0, float("inf"), 1.0)], ["x"]))
    for bad in ([], [0.0], [1.5], [float("nan")], ["a"]):
        with pytest.raises(WtalInputError, match="thresholds"):
            detection_map(gt, table([("v", "x", 0, 10, 1.0)], ["x"]), bad)
    with pytest.raises(WtalInputError, match="no segment"):
        detection_map(SegmentTable.empty(["x"]), table([("v", "x", 0, 10, 1.0)], ["x"]))


# --- properties ---------------------------------------------------------------------------------------------

VIDEOS = ["a", "b", "c"]
CLASSES = ["x", "y", "z"]
grid = st.integers(0, 12).map(lambda k: k / 2)  # a half-second grid makes equal tIoUs and exact thresholds
lengths = st.integers(0, 8).map(lambda k: k / 2)


@st.composite
def segment(draw, videos=VIDEOS, scored=False):
    start, length = draw(grid), draw(lengths)
    row = (draw(st.sampled_from(videos)), draw(st.sampled_from(CLASSES)), start, start + length)
    return (*row, draw(st.sampled_from([0.1, 0.5, 0.9, 0.3]))) if scored else row


gt_lists = st.lists(segment(), min_size=1, max_size=12)
pred_lists = st.lists(segment(videos=[*VIDEOS, "outside"], scored=True), max_size=25)
threshold_lists = st.lists(st.sampled_from([0.1, 0.2, 0.25, 0.3, 0.5, 0.6, 2 / 3, 0.75, 1.0]), min_size=1,
                           max_size=5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gt_lists, pred_lists, threshold_lists)
def test_matches_plain_reference(gt_rows, pred_rows, thresholds):
    rep = detection_map(table(gt_rows, CLASSES), table(pred_rows, CLASSES), thresholds)
    expected, classes = reference_anet_map(gt_rows, pred_rows, thresholds)
    assert rep.classes == classes
    np.testing.assert_allclose(rep.mAP, expected, atol=1e-6)


tight = st.tuples(st.just("a"), st.just("x"), st.integers(0, 6), st.integers(1, 4)).map(
    lambda r: (r[0], r[1], float(r[2]), float(r[2] + r[3])))


@settings(max_examples=150, deadline=None)
@given(st.lists(tight, min_size=1, max_size=6),
       st.lists(st.tuples(tight, st.sampled_from([0.2, 0.8])).map(lambda t: (*t[0], t[1])), max_size=8),
       threshold_lists)
@example([("a", "x", 0.0, 2.0), ("a", "x", 2.0, 4.0)], [("a", "x", 1.0, 3.0, 0.8), ("a", "x", 2.0, 4.0, 0.2)],
         [0.25])  # equal tIoU 1/3 with both ground truths: the choice decides whether the second is a TP
def test_matches_plain_reference_crowded(gt_rows, pred_rows, thresholds):
    # one video, one class, a coarse grid: equal tIoUs between different ground truth are frequent
    rep = detection_map(table(gt_rows, ["x"]), table(pred_rows, ["x"]), thresholds)
    np.testing.assert_allclose(rep.mAP, reference_anet_map(gt_rows, pred_rows, thresholds)[0], atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_plain_reference_random(seed):
    rng = np.random.default_rng(seed)
    n_gt, n_pred = 150, 1200
    videos = [f"video_{i}" for i in range(12)]
    classes = [f"c{i}" for i in range(4)]
    gs = rng.uniform(0, 100, n_gt)
    gt_rows = [(videos[rng.integers(12)], classes[rng.integers(4)], s, s + rng.uniform(0.5, 15)) for s in gs]
    pred_rows = []
    for _ in range(n_pred):
        if rng.random() < 0.6:  # jittered copy of a ground truth, sometimes of the wrong class
            v, c, s, e = gt_rows[rng.integers(n_gt)]
            s, e = s + rng.normal(0, 1), e + rng.normal(0, 1)
            s, e = min(s, e), max(s, e)
            c = c if rng.random() < 0.9 else classes[rng.integers(4)]
        else:
            v, c = videos[rng.integers(12)], classes[rng.integers(4)]
            s = rng.uniform(0, 100)
            e = s + rng.uniform(0, 20)
        # rounded scores and boundaries: many ties and repeated segments
        pred_rows.append((v, c, round(s, 1), round(e, 1), round(float(rng.random()), 2)))
    thresholds = [0.1, 0.3, 0.5, 0.7, 0.95]
    rep = detection_map(table(gt_rows, classes), table(pred_rows, classes), thresholds)
    expected, _ = reference_anet_map(gt_rows, pred_rows, thresholds)
    np.testing.assert_allclose(rep.mAP, expected, atol=1e-6)


def tie_heavy_input(seed: int, n_pred: int = 400):
    """Ground truth and detections on a whole-second grid, every distinct score shared by 4 detections.

    One (class, video) group holds 20 overlapping ground-truth segments, so tIoU arrays longer than 16 with
    equal values occur; detections are shifted copies of ground truth plus background, in shuffled row order
    (not grouped by video), more than 16 per class.
    """
    rng = np.random.default_rng(seed)
    classes, videos = ["x", "y", "z"], [f"v{i}" for i in range(5)]
    gt_rows = [("v0", "x", float(s), float(s + 4)) for s in range(0, 40, 2)]
    for v in videos:
        for c in classes:
            gt_rows += [(v, c, float(s), float(s + rng.integers(2, 6))) for s in rng.integers(0, 60, 3)]
    pred_rows = []
    for _ in range(n_pred * 4 // 5):
        v, c, s, e = gt_rows[rng.integers(len(gt_rows))]
        shift = float(rng.integers(-2, 3))
        pred_rows.append((v, c, s + shift, e + shift + float(rng.integers(0, 2))))
    for _ in range(n_pred - len(pred_rows)):
        s = float(rng.integers(0, 60))
        pred_rows.append((str(rng.choice([*videos, "outside"])), str(rng.choice(classes)), s,
                          s + float(rng.integers(0, 6))))
    scores = np.repeat(rng.permutation(n_pred // 4) / (n_pred // 4), 4)
    rng.shuffle(scores)
    pred_rows = [(*r, float(q)) for r, q in zip(pred_rows, scores, strict=True)]
    return gt_rows, [pred_rows[i] for i in rng.permutation(len(pred_rows))], classes


def numpy_reorders_ties(values: np.ndarray) -> bool:
    return not np.array_equal(np.argsort(values), np.argsort(values, kind="stable"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_many_ties_match_the_official_port(seed):
    gt_rows, pred_rows, classes = tie_heavy_input(seed)
    thresholds = [0.1, 0.3, 1 / 3, 0.5, 0.6, 0.7]
    rep = detection_map(table(gt_rows, classes), table(pred_rows, classes), thresholds)
    expected, _ = reference_anet_map(gt_rows, pred_rows, thresholds)
    np.testing.assert_allclose(rep.mAP, expected, atol=1e-9)
    # the input exercises numpy's unstable order for equal scores and for equal tIoUs
    file_rows = grouped_by_video(pred_rows)
    assert any(numpy_reorders_ties(np.array([r[4] for r in file_rows if r[1] == c])) for c in classes)
    crowded = np.array([[s, e] for v, c, s, e in gt_rows if (v, c) == ("v0", "x")])
    assert any(numpy_reorders_ties(official_segment_iou(np.array([s, e]), crowded))
               for v, c, s, e, _ in pred_rows if (v, c) == ("v0", "x"))


def test_a_table_scores_as_its_result_file_and_wtal_eval_as_the_official_code(tmp_path):
    from wtal.cli import main

    gt_rows, pred_rows, classes = tie_heavy_input(3)
    thresholds = [0.1, 0.3, 0.5, 0.7]
    pred = table(pred_rows, classes)
    path = write_results(tmp_path / "pred.json", pred)
    direct = detection_map(table(gt_rows, classes), pred, thresholds).mAP
    assert detection_map(table(gt_rows, classes), read_results(path, classes), thresholds).mAP == direct
    expected, _ = reference_anet_map(gt_rows, pred_rows, thresholds)
    np.testing.assert_allclose(direct, expected, atol=1e-9)

    database = {}
    for v, c, s, e in gt_rows:
        database.setdefault(v, {"subset": "test", "annotations": []})["annotations"].append(
            {"label": c, "segment": [s, e]})
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps({"version": "1.3", "taxonomy": [], "database": database}))
    out = tmp_path / "map.json"
    tiou = ",".join(map(str, thresholds))
    assert main(["eval", "--pred", str(path), "--gt", str(gt_file), "--tiou", tiou, "--json", str(out)]) == 0
    np.testing.assert_allclose(json.loads(out.read_text())["mAP"], expected, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(gt_lists, threshold_lists)
def test_ground_truth_as_predictions_scores_100(gt_rows, thresholds):
    preds = [(*r, 1.0) for r in gt_rows]
    rep = detection_map(table(gt_rows, CLASSES), table(preds, CLASSES), thresholds)
    np.testing.assert_allclose(rep.mAP, 100.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(CLASSES), grid, st.integers(1, 8).map(lambda k: k / 2)),
                min_size=1, max_size=10))
def test_duplicates_are_false_positives(instances):
    # One instance per video; each detection is followed by its duplicate: TP, FP, TP, FP, ...
    gt_rows = [(f"v{i}", c, s, s + n) for i, (c, s, n) in enumerate(instances)]
    preds = []
    for k, row in enumerate(gt_rows):
        preds += [(*row, 100.0 - 2 * k), (*row, 99.0 - 2 * k)]
    rep = detection_map(table(gt_rows, CLASSES), table(preds, CLASSES), [0.5])
    # in each class with n instances, the k-th TP comes at rank 2k-1: AP = mean_k k / (2k - 1)
    expected = []
    for c in sorted({r[1] for r in gt_rows}):
        n = sum(r[1] == c for r in gt_rows)
        expected.append(np.mean([k / (2 * k - 1) for k in range(1, n + 1)]))
    assert rep.mAP[0] == pytest.approx(100 * np.mean(expected), abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(gt_lists, st.lists(st.tuples(segment(), st.integers(0, 20)), max_size=20))
def test_score_order_matters_not_scale(gt_rows, scored):
    preds = [(*r, float(q)) for r, q in scored]
    base = detection_map(table(gt_rows, CLASSES), table(preds, CLASSES), THUMOS14_TIOU).mAP
    for f in (lambda q: 3.0 * q + 7.0, lambda q: float(np.exp(q / 4.0)), lambda q: q / 1000.0):
        changed = [(*r, f(q)) for *r, q in preds]
        np.testing.assert_allclose(detection_map(table(gt_rows, CLASSES), table(changed, CLASSES)).mAP, base,
                                   atol=1e-12)


def test_score_order_changes_result():
    gt = table([("v", "x", 0, 10)], ["x"])
    good_first = table([("v", "x", 0, 10, 0.9), ("v", "x", 30, 40, 0.1)], ["x"])
    bad_first = table([("v", "x", 0, 10, 0.1), ("v", "x", 30, 40, 0.9)], ["x"])
    assert detection_map(gt, good_first, [0.5]).mAP == pytest.approx([100.0])
    assert detection_map(gt, bad_first, [0.5]).mAP == pytest.approx([50.0])


def test_many_thresholds_beyond_one_bit_block():
    rng = np.random.default_rng(3)
    gt_rows = [("v", "x", float(s), float(s) + 5.0) for s in range(0, 200, 10)]
    pred_rows = [("v", "x", float(s), float(s) + float(rng.uniform(1, 8)), float(rng.random()))
                 for s in rng.uniform(0, 200, 300)]
    thresholds = list(np.round(np.linspace(0.01, 1.0, 100), 2))
    rep = detection_map(table(gt_rows, ["x"]), table(pred_rows, ["x"]), thresholds)
    expected, _ = reference_anet_map(gt_rows, pred_rows, thresholds)
    np.testing.assert_allclose(rep.mAP, expected, atol=1e-6)


# --- classification mAP -------------------------------------------------------------------------------------

def test_classification_map_hand_computed():
    from wtal.evaluation.classification import classification_map

    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.2, 0.5], [0.3, 0.3, 0.5], [0.1, 0.4, 0.5]])
    labels = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]])
    # class 0: positives at ranks 1 and 3 -> (1 + 2/3) / 2; class 1: rank 1 -> 1; class 2: no positive, left out
    assert classification_map(scores, labels) == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1) / 2)
    # only the order of scores matters
    assert classification_map(np.exp(3 * scores), labels) == pytest.approx(classification_map(scores, labels))


def test_classification_map_bad_inputs():
    from wtal.evaluation.classification import classification_map

    with pytest.raises(WtalInputError, match="must both be"):
        classification_map(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(WtalInputError, match="NaN"):
        classification_map(np.array([[np.nan, 1.0]]), np.array([[1, 0]]))
    with pytest.raises(WtalInputError, match="0 or 1"):
        classification_map(np.ones((2, 2)), np.full((2, 2), 2))
    with pytest.raises(WtalInputError, match="no class has a positive"):
        classification_map(np.ones((2, 2)), np.zeros((2, 2)))


def test_zero_length_pairs_match_as_in_official_code():
    # official: 0/0 = NaN tIoU, sorted first and never below a threshold -> a match, wherever the points are
    gt = table([("v", "x", 5.0, 5.0), ("v", "x", 0.0, 10.0)], ["x"])
    pred = table([("v", "x", 8.0, 8.0, 0.9), ("v", "x", 0.0, 10.0, 0.8), ("v", "x", 5.0, 5.0, 0.7)], ["x"])
    assert detection_map(gt, pred, [0.5, 0.9]).mAP == pytest.approx([100.0, 100.0])  # (0 rule: 25)


def test_candidate_pairs_chunks_cover_all_pairs_once():
    from wtal.evaluation.detection import candidate_pairs

    rng = np.random.default_rng(0)
    gt_key = rng.integers(0, 5, 40)
    det_key = rng.integers(-1, 6, 60)  # -1: video without ground truth, 5: group without ground truth
    expected = sorted((d, g) for d in range(60) for g in range(40) if det_key[d] >= 0 and det_key[d] == gt_key[g])
    for max_pairs in (1, 7, 10_000):
        got = sorted((int(d), int(g)) for ds, gs in candidate_pairs(det_key, gt_key, max_pairs)
                     for d, g in zip(ds, gs, strict=True))
        assert got == expected


def test_empty_predictions_and_class_lists_matched_by_name():
    gt = table([("v", "x", 0, 10), ("v", "y", 20, 30)], ["x", "y"])
    assert detection_map(gt, SegmentTable.empty(["x", "y"]), [0.5]).mAP == [0.0]
    reordered = table([("v", "y", 20, 30, 1.0)], ["y", "x"])  # label index 0 means 'y' here
    rep = detection_map(gt, reordered, [0.5])
    assert rep.ap_per_class[0] == pytest.approx([0.0, 100.0])
