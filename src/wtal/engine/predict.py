"""Prediction with a trained run: its stored config, its model's own streams, the selected checkpoint, on
the run's data or on another folder with the same classes and streams."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from wtal.data.rundata import RunData
from wtal.engine.config import RunConfig
from wtal.engine.distributed import resolve_device
from wtal.engine.runs import learned_facts, load_run_model, read_run_config
from wtal.tasks.base import Task, TaskResult, build_task


@dataclass
class LoadedRun:
    cfg: RunConfig
    task: Task
    data: RunData
    model: torch.nn.Module
    checkpoint: Path


def load_run(run: str | Path, device: torch.device | str | None = None, data_path: str | Path | None = None
             ) -> LoadedRun:
    """The run's model and data. Only the model's own streams are loaded (a student trained with an
    RGB+flow teacher needs no flow at inference); ``data_path`` replaces the run's data folder. A task that
    fitted facts on the training data (``RunData.learned``) gets the run's back (``prepare_data(learned=...)``)."""
    run = Path(run)
    cfg = read_run_config(run)
    device = torch.device(device) if device is not None else resolve_device(None)
    task = build_task(cfg.task)
    learned = learned_facts(run)  # e.g. the run's vocabulary: other data is encoded as the model was trained
    data = task.prepare_data(cfg, cfg.model.streams, data_path, **({"learned": learned} if learned else {}))
    _, model, checkpoint = load_run_model(run, task, data, device=device)
    return LoadedRun(cfg, task, data, model, checkpoint)


def predict_split(loaded: LoadedRun, split: str, device: torch.device | str | None = None) -> TaskResult:
    device = next(loaded.model.parameters()).device if device is None else torch.device(device)
    return loaded.task.evaluate(loaded.model, loaded.data.split(split), loaded.cfg, device)
