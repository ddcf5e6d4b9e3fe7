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


#: floor of an activation before its logarithm (a [0, 1] score of exactly 0 has no finite log)
ACTIVATION_FLOOR = 1e-8


def log_activation(scores: torch.Tensor) -> torch.Tensor:
    """``log`` of activations in [0, 1], floored at :data:`ACTIVATION_FLOOR`: log-scores for :func:`activation_kl`."""
    return torch.log(scores.clamp(min=ACTIVATION_FLOOR))


def activation_kl(target: torch.Tensor, student: torch.Tensor, mask: torch.Tensor, temperature: float,
                  over: str = "classes", columns: torch.Tensor | None = None) -> torch.Tensor:
    """``tau^2 KL(p_target || p_student)`` between two activation maps ``(B, T, K)`` given as log-scores
    (logits or log-probabilities), per sample ``(B,)``. The target is detached.

    ``over="classes"``: each real snippet is a distribution over the ``K`` columns, ``softmax_k(s / tau)``;
    the per-snippet KL is averaged over the video's real snippets (``columns`` must be None).
    ``over="time"``: each column is a distribution over the video's real snippets, ``softmax_t(s / tau)``;
    the per-column KL is averaged over the columns selected by ``columns`` (``(B, K)`` bool, all when None),
    and a sample with no selected column gives 0.

    For log-probabilities ``log p`` the time form compares ``p^(1/tau)`` normalised over time: the
    distribution of where a class is active, independent of the activation's overall level. The ``tau^2``
    factor keeps gradient sizes comparable across temperatures (Hinton et al., 2015).
    """
    if over not in ("classes", "time"):
        raise ValueError(f"unknown activation axis {over!r}")
    target = target.detach() / temperature
    student = student / temperature
    real = mask.unsqueeze(-1)
    if over == "classes":
        if columns is not None:
            raise ValueError("columns select distributions over time only")
        log_p, log_q = F.log_softmax(target, dim=-1), F.log_softmax(student, dim=-1)
        per_snippet = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
        return masked_mean(per_snippet, mask) * temperature ** 2
    neg_inf = torch.tensor(float("-inf"), dtype=student.dtype, device=student.device)
    log_p = F.log_softmax(torch.where(real, target, neg_inf), dim=1)
    log_q = F.log_softmax(torch.where(real, student, neg_inf), dim=1)
    # where(), not a product: padded snippets hold -inf - (-inf) = NaN
    terms = torch.where(real, log_p.exp() * (log_p - log_q), torch.zeros((), dtype=student.dtype,
                                                                          device=student.device))
    per_column = terms.sum(dim=1)  # (B, K)
    chosen = torch.ones_like(per_column, dtype=torch.bool) if columns is None else columns.bool()
    count = chosen.sum(dim=1).clamp(min=1).to(per_column.dtype)
    return torch.where(chosen, per_column, torch.zeros_like(per_column)).sum(dim=1) / count * temperature ** 2
