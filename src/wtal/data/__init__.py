"""Annotations, feature sources, synthetic data and the snippet <-> seconds conversion."""

from wtal.data.annotations import AnnotationSet, Instance, VideoInfo
from wtal.data.segments import SegmentTable
from wtal.data.timebase import (
    I3D_SNIPPETS_PER_SECOND,
    FeatureLayout,
    seconds_to_snippets,
    snippet_count,
    snippets_to_seconds,
)

__all__ = ["AnnotationSet", "FeatureLayout", "I3D_SNIPPETS_PER_SECOND", "Instance", "SegmentTable",
           "VideoInfo", "seconds_to_snippets", "snippet_count", "snippets_to_seconds"]
