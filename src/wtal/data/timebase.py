"""The one place that converts between snippet indices and seconds.

I3D features are extracted from 16-frame snippets of video decoded at 25 fps, so by default there are
``25 / 16 = 1.5625`` snippets per second and snippet ``t`` covers ``[t / r, (t + 1) / r)`` seconds.
Snippet boundaries are continuous here: a detection ``[s, e)`` in snippet units (``e`` exclusive,
floats allowed, as produced by fusion) maps to ``[s / r, e / r)`` seconds, and back.
Every other module must call these functions instead of multiplying by 0.64 itself.

Sentence-grounding features need no frame rate: a video of ``duration`` seconds with ``T`` snippets maps
snippet ``i`` to ``[i, i + 1) * duration / T`` seconds (:func:`video_snippets_to_seconds`), and moments are
compared as fractions of the duration (:func:`seconds_to_fraction`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

I3D_SNIPPETS_PER_SECOND = 25.0 / 16.0


def snippets_to_seconds(x, snippets_per_second: float = I3D_SNIPPETS_PER_SECOND):
    """Snippet positions (scalars or arrays, may be fractional) -> seconds (float64)."""
    _check_rate(snippets_per_second)
    return np.asarray(x, dtype=np.float64) / float(snippets_per_second)


def seconds_to_snippets(t, snippets_per_second: float = I3D_SNIPPETS_PER_SECOND):
    """Seconds (scalars or arrays) -> fractional snippet positions (float64)."""
    _check_rate(snippets_per_second)
    return np.asarray(t, dtype=np.float64) * float(snippets_per_second)


def snippet_count(duration_s: float, snippets_per_second: float = I3D_SNIPPETS_PER_SECOND) -> int:
    """Number of whole snippets in a video of ``duration_s`` seconds (at least 1 for d > 0)."""
    n = int(np.floor(seconds_to_snippets(duration_s, snippets_per_second) + 1e-9))
    return max(n, 1) if duration_s > 0 else 0


def video_snippets_to_seconds(x, duration_s: float, num_snippets: int):
    """Snippet positions of a video of ``num_snippets`` snippets spanning ``duration_s`` s -> seconds (float64)."""
    _check_span(duration_s, num_snippets)
    return np.asarray(x, dtype=np.float64) * (float(duration_s) / int(num_snippets))


def seconds_to_video_snippets(t, duration_s: float, num_snippets: int):
    """Seconds -> fractional snippet positions of a video of ``num_snippets`` snippets spanning ``duration_s``."""
    _check_span(duration_s, num_snippets)
    return np.asarray(t, dtype=np.float64) * (int(num_snippets) / float(duration_s))


def seconds_to_fraction(t, duration_s):
    """Seconds -> fractions of the video duration (float64); ``duration_s`` may be an array (broadcast)."""
    return np.asarray(t, dtype=np.float64) / _positive_durations(duration_s)


def fraction_to_seconds(f, duration_s):
    """Fractions of the video duration -> seconds (float64); ``duration_s`` may be an array (broadcast)."""
    return np.asarray(f, dtype=np.float64) * _positive_durations(duration_s)


def _positive_durations(duration_s) -> np.ndarray:
    d = np.asarray(duration_s, dtype=np.float64)
    if not (np.isfinite(d).all() and (d > 0).all()):
        raise ValueError(f"video durations must be positive finite seconds, got {duration_s!r}")
    return d


def _check_span(duration_s: float, num_snippets: int) -> None:
    _positive_durations(duration_s)
    if int(num_snippets) < 1:
        raise ValueError(f"a video needs at least one snippet, got {num_snippets!r}")


def _check_rate(r: float) -> None:
    if not np.isfinite(r) or r <= 0:
        raise ValueError(f"snippets_per_second must be a positive finite number, got {r!r}")


@dataclass(frozen=True)
class FeatureLayout:
    """How a feature source lays out one snippet: its rate and the column ranges of each modality.

    ``rgb`` and ``flow`` are ``(start, stop)`` column ranges of the joint feature vector. The W-TALC
    bundle and the per-video folders both put RGB first: columns 0-1023 RGB, 1024-2047 flow.
    """

    snippets_per_second: float = I3D_SNIPPETS_PER_SECOND
    rgb: tuple[int, int] = (0, 1024)
    flow: tuple[int, int] = (1024, 2048)

    @property
    def dim(self) -> int:
        return max(self.rgb[1], self.flow[1])

    @classmethod
    def split_evenly(cls, dim: int, snippets_per_second: float = I3D_SNIPPETS_PER_SECOND) -> FeatureLayout:
        """Layout of a joint feature of ``dim`` columns: first half RGB, second half flow."""
        if dim < 2 or dim % 2:
            raise ValueError(f"a joint RGB+flow feature needs an even dimension >= 2, got {dim}")
        return cls(snippets_per_second, (0, dim // 2), (dim // 2, dim))

    def split(self, joint) -> dict[str, np.ndarray]:
        """A joint ``(T, dim)`` array as the streams ``{"rgb": ..., "flow": ...}`` (views)."""
        return {"rgb": joint[:, slice(*self.rgb)], "flow": joint[:, slice(*self.flow)]}

    def columns(self, modality: str) -> slice:
        """Column slice of ``modality`` in ('rgb', 'flow', 'both')."""
        if modality == "rgb":
            return slice(*self.rgb)
        if modality == "flow":
            return slice(*self.flow)
        if modality == "both":
            return slice(min(self.rgb[0], self.flow[0]), self.dim)
        raise ValueError(f"unknown modality {modality!r}; use 'rgb', 'flow' or 'both'")
