"""Timeline plot of one video: ground truth, predictions, CAS and pseudo labels on one axis in seconds.

Like Figure 4 of the GauFuse paper: one panel per class of interest, with the ground-truth instances as
bars, the predicted instances as bars shaded by score, the class activation sequence as a curve and
(optionally) the LinPro pseudo labels as a step curve. All times come from the one snippet <-> seconds
conversion in :mod:`wtal.data.timebase`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wtal.atomic import write_atomic
from wtal.data.segments import SegmentTable
from wtal.data.timebase import snippets_to_seconds


def classes_to_show(classes: Sequence[str], gt: SegmentTable, pred: SegmentTable, max_classes: int = 4) -> list[int]:
    """Ground-truth classes first, then the classes of the highest-scoring predictions."""
    shown: list[int] = [int(c) for c in dict.fromkeys(gt.label.tolist())]
    for c in pred.label[np.argsort(-pred.score, kind="stable")].tolist():
        if int(c) not in shown:
            shown.append(int(c))
    return shown[:max_classes] if shown else list(range(min(1, len(classes))))


def plot_timeline(path: str | Path, video: str, classes: Sequence[str], snippets_per_second: float,
                  gt: SegmentTable, pred: SegmentTable, cas: np.ndarray | None = None,
                  pseudo: np.ndarray | None = None, duration: float | None = None,
                  pseudo_label: str | None = None,
                  max_classes: int = 4, top_predictions: int = 20) -> Path:
    """Write a PNG timeline of ``video`` to ``path`` (atomically) and return the path.

    ``gt`` / ``pred`` are tables in seconds (rows of other videos are ignored); ``cas`` and ``pseudo`` are
    ``(T, C)`` snippet-level arrays. Only the ``top_predictions`` highest-scoring predictions per class are drawn.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    gt = gt.select(gt.video == video)
    pred = pred.select(pred.video == video)
    shown = classes_to_show(classes, gt, pred, max_classes)
    n_snip = None if cas is None else cas.shape[0]
    if duration is None:
        ends = [*gt.end.tolist(), *pred.end.tolist()]
        if n_snip is not None:
            ends.append(float(snippets_to_seconds(n_snip, snippets_per_second)))
        duration = max(ends) if ends else 1.0
    fig, axes = plt.subplots(len(shown), 1, figsize=(12, 1.9 * len(shown) + 0.6), sharex=True, squeeze=False)
    for ax, c in zip(axes[:, 0], shown, strict=True):
        g = gt.select(gt.label == c)
        for s, e in zip(g.start, g.end, strict=True):
            ax.axvspan(s, e, ymin=0.86, ymax=1.0, color="tab:green", lw=0)
        p = pred.select(pred.label == c)
        order = np.argsort(-p.score, kind="stable")[:top_predictions]
        if len(order):
            smax = max(float(np.max(np.abs(p.score[order]))), 1e-12)
            for k, i in enumerate(order):
                lo = 0.70 - 0.012 * (k % 8)
                ax.axvspan(p.start[i], p.end[i], ymin=lo - 0.1, ymax=lo, color="tab:red",
                           alpha=float(np.clip(0.25 + 0.75 * p.score[i] / smax, 0.05, 1.0)), lw=0)
        if cas is not None:
            t = snippets_to_seconds(np.arange(cas.shape[0]) + 0.5, snippets_per_second)
            ax.plot(t, cas[:, c], color="tab:blue", lw=1.0, label="CAS")
        if pseudo is not None:
            edges = snippets_to_seconds(np.arange(pseudo.shape[0] + 1), snippets_per_second)
            ax.stairs(pseudo[:, c], edges, color="tab:orange", lw=1.0, label=pseudo_label or "pseudo label")
        ax.set_ylim(0, 1.05)
        ax.set_xlim(0, duration)
        ax.set_ylabel(classes[c], rotation=0, ha="right", va="center", fontsize=9)
    axes[0, 0].set_title(f"{video}: ground truth (green), predictions (red, shade = score)"
                         + (", CAS (blue)" if cas is not None else "")
                         + (", pseudo labels (orange)" if pseudo is not None else ""), fontsize=10)
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    try:
        write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=110), binary=True)
    finally:
        plt.close(fig)
    return Path(path)
