"""Annotations, feature sources, synthetic data and the snippet <-> seconds conversion."""

from wtal.data.activitynet import read_activitynet_json, write_activitynet_json
from wtal.data.annotations import AnnotationSet, Instance, VideoInfo
from wtal.data.folders import FolderSource, write_video_folders
from wtal.data.segments import SegmentTable
from wtal.data.sources import FeatureSource, load_annotations, open_source, split_subsets
from wtal.data.timebase import (
    I3D_SNIPPETS_PER_SECOND,
    FeatureLayout,
    seconds_to_snippets,
    snippet_count,
    snippets_to_seconds,
)
from wtal.data.wtalc import WtalcSource, read_wtalc_annotations, write_wtalc_bundle

__all__ = ["AnnotationSet", "FeatureLayout", "I3D_SNIPPETS_PER_SECOND", "Instance", "SegmentTable",
           "VideoInfo", "seconds_to_snippets", "snippet_count", "snippets_to_seconds",
           # readers and writers (VideoDataset lives in wtal.data.dataset, which imports torch)
           "FeatureSource", "FolderSource", "WtalcSource", "load_annotations", "open_source",
           "read_activitynet_json", "read_wtalc_annotations", "split_subsets", "write_activitynet_json",
           "write_video_folders", "write_wtalc_bundle"]
