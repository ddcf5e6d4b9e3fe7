"""Whole-video batches padded to the longest video, with a mask."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Batch:
    features: torch.Tensor  # (B, T, D) float32, zero-padded
    mask: torch.Tensor  # (B, T) bool, True on real snippets
    labels: torch.Tensor  # (B, C) float32 multi-hot video labels
    names: list[str]
    index: torch.Tensor  # (B,) int64 position of each video in its dataset

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.features.to(device), self.mask.to(device), self.labels.to(device), self.names,
                     self.index.to(device))


def collate_videos(items: Sequence[tuple[np.ndarray, np.ndarray, str, int]]) -> Batch:
    """Pad ``(features (T, D), labels (C,), name, index)`` items into one :class:`Batch`."""
    lengths = [int(f.shape[0]) for f, _, _, _ in items]
    t_max, dim = max(lengths), int(items[0][0].shape[1])
    feats = torch.zeros(len(items), t_max, dim, dtype=torch.float32)
    mask = torch.zeros(len(items), t_max, dtype=torch.bool)
    for b, (f, _, _, _) in enumerate(items):
        feats[b, : lengths[b]] = torch.as_tensor(f, dtype=torch.float32)
        mask[b, : lengths[b]] = True
    labels = torch.as_tensor(np.stack([y for _, y, _, _ in items]), dtype=torch.float32)
    return Batch(feats, mask, labels, [n for _, _, n, _ in items],
                 torch.as_tensor([i for _, _, _, i in items], dtype=torch.int64))
