"""Prediction with a trained run: its stored config, its model's own streams, the selected checkpoint, on
the run's data or on another folder with the same classes and streams."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from wtal.data.rundata import RunData
from wtal.engine.checkpoint import load_checkpoint
from wtal.engine.config import RunConfig
from wtal.engine.distributed import resolve_device
from wtal.engine.runs import build_section_model, learned_facts, load_run_model, load_weights, read_run_config
from wtal.engine.teacher import teacher_streams
from wtal.errors import WtalInputError
from wtal.models.fused import FusedModel
from wtal.tasks.base import Task, TaskResult, build_task


@dataclass
class LoadedRun:
    cfg: RunConfig
    task: Task
    data: RunData
    model: torch.nn.Module
    checkpoint: Path


def load_run(run: str | Path, device: torch.device | str | None = None, data_path: str | Path | None = None,
             teacher_weight: float | None = None) -> LoadedRun:
    """The run's model and data. Only the model's own streams are loaded (a student trained with an
    RGB+flow teacher needs no flow at inference); ``data_path`` replaces the run's data folder. A task that
    fitted facts on the training data (``RunData.learned``) gets the run's back (``prepare_data(learned=...)``).

    ``teacher_weight`` (``wtal predict --teacher-weight``): score with the run's model and its teacher
    together (:class:`wtal.models.fused.FusedModel`): a jointly trained teacher from the same checkpoint, or
    the ``teacher.run`` model; the teacher's streams are loaded too.
    """
    run = Path(run)
    cfg = read_run_config(run)
    device = torch.device(device) if device is not None else resolve_device(None)
    task = build_task(cfg.task)
    streams = list(cfg.model.streams)
    if teacher_weight is not None:
        if cfg.teacher is None:
            raise WtalInputError("--teacher-weight: the run has no teacher", path=run, fix="drop --teacher-weight")
        streams = list(dict.fromkeys([*streams, *teacher_streams(cfg)]))
    learned = learned_facts(run)  # e.g. the run's vocabulary: other data is encoded as the model was trained
    data = task.prepare_data(cfg, streams, data_path, **({"learned": learned} if learned else {}))
    _, model, checkpoint = load_run_model(run, task, data, device=device)
    if teacher_weight is not None:
        model = FusedModel(model, load_run_teacher(run, cfg, task, data, checkpoint, device), teacher_weight)
    return LoadedRun(cfg, task, data, model, checkpoint)


def load_run_teacher(run: Path, cfg: RunConfig, task: Task, data: RunData, checkpoint: Path,
                     device: torch.device) -> torch.nn.Module:
    """The run's teacher in eval mode: a jointly trained one with its weights from ``checkpoint`` (the one
    the model was loaded from), or the model of the ``teacher.run`` folder."""
    if cfg.teacher.run is not None:
        return load_run_model(cfg.teacher.run, task, data, which=cfg.teacher.checkpoint, device=device)[1]
    state = load_checkpoint(checkpoint)
    if "teacher" not in state:
        raise WtalInputError("the checkpoint holds no teacher weights", path=checkpoint,
                             fix="use a checkpoint of this run's own training")
    teacher = build_section_model(cfg.teacher.model, task, data, where="teacher.model")
    load_weights(teacher, state["teacher"], checkpoint=checkpoint, run=run)
    return teacher.to(device).eval()


def predict_split(loaded: LoadedRun, split: str, device: torch.device | str | None = None) -> TaskResult:
    device = next(loaded.model.parameters()).device if device is None else torch.device(device)
    return loaded.task.evaluate(loaded.model, loaded.data.split(split), loaded.cfg, device)
