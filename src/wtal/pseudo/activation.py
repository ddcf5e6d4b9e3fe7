"""Global distillation from a teacher: the student's activation map matched to the teacher's over time
(the ``activation_distill`` plug-in).

``plugins: [{name: activation_distill, weight: 1.0, loss_balance: 1.0, temperature: 1.0, classes: labels,
start_epoch: 0}]``
with a teacher in the run (``teacher: {run: DIR}`` or a jointly trained one).

The activation map of a model is its test-time map, ``localization_scores`` (``(T, C)`` scores in [0, 1]):
the map the model localizes with, defined for every detection model whatever its architecture, so any
teacher can teach any student (an RGB+flow mutual model an RGB-only RSKP, a two-stream RSKP an STPN, ...).
For each class the map becomes a distribution over the video's snippets, ``a_t^(1/tau)`` normalised over
time, and the loss is ``weight * tau^2 KL(teacher || student)`` (:func:`wtal.models.losses.activation_kl`),
averaged over the video's ground-truth classes (``classes: labels``) or over all classes (``all``). With
``loss_balance: r`` the weight is first scaled, once at ``start_epoch``, so that the term is ``r`` times the
student's own loss (:mod:`wtal.pseudo.balance`, the rule GauFuse's pseudo labels use). Being a
distribution over the whole video, it carries where the teacher sees the class relative to everywhere else
— background included — rather than the instance boundaries that the pseudo labels carry.

A frozen teacher (``teacher.run``) is in eval mode with fixed weights, so its map of each training video
never changes: it is computed once, at the first epoch, and kept in memory (``C`` floats per snippet). It is
not saved in checkpoints; ``--resume`` recomputes the identical map. A jointly trained teacher's map is read
from its output on the same batch (detached).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

import torch

from wtal.data.batch import Batch
from wtal.errors import WtalInputError
from wtal.models.losses import activation_kl
from wtal.pseudo.balance import balanced_weight_factor
from wtal.pseudo.teacher import pad_video_rows, snapshot_teacher, teacher_scores
from wtal.ranges import INDEX, NON_NEGATIVE, POSITIVE, check_fields, in_range

#: floor of an activation before its logarithm (a [0, 1] score of exactly 0 has no finite log)
ACTIVATION_FLOOR = 1e-8
CLASS_CHOICES = ("labels", "all")


@dataclass(frozen=True)
class ActivationDistillConfig:
    weight: float = in_range(1.0, NON_NEGATIVE)
    # r, or None: at start_epoch the weight is multiplied by the factor that makes the term r times the
    # student's own loss (wtal.pseudo.balance), as GauFuse's pseudo.loss_balance does for pseudo labels
    loss_balance: float | None = in_range(1.0, POSITIVE)
    temperature: float = in_range(1.0, POSITIVE)
    classes: str = "labels"  # labels: the video's ground-truth classes | all: every class
    start_epoch: int = in_range(0, INDEX)  # first epoch index with the loss

    def __post_init__(self) -> None:
        if self.classes not in CLASS_CHOICES:
            raise WtalInputError(f"invalid activation_distill classes {self.classes!r}",
                                 fix=f"use one of {', '.join(CLASS_CHOICES)}")


def log_activation(cas: torch.Tensor) -> torch.Tensor:
    return torch.log(cas.clamp(min=ACTIVATION_FLOOR))


class ActivationDistillPlugin:
    """Trainer plug-in; see the module docstring. ``teacher`` is the run's :class:`wtal.engine.teacher.Teacher`."""

    name = "activation_distill"

    def __init__(self, config: ActivationDistillConfig, teacher: Any):
        self.config = config
        self.teacher = teacher
        self.maps: dict[str, torch.Tensor] | None = None  # frozen teacher: video -> (T, C) log activation
        self.weight_factor: float | None = None  # set at start_epoch with loss_balance (saved in checkpoints)

    def on_epoch_start(self, epoch: int, model: torch.nn.Module, train_batches: Callable[[], Iterable[Batch]]
                       ) -> None:
        if epoch < self.config.start_epoch:
            return
        if not self.teacher.joint and self.maps is None:
            scores = teacher_scores(snapshot_teacher(self.teacher.model), train_batches)
            self.maps = {name: log_activation(torch.from_numpy(vs.cas)).float() for name, vs in scores.items()}
        if self.weight_factor is None:
            self.weight_factor = 1.0
            if self.config.loss_balance is not None and self.config.weight > 0:
                self.weight_factor = balanced_weight_factor(
                    model, train_batches, epoch, self._probe_term, ratio=self.config.loss_balance,
                    weight=self.config.weight, what="activation_distill.loss_balance")

    @property
    def weight(self) -> float:
        return self.config.weight * (self.weight_factor or 1.0)

    def loss(self, model: torch.nn.Module, out: Any, batch: Batch, epoch: int, teacher_out: Any = None
             ) -> torch.Tensor | None:
        if epoch < self.config.start_epoch or self.weight == 0:
            return None
        return self.weight * self.unweighted_loss(model, out, batch, teacher_out)

    def unweighted_loss(self, model: torch.nn.Module, out: Any, batch: Batch, teacher_out: Any) -> torch.Tensor:
        """``tau^2 KL`` per video ``(B,)`` between the teacher's and ``model``'s maps over time."""
        cfg = self.config
        cas, _ = model.localization_scores(out, batch.mask)
        target = self.teacher_map(batch, teacher_out, cas)
        columns = batch.labels > 0.5 if cfg.classes == "labels" else None
        return activation_kl(target, log_activation(cas), batch.mask, cfg.temperature, "time", columns)

    def _probe_term(self, probe: torch.nn.Module, out: Any, batch: Batch) -> torch.Tensor:
        teacher_out = snapshot_teacher(self.teacher.model)(batch) if self.teacher.joint else None
        return self.unweighted_loss(probe, out, batch, teacher_out)

    def teacher_map(self, batch: Batch, teacher_out: Any, like: torch.Tensor) -> torch.Tensor:
        """The teacher's log activation map of the batch's videos, ``(B, T, C)`` like the student's."""
        if self.teacher.joint:
            if teacher_out is None:
                raise RuntimeError("a jointly trained teacher must pass its output to activation_distill")
            cas, _ = self.teacher.model.localization_scores(teacher_out, batch.mask)
            return log_activation(cas.detach())
        if self.maps is None:
            raise RuntimeError("activation_distill: the teacher's maps are made in on_epoch_start")
        rows = []
        for name, length in zip(batch.names, batch.lengths.tolist(), strict=True):
            row = self.maps.get(name)
            if row is None or row.shape[0] != int(length) or row.shape[1] != like.shape[-1]:
                have = "no map" if row is None else f"a map of {tuple(row.shape)}"
                raise WtalInputError(f"the teacher made {have} for this video, which has {length} snippets and "
                                     f"{like.shape[-1]} classes", video=name,
                                     fix="train the student on the data its teacher's maps were made from")
            rows.append(row.to(device=like.device, dtype=like.dtype))
        return pad_video_rows(rows, like.shape[1])

    def state_dict(self) -> dict[str, Any]:
        # the frozen teacher's maps are recomputed identically after a resume; the balance is not (the student
        # has changed since), so it is kept
        return {"version": 1, "weight_factor": self.weight_factor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            raise WtalInputError(f"unsupported activation_distill plug-in state version {state.get('version')!r}")
        self.weight_factor = state.get("weight_factor")


def build_activation_distill_plugin(context: Any, **params: Any) -> ActivationDistillPlugin:
    """Factory for :mod:`wtal.engine.plugins` (``{name: activation_distill, ...}``)."""
    known = [f.name for f in fields(ActivationDistillConfig)]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise WtalInputError(f"unknown activation_distill setting(s) {unknown}", fix=f"use only: {', '.join(known)}")
    config = ActivationDistillConfig(**params)
    check_fields(config, prefix="activation_distill.")
    teacher = getattr(context, "teacher", None)
    if teacher is None:
        raise WtalInputError("the activation_distill plug-in needs a teacher and the run has none",
                             fix="name a trained run with --set teacher.run=RUN (trained on the same data)")
    return ActivationDistillPlugin(config, teacher)

