"""The one error type for bad user input.

Every reader and CLI entry point raises :class:`WtalInputError` for input the user can fix (missing
files, wrong shapes or feature dimensions, NaN/inf, empty videos, unknown classes, malformed JSON).
The message always names what was wrong, where (file and video when known), and how to fix it.
"""

from __future__ import annotations

from pathlib import Path


class WtalInputError(ValueError):
    """Invalid user input: carries the offending file, the video and a suggested fix."""

    def __init__(self, problem: str, *, path: str | Path | None = None, video: str | None = None,
                 fix: str | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.video = video
        self.fix = fix
        parts = [problem]
        if self.path is not None:
            parts.append(f"file: {self.path}")
        if video is not None:
            parts.append(f"video: {video}")
        if fix is not None:
            parts.append(f"fix: {fix}")
        super().__init__("\n  ".join(parts))
