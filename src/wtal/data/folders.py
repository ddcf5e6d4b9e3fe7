"""Per-video feature folders: ``features/{train,test}/STREAM/VIDEO.npy`` plus an ActivityNet-style ``gt.json``.

Each ``VIDEO.npy`` is a plain float ``(T, D_stream)`` array. Every sub-folder of ``features/{train,test}/``
is a stream (``rgb`` and ``flow`` for I3D, any extra one such as ``clip``); all streams of a video have the
same ``T``. The split folder is ``test`` for the evaluation subset and ``train`` for the training subset
(see :func:`~wtal.data.sources.split_subsets`); a video is looked for in the other split folder too, so
hand-made folders with a different split still load. Files are read lazily, one video at a time. An optional
``class_text.npy`` (``(C, E)``, class-list order) holds class-name text embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from wtal.atomic import write_atomic
from wtal.data.activitynet import read_activitynet_json, write_activitynet_json
from wtal.data.annotations import AnnotationSet
from wtal.data.sources import FEATURES_DIR, GT_FILE, split_subsets
from wtal.data.streams import (
    CLASS_TEXT_FILE,
    DEFAULT_MAX_LENGTH_MISMATCH,
    LengthRule,
    NpyStream,
    align_lengths,
    ordered_streams,
    read_class_text,
    stream_folders,
    unknown_streams,
)
from wtal.data.validate import check_features
from wtal.errors import WtalInputError

SPLITS = ("train", "test")


def _split_folders(annotations: AnnotationSet) -> dict[str, str]:
    train, test = split_subsets(annotations)
    return {train: "train", test: "test"}


def write_video_folders(folder: str | Path, annotations: AnnotationSet,
                        features: Mapping[str, Mapping[str, np.ndarray]]) -> Path:
    """Write ``folder/features/{train,test}/STREAM/VIDEO.npy`` and ``folder/gt.json``; return ``folder``.

    ``features[video][stream]`` is a ``(T, D_stream)`` array; every video needs the same streams, each
    with the same width in every video. Every video must belong to the training or the evaluation subset.
    ``gt.json`` is written last.
    """
    folder = Path(folder)
    split_of = _split_folders(annotations)
    widths: dict[str, int] = {}
    where = folder / FEATURES_DIR
    for v in annotations.videos.values():
        if v.subset not in split_of:
            raise WtalInputError(f"subset {v.subset!r} is neither the training nor the evaluation subset "
                                 f"{tuple(split_of)}", path=annotations.source, video=v.name,
                                 fix="drop the videos of other subsets before writing")
        if v.name not in features:
            raise WtalInputError("no features given for this video", path=where, video=v.name,
                                 fix="pass features for every annotated video")
        streams = features[v.name]
        if widths and set(streams) != set(widths):
            raise WtalInputError(f"streams {sorted(streams)} differ from the other videos' {sorted(widths)}",
                                 path=where, video=v.name, fix="give every video the same streams")
        arrays = {s: check_features(x, path=where, video=v.name, dim=widths.get(s), what=f"{s} features")
                  for s, x in streams.items()}
        align_lengths(v.name, arrays, where)  # the writer accepts no mismatch
        for stream, x in arrays.items():
            widths[stream] = x.shape[1]
            path = where / split_of[v.subset] / stream / f"{v.name}.npy"
            part = np.ascontiguousarray(x)
            write_atomic(path, lambda fh, part=part: np.save(fh, part, allow_pickle=False), binary=True)
    write_activitynet_json(folder / GT_FILE, annotations)
    return folder


class FolderSource:
    """A per-video feature folder as a feature source; features are loaded one video at a time. Streams of a
    video that differ by at most ``max_length_mismatch`` snippets are truncated to the shortest."""

    def __init__(self, path: str | Path, snippets_per_second: float | None = None,
                 max_length_mismatch: int = DEFAULT_MAX_LENGTH_MISMATCH):
        self.lengths = LengthRule(max_length_mismatch)
        self.path = Path(path)
        self.annotations = read_activitynet_json(self.path / GT_FILE, snippets_per_second)
        if not self.annotations.videos:
            raise WtalInputError("gt.json lists no videos", path=self.path / GT_FILE,
                                 fix="pass the right --data folder")
        try:
            self._split_of = _split_folders(self.annotations)
        except WtalInputError:  # unusual subset names: look in both split folders
            self._split_of = {}
        self.snippets_per_second = next(iter(self.annotations.videos.values())).snippets_per_second
        names = set()
        for split in SPLITS:
            names |= set(stream_folders(self.path / FEATURES_DIR / split))
        self._streams = {s: NpyStream(s, [self.path / FEATURES_DIR / split / s for split in SPLITS])
                         for s in ordered_streams(names)}
        self._widths: dict[str, int] | None = None

    def stream_widths(self) -> dict[str, int]:
        """Every stream of the folder and its width (read from the first video's file header)."""
        if self._widths is None:
            self._widths = {s: stream.width(self.annotations.videos) for s, stream in self._streams.items()}
        return dict(self._widths)

    def _preferred(self, name: str, stream: str) -> Path | None:
        split = self._split_of.get(self.annotations.videos[name].subset)
        return self.path / FEATURES_DIR / split / stream if split else None

    def video_file(self, name: str, stream: str) -> Path:
        """Path of one stream of one video (the expected one when it does not exist)."""
        if name not in self.annotations.videos:
            raise WtalInputError("video not in gt.json", path=self.path / GT_FILE, video=name,
                                 fix="use a video name from gt.json")
        if stream not in self._streams:
            raise unknown_streams([stream], self.stream_widths(), self.path / FEATURES_DIR)
        return self._streams[stream].path(name, self._preferred(name, stream))

    def features(self, name: str, streams: Sequence[str]) -> dict[str, np.ndarray]:
        """``{stream: (T, D_stream) float32}`` of video ``name``, checked (finite, same ``T`` after the length
        rule)."""
        widths = self.stream_widths()
        missing = unknown_streams(streams, widths, self.path / FEATURES_DIR)
        if missing is not None:
            raise missing
        if name not in self.annotations.videos:
            raise WtalInputError("video not in gt.json", path=self.path / GT_FILE, video=name,
                                 fix="use a video name from gt.json")
        out = {s: self._streams[s].load(name, widths[s], self._preferred(name, s)) for s in streams}
        return self.lengths.apply(name, out, self.video_file(name, streams[-1]))

    @property
    def class_text_path(self) -> Path:
        return self.path / CLASS_TEXT_FILE

    def class_text(self) -> np.ndarray | None:
        return read_class_text(self.class_text_path, self.annotations.classes)
