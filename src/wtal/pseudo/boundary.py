"""Local distillation for sentence grounding: the student's top segment pulled to its teacher's (the
``boundary_distill`` plug-in).

``plugins: [{name: boundary_distill, weight: 1.0, loss_balance: 0.5, start_epoch: 0}]``
with a grounding teacher in the run (``teacher: {run: DIR}``, e.g. a mutual CPL teacher, or a jointly trained
one) and a grounding student with proposals (CPL).

The teacher's knowledge of a query is its temporal boundaries: its top-ranked segment ``[s_T, e_T]`` (fractions
of the video; a mutual teacher's fused ranking). The student's answer is its own top-ranked proposal (the one
it reconstructs the sentence best from, :func:`wtal.models.cpl.best_segment`), ``[s, e]``; the loss is the mean
absolute boundary error ``(|s - s_T| + |e - e_T|) / 2``, differentiable in that proposal's centre and width.
Pulling the proposal the student itself ranks first moves its answer (R@1) without overriding which proposal
its reconstruction prefers, and leaves its other proposals to its own losses (diversity keeps them apart).

Knowledge, frozen or joint teacher, ``loss_balance``, checkpoints: :mod:`wtal.pseudo.knowledge` (a frozen
teacher's boundaries take two floats per training query).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from wtal.data.batch import Batch
from wtal.errors import WtalInputError
from wtal.models.cpl import best_segment
from wtal.pseudo.knowledge import DistillConfig, TeacherDistillPlugin, build_distill_plugin


@dataclass(frozen=True)
class BoundaryDistillConfig(DistillConfig):
    pass


class BoundaryDistillPlugin(TeacherDistillPlugin):
    """Trainer plug-in; see the module docstring."""

    name = "boundary_distill"

    def knowledge(self, teacher: torch.nn.Module, teacher_out: Any, batch: Batch) -> torch.Tensor:
        """``(B, 2)`` float64: the teacher's top segment of each query (fractions of the video)."""
        segments, _ = teacher.ranked_segments(teacher_out)
        return torch.as_tensor(segments[:, 0], dtype=torch.float64)

    def term(self, model: torch.nn.Module, out: Any, batch: Batch, knowledge: torch.Tensor) -> torch.Tensor:
        segment = best_segment(out)
        return (segment - knowledge.to(device=segment.device, dtype=segment.dtype)).abs().mean(dim=1)


def build_boundary_distill_plugin(context: Any, **params: Any) -> BoundaryDistillPlugin:
    """Factory for :mod:`wtal.engine.plugins` (``{name: boundary_distill, ...}``); grounding runs only."""
    task = (getattr(context, "config", None) or {}).get("task", "detection")
    if task != "grounding":
        raise WtalInputError(f"the boundary_distill plug-in distils a grounding teacher's segments; this run's task "
                             f"is {task!r}",
                             fix="for action localization use GauFuse labels from the teacher (pseudo.labels_from: "
                                 "teacher)")
    return build_distill_plugin(BoundaryDistillPlugin, BoundaryDistillConfig, context, params)
