"""Video-level classification mAP, as reported by the W-TALC family (``classificationMAP.py``).

Per class, videos are ranked by decreasing score (equal scores keep row order) and AP is the mean precision
at the ranks of the positives (non-interpolated). mAP is the mean over classes in percent. Classes without
any positive video are left out (the reference divides by zero there); an input with no positive at all is
an error.
"""

from __future__ import annotations

import numpy as np

from wtal.errors import WtalInputError


def classification_map(scores: np.ndarray, labels: np.ndarray) -> float:
    """Classification mAP in percent of ``scores (N, C)`` against multi-hot ``labels (N, C)``."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise WtalInputError(f"scores {scores.shape} and labels {labels.shape} must both be "
                             "(videos, classes)",
                             fix="pass one row per video and one column per class in both arrays")
    if not np.all(np.isfinite(scores)):
        raise WtalInputError("classification scores contain NaN or infinity", fix="pass finite scores")
    positive = labels == 1
    if not np.all(positive | (labels == 0)):
        raise WtalInputError("classification labels must be 0 or 1", fix="pass multi-hot labels")
    npos = positive.sum(axis=0)
    if not npos.any():
        raise WtalInputError("no class has a positive video", fix="pass labels with at least one positive")
    order = np.argsort(-scores, axis=0, kind="stable")
    hits = np.take_along_axis(positive, order, axis=0)
    precision = np.cumsum(hits, axis=0) / np.arange(1, len(scores) + 1)[:, None]
    cols = npos > 0
    ap = (precision * hits).sum(axis=0)[cols] / npos[cols]
    return float(100.0 * ap.mean())
