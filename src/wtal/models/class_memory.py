"""Per-class memories of scored feature entries (RSKP's representative bases, ISSF's salient features).

A memory is a ``(C, N, D)`` buffer of entries and a ``(C, N)`` buffer of their scores. A video reads the
entries of its positive classes (:func:`read_class_memory`); a new candidate set enters a class's memory by
merging with the stored entries and keeping the ``N`` highest scores (:func:`merge_top_scored`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from wtal.data.batch import Batch
from wtal.models.base import ModelOutput
from wtal.models.masked import packed_indices


def read_class_memory(memory: torch.Tensor, labels: torch.Tensor, first_class_only: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored entries of each video's positive classes, padded: ``(B, N * max|cls|, D)`` and a mask.

    Classes are read in ascending order (as ``np.where``); a video's padding slots repeat another class's
    entries and are False in the mask. ``first_class_only``: class 0's entries once per positive class instead
    (ISSF's released training loop, whose ``np.where`` on a ``(1, C)`` label array gives row indices).
    """
    slots = memory.shape[1]
    classes, valid = packed_indices(labels > 0.5)
    if first_class_only:
        classes = torch.zeros_like(classes)
    entries = memory[classes]  # (B, width, slots, D)
    entry_mask = valid.unsqueeze(-1).expand(-1, -1, slots)
    return entries.reshape(labels.shape[0], -1, memory.shape[-1]), entry_mask.reshape(labels.shape[0], -1)


def merge_top_scored(stored: torch.Tensor, stored_scores: torch.Tensor, new: torch.Tensor,
                     new_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``N`` highest-scored of the stored and the new entries of ``n`` classes.

    ``stored (n, N, D)``, ``stored_scores (n, N)``; ``new (K, D)`` are candidates for every class, scored
    per class by ``new_scores (n, K)``. Returns ``(n, N, D)`` entries and ``(n, N)`` scores, highest first.
    The sort is stable, so on ties stored entries stay first.
    """
    slots = stored.shape[1]
    scores = torch.cat([stored_scores, new_scores.to(stored_scores.dtype)], dim=1)  # (n, N + K)
    entries = torch.cat([stored, new.to(stored.dtype).unsqueeze(0).expand(stored.shape[0], -1, -1)], dim=1)
    top = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :slots]
    return (torch.gather(entries, 1, top.unsqueeze(-1).expand(-1, -1, entries.shape[-1])),
            torch.gather(scores, 1, top))


def fill_from_training_set(model: nn.Module, train_batches: Callable[[], Iterable[Batch]],
                           update: Callable[[ModelOutput, Batch], None], device: torch.device) -> None:
    """One eval-mode, no-grad pass of ``model`` over ``train_batches()`` calling ``update(out, batch)`` per
    batch (a memory's initialisation); the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in train_batches():
            batch = batch.to(device)
            update(model(batch), batch)
    model.train(was_training)
