"""ISSF (Yun et al., AAAI 2024): inferring salient snippet-features, on the RSKP cosine head.

Three branches share one cosine head (:class:`~wtal.models.heads.CosinePredictionHead`):

- **base**: the embedded snippets ``X``;
- **saliency** (boundary refinement): every snippet attends to the salient snippets and, separately, to
  the non-salient ones, each set first re-weighted over its channels by its own gating MLP
  (``S' = S + softmax_channels(MLP(S)) * S``); the two results are mixed
  ``F = (1 - lambda) softmax(X S'^T) S' + lambda softmax(X N'^T) N'``;
- **memory** (discrimination enhancement): ``softmax(F M^T) M`` over a per-class memory ``M`` of salient
  features of the video's positive classes.

Saliency inference: ``d_t = sum |x_t - x_{t-1}|`` (``x_{-1} = 0``); the ``max(floor(p T) - 1, 1)`` snippets of
largest ``d_t`` and their predecessors are salient, the other real snippets non-salient. The snippet logits
of the saliency branch (after the memory is filled: ``0.8`` saliency + ``0.2`` memory) are the pseudo labels
of the base branch (RSKP's temperature cross-entropy).

Batched over whole videos with a padding mask: the salient and non-salient sets are packed per video
(:func:`~wtal.models.masked.packed_indices`) and attention never crosses videos or reaches padding, so a
padded batch gives the per-video results of one video at a time. The memory is read by every video of a
forward pass first and then updated by the videos in batch order, as RSKP's memory bank.

The interaction units attend over all snippets of a video (``T x |S|`` and ``T x |N|`` scores, ``T^2`` in
all). :func:`attend` evaluates the query snippets in blocks whose score matrix stays under
``ATTENTION_BLOCK_ELEMENTS`` and recomputes each block in the backward pass (activation checkpointing), so
the memory of the attention grows linearly with ``T``; its time stays quadratic. docs/methods/issf.md
lists the decisions where the paper and its code are silent or quirky.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from wtal.data.batch import Batch
from wtal.models.base import ModelContext, ModelOutput, StreamModel
from wtal.models.class_memory import fill_from_training_set, merge_top_scored, read_class_memory
from wtal.models.heads import CosinePredictionHead, mixed_cas, mixed_video_scores, video_losses, xavier_linear
from wtal.models.losses import attention_contrast, softened_cross_entropy, with_background
from wtal.models.masked import gather_rows, lengths, masked_fill_zero, masked_topk_indices, packed_indices
from wtal.models.recipes import parse_hyperparameters
from wtal.ranges import BELOW_ONE, COUNT, DIVISOR, FRACTION, INDEX, NON_NEGATIVE, POSITIVE, UNIT, in_range

# Largest score matrix (batch x query snippets x keys) that :func:`attend` builds at once: 2**22 float32
# values are 16 MiB, far below the other activations of a 2048-d video of the same length.
ATTENTION_BLOCK_ELEMENTS = 2**22


@dataclass(frozen=True)
class ISSFHyperparameters:
    """Reference values (the released code's ``main`` and model); ``embed_dim=None`` means ``input_dim``."""

    embed_dim: int | None = in_range(None, COUNT)
    dropout: float = in_range(0.6, BELOW_ONE)
    scale: float = in_range(20.0, POSITIVE)
    salient_fraction: float = in_range(0.5, FRACTION)  # p: the floor(p T) - 1 largest changes are salient
    wrap_first_predecessor: bool = False  # True: snippet 0's "predecessor" is the last one (the code's index -1)
    gate_reduction: int = in_range(4, COUNT)  # gating MLP D -> D / r -> D
    nonsalient_weight: float = in_range(0.12, UNIT)  # lambda
    boundary_refinement: bool = True  # False: no saliency branch (ablation)
    discrimination_memory: bool = True  # False: no memory branch (ablation)
    memory_slots: int = in_range(9, COUNT)  # N salient features per class
    memory_init_epoch: int = in_range(1, INDEX)  # memory filled at the end of this epoch index, used after it
    published_memory_index: bool = False  # True: the released training loop's index, class 0 for every video
    momentum_epoch: int = in_range(85, INDEX)  # memory updates blend with momentum for epoch indices > this
    momentum_total_epochs: int = in_range(180, COUNT)  # T_max of m = 0.5 log(exp(t / T_max) + 1)
    back_weight: float = in_range(0.2, NON_NEGATIVE)
    att_weight: float = in_range(0.1, NON_NEGATIVE)
    att_topk_ratio: float = in_range(8.0, DIVISOR)
    spl_temperature: float = in_range(0.2, POSITIVE)
    spl_weight: float = in_range(1.0, NON_NEGATIVE)
    spl_weight_after_init: float = in_range(0.5, NON_NEGATIVE)  # for epoch indices > memory_init_epoch
    memory_branch_weight: float = in_range(0.5, NON_NEGATIVE)  # weight of the memory branch in L_fore / L_back
    memory_target_weight: float = in_range(0.2, UNIT)  # pseudo labels 0.2 memory + 0.8 saliency once filled
    test_cas_weights: tuple[float, float] = in_range((0.6, 0.4), NON_NEGATIVE)  # base / saliency softmax
    test_video_weights: tuple[float, float] = in_range((0.6, 0.4), NON_NEGATIVE)
    test_attention: bool = True  # multiply the test CAS by the base attention (reference)
    distill_weights: tuple[float, float] = in_range((0.8, 0.2), NON_NEGATIVE)  # GauFuse L_dist on base / saliency


# ------------------------------------------------------------------------------------------ saliency
def salient_snippets(x: torch.Tensor, mask: torch.Tensor, fraction: float, wrap: bool = False) -> torch.Tensor:
    """``(B, T)`` bool: the ``k_i = max(floor(fraction T_i) - 1, 1)`` real snippets of largest
    ``d_t = sum_dim |x_t - x_{t-1}|`` (``x_{-1} = 0``) and the snippet before each.

    Ties keep time order (stable sort). Snippet 0 has no predecessor; ``wrap=True`` gives it the video's last
    real snippet instead, as Python's index ``-1`` does in the released code.
    """
    previous = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
    change = (x - previous).abs().sum(dim=-1)
    real = lengths(mask)
    k = torch.clamp(torch.floor(real.double() * fraction).long() - 1, min=1)
    k = torch.minimum(k, real.clamp(min=1))
    order, top = masked_topk_indices(change, mask, k)
    picked = torch.zeros_like(mask).scatter(1, order, top)
    salient = picked.clone()
    salient[:, :-1] |= picked[:, 1:]
    if wrap:
        last = (real - 1).clamp(min=0).unsqueeze(1)
        salient.scatter_(1, last, salient.gather(1, last) | picked[:, :1])
    return salient & mask


# ----------------------------------------------------------------------------------------- attention
def attention_pool(queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """``softmax_k(q_t . k_k) k`` over the valid keys: ``(B, T, D)``, ``(B, K, D)``, ``(B, K)`` -> ``(B, T, D)``.

    The straight formula (unscaled dot products, as the reference); every row of ``key_mask`` needs a True.
    """
    logits = (queries @ keys.transpose(1, 2)).masked_fill(~key_mask.unsqueeze(1), float("-inf"))
    return torch.softmax(logits, dim=-1) @ keys


def attend(queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor,
           block_elements: int | None = None) -> torch.Tensor:
    """:func:`attention_pool` with linear memory in the number of query snippets.

    Invalid keys count as zero vectors; a video without a valid key attends uniformly to zeros and gets 0
    (an empty set contributes nothing). When ``B x T x K`` exceeds ``block_elements`` the queries run in
    blocks of rows, each recomputed in the backward pass instead of keeping its score matrix: activations
    ``O(B K)`` per block, the result equal to the straight formula. ``block_elements=None`` reads
    ``ATTENTION_BLOCK_ELEMENTS`` at call time.
    """
    if block_elements is None:
        block_elements = ATTENTION_BLOCK_ELEMENTS
    keys = masked_fill_zero(keys, key_mask)
    key_mask = key_mask | ~key_mask.any(dim=1, keepdim=True)
    batch, length, width = queries.shape[0], queries.shape[1], keys.shape[1]
    rows = max(block_elements // max(batch * width, 1), 1)
    if rows >= length:
        return attention_pool(queries, keys, key_mask)
    recompute = torch.is_grad_enabled() and (queries.requires_grad or keys.requires_grad)
    blocks = []
    for start in range(0, length, rows):
        block = queries[:, start : start + rows]
        if recompute:
            blocks.append(checkpoint(attention_pool, block, keys, key_mask, use_reentrant=False))
        else:
            blocks.append(attention_pool(block, keys, key_mask))
    return torch.cat(blocks, dim=1)


def channel_gated(features: torch.Tensor, gate: nn.Module) -> torch.Tensor:
    """``f + softmax_channels(gate(f)) * f`` (an information-interaction unit's re-weighting)."""
    return features + torch.softmax(gate(features), dim=-1) * features


def memory_momentum(epoch: int, total_epochs: int) -> float:
    """``m = 0.5 log(exp(t / T_max) + 1)``: the weight of the stored entries in a late memory update."""
    return 0.5 * math.log(math.exp(epoch / total_epochs) + 1.0)


def _gating_mlp(dim: int, reduction: int) -> nn.Sequential:
    hidden = max(dim // reduction, 1)
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False))


class ISSF(StreamModel):
    """ISSF; ``ISSF(context, **ISSFHyperparameters fields)``."""

    hyperparameters = ISSFHyperparameters

    def __init__(self, context: ModelContext, **hyperparameters):
        super().__init__(context)
        self.hp = hp = parse_hyperparameters(ISSFHyperparameters, "issf", hyperparameters)
        dim = hp.embed_dim or context.input_dim
        self.head = CosinePredictionHead(dim, context.num_classes, hp.scale)
        self.embedding = xavier_linear(context.input_dim, dim)
        self.dropout = nn.Dropout(hp.dropout)
        if hp.boundary_refinement:  # torch's default init, as the reference (created after its xavier pass)
            self.salient_gate = _gating_mlp(dim, hp.gate_reduction)
            self.nonsalient_gate = _gating_mlp(dim, hp.gate_reduction)
        self.register_buffer("memory", torch.zeros(context.num_classes, hp.memory_slots, dim))
        self.register_buffer("memory_scores", torch.zeros(context.num_classes, hp.memory_slots))

    # ----------------------------------------------------------------------------------------- forward
    def refine(self, x: torch.Tensor, mask: torch.Tensor, salient: torch.Tensor) -> torch.Tensor:
        """Boundary refinement: ``(1 - lambda)`` attention to the gated salient set + ``lambda`` to the
        gated non-salient set, for every real snippet."""
        units = []
        for members, gate in ((salient, self.salient_gate), (mask & ~salient, self.nonsalient_gate)):
            indices, valid = packed_indices(members)
            keys = channel_gated(gather_rows(x, indices, valid), gate)
            units.append(attend(x, keys, valid))
        lam = self.hp.nonsalient_weight
        return masked_fill_zero((1.0 - lam) * units[0] + lam * units[1], mask)

    def forward(self, batch: Batch) -> ModelOutput:
        hp = self.hp
        features, mask = self.joint_input(batch), batch.mask
        x = masked_fill_zero(self.dropout(torch.relu(self.embedding(features))), mask)
        base = self.head(x, mask)
        extras = {"base": base, "x": x}
        if hp.boundary_refinement or hp.discrimination_memory:
            salient = salient_snippets(x, mask, hp.salient_fraction, hp.wrap_first_predecessor)
            extras["salient"] = salient
        if hp.boundary_refinement:
            refined = self.refine(x, mask, salient)
            extras["refined"] = refined
            extras["saliency"] = self.head(refined, mask)
        video = mixed_video_scores(self.test_branches(extras, hp.test_video_weights), self.num_classes)
        return ModelOutput(video_scores=video, cas_logits=base.logits, attention=base.attention, extras=extras)

    # -------------------------------------------------------------------------------------------- memory
    def salient_candidates(self, out: ModelOutput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The salient features of every video, packed ``(B, K, D)``, their mask and class probabilities
        ``softmax(s cos(S, A))`` ``(B, K, C+1)`` (the memory's scores), all detached."""
        x = out.extras["x"].detach()
        indices, valid = packed_indices(out.extras["salient"])
        entries = gather_rows(x, indices, valid)
        with torch.no_grad():
            scores = torch.softmax(self.head.class_logits(entries), dim=-1)
        return entries, valid, scores

    @torch.no_grad()
    def update_memory(self, out: ModelOutput, labels: torch.Tensor, epoch: int, published_index: bool = False
                      ) -> None:
        """Each video in batch order merges its salient features into the memory of each of its positive
        classes (scored by that class's probability) and keeps the top ``memory_slots``. For epoch indices
        above ``momentum_epoch`` the kept entries are blended into the stored ones with momentum ``m``.
        ``published_index``: the released training loop's index instead, class 0 once per positive class (its
        merges one after another, each scored by class 0's probability)."""
        entries, valid, scores = self.salient_candidates(out)
        hp = self.hp
        momentum = (memory_momentum(epoch, hp.momentum_total_epochs) if epoch > hp.momentum_epoch else None)
        for b in range(entries.shape[0]):
            classes = torch.nonzero(labels[b] > 0.5).flatten()
            if published_index:  # class 0, once per positive class, one merge after another
                groups = [torch.zeros_like(classes[:1])] * classes.numel()
            else:
                groups = [classes] if classes.numel() else []
            for group in groups:
                stored = self.memory[group]
                top, top_scores = merge_top_scored(stored, self.memory_scores[group], entries[b][valid[b]],
                                                   scores[b][valid[b]][:, group].T)
                if momentum is not None:
                    top = momentum * stored + (1.0 - momentum) * top
                self.memory[group], self.memory_scores[group] = top, top_scores

    def on_epoch_end(self, epoch: int, train_batches: Callable[[], Iterable[Batch]]) -> None:
        """At the end of ``memory_init_epoch``: an eval-mode pass over the training set fills the memory."""
        if not self.hp.discrimination_memory or epoch != self.hp.memory_init_epoch:
            return
        fill_from_training_set(self, train_batches, lambda out, batch: self.update_memory(out, batch.labels, epoch),
                               self.memory.device)

    def memory_branch(self, out: ModelOutput, labels: torch.Tensor, mask: torch.Tensor):
        """The head's branch output on ``softmax(Q M^T) M``, ``M`` the memory of the video's positive classes
        as it is now (read before any update), ``Q`` the refined features (``X`` without boundary refinement)."""
        entries, entry_mask = read_class_memory(self.memory, labels, first_class_only=self.hp.published_memory_index)
        queries = out.extras["refined"] if self.hp.boundary_refinement else out.extras["x"]
        recalled = attend(queries, entries.to(queries.dtype), entry_mask)
        return self.head(masked_fill_zero(recalled, mask), mask)

    # -------------------------------------------------------------------------------------------- losses
    def spl_weight(self, epoch: int) -> float:
        return self.hp.spl_weight_after_init if epoch > self.hp.memory_init_epoch else self.hp.spl_weight

    def losses(self, out: ModelOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        labels, mask, hp = batch.labels, batch.mask, self.hp
        base = out.extras["base"]
        y_fore, y_back = with_background(labels, 0.0), with_background(labels, 1.0)
        fore, back = video_losses(base, y_fore, y_back)
        att = attention_contrast(base.attention, mask, hp.att_topk_ratio)
        target, target_weight = None, torch.ones_like(fore)
        if hp.boundary_refinement:
            saliency = out.extras["saliency"]
            fore_s, back_s = video_losses(saliency, y_fore, y_back)
            fore, back, target = fore + fore_s, back + back_s, saliency.logits
        if hp.discrimination_memory and epoch > hp.memory_init_epoch:
            recalled = self.memory_branch(out, labels, mask)
            has_memory = (labels > 0.5).any(dim=1).to(fore.dtype)
            fore_r, back_r = video_losses(recalled, y_fore, y_back)
            fore = fore + hp.memory_branch_weight * has_memory * fore_r
            back = back + hp.memory_branch_weight * has_memory * back_r
            if target is None:  # memory without refinement: the memory branch alone labels the base branch
                target, target_weight = recalled.logits, has_memory
            else:
                mixed = hp.memory_target_weight * recalled.logits + (1.0 - hp.memory_target_weight) * target
                target = torch.where(has_memory.bool()[:, None, None], mixed, target)
            if self.training:
                self.update_memory(out, labels, epoch, published_index=hp.published_memory_index)
        if target is None:  # the base branch alone: nothing to distil
            spl = torch.zeros_like(fore)
        else:
            spl = target_weight * softened_cross_entropy(base.logits, target, mask, hp.spl_temperature)
        total = fore + hp.back_weight * back + hp.att_weight * att + self.spl_weight(epoch) * spl
        return {"total": total, "fore": fore, "back": back, "att": att, "spl": spl}

    # ------------------------------------------------------------------------------------------ test time
    def test_branches(self, extras: dict, weights: tuple[float, float]) -> list[tuple[float, object]]:
        """``[(w_base, base), (w_saliency, saliency)]``, or the base branch alone without refinement."""
        if not self.hp.boundary_refinement:
            return [(1.0, extras["base"])]
        return [(weights[0], extras["base"]), (weights[1], extras["saliency"])]

    def localization_scores(self, out: ModelOutput, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(0.6 softmax(base) + 0.4 softmax(saliency)) * base attention`` (``test_attention=False``: without
        the attention); video scores ``0.6 p_ca(base) + 0.4 p_ca(saliency)``."""
        base = out.extras["base"]
        attention = base.attention if self.hp.test_attention else None
        cas = mixed_cas(self.test_branches(out.extras, self.hp.test_cas_weights), self.num_classes, attention, mask)
        return cas, out.video_scores

    def distill_logits(self, out: ModelOutput) -> list[tuple[float, torch.Tensor]]:
        return [(w, branch.logits) for w, branch in self.test_branches(out.extras, self.hp.distill_weights)]
