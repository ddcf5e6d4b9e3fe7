"""Result files in the ActivityNet detection format.

::

    {"version": "wtal-0.1",
     "results": {"<video>": [{"label": "<class>", "score": 0.93, "segment": [start_s, end_s]}, ...], ...},
     "external_data": {}}

Writing is atomic and keeps full float precision. Reading validates every entry (finite numbers, end >= start,
known labels) and raises :class:`WtalInputError` naming the file, the video and the fix; ``version`` and
``external_data`` may be missing on reading. Rows come back in file order (videos in the order of the
``results`` object, each video's detections in list order), which is the order the official evaluator sees
(it decides the order among equal scores); a table is written grouped by video (:func:`result_file_order`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wtal.atomic import write_text_atomic
from wtal.data.segments import SegmentTable
from wtal.data.validate import read_json_file
from wtal.errors import WtalInputError

FORMAT_FIX = ('write an ActivityNet result file: {"version": ..., "results": {VIDEO: [{"label": CLASS, '
              '"score": NUMBER, "segment": [START_S, END_S]}, ...]}, "external_data": {}}')


def results_to_json(table: SegmentTable, external_data: dict | None = None,
                    version: str = "wtal-0.1") -> dict:
    """The ActivityNet result dictionary of ``table`` (videos in order of first appearance)."""
    bad = ~(np.isfinite(table.start) & np.isfinite(table.end) & np.isfinite(table.score))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise WtalInputError(f"refusing to write a non-finite detection ({table.start[i]}, {table.end[i]}, "
                             f"score {table.score[i]})", video=str(table.video[i]),
                             fix="remove or repair detections with NaN/infinite values")
    names = list(table.classes)
    results: dict[str, list[dict]] = {}
    columns = (table.video.tolist(), table.label.tolist(), table.start.tolist(), table.end.tolist(),
               table.score.tolist())
    for video, label, start, end, score in zip(*columns, strict=True):
        results.setdefault(str(video), []).append({"label": names[label], "score": score,
                                                   "segment": [start, end]})
    return {"version": version, "results": results, "external_data": dict(external_data or {})}


def result_file_order(video: np.ndarray) -> np.ndarray:
    """Row indices in the order of the result file written for a table with this ``video`` column.

    Rows are grouped by video in order of first appearance, in table order within a video (as
    :func:`results_to_json` writes them); the identity when the table is already grouped by video.
    """
    first: dict = {}
    code = np.fromiter((first.setdefault(v, len(first)) for v in video), dtype=np.int64, count=len(video))
    if np.all(code[1:] >= code[:-1]):
        return np.arange(len(video))
    return np.argsort(code, kind="stable")


def write_results(path: str | Path, table: SegmentTable, external_data: dict | None = None,
                  version: str = "wtal-0.1") -> Path:
    """Write ``table`` as an ActivityNet result file, atomically."""
    # json.dumps uses the C encoder; json.dump (streaming) would use the slow pure-Python one.
    return write_text_atomic(path, json.dumps(results_to_json(table, external_data, version)))


def read_results(path: str | Path, classes: Sequence[str] | None = None) -> SegmentTable:
    """Read and validate an ActivityNet result file.

    With ``classes``, every label must be one of them (the table uses that class list); without, the class
    list is the sorted set of labels in the file.
    """
    path = Path(path)
    data = read_json_file(path, missing="result file not found", missing_fix="check the --pred path",
                          fix=FORMAT_FIX)
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise WtalInputError('no "results" object at the top level', path=path, fix=FORMAT_FIX)

    rows = []
    for video, entries in data["results"].items():
        if not isinstance(entries, list):
            raise WtalInputError("the results of a video must be a list of detections", path=path,
                                 video=video, fix=FORMAT_FIX)
        rows.extend(_parse_entry(e, path, video) for e in entries)

    labels = sorted({r[1] for r in rows}) if classes is None else list(classes)
    known = set(labels)
    for video, label, *_ in rows:
        if label not in known:
            raise WtalInputError(f"unknown class label {label!r}", path=path, video=video,
                                 fix=f"use one of the {len(labels)} ground-truth class names (e.g. "
                                     f"{', '.join(map(repr, labels[:3]))}) or drop these detections")
    return SegmentTable.from_rows(labels, rows)


def _parse_entry(entry, path: Path, video: str) -> tuple[str, str, float, float, float]:
    if not isinstance(entry, dict) or not {"label", "score", "segment"} <= entry.keys():
        raise WtalInputError(f"detection entry {entry!r} lacks label, score or segment", path=path,
                             video=video, fix=FORMAT_FIX)
    label, score, segment = entry["label"], entry["score"], entry["segment"]
    if not isinstance(label, str):
        raise WtalInputError(f"label {label!r} is not a class name", path=path, video=video,
                             fix="write labels as class-name strings")
    if not _is_number(score) or not math.isfinite(score):
        raise WtalInputError(f"score {score!r} is not a finite number", path=path, video=video,
                             fix="write finite detection scores (no NaN or infinity)")
    if (not isinstance(segment, (list, tuple)) or len(segment) != 2 or not all(map(_is_number, segment))
            or not all(math.isfinite(x) for x in segment)):
        raise WtalInputError(f"segment {segment!r} is not [start, end] in seconds", path=path, video=video,
                             fix="write each segment as two finite numbers [start_s, end_s]")
    start, end = float(segment[0]), float(segment[1])
    if end < start:
        raise WtalInputError(f"segment [{start}, {end}] ends before it starts", path=path, video=video,
                             fix="write segments as [start, end] with end >= start")
    return video, label, start, end, float(score)


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool)
