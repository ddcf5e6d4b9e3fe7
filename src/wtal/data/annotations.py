"""One annotation model for every source (W-TALC bundle, per-video folders, ActivityNet JSON).

Times are in seconds. ``VideoInfo.labels`` are the video-level labels used for training (W-TALC's
``labels_all``), which can differ from the set of instance labels used for evaluation (28 THUMOS14 videos
differ). ``ambiguous`` holds THUMOS14's "Ambiguous" segments per video (used only by the W-TALC
compatibility evaluator).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from wtal.data.segments import SegmentTable
from wtal.data.timebase import I3D_SNIPPETS_PER_SECOND
from wtal.errors import WtalInputError


@dataclass(frozen=True)
class Instance:
    label: str
    start: float  # seconds
    end: float  # seconds


@dataclass
class VideoInfo:
    name: str
    subset: str
    duration: float | None  # seconds; None when the source does not say
    labels: tuple[str, ...]  # video-level (training) labels
    instances: list[Instance] = field(default_factory=list)
    snippets_per_second: float = I3D_SNIPPETS_PER_SECOND


@dataclass
class AnnotationSet:
    classes: list[str]
    videos: dict[str, VideoInfo]  # insertion order = source order
    ambiguous: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    source: str | None = None  # file or folder the annotations came from, for error messages

    def __post_init__(self) -> None:
        known = set(self.classes)
        if len(known) != len(self.classes):
            raise WtalInputError("duplicate class names in the class list", path=self.source,
                                 fix="make every class name unique")
        for v in self.videos.values():
            for lab in (*v.labels, *(i.label for i in v.instances)):
                if lab not in known:
                    raise WtalInputError(f"unknown class {lab!r}", path=self.source, video=v.name,
                                         fix=f"use one of the {len(self.classes)} classes of the class list "
                                             "or add it there")

    @property
    def class_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def subsets(self) -> list[str]:
        return sorted({v.subset for v in self.videos.values()})

    def names(self, subset: str | None = None) -> list[str]:
        return [n for n, v in self.videos.items() if subset is None or v.subset == subset]

    def subset(self, subset: str) -> AnnotationSet:
        if subset not in self.subsets():
            raise WtalInputError(f"no video in subset {subset!r}", path=self.source,
                                 fix=f"choose one of {self.subsets()}")
        vids = {n: v for n, v in self.videos.items() if v.subset == subset}
        amb = {n: s for n, s in self.ambiguous.items() if n in vids}
        return AnnotationSet(list(self.classes), vids, amb, self.source)

    def multi_hot(self, name: str) -> np.ndarray:
        """Video-level training labels of ``name`` as a float32 ``(C,)`` multi-hot vector."""
        y = np.zeros(len(self.classes), dtype=np.float32)
        idx = self.class_index
        for lab in self.videos[name].labels:
            y[idx[lab]] = 1.0
        return y

    def ground_truth(self, videos: Iterable[str] | None = None) -> SegmentTable:
        """Instances of the given videos (default: all) as a :class:`SegmentTable` with score 1."""
        names = self.videos.keys() if videos is None else videos
        rows = [(n, i.label, i.start, i.end, 1.0) for n in names for i in self.videos[n].instances]
        return SegmentTable.from_rows(self.classes, rows)
