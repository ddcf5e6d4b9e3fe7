"""Named feature streams stored as one ``VIDEO.npy`` per video, and the checks every source shares.

A stream is a named per-snippet feature (``rgb``, ``flow``, ``clip``, ...); all streams of a video have the
same number of snippets ``T``, each its own width. Sources (the W-TALC bundle, per-video folders) find their
streams here: a stream folder holds ``VIDEO.npy`` files directly or in split subfolders (``train/``,
``test/``, as PVLR's ``Thumos14_CLIP/{train,test}/``). Stream names are lower-case identifiers
(``[a-z][a-z0-9_]*``), so folders such as ``Thumos14reduced-Annotations`` are never taken for streams.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from wtal.data.validate import REEXTRACT, check_features
from wtal.errors import WtalInputError

STREAM_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
PRIMARY_STREAMS = ("rgb", "flow")
CLASS_TEXT_FILE = "class_text.npy"


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


def check_same_length(video: str, arrays: Mapping[str, np.ndarray], path: Path | str | None) -> None:
    """All streams of ``video`` must have the same number of snippets."""
    lengths = {name: int(a.shape[0]) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        shortest = min(lengths, key=lengths.__getitem__)
        longest = max(lengths, key=lengths.__getitem__)
        raise WtalInputError(f"stream {shortest!r} has {lengths[shortest]} snippets but {longest!r} has "
                             f"{lengths[longest]}", path=path, video=video,
                             fix="extract every stream of a video with the same snippet rate and length "
                                 "(one feature per 16-frame snippet)")


def unknown_streams(requested: Iterable[str], available: Mapping[str, int], path: Path | str | None
                    ) -> WtalInputError | None:
    """An error naming the requested streams the data lacks (None when all are present)."""
    missing = [s for s in requested if s not in available]
    if not missing:
        return None
    return WtalInputError(f"the data has no {', '.join(repr(s) for s in missing)} stream "
                          f"(streams present: {', '.join(available) or 'none'})", path=path,
                          fix="add the stream's features to the data folder, or choose streams the data has "
                              "(model.streams)")


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
