"""Two detection models scored together at test time (e.g. a run's model and its jointly trained teacher).

``cas = (1 - w) cas_first + w cas_second`` and ``video = (1 - w) video_first + w video_second``, each model's
own test-time recipe (``localization_scores``) on the streams it reads. Both CAS should be class
probabilities in [0, 1] (the shipped configs' models and the VLP branch are); a weight of 0 is the first
model alone. Used by ``wtal predict --teacher-weight`` and the VLP ablation.
"""

from __future__ import annotations

import torch
from torch import nn

from wtal.data.batch import Batch
from wtal.errors import WtalInputError
from wtal.models.base import ModelOutput


class FusedModel(nn.Module):
    def __init__(self, first: nn.Module, second: nn.Module, weight: float):
        super().__init__()
        if not 0.0 <= weight <= 1.0:
            raise WtalInputError(f"fusion weight {weight} is not in [0, 1]", fix="use e.g. 0.5")
        if first.num_classes != second.num_classes:
            raise WtalInputError(f"cannot fuse a {first.num_classes}-class and a {second.num_classes}-class model",
                                 fix="fuse models trained on the same class list")
        self.first, self.second, self.weight = first, second, float(weight)
        self.num_classes = first.num_classes
        self.input_streams = tuple(dict.fromkeys([*first.input_streams, *second.input_streams]))

    def forward(self, batch: Batch) -> ModelOutput:
        a, b = self.first(batch), self.second(batch)
        w = self.weight
        return ModelOutput(video_scores=(1 - w) * a.video_scores + w * b.video_scores, cas_logits=a.cas_logits,
                           attention=a.attention, extras={"first": a, "second": b})

    def localization_scores(self, out: ModelOutput, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cas_a, video_a = self.first.localization_scores(out.extras["first"], mask)
        cas_b, video_b = self.second.localization_scores(out.extras["second"], mask)
        w = self.weight
        return (1 - w) * cas_a + w * cas_b, (1 - w) * video_a + w * video_b
