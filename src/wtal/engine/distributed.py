"""Optional multi-process training launched by ``torchrun`` (gloo on CPU, nccl on CUDA).

Every rank runs the same seeded schedule, so all ranks draw the same global batches; rank ``r`` takes
videos ``r, r + W, ...`` of each global batch, so a rank may get none (a batch of one video over two ranks,
or the last videos of an epoch). Every rank still takes part in every collective: gradients are all-reduced
as a **sum** at every optimiser step (a rank without videos contributes zeros), which keeps the engine's
semantics (the gradient of a step is the sum of its videos' gradients, as in the reference's accumulation);
loss sums travel with their keys, so a rank that saw no video does not change the shape of a collective.
Rank 0 alone writes files and evaluates.

A rank that fails exits; ``torchrun`` then stops the others. Collectives also time out after
``train.collective_timeout_s`` seconds (default 1800), so processes started another way never wait forever
for a rank that died.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 1800.0
_joined_process_group = False  # this process joined a process group (a torchrun worker)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list[Any]) -> list[Any]:
        """This rank's share of one global batch."""
        return items[self.rank :: self.world_size] if self.enabled else items

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum_(self, tensors: Iterable[torch.Tensor]) -> None:
        """In-place sum over ranks (one flat buffer, one collective)."""
        if not self.enabled:
            return
        tensors = list(tensors)
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def launched_rank() -> int:
    """This process's rank as torchrun announces it (0 for a single process), before any process group."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join the process group described by torchrun's environment; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=float(timeout_s)))
    global _joined_process_group
    _joined_process_group = True
    return DistContext(rank, world, local_rank)


def shutdown_distributed(ctx: DistContext, *, finished: bool = True) -> None:
    """Leave the process group. After a normal end (``finished``) every rank first waits for the others, so
    none tears its connections down while another still uses them; after an error it leaves at once."""
    if ctx.enabled and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def joined_process_group() -> bool:
    """Whether this process joined a process group (then it should end with :func:`exit_worker`)."""
    return _joined_process_group


def exit_worker(code: int) -> NoReturn:
    """End a worker process of a multi-process run with ``code``, after flushing logs and standard streams,
    without the interpreter's finalization. Even after :func:`shutdown_distributed`, a gloo worker sometimes
    aborts while the interpreter tears down (SIGABRT, "terminate called without an active exception", no
    Python frame on the stack: a C++ thread still joinable when static objects are destroyed), in 3 of 45
    3-process runs of ``tests/ddp_worker.py`` on a loaded 2-core machine; torchrun then reports a run that
    finished and wrote all its files as failed. Nothing is left to do at that point, so the worker skips the
    teardown."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said on it
            pass
    os._exit(code)


def resolve_device(requested: str | None, ctx_local_rank: int | None = None) -> torch.device:
    """``--device`` when given, else CUDA when available (one device per local rank), else CPU."""
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            from wtal.errors import WtalInputError

            raise WtalInputError(f"--device {requested} asked for CUDA but no CUDA device is available",
                                 fix="use --device cpu")
        return device
    if torch.cuda.is_available():
        local = ctx_local_rank if ctx_local_rank is not None else int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local)
    return torch.device("cpu")
