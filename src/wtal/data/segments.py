"""Columnar tables of temporal segments in seconds: ground truth and detections share one type.

A :class:`SegmentTable` holds ``n`` rows ``(video, label, start, end, score)`` as numpy columns, so
evaluation and post-processing can group and compare with masks instead of Python loops. ``label`` is an
index into ``classes``; ``score`` is 1 for ground truth.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SegmentTable:
    classes: tuple[str, ...]
    video: np.ndarray  # (n,) object array of str
    label: np.ndarray  # (n,) int64, index into classes
    start: np.ndarray  # (n,) float64 seconds
    end: np.ndarray  # (n,) float64 seconds
    score: np.ndarray  # (n,) float64

    def __post_init__(self) -> None:
        n = len(self.video)
        for name in ("label", "start", "end", "score"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"SegmentTable column {name!r} has {len(getattr(self, name))} rows, expected {n}")

    @classmethod
    def from_rows(cls, classes: Sequence[str], rows: Iterable[tuple[str, str | int, float, float, float]]
                  ) -> SegmentTable:
        """Build from ``(video, label, start, end, score)`` rows; labels may be names or indices."""
        classes = tuple(classes)
        index = {c: i for i, c in enumerate(classes)}
        rows = list(rows)
        video = np.array([r[0] for r in rows], dtype=object)
        label = np.array([index[r[1]] if isinstance(r[1], str) else int(r[1]) for r in rows], dtype=np.int64)
        start = np.array([r[2] for r in rows], dtype=np.float64)
        end = np.array([r[3] for r in rows], dtype=np.float64)
        score = np.array([r[4] for r in rows], dtype=np.float64)
        return cls(classes, video, label, start, end, score)

    @classmethod
    def empty(cls, classes: Sequence[str]) -> SegmentTable:
        return cls.from_rows(classes, [])

    @classmethod
    def concat(cls, tables: Sequence[SegmentTable], classes: Sequence[str] | None = None) -> SegmentTable:
        """Concatenate tables with the same class list (or an explicit one, remapping labels by name)."""
        if classes is None:
            if not tables:
                raise ValueError("concat of no tables needs an explicit class list")
            classes = tables[0].classes
        classes = tuple(classes)
        index = {c: i for i, c in enumerate(classes)}
        parts = []
        for t in tables:
            remap = np.array([index[c] for c in t.classes], dtype=np.int64) if t.classes else np.zeros(0, np.int64)
            parts.append((t.video, remap[t.label] if len(t) else t.label, t.start, t.end, t.score))
        if not parts:
            return cls.empty(classes)
        cols = [np.concatenate([p[i] for p in parts]) for i in range(5)]
        return cls(classes, cols[0].astype(object), cols[1].astype(np.int64), cols[2].astype(np.float64),
                   cols[3].astype(np.float64), cols[4].astype(np.float64))

    def __len__(self) -> int:
        return len(self.video)

    def select(self, mask_or_index) -> SegmentTable:
        """Rows selected by a boolean mask or an index array."""
        return SegmentTable(self.classes, self.video[mask_or_index], self.label[mask_or_index],
                            self.start[mask_or_index], self.end[mask_or_index], self.score[mask_or_index])

    def for_videos(self, videos: Iterable[str]) -> SegmentTable:
        keep = set(videos)
        return self.select(np.array([v in keep for v in self.video], dtype=bool))

    def rows(self) -> list[tuple[str, str, float, float, float]]:
        return [(str(v), self.classes[int(c)], float(s), float(e), float(q))
                for v, c, s, e, q in zip(self.video, self.label, self.start, self.end, self.score, strict=True)]
