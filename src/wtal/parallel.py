"""The one worker-pool helper: independent per-video work in interleaved chunks over processes.

Post-processing (localization, LinPro) is independent per video. Interleaved chunks (``items[i::n]``) balance
long and short videos, and one task per worker keeps the pickling cost low. Results never depend on the
number of workers: chunks are computed by the same function and merged back into the items' order.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _picklable(objects: Sequence[Any]) -> bool:
    try:
        pickle.dumps(tuple(objects))
    except (pickle.PicklingError, AttributeError, TypeError):
        return False
    return True


def map_chunks(func: Callable[..., R], items: Sequence[T], workers: int, *shared: Any) -> list[R]:
    """``[func(chunk, *shared) for chunk in interleaved chunks of items]``, over ``workers`` processes.

    ``workers`` is capped by the number of items; with one worker (or arguments that cannot be sent to a
    worker process, e.g. a config holding a lambda) everything runs here as one chunk.
    """
    workers = max(1, min(int(workers), len(items)))
    if workers > 1 and not _picklable(shared):
        logger.info("arguments cannot go to worker processes; running serially")
        workers = 1
    if workers == 1:
        return [func(list(items), *shared)]
    chunks = [list(items[i::workers]) for i in range(workers)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(func, chunks, *([arg] * workers for arg in shared)))
