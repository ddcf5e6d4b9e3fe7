"""wtal.pseudo: pseudo-label generation (LinPro)."""

from wtal.pseudo.linpro import (
    LinProConfig,
    LinProStats,
    constraint_matrix,
    pseudo_labels_for_videos,
    solve_class,
    solve_class_dense,
    video_pseudo_labels,
)
from wtal.pseudo.plugin import GauFuseConfig, GauFusePlugin, build_gaufuse_plugin
from wtal.pseudo.schedule import PseudoSchedule

__all__ = [
    "GauFuseConfig",
    "GauFusePlugin",
    "PseudoSchedule",
    "build_gaufuse_plugin",
    "LinProConfig",
    "LinProStats",
    "constraint_matrix",
    "pseudo_labels_for_videos",
    "solve_class",
    "solve_class_dense",
    "video_pseudo_labels",
]
