"""A worker for the multi-process tests, started by ``torchrun`` (or by hand with its environment).

``python ddp_worker.py train DATA OUT``: trains a small MIL and a small RSKP (no dropout) for every batch size
in ``BATCH_SIZES`` with all ranks, checks that every rank ends with the same parameters and buffers, and
writes rank 0's final weights to ``OUT/<model>_b<batch>.pt``.

``python ddp_worker.py fail DATA OUT TIMEOUT``: rank 1 dies right after joining the process group; rank 0
waits in a collective until the configured timeout.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from wtal.engine.config import from_dict
from wtal.engine.distributed import exit_worker, init_distributed, shutdown_distributed
from wtal.engine.trainer import Trainer

BATCH_SIZES = (1, 2, 3)
MODELS = {"mil": {"dropout": 0.0}, "rskp": {"dropout": 0.0, "warmup_epoch": 0}}


def config(model: str, batch: int, data: str, timeout: float = 60.0):
    return from_dict({
        "model": {"name": model, "params": MODELS[model]},
        "data": {"path": data, "val_fraction": 0.2, "batch_size": batch, "eval_batch_size": 4},
        "optim": {"lr": 0.01},
        "train": {"epochs": 3, "eval_every": 1, "seed": 1, "progress": False, "collective_timeout_s": timeout},
        "eval": {"tiou": [0.3, 0.5]},
    })


def train(data: str, out: Path) -> None:
    torch.set_num_threads(1)
    ctx = init_distributed(torch.device("cpu"))
    finished = False
    try:
        for model in MODELS:
            for batch in BATCH_SIZES:
                trainer = Trainer(config(model, batch, data), None, device="cpu", dist=ctx)
                trainer.fit()
                state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
                for name, values in zip(state, zip(*ctx.all_gather_object(list(state.values())), strict=True),
                                        strict=True):
                    assert all(torch.equal(values[0], v) for v in values[1:]), f"{model} b{batch}: {name} differs"
                if ctx.is_main:
                    torch.save(state, out / f"{model}_b{batch}.pt")
        finished = True
    finally:
        shutdown_distributed(ctx, finished=finished)


def fail(data: str, timeout: float) -> None:
    ctx = init_distributed(torch.device("cpu"), timeout)
    if ctx.rank == 1:
        os._exit(3)  # dies without a word, as a killed process would
    ctx.all_reduce_sum_([torch.ones(1)])  # never completes: rank 1 is gone


if __name__ == "__main__":
    mode, data_path, out_dir = sys.argv[1:4]
    if mode == "train":
        train(data_path, Path(out_dir))
        exit_worker(0)  # as `wtal train` ends a worker
    else:
        fail(data_path, float(sys.argv[4]))
