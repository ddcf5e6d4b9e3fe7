"""Checks on user data: per-video feature arrays and ground-truth segments.

Every failure raises :class:`~wtal.errors.WtalInputError` naming the file, the video and the fix, so a
bad feature file stops the run at load time instead of turning into NaN losses later.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from wtal.errors import WtalInputError

REEXTRACT = "re-extract the features of this video (or remove the video from the annotations)"


def check_features(array, *, path: str | Path | None, video: str | None, dim: int | None = None,
                   what: str = "features") -> np.ndarray:
    """Return ``array`` as a float32 ``(T, D)`` array after checking it.

    Checks: numeric, 2-D, ``T >= 1``, ``D == dim`` (when given) and every value finite (after the cast to
    float32, so values too large for float32 count as non-finite).
    """
    try:
        x = np.asarray(array)
        if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise TypeError(x.dtype)
    except (TypeError, ValueError):
        raise WtalInputError(f"{what} are not a numeric array (got {type(array).__name__})", path=path,
                             video=video, fix=REEXTRACT) from None
    if x.ndim != 2:
        raise WtalInputError(f"{what} must be a 2-D (T, D) array, got shape {x.shape}", path=path,
                             video=video, fix=REEXTRACT)
    if x.shape[0] == 0:
        raise WtalInputError(f"{what} have no snippets (T = 0)", path=path, video=video, fix=REEXTRACT)
    if dim is not None and x.shape[1] != dim:
        raise WtalInputError(f"{what} have {x.shape[1]} columns, expected {dim}", path=path, video=video,
                             fix="pass the right --data folder (every video of a source must have the same "
                                 "feature dimension) or re-extract this video")
    with np.errstate(over="ignore", invalid="ignore"):
        x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise WtalInputError(f"{what} contain {int(bad.sum())} NaN/inf values (first in snippet "
                             f"{int(rows[0])}, {rows.size} snippets affected)", path=path, video=video,
                             fix=REEXTRACT)
    return x


def check_segment(start, end, *, path: str | Path | None, video: str | None) -> tuple[float, float]:
    """Return a ground-truth segment ``[start, end]`` (seconds) as floats: finite, with end >= start.

    Segments that end after the video's duration are accepted as they are (THUMOS14 has 30 of them).
    """
    try:
        s, e = float(start), float(end)
    except (TypeError, ValueError):
        raise WtalInputError(f"segment [{start!r}, {end!r}] is not a pair of numbers", path=path, video=video,
                             fix="write each segment as [start_seconds, end_seconds]") from None
    if not (np.isfinite(s) and np.isfinite(e)):
        raise WtalInputError(f"segment [{s}, {e}] is not finite", path=path, video=video,
                             fix="write finite start and end times in seconds")
    if e < s:
        raise WtalInputError(f"segment [{s}, {e}] ends before it starts", path=path, video=video,
                             fix="write each segment as [start_seconds, end_seconds] with end >= start")
    return s, e


def check_rate(value, *, path: str | Path | None, video: str | None = None) -> float:
    """Return a feature rate (snippets per second) as a float; it must be finite and positive."""
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = float("nan")
    if not (np.isfinite(rate) and rate > 0):
        raise WtalInputError(f"snippets_per_second {value!r} is not a positive number", path=path,
                             video=video,
                             fix="write the feature rate in snippets per second (25/16 for I3D at 25 fps)")
    return rate


def check_duration(duration, *, path: str | Path | None, video: str | None) -> float | None:
    """Return a video duration in seconds (None stays None); it must be finite and positive."""
    if duration is None:
        return None
    try:
        d = float(duration)
    except (TypeError, ValueError):
        raise WtalInputError(f"duration {duration!r} is not a number", path=path, video=video,
                             fix="write the video duration in seconds") from None
    if not np.isfinite(d) or d <= 0:
        raise WtalInputError(f"duration {d} is not a positive finite number of seconds", path=path,
                             video=video, fix="write the video duration in seconds")
    return d


def read_json_file(path: str | Path, *, missing: str, fix: str, missing_fix: str) -> Any:
    """Parse a JSON file; a missing file or malformed JSON raises :class:`WtalInputError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise WtalInputError(missing, path=path, fix=missing_fix)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise WtalInputError(f"malformed JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}", path=path,
                             fix=fix) from None
    except UnicodeDecodeError:
        raise WtalInputError("malformed JSON: not a UTF-8 text file", path=path, fix=fix) from None
