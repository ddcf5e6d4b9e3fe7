"""Per-video feature folders: ``features/{train,test}/{rgb,flow}/VIDEO.npy`` plus an ActivityNet-style
``gt.json``.

Each ``VIDEO.npy`` is a plain float ``(T, D_modality)`` array; the RGB and flow files of a video have the
same ``T`` and are concatenated RGB first. The split folder is ``test`` for the evaluation subset and
``train`` for the training subset (see :func:`~wtal.data.sources.split_subsets`); a video is looked for in
the other split folder too, so hand-made folders with a different split still load. Files are read
lazily, one video at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from wtal.atomic import write_atomic
from wtal.data.activitynet import read_activitynet_json, write_activitynet_json
from wtal.data.annotations import AnnotationSet
from wtal.data.sources import FEATURES_DIR, GT_FILE, split_subsets
from wtal.data.timebase import FeatureLayout
from wtal.data.validate import REEXTRACT, check_features
from wtal.errors import WtalInputError

MODALITIES = ("rgb", "flow")
SPLITS = ("train", "test")


def _split_folders(annotations: AnnotationSet) -> dict[str, str]:
    train, test = split_subsets(annotations)
    return {train: "train", test: "test"}


def write_video_folders(folder: str | Path, annotations: AnnotationSet, features: Mapping[str, np.ndarray],
                        layout: FeatureLayout) -> Path:
    """Write ``folder/features/{train,test}/{rgb,flow}/VIDEO.npy`` and ``folder/gt.json``; return ``folder``.

    ``rgb`` is ``features[name][:, layout.rgb]`` and ``flow`` is ``features[name][:, layout.flow]``. Every
    video must belong to the training or the evaluation subset. ``gt.json`` is written last.
    """
    folder = Path(folder)
    split_of = _split_folders(annotations)
    for v in annotations.videos.values():
        where = folder / FEATURES_DIR
        if v.subset not in split_of:
            raise WtalInputError(f"subset {v.subset!r} is neither the training nor the evaluation subset "
                                 f"{tuple(split_of)}", path=annotations.source, video=v.name,
                                 fix="drop the videos of other subsets before writing")
        if v.snippets_per_second != layout.snippets_per_second:
            raise WtalInputError(f"video rate {v.snippets_per_second} differs from the layout rate "
                                 f"{layout.snippets_per_second}", path=annotations.source, video=v.name,
                                 fix="use one snippet rate for the annotations and the layout")
        if v.name not in features:
            raise WtalInputError("no features given for this video", path=where, video=v.name,
                                 fix="pass features for every annotated video")
        x = check_features(features[v.name], path=where, video=v.name, dim=layout.dim)
        for modality in MODALITIES:
            part = np.ascontiguousarray(x[:, layout.columns(modality)])
            path = where / split_of[v.subset] / modality / f"{v.name}.npy"
            write_atomic(path, lambda fh, part=part: np.save(fh, part, allow_pickle=False), binary=True)
    write_activitynet_json(folder / GT_FILE, annotations)
    return folder


class FolderSource:
    """A per-video feature folder as a feature source; features are loaded one video at a time."""

    def __init__(self, path: str | Path, snippets_per_second: float | None = None):
        self.path = Path(path)
        self.annotations = read_activitynet_json(self.path / GT_FILE, snippets_per_second)
        if not self.annotations.videos:
            raise WtalInputError("gt.json lists no videos", path=self.path / GT_FILE,
                                 fix="pass the right --data folder")
        try:
            self._split_of = _split_folders(self.annotations)
        except WtalInputError:  # unusual subset names: look in both split folders
            self._split_of = {}
        first = next(iter(self.annotations.videos.values()))
        self._rate = first.snippets_per_second
        self._layout: FeatureLayout | None = None

    def video_file(self, name: str, modality: str) -> Path:
        """Path of one modality of one video (the expected one when it does not exist)."""
        if name not in self.annotations.videos:
            raise WtalInputError("video not in gt.json", path=self.path / GT_FILE, video=name,
                                 fix="use a video name from gt.json")
        preferred = self._split_of.get(self.annotations.videos[name].subset)
        splits = [preferred] + [s for s in SPLITS if s != preferred] if preferred else list(SPLITS)
        paths = [self.path / FEATURES_DIR / s / modality / f"{name}.npy" for s in splits]
        return next((p for p in paths if p.is_file()), paths[0])

    def _open(self, name: str, modality: str, *, mmap: bool) -> tuple[np.ndarray, Path]:
        path = self.video_file(name, modality)
        if not path.is_file():
            raise WtalInputError(f"{modality} feature file not found", path=path, video=name,
                                 fix="pass the right --data folder or extract the features of this video")
        try:
            return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None), path
        except (OSError, ValueError, EOFError) as exc:
            raise WtalInputError(f"not a readable numeric .npy file ({exc})", path=path, video=name,
                                 fix=REEXTRACT) from None

    def _width(self, name: str, modality: str) -> int:
        """Columns of one modality, read from the file header (memory-mapped, values not read)."""
        raw, path = self._open(name, modality, mmap=True)
        head = raw if raw.ndim == 0 else raw[:1]  # checks 2-D and T >= 1 without reading the whole file
        return check_features(head, path=path, video=name, what=f"{modality} features").shape[1]

    def _load(self, name: str, modality: str, dim: int) -> np.ndarray:
        raw, path = self._open(name, modality, mmap=False)
        return check_features(raw, path=path, video=name, dim=dim, what=f"{modality} features")

    @property
    def layout(self) -> FeatureLayout:
        if self._layout is None:
            first = next(iter(self.annotations.videos))
            d_rgb, d_flow = self._width(first, "rgb"), self._width(first, "flow")
            self._layout = FeatureLayout(self._rate, (0, d_rgb), (d_rgb, d_rgb + d_flow))
        return self._layout

    def features(self, name: str) -> np.ndarray:
        """``(T, D_rgb + D_flow)`` float32 features of ``name`` (RGB columns first), checked."""
        layout = self.layout
        rgb = self._load(name, "rgb", layout.rgb[1] - layout.rgb[0])
        flow = self._load(name, "flow", layout.flow[1] - layout.flow[0])
        if rgb.shape[0] != flow.shape[0]:
            raise WtalInputError(f"rgb has {rgb.shape[0]} snippets but flow has {flow.shape[0]}",
                                 path=self.video_file(name, "flow"), video=name, fix=REEXTRACT)
        return np.concatenate([rgb, flow], axis=1)
