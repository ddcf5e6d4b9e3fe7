"""CPL's grounding recall (R@1, R@5, mIoU), grounding result files, baselines and `wtal eval --task grounding`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wtal.cli import main
from wtal.data.grounding import read_grounding_json
from wtal.errors import WtalInputError
from wtal.evaluation.grounding import (
    GroundingPrediction,
    evaluate_grounding,
    fit_prior_segments,
    grounding_recall,
    predictions_from_fractions,
    random_segments,
    read_grounding_results,
    segment_iou,
    vote_top1,
    whole_video_segments,
    write_grounding_results,
)


def _iou_definition(a, b):
    """CPL's IoU written out for two segments (Python floats)."""
    inter = min(a[1], b[1]) - max(a[0], b[0])
    hull = max(a[1], b[1]) - min(a[0], b[0])
    return max((inter + 1e-10) / (hull + 1e-10), 0.0)


def _recall_definition(ranked, moments, thresholds):
    """Per sentence: top-1 IoU and the best IoU of the first five, hit when >= threshold; percentages."""
    r1 = {t: 0 for t in thresholds}
    r5 = {t: 0 for t in thresholds}
    iou1, iou5 = [], []
    for segments, gt in zip(ranked, moments, strict=True):
        first = _iou_definition(segments[0], gt)
        best = max(_iou_definition(s, gt) for s in segments[:5])
        iou1.append(first)
        iou5.append(best)
        for t in thresholds:
            r1[t] += first >= t
            r5[t] += best >= t
    n = len(moments)
    return ([100 * r1[t] / n for t in thresholds], [100 * r5[t] / n for t in thresholds],
            100 * sum(iou1) / n, 100 * sum(iou5) / n)


def test_iou_hand_solved():
    np.testing.assert_allclose(segment_iou([0.0, 0.5], [0.25, 1.0]), (0.25 + 1e-10) / (1 + 1e-10))
    assert segment_iou([0.0, 0.3], [0.6, 1.0]) == 0.0  # disjoint: negative, set to 0
    assert 0 < segment_iou([0.0, 0.5], [0.5, 1.0]) < 1e-9  # touching: the smoothing term only
    assert segment_iou([0.2, 0.2], [0.2, 0.2]) == 1.0
    assert segment_iou([0.0, 0.3], [0.0, 1.0]) >= 0.3  # exactly at a threshold counts (>=)


@pytest.mark.parametrize("seed", range(4))
def test_recall_matches_the_definition_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    n = 300
    grid = np.round(rng.random((n, 2)) * 10) / 10  # a coarse grid makes ties and exact-threshold IoUs common
    moments = np.sort(grid, axis=1)
    counts = rng.integers(1, 9, n)  # short lists included
    k = int(counts.max())
    segments = np.sort(np.round(rng.random((n, k, 2)) * 10) / 10, axis=2)
    segments[: n // 4, 1] = segments[: n // 4, 0]  # duplicated (tied) proposals
    segments[n // 4: n // 2, 0] = moments[n // 4: n // 2]  # exact hits at rank 1
    ranked = [segments[i, : counts[i]] for i in range(n)]
    thresholds = (0.1, 0.3, 0.5, 0.7, 0.9)
    report = grounding_recall(np.where(np.arange(k)[None, :, None] < counts[:, None, None], segments, np.nan),
                              counts, moments, thresholds)
    r1, r5, miou, miou5 = _recall_definition(ranked, moments, thresholds)
    np.testing.assert_allclose(report.recall_at_1, r1, rtol=0, atol=1e-9)
    np.testing.assert_allclose(report.recall_at_5, r5, rtol=0, atol=1e-9)
    assert report.miou == pytest.approx(miou, abs=1e-9) and report.miou_at_5 == pytest.approx(miou5, abs=1e-9)


def test_recall_hand_solved_and_json_keys():
    moments = np.array([[0.0, 0.5], [0.2, 0.4]])
    segments = np.array([[[0.0, 0.5], [0.9, 1.0]],  # exact at rank 1
                         [[0.6, 1.0], [0.2, 0.3]]])  # miss at rank 1, IoU 0.5 at rank 2
    report = grounding_recall(segments, np.array([2, 2]), moments)
    assert report.recall_at_1 == (50.0, 50.0, 50.0, 50.0) and report.recall_at_5 == (100.0, 100.0, 100.0, 50.0)
    out = report.to_json()
    assert list(out["R@1"]) == ["0.1", "0.3", "0.5", "0.7"] and out["mIoU"] == pytest.approx(50.0)
    assert "R@1 (%)" in report.table()


def test_vote_top1_hand_solved():
    # proposals 1 and 2 agree with each other; 0 is alone: unweighted voting picks 1 (first of the tie)
    segments = np.array([[[0.0, 0.1], [0.5, 0.9], [0.5, 0.8]]])
    assert vote_top1(segments, weight_by_first=False).tolist() == [1]
    # weighted by the IoU with proposal 0, only 0 has weight: it wins
    assert vote_top1(segments, weight_by_first=True).tolist() == [0]


def _queries(tmp_path):
    path = tmp_path / "test.json"
    path.write_text(json.dumps([["v1", 20.0, [0.0, 10.0], "a"], ["v2", 10.0, [2.0, 4.0], "b"],
                                ["v1", 20.0, [15.0, 20.0], "c"]]))
    return read_grounding_json(path)


def test_result_file_roundtrip_ranks_by_score(tmp_path):
    preds = [GroundingPrediction(0, "v1", np.array([[0.0, 5.0], [1.0, 2.0], [3.0, 4.0]]), np.array([0.2, 0.9, 0.2]))]
    path = write_grounding_results(tmp_path / "p.json", preds)
    assert json.loads(path.read_text())["task"] == "grounding"
    back = read_grounding_results(path)[0]
    np.testing.assert_array_equal(back.segments, [[1.0, 2.0], [0.0, 5.0], [3.0, 4.0]])  # ties keep file order
    np.testing.assert_array_equal(back.scores, [0.9, 0.2, 0.2])


@pytest.mark.parametrize(("content", "message"), [
    ({"results": []}, "not a grounding result file"),
    ({"task": "grounding", "results": [{"query": 0, "video": "v"}]}, "lacks query"),
    ({"task": "grounding", "results": [{"query": -1, "video": "v", "segments": [[0, 1]], "scores": [1]}]},
     "non-negative integer"),
    ({"task": "grounding", "results": [{"query": 0, "video": "v", "segments": [[0, 1]], "scores": [1, 2]}]},
     "k scores"),
    ({"task": "grounding", "results": [{"query": 0, "video": "v", "segments": [[2, 1]], "scores": [1]}]},
     "ends before it starts"),
    ({"task": "grounding", "results": [{"query": 0, "video": "v", "segments": [[0, 1]], "scores": [1]},
                                       {"query": 0, "video": "v", "segments": [[0, 1]], "scores": [1]}]},
     "appears twice"),
])
def test_result_file_errors(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(content))
    with pytest.raises(WtalInputError, match=message):
        read_grounding_results(path)


def test_evaluate_against_queries_clips_and_checks(tmp_path):
    queries = _queries(tmp_path)
    preds = [GroundingPrediction(0, "v1", np.array([[0.0, 10.0]]), np.array([1.0])),
             GroundingPrediction(1, "v2", np.array([[-3.0, 2.5], [2.0, 4.0]]), np.array([1.0, 0.5])),
             GroundingPrediction(2, "v1", np.array([[15.0, 30.0]]), np.array([1.0]))]  # clipped to [15, 20]
    report = evaluate_grounding(preds, queries, (0.5,))
    assert report.recall_at_1 == (pytest.approx(200 / 3),) and report.recall_at_5 == (100.0,)
    with pytest.raises(WtalInputError, match="1 of 3 queries have no prediction"):
        evaluate_grounding(preds[:2], queries)
    with pytest.raises(WtalInputError, match="not in the annotations"):
        evaluate_grounding([*preds, GroundingPrediction(7, "v1", np.array([[0.0, 1.0]]), np.ones(1))], queries)
    wrong = [preds[0], GroundingPrediction(1, "v9", preds[1].segments, preds[1].scores), preds[2]]
    with pytest.raises(WtalInputError, match="names 'v9'"):
        evaluate_grounding(wrong, queries)


def test_baselines(tmp_path):
    queries = _queries(tmp_path)
    whole = predictions_from_fractions(queries, whole_video_segments(len(queries)))
    np.testing.assert_array_equal(whole[1].segments, [[0.0, 10.0]])
    report = evaluate_grounding(whole, queries, (0.25, 0.3))
    assert report.recall_at_1 == (pytest.approx(200 / 3), pytest.approx(100 / 3))  # IoUs 0.5, 0.2, 0.25
    rng = np.random.default_rng(0)
    seg = random_segments(50, 5, rng)
    assert seg.shape == (50, 5, 2) and (seg[..., 1] >= seg[..., 0]).all() and (seg >= 0).all() and (seg <= 1).all()
    np.testing.assert_array_equal(seg, random_segments(50, 5, np.random.default_rng(0)))
    moments = np.array([[0.2, 0.4]] * 5 + [[0.6, 0.8]] * 3 + [[0.0, 0.9]])
    prior = fit_prior_segments(moments, k=2, grid=0.1)
    np.testing.assert_allclose(prior, [[0.2, 0.4], [0.6, 0.8]])  # the median length, most common positions


def test_eval_cli_grounding(tmp_path, capsys):
    queries = _queries(tmp_path)
    preds = predictions_from_fractions(queries, np.array([[[0.0, 0.5], [0.5, 1.0]], [[0.2, 0.4], [0, 1]],
                                                          [[0.0, 0.25], [0.75, 1.0]]]))
    write_grounding_results(tmp_path / "p.json", preds)
    rc = main(["eval", "--task", "grounding", "--pred", str(tmp_path / "p.json"), "--gt", queries.source,
               "--json", str(tmp_path / "out.json")])
    assert rc == 0 and "R@5 (%)" in capsys.readouterr().out
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["R@1"]["0.7"] == pytest.approx(200 / 3) and out["R@5"]["0.7"] == 100.0
    assert main(["eval", "--task", "grounding", "--pred", str(tmp_path / "p.json"), "--gt", queries.source,
                 "--mode", "wtalc"]) == 2
