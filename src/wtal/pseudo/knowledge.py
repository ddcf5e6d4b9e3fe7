"""Distillation from the run's teacher: what the plug-ins that learn a teacher's knowledge share
(``activation_distill``: its activation map; ``boundary_distill``: its top segment).

Such a plug-in reads one piece of knowledge per training sample from the teacher and adds
``weight * term(student's output, knowledge)`` to each sample's loss, from ``start_epoch`` on.

* A frozen teacher (``teacher.run``) is in eval mode with fixed weights, so its knowledge of a training sample
  never changes: it is computed once, at the first epoch with the loss, and kept in memory keyed by the
  sample's position in the training set. It is not saved in checkpoints; ``--resume`` recomputes the identical
  knowledge.
* A jointly trained teacher's knowledge is read from its output on the same batch (detached).
* With ``loss_balance: r`` the weight is first scaled, once at ``start_epoch``, so that the term is ``r`` times
  the student's own loss (:mod:`wtal.pseudo.balance`, the rule GauFuse's pseudo labels use); the factor is
  kept in checkpoints (the student has changed since, so it would not be re-measured identically).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

import torch

from wtal.data.batch import Batch
from wtal.errors import WtalInputError
from wtal.pseudo.balance import balanced_weight_factor
from wtal.pseudo.teacher import model_device, snapshot_teacher
from wtal.ranges import INDEX, NON_NEGATIVE, POSITIVE, check_fields, in_range


@dataclass(frozen=True)
class DistillConfig:
    weight: float = in_range(1.0, NON_NEGATIVE)
    # r, or None: at start_epoch the weight is multiplied by the factor that makes the term r times the
    # student's own loss (wtal.pseudo.balance), as GauFuse's pseudo.loss_balance does for pseudo labels
    loss_balance: float | None = in_range(1.0, POSITIVE)
    start_epoch: int = in_range(0, INDEX)  # first epoch index with the loss


class TeacherDistillPlugin:
    """Base of the plug-ins; a subclass names itself and defines :meth:`knowledge` and :meth:`term` (and, for
    knowledge whose size depends on the sample, :meth:`split` and :meth:`join`)."""

    name = "distill"

    def __init__(self, config: DistillConfig, teacher: Any):
        self.config = config
        self.teacher = teacher
        self.store: dict[int, torch.Tensor] | None = None  # frozen teacher: training-set position -> knowledge
        self.weight_factor: float | None = None  # set at start_epoch with loss_balance (saved in checkpoints)

    # ------------------------------------------------------------------------------------ to define
    def knowledge(self, teacher: torch.nn.Module, teacher_out: Any, batch: Batch) -> torch.Tensor:
        """The teacher's knowledge of the batch's samples, batched ``(B, ...)``."""
        raise NotImplementedError

    def term(self, model: torch.nn.Module, out: Any, batch: Batch, knowledge: torch.Tensor) -> torch.Tensor:
        """The unweighted loss ``(B,)`` of the student's output given the teacher's batched knowledge."""
        raise NotImplementedError

    def split(self, knowledge: torch.Tensor, batch: Batch) -> list[torch.Tensor]:
        """Batched knowledge -> one tensor per sample (to keep)."""
        return list(knowledge)

    def join(self, rows: list[torch.Tensor], batch: Batch, out: Any, model: torch.nn.Module) -> torch.Tensor:
        """Kept per-sample knowledge -> batched, checked against the student's batch."""
        return torch.stack(rows)

    # ------------------------------------------------------------------------------------ plug-in hooks
    def on_epoch_start(self, epoch: int, model: torch.nn.Module, train_batches: Callable[[], Iterable[Batch]]
                       ) -> None:
        if epoch < self.config.start_epoch:
            return
        if not self.teacher.joint and self.store is None:
            self.store = self._frozen_knowledge(train_batches)
        if self.weight_factor is None:
            self.weight_factor = 1.0
            if self.config.loss_balance is not None and self.config.weight > 0:
                self.weight_factor = balanced_weight_factor(
                    model, train_batches, epoch, self._probe_term, ratio=self.config.loss_balance,
                    weight=self.config.weight, what=f"{self.name}.loss_balance")

    @property
    def weight(self) -> float:
        return self.config.weight * (self.weight_factor or 1.0)

    def loss(self, model: torch.nn.Module, out: Any, batch: Batch, epoch: int, teacher_out: Any = None
             ) -> torch.Tensor | None:
        if epoch < self.config.start_epoch or self.weight == 0:
            return None
        return self.weight * self.unweighted_loss(model, out, batch, teacher_out)

    def unweighted_loss(self, model: torch.nn.Module, out: Any, batch: Batch, teacher_out: Any) -> torch.Tensor:
        return self.term(model, out, batch, self.teacher_knowledge(batch, teacher_out, out, model))

    def teacher_knowledge(self, batch: Batch, teacher_out: Any, out: Any, model: torch.nn.Module) -> torch.Tensor:
        """The teacher's knowledge of the batch, batched like the student's output ``out``."""
        if self.teacher.joint:
            if teacher_out is None:
                raise RuntimeError(f"a jointly trained teacher must pass its output to {self.name}")
            with torch.no_grad():
                return self.knowledge(self.teacher.model, teacher_out, batch).detach()
        if self.store is None:
            raise RuntimeError(f"{self.name}: the teacher's knowledge is made in on_epoch_start")
        rows = []
        for name, position in zip(batch.names, batch.index.tolist(), strict=True):
            row = self.store.get(int(position))
            if row is None:
                raise WtalInputError("the teacher has no knowledge of this training sample", video=name,
                                     fix="train the student on the data its teacher's knowledge was made from")
            rows.append(row)
        return self.join(rows, batch, out, model)

    def _frozen_knowledge(self, train_batches: Callable[[], Iterable[Batch]]) -> dict[int, torch.Tensor]:
        teacher = snapshot_teacher(self.teacher.model)
        device = model_device(teacher)
        store: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for batch in train_batches():
                batch = batch.to(device)
                rows = self.split(self.knowledge(teacher, teacher(batch), batch), batch)
                store.update(zip(batch.index.tolist(), rows, strict=True))
        return store

    def _probe_term(self, probe: torch.nn.Module, out: Any, batch: Batch) -> torch.Tensor:
        teacher_out = snapshot_teacher(self.teacher.model)(batch) if self.teacher.joint else None
        return self.unweighted_loss(probe, out, batch, teacher_out)

    def state_dict(self) -> dict[str, Any]:
        # the frozen teacher's knowledge is recomputed identically after a resume; the balance is not (the
        # student has changed since), so it is kept
        return {"version": 1, "weight_factor": self.weight_factor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            raise WtalInputError(f"unsupported {self.name} plug-in state version {state.get('version')!r}")
        self.weight_factor = state.get("weight_factor")


def build_distill_plugin(cls: type[TeacherDistillPlugin], config_cls: type[DistillConfig], context: Any,
                         params: dict[str, Any]) -> TeacherDistillPlugin:
    """``cls(config_cls(**params), the run's teacher)``, every setting checked."""
    known = [f.name for f in fields(config_cls)]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise WtalInputError(f"unknown {cls.name} setting(s) {unknown}", fix=f"use only: {', '.join(known)}")
    config = config_cls(**params)
    check_fields(config, prefix=f"{cls.name}.")
    teacher = getattr(context, "teacher", None)
    if teacher is None:
        raise WtalInputError(f"the {cls.name} plug-in needs a teacher and the run has none",
                             fix="name a trained run with --set teacher.run=RUN (trained on the same data)")
    return cls(config, teacher)
