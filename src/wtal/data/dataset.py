"""Whole-video dataset over a feature source: one :class:`~wtal.data.batch.Sample` per video, with the
streams a run reads."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from wtal.data.batch import Batch, Sample, collate_samples
from wtal.data.sources import FeatureSource
from wtal.data.streams import unknown_streams
from wtal.errors import WtalInputError


class VideoDataset(torch.utils.data.Dataset):
    """Item ``i``: a :class:`Sample` with the streams ``streams`` of video ``names[i]`` and its video-level
    training labels. With ``cache`` every video is kept in memory after its first load."""

    def __init__(self, source: FeatureSource, names: Sequence[str], streams: Sequence[str] = ("rgb", "flow"),
                 cache: bool = True):
        available = source.stream_widths()
        missing = unknown_streams(streams, available, source.path)
        if missing is not None:
            raise missing
        if not streams:
            raise WtalInputError("no feature stream selected", path=source.path,
                                 fix=f"read at least one of the data's streams {list(available)}")
        unknown = [n for n in names if n not in source.annotations.videos]
        if unknown:
            raise WtalInputError(f"{len(unknown)} requested videos are not in the annotations",
                                 path=source.path, video=unknown[0],
                                 fix="use video names from the source's annotations")
        self.source = source
        self.names = list(names)
        self.streams = list(streams)
        self.stream_widths = {s: available[s] for s in self.streams}
        self.cache = cache
        self._cached: dict[int, dict[str, np.ndarray]] = {}

    @property
    def classes(self) -> list[str]:
        return self.source.annotations.classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_width(self) -> int:
        """Total width of the dataset's streams (the feature dimension a joint model sees)."""
        return sum(self.stream_widths.values())

    def __len__(self) -> int:
        return len(self.names)

    def video_features(self, i: int) -> dict[str, np.ndarray]:
        """``{stream: (T, D_stream) float32}`` of video ``i``."""
        x = self._cached.get(i)
        if x is None:
            x = self.source.features(self.names[i], self.streams)
            if self.cache:
                self._cached[i] = x
        return x

    def __getitem__(self, i: int) -> Sample:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        name = self.names[i]
        return Sample(self.video_features(i), self.source.annotations.multi_hot(name), name, i)

    def collate(self, samples: Sequence[Sample]) -> Batch:
        return collate_samples(samples)
