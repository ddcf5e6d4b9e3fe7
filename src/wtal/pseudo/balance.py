"""Loss balance: the weight that puts an extra training term on an equal footing with a model's own loss.

Base models put their losses on very different scales (BaS-Net's is about 0.2, RSKP's about 1.5), so one
absolute weight for an added term (pseudo labels, a teacher's activation map) lets it swamp one model and
barely touch another. :func:`balanced_weight_factor` measures both per-video means with one pass of an
eval-mode snapshot of the model over the training set (no dropout, no state updates) and returns the factor
that makes ``factor * weight * term`` equal ``ratio`` times the model's own loss.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np
import torch

from wtal.data.batch import Batch
from wtal.pseudo.teacher import model_device, snapshot_teacher

logger = logging.getLogger(__name__)

#: ``term(probe, out, batch) -> (B,)``: the unweighted extra loss of the snapshot's output on a batch
Term = Callable[[torch.nn.Module, object, Batch], torch.Tensor]


@torch.no_grad()
def balanced_weight_factor(model: torch.nn.Module, train_batches: Callable[[], Iterable[Batch]], epoch: int,
                           term: Term, *, ratio: float, weight: float, what: str) -> float:
    """``ratio * base / (term * weight)`` from per-video means over the training set; 1.0 (the configured
    weight), with a warning, when a mean is not positive and finite (e.g. nothing labelled)."""
    probe = snapshot_teacher(model)
    base_sum = term_sum = 0.0
    videos = 0
    for batch in train_batches():
        batch = batch.to(model_device(probe))
        out = probe(batch)
        base_sum += float(probe.losses(out, batch, epoch)["total"].sum())
        term_sum += float(term(probe, out, batch).sum())
        videos += len(batch.names)
    base, extra = base_sum / max(videos, 1), term_sum / max(videos, 1)
    if not (base > 0 and extra > 0 and weight > 0 and np.isfinite(base / extra)):
        logger.warning("%s: base loss %.4g and term %.4g per video give no usable balance; using weight %.4g",
                       what, base, extra, weight)
        return 1.0
    factor = ratio * base / (extra * weight)
    logger.info("%s %.3g: base loss %.4g, term %.4g per video -> weight %.4g", what, ratio, base, extra,
                factor * weight)
    return float(factor)
