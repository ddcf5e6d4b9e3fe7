"""Per-video loss terms shared by the base models; every function returns a ``(B,)`` tensor.

Per-video (never batch-averaged) values let the engine sum over the batch, which equals the
reference's gradient accumulation over videos.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wtal.models.masked import masked_mean, masked_topk_mean, topk_count


def with_background(labels: torch.Tensor, background: float) -> torch.Tensor:
    """``(B, C)`` multi-hot -> ``(B, C+1)`` with the background column set to ``background`` (0 or 1)."""
    column = torch.full_like(labels[:, :1], float(background))
    return torch.cat([labels, column], dim=1)


def normalized_cross_entropy(log_probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-sum_c (y_c / (sum y + 1e-8)) log p_c`` (RSKP/FAC-Net ``NormalizedCrossEntropy``), from log-probs."""
    weights = target / (target.sum(dim=1, keepdim=True) + 1e-8)
    return -(weights * log_probs).sum(dim=1)


def logits_normalized_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """:func:`normalized_cross_entropy` of ``softmax(logits)`` over the last axis."""
    return normalized_cross_entropy(torch.log_softmax(logits, dim=-1), target)


def binary_cross_entropy(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``torch.nn.BCELoss`` per video: mean over columns, logs clamped at -100 as torch does."""
    log_p = torch.log(probs).clamp(min=-100.0)
    log_q = torch.log1p(-probs).clamp(min=-100.0)
    return -(target * log_p + (1.0 - target) * log_q).mean(dim=1)


def log_one_minus_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``log(1 - softmax(logits))`` along the last axis, exact even where one ``p`` rounds to 1."""
    n = logits.shape[-1]
    others = logits.unsqueeze(-2).expand(*logits.shape, n)  # [..., c, k] = L_k
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    others = others.masked_fill(eye, float("-inf"))
    return torch.logsumexp(others, dim=-1) - torch.logsumexp(logits, dim=-1, keepdim=True)


def softmax_binary_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """:func:`binary_cross_entropy` of ``softmax(logits)`` per video, computed from the logits.

    The same value wherever the softmax does not round to 0 or 1; there ``log(softmax)`` is ``-inf`` and
    its gradient ``0 / 0 = NaN`` even under the -100 clamp (a logit gap above ~104 in float32), which
    made WUM's training loss non-finite. ``log p = log_softmax`` and ``log(1 - p)`` stay finite.
    """
    log_p = torch.log_softmax(logits, dim=-1).clamp(min=-100.0)
    log_q = log_one_minus_softmax(logits).clamp(min=-100.0)
    return -(target * log_p + (1.0 - target) * log_q).mean(dim=-1)


def softened_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor, mask: torch.Tensor,
                           temperature: float) -> torch.Tensor:
    """RSKP ``CategoryCrossEntropy``: mean over real snippets of ``-sum softmax(tgt/T) log_softmax(pred/T)``.

    The target is detached, as in the reference.
    """
    soft_target = F.softmax(target_logits.detach() / temperature, dim=-1)
    per_snippet = -(soft_target * F.log_softmax(logits / temperature, dim=-1)).sum(dim=-1)
    return masked_mean(per_snippet, mask)


def attention_contrast(attention: torch.Tensor, mask: torch.Tensor, ratio: float = 8.0) -> torch.Tensor:
    """RSKP ``AttLoss``: mean of the bottom-k minus mean of the top-k attention, ``k = max(T_i // ratio, 1)``."""
    k = topk_count(mask, ratio)
    return (masked_topk_mean(attention, mask, k, largest=False)
            - masked_topk_mean(attention, mask, k, largest=True))
