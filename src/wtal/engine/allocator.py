"""glibc malloc settings for CPU training: serve every request from the heap and keep freed memory.

Why: a training step allocates and frees the same large buffers every time (activations, the weight
gradients of 2048-wide layers: tens of MB each). glibc serves requests above its mmap threshold (dynamic,
at most 32 MB) with fresh ``mmap`` calls and returns them (and the trimmed heap top) to the OS on free, so
every step pays page faults to zero the same memory again. With mmap off (``M_MMAP_MAX = 0``) and no
trimming, freed memory is reused at once: a BaS-Net training epoch on 2048-d features ran 1.31x faster,
RSKP 1.13x on 2048-d and 1.19x on 256-d, with identical losses (one thread, synthetic features; the
measurement is in docs/results.md). The price: the process keeps its peak memory (RSS does not shrink
after a large step).

Process-wide and irreversible, so only ``wtal train`` applies it (``wtal.engine.command.apply_process_settings``),
on CPU and when ``train.keep_freed_memory`` is true (the default); a no-op outside Linux/glibc (macOS,
Windows, musl). A library user calls :func:`keep_freed_memory` when they want it.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_MAX = -4
_LARGEST_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int


def keep_freed_memory() -> bool:
    """Apply the settings if the process runs on glibc; return whether both took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process, libc among them
    except OSError:
        return False
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):  # glibc only (musl: a stub)
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, _LARGEST_TRIM_THRESHOLD) == 1
