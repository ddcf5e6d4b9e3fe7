"""The run's teacher (``teacher:`` in the config): a model trained earlier, loaded frozen from its run
folder, or a second model trained jointly with the student.

A teacher may read streams the student does not (an RGB+flow teacher for an RGB-only student): the run
loads the union of both models' streams for training, while the student's predictions need only its own.
Plug-ins reach the teacher through their context; a jointly trained teacher's losses join the student's,
its parameters the optimiser, its weights the checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wtal.data.rundata import RunData
from wtal.engine.config import RunConfig
from wtal.engine.runs import build_section_model, load_run_model, read_run_config
from wtal.tasks.base import Task


@dataclass
class Teacher:
    model: torch.nn.Module
    streams: tuple[str, ...]
    joint: bool  # trained with the student (True) or frozen (False)
    description: str


def teacher_streams(cfg: RunConfig) -> list[str]:
    """The streams the configured teacher reads ([] without a teacher)."""
    if cfg.teacher is None:
        return []
    if cfg.teacher.run is not None:
        return list(read_run_config(cfg.teacher.run).model.streams)
    return list(cfg.teacher.model.streams)


def build_teacher(cfg: RunConfig, task: Task, data: RunData, device: torch.device) -> Teacher | None:
    spec = cfg.teacher
    if spec is None:
        return None
    if spec.run is not None:
        teacher_cfg, model, checkpoint = load_run_model(spec.run, task, data, which=spec.checkpoint, device=device)
        for p in model.parameters():
            p.requires_grad_(False)
        return Teacher(model, tuple(teacher_cfg.model.streams), False,
                       f"{teacher_cfg.model.name} on {'+'.join(teacher_cfg.model.streams)} from {checkpoint}")
    model = build_section_model(spec.model, task, data, where="teacher.model").to(device)
    return Teacher(model, tuple(spec.model.streams), True,
                   f"{spec.model.name} on {'+'.join(spec.model.streams)}, trained jointly")
