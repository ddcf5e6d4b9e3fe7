"""The one small protocol every base model implements.

Shapes: ``B`` videos, ``T`` snippets (padded to the longest video in the batch), ``D`` feature dims,
``C`` action classes. ``mask`` is a ``(B, T)`` bool tensor, True on real snippets. Every temporal
softmax, sum, mean and top-k inside a model must respect the mask, so that a padded batch gives the
same per-video losses and gradients as one video at a time.

Epochs are 0-based indices, as in the reference code ("epoch index e").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from wtal.data.batch import Batch


@dataclass
class ModelOutput:
    video_scores: torch.Tensor  # (B, C) action-class scores in [0, 1] (classification mAP, class gating)
    cas_logits: torch.Tensor  # (B, T, C+1) snippet logits; column C is background
    attention: torch.Tensor | None  # (B, T) class-agnostic foreground attention in [0, 1], or None
    extras: dict[str, Any] = field(default_factory=dict)  # model-specific tensors (other branches, ...)


@runtime_checkable
class WtalModel(Protocol):
    """What the engine, the localizer and the pseudo-label pipeline need from a model."""

    num_classes: int

    def __call__(self, features: torch.Tensor, mask: torch.Tensor) -> ModelOutput: ...

    def losses(self, out: ModelOutput, labels: torch.Tensor, mask: torch.Tensor, epoch: int
               ) -> dict[str, torch.Tensor]:
        """Per-video losses, each a ``(B,)`` tensor; the key ``"total"`` is the weighted sum.

        The engine sums ``total`` over the batch (a batch equals the reference's gradient accumulation).
        """
        ...

    def localization_scores(self, out: ModelOutput, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's test-time recipe: ``(cas (B, T, C) in [0, 1], video_scores (B, C))``."""
        ...

    def distill_logits(self, out: ModelOutput) -> list[tuple[float, torch.Tensor]]:
        """Weighted ``(B, T, C+1)`` logits that snippet-level pseudo labels supervise."""
        ...

    def on_epoch_end(self, epoch: int, train_batches: Callable[[], Iterable[Batch]]) -> None:
        """Model-specific state changes at the end of epoch ``epoch`` (e.g. RSKP's memory initialisation).

        ``train_batches()`` iterates the training set in a fixed order; the model switches itself to eval
        mode for such passes and restores its mode afterwards.
        """
        ...
