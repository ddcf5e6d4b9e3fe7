"""Global distillation from a teacher: the student's activation map matched to the teacher's over time
(the ``activation_distill`` plug-in).

``plugins: [{name: activation_distill, weight: 1.0, loss_balance: 1.0, temperature: 1.0, classes: labels,
start_epoch: 0}]``
with a teacher in the run (``teacher: {run: DIR}`` or a jointly trained one).

The activation map of a model is its ``activation_map(out, batch)`` (:class:`wtal.models.base.StreamModel`),
``(T, K)`` scores in [0, 1]. For action localization it is the test-time class map, ``localization_scores``: the
map the model localizes with, defined for every detection model whatever its architecture, so any teacher can
teach any student (an RGB+flow mutual model an RGB-only RSKP, a two-stream RSKP an STPN, ...). For sentence
grounding it is the query-conditioned snippet activation (CPL: its proposals' Gaussians mixed by its proposal
distribution; a mutual teacher's fused proposals), one column per query.
Each column becomes a distribution over the video's snippets, ``a_t^(1/tau)`` normalised over time, and the loss
is ``weight * tau^2 KL(teacher || student)`` (:func:`wtal.models.losses.activation_kl`), averaged over the
video's ground-truth classes (``classes: labels``) or over all columns (``all``; a grounding map has one column,
so both settings read it). Being a distribution over the whole video, it carries where the teacher sees the
class or the sentence relative to everywhere else — background included — rather than the instance boundaries
that the local distillation (GauFuse pseudo labels, ``boundary_distill``) carries.

Knowledge, frozen or joint teacher, ``loss_balance``, checkpoints: :mod:`wtal.pseudo.knowledge`. A frozen
teacher's maps take ``K`` floats per snippet of every training sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from wtal.data.batch import Batch
from wtal.errors import WtalInputError
from wtal.models.losses import activation_kl, log_activation
from wtal.pseudo.knowledge import DistillConfig, TeacherDistillPlugin, build_distill_plugin
from wtal.pseudo.teacher import pad_video_rows
from wtal.ranges import POSITIVE, in_range

CLASS_CHOICES = ("labels", "all")


@dataclass(frozen=True)
class ActivationDistillConfig(DistillConfig):
    temperature: float = in_range(1.0, POSITIVE)
    classes: str = "labels"  # labels: the video's ground-truth classes | all: every class

    def __post_init__(self) -> None:
        if self.classes not in CLASS_CHOICES:
            raise WtalInputError(f"invalid activation_distill classes {self.classes!r}",
                                 fix=f"use one of {', '.join(CLASS_CHOICES)}")


class ActivationDistillPlugin(TeacherDistillPlugin):
    """Trainer plug-in; see the module docstring. ``teacher`` is the run's :class:`wtal.engine.teacher.Teacher`."""

    name = "activation_distill"

    def knowledge(self, teacher: torch.nn.Module, teacher_out: Any, batch: Batch) -> torch.Tensor:
        """The teacher's log activation map ``(B, T, K)`` (the logarithm taken in float64)."""
        scores = teacher.activation_map(teacher_out, batch)
        return log_activation(scores.double()).to(scores.dtype)

    def split(self, knowledge: torch.Tensor, batch: Batch) -> list[torch.Tensor]:
        return [row[:length] for row, length in zip(knowledge, batch.lengths.tolist(), strict=True)]

    def join(self, rows: list[torch.Tensor], batch: Batch, out: Any, model: torch.nn.Module) -> torch.Tensor:
        like = model.activation_map(out, batch)
        for row, name, length in zip(rows, batch.names, batch.lengths.tolist(), strict=True):
            if row.shape[0] != int(length) or row.shape[1] != like.shape[-1]:
                raise WtalInputError(f"the teacher made a map of {tuple(row.shape)} for this video, which has "
                                     f"{length} snippets and {like.shape[-1]} columns", video=name,
                                     fix="train the student on the data its teacher's maps were made from")
        return pad_video_rows([r.to(device=like.device, dtype=like.dtype) for r in rows], like.shape[1])

    def term(self, model: torch.nn.Module, out: Any, batch: Batch, knowledge: torch.Tensor) -> torch.Tensor:
        """``tau^2 KL`` per sample ``(B,)`` between the teacher's and ``model``'s maps over time."""
        cfg = self.config
        cas = model.activation_map(out, batch)
        columns = batch.labels > 0.5 if cfg.classes == "labels" and batch.labels is not None else None
        return activation_kl(knowledge.to(cas.dtype), log_activation(cas), batch.mask, cfg.temperature, "time",
                             columns)


def build_activation_distill_plugin(context: Any, **params: Any) -> ActivationDistillPlugin:
    """Factory for :mod:`wtal.engine.plugins` (``{name: activation_distill, ...}``)."""
    return build_distill_plugin(ActivationDistillPlugin, ActivationDistillConfig, context, params)
