import matplotlib.pyplot as plt
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wtal.data.segments import SegmentTable
from wtal.viz.timeline import SCORE_CMAP, assign_lanes, classes_to_show, draw_timeline, plot_timeline

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


# ------------------------------------------------------------------------------ prediction lanes


def test_assign_lanes_hand_solved():
    # a=[0,2) b=[1,3) c=[2,4) d=[3,5) e=[0,5): three intervals cover t=1.5, so three lanes are needed.
    # In start order a, e, b take lanes 0, 1, 2; c starts when a ends (lane 0 free), d when b ends (lane 2).
    start, end = np.array([0, 1, 2, 3, 0.0]), np.array([2, 3, 4, 5, 5.0])
    assert assign_lanes(start, end).tolist() == [0, 2, 0, 2, 1]


def test_touching_boxes_share_a_lane_and_no_boxes_need_no_lane():
    assert assign_lanes(np.array([2.0, 0.0, 1.0]), np.array([3.0, 1.0, 2.0])).tolist() == [0, 0, 0]
    assert assign_lanes(np.zeros(0), np.zeros(0)).tolist() == []


def _depth(start: np.ndarray, end: np.ndarray) -> int:
    """The largest number of intervals containing one instant (the fewest lanes possible)."""
    return max((int(np.sum((start <= t) & (t < end))) for t in start), default=0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(1, 10)), max_size=25))
def test_assign_lanes_never_overlaps_and_uses_the_fewest_lanes(boxes):
    start = np.array([s for s, _ in boxes], dtype=float)
    end = np.array([s + n for s, n in boxes], dtype=float)
    lanes = assign_lanes(start, end)
    for lane in set(lanes.tolist()):
        i = np.flatnonzero(lanes == lane)
        order = i[np.argsort(start[i])]
        assert np.all(end[order][:-1] <= start[order][1:]), "two boxes of one lane overlap"
    assert len(set(lanes.tolist())) == _depth(start, end)
    assert set(lanes.tolist()) == set(range(len(set(lanes.tolist())))), "lanes are numbered 0, 1, ..."


# ------------------------------------------------------------------------------------- the figure


def _overlapping():
    gt = SegmentTable.from_rows(CLASSES, [("v", "A", 1.0, 4.0, 1.0)])
    rows = [("v", "A", 0.0, 3.0, 0.2), ("v", "A", 1.0, 5.0, 0.9), ("v", "A", 2.0, 6.0, 0.5), ("v", "A", 6.0, 7.0, 0.4)]
    return gt, SegmentTable.from_rows(CLASSES, rows)


def test_timeline_figure_has_labelled_axes_lanes_and_a_score_colorbar():
    gt, pred = _overlapping()
    cas = np.random.default_rng(0).random((12, 3))
    fig = draw_timeline("v", CLASSES, 1.0, gt, pred, cas=cas, pseudo=cas > 0.5, duration=8.0)
    try:
        (bar,) = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
        assert bar.get_ylabel() == "prediction score"
        panels = [ax for ax in fig.axes if ax is not bar]
        assert len(panels) == 2 and all(ax.get_ylabel() for ax in panels)
        instances, signals = panels
        assert instances.get_ylabel() == "A" and signals.get_ylabel() == "CAS / pseudo label"
        assert [t.get_text() for t in instances.get_yticklabels()][0] == "ground truth"
        boxes = [(r.get_x(), r.get_x() + r.get_width(), round(r.get_y(), 6), r.get_facecolor())
                 for r in instances.patches]
        predicted = [b for b in boxes if b[0:2] != (1.0, 4.0)]
        assert len(predicted) == 4 and len({b[2] for b in predicted}) == 3, "three lanes for three overlapping"
        for x0, x1, y, _ in predicted:
            assert not any(y == y2 and x0 < z1 and z0 < x1 for z0, z1, y2, _ in predicted if (z0, z1) != (x0, x1))
        cmap = plt.get_cmap(SCORE_CMAP)
        colour = {(x0, x1): face for x0, x1, _, face in predicted}
        assert np.allclose(colour[(1.0, 5.0)], cmap(1.0)) and np.allclose(colour[(0.0, 3.0)], cmap(0.0))
    finally:
        plt.close(fig)


def test_timeline_without_signals_or_predictions_still_has_axes_labels_and_colorbar():
    gt, _ = _overlapping()
    empty = SegmentTable.from_rows(CLASSES, [])
    fig = draw_timeline("v", CLASSES, 1.0, gt, empty, duration=5.0)
    try:
        assert [ax.get_ylabel() for ax in fig.axes] == ["A", "prediction score"]
    finally:
        plt.close(fig)


def test_plot_of_a_run_shows_the_last_pseudo_label_generation_and_names_it(tmp_path):
    """The selected checkpoint may precede the last generation: the plot reads the generations of the last
    checkpoint through the plug-in and says when they were made."""
    import json

    from test_engine_data import tiny_run_yaml, write_tiny

    from wtal.cli import main
    from wtal.engine.predict import load_run
    from wtal.pseudo.plugin import GauFuseConfig
    from wtal.viz.command import latest_pseudo_labels, plot_run_video

    data = write_tiny(tmp_path / "data")["wtalc"]
    cfg = tiny_run_yaml(tmp_path / "cfg.yaml", epochs=8, extra="pseudo: {name: gaufuse, preset: paper}")
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--data", str(data), "--out", str(run)]) == 0
    loaded = load_run(run)
    video = loaded.data.train.names[0]
    epoch, labels = latest_pseudo_labels(loaded, video)
    generations = GauFuseConfig.from_dict(loaded.cfg.pseudo, total_epochs=8).schedule.generation_epochs
    assert epoch == max(g for g in generations if g < 8)  # the last one made, whatever epoch was selected
    history = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "plugin/gaufuse0" in history[-1]
    assert labels.shape == (loaded.data.train[0].length, 3)
    assert latest_pseudo_labels(loaded, "not-a-training-video") is None
    png = plot_run_video(run, video, tmp_path / "t.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
