"""Snippet-level distillation loss on pseudo labels (paper eq. 7-9, and the public GauFuse code).

For logits ``L_t`` over ``C+1`` columns (actions + background), ``p_t = softmax(L_t)`` and a target row
``d_t`` (a generation G or a Δ label; columns beyond the target's width count as 0):

* ``"cross_entropy"`` (reference, faithful): ``-Σ_c d_tc log p_tc``. For a negative ``d`` this *rewards*
  driving ``p_tc`` to 0 without limit, so the loss is unbounded below.
* ``"bounded"`` (paper preset): ``-Σ_c [d⁺_tc log p_tc + d⁻_tc log(1 - p_tc)]`` with ``d⁺ = max(d, 0)``,
  ``d⁻ = max(-d, 0)``. Every term is >= 0, so the loss is bounded below by 0.

Gradient direction (paper eq. 9): for the target class ``c`` and its own logit, cross entropy gives
``-∂/∂L_c = d (1 - p_c)``. The bounded form gives ``d⁺ (1 - p_c)`` for ``d > 0`` (identical) and
``-|d| p_c`` for ``d < 0``: the same sign as eq. 9, so a negative Δ still pushes the class down, but the
push fades as ``p_c -> 0`` instead of paying a reward for ever smaller ``p_c``.

Per video: sum over classes, mean over the video's real snippets (``mask``), summed over the model's
weighted branches (``distill_logits``). Returns ``(B,)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from wtal.models.losses import log_one_minus_softmax

LossKind = Literal["bounded", "cross_entropy"]


def snippet_distill_loss(logits: torch.Tensor, target: torch.Tensor, kind: LossKind) -> torch.Tensor:
    """Per-snippet loss ``(B, T)`` for logits ``(B, T, C+1)`` and a target ``(B, T, K)``, ``K <= C+1``."""
    k = target.shape[-1]
    if k > logits.shape[-1]:
        raise ValueError(f"target has {k} columns but the logits only {logits.shape[-1]}")
    target = target.to(logits.dtype)
    logp = torch.log_softmax(logits, dim=-1)[..., :k]
    if kind == "cross_entropy":
        return -(target * logp).sum(-1)
    if kind == "bounded":
        pos, neg = target.clamp(min=0), (-target).clamp(min=0)
        loss = -(pos * logp).sum(-1)
        if bool((neg > 0).any()):
            log1mp = log_one_minus_softmax(logits)[..., :k]
            # 0 * (-inf) would be NaN where p rounds to 1 and no negative target asks about it
            loss = loss - torch.where(neg > 0, neg * log1mp, torch.zeros_like(log1mp)).sum(-1)
        return loss
    raise ValueError(f"unknown distillation loss {kind!r}")


def distillation_loss(branches: Sequence[tuple[float, torch.Tensor]], target: torch.Tensor,
                      mask: torch.Tensor, kind: LossKind) -> torch.Tensor:
    """Weighted sum over branches of the masked per-video mean of :func:`snippet_distill_loss`: ``(B,)``."""
    mask = mask.bool()
    counts = mask.sum(dim=1).clamp(min=1)
    total = None
    for weight, logits in branches:
        per_snippet = snippet_distill_loss(logits, target, kind)
        # where(), not a product: padded snippets may hold any value, even inf
        per_snippet = torch.where(mask, per_snippet, torch.zeros_like(per_snippet))
        per_video = per_snippet.sum(dim=1) / counts.to(per_snippet.dtype)
        total = weight * per_video if total is None else total + weight * per_video
    if total is None:
        raise ValueError("the model returned no distillation logits")
    return total
