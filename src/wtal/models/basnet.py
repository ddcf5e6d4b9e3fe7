"""BaS-Net (Lee et al., AAAI 2020; Pilhyeon/BaSNet-pytorch): background suppression with a shared CAS module.

Filtering module ``w_t = sigmoid(Conv1(LReLU(Conv1(x))))`` (kernel 1, 512 hidden); CAS module
``Conv3 -> LReLU -> Conv3 -> LReLU -> Dropout(0.7) -> Conv1 (C+1, no bias)`` applied to ``x`` (base branch)
and to ``w * x`` (suppression branch). Video scores: softmax over C+1 of the mean of the top-k CAS per class,
``k = max(T_i // 8, 1)`` per video. Loss: BCE(base, norm([y, 1])) + BCE(supp, norm([y, 0])) +
``1e-4 * ||w||_1`` (the BCE averages over the C+1 columns, as ``nn.BCELoss``).

Masking: padded snippets are zeroed before every kernel-3 convolution, so a padded video sees the same zero
border as alone. Differences from the reference: it trains on random T=750 crops (k=93 fixed); here a video
is used whole with ``k`` from its true length. ``hidden_dim`` defaults to ``input_dim`` (2048 on I3D, the
reference width).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from wtal.data.batch import Batch
from wtal.models.base import ModelContext, ModelOutput, StreamModel
from wtal.models.losses import softmax_binary_cross_entropy, with_background
from wtal.models.masked import (
    masked_conv1d,
    masked_fill_zero,
    masked_minmax_normalize,
    masked_sum,
    masked_topk_mean,
    topk_count,
)
from wtal.models.recipes import parse_hyperparameters
from wtal.ranges import BELOW_ONE, COUNT, DIVISOR, NON_NEGATIVE, in_range


@dataclass(frozen=True)
class BaSNetHyperparameters:
    hidden_dim: int | None = in_range(None, COUNT)  # None -> input_dim
    filter_hidden: int = in_range(512, COUNT)
    dropout: float = in_range(0.7, BELOW_ONE)
    topk_ratio: float = in_range(8.0, DIVISOR)
    norm_weight: float = in_range(1e-4, NON_NEGATIVE)  # alpha


class CASModule(nn.Module):
    """Temporal convolutions to ``(B, T, C+1)`` logits, masked."""

    def __init__(self, input_dim: int, hidden: int, num_outputs: int, dropout: float, activation: nn.Module):
        super().__init__()
        self.conv1 = nn.Conv1d(input_dim, hidden, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(hidden, hidden, kernel_size=3, padding=1)
        self.classifier = nn.Conv1d(hidden, num_outputs, kernel_size=1, bias=False)
        self.activation = activation
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.activation(masked_conv1d(self.conv1, x, mask))
        h = self.activation(masked_conv1d(self.conv2, h, mask))
        return masked_conv1d(self.classifier, self.dropout(h), mask)


class BaSNet(StreamModel):
    """``BaSNet(context, **BaSNetHyperparameters fields)``."""

    hyperparameters = BaSNetHyperparameters

    def __init__(self, context: ModelContext, **hyperparameters):
        super().__init__(context)
        input_dim, num_classes = context.input_dim, context.num_classes
        self.hp = parse_hyperparameters(BaSNetHyperparameters, "basnet", hyperparameters)
        self.filter = nn.Sequential(nn.Linear(input_dim, self.hp.filter_hidden), nn.LeakyReLU(),
                                    nn.Linear(self.hp.filter_hidden, 1))
        self.cas_module = CASModule(input_dim, self.hp.hidden_dim or input_dim, num_classes + 1,
                                    self.hp.dropout, nn.LeakyReLU())

    def forward(self, batch: Batch) -> ModelOutput:
        features, mask = self.joint_input(batch), batch.mask
        fore = masked_fill_zero(torch.sigmoid(self.filter(features).squeeze(-1)), mask)  # (B, T)
        cas_base = self.cas_module(features, mask)
        cas_supp = self.cas_module(fore.unsqueeze(-1) * features, mask)
        k = topk_count(mask, self.hp.topk_ratio)
        logits_base = masked_topk_mean(cas_base, mask, k)
        logits_supp = masked_topk_mean(cas_supp, mask, k)
        score_supp = torch.softmax(logits_supp, dim=-1)
        return ModelOutput(video_scores=score_supp[:, : self.num_classes],
                           cas_logits=cas_supp, attention=fore,
                           extras={"cas_base": cas_base, "logits_base": logits_base, "logits_supp": logits_supp})

    def losses(self, out: ModelOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        labels, mask = batch.labels, batch.mask
        y_base, y_supp = with_background(labels, 1.0), with_background(labels, 0.0)
        y_base = y_base / y_base.sum(dim=1, keepdim=True)
        y_supp = y_supp / y_supp.sum(dim=1, keepdim=True).clamp(min=1e-8)
        # BCE of the softmax video scores (the reference's BCELoss), from the logits so that a saturated
        # softmax cannot give NaN gradients (see softmax_binary_cross_entropy)
        base = softmax_binary_cross_entropy(out.extras["logits_base"], y_base)
        supp = softmax_binary_cross_entropy(out.extras["logits_supp"], y_supp)
        norm = masked_sum(out.attention, mask)
        return {"total": base + supp + self.hp.norm_weight * norm, "base": base, "supp": supp, "norm": norm}

    def localization_scores(self, out: ModelOutput, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Suppression-branch CAS, min-max normalised over time (ReLU'd bounds, clipped to [0, 1])."""
        cas = masked_minmax_normalize(out.cas_logits[..., : self.num_classes], mask)
        return cas, out.video_scores

    def distill_logits(self, out: ModelOutput) -> list[tuple[float, torch.Tensor]]:
        return [(1.0, out.cas_logits)]
