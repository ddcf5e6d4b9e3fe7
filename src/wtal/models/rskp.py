"""RSKP (Huang et al., CVPR 2022): EM bases, knowledge propagation, inter-video memory (LeonHLJ/RSKP).

Batched over whole videos with a padding mask. Padded snippets get zero responsibility in the EM and in
the propagation (their columns of ``Z``/``Zh`` are zero), so ``I - w^2 Z^T Zh`` is block diagonal and a real
snippet's propagated feature equals the one-video result. The closed-form propagation uses the Woodbury
identity: a ``K x K`` solve instead of the dense ``T x T`` inverse.

Memory bank: a max-score bank of ``memory_slots`` bases per class, with the corrected class index
(the video's positive classes). Within a batch all videos read the memory first, then the videos update it
in batch order (the reference reads and updates one video at a time). The update runs in ``losses`` when
the model is in train mode, after warm-up. A video without positive labels skips the memory branch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from wtal.data.batch import Batch
from wtal.models.base import ModelContext, ModelOutput, StreamModel
from wtal.models.class_memory import fill_from_training_set, merge_top_scored, read_class_memory
from wtal.models.heads import (
    BranchOutput,
    CosinePredictionHead,
    mixed_cas,
    mixed_video_scores,
    video_losses,
    xavier_linear,
)
from wtal.models.losses import attention_contrast, softened_cross_entropy, with_background
from wtal.models.masked import l2_normalize, masked_fill_zero
from wtal.models.recipes import parse_hyperparameters
from wtal.ranges import BELOW_ONE, COUNT, DIVISOR, INDEX, NON_NEGATIVE, POSITIVE, UNIT, in_range


@dataclass(frozen=True)
class RSKPHyperparameters:
    """Reference values (RS ``options.py``); ``embed_dim=None`` means ``input_dim`` (2048 on I3D)."""

    embed_dim: int | None = in_range(None, COUNT)
    dropout: float = in_range(0.6, BELOW_ONE)
    scale: float = in_range(20.0, POSITIVE)
    num_bases: int = in_range(8, COUNT)
    em_iterations: int = in_range(2, INDEX)
    em_sharpness: float = in_range(5.0, POSITIVE)  # softmax over bases of 5 * cos
    propagation_weight: float = in_range(0.5, BELOW_ONE)  # w; (I - w^2 Z^T Zh) is singular at w = 1
    memory_slots: int = in_range(5, COUNT)
    warmup_epoch: int = in_range(100, INDEX)  # memory used for epoch indices > this; initialised at its end
    back_weight: float = in_range(0.2, NON_NEGATIVE)
    att_weight: float = in_range(0.1, NON_NEGATIVE)
    att_topk_ratio: float = in_range(8.0, DIVISOR)
    spl_temperature: float = in_range(0.2, POSITIVE)
    spl_weight: float = in_range(1.0, NON_NEGATIVE)
    spl_weight_after_warmup: float = in_range(0.5, NON_NEGATIVE)
    spl_restore_epoch: int | None = in_range(None, INDEX)  # GauFuse: spl weight back to spl_weight for epochs > 200
    memory_branch_weight: float = in_range(0.5, NON_NEGATIVE)  # weight of the r branch in L_fore / L_back
    memory_target_weight: float = in_range(0.2, UNIT)  # spl target 0.2 r.S + 0.8 m.S after warm-up
    # o/m softmax mixing at test (GauFuse: 0.85/0.15)
    test_cas_weights: tuple[float, float] = in_range((0.6, 0.4), NON_NEGATIVE)
    test_video_weights: tuple[float, float] = in_range((0.6, 0.4), NON_NEGATIVE)
    test_attention: bool = True  # multiply the test CAS by o.a (reference); False: the class softmax alone
    distill_weights: tuple[float, float] = in_range((0.8, 0.2), NON_NEGATIVE)  # GauFuse L_dist on o.S / m.S


def responsibilities(x: torch.Tensor, mask: torch.Tensor, bases: torch.Tensor, sharpness: float,
                     base_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``Z = softmax_k(sharpness * cos(base_k, x_t))`` (columns sum to 1) and ``Zh`` (rows sum to 1).

    ``x (B, T, D)``, ``bases (B, K, D)``; padded snippets and padded bases (``base_mask (B, K)``) get 0.
    """
    logits = sharpness * l2_normalize(bases) @ l2_normalize(x).transpose(1, 2)  # (B, K, T)
    if base_mask is not None:
        logits = logits.masked_fill(~base_mask.unsqueeze(-1), float("-inf"))
    z = torch.softmax(logits, dim=1)
    z = torch.where(mask.unsqueeze(1), z, torch.zeros((), dtype=z.dtype, device=z.device))
    z_hat = z / (z.sum(dim=-1, keepdim=True) + 1e-9)
    return z, z_hat


def propagate(x: torch.Tensor, mask: torch.Tensor, bases: torch.Tensor, w: float, sharpness: float,
              base_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Closed-form knowledge propagation ``(1-w) (I - w^2 Z^T Zh)^{-1} (X + w Z^T bases)`` via Woodbury.

    ``(I - w^2 U V)^{-1} b = b + w^2 U (I_K - w^2 V U)^{-1} V b`` with ``U = Z^T``, ``V = Zh``.
    """
    z, z_hat = responsibilities(x, mask, bases, sharpness, base_mask)
    zt = z.transpose(1, 2)  # (B, T, K)
    rhs = x + w * zt @ bases  # (B, T, D)
    eye = torch.eye(bases.shape[1], dtype=x.dtype, device=x.device)
    small = eye - (w * w) * z_hat @ zt  # (B, K, K)
    u = torch.linalg.solve(small, z_hat @ rhs)
    return (1.0 - w) * (rhs + (w * w) * zt @ u)


def propagate_dense(x: torch.Tensor, bases: torch.Tensor, w: float, sharpness: float) -> torch.Tensor:
    """The reference's dense ``T x T`` form for one unpadded batch (tests and benchmarks only)."""
    mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    z, z_hat = responsibilities(x, mask, bases, sharpness)
    affinity = z.transpose(1, 2) @ z_hat  # (B, T, T), row-stochastic
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    rhs = x + w * z.transpose(1, 2) @ bases
    return (1.0 - w) * torch.linalg.solve(eye - (w * w) * affinity, rhs)


class RSKP(StreamModel):
    """RSKP backbone; ``RSKP(context, **RSKPHyperparameters fields)``."""

    hyperparameters = RSKPHyperparameters

    def __init__(self, context: ModelContext, **hyperparameters):
        super().__init__(context)
        input_dim, num_classes = context.input_dim, context.num_classes
        hp = parse_hyperparameters(RSKPHyperparameters, "rskp", hyperparameters)
        self.hp = hp
        dim = hp.embed_dim or input_dim
        # creation order as the reference (mu, centres, embedding), then xavier weights and zero biases
        self.bases = nn.Parameter(torch.randn(hp.num_bases, dim))
        nn.init.xavier_uniform_(self.bases)
        self.head = CosinePredictionHead(dim, num_classes, hp.scale)
        self.embedding = xavier_linear(input_dim, dim)
        self.dropout = nn.Dropout(hp.dropout)
        self.register_buffer("memory", torch.zeros(num_classes, hp.memory_slots, dim))
        self.register_buffer("memory_scores", torch.zeros(num_classes, hp.memory_slots))
        self._queued: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    # ----------------------------------------------------------------------------------------- forward
    def expectation_maximization(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Video-specific bases ``mu (B, K, D)``: ``em_iterations`` of ``mu <- Zh X`` from the learnt bases."""
        mu = self.bases.unsqueeze(0).expand(x.shape[0], -1, -1)
        for _ in range(self.hp.em_iterations):
            _, z_hat = responsibilities(x, mask, mu, self.hp.em_sharpness)
            mu = z_hat @ x
        return mu

    def forward(self, batch: Batch) -> ModelOutput:
        features, mask = self.joint_input(batch), batch.mask
        x = masked_fill_zero(self.dropout(torch.relu(self.embedding(features))), mask)
        mu = self.expectation_maximization(x, mask)
        x_prop = propagate(x, mask, mu, self.hp.propagation_weight, self.hp.em_sharpness)
        o, m = self.head(x, mask), self.head(x_prop, mask)
        mu_pred = torch.softmax(self.head.class_logits(mu), dim=-1)  # (B, K, C+1)
        wo, wm = self.hp.test_video_weights
        video = mixed_video_scores([(wo, o), (wm, m)], self.num_classes)
        return ModelOutput(video_scores=video, cas_logits=o.logits, attention=o.attention,
                           extras={"o": o, "m": m, "x": x, "mu": mu, "mu_pred": mu_pred})

    # -------------------------------------------------------------------------------------------- memory
    def read_memory(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored bases of each video's positive classes, padded: ``(B, slots * max|cls|, D)`` and a mask."""
        return read_class_memory(self.memory, labels)

    @torch.no_grad()
    def update_memory(self, mu: torch.Tensor, mu_pred: torch.Tensor, labels: torch.Tensor) -> None:
        """Max-score bank update, videos in batch order: keep the top ``slots`` of stored + new by score.

        ``mu (B, K, D)``, ``mu_pred (B, K, C+1)``; class c scores the new bases by ``mu_pred[:, :, c]``.
        Stored scores are never refreshed. The sort is stable, so on ties stored entries stay first.
        """
        for b in range(mu.shape[0]):
            classes = torch.nonzero(labels[b] > 0.5).flatten()
            if classes.numel() == 0:
                continue
            self.memory[classes], self.memory_scores[classes] = merge_top_scored(
                self.memory[classes], self.memory_scores[classes], mu[b], mu_pred[b][:, classes].T)

    def defer_state_updates(self) -> None:
        self._queued = []

    def sync_state(self, dist) -> None:
        """Every process applies all processes' queued memory updates, rank by rank, each in its own order:
        the memories stay identical, and each video of a step reads the memory of the step's start."""
        if self._queued is None:
            return
        mine = [tuple(t.cpu() for t in update) for update in self._queued]
        self._queued = []
        for updates in dist.all_gather_object(mine):
            for mu, mu_pred, labels in updates:
                self.update_memory(mu.to(self.memory.device), mu_pred.to(self.memory.device),
                                   labels.to(self.memory.device))

    def reset_memory(self) -> None:
        self.memory.zero_()
        self.memory_scores.zero_()

    def on_epoch_end(self, epoch: int, train_batches: Callable[[], Iterable[Batch]]) -> None:
        """At the end of ``warmup_epoch``: eval-mode pass over the unshuffled training set fills the memory."""
        if epoch != self.hp.warmup_epoch:
            return
        fill_from_training_set(self, train_batches, lambda out, batch: self.update_memory(
            out.extras["mu"], out.extras["mu_pred"], batch.labels), self.memory.device)

    # -------------------------------------------------------------------------------------------- losses
    def spl_weight(self, epoch: int) -> float:
        hp = self.hp
        if hp.spl_restore_epoch is not None and epoch > hp.spl_restore_epoch:
            return hp.spl_weight
        return hp.spl_weight_after_warmup if epoch > hp.warmup_epoch else hp.spl_weight

    def memory_branch(self, out: ModelOutput, labels: torch.Tensor, mask: torch.Tensor) -> BranchOutput:
        """``r = PM(RW(X, memory[cls], w))`` with the memory as it is now (read before any update)."""
        bases, base_mask = self.read_memory(labels)
        # a video without positive classes reads all-masked bases; give it the padding ones so that its
        # (unused, zero-weighted) branch stays finite
        base_mask = base_mask | ~(labels > 0.5).any(dim=1, keepdim=True)
        x = out.extras["x"]
        x_mem = propagate(x, mask, bases.to(x.dtype), self.hp.propagation_weight, self.hp.em_sharpness,
                          base_mask)
        return self.head(x_mem, mask)

    def losses(self, out: ModelOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        labels, mask = batch.labels, batch.mask
        hp = self.hp
        o: BranchOutput = out.extras["o"]
        m: BranchOutput = out.extras["m"]
        y_fore, y_back = with_background(labels, 0.0), with_background(labels, 1.0)
        fore_o, back_o = video_losses(o, y_fore, y_back)
        fore_m, back_m = video_losses(m, y_fore, y_back)
        fore, back = fore_o + fore_m, back_o + back_m
        att = attention_contrast(o.attention, mask, hp.att_topk_ratio)
        target = m.logits
        if epoch > hp.warmup_epoch:
            r = self.memory_branch(out, labels, mask)
            has_memory = (labels > 0.5).any(dim=1).to(fore.dtype)
            fore_r, back_r = video_losses(r, y_fore, y_back)
            fore = fore + hp.memory_branch_weight * has_memory * fore_r
            back = back + hp.memory_branch_weight * has_memory * back_r
            mixed = hp.memory_target_weight * r.logits + (1.0 - hp.memory_target_weight) * m.logits
            target = torch.where(has_memory.bool()[:, None, None], mixed, m.logits)
            if self.training:
                update = (out.extras["mu"].detach(), out.extras["mu_pred"].detach(), labels)
                if self._queued is not None:
                    self._queued.append(update)
                else:
                    self.update_memory(*update)
        spl = softened_cross_entropy(o.logits, target, mask, hp.spl_temperature)
        total = fore + hp.back_weight * back + hp.att_weight * att + self.spl_weight(epoch) * spl
        return {"total": total, "fore": fore, "back": back, "att": att, "spl": spl}

    # ------------------------------------------------------------------------------------------ test time
    def localization_scores(self, out: ModelOutput, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(wo softmax(o.S) + wm softmax(m.S)) * o.a`` (RS 0.6/0.4, GauFuse 0.85/0.15); video ``out.video_scores``.

        ``test_attention=False`` drops the ``* o.a`` factor. Nothing in the losses fixes the attention's
        absolute level (``p_ca`` pools with normalised attention; the top-k/bottom-k contrast saturates in the
        sigmoid), so the product's scale varies from run to run (mean attention on action snippets 0.007 to
        0.07 over three seeds of the same short run) and an absolute threshold grid cuts it very differently;
        see docs/design.md and, for the measurements, docs/results.md.
        """
        o: BranchOutput = out.extras["o"]
        m: BranchOutput = out.extras["m"]
        wo, wm = self.hp.test_cas_weights
        attention = o.attention if self.hp.test_attention else None
        return mixed_cas([(wo, o), (wm, m)], self.num_classes, attention, mask), out.video_scores

    def distill_logits(self, out: ModelOutput) -> list[tuple[float, torch.Tensor]]:
        wo, wm = self.hp.distill_weights
        return [(wo, out.extras["o"].logits), (wm, out.extras["m"].logits)]
