"""Whole-video dataset over a feature source, with modality selection."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from wtal.data.sources import FeatureSource
from wtal.errors import WtalInputError

MODALITY_CHOICES = ("rgb", "flow", "both")


class VideoDataset(torch.utils.data.Dataset):
    """Item ``i``: ``(features (T, D') float32, labels (C,) float32 multi-hot, name, i)``.

    ``D'`` is the width of the selected modality (``rgb``, ``flow`` or ``both``); labels are the video-level
    training labels. With ``cache`` every video is kept in memory after its first load.
    """

    def __init__(self, source: FeatureSource, names: Sequence[str], modality: str = "both",
                 cache: bool = True):
        if modality not in MODALITY_CHOICES:
            raise WtalInputError(f"unknown modality {modality!r}", path=getattr(source, "path", None),
                                 fix=f"choose one of {MODALITY_CHOICES}")
        missing = [n for n in names if n not in source.annotations.videos]
        if missing:
            raise WtalInputError(f"{len(missing)} requested videos are not in the annotations",
                                 path=source.path, video=missing[0],
                                 fix="use video names from the source's annotations")
        self.source = source
        self.names = list(names)
        self.modality = modality
        self.cache = cache
        self._columns = source.layout.columns(modality)
        self._cached: dict[int, np.ndarray] = {}

    @property
    def classes(self) -> list[str]:
        return self.source.annotations.classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def feature_dim(self) -> int:
        return len(range(self.source.layout.dim)[self._columns])

    def __len__(self) -> int:
        return len(self.names)

    def video_features(self, i: int) -> np.ndarray:
        """``(T, D')`` float32 features of video ``i`` (selected modality)."""
        x = self._cached.get(i)
        if x is None:
            # A contiguous copy for one modality, so the cache does not pin the other modality's columns.
            full = self.source.features(self.names[i])
            x = full if self.modality == "both" else np.ascontiguousarray(full[:, self._columns])
            if self.cache:
                self._cached[i] = x
        return x

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, str, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        name = self.names[i]
        return self.video_features(i), self.source.annotations.multi_hot(name), name, i
