"""ActivityNet-style ground-truth JSON (also the ``gt.json`` of per-video feature folders).

Format: ``{"database": {VIDEO: {"subset": str, "duration": seconds, "annotations": [{"label": str,
"segment": [start_s, end_s]}, ...]}, ...}}``. ``duration`` may be missing or null.

Optional keys written by :func:`write_activitynet_json` so that nothing is lost in a round trip:

- top level ``"classes"`` (list of names, in class-index order; a ``"taxonomy"`` given as a list of names is
  used the same way; the official hierarchical taxonomy, a list of dicts, is ignored);
- top level ``"snippets_per_second"`` (feature rate of the videos, default 25/16), overridable per video;
- per video ``"labels"``: the video-level training labels (default: the instance labels, in class order);
- top level ``"ambiguous"``: ``{VIDEO: [[start_s, end_s], ...]}``.

Without a class list the classes are the sorted unique instance labels. Segments that end after ``duration``
are kept as written (not clipped).
"""

from __future__ import annotations

from pathlib import Path

from wtal.atomic import write_json_atomic
from wtal.data.annotations import AnnotationSet, Instance, VideoInfo
from wtal.data.timebase import I3D_SNIPPETS_PER_SECOND
from wtal.data.validate import check_duration, check_rate, check_segment, read_json_file
from wtal.errors import WtalInputError

_FORMAT_FIX = ('write {"database": {VIDEO: {"subset": ..., "duration": ..., '
               '"annotations": [{"label": ..., "segment": [start, end]}]}}}')


def read_activitynet_json(path: str | Path, snippets_per_second: float | None = None) -> AnnotationSet:
    """Read an ActivityNet-style ground-truth JSON into an :class:`AnnotationSet`.

    ``snippets_per_second`` overrides the file's ``"snippets_per_second"`` (default 25/16).
    """
    path = Path(path)
    data = read_json_file(path, missing="ground-truth JSON not found",
                          missing_fix="pass an existing gt.json / JSON file", fix="repair the JSON file")
    database = _get(data, "database", dict, path, None)
    default_rate = check_rate(snippets_per_second if snippets_per_second is not None
                              else data.get("snippets_per_second", I3D_SNIPPETS_PER_SECOND), path=path)

    entries = []  # (name, subset, duration, given labels or None, instances, rate)
    used: set[str] = set()
    for name, entry in database.items():
        if not isinstance(entry, dict):
            raise WtalInputError(f"video entry must be an object, got {type(entry).__name__}", path=path,
                                 video=name, fix=_FORMAT_FIX)
        subset = _get(entry, "subset", str, path, name)
        duration = check_duration(entry.get("duration"), path=path, video=name)
        instances = []
        for ann in _get(entry, "annotations", list, path, name):
            label = _get(ann, "label", str, path, name)
            segment = _get(ann, "segment", list, path, name)
            if len(segment) != 2:
                raise WtalInputError(f"segment {segment!r} is not a [start, end] pair", path=path, video=name,
                                     fix=_FORMAT_FIX)
            instances.append(Instance(label, *check_segment(*segment, path=path, video=name)))
        labels = entry.get("labels")
        if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
            raise WtalInputError(f"'labels' must be a list of class names, got {labels!r}", path=path,
                                 video=name, fix='write "labels": ["ClassA", ...] or leave it out')
        rate = default_rate
        if snippets_per_second is None and "snippets_per_second" in entry:
            rate = check_rate(entry["snippets_per_second"], path=path, video=name)
        used.update(i.label for i in instances)
        used.update(labels or ())
        entries.append((name, subset, duration, labels, instances, rate))

    classes = _class_list(data, path)
    if classes is None:
        classes = sorted(used)
    index = {c: i for i, c in enumerate(classes)}
    unknown = used - index.keys()
    if unknown:
        lab = min(unknown)
        video = next(e[0] for e in entries if lab in (*(e[3] or ()), *(i.label for i in e[4])))
        raise WtalInputError(f"unknown class {lab!r} (not in the file's class list)", path=path, video=video,
                             fix='add the class to "classes" or fix the label')
    videos = {}
    for name, subset, duration, labels, instances, rate in entries:
        if labels is None:
            labels = sorted({i.label for i in instances}, key=index.__getitem__)
        videos[name] = VideoInfo(name, subset, duration, tuple(dict.fromkeys(labels)), instances, rate)
    ambiguous = _read_ambiguous(data, videos, path)
    return AnnotationSet(classes, videos, ambiguous, source=str(path))


def _get(obj, key: str, kind: type, path: Path, video: str | None):
    if not isinstance(obj, dict):
        raise WtalInputError(f"expected an object with key {key!r}, got {type(obj).__name__}", path=path,
                             video=video, fix=_FORMAT_FIX)
    if key not in obj:
        raise WtalInputError(f"missing key {key!r}", path=path, video=video, fix=_FORMAT_FIX)
    value = obj[key]
    if not isinstance(value, kind):
        raise WtalInputError(f"{key!r} must be a {kind.__name__}, got {type(value).__name__}", path=path,
                             video=video, fix=_FORMAT_FIX)
    return value


def _class_list(data: dict, path: Path) -> list[str] | None:
    for key in ("classes", "taxonomy"):
        value = data.get(key)
        if isinstance(value, list) and value and all(isinstance(c, str) for c in value):
            return list(value)
        if key == "classes" and value is not None:
            raise WtalInputError(f"'classes' must be a non-empty list of names, got {value!r}", path=path,
                                 fix='write "classes": ["ClassA", ...] or leave it out')
    return None


def _read_ambiguous(data: dict, videos: dict, path: Path) -> dict[str, list[tuple[float, float]]]:
    raw = data.get("ambiguous", {})
    if not isinstance(raw, dict):
        raise WtalInputError("'ambiguous' must map video names to lists of [start, end]", path=path,
                             fix="fix or remove the 'ambiguous' key")
    out = {}
    for name, segs in raw.items():
        if name not in videos:  # as in W-TALC: ambiguous segments of videos outside the set are ignored
            continue
        if not isinstance(segs, list) or not all(isinstance(s, list) and len(s) == 2 for s in segs):
            raise WtalInputError(f"ambiguous segments must be [[start, end], ...], got {segs!r}", path=path,
                                 video=name, fix="fix or remove the 'ambiguous' key")
        out[name] = [check_segment(*s, path=path, video=name) for s in segs]
    return out


def write_activitynet_json(path: str | Path, annotations: AnnotationSet) -> Path:
    """Write ``annotations`` as ActivityNet-style JSON (with the optional keys above); atomically."""
    rates = {v.snippets_per_second for v in annotations.videos.values()}
    common_rate = rates.pop() if len(rates) == 1 else I3D_SNIPPETS_PER_SECOND
    database = {}
    for v in annotations.videos.values():
        entry = {"subset": v.subset, "duration": v.duration, "labels": list(v.labels),
                 "annotations": [{"label": i.label, "segment": [i.start, i.end]} for i in v.instances]}
        if v.snippets_per_second != common_rate:
            entry["snippets_per_second"] = v.snippets_per_second
        database[v.name] = entry
    doc = {"version": "wtal-1", "classes": list(annotations.classes), "snippets_per_second": common_rate,
           "database": database,
           "ambiguous": {n: [list(s) for s in segs] for n, segs in annotations.ambiguous.items()}}
    return write_json_atomic(path, doc)
