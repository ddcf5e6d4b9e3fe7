"""The W-TALC bundle: one ``<Name>-I3D-JOINTFeatures.npy`` plus the annotation ``.npy`` files.

Real-file formats (THUMOS14 "Thumos14reduced" and ActivityNet 1.2), all handled by the reader:

- ``classlist``, ``subset`` and ``videoname`` are fixed-width bytes arrays (``S17``, ``S10``, ``S24``).
- ``labels_all`` (video-level labels, used for training), ``labels`` (one label per segment) and ``segments``
  (``[start_s, end_s]`` per segment) are pickled object arrays of Python lists. Their strings are ``bytes``
  or ``str`` depending on the pickle (ActivityNet mixes both); every string is decoded as UTF-8.
- ``duration`` is optional, ``(N, 1)`` for THUMOS14 and ``(N,)`` for ActivityNet.
- ``Ambiguous_test.txt`` (optional) holds ``"<video>  <start> <end>"`` lines with two spaces after the name;
  fields are split on any whitespace. Lines naming videos that are not in the set are ignored (3 in THUMOS14).
- The feature file is an object array of ``(T_i, D)`` arrays in annotation order; columns are RGB then flow.

Subsets are kept as written (``validation``/``test`` for THUMOS14, ``training``/``validation`` for
ActivityNet); which one is trained on is decided by :func:`wtal.data.sources.split_subsets`, never by
"everything that is not ``validation`` is test". Ground-truth segments that end after the video's duration
(30 in THUMOS14, 185 in ActivityNet 1.2) are kept as they are, not clipped: the evaluators see exactly the
published ground truth.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from wtal.atomic import write_atomic, write_text_atomic
from wtal.data.annotations import AnnotationSet, Instance, VideoInfo
from wtal.data.streams import (
    CLASS_TEXT_FILE,
    DEFAULT_MAX_LENGTH_MISMATCH,
    PRIMARY_STREAMS,
    LengthRule,
    NpyStream,
    ordered_streams,
    read_class_text,
    stream_folders,
    unknown_streams,
)
from wtal.data.timebase import I3D_SNIPPETS_PER_SECOND
from wtal.data.validate import check_duration, check_features, check_rate, check_segment
from wtal.errors import WtalInputError

FEATURE_SUFFIX = "-JOINTFeatures.npy"
REQUIRED_FILES = ("classlist", "subset", "videoname", "labels_all", "labels", "segments")
AMBIGUOUS_FILE = "Ambiguous_test.txt"
_ANNOTATION_FIX = ("pass the W-TALC annotation folder (it holds classlist.npy, subset.npy, videoname.npy, "
                   "labels_all.npy, labels.npy, segments.npy)")


def load_npy(path: Path, *, fix: str = _ANNOTATION_FIX) -> np.ndarray:
    """``np.load`` a W-TALC ``.npy`` (pickles allowed, Python 2 strings kept as bytes).

    Raises WtalInputError when the file is missing or unreadable."""
    if not path.is_file():
        raise WtalInputError("file not found", path=path, fix=fix)
    try:
        return np.load(path, allow_pickle=True, encoding="bytes")
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise WtalInputError(f"not a readable .npy file ({exc})", path=path, fix=fix) from None


def as_text(value) -> str:
    """A class/video/subset name from a W-TALC array element (bytes, numpy bytes or str)."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    return str(value)


def read_wtalc_annotations(folder: str | Path,
                           snippets_per_second: float = I3D_SNIPPETS_PER_SECOND) -> AnnotationSet:
    """Read the W-TALC annotation ``.npy`` files of ``folder`` into an :class:`AnnotationSet`.

    Training labels are ``labels_all``; instances come from ``segments`` + ``labels``; ``duration.npy`` and
    ``Ambiguous_test.txt`` are optional. Segments past the video's duration are kept unclipped.
    """
    folder = Path(folder)
    snippets_per_second = check_rate(snippets_per_second, path=folder)
    if not folder.is_dir():
        raise WtalInputError("annotation folder not found", path=folder, fix=_ANNOTATION_FIX)
    arrays = {name: load_npy(folder / f"{name}.npy") for name in REQUIRED_FILES}
    n = len(arrays["videoname"])
    for name, arr in arrays.items():
        if arr.ndim != 1 or (name != "classlist" and len(arr) != n):
            expected = "(C,)" if name == "classlist" else f"({n},) like videoname.npy"
            raise WtalInputError(f"{name}.npy has shape {arr.shape}, expected {expected}",
                                 path=folder / f"{name}.npy",
                                 fix="use annotation files that belong together (one entry per video)")
    classes = [as_text(c) for c in arrays["classlist"]]
    names = [as_text(v) for v in arrays["videoname"]]
    subsets = [as_text(s) for s in arrays["subset"]]
    _check_unique(names, folder / "videoname.npy")
    durations = _read_durations(folder / "duration.npy", names)
    known = set(classes)

    videos: dict[str, VideoInfo] = {}
    for i, name in enumerate(names):
        labels = _labels(arrays["labels_all"][i], known, folder / "labels_all.npy", name)
        seg_labels = _labels(arrays["labels"][i], known, folder / "labels.npy", name)
        segments = arrays["segments"][i]
        seg_path = folder / "segments.npy"
        try:
            segments = list(segments)
        except TypeError:
            raise WtalInputError(f"expected a list of [start, end] segments, got {segments!r}", path=seg_path,
                                 video=name, fix="store a list of [start_s, end_s] pairs per video") from None
        if len(segments) != len(seg_labels):
            raise WtalInputError(f"segments.npy has {len(segments)} segments but labels.npy has "
                                 f"{len(seg_labels)} labels", path=seg_path,
                                 video=name, fix="segments.npy and labels.npy need one entry per segment")
        instances = []
        for seg, lab in zip(segments, seg_labels, strict=True):
            if not isinstance(seg, (list, tuple, np.ndarray)) or len(seg) != 2:
                raise WtalInputError(f"segment {seg!r} is not a [start, end] pair", path=seg_path, video=name,
                                     fix="store each segment as [start_s, end_s]")
            instances.append(Instance(lab, *check_segment(seg[0], seg[1], path=seg_path, video=name)))
        videos[name] = VideoInfo(name, subsets[i], durations[i], tuple(dict.fromkeys(labels)), instances,
                                 snippets_per_second)
    ambiguous = read_ambiguous(folder / AMBIGUOUS_FILE, videos.keys())
    return AnnotationSet(classes, videos, ambiguous, source=str(folder))


def _check_unique(names: list[str], path: Path) -> None:
    if len(set(names)) != len(names):
        dup = next(v for v in names if names.count(v) > 1)
        raise WtalInputError("video name listed twice", path=path, video=dup,
                             fix="make every video name unique")


def _labels(value, known: set[str], path: Path, video: str) -> list[str]:
    """One video's list of class names (bytes or str), each checked against the class list."""
    if isinstance(value, (str, bytes, np.bytes_, np.str_)) or not hasattr(value, "__iter__"):
        raise WtalInputError(f"expected a list of class names, got {value!r}", path=path, video=video,
                             fix="store a list of class names per video")
    labels = [as_text(v) for v in value]
    for lab in labels:
        if lab not in known:
            raise WtalInputError(f"unknown class {lab!r} (not in classlist.npy)", path=path, video=video,
                                 fix="use the classlist.npy that belongs to these annotations")
    return labels


def _read_durations(path: Path, names: list[str]) -> list[float | None]:
    if not path.exists():
        return [None] * len(names)
    arr = load_npy(path)
    if arr.dtype == object or arr.size != len(names) or (arr.ndim == 2 and arr.shape[1] != 1) or arr.ndim > 2:
        raise WtalInputError(f"duration.npy has shape {arr.shape} and dtype {arr.dtype}, expected "
                             f"({len(names)},) or ({len(names)}, 1) numbers", path=path,
                             fix="store one duration in seconds per video, or delete duration.npy")
    return [check_duration(d, path=path, video=v) for d, v in zip(arr.reshape(-1), names, strict=True)]


def read_ambiguous(path: Path, names) -> dict[str, list[tuple[float, float]]]:
    """Parse ``Ambiguous_test.txt`` (``"<video>  <start> <end>"`` lines).

    Segments of videos not in ``names`` are ignored (as the W-TALC evaluator does)."""
    if not path.exists():
        return {}
    names = set(names)
    out: dict[str, list[tuple[float, float]]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{lineno}"
        if len(fields) != 3:
            raise WtalInputError(f"expected '<video>  <start> <end>', got {line!r}", path=where,
                                 fix="write one ambiguous segment per line")
        video = fields[0]
        segment = check_segment(*_floats(fields[1:], where, video), path=where, video=video)
        if video in names:
            out.setdefault(video, []).append(segment)
    return out


def _floats(fields: list[str], where: str, video: str) -> list[float]:
    try:
        return [float(f) for f in fields]
    except ValueError:
        raise WtalInputError(f"start/end {fields} are not numbers", path=where, video=video,
                             fix="write the start and end in seconds") from None


# ----------------------------------------------------------------------------------------------- writing


def _bytes_array(values: list[str]) -> np.ndarray:
    # Fixed-width bytes ("S<n>"), as in the real files.
    return np.array([v.encode("utf-8") for v in values], dtype=np.bytes_)


def _object_array(values: list) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        arr[i] = v
    return arr


def _save_npy(path: Path, arr: np.ndarray) -> None:
    write_atomic(path, lambda fh: np.save(fh, arr, allow_pickle=arr.dtype == object), binary=True)


def write_wtalc_bundle(folder: str | Path, name: str, annotations: AnnotationSet,
                       features: Mapping[str, np.ndarray]) -> Path:
    """Write a W-TALC bundle for ``annotations`` into ``folder``; return the feature file path.

    Files (in the real formats): ``<name>-I3D-JOINTFeatures.npy`` (object array of float32 ``(T, D)`` in
    annotation order), ``classlist/subset/videoname.npy`` (bytes arrays), ``labels_all/labels/segments.npy``
    (object arrays of Python lists), ``duration.npy`` (``(N, 1)``; a missing duration is written as
    ``T / snippets_per_second``) and ``Ambiguous_test.txt`` (two spaces after the name). Each file is written
    atomically; the feature file comes last, so a bundle with a feature file is complete.
    """
    folder = Path(folder)
    feature_path = folder / f"{name}-I3D{FEATURE_SUFFIX}"
    vids = list(annotations.videos.values())
    feats = []
    dim = None
    for v in vids:
        if v.name not in features:
            raise WtalInputError("no features given for this video", path=feature_path, video=v.name,
                                 fix="pass features for every annotated video")
        x = check_features(features[v.name], path=feature_path, video=v.name, dim=dim)
        dim = x.shape[1]
        feats.append(x)
    durations = [v.duration if v.duration is not None else x.shape[0] / v.snippets_per_second
                 for v, x in zip(vids, feats, strict=True)]
    arrays = {
        "classlist": _bytes_array(annotations.classes),
        "subset": _bytes_array([v.subset for v in vids]),
        "videoname": _bytes_array([v.name for v in vids]),
        "labels_all": _object_array([list(v.labels) for v in vids]),
        "labels": _object_array([[i.label for i in v.instances] for v in vids]),
        "segments": _object_array([[[i.start, i.end] for i in v.instances] for v in vids]),
        "duration": np.asarray(durations, dtype=np.float64).reshape(-1, 1),
    }
    for key, arr in arrays.items():
        _save_npy(folder / f"{key}.npy", arr)
    lines = [f"{video}  {float(s)!r} {float(e)!r}\n"  # two spaces after the name, as in the real file
             for video, segs in annotations.ambiguous.items() for s, e in segs]
    write_text_atomic(folder / AMBIGUOUS_FILE, "".join(lines))
    _save_npy(feature_path, _object_array(feats))
    return feature_path


# ----------------------------------------------------------------------------------------------- source


def find_feature_file(path: str | Path) -> Path:
    """The ``*-JOINTFeatures.npy`` file at ``path`` (the file itself or the one file in the folder)."""
    path = Path(path)
    if path.is_file():
        if not path.name.endswith(FEATURE_SUFFIX):
            raise WtalInputError(f"a W-TALC feature file is named <Name>-I3D{FEATURE_SUFFIX}", path=path,
                                 fix="pass the bundle folder or its feature file")
        return path
    found = sorted(path.glob(f"*{FEATURE_SUFFIX}")) if path.is_dir() else []
    if len(found) != 1:
        problem = ("no W-TALC feature file (<Name>-I3D-JOINTFeatures.npy)" if not found
                   else f"{len(found)} feature files ({', '.join(p.name for p in found)})")
        raise WtalInputError(f"{problem} in this folder", path=path,
                             fix="pass the bundle folder holding exactly one feature file, or the file")
    return found[0]


def bundle_name(feature_path: Path) -> str:
    """``Thumos14reduced`` for ``Thumos14reduced-I3D-JOINTFeatures.npy``."""
    stem = feature_path.name[: -len(FEATURE_SUFFIX)]
    return stem.rsplit("-", 1)[0] if "-" in stem else stem


def find_annotation_folder(feature_path: Path) -> Path:
    """Annotations next to the feature file, or in ``<Name>-Annotations`` beside / below / above it."""
    name = bundle_name(feature_path)
    here = feature_path.parent
    candidates = [here, here / f"{name}-Annotations", here.parent / f"{name}-Annotations"]
    for folder in candidates:
        if (folder / "classlist.npy").is_file():
            return folder
    raise WtalInputError("no W-TALC annotation files (classlist.npy, ...) found for this feature file; "
                         "looked in " + ", ".join(str(c) for c in candidates), path=feature_path,
                         fix="put the annotation .npy files next to the feature file or in "
                             f"{name}-Annotations/")


class WtalcSource:
    """A W-TALC bundle as a feature source.

    ``path`` is the bundle folder or its feature file. The annotations are read at construction; the
    feature file (an object array, so it cannot be memory-mapped) is loaded once, on first use. Its joint
    columns give two streams: the first half ``rgb``, the second half ``flow``. Extra streams come from
    sibling folders of the feature file, ``STREAM/VIDEO.npy`` (or ``STREAM/{train,test}/VIDEO.npy``), and
    class-name text embeddings from ``class_text.npy`` beside it. Streams of a video that differ by at most
    ``max_length_mismatch`` snippets are truncated to the shortest (:class:`~wtal.data.streams.LengthRule`).
    """

    def __init__(self, path: str | Path, snippets_per_second: float | None = None,
                 max_length_mismatch: int = DEFAULT_MAX_LENGTH_MISMATCH):
        self.lengths = LengthRule(max_length_mismatch)
        self.feature_path = find_feature_file(path)
        self.path = Path(path)
        self.annotation_folder = find_annotation_folder(self.feature_path)
        self.snippets_per_second = check_rate(
            I3D_SNIPPETS_PER_SECOND if snippets_per_second is None else snippets_per_second, path=path)
        self.annotations = read_wtalc_annotations(self.annotation_folder, self.snippets_per_second)
        self._index = {n: i for i, n in enumerate(self.annotations.videos)}
        self._features: np.ndarray | None = None
        self._joint_dim: int | None = None
        folders = stream_folders(self.feature_path.parent, exclude=[self.annotation_folder])
        self._extra = {name: NpyStream(name, [folder, *sorted(d for d in folder.iterdir() if d.is_dir())])
                       for name, folder in folders.items() if name not in PRIMARY_STREAMS}
        self._widths: dict[str, int] | None = None

    def _all_features(self) -> np.ndarray:
        if self._features is None:
            arr = load_npy(self.feature_path, fix="re-extract or re-download the feature file")
            if not ((arr.dtype == object and arr.ndim == 1) or (arr.dtype != object and arr.ndim == 3)):
                raise WtalInputError(f"expected an object array of (T, D) arrays, got {arr.dtype} "
                                     f"{arr.shape}", path=self.feature_path,
                                     fix="re-extract the feature file")
            if len(arr) != len(self._index):
                raise WtalInputError(f"the feature file holds {len(arr)} videos but the annotations in "
                                     f"{self.annotation_folder} list {len(self._index)}",
                                     path=self.feature_path,
                                     fix="use the annotation folder that belongs to this feature file")
            self._features = arr
        return self._features

    @property
    def joint_dim(self) -> int:
        """Columns of the joint RGB+flow array (read from the first video; even)."""
        if self._joint_dim is None:
            first = next(iter(self._index))
            dim = self._checked(first, None).shape[1]
            if dim < 2 or dim % 2:
                raise WtalInputError(f"joint RGB+flow features need an even number of columns, got {dim}",
                                     path=self.feature_path, video=first, fix="re-extract the feature file")
            self._joint_dim = dim
        return self._joint_dim

    def stream_widths(self) -> dict[str, int]:
        """``rgb`` and ``flow`` (the two halves of the joint array), then the extra streams, with widths."""
        if self._widths is None:
            half = self.joint_dim // 2
            extra = {s: stream.width(self.annotations.videos) for s, stream in self._extra.items()}
            self._widths = {"rgb": half, "flow": half, **{s: extra[s] for s in ordered_streams(extra)}}
        return dict(self._widths)

    def _checked(self, name: str, dim: int | None) -> np.ndarray:
        if name not in self._index:
            raise WtalInputError("video not in the annotations", path=self.annotation_folder, video=name,
                                 fix="use a video name from videoname.npy")
        raw = self._all_features()[self._index[name]]
        return check_features(raw, path=self.feature_path, video=name, dim=dim)

    def features(self, name: str, streams: Sequence[str]) -> dict[str, np.ndarray]:
        """``{stream: (T, D_stream) float32}`` of video ``name``, checked (finite, same ``T`` after the length rule).

        ``rgb`` and ``flow`` are views of the joint array's two halves (no copy)."""
        widths = self.stream_widths()
        missing = unknown_streams(streams, widths, self.feature_path.parent)
        if missing is not None:
            raise missing
        out: dict[str, np.ndarray] = {}
        if "rgb" in streams or "flow" in streams:
            joint = self._checked(name, self.joint_dim)
            half = self.joint_dim // 2
            halves = {"rgb": joint[:, :half], "flow": joint[:, half:]}
        for s in streams:
            out[s] = halves[s] if s in PRIMARY_STREAMS else self._extra[s].load(name, widths[s])
        return self.lengths.apply(name, out, self.feature_path)

    @property
    def class_text_path(self) -> Path:
        return self.feature_path.parent / CLASS_TEXT_FILE

    def class_text(self) -> np.ndarray | None:
        return read_class_text(self.class_text_path, self.annotations.classes)
