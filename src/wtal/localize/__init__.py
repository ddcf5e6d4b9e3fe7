"""From class activation sequences to action instances: proposals, fusion / NMS, CAS files.

See :mod:`wtal.localize.pipeline` for the presets and :mod:`wtal.localize.casfile` for the CAS file format.
"""

from wtal.localize.casfile import read_cas_file, write_cas_file
from wtal.localize.fusion import fuse_instances, temporal_iou
from wtal.localize.pipeline import (
    LocalizeConfig,
    VideoInstances,
    instances_to_table,
    localize_video,
    localize_videos,
)
from wtal.localize.proposals import LinearMargin, PowerMargin, multi_threshold_proposals
from wtal.localize.suppression import nms, soft_nms

__all__ = ["LinearMargin", "LocalizeConfig", "PowerMargin", "VideoInstances", "fuse_instances",
           "instances_to_table", "localize_video", "localize_videos", "multi_threshold_proposals", "nms",
           "read_cas_file", "soft_nms", "temporal_iou", "write_cas_file"]
