"""Atomic writes: file modes like open(), and fault injection (disk full, read-only folder, kill mid-write).

Every writer kind wtal has goes through ``wtal.atomic.write_atomic``: text, JSON, ActivityNet results,
checkpoints (torch.save), CAS archives (numpy.savez), feature arrays (numpy.save) and PNG plots. Each test
runs on every kind. A failure mid-write is simulated below the writer, at the file object: the first bytes
are written, then the "disk" fails (short write, then ENOSPC, as the kernel reports it) or the process dies.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from wtal.atomic import write_atomic, write_json_atomic, write_text_atomic
from wtal.data.segments import SegmentTable
from wtal.errors import WtalInputError

CLASSES = ["A", "B"]


def _text(path: Path, version: int) -> None:
    write_text_atomic(path, f"version {version}\n" * 2000)


def _json(path: Path, version: int) -> None:
    write_json_atomic(path, {"version": version, "values": list(range(2000))})


def _results(path: Path, version: int) -> None:
    from wtal.evaluation.results import write_results

    rows = [("v", "A", float(i), i + 1.0, 0.5) for i in range(200)] + [("v", "B", 0.0, 1.0, float(version))]
    write_results(path, SegmentTable.from_rows(CLASSES, rows))


def _checkpoint(path: Path, version: int) -> None:
    import torch

    from wtal.engine.checkpoint import save_checkpoint

    save_checkpoint(path, {"model": {"w": torch.full((500,), float(version))}, "epoch": version})


def _cas(path: Path, version: int) -> None:
    from wtal.localize.casfile import write_cas_file

    write_cas_file(path, {"v": np.full((300, 2), 0.1 * version)}, CLASSES)


def _features(path: Path, version: int) -> None:  # how the data writers store feature arrays
    write_atomic(path, lambda fh: np.save(fh, np.full((300, 4), float(version)), allow_pickle=False), binary=True)


def _png(path: Path, version: int) -> None:
    from wtal.viz.timeline import plot_timeline

    gt = SegmentTable.from_rows(CLASSES, [("v", "A", 1.0, 3.0, 1.0)])
    pred = SegmentTable.from_rows(CLASSES, [("v", "A", 1.0 + version, 2.0 + version, 0.9)])
    plot_timeline(path, "v", CLASSES, 1.0, gt, pred, duration=10.0)


WRITERS = {"text": (_text, "out.txt"), "json": (_json, "report.json"), "results": (_results, "test.json"),
           "checkpoint": (_checkpoint, "last.pt"), "cas": (_cas, "cas.npz"), "features": (_features, "v.npy"),
           "png": (_png, "v.png")}


@pytest.fixture(params=sorted(WRITERS))
def writer(request):
    return WRITERS[request.param]


@contextlib.contextmanager
def _umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------------------------- modes


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o027])
def test_new_output_mode_follows_the_umask(tmp_path, writer, mask):
    write, name = writer
    with _umask(mask):
        write(tmp_path / name, 1)
        plain = tmp_path / "plain"
        plain.write_text("x")
    assert _mode(tmp_path / name) == 0o666 & ~mask == _mode(plain)


def test_replaced_output_keeps_its_mode(tmp_path, writer):
    write, name = writer
    path = tmp_path / name
    with _umask(0o022):
        write(path, 1)
        path.chmod(0o640)
        before = path.read_bytes()
        write(path, 2)
    assert _mode(path) == 0o640 and path.read_bytes() != before


def test_synthetic_data_metrics_and_log_follow_the_umask(tmp_path):
    from wtal.data.synthetic import SynthConfig, write_synthetic
    from wtal.engine.logging import MetricsLog, setup_logging

    with _umask(0o027):
        write_synthetic(tmp_path / "data", SynthConfig(num_videos=6, dim=8, seed=0))
        setup_logging(tmp_path / "run").info("hello")
        MetricsLog(tmp_path / "run" / "metrics.jsonl").write({"epoch": 0, "loss": 1.0})
    setup_logging(None)  # close the train.log handler
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"train.log", "metrics.jsonl"} and len(files) > 6
    assert {p.relative_to(tmp_path).as_posix(): oct(_mode(p)) for p in files if _mode(p) != 0o640} == {}


# ---------------------------------------------------------------------------------- fault injection


class _FailingFile(io.FileIO):
    """A file whose disk "fills" after ``budget`` bytes: a short write, then ``fail()`` on the next one."""

    def __init__(self, fd: int, budget: int, fail):
        super().__init__(fd, "w", closefd=True)
        self.budget, self.fail = budget, fail

    def write(self, data) -> int:
        room = self.budget - self.tell()
        if room <= 0:
            self.fail()
        return super().write(bytes(data)[:room])


def _fail_after(monkeypatch, budget: int, fail) -> None:
    """Route the atomic writer's file objects through :class:`_FailingFile`."""

    def fdopen(fd, mode="r", buffering=-1, encoding=None, **kwargs):
        buffered = io.BufferedWriter(_FailingFile(fd, budget, fail))
        return buffered if "b" in mode else io.TextIOWrapper(buffered, encoding=encoding)

    monkeypatch.setattr(os, "fdopen", fdopen)


def _disk_full():
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _assert_previous_intact(folder: Path, name: str, before: bytes) -> None:
    assert (folder / name).read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == [name], "no temporary file left behind"


@pytest.fixture(params=["unnamed", "named"])
def temp_kind(request, monkeypatch):
    """Both temporary-file strategies: Linux's unnamed O_TMPFILE and the portable hidden named file."""
    if request.param == "named":
        monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    elif getattr(os, "O_TMPFILE", None) is None:
        pytest.skip("no O_TMPFILE on this system")
    return request.param


def test_disk_full_mid_write_keeps_the_previous_file(tmp_path, writer, temp_kind, monkeypatch):
    write, name = writer
    write(tmp_path / name, 1)
    before = (tmp_path / name).read_bytes()
    with monkeypatch.context() as patch:
        _fail_after(patch, 100, _disk_full)
        with pytest.raises(WtalInputError) as info:
            write(tmp_path / name, 2)
    message = str(info.value)
    assert info.value.path == str(tmp_path / name) and "No space left on device" in message
    assert "free space" in message and "Traceback" not in message
    _assert_previous_intact(tmp_path, name, before)


def test_disk_full_at_fsync_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    # delayed allocation (ext4, XFS, NFS) reports a full disk when the data is flushed to it
    path = tmp_path / "last.pt"
    _checkpoint(path, 1)
    before = path.read_bytes()

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(WtalInputError, match="No space left on device") as info:
        _checkpoint(path, 2)
    assert info.value.path == str(path)
    _assert_previous_intact(tmp_path, "last.pt", before)


@contextlib.contextmanager
def _read_only(folder: Path, monkeypatch):
    """``folder`` made read-only. Root ignores permission bits, so for root the kernel's refusal is
    emulated: creating a file in the folder fails with EACCES, as it does for any other user."""
    folder.chmod(0o555)
    try:
        with monkeypatch.context() as patch:
            if os.geteuid() == 0:
                real_open = os.open

                def guarded_open(path, flags, *args, dir_fd=None, **kwargs):
                    target = Path(path)
                    inside = target == folder or target.parent == folder or (
                        dir_fd is not None and os.path.samestat(os.fstat(dir_fd), folder.stat()))
                    if inside and flags & (os.O_WRONLY | os.O_RDWR):
                        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
                    return real_open(path, flags, *args, dir_fd=dir_fd, **kwargs)

                patch.setattr(os, "open", guarded_open)
            yield
    finally:
        folder.chmod(0o755)


def test_read_only_folder_is_one_clear_error(tmp_path, writer, temp_kind, monkeypatch):
    write, name = writer
    folder = tmp_path / "run"
    write(folder / name, 1)
    before = (folder / name).read_bytes()
    with _read_only(folder, monkeypatch), pytest.raises(WtalInputError) as info:
        write(folder / name, 2)
    assert info.value.path == str(folder / name)
    assert "Permission denied" in str(info.value) and "writable" in info.value.fix
    _assert_previous_intact(folder, name, before)


def test_unwritable_parent_path_names_the_output(tmp_path):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(WtalInputError, match="cannot write") as info:
        write_json_atomic(tmp_path / "blocker" / "report.json", {})
    assert info.value.path == str(tmp_path / "blocker" / "report.json")


def test_interrupt_mid_write_keeps_the_previous_file(tmp_path, writer, temp_kind, monkeypatch):
    write, name = writer
    write(tmp_path / name, 1)
    before = (tmp_path / name).read_bytes()

    def interrupt():
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        _fail_after(patch, 100, interrupt)
        with pytest.raises(KeyboardInterrupt):
            write(tmp_path / name, 2)
    _assert_previous_intact(tmp_path, name, before)


KILLED = 77


def test_killed_mid_write_keeps_the_previous_file_and_leaves_no_litter(tmp_path, writer, monkeypatch):
    """The process dies (no cleanup code runs) after the first bytes: the unnamed temporary file vanishes."""
    if getattr(os, "O_TMPFILE", None) is None:
        pytest.skip("without O_TMPFILE a hard kill can leave the hidden temporary file (documented)")
    write, name = writer
    write(tmp_path / name, 1)
    before = (tmp_path / name).read_bytes()
    pid = os.fork()
    if pid == 0:  # child: die in the middle of the write
        try:
            _fail_after(monkeypatch, 100, lambda: os._exit(KILLED))
            write(tmp_path / name, 2)
        finally:
            os._exit(1)  # the write finished or failed: the kill did not happen mid-write
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == KILLED
    _assert_previous_intact(tmp_path, name, before)


def test_complete_writes_replace_the_file(tmp_path, writer, temp_kind):
    write, name = writer
    write(tmp_path / name, 1)
    first = (tmp_path / name).read_bytes()
    write(tmp_path / name, 2)
    assert (tmp_path / name).read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_serializer_errors_that_are_not_os_errors_pass_through(tmp_path):
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "x.json", {"a": object()})
    assert list(tmp_path.iterdir()) == []


def test_missing_folders_are_created(tmp_path):
    write_json_atomic(tmp_path / "a" / "b.json", {"x": [1, 2.5]}, indent=1)
    assert json.loads((tmp_path / "a" / "b.json").read_text()) == {"x": [1, 2.5]}
