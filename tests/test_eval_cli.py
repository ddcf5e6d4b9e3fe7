"""``wtal eval`` end to end through the CLI parser, on small ground-truth files written here."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wtal.cli import main
from wtal.data.segments import SegmentTable
from wtal.evaluation.detection import ACTIVITYNET_TIOU, THUMOS14_TIOU
from wtal.evaluation.results import write_results
from wtal.evaluation.wtalc import wtalc_detection_map

CLASSES = ["Diving", "Shotput"]


def write_gt_json(path, videos: dict, ambiguous: dict | None = None):
    """Tiny ActivityNet-style writer: videos = {name: (subset, [(label, start, end), ...])}."""
    database = {name: {"subset": subset, "duration": 100.0,
                       "annotations": [{"label": lab, "segment": [s, e]} for lab, s, e in instances]}
                for name, (subset, instances) in videos.items()}
    data = {"version": "test", "database": database}
    if ambiguous:
        data["ambiguous"] = ambiguous
    path.write_text(json.dumps(data))
    return path


THUMOS_LIKE = {
    "train_1": ("validation", [("Diving", 1.0, 5.0)]),
    "test_1": ("test", [("Diving", 0.0, 10.0), ("Shotput", 20.0, 30.0)]),
    "test_2": ("test", [("Diving", 5.0, 9.0)]),
}


def write_pred(path, rows):
    return write_results(path, SegmentTable.from_rows(CLASSES, rows))


def test_eval_thumos_like_defaults_and_json(tmp_path, capsys):
    gt = write_gt_json(tmp_path / "gt.json", THUMOS_LIKE)
    # test_1 Diving: TP at every tIoU; test_2 Diving: tIoU 0.5 ([5,9] vs [5,7]); Shotput: FP on a train video
    # (outside the subset, still a false positive) ranked above the TP.
    pred = write_pred(tmp_path / "pred.json", [
        ("test_1", "Diving", 0.0, 10.0, 0.9), ("test_2", "Diving", 5.0, 7.0, 0.8),
        ("train_1", "Shotput", 20.0, 30.0, 0.95), ("test_1", "Shotput", 20.0, 30.0, 0.7)])
    out = tmp_path / "res" / "map.json"
    assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "AVG(0.1:0.5)" in printed and "subset 'test'" in printed
    res = json.loads(out.read_text())
    assert res["thresholds"] == THUMOS14_TIOU
    # Diving: 100 up to 0.5, then 50 (one of two found first); Shotput: FP then TP -> 50 everywhere
    expected = [(100 + 50) / 2] * 5 + [(50 + 50) / 2] * 2
    assert res["mAP"] == pytest.approx(expected)
    assert res["average"] == pytest.approx(sum(expected) / 7)
    assert res["averages"]["AVG(0.3:0.7)"] == pytest.approx(sum(expected[2:]) / 5)


def test_eval_subset_and_tiou_options(tmp_path):
    gt = write_gt_json(tmp_path / "gt.json", THUMOS_LIKE)
    pred = write_pred(tmp_path / "pred.json", [("train_1", "Diving", 1.0, 5.0, 0.9)])
    out = tmp_path / "map.json"
    assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--subset", "validation", "--tiou", "0.3,0.7",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["thresholds"] == [0.3, 0.7] and res["mAP"] == pytest.approx([100.0, 100.0])
    assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["mAP"] == pytest.approx([0.0] * 7)  # default subset: test


def test_eval_activitynet_like_defaults(tmp_path):
    gt = write_gt_json(tmp_path / "anet.json", {
        "v_train": ("training", [("Diving", 0.0, 10.0)]),
        "v_val": ("validation", [("Shotput", 3.0, 8.0)])})
    pred = write_pred(tmp_path / "pred.json", [("v_val", "Shotput", 3.0, 8.0, 1.0)])
    out = tmp_path / "map.json"
    assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["thresholds"] == ACTIVITYNET_TIOU and res["subset"] == "validation"
    assert res["classes"] == ["Shotput"] and res["average"] == pytest.approx(100.0)


def test_eval_wtalc_mode_uses_ambiguous_segments(tmp_path):
    ambiguous = {"test_1": [[40.0, 50.0]]}
    gt = write_gt_json(tmp_path / "gt.json", THUMOS_LIKE, ambiguous=ambiguous)
    rows = [("test_1", "Diving", 42.0, 45.0, 0.99),  # overlaps the Ambiguous segment: dropped in wtalc mode
            ("test_1", "Diving", 0.0, 10.0, 0.9), ("test_2", "Diving", 5.0, 9.0, 0.8),
            ("test_1", "Shotput", 20.0, 30.0, 0.7)]
    pred = write_pred(tmp_path / "pred.json", rows)
    out = tmp_path / "map.json"
    assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--mode", "wtalc", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["mAP"] == pytest.approx([100.0] * 7)
    assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["mAP"][0] < 100.0  # official mode keeps the false positive


def test_eval_wtalc_mode_on_real_annotation_folder(tmp_path, thumos14_annotations):
    from wtal.data.sources import load_annotations

    ann = load_annotations(thumos14_annotations)
    test = ann.subset("test")
    gt_table = test.ground_truth()
    # ground truth as predictions, plus one high-scoring false positive inside each Ambiguous segment
    rows = [(v, c, s, e, 0.5) for v, c, s, e, _ in gt_table.rows()]
    rows += [(v, ann.classes[0], a, b, 0.9) for v, segs in test.ambiguous.items() for a, b in segs]
    pred = write_results(tmp_path / "pred.json", SegmentTable.from_rows(ann.classes, rows))
    out = tmp_path / "map.json"
    assert main(["eval", "--pred", str(pred), "--gt", str(thumos14_annotations), "--json", str(out)]) == 0
    anet = json.loads(out.read_text())
    assert main(["eval", "--pred", str(pred), "--gt", str(thumos14_annotations), "--mode", "wtalc",
                 "--json", str(out)]) == 0
    wtalc = json.loads(out.read_text())
    table = SegmentTable.from_rows(ann.classes, rows)
    direct = wtalc_detection_map(gt_table, table, 25 / 16, THUMOS14_TIOU, ambiguous=test.ambiguous)
    assert wtalc["mAP"] == pytest.approx(direct.mAP)
    assert wtalc_detection_map(gt_table, table, 25 / 16).mAP[0] < direct.mAP[0]  # the filter mattered
    assert anet["mAP"][0] < 100.0 and wtalc["mAP"][0] < 100.0  # unmatchable empty snippet ranges


@pytest.mark.parametrize(("pred_text", "args", "message"), [
    ('{"results": {"test_1": [{"label": "Surfing", "score": 1, "segment": [0, 1]}]}}', [],
     "unknown class label 'Surfing'"),
    ('{"results": {', [], "malformed JSON"),
    ('{"results": {}}', ["--subset", "training"], "no subset 'training'"),
    ('{"results": {}}', ["--tiou", "0.5,1.5"], "1.5 is not a tIoU threshold in (0, 1]"),
])
def test_eval_bad_inputs_exit_2_with_file_and_fix(tmp_path, capsys, pred_text, args, message):
    gt = write_gt_json(tmp_path / "gt.json", THUMOS_LIKE)
    pred = tmp_path / "pred.json"
    pred.write_text(pred_text)
    assert main(["eval", "--pred", str(pred), "--gt", str(gt), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "fix:" in err


@pytest.mark.parametrize(("tiou", "message"), [
    ("", "--tiou is empty"), ("  ", "--tiou is empty"), ("0.5,,0.7", "empty item"), ("0.5,", "empty item"),
    ("abc", "'abc' is not a number"), ("0.5 0.7", "'0.5 0.7' is not a number"), ("0.3;0.5", "not a number"),
    ("nan", "nan is not a tIoU threshold"), ("0", "0 is not a tIoU threshold"),
    ("0.5,-0.1", "-0.1 is not a tIoU threshold"), ("inf", "inf is not a tIoU threshold"),
])
def test_eval_malformed_tiou_exits_2_naming_the_option(tmp_path, capsys, tiou, message):
    gt = write_gt_json(tmp_path / "gt.json", THUMOS_LIKE)
    pred = write_pred(tmp_path / "pred.json", [("test_1", "Diving", 0.0, 10.0, 0.9)])
    assert main(["eval", "--pred", str(pred), "--gt", str(gt), f"--tiou={tiou}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no table
    assert message in captured.err and "fix: give comma-separated tIoU thresholds" in captured.err


def eval_warnings(caplog, tmp_path, rows, *args) -> tuple[list[str], dict]:
    """Run ``wtal eval`` on ``rows``; return the warnings logged and the JSON result."""
    gt = write_gt_json(tmp_path / "gt.json", THUMOS_LIKE)
    pred = write_pred(tmp_path / "pred.json", rows)
    out = tmp_path / "map.json"
    with caplog.at_level(logging.WARNING, logger="wtal"):
        caplog.clear()
        assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--json", str(out), *args]) == 0
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING], json.loads(out.read_text())


def test_eval_warns_about_some_unknown_videos_and_keeps_official_scoring(tmp_path, caplog):
    rows = [("test_1", "Diving", 0.0, 10.0, 0.9), ("v_test_2", "Diving", 5.0, 9.0, 0.95),
            ("v_test_2", "Shotput", 5.0, 9.0, 0.3)]
    warnings, res = eval_warnings(caplog, tmp_path, rows, "--tiou", "0.5")
    assert len(warnings) == 1
    assert "1 of the 2 predicted videos are not in subset 'test'" in warnings[0]
    assert "'v_test_2'" in warnings[0] and "their 2 detections count as false positives" in warnings[0]
    assert "remove the 'v_' prefix" in warnings[0]
    # Diving: FP (v_test_2) ranked first, then a TP of 2 ground truths -> AP 1/4; Shotput: AP 0
    assert res["mAP"] == pytest.approx([100 * (0.25 + 0.0) / 2])
    warnings, _ = eval_warnings(caplog, tmp_path, rows[:1])
    assert warnings == []


@pytest.mark.parametrize(("rows", "args", "hint"), [
    ([("train_1", "Diving", 1.0, 5.0, 0.9)], [], "of these, 1 in subset 'validation': check --subset"),
    ([("v_test_1", "Diving", 0.0, 10.0, 0.9)], [], "remove the 'v_' prefix"),
    ([("1", "Diving", 0.0, 10.0, 0.9)], ["--subset", "validation"], "check the video ids (a prefix such as 'v_'?"),
])
def test_eval_warns_when_no_predicted_video_is_in_the_subset(tmp_path, caplog, rows, args, hint):
    warnings, res = eval_warnings(caplog, tmp_path, rows, *args)
    assert len(warnings) == 1 and "none of the 1 predicted videos is in subset" in warnings[0]
    assert "all 1 detections count as false positives" in warnings[0] and hint in warnings[0]
    assert res["average"] == 0.0


def test_eval_unknown_video_warning_reaches_stderr_of_the_command(tmp_path):
    gt = write_gt_json(tmp_path / "gt.json", {"video_1": ("test", [("Diving", 0.0, 10.0)])})
    pred = write_pred(tmp_path / "pred.json", [("1", "Diving", 0.0, 10.0, 0.9)])
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "wtal.cli", "eval", "--pred", str(pred), "--gt", str(gt)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "AVG" in proc.stdout
    assert proc.stderr.startswith("wtal eval: warning: none of the 1 predicted videos is in subset 'test'")
    assert "e.g. 'video_1'" in proc.stderr
