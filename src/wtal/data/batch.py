"""Samples (one video or one query, as a record of named streams) and padded batches of them.

A :class:`Sample` carries its features as named streams (``{"rgb": (T, D_rgb), "flow": (T, D_flow), ...}``,
every stream with the same ``T``), its video-level labels when the task has them, and task-specific
``fields`` (a grounding query's word ids, ...). A :class:`Batch` pads every stream to the longest sample
and adds a mask; tasks collate their own fields. Adding a field to a sample never changes a signature.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class Sample:
    inputs: dict[str, np.ndarray]  # stream -> (T, D_s) float32
    labels: np.ndarray | None  # (C,) float32 multi-hot video labels, or None
    name: str  # the video
    index: int  # position in its dataset
    fields: dict[str, Any] = field(default_factory=dict)  # task-specific extras

    @property
    def length(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # stream -> (B, T, D_s) float32, zero-padded
    mask: torch.Tensor  # (B, T) bool, True on real snippets
    labels: torch.Tensor | None  # (B, C) float32 multi-hot video labels, or None
    names: list[str]
    index: torch.Tensor  # (B,) int64 position of each sample in its dataset
    fields: dict[str, Any] = field(default_factory=dict)  # task-specific, collated by the task

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)

    def to(self, device: torch.device | str) -> Batch:
        def move(x: Any) -> Any:
            return x.to(device) if isinstance(x, torch.Tensor) else x

        return Batch({k: v.to(device) for k, v in self.inputs.items()}, self.mask.to(device), move(self.labels),
                     self.names, self.index.to(device), {k: move(v) for k, v in self.fields.items()})


FieldCollate = Callable[[Sequence[Sample]], dict[str, Any]]


def collate_samples(samples: Sequence[Sample], collate_fields: FieldCollate | None = None) -> Batch:
    """Pad ``samples`` into one :class:`Batch` (every stream to the longest sample)."""
    lengths = [s.length for s in samples]
    t_max = max(lengths)
    inputs = {}
    for stream in samples[0].inputs:
        dim = int(samples[0].inputs[stream].shape[1])
        padded = torch.zeros(len(samples), t_max, dim, dtype=torch.float32)
        for b, s in enumerate(samples):
            padded[b, : lengths[b]] = torch.as_tensor(s.inputs[stream], dtype=torch.float32)
        inputs[stream] = padded
    mask = torch.arange(t_max).unsqueeze(0) < torch.as_tensor(lengths).unsqueeze(1)
    labels = None
    if samples[0].labels is not None:
        labels = torch.as_tensor(np.stack([s.labels for s in samples]), dtype=torch.float32)
    fields = collate_fields(samples) if collate_fields is not None else {}
    return Batch(inputs, mask, labels, [s.name for s in samples],
                 torch.as_tensor([s.index for s in samples], dtype=torch.int64), fields)
