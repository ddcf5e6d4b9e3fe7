import numpy as np
import pytest

from wtal.data.segments import SegmentTable
from wtal.viz.timeline import classes_to_show, plot_timeline

CLASSES = ["A", "B", "C"]


def _tables():
    gt = SegmentTable.from_rows(CLASSES, [("v", "B", 2.0, 5.0, 1.0), ("w", "A", 0.0, 1.0, 1.0)])
    pred = SegmentTable.from_rows(CLASSES, [("v", "B", 2.2, 5.5, 0.9), ("v", "C", 7.0, 8.0, 0.5),
                                            ("w", "A", 0.0, 1.0, 0.1)])
    return gt, pred


def test_classes_to_show_puts_ground_truth_first_then_top_predictions():
    gt, pred = _tables()
    v_gt, v_pred = gt.select(gt.video == "v"), pred.select(pred.video == "v")
    assert classes_to_show(CLASSES, v_gt, v_pred) == [1, 2]
    assert classes_to_show(CLASSES, v_gt, v_pred, max_classes=1) == [1]


def test_plot_timeline_writes_a_png(tmp_path):
    gt, pred = _tables()
    cas = np.random.default_rng(0).random((16, 3))
    out = plot_timeline(tmp_path / "sub" / "v.png", "v", CLASSES, 1.5625, gt, pred, cas=cas, pseudo=cas * 0.5)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not list(out.parent.glob(".*.tmp"))


def test_plot_timeline_failure_leaves_no_file(tmp_path):
    gt, pred = _tables()
    with pytest.raises(IndexError):
        plot_timeline(tmp_path / "bad.png", "v", CLASSES, 1.5625, gt, pred, cas=np.zeros((4, 1)))
    assert not (tmp_path / "bad.png").exists()
    assert not list(tmp_path.glob(".*"))
