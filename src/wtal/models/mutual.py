"""Cross-modal mutual learning: one full base model per input stream, trained together, each branch's
snippet activation map distilled into the others', the output fusing all branches. For action localization
(any detection base model, e.g. RSKP) and for sentence grounding (``base: cpl``).

``model: {name: mutual, streams: [rgb, flow], params: {base: rskp, mutual_weight: 1.0, ..., <base params>}}``
builds ``base`` once per stream, each from a sub-context that holds that stream alone, so a branch is
exactly the model ``{name: base, streams: [stream]}`` would be (same class, same hyperparameters, same
parameter shapes). Every key of ``params`` that is not one of :class:`MutualHyperparameters` goes to each
branch, so a config can ``extends: rskp.yaml`` and only name the mutual model and its own keys.

Training: each branch's own weak losses (reported as ``<stream>/<term>``), plus ``mutual_weight`` times the
mutual term: for branch ``i``, the mean over the other branches ``j`` of
``tau^2 KL(p_j || p_i)`` (:func:`wtal.models.losses.activation_kl`) between the branches' temperature-softened
snippet activation maps, summed over the branch's weighted maps (:func:`branch_maps`: a detection model's
``distill_logits``, RSKP: 0.8 on ``o.S``, 0.2 on ``m.S``; a grounding model's ``mutual_maps``, CPL: the log of
its query-conditioned snippet activation). The other branch's map is a fixed target (detached), as in deep
mutual learning: each branch learns from the others, never from pulling its own target. ``mutual_axis`` says
what a distribution is: ``classes`` (per snippet, over the classes and background) or ``time`` (per class,
or per query, over the video's snippets); a base model lists the axes its maps allow in ``mutual_axes``
(CPL: ``time`` only, its map has one column).

Output (detection): the branches' test-time maps (``localization_scores``) and video scores averaged with
``fusion_weights`` (equal by default); ``cas_logits`` is the log of the weighted mixture of the branches'
class distributions; ``distill_logits`` lists every branch's weighted logits (scaled by its fusion weight),
so GauFuse pseudo labels can train the mutual model as they train any base model.

Output (a base model with ``fuse_branch_outputs``, e.g. CPL): that function's fused output
(:func:`wtal.models.cpl.fuse_branch_outputs`: the branches' proposals pooled and, at test time, each scored by
every branch), read by the base model's own test-time methods (``ranked_segments``, ``snippet_activation``,
``activation_map``), which the mutual model forwards to its first branch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import nn

from wtal.data.batch import Batch
from wtal.errors import WtalInputError
from wtal.models.base import ModelContext, ModelOutput, StreamModel
from wtal.models.losses import activation_kl
from wtal.models.recipes import parse_hyperparameters
from wtal.ranges import INDEX, NON_NEGATIVE, POSITIVE, in_range

MUTUAL_AXES = ("classes", "time")


@dataclass(frozen=True)
class MutualHyperparameters:
    """The mutual model's own keys; every other key of ``model.params`` is a hyperparameter of ``base``."""

    base: str = "rskp"  # the model of every branch (any model of wtal.models except mutual)
    mutual_weight: float = in_range(1.0, NON_NEGATIVE)  # 0: independent branches, fused at test
    mutual_temperature: float = in_range(2.0, POSITIVE)
    mutual_axis: str = "classes"  # classes: per snippet over classes + background | time: per class over time
    mutual_start_epoch: int = in_range(0, INDEX)  # mutual term from this epoch index on
    fusion_weights: tuple[float, ...] | None = in_range(None, NON_NEGATIVE)  # one per stream; None: equal


OWN_KEYS = tuple(f.name for f in fields(MutualHyperparameters))


def base_model_class(hp: MutualHyperparameters) -> type:
    from wtal.models.factory import model_class  # the factory imports this module

    return model_class(hp.base)


def split_params(params: Mapping[str, Any]) -> tuple[MutualHyperparameters, dict[str, Any]]:
    """``model.params`` of a mutual model -> (its own hyperparameters, the base model's), both checked."""
    from wtal.models.factory import check_hyperparameters  # the factory imports this module

    own = {k: v for k, v in params.items() if k in OWN_KEYS}
    hp = parse_hyperparameters(MutualHyperparameters, "mutual", own)
    if hp.base.strip().lower() == "mutual":
        raise WtalInputError("model.params.base of a mutual model cannot be 'mutual'",
                             fix="name a base model, e.g. base: rskp")
    axes = getattr(base_model_class(hp), "mutual_axes", MUTUAL_AXES)
    if hp.mutual_axis not in axes:
        raise WtalInputError(f"invalid config value model.params.mutual_axis = {hp.mutual_axis!r} for base "
                             f"{hp.base!r}", fix=f"use one of {', '.join(axes)}")
    base_params = {k: v for k, v in params.items() if k not in OWN_KEYS}
    check_hyperparameters(hp.base, base_params)
    return hp, base_params


def stream_context(context: ModelContext, stream: str) -> ModelContext:
    """``context`` restricted to one of its streams (a branch's context)."""
    return replace(context, streams={stream: int(context.streams[stream])})


def branch_maps(branch: nn.Module, out: Any, batch: Batch) -> list[tuple[float, torch.Tensor]]:
    """What a branch teaches the others: weighted ``(B, T, K)`` log-scores, its ``mutual_maps`` when the base
    model defines them, else its ``distill_logits`` (a detection model's snippet class logits)."""
    maps = getattr(branch, "mutual_maps", None)
    return maps(out, batch) if maps is not None else branch.distill_logits(out)


def fuse_detection_outputs(branches: list[tuple[float, nn.Module, ModelOutput]]) -> ModelOutput:
    """Detection branches ``(fusion weight, branch, output)`` -> one output: video scores and attention averaged,
    ``cas_logits`` the log of the weighted mixture of the branches' class distributions."""
    video = sum(f * o.video_scores for f, _, o in branches)
    log_mix = torch.stack([torch.log_softmax(o.cas_logits, dim=-1) + (math.log(f) if f > 0 else -math.inf)
                           for f, _, o in branches]).logsumexp(dim=0)
    attention = None
    if all(o.attention is not None for _, _, o in branches):
        attention = sum(f * o.attention for f, _, o in branches)
    return ModelOutput(video_scores=video, cas_logits=log_mix, attention=attention,
                       extras={"branches": [o for _, _, o in branches]})


class MutualLearning(StreamModel):
    """``MutualLearning(context, base=..., <mutual keys>, <base hyperparameters>)``; one branch per stream."""

    hyperparameters = MutualHyperparameters
    needs_classes = False  # each branch's build checks what its base model needs

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> None:
        """Config-time check of ``model.params`` (own keys and the base model's)."""
        split_params(params)

    def __init__(self, context: ModelContext, **params):
        super().__init__(context)
        from wtal.models.factory import build_model

        self.hp, base_params = split_params(params)
        if len(self.input_streams) < 2:
            raise WtalInputError(f"a mutual model learns across streams and needs at least two, got "
                                 f"{list(self.input_streams)}", fix="set model.streams: [rgb, flow]")
        weights = self.hp.fusion_weights or (1.0,) * len(self.input_streams)
        if len(weights) != len(self.input_streams) or sum(weights) <= 0:
            raise WtalInputError(f"{len(self.input_streams)} stream branches but fusion_weights {list(weights)}",
                                 fix="give one non-negative weight per stream (not all 0), or null for equal")
        self.fusion = [float(w) / sum(weights) for w in weights]
        self.branches = nn.ModuleDict({s: build_model(self.hp.base, stream_context(context, s), **base_params)
                                       for s in self.input_streams})
        self.fuse = getattr(type(self.lead), "fuse_branch_outputs", fuse_detection_outputs)

    @property
    def lead(self) -> nn.Module:
        """The first branch: its class's test-time methods read a fused output of a grounding base model."""
        return next(iter(self.branches.values()))

    # ----------------------------------------------------------------------------------------- forward
    def forward(self, batch: Batch) -> Any:
        """The fused output (its ``extras["branches"]``: each branch's output, each read its own stream only)."""
        return self.fuse([(f, branch, branch(batch)) for f, branch in zip(self.fusion, self.branches.values(),
                                                                           strict=True)])

    def branch_outputs(self, out: Any) -> list[tuple[str, nn.Module, Any]]:
        return list(zip(self.branches.keys(), self.branches.values(), out.extras["branches"], strict=True))

    # -------------------------------------------------------------------------------------------- losses
    def mutual_losses(self, out: Any, batch: Batch) -> list[torch.Tensor]:
        """Per branch ``(B,)``: mean over the other branches of the weighted KL from their maps to its own."""
        maps = [branch_maps(branch, o, batch) for _, branch, o in self.branch_outputs(out)]
        hp, mask = self.hp, batch.mask
        losses = []
        for i, own in enumerate(maps):
            terms = [sum(w * activation_kl(t, s, mask, hp.mutual_temperature, hp.mutual_axis)
                         for (w, s), (_, t) in zip(own, other, strict=True))
                     for j, other in enumerate(maps) if j != i]
            losses.append(sum(terms) / len(terms))
        return losses

    def losses(self, out: Any, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        result: dict[str, torch.Tensor] = {}
        total = None
        for stream, branch, o in self.branch_outputs(out):
            own = branch.losses(o, batch, epoch)
            result.update({f"{stream}/{k}": v for k, v in own.items()})
            total = own["total"] if total is None else total + own["total"]
        if self.hp.mutual_weight > 0 and epoch >= self.hp.mutual_start_epoch:
            mutual = self.mutual_losses(out, batch)
            for stream, term in zip(self.branches, mutual, strict=True):
                result[f"{stream}/mutual"] = term
            result["mutual"] = sum(mutual)
            total = total + self.hp.mutual_weight * result["mutual"]
        result["total"] = total
        return result

    def on_epoch_end(self, epoch: int, train_batches: Callable[[], Iterable[Batch]]) -> None:
        for branch in self.branches.values():
            branch.on_epoch_end(epoch, train_batches)

    # ------------------------------------------------------------------------------------------ test time
    def localization_scores(self, out: ModelOutput, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The branches' test-time maps and video scores averaged with the fusion weights."""
        cas = video = None
        for f, (_, branch, o) in zip(self.fusion, self.branch_outputs(out), strict=True):
            c, v = branch.localization_scores(o, mask)
            cas = f * c if cas is None else cas + f * c
            video = f * v if video is None else video + f * v
        return cas, video

    def distill_logits(self, out: ModelOutput) -> list[tuple[float, torch.Tensor]]:
        return [(f * w, logits) for f, (_, branch, o) in zip(self.fusion, self.branch_outputs(out), strict=True)
                for w, logits in branch.distill_logits(o)]

    # grounding base models: their test-time methods read the fused output
    def ranked_segments(self, out: Any) -> Any:
        return self.lead.ranked_segments(out)

    def proposal_distribution(self, out: Any, temperature: float = 1.0) -> torch.Tensor:
        return self.lead.proposal_distribution(out, temperature)

    def snippet_activation(self, out: Any, batch: Batch, temperature: float = 1.0) -> torch.Tensor:
        return self.lead.snippet_activation(out, batch, temperature)

    def activation_map(self, out: Any, batch: Batch) -> torch.Tensor:
        """The fused activation: the base model's own map of a fused grounding output; for detection the fused
        test-time class map (:meth:`localization_scores`)."""
        if self.fuse is fuse_detection_outputs:
            return super().activation_map(out, batch)
        return self.lead.activation_map(out, batch)
