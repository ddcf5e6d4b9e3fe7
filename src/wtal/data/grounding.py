"""Sentence-grounding data: query annotations, per-video features by stream, resampling, validation carving.

**Annotation files.** A grounding query is a sentence about one video plus the moment it describes. Two
formats are read:

* JSON (CPL's ``train.json`` / ``test.json`` for Charades-STA, ``val_data.json`` / ``test_data.json`` for
  ActivityNet Captions): one list of ``[video, duration_s, [start_s, end_s], sentence]`` entries.
* The original Charades-STA text lines ``VIDEO START END##SENTENCE`` (times in seconds). The lines carry no
  duration, so durations come from a durations file (:func:`read_durations`: a JSON object
  ``{"VIDEO": seconds, ...}`` or a CSV whose header names a video column ``video`` or ``id`` and a duration
  column ``duration`` or ``length``, as Charades' own ``Charades_v1_*.csv`` does) or from the features'
  lengths and a snippet rate (:func:`durations_from_lengths`).

A query's id is its position (0-based) in its file. Times stay in seconds; the metric converts them to
fractions of the duration. Moments that reach outside ``[0, duration]`` are clipped to it and counted
(:attr:`QuerySet.clipped`; ActivityNet Captions has ends past the duration by up to 0.01 s); a moment that
lies wholly outside the video, a malformed entry or a video listed with two durations is a
:class:`~wtal.errors.WtalInputError` naming the file, the entry and the fix.

**Features.** ``DIR/features`` holds one entry per stream, each either a folder of per-video ``VIDEO.npy``
``(T, D_s)`` arrays (``features/rgb/VIDEO.npy``) or one HDF5 file ``features/STREAM.hdf5`` (or ``.h5``) with one
``(T, D_s)`` dataset per video, or a group per video holding its dataset (CPL's ActivityNet C3D file has
``VIDEO/c3d_features``). Streams are named by their folder or file stem and ordered ``rgb``, ``flow``, then the
others alphabetically; each has its own width, and all streams of a video must have the same ``T``. Reading
HDF5 needs the optional ``h5py`` package (``pip install h5py``), imported only when an HDF5 stream is opened.

**Time.** Snippet ``i`` of a video with ``T`` snippets covers ``[i, i + 1) * duration / T`` seconds
(:mod:`wtal.data.timebase`), so no frame rate is needed. :func:`resample_clips` optionally maps every video
to a fixed number of clips (CPL uses 200).

**Splits.** Training and test files are given; model selection uses a validation part carved from the
training videos by :func:`carve_validation` (seeded, whole videos), never the test file. (CPL itself selects
its best epoch on the test file.) Training queries go to a model only through :meth:`QuerySet.without_moments`,
which removes their timestamps.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from wtal.atomic import write_json_atomic
from wtal.data.timebase import snippets_to_seconds
from wtal.data.validate import REEXTRACT, check_duration, check_features, read_json_file
from wtal.errors import WtalInputError

JSON_FIX = "write the file as a JSON list of [video, duration_seconds, [start_seconds, end_seconds], sentence]"
LINE_FIX = "write each line as 'VIDEO START END##SENTENCE' (times in seconds)"
DURATIONS_FIX = ('give durations as a JSON object {"VIDEO": seconds} or a CSV with a header naming a video '
                 "column (video or id) and a duration column (duration or length)")
FEATURES_DIR = "features"
HDF5_SUFFIXES = (".hdf5", ".h5")
STREAM_ORDER = ("rgb", "flow")
TRAIN_FILES = ("train.json", "train_data.json")
TEST_FILES = ("test.json", "test_data.json")


@dataclass(frozen=True)
class Query:
    """One sentence about one video. ``start``/``end`` (seconds) are None once the moment is withheld."""

    id: int  # position in its annotation file
    video: str
    duration: float  # seconds
    sentence: str
    start: float | None = None
    end: float | None = None

    @property
    def has_moment(self) -> bool:
        return self.start is not None and self.end is not None


@dataclass(frozen=True)
class QuerySet:
    """The queries of one annotation file (or a part of it), in file order."""

    queries: tuple[Query, ...]
    source: str
    clipped: int = 0  # moments clipped to [0, duration] when the file was read

    def __len__(self) -> int:
        return len(self.queries)

    def __iter__(self) -> Iterator[Query]:
        return iter(self.queries)

    def __getitem__(self, i: int) -> Query:
        return self.queries[i]

    def videos(self) -> list[str]:
        """Distinct videos in order of first appearance."""
        return list(dict.fromkeys(q.video for q in self.queries))

    def durations(self) -> dict[str, float]:
        return {q.video: q.duration for q in self.queries}

    def sentences(self) -> list[str]:
        return [q.sentence for q in self.queries]

    def ids(self) -> np.ndarray:
        return np.array([q.id for q in self.queries], dtype=np.int64)

    def moments(self) -> np.ndarray:
        """``(N, 2)`` float64 ``[start, end]`` in seconds; every query must still have its moment."""
        missing = [q.id for q in self.queries if not q.has_moment]
        if missing:
            raise WtalInputError(f"{len(missing)} queries have no moment (first: query {missing[0]})",
                                 path=self.source, fix="read the moments from an annotation file with timestamps")
        return np.array([[q.start, q.end] for q in self.queries], dtype=np.float64).reshape(-1, 2)

    def select(self, keep: Callable[[Query], bool]) -> QuerySet:
        return replace(self, queries=tuple(q for q in self.queries if keep(q)))

    def without_moments(self) -> QuerySet:
        """The same queries with their timestamps removed: what a weakly-supervised learner may see."""
        return replace(self, queries=tuple(replace(q, start=None, end=None) for q in self.queries))


# ------------------------------------------------------------------------------------------- readers


def read_grounding_json(path: str | Path) -> QuerySet:
    """Read a JSON list of ``[video, duration_s, [start_s, end_s], sentence]`` entries (CPL's format)."""
    path = Path(path)
    data = read_json_file(path, missing="annotation file not found", fix=JSON_FIX,
                          missing_fix="pass the right annotation file (e.g. train.json or test.json)")
    if not isinstance(data, list):
        raise WtalInputError(f"expected a JSON list of queries, got a {type(data).__name__}", path=path,
                             fix=JSON_FIX)
    rows = [_json_entry(entry, i, path) for i, entry in enumerate(data)]
    return _build_query_set(rows, path)


def _json_entry(entry, index: int, path: Path) -> tuple[str, object, object, object, object]:
    ok = (isinstance(entry, list) and len(entry) == 4 and isinstance(entry[0], str)
          and isinstance(entry[2], list) and len(entry[2]) == 2 and isinstance(entry[3], str))
    if not ok:
        raise WtalInputError(f"entry {index} is not [video, duration, [start, end], sentence]: {entry!r:.120}",
                             path=path, fix=JSON_FIX)
    video, duration, (start, end), sentence = entry
    return video, duration, start, end, sentence


def read_charades_sta_lines(path: str | Path, durations: Mapping[str, float]) -> QuerySet:
    """Read the original Charades-STA lines ``VIDEO START END##SENTENCE``; ``durations`` maps video -> seconds."""
    path = Path(path)
    if not path.is_file():
        raise WtalInputError("annotation file not found", path=path,
                             fix="pass the right Charades-STA file (e.g. charades_sta_train.txt)")
    rows = []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, line in enumerate(lines):
        head, sep, sentence = line.partition("##")
        fields = head.split()
        if not sep or len(fields) != 3:
            raise WtalInputError(f"line {i + 1} (entry {i}) is not 'VIDEO START END##SENTENCE': {line!r:.120}",
                                 path=path, fix=LINE_FIX)
        video, start, end = fields
        if video not in durations:
            raise WtalInputError(f"no duration known for the video of entry {i}", path=path, video=video,
                                 fix="add the video to the durations file, or take durations from the features")
        rows.append((video, durations[video], start, end, sentence.strip()))
    return _build_query_set(rows, path)


def read_durations(path: str | Path) -> dict[str, float]:
    """Video durations in seconds from a JSON object or a CSV file (see the module docstring)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = read_json_file(path, missing="durations file not found", fix=DURATIONS_FIX,
                              missing_fix="pass the right durations file")
        if not isinstance(data, dict):
            raise WtalInputError("expected a JSON object {video: seconds}", path=path, fix=DURATIONS_FIX)
        items = data.items()
    else:
        items = _csv_durations(path)
    return {str(v): check_duration(d, path=path, video=str(v)) for v, d in items}


def _csv_durations(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise WtalInputError("durations file not found", path=path, fix="pass the right durations file")
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        header = {name.strip().lower(): name for name in reader.fieldnames or []}
        video = next((header[k] for k in ("video", "id") if k in header), None)
        duration = next((header[k] for k in ("duration", "length") if k in header), None)
        if video is None or duration is None:
            raise WtalInputError(f"CSV header {reader.fieldnames} names no video and duration columns", path=path,
                                 fix=DURATIONS_FIX)
        return [(row[video], row[duration]) for row in reader]


def durations_from_lengths(lengths: Mapping[str, int], snippets_per_second: float) -> dict[str, float]:
    """Durations (seconds) of videos whose features have ``lengths[video]`` snippets at a known snippet rate."""
    return {v: float(snippets_to_seconds(n, snippets_per_second)) for v, n in lengths.items()}


def read_queries(path: str | Path, durations: Mapping[str, float] | None = None) -> QuerySet:
    """A ``.json`` query file, or Charades-STA text lines (any other suffix; needs ``durations``)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return read_grounding_json(path)
    if durations is None:
        raise WtalInputError("Charades-STA text lines carry no video durations", path=path,
                             fix="pass a durations file, or convert the annotations to the JSON format")
    return read_charades_sta_lines(path, durations)


def _build_query_set(rows: Sequence[tuple[str, object, object, object, object]], path: Path) -> QuerySet:
    """Validate ``(video, duration, start, end, sentence)`` rows, clip moments to the video, build the set."""
    queries, clipped, seen = [], 0, {}
    for i, (video, duration, start, end, sentence) in enumerate(rows):
        d = _entry_number(duration, "duration", i, path, video)
        s, e = _entry_number(start, "start", i, path, video), _entry_number(end, "end", i, path, video)
        if d <= 0:
            raise WtalInputError(f"entry {i}: duration {d} is not positive", path=path, video=video,
                                 fix="write the video duration in seconds")
        if e < s:
            raise WtalInputError(f"entry {i}: moment [{s}, {e}] ends before it starts", path=path, video=video,
                                 fix="write the moment as [start_seconds, end_seconds] with end >= start")
        if s >= d or e <= 0:
            raise WtalInputError(f"entry {i}: moment [{s}, {e}] lies outside the video (0 to {d} s)", path=path,
                                 video=video, fix="check the duration and the moment of this entry")
        if seen.setdefault(video, d) != d:
            raise WtalInputError(f"entry {i}: duration {d} differs from {seen[video]} given earlier for this video",
                                 path=path, video=video, fix="give each video one duration")
        clipped += s < 0 or e > d
        queries.append(Query(i, video, d, sentence, max(s, 0.0), min(e, d)))
    return QuerySet(tuple(queries), str(path), clipped)


def _entry_number(value, what: str, index: int, path: Path, video: str) -> float:
    try:
        x = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x):
        raise WtalInputError(f"entry {index}: {what} {value!r} is not a finite number", path=path, video=video,
                             fix="write times and durations as numbers of seconds")
    return x


def write_grounding_json(path: str | Path, queries: Iterable[Query]) -> Path:
    """Write queries as CPL's JSON list ``[video, duration, [start, end], sentence]``, atomically."""
    rows = [[q.video, q.duration, [q.start, q.end], q.sentence] for q in queries]
    if any(r[2][0] is None for r in rows):
        raise WtalInputError("cannot write queries without moments", path=path,
                             fix="write the query set read from the annotation file, not a training view")
    return write_json_atomic(path, rows)


def split_files(folder: str | Path) -> tuple[Path, Path]:
    """``(train, test)`` annotation files of a grounding dataset folder."""
    folder = Path(folder)
    found = [next((folder / n for n in names if (folder / n).is_file()), None) for names in (TRAIN_FILES, TEST_FILES)]
    if found[0] is None or found[1] is None:
        raise WtalInputError("no training and test annotation files found", path=folder,
                             fix=f"put {' or '.join(TRAIN_FILES)} and {' or '.join(TEST_FILES)} in the data folder")
    return found[0], found[1]


# ------------------------------------------------------------------------------------------- splits


def carve_validation(queries: QuerySet, fraction: float, seed: int) -> tuple[QuerySet, QuerySet]:
    """Split training queries by video into ``(train, validation)``; seeded and independent of file order.

    ``round(fraction * videos)`` videos (at least one when ``fraction > 0`` and there are two or more videos,
    never all of them) go to the validation part with all their queries. Query ids are kept.
    """
    if not 0.0 <= fraction < 1.0:
        raise WtalInputError(f"validation fraction {fraction} is not in [0, 1)", path=queries.source,
                             fix="use e.g. 0.1 (a tenth of the training videos)")
    videos = sorted(queries.videos())
    n = int(round(fraction * len(videos)))
    if fraction > 0 and len(videos) >= 2:
        n = min(max(n, 1), len(videos) - 1)
    order = np.random.default_rng(seed).permutation(len(videos))
    held_out = {videos[i] for i in order[:n]}
    return queries.select(lambda q: q.video not in held_out), queries.select(lambda q: q.video in held_out)


# ------------------------------------------------------------------------------------------- features


class _NpyStream:
    """One stream stored as ``folder/VIDEO.npy`` files."""

    def __init__(self, folder: Path):
        self.path = folder

    def videos(self) -> set[str]:
        return {p.stem for p in self.path.glob("*.npy")}

    def _file(self, video: str) -> Path:
        path = self.path / f"{video}.npy"
        if not path.is_file():
            raise WtalInputError(f"no features of stream '{self.path.name}' for this video", path=path, video=video,
                                 fix="extract the features of this video or drop its queries")
        return path

    def width(self, video: str) -> int:
        path = self._file(video)
        raw = _load_npy(path, video, mmap=True)
        return check_features(_as_2d(raw[:1]), path=path, video=video).shape[1]

    def load(self, video: str) -> np.ndarray:
        path = self._file(video)
        return check_features(_as_2d(_load_npy(path, video, mmap=False)), path=path, video=video)


def _load_npy(path: Path, video: str, *, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as exc:
        raise WtalInputError(f"not a readable numeric .npy file ({exc})", path=path, video=video,
                             fix=REEXTRACT) from None


def _as_2d(x: np.ndarray) -> np.ndarray:
    """``(T, 1, ..., 1, D)`` arrays (e.g. LGI's Charades I3D files) as ``(T, D)``; other shapes unchanged."""
    if x.ndim > 2 and all(n == 1 for n in x.shape[1:-1]):
        return x.reshape(x.shape[0], x.shape[-1])
    return x


def _import_h5py():
    try:
        import h5py
    except ImportError:
        raise WtalInputError("reading HDF5 feature files needs the optional h5py package",
                             fix="pip install h5py (or install wtal with the hdf5 extra)") from None
    return h5py


class _HDF5Stream:
    """One stream stored as an HDF5 file with a dataset (or a group holding one dataset) per video."""

    GROUP_DATASET = "c3d_features"  # the dataset name inside each video group of CPL's ActivityNet file

    def __init__(self, path: Path):
        self.path = path
        self._file = None
        self._pid = -1

    def _handle(self):
        if self._file is None or self._pid != os.getpid():  # h5py handles do not survive a fork
            h5py = _import_h5py()
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as exc:
                raise WtalInputError(f"not a readable HDF5 file ({exc})", path=self.path,
                                     fix="pass the right feature file or re-create it") from None
            self._pid = os.getpid()
        return self._file

    def videos(self) -> set[str]:
        return set(self._handle().keys())

    def _dataset(self, video: str):
        f = self._handle()
        if video not in f:
            raise WtalInputError(f"no dataset for this video in stream '{self.path.stem}'", path=self.path,
                                 video=video, fix="extract the features of this video or drop its queries")
        node = f[video]
        if hasattr(node, "shape"):
            return node
        keys = list(node.keys())
        name = self.GROUP_DATASET if self.GROUP_DATASET in keys else (keys[0] if len(keys) == 1 else None)
        if name is None:
            raise WtalInputError(f"group holds {keys}, not one features dataset", path=self.path, video=video,
                                 fix=f"store one (T, D) dataset per video, or name it {self.GROUP_DATASET!r}")
        return node[name]

    def width(self, video: str) -> int:
        dataset = self._dataset(video)
        return check_features(_as_2d(np.asarray(dataset[:1])), path=self.path, video=video).shape[1]

    def load(self, video: str) -> np.ndarray:
        return check_features(_as_2d(np.asarray(self._dataset(video))), path=self.path, video=video)


def _stream_rank(name: str) -> tuple[int, str]:
    return (STREAM_ORDER.index(name) if name in STREAM_ORDER else len(STREAM_ORDER), name)


class GroundingFeatures:
    """The per-video feature streams of ``folder`` (usually ``DIR/features``); files are read on demand."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder)
        if not self.path.is_dir():
            raise WtalInputError("feature folder not found", path=self.path,
                                 fix="put the features in DIR/features/STREAM/VIDEO.npy or DIR/features/STREAM.hdf5")
        readers: dict[str, _NpyStream | _HDF5Stream] = {}
        for entry in self.path.iterdir():
            if entry.is_dir():
                readers[entry.name] = _NpyStream(entry)
            elif entry.suffix.lower() in HDF5_SUFFIXES:
                if entry.stem in readers:
                    raise WtalInputError(f"stream '{entry.stem}' is given twice", path=entry,
                                         fix="keep one folder or one HDF5 file per stream")
                readers[entry.stem] = _HDF5Stream(entry)
        if not readers:
            raise WtalInputError("no feature streams found", path=self.path,
                                 fix="add a folder of VIDEO.npy files or an HDF5 file per stream")
        self._readers = {name: readers[name] for name in sorted(readers, key=_stream_rank)}
        self._widths: dict[str, int] | None = None

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(self._readers)

    def _check_streams(self, streams: Sequence[str]) -> None:
        unknown = [s for s in streams if s not in self._readers]
        if unknown:
            raise WtalInputError(f"unknown feature stream(s) {unknown}", path=self.path,
                                 fix=f"use streams among {list(self._readers)}")

    def videos(self, streams: Sequence[str] | None = None) -> set[str]:
        """Videos present in every stream of ``streams`` (default: all streams)."""
        streams = list(streams or self.streams)
        self._check_streams(streams)
        return set.intersection(*(self._readers[s].videos() for s in streams))

    def stream_widths(self) -> dict[str, int]:
        """``{stream: width}`` in stream order, read from the first video (by name) present in every stream."""
        if self._widths is None:
            common = sorted(self.videos())
            if not common:
                raise WtalInputError("no video has features in every stream", path=self.path,
                                     fix="extract every stream for the same videos")
            video = common[0]
            self._widths = {s: r.width(video) for s, r in self._readers.items()}
        return dict(self._widths)

    def features(self, video: str, streams: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """``{stream: (T, D_s) float32}`` for ``video``; every stream must have the same ``T`` and its width."""
        streams = list(streams or self.streams)
        self._check_streams(streams)
        widths = self.stream_widths()
        out = {s: self._readers[s].load(video) for s in streams}
        for s, x in out.items():
            if x.shape[1] != widths[s]:
                raise WtalInputError(f"stream '{s}' has {x.shape[1]} columns here but {widths[s]} in other videos",
                                     path=self.path / s, video=video, fix=REEXTRACT)
        lengths = [(s, len(x)) for s, x in out.items()]
        mismatch = next((item for item in lengths if item[1] != lengths[0][1]), None)
        if mismatch is not None:
            (a, ta), (b, tb) = lengths[0], mismatch
            raise WtalInputError(f"stream '{a}' has {ta} snippets but stream '{b}' has {tb}", path=self.path,
                                 video=video, fix="extract every stream of this video with the same snippets")
        return out


def require_features(queries: QuerySet, available: set[str], *, drop_missing: bool = False) -> tuple[QuerySet, int]:
    """Queries whose video has features. Missing videos are an error, or (``drop_missing``) dropped and counted.

    Returns ``(kept queries, number of dropped queries)``.
    """
    missing = [v for v in queries.videos() if v not in available]
    if missing and not drop_missing:
        raise WtalInputError(f"{len(missing)} of {len(queries.videos())} videos have no features "
                             f"(first: {', '.join(missing[:5])})", path=queries.source,
                             fix="extract their features, or drop their queries (drop_missing)")
    kept = queries.select(lambda q: q.video in available)
    return kept, len(queries) - len(kept)


# ------------------------------------------------------------------------------------------- resampling


def resample_clips(x: np.ndarray, num_clips: int) -> np.ndarray:
    """``(T, D)`` features -> ``(num_clips, D)`` float32 by CPL's fixed-length resampling.

    Boundaries ``b_i = round(i * T / num_clips)`` (half to even, as numpy rounds) for ``i = 0..num_clips``, clamped
    to ``T - 1``; clip ``i`` is the mean of snippets ``[b_i, b_{i+1})``, or snippet ``b_i`` when that is empty. Short
    videos are up-sampled by repetition, long ones average-pooled. (The clamp means the last snippet of a video
    longer than ``num_clips`` enters no mean, as in CPL.) Means are accumulated in float64.
    """
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    x = np.asarray(x)
    t = len(x)
    bounds = np.minimum(np.round(np.arange(num_clips + 1) * (t / num_clips)).astype(np.int64), t - 1)
    start, stop = bounds[:-1], bounds[1:]
    cumulative = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0, dtype=np.float64)])
    counts = (stop - start)[:, None]
    means = (cumulative[stop] - cumulative[start]) / np.maximum(counts, 1)
    return np.where(counts > 0, means, x[start]).astype(np.float32)
