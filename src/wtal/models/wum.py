"""WUM, "uncertainty modeling" (Lee et al., AAAI 2021; Pilhyeon/WTAL-Uncertainty-Modeling): background
from feature magnitudes.

Embedding ``f_t = ReLU(Conv3(x))``; classifier ``Dropout(0.7) -> Conv1 (C, no bias)``; no background class.
Per video (true length ``T_i``): ``k_act = max(T_i // 9, 1)`` snippets with the largest ``||f_t||`` and
``k_bkg = max(T_i // 4, 1)`` with the smallest (in train mode the magnitudes are multiplied by a dropout
mask first, as the reference). Losses: ``BCE(softmax(top-k_act mean CAS), y/sum y)``,
``BCE(softmax(mean CAS over background snippets), uniform)``, and
``(max(0, m - ||mean f_act||) + ||mean f_bkg||)^2``; total ``cls + 5e-4 um + 1 be``.

The margin is ``margin * sqrt(width / margin_reference_dim)`` (100 at the reference's 2048-wide embedding;
35.4 at 256): embedding norms grow like ``sqrt(width)``. Both BCE terms are computed from the logits
(:func:`softmax_binary_cross_entropy`): ``log(softmax)`` of a logit gap above ~104 is ``log(0)``, and its
gradient ``0/0`` made the parameters NaN and the next loss non-finite (measured: epoch 24 and 32 of 40 on
256-d data).

Test recipe (reference ``test.py``): magnitudes min-max normalised between the mean magnitude of the
background and the action selections, clipped to [0, 1] (``m_t``); CAS = min-max over time of
``softmax_C(cas) * m_t``. Video scores: ``softmax(top-k_act mean CAS)``.

The ``(C+1)``-th logit column (background) is defined so that ``softmax`` over C+1 gives exactly
``softmax_C(cas) * m_t`` for the actions and ``1 - m_t`` for background:
``bg_t = logsumexp_c(cas_tc) + log((1 - m_t) / m_t)`` (``m_t`` clipped to [1e-6, 1 - 1e-6]). In train mode
``m_t`` uses the selections of that forward pass (with the magnitude dropout).

Differences: the reference trains on random T=750 crops; here whole videos, k from the true length.
``hidden_dim`` defaults to ``input_dim`` (2048 on I3D, the reference width).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wtal.data.batch import Batch
from wtal.models.base import ModelContext, ModelOutput, StreamModel
from wtal.models.losses import softmax_binary_cross_entropy
from wtal.models.masked import (
    masked_conv1d,
    masked_fill_zero,
    masked_max,
    masked_minmax_normalize,
    masked_topk_indices,
    masked_topk_mean,
    topk_count,
)
from wtal.models.recipes import parse_hyperparameters
from wtal.ranges import BELOW_ONE, COUNT, DIVISOR, NON_NEGATIVE, POSITIVE, in_range


@dataclass(frozen=True)
class WUMHyperparameters:
    hidden_dim: int | None = in_range(None, COUNT)  # None -> input_dim
    dropout: float = in_range(0.7, BELOW_ONE)  # classifier dropout and the magnitude-selection dropout
    act_ratio: float = in_range(9.0, DIVISOR)  # r_act
    bkg_ratio: float = in_range(4.0, DIVISOR)  # r_bkg
    # at a 2048-wide embedding; scaled by (width / margin_reference_dim) ** 0.5
    margin: float = in_range(100.0, POSITIVE)
    margin_reference_dim: int | None = in_range(2048, COUNT)  # None: use ``margin`` as given at any width
    um_weight: float = in_range(5e-4, NON_NEGATIVE)  # alpha
    be_weight: float = in_range(1.0, NON_NEGATIVE)  # beta


def _selection(order: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Time-indexed bool mask of the selected snippets from a sort order and its rank mask."""
    return torch.zeros_like(ranks).scatter(1, order, ranks)


class WUM(StreamModel):
    """``WUM(context, **WUMHyperparameters fields)``."""

    hyperparameters = WUMHyperparameters

    def __init__(self, context: ModelContext, **hyperparameters):
        super().__init__(context)
        input_dim, num_classes = context.input_dim, context.num_classes
        self.hp = parse_hyperparameters(WUMHyperparameters, "wum", hyperparameters)
        hidden = self.hp.hidden_dim or input_dim
        self.margin = self.hp.margin * (
            1.0 if self.hp.margin_reference_dim is None else math.sqrt(hidden / self.hp.margin_reference_dim))
        self.embedding = nn.Conv1d(input_dim, hidden, kernel_size=3, padding=1)
        self.classifier = nn.Conv1d(hidden, num_classes, kernel_size=1, bias=False)
        self.dropout = nn.Dropout(self.hp.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        features, mask = self.joint_input(batch), batch.mask
        hp = self.hp
        emb = masked_fill_zero(torch.relu(masked_conv1d(self.embedding, features, mask)), mask)
        cas = masked_conv1d(self.classifier, self.dropout(emb), mask)  # (B, T, C)
        magnitude = torch.linalg.vector_norm(emb, dim=-1)  # (B, T)
        keep = self.dropout(torch.ones_like(magnitude)) if self.training else torch.ones_like(magnitude)
        reverse = masked_max(magnitude, mask).unsqueeze(1) - magnitude
        k_act, k_bkg = topk_count(mask, hp.act_ratio), topk_count(mask, hp.bkg_ratio)
        with torch.no_grad():  # selection only; gradients flow through the gathered features
            act = _selection(*masked_topk_indices(magnitude * keep, mask, k_act))
            bkg = _selection(*masked_topk_indices(reverse * keep, mask, k_bkg))
        act_f, bkg_f = act.to(emb.dtype), bkg.to(emb.dtype)
        kf_act, kf_bkg = k_act.to(emb.dtype).unsqueeze(1), k_bkg.to(emb.dtype).unsqueeze(1)
        feat_act = torch.einsum("bt,btd->bd", act_f, emb) / kf_act
        feat_bkg = torch.einsum("bt,btd->bd", bkg_f, emb) / kf_bkg
        logits_act = masked_topk_mean(cas, mask, k_act)
        logits_bkg = torch.einsum("bt,btc->bc", bkg_f, cas) / kf_bkg
        # test-time magnitude normalisation between the background and the action mean magnitudes
        mag_act = (act_f * magnitude).sum(dim=1, keepdim=True) / kf_act
        mag_bkg = (bkg_f * magnitude).sum(dim=1, keepdim=True) / kf_bkg
        delta = mag_act - mag_bkg
        delta = torch.where(delta > 0, delta, torch.ones_like(delta))
        fg = masked_fill_zero(((magnitude - mag_bkg) / delta).clamp(0.0, 1.0), mask)
        fg_open = fg.clamp(1e-6, 1.0 - 1e-6)
        background = torch.logsumexp(cas, dim=-1) + torch.log1p(-fg_open) - torch.log(fg_open)
        cas_logits = torch.cat([cas, background.unsqueeze(-1)], dim=-1)
        return ModelOutput(video_scores=torch.softmax(logits_act, dim=-1), cas_logits=cas_logits, attention=fg,
                           extras={"cas": cas, "logits_act": logits_act, "logits_bkg": logits_bkg,
                                   "feat_act": feat_act, "feat_bkg": feat_bkg,
                                   "magnitude": magnitude})

    def losses(self, out: ModelOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        labels = batch.labels
        hp = self.hp
        target = labels / labels.sum(dim=1, keepdim=True).clamp(min=1e-8)
        cls = softmax_binary_cross_entropy(out.extras["logits_act"], target)
        uniform = torch.full_like(labels, 1.0 / labels.shape[1])
        be = softmax_binary_cross_entropy(out.extras["logits_bkg"], uniform)
        act_norm = torch.linalg.vector_norm(out.extras["feat_act"], dim=-1)
        bkg_norm = torch.linalg.vector_norm(out.extras["feat_bkg"], dim=-1)
        um = (F.relu(self.margin - act_norm) + bkg_norm) ** 2
        total = cls + hp.um_weight * um + hp.be_weight * be
        return {"total": total, "cls": cls, "be": be, "um": um}

    def localization_scores(self, out: ModelOutput, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``minmax_T(softmax_C(cas) * m_t)``; the normalised magnitude ``m_t`` is ``out.attention``."""
        weighted = torch.softmax(out.extras["cas"], dim=-1) * out.attention.unsqueeze(-1)
        return masked_minmax_normalize(weighted, mask), out.video_scores

    def distill_logits(self, out: ModelOutput) -> list[tuple[float, torch.Tensor]]:
        return [(1.0, out.cas_logits)]
