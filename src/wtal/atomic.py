"""Atomic file writes: a crash never leaves a half-written output behind.

Everything wtal writes (results, checkpoints, CAS files, plots, configs, data) goes through
:func:`write_atomic`: the data is written to a temporary file in the destination folder, flushed, fsynced
and then renamed over the destination, which is atomic on POSIX file systems.

* Temporary file: on Linux an unnamed ``O_TMPFILE`` in the destination folder that gets a name only once
  every byte is written and synced, so even a process killed mid-write (SIGKILL, power loss) leaves no
  litter. Elsewhere (or on a file system without ``O_TMPFILE``) it is a hidden ``.NAME.XXXXXXXX.tmp``
  beside the output, removed on every error and interrupt; only a hard kill can leave one behind.
* File mode: as with a plain ``open(path, "w")``. A new output gets ``0o666`` less the process umask
  (and the folder's default ACL, if any), so colleagues read results exactly as the umask allows; an
  output that already exists keeps its permission bits (``open`` truncates in place and keeps them too).
* Errors: an ``OSError`` of the output (read-only folder, permission denied, disk full, quota, a folder
  in the way) becomes one :class:`~wtal.errors.WtalInputError` naming the output path and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from wtal.errors import WtalInputError, file_error

NEW_FILE_MODE = 0o666  # before the umask, as open() uses
_PROC_FD = Path("/proc/self/fd")


def write_atomic(path: str | Path, writer: Callable[[IO[Any]], None], *, binary: bool = False) -> Path:
    """Call ``writer(file_handle)`` on a temporary file, then move it to ``path``.

    Raises :class:`WtalInputError` naming ``path`` when the file system refuses the write (an ``OSError``
    anywhere in the failure, including one wrapped by a serializer such as ``torch.save``).
    """
    path = Path(path)
    try:
        _write_and_replace(path, writer, binary)
    except WtalInputError:
        raise
    except Exception as exc:
        cause = _os_error_in(exc)
        if cause is None:
            raise
        raise file_error(cause, path, action="write") from exc
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda fh: fh.write(text))


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = None) -> Path:
    return write_atomic(path, lambda fh: json.dump(obj, fh, indent=indent))


def _write_and_replace(path: Path, writer: Callable[[IO[Any]], None], binary: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Every step works relative to the folder's descriptor: linking a /proc/self/fd entry follows the
    # magic link only through linkat() (os.link with a dir_fd), and the folder is what gets fsynced.
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd, temp = _open_temp(folder, path.name)
        try:
            with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as fh:
                writer(fh)
                fh.flush()
                _keep_existing_mode(fh.fileno(), folder, path.name)
                os.fsync(fh.fileno())
                if temp is None:  # unnamed: it gets a name only now that it is complete
                    temp = _link_temp(fh.fileno(), folder, path.name)
            os.replace(temp, path.name, src_dir_fd=folder, dst_dir_fd=folder)
            temp = None
        finally:
            if temp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp, dir_fd=folder)
        with contextlib.suppress(OSError):  # makes the rename durable; not every file system syncs folders
            os.fsync(folder)
    finally:
        os.close(folder)


def _open_temp(folder: int, name: str) -> tuple[int, str | None]:
    """``(fd, None)`` for an unnamed temporary file in ``folder``, else ``(fd, its name)``."""
    o_tmpfile = getattr(os, "O_TMPFILE", None)
    if o_tmpfile is not None and _PROC_FD.is_dir():
        try:
            return os.open(".", o_tmpfile | os.O_WRONLY | os.O_CLOEXEC, NEW_FILE_MODE, dir_fd=folder), None
        except OSError:  # not supported by this file system (or a real error, which the fallback repeats)
            pass
    return _unique(name, lambda temp: os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                              NEW_FILE_MODE, dir_fd=folder))


def _link_temp(fd: int, folder: int, name: str) -> str:
    _, temp = _unique(name, lambda temp: os.link(_PROC_FD / str(fd), temp, dst_dir_fd=folder,
                                                 follow_symlinks=True))
    return temp


def _unique(name: str, create: Callable[[str], Any]) -> tuple[Any, str]:
    """``create(temp)`` under the first free hidden temporary name ``.NAME.XXXXXXXX.tmp``."""
    for _ in range(100):
        temp = f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return create(temp), temp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", name)


def _keep_existing_mode(fd: int, folder: int, name: str) -> None:
    """Give the new file the permission bits of the regular file it replaces (a new output keeps the
    umask-derived mode it was created with)."""
    try:
        st = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode):
        os.fchmod(fd, stat.S_IMODE(st.st_mode))


def _os_error_in(exc: BaseException) -> OSError | None:
    """The ``OSError`` behind ``exc``: itself, or one in its cause / context chain (``torch.save`` reports
    a failed ``write`` as a ``RuntimeError`` raised while handling it)."""
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        if isinstance(node, OSError):
            return node
        seen.add(id(node))
        node = node.__cause__ or node.__context__
    return None
