"""The one error type for bad user input.

Every reader and CLI entry point raises :class:`WtalInputError` for input the user can fix (missing
files, wrong shapes or feature dimensions, NaN/inf, empty videos, unknown classes, malformed JSON).
The message always names what was wrong, where (file and video when known), and how to fix it.
"""

from __future__ import annotations

import errno
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


_NOT_WRITABLE = "make the folder writable for you (chmod u+w) or write to another folder"
_FILE_ERROR_FIXES = {
    errno.ENOSPC: "free space on that file system or write to another folder",
    errno.EDQUOT: "free space within your disk quota or write to another folder",
    errno.EFBIG: "the file exceeds the file-size limit (ulimit -f): raise the limit or write elsewhere",
    errno.EROFS: "the file system is read-only: write to another folder",
    errno.ENOTDIR: "a file stands where a folder of the path should be: remove it or choose another path",
    errno.EISDIR: "a folder stands at the path: remove it or choose another file name",
    errno.ENOENT: "check the path",
}


def file_error(exc: OSError, path: str | Path | None = None, *, action: str = "access") -> WtalInputError:
    """One :class:`WtalInputError` for an operating-system error on a file: what failed, the path (the
    given one, else the error's own ``filename``) and a fix suited to the error number."""
    target = path if path is not None else exc.filename
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM):
        fix = _NOT_WRITABLE if action == "write" else "check the permissions of the file and its folders"
    else:
        fix = _FILE_ERROR_FIXES.get(exc.errno, "check the path and the file system")
    return WtalInputError(f"cannot {action} the file: {reason}", path=target, fix=fix)
