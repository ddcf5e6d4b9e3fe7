"""Dual-branch alternate training (the ``vlp_alternate`` plug-in): a classification-pretrained branch (CBP, the
run's model on I3D rgb+flow) and a vision-language branch (VLP, the run's jointly trained teacher on the
``clip`` stream) label each other's snippets in turn.

Config: ``teacher: {model: {name: vlp, streams: [clip]}}`` plus ``plugins: [{name: vlp_alternate, ...}]``.
The plug-in chooses, per epoch, which branch learns (:meth:`AlternatePlugin.frozen_roles`, the trainer's
freezing hook, see :mod:`wtal.engine.plugins`) and adds the label loss:

* epochs ``< warmup_epochs``: both branches learn from their own video-level classification losses only
  (a CBP branch at initialisation has no confident background to give);
* then cycles of ``b_step_epochs`` B epochs and ``f_step_epochs`` F epochs:

  - **B step**: the CBP branch is frozen (eval mode, no gradient); in each training video, the
    ``background_ratio`` share of snippets it scores lowest (its test-time CAS, the highest of the video's
    ground-truth classes) become background labels for the VLP branch, which keeps its MIL loss;
  - **F step**: the VLP branch is frozen; the ``foreground_ratio`` share of snippets it scores highest
    become foreground labels for the CBP branch, which keeps its own losses.

Keys (all optional):

========================  ===========================================================================
``warmup_epochs``         joint epochs before the first B step                                  [epochs]
``b_step_epochs``         epochs of one B step (0: no B steps)                                  [epochs]
``f_step_epochs``         epochs of one F step (0: no F steps)                                  [epochs]
``background_labels``     add the B step's label loss (false: the B step trains the VLP branch on its
                          MIL loss alone; an ablation)
``foreground_labels``     the same for the F step
``selection``             ``ratio`` (default: a fixed share of each video) or ``threshold`` (the
                          snippets whose score, min-max normalised within the video, is at most
                          ``background_threshold`` / at least ``foreground_threshold``)
``background_ratio``      share of each video's snippets labelled background in a B step (0.35)
``foreground_ratio``      share labelled foreground in an F step (0.15)
``background_threshold``  with ``selection: threshold`` (0.2)
``foreground_threshold``  with ``selection: threshold`` (0.8)
``label_loss``            ``class`` (default): a foreground snippet is labelled with the ground-truth
                          class the VLP branch scores highest there (cross entropy on that class), a
                          background snippet with the background column; ``agnostic``: foreground
                          snippets only push the background column down (``-log(1 - p_bg)``)
``background_weight``     weight of the B step's label loss (1.0)
``foreground_weight``     weight of the F step's label loss (1.0)
========================  ===========================================================================

Both label losses are :func:`wtal.pseudo.distill.distillation_loss` (``bounded``) on the learning branch's
``distill_logits``, a per-video mean over its snippets (unlabelled snippets contribute 0), so any base model
that GauFuse supports can be the CBP branch. The ratios keep well inside each kind's share of a video, so
that a labelled snippet is far from the labelling branch's decision boundary: THUMOS14's actions cover 21 %
of a video on average (median 23 %), so 0.15 foreground (about two thirds of it) and 0.35 background (less
than half of the rest). Data with much more action (ActivityNet 1.2: 64 %) needs other values;
``benchmarks/ablate_vlp.py`` measures halved and 1.5x ratios.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

import torch

from wtal.data.batch import Batch
from wtal.errors import WtalInputError
from wtal.models.masked import masked_max, masked_min, masked_topk_indices
from wtal.pseudo.distill import distillation_loss
from wtal.ranges import FRACTION, INDEX, NON_NEGATIVE, UNIT, check_fields, in_range

logger = logging.getLogger(__name__)

SELECTIONS = ("ratio", "threshold")
LABEL_LOSSES = ("class", "agnostic")
PHASES = ("joint", "B", "F")


@dataclass(frozen=True)
class AlternateConfig:
    warmup_epochs: int = in_range(50, INDEX)
    b_step_epochs: int = in_range(1, INDEX)
    f_step_epochs: int = in_range(1, INDEX)
    background_labels: bool = True
    foreground_labels: bool = True
    selection: str = "ratio"
    background_ratio: float = in_range(0.35, FRACTION)
    foreground_ratio: float = in_range(0.15, FRACTION)
    background_threshold: float = in_range(0.2, UNIT)
    foreground_threshold: float = in_range(0.8, UNIT)
    label_loss: str = "class"
    background_weight: float = in_range(1.0, NON_NEGATIVE)
    foreground_weight: float = in_range(1.0, NON_NEGATIVE)

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> AlternateConfig:
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise WtalInputError(f"unknown vlp_alternate setting {unknown[0]!r}", fix=f"valid keys: {known}")
        config = cls(**params)
        check_fields(config, "plugins.vlp_alternate.")
        if config.selection not in SELECTIONS:
            raise WtalInputError(f"invalid vlp_alternate selection {config.selection!r}",
                                 fix=f"use one of {', '.join(SELECTIONS)}")
        if config.label_loss not in LABEL_LOSSES:
            raise WtalInputError(f"invalid vlp_alternate label_loss {config.label_loss!r}",
                                 fix=f"use one of {', '.join(LABEL_LOSSES)}")
        if config.b_step_epochs + config.f_step_epochs == 0:
            raise WtalInputError("vlp_alternate has neither B nor F steps (b_step_epochs = f_step_epochs = 0)",
                                 fix="give at least one of them a positive number of epochs")
        return config

    def phase(self, epoch: int) -> str:
        """``joint``, ``B`` or ``F`` for epoch index ``epoch``."""
        if epoch < self.warmup_epochs:
            return "joint"
        position = (epoch - self.warmup_epochs) % (self.b_step_epochs + self.f_step_epochs)
        return "B" if position < self.b_step_epochs else "F"


def foreground_score(model: torch.nn.Module, out: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """A branch's per-snippet foreground evidence for the video's own classes: its test-time CAS at the
    highest ground-truth class, ``(B, T)``, and that class, ``(B, T)`` int64. Videos without labels score 0."""
    cas, _ = model.localization_scores(out, batch.mask)
    positive = (batch.labels > 0.5).unsqueeze(1)  # (B, 1, C)
    gated = cas.masked_fill(~positive, float("-inf"))
    score, cls = gated.max(dim=-1)
    score = torch.where(torch.isfinite(score), score, torch.zeros_like(score))
    return score.detach(), cls


def confident_snippets(score: torch.Tensor, mask: torch.Tensor, config: AlternateConfig, *, lowest: bool
                       ) -> torch.Tensor:
    """``(B, T)`` bool: each video's confident background (``lowest``) or foreground snippets by ``score``."""
    if config.selection == "ratio":
        share = config.background_ratio if lowest else config.foreground_ratio
        k = torch.clamp(torch.floor(mask.sum(dim=1).double() * share).long(), min=1)
        order, top = masked_topk_indices(score, mask, k, largest=not lowest)
        chosen = torch.zeros_like(mask)
        return chosen.scatter(1, order, top) & mask
    lo, hi = masked_min(score, mask), masked_max(score, mask)
    span = (hi - lo).clamp(min=1e-12).unsqueeze(1)
    relative = (score - lo.unsqueeze(1)) / span
    picked = relative <= config.background_threshold if lowest else relative >= config.foreground_threshold
    return picked & mask & (hi > lo).unsqueeze(1)  # a flat video has no confident snippets


def label_targets(chosen: torch.Tensor, cls: torch.Tensor, num_classes: int, *, background: bool, kind: str
                  ) -> torch.Tensor:
    """``(B, T, C+1)`` targets for :func:`distillation_loss` (bounded): ``+1`` at the background column for
    background labels; for foreground labels ``+1`` at the class (``class``) or ``-1`` at the background
    column (``agnostic``: ``-log(1 - p_bg)``)."""
    target = torch.zeros(*chosen.shape, num_classes + 1, dtype=torch.float32, device=chosen.device)
    if background:
        target[..., num_classes] = chosen.float()
    elif kind == "class":
        target.scatter_(2, cls.unsqueeze(-1), chosen.float().unsqueeze(-1))
    else:
        target[..., num_classes] = -chosen.float()
    return target


class AlternatePlugin:
    """Trainer plug-in; see the module docstring. Holds no state: the phase follows from the epoch."""

    name = "vlp_alternate"

    def __init__(self, config: AlternateConfig, *, teacher: torch.nn.Module, num_classes: int):
        self.config = config
        self.teacher = teacher
        self.num_classes = int(num_classes)

    def frozen_roles(self, epoch: int) -> frozenset[str]:
        return {"joint": frozenset(), "B": frozenset({"model"}), "F": frozenset({"teacher"})}[self.config.phase(epoch)]

    def on_epoch_start(self, epoch: int, model: torch.nn.Module, train_batches: Callable[[], Iterable[Batch]]
                       ) -> None:
        phase = self.config.phase(epoch)
        if epoch == self.config.warmup_epochs or (phase != "joint" and self.config.phase(epoch - 1) != phase):
            logger.info("vlp_alternate: epoch %d is a%s step (%s frozen)", epoch + 1,
                        " B" if phase == "B" else "n F", "CBP branch" if phase == "B" else "VLP branch")

    def loss(self, model: torch.nn.Module, out: Any, batch: Batch, epoch: int, teacher_out: Any = None
             ) -> torch.Tensor | None:
        phase = self.config.phase(epoch)
        if teacher_out is None:
            raise WtalInputError("vlp_alternate needs the output of a jointly trained teacher",
                                 fix="add teacher: {model: {name: vlp, streams: [clip]}} to the config")
        if phase == "B" and self.config.background_labels:
            return self.config.background_weight * self._label_loss(model, out, self.teacher, teacher_out, batch,
                                                                    background=True)
        if phase == "F" and self.config.foreground_labels:
            return self.config.foreground_weight * self._label_loss(self.teacher, teacher_out, model, out, batch,
                                                                    background=False)
        return None

    def _label_loss(self, labeller: torch.nn.Module, labeller_out: Any, learner: torch.nn.Module,
                    learner_out: Any, batch: Batch, *, background: bool) -> torch.Tensor:
        """The learner's ``(B,)`` loss on the frozen labeller's confident background / foreground snippets."""
        with torch.no_grad():
            score, cls = foreground_score(labeller, labeller_out, batch)
            chosen = confident_snippets(score, batch.mask, self.config, lowest=background)
            chosen &= (batch.labels > 0.5).any(dim=1, keepdim=True)
            target = label_targets(chosen, cls, self.num_classes, background=background, kind=self.config.label_loss)
        branches = learner.distill_logits(learner_out)
        return distillation_loss(branches, target.to(branches[0][1].dtype), batch.mask, "bounded")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def build_alternate_plugin(context: Any, **params: Any) -> AlternatePlugin:
    """Factory for :mod:`wtal.engine.plugins` (``plugins: [{name: vlp_alternate, ...}]``)."""
    config = AlternateConfig.from_dict(params)
    teacher = getattr(context, "teacher", None)
    if teacher is None or not teacher.joint:
        raise WtalInputError("the vlp_alternate plug-in needs a jointly trained VLP branch as the run's teacher",
                             fix="add teacher: {model: {name: vlp, streams: [clip]}} to the config (see "
                                 "configs/rskp_vlp.yaml)")
    return AlternatePlugin(config, teacher=teacher.model, num_classes=len(context.classes))
