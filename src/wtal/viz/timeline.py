"""Timeline plot of one video: ground truth, predictions, CAS and pseudo labels on one axis in seconds.

Like Figure 4 of the GauFuse paper, one panel per class of interest, in two parts sharing the time axis:

* instances: the ground-truth instances on the top row, then the predicted instances as boxes coloured by
  score (one colour scale for the whole figure, shown as a colorbar), laid out on as few rows ("lanes") as
  possible so that no two boxes overlap (:func:`assign_lanes`);
* signals: the class activation sequence as a curve and (optionally) the LinPro pseudo labels as a step
  curve, on a labelled 0..1 axis.

All times come from the one snippet <-> seconds conversion in :mod:`wtal.data.timebase`.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wtal.atomic import write_atomic
from wtal.data.segments import SegmentTable
from wtal.data.timebase import snippets_to_seconds

if TYPE_CHECKING:
    from matplotlib.figure import Figure

GT_COLOR = "tab:green"
SCORE_CMAP = "viridis"
BOX_HEIGHT = 0.8  # of a lane's height: a gap keeps neighbouring lanes apart


def classes_to_show(classes: Sequence[str], gt: SegmentTable, pred: SegmentTable, max_classes: int = 4) -> list[int]:
    """Ground-truth classes first, then the classes of the highest-scoring predictions."""
    shown: list[int] = [int(c) for c in dict.fromkeys(gt.label.tolist())]
    for c in pred.label[np.argsort(-pred.score, kind="stable")].tolist():
        if int(c) not in shown:
            shown.append(int(c))
    return shown[:max_classes] if shown else list(range(min(1, len(classes))))


def assign_lanes(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Lane (row) of every interval such that intervals in one lane do not overlap, on the fewest lanes.

    Intervals are half-open ``[start, end)``: boxes that only touch may share a lane. Greedy in order of
    start time, each interval takes the lowest-numbered lane that is free by then. This is optimal for
    interval graphs: it opens a new lane only when every open lane holds an interval containing the new
    start, so the number of lanes equals the largest number of intervals over any one instant.
    """
    start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    lanes = np.empty(len(start), dtype=np.int64)
    busy: list[tuple[float, int]] = []  # (end time, lane) of the interval each busy lane holds
    free: list[int] = []  # lanes opened earlier and free again
    for i in np.lexsort((end, start)).tolist():
        while busy and busy[0][0] <= start[i]:
            heapq.heappush(free, heapq.heappop(busy)[1])
        lane = heapq.heappop(free) if free else len(busy) + len(free)
        lanes[i] = lane
        heapq.heappush(busy, (float(end[i]), lane))
    return lanes


def draw_timeline(video: str, classes: Sequence[str], snippets_per_second: float, gt: SegmentTable,
                  pred: SegmentTable, cas: np.ndarray | None = None, pseudo: np.ndarray | None = None,
                  duration: float | None = None, max_classes: int = 4, top_predictions: int = 20,
                  pseudo_label: str | None = None) -> Figure:
    """The timeline figure of ``video`` (see :func:`plot_timeline`); the caller closes it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable

    gt = gt.select(gt.video == video)
    pred = pred.select(pred.video == video)
    shown = classes_to_show(classes, gt, pred, max_classes)
    drawn = {c: _top(pred.select(pred.label == c), top_predictions) for c in shown}
    lanes = {c: assign_lanes(p.start, p.end) for c, p in drawn.items()}
    if duration is None:
        ends = [*gt.end.tolist(), *pred.end.tolist()]
        if cas is not None:
            ends.append(float(snippets_to_seconds(cas.shape[0], snippets_per_second)))
        duration = max(ends) if ends else 1.0
    signals = cas is not None or pseudo is not None
    norm = _score_norm(np.concatenate([p.score for p in drawn.values()]))
    cmap = plt.get_cmap(SCORE_CMAP)

    rows = [1 + (int(lanes[c].max()) + 1 if len(lanes[c]) else 1) for c in shown]  # gt row + prediction lanes
    heights = [h for r in rows for h in ((0.28 * r, 1.2) if signals else (0.28 * r,))]
    fig, axes = plt.subplots(len(heights), 1, figsize=(12, sum(heights) + 0.9), sharex=True, squeeze=False,
                             height_ratios=heights, layout="constrained")
    per_class = 2 if signals else 1
    for k, c in enumerate(shown):
        inst_ax = axes[per_class * k, 0]
        _draw_instances(inst_ax, gt.select(gt.label == c), drawn[c], lanes[c], rows[k], norm, cmap)
        inst_ax.set_ylabel(classes[c], rotation=0, ha="right", va="center", fontsize=9, fontweight="bold")
        if signals:
            _draw_signals(axes[per_class * k + 1, 0], c, snippets_per_second, cas, pseudo)
    axes[-1, 0].set_xlim(0, duration)
    axes[-1, 0].set_xlabel("time (s)")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes[:, 0].tolist(), label="prediction score",
                 fraction=0.02, pad=0.01)
    fig.suptitle(f"{video}: ground truth (green), predictions (colour = score)"
                 + (", CAS (blue)" if cas is not None else "")
                 + (f", {pseudo_label or 'pseudo labels'} (orange)" if pseudo is not None else ""), fontsize=10)
    return fig


def plot_timeline(path: str | Path, video: str, classes: Sequence[str], snippets_per_second: float,
                  gt: SegmentTable, pred: SegmentTable, cas: np.ndarray | None = None,
                  pseudo: np.ndarray | None = None, duration: float | None = None,
                  pseudo_label: str | None = None,
                  max_classes: int = 4, top_predictions: int = 20) -> Path:
    """Write a PNG timeline of ``video`` to ``path`` (atomically) and return the path.

    ``gt`` / ``pred`` are tables in seconds (rows of other videos are ignored); ``cas`` and ``pseudo`` are
    ``(T, C)`` snippet-level arrays; ``pseudo_label`` names the pseudo labels in the title (e.g. which
    generation they are). Only the ``top_predictions`` highest-scoring predictions per class are drawn.
    """
    import matplotlib.pyplot as plt

    fig = draw_timeline(video, classes, snippets_per_second, gt, pred, cas, pseudo, duration, max_classes,
                        top_predictions, pseudo_label)
    try:
        write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=110), binary=True)
    finally:
        plt.close(fig)
    return Path(path)


def _top(table: SegmentTable, n: int) -> SegmentTable:
    keep = np.zeros(len(table), dtype=bool)
    keep[np.argsort(-table.score, kind="stable")[:n]] = True
    return table.select(keep)


def _score_norm(scores: np.ndarray):
    from matplotlib.colors import Normalize

    if not len(scores):
        return Normalize(0.0, 1.0)
    lo, hi = float(scores.min()), float(scores.max())
    return Normalize(lo, hi) if hi > lo else Normalize(lo - 0.5, hi + 0.5)  # one score: mid-scale colour


def _draw_instances(ax, gt: SegmentTable, pred: SegmentTable, lanes: np.ndarray, rows: int, norm, cmap) -> None:
    """Row 0 (top): ground truth; rows 1..: prediction lanes, boxes coloured by score."""
    ax.barh(np.zeros(len(gt)), gt.end - gt.start, left=gt.start, height=BOX_HEIGHT, color=GT_COLOR)
    ax.barh(lanes + 1, pred.end - pred.start, left=pred.start, height=BOX_HEIGHT, color=cmap(norm(pred.score)),
            edgecolor="white", linewidth=0.4)
    ax.set_ylim(rows - 0.5, -0.5)  # ground truth on top
    lane_ticks = list(range(1, rows))
    ax.set_yticks([0, *lane_ticks], ["ground truth", *(["predictions"] + [""] * (len(lane_ticks) - 1))],
                  fontsize=8)
    ax.tick_params(axis="y", length=0)


def _draw_signals(ax, c: int, snippets_per_second: float, cas: np.ndarray | None, pseudo: np.ndarray | None
                  ) -> None:
    names = []
    if cas is not None:
        t = snippets_to_seconds(np.arange(cas.shape[0]) + 0.5, snippets_per_second)
        ax.plot(t, cas[:, c], color="tab:blue", lw=1.0, label="CAS")
        names.append("CAS")
    if pseudo is not None:
        edges = snippets_to_seconds(np.arange(pseudo.shape[0] + 1), snippets_per_second)
        ax.stairs(pseudo[:, c], edges, color="tab:orange", lw=1.0, label="pseudo label")
        names.append("pseudo label")
    ax.set_ylim(0, 1.05)
    ax.set_yticks([0, 0.5, 1])
    ax.set_ylabel(" / ".join(names), fontsize=8)
