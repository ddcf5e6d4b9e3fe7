"""Plot of one grounding query: the features' activation along the video, the model's query-conditioned
activation, the ground-truth moment and the top proposals, on one time axis in seconds.

Two panels sharing the axis, in the style of the detection timeline (:mod:`wtal.viz.timeline`):

* signals: each feature stream's activation (the mean of its channels at every snippet, scaled to [0, 1]
  over the video) and, when the model provides one, its query-conditioned activation (for CPL the proposals'
  Gaussians mixed by how well each reconstructs the sentence);
* segments: the ground-truth moment on the top row, then the top proposals, one row each in rank order,
  coloured by score.

Snippet ``i`` of a video of ``T`` snippets spans ``[i, i + 1) * duration / T`` seconds
(:func:`wtal.data.timebase.video_snippets_to_seconds`).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wtal.atomic import write_atomic
from wtal.data.timebase import video_snippets_to_seconds
from wtal.viz.timeline import BOX_HEIGHT, GT_COLOR, SCORE_CMAP, _score_norm

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STREAM_COLORS = ("tab:gray", "tab:brown", "tab:olive", "tab:pink")
QUERY_COLOR = "tab:blue"


def feature_activation(x: np.ndarray) -> np.ndarray:
    """``(T,)`` a stream's activation: the mean over channels of ``(T, D)`` features, min-max scaled to [0, 1]
    over the video (0 when constant), float64."""
    mean = np.asarray(x, dtype=np.float64).mean(axis=1)
    span = mean.max() - mean.min()
    return (mean - mean.min()) / span if span > 0 else np.zeros_like(mean)


def draw_grounding(title: str, sentence: str, duration: float, features: Mapping[str, np.ndarray],
                   segments: np.ndarray, scores: np.ndarray, moment: tuple[float, float] | None = None,
                   query_activation: np.ndarray | None = None, top: int = 5) -> Figure:
    """The figure of one query (see :func:`plot_grounding`); the caller closes it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable

    segments, scores = np.asarray(segments, dtype=np.float64)[:top], np.asarray(scores, dtype=np.float64)[:top]
    rows = 1 + len(segments)
    fig, (sig_ax, seg_ax) = plt.subplots(2, 1, figsize=(12, 1.6 + 0.28 * rows + 1.0), sharex=True,
                                         height_ratios=[1.6, 0.28 * rows], layout="constrained")
    for k, (stream, x) in enumerate(features.items()):
        t = video_snippets_to_seconds(np.arange(len(x)) + 0.5, duration, len(x))
        sig_ax.plot(t, feature_activation(x), color=STREAM_COLORS[k % len(STREAM_COLORS)], lw=0.9,
                    label=f"{stream} features")
    if query_activation is not None:
        t = video_snippets_to_seconds(np.arange(len(query_activation)) + 0.5, duration, len(query_activation))
        sig_ax.plot(t, query_activation, color=QUERY_COLOR, lw=1.6, label="query-conditioned activation")
    if moment is not None:
        sig_ax.axvspan(*moment, color=GT_COLOR, alpha=0.15, lw=0)
    sig_ax.set_ylim(0, 1.05)
    sig_ax.set_yticks([0, 0.5, 1])
    sig_ax.legend(loc="upper right", fontsize=8, ncols=4)

    norm = _score_norm(scores)
    cmap = plt.get_cmap(SCORE_CMAP)
    if moment is not None:
        seg_ax.barh([0], [moment[1] - moment[0]], left=[moment[0]], height=BOX_HEIGHT, color=GT_COLOR)
    seg_ax.barh(np.arange(1, rows), segments[:, 1] - segments[:, 0], left=segments[:, 0], height=BOX_HEIGHT,
                color=cmap(norm(scores)), edgecolor="white", linewidth=0.4)
    seg_ax.set_ylim(rows - 0.5, -0.5)
    seg_ax.set_yticks(range(rows), ["ground truth" if moment is not None else "",
                                    *[f"#{k + 1}" for k in range(len(segments))]], fontsize=8)
    seg_ax.tick_params(axis="y", length=0)
    seg_ax.set_xlim(0, duration)
    seg_ax.set_xlabel("time (s)")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=[sig_ax, seg_ax], label="proposal score",
                 fraction=0.02, pad=0.01)
    fig.suptitle(f"{title}\n\"{textwrap.shorten(sentence, 110)}\"", fontsize=10)
    return fig


def plot_grounding(path: str | Path, title: str, sentence: str, duration: float, features: Mapping[str, np.ndarray],
                   segments: np.ndarray, scores: np.ndarray, moment: tuple[float, float] | None = None,
                   query_activation: np.ndarray | None = None, top: int = 5) -> Path:
    """Write the PNG of one query to ``path`` (atomically) and return the path.

    ``features``: ``{stream: (T, D)}`` of the video; ``segments`` ``(K, 2)`` seconds, best first, with ``scores``
    ``(K,)`` (the ``top`` first are drawn); ``moment``: the ground truth in seconds, when known;
    ``query_activation``: ``(T,)`` in [0, 1] on the same snippets as the features.
    """
    import matplotlib.pyplot as plt

    fig = draw_grounding(title, sentence, duration, features, segments, scores, moment, query_activation, top)
    try:
        write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=110), binary=True)
    finally:
        plt.close(fig)
    return Path(path)
