"""Plain top-k MIL baseline: embedding -> per-snippet C+1 logits -> masked top-k mean -> softmax.

The video score of class c is the mean of its ``k_i = max(T_i // 8, 1)`` largest snippet logits (per video,
padding excluded), followed by a softmax over the C+1 classes (background included). The only loss is the
normalised cross-entropy with target ``[y, 1] / (|y| + 1)``: every video also contains background. The CAS
is ``softmax(logits)[:, :C]`` per snippet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from wtal.data.batch import Batch
from wtal.models.base import ModelContext, ModelOutput, StreamModel
from wtal.models.losses import normalized_cross_entropy, with_background
from wtal.models.masked import masked_topk_mean, topk_count
from wtal.models.recipes import parse_hyperparameters
from wtal.ranges import BELOW_ONE, COUNT, DIVISOR, in_range


@dataclass(frozen=True)
class MILHyperparameters:
    embed_dim: int | None = in_range(None, COUNT)  # None -> input_dim
    dropout: float = in_range(0.6, BELOW_ONE)
    topk_ratio: float = in_range(8.0, DIVISOR)  # k = T // topk_ratio snippets


class MILModel(StreamModel):
    """Top-k MIL with a background class (the "plain top-k MIL baseline") on the joint input;
    ``MILModel(context, **MILHyperparameters fields)``."""

    hyperparameters = MILHyperparameters

    def __init__(self, context: ModelContext, **hyperparameters):
        super().__init__(context)
        input_dim, num_classes = context.input_dim, context.num_classes
        hp = parse_hyperparameters(MILHyperparameters, "mil", hyperparameters)
        self.topk_ratio = float(hp.topk_ratio)
        embed_dim = hp.embed_dim or input_dim
        self.embedding = nn.Sequential(nn.Linear(input_dim, embed_dim), nn.ReLU(), nn.Dropout(hp.dropout))
        self.classifier = nn.Linear(embed_dim, num_classes + 1)
        for layer in (self.embedding[0], self.classifier):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, batch: Batch) -> ModelOutput:
        logits = self.classifier(self.embedding(self.joint_input(batch)))  # (B, T, C+1)
        mask = batch.mask
        video_logits = masked_topk_mean(logits, mask, topk_count(mask, self.topk_ratio))  # (B, C+1)
        video_probs = torch.softmax(video_logits, dim=1)
        return ModelOutput(video_scores=video_probs[:, : self.num_classes], cas_logits=logits, attention=None,
                           extras={"video_logits": video_logits})

    def losses(self, out: ModelOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        log_probs = torch.log_softmax(out.extras["video_logits"], dim=1)
        mil = normalized_cross_entropy(log_probs, with_background(batch.labels, 1.0))
        return {"mil": mil, "total": mil}

    def localization_scores(self, out: ModelOutput, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cas = torch.softmax(out.cas_logits, dim=2)[..., : self.num_classes]
        return cas * mask.unsqueeze(-1).to(cas.dtype), out.video_scores

    def distill_logits(self, out: ModelOutput) -> list[tuple[float, torch.Tensor]]:
        return [(1.0, out.cas_logits)]
