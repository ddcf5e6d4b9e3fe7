"""Run logging: a text log, ``metrics.jsonl`` (one JSON record per line), optional TensorBoard, tqdm bars."""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from wtal.atomic import write_text_atomic

T = TypeVar("T")
LOGGER_NAME = "wtal.train"


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def setup_logging(run_dir: Path | None, *, enabled: bool = True) -> logging.Logger:
    """Console + ``RUN/train.log`` handlers for every ``wtal.*`` logger (rank 0 only: ``enabled``).

    The handlers sit on the package logger ``wtal``, so messages of the library modules (pseudo-label
    generations, LinPro fallbacks, ...) reach the run's log next to the trainer's own ``wtal.train`` lines.
    """
    get_logger().propagate = True
    logger = logging.getLogger("wtal")
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    logger.setLevel(logging.INFO)
    logger.propagate = True  # the root logger has no handler unless an application (or pytest) adds one
    if not enabled:
        logger.addHandler(logging.NullHandler())
        return logger
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return get_logger()


def log_failure_to_file(message: str) -> None:
    """Write ``message`` as an ERROR line to the run's ``train.log`` only (the console already shows the
    error once, as the command's last word)."""
    for handler in logging.getLogger("wtal").handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(logging.LogRecord(LOGGER_NAME, logging.ERROR, __file__, 0, message, None, None))


def _plain(value: Any) -> Any:
    """JSON-safe value: floats stay floats, NaN/inf become None."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """``metrics.jsonl`` of a run. The whole file is rewritten atomically on each record (it is small),
    so a killed run never leaves a torn line; on resume, records past the checkpoint are dropped."""

    def __init__(self, path: Path, *, enabled: bool = True, tensorboard_dir: Path | None = None):
        self.path = path
        self.enabled = enabled
        self.records: list[dict[str, Any]] = []
        self._tb = None
        if enabled and tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional dependency
                get_logger().warning("train.tensorboard is on but tensorboard is not installed; "
                                     "pip install 'wtal[tensorboard]'")
            else:
                self._tb = SummaryWriter(str(tensorboard_dir))

    def resume(self, finished_epochs: int) -> None:
        """Keep the existing records of the first ``finished_epochs`` epochs (records count epochs from 1)."""
        if not self.path.is_file():
            return
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                if rec.get("epoch", finished_epochs + 1) <= finished_epochs:
                    self.records.append(rec)

    def write(self, record: dict[str, Any]) -> None:
        record = _plain(record)
        self.records.append(record)
        if not self.enabled:
            return
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
        if self._tb is not None:
            step = record.get("epoch", len(self.records))
            for key, value in _flatten(record).items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key != "epoch":
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def progress(items: Iterable[T], *, enabled: bool, total: int | None = None, desc: str = "") -> Iterator[T]:
    """A tqdm bar on an interactive terminal, the bare iterable otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True)
