"""Named feature streams stored as one ``VIDEO.npy`` per video, and the checks every source shares.

A stream is a named per-snippet feature (``rgb``, ``flow``, ``clip``, ...); all streams of a video have the
same number of snippets ``T``, each its own width (a difference of a few snippets is truncated, see
:class:`LengthRule`). Sources (the W-TALC bundle, per-video folders) find their
streams here: a stream folder holds ``VIDEO.npy`` files directly or in split subfolders (``train/``,
``test/``, as PVLR's ``Thumos14_CLIP/{train,test}/``). Stream names are lower-case identifiers
(``[a-z][a-z0-9_]*``), so folders such as ``Thumos14reduced-Annotations`` are never taken for streams.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from wtal.atomic import write_atomic
from wtal.data.validate import REEXTRACT, check_features
from wtal.errors import WtalInputError

logger = logging.getLogger(__name__)

STREAM_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
PRIMARY_STREAMS = ("rgb", "flow")
CLASS_TEXT_FILE = "class_text.npy"
#: streams of one video whose lengths differ by at most this many snippets are truncated to the shortest
#: (``data.max_length_mismatch``): extractors that round the last partial 16-frame snippet down or up, or
#: sample the first snippet at frame 0 or at its centre, disagree by one snippet each (at most 1.3 s at
#: 25 fps); a larger difference means another snippet rate or another video, which truncation would hide
DEFAULT_MAX_LENGTH_MISMATCH = 2


def ordered_streams(names: Iterable[str]) -> list[str]:
    """``rgb``, ``flow`` first (when present), then the other streams sorted by name."""
    names = set(names)
    return [s for s in PRIMARY_STREAMS if s in names] + sorted(names - set(PRIMARY_STREAMS))


def _has_npy(folder: Path) -> bool:
    if any(folder.glob("*.npy")):
        return True
    return any(sub.is_dir() and any(sub.glob("*.npy")) for sub in folder.iterdir())


def stream_folders(root: Path, exclude: Iterable[Path] = ()) -> dict[str, Path]:
    """Sub-folders of ``root`` that hold ``.npy`` files (directly or one level down), by stream name."""
    if not root.is_dir():
        return {}
    skip = {p.resolve() for p in exclude}
    return {d.name: d for d in sorted(root.iterdir())
            if d.is_dir() and STREAM_NAME.match(d.name) and d.resolve() not in skip and _has_npy(d)}


class NpyStream:
    """One stream kept as ``VIDEO.npy`` files under one or more folders (searched in order)."""

    def __init__(self, name: str, roots: list[Path]):
        self.name = name
        self.roots = roots
        self._width: int | None = None

    def path(self, video: str, prefer: Path | None = None) -> Path:
        """The file of ``video`` (``prefer`` first); the first candidate when none exists."""
        roots = [prefer, *[r for r in self.roots if r != prefer]] if prefer is not None else self.roots
        candidates = [r / f"{video}.npy" for r in roots]
        return next((p for p in candidates if p.is_file()), candidates[0])

    def _open(self, video: str, prefer: Path | None, *, mmap: bool) -> tuple[np.ndarray, Path]:
        path = self.path(video, prefer)
        if not path.is_file():
            raise WtalInputError(f"{self.name} feature file not found", path=path, video=video,
                                 fix=f"extract the {self.name} features of this video, or train a model that does "
                                     f"not read the {self.name!r} stream (model.streams)")
        try:
            return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None), path
        except (OSError, ValueError, EOFError) as exc:
            raise WtalInputError(f"not a readable numeric .npy file ({exc})", path=path, video=video,
                                 fix=REEXTRACT) from None

    def width(self, videos: Iterable[str]) -> int:
        """Columns of the stream, read from the header of the first video that has a file."""
        if self._width is None:
            for video in videos:
                if self.path(video).is_file():
                    raw, path = self._open(video, None, mmap=True)
                    head = raw if raw.ndim == 0 else raw[:1]  # 2-D and T >= 1 without reading the values
                    self._width = check_features(head, path=path, video=video,
                                                 what=f"{self.name} features").shape[1]
                    break
            else:
                raise WtalInputError(f"no {self.name} feature file for any annotated video", path=self.roots[0],
                                     fix="name the files VIDEO.npy after the annotated videos")
        return self._width

    def load(self, video: str, dim: int, prefer: Path | None = None) -> np.ndarray:
        raw, path = self._open(video, prefer, mmap=False)
        return check_features(raw, path=path, video=video, dim=dim, what=f"{self.name} features")


def align_lengths(video: str, arrays: Mapping[str, np.ndarray], path: Path | str | None, max_mismatch: int = 0
                  ) -> dict[str, np.ndarray]:
    """The streams of ``video`` cut to a common number of snippets.

    Streams that differ by at most ``max_mismatch`` snippets are truncated to the shortest (the first snippets
    are aligned; feature extractors round a video's last partial snippet differently); a larger difference
    is an error naming the video and both lengths, since it means another snippet rate or another video.
    """
    lengths = {name: int(a.shape[0]) for name, a in arrays.items()}
    if len(set(lengths.values())) <= 1:
        return dict(arrays)
    shortest = min(lengths, key=lengths.__getitem__)
    longest = max(lengths, key=lengths.__getitem__)
    if lengths[longest] - lengths[shortest] > max_mismatch:
        raise WtalInputError(f"stream {shortest!r} has {lengths[shortest]} snippets but {longest!r} has "
                             f"{lengths[longest]} (at most {max_mismatch} snippet(s) of difference are "
                             "truncated: data.max_length_mismatch)", path=path, video=video,
                             fix="extract every stream of a video with the same snippet rate and length "
                                 "(one feature per 16-frame snippet)")
    keep = lengths[shortest]
    return {name: a[:keep] for name, a in arrays.items()}


class LengthRule:
    """:func:`align_lengths` for a feature source, logging each truncated video once with a running count."""

    def __init__(self, max_mismatch: int = DEFAULT_MAX_LENGTH_MISMATCH):
        if isinstance(max_mismatch, bool) or not isinstance(max_mismatch, int) or max_mismatch < 0:
            raise WtalInputError(f"max_length_mismatch must be a non-negative integer, got {max_mismatch!r}",
                                 fix=f"use e.g. data.max_length_mismatch: {DEFAULT_MAX_LENGTH_MISMATCH}")
        self.max_mismatch = max_mismatch
        self.truncated: dict[str, dict[str, int]] = {}  # video -> the stream lengths before truncation

    def apply(self, video: str, arrays: Mapping[str, np.ndarray], path: Path | str | None) -> dict[str, np.ndarray]:
        aligned = align_lengths(video, arrays, path, self.max_mismatch)
        if video not in self.truncated and any(aligned[s].shape[0] != a.shape[0] for s, a in arrays.items()):
            self.truncated[video] = {s: int(a.shape[0]) for s, a in arrays.items()}
            keep = next(iter(aligned.values())).shape[0]
            logger.info("video %s: streams of %s snippets truncated to %d (%d video(s) truncated so far; "
                        "data.max_length_mismatch %d)", video,
                        ", ".join(f"{s} {n}" for s, n in self.truncated[video].items()), keep,
                        len(self.truncated), self.max_mismatch)
        return aligned


def write_stream_files(folder: Path, arrays: Mapping[str, np.ndarray], split_of: Mapping[str, str]) -> None:
    """One stream as ``folder/SPLIT/VIDEO.npy`` (PVLR's ``Thumos14_CLIP/{train,test}/`` layout), each file
    written atomically; ``split_of[video]`` is the split folder name."""
    for video, x in arrays.items():
        part = np.ascontiguousarray(x)
        write_atomic(folder / split_of[video] / f"{video}.npy",
                     lambda fh, part=part: np.save(fh, part, allow_pickle=False), binary=True)


def unknown_streams(requested: Iterable[str], available: Mapping[str, int], path: Path | str | None
                    ) -> WtalInputError | None:
    """An error naming the requested streams the data lacks (None when all are present)."""
    missing = [s for s in requested if s not in available]
    if not missing:
        return None
    return WtalInputError(f"the data has no {', '.join(repr(s) for s in missing)} stream "
                          f"(streams present: {', '.join(available) or 'none'})", path=path,
                          fix="add the stream's features to the data folder, or choose streams the data has "
                              "(model.streams, teacher.model.streams)")


def read_class_text(path: Path, classes: list[str]) -> np.ndarray | None:
    """``class_text.npy`` of a data folder: ``(C, E)`` finite float32 rows in class-list order, or None."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise WtalInputError(f"not a readable numeric .npy file ({exc})", path=path,
                             fix="write the class-name text embeddings with `wtal embed-classes`") from None
    if arr.ndim != 2 or arr.shape[0] != len(classes):
        raise WtalInputError(f"class text embeddings have shape {arr.shape}, expected ({len(classes)}, E): one "
                             "row per class, in class-list order", path=path,
                             fix="recompute them for this data's class list")
    return check_features(arr, path=path, video=None, what="class text embeddings")
