"""Checkpoints: plain tensors and containers only, written atomically.

A checkpoint is a dict loadable with ``torch.load(weights_only=True)``::

    model        model.state_dict()
    optimizer    optimizer.state_dict()
    grads        {param name: accumulated gradient} when an optimiser step straddles the epoch end
    epoch        number of finished epochs (the next epoch index to run)
    global_step  optimiser steps taken
    pending      videos accumulated into the gradient since the last step
    rng          list of per-rank RNG states (python, numpy, torch, cuda, loader generator)
    plugins      list of plug-in state dicts
    selection    {metric, epoch} of the best model so far
    config       the resolved run config (plain dict)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from wtal.atomic import write_atomic
from wtal.errors import WtalInputError


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    return write_atomic(path, lambda fh: torch.save(state, fh), binary=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise WtalInputError("checkpoint not found", path=path,
                             fix="train the run first (wtal train ... --out RUN) or check the run folder")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which one
        raise WtalInputError(f"cannot read checkpoint ({type(exc).__name__}: {exc})", path=path,
                             fix="delete it and retrain, or point to a checkpoint written by wtal") from exc
