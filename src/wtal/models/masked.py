"""Masked temporal operations for whole-video batches padded to the longest video.

Every function takes a ``(B, T)`` bool ``mask`` (True on real snippets) and reduces over the time axis
(dim 1) so that padded snippets never influence a real one: a padded batch then gives exactly the
per-video results of one video at a time. Extra trailing dims (classes, features) broadcast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` mask broadcast to ``like``'s rank (trailing singleton dims)."""
    return mask.reshape(mask.shape + (1,) * (like.dim() - mask.dim()))


def lengths(mask: torch.Tensor) -> torch.Tensor:
    """True length ``T_i`` of every video, ``(B,)`` int64."""
    return mask.sum(dim=1)


def topk_count(mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """``k_i = max(floor(T_i / ratio), 1)`` per video, ``(B,)`` int64 (the reference's ``T // 8`` etc.)."""
    return torch.clamp(torch.floor(lengths(mask).double() / ratio).long(), min=1)


def masked_fill_zero(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with padded snippets set to 0 (a ``where``, so no NaN leaks from padded values)."""
    return torch.where(_expand(mask, x), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over time of the real snippets: ``(B, T, ...) -> (B, ...)``."""
    return masked_fill_zero(x, mask).sum(dim=1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over time of the real snippets: ``(B, T, ...) -> (B, ...)``."""
    count = lengths(mask).to(x.dtype).clamp(min=1)
    return masked_sum(x, mask) / count.reshape((-1,) + (1,) * (x.dim() - 2))


def masked_softmax(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over time restricted to the real snippets; padded snippets get 0."""
    filled = x.masked_fill(~_expand(mask, x), float("-inf"))
    return masked_fill_zero(F.softmax(filled, dim=1), mask)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over time of the real snippets: ``(B, T, ...) -> (B, ...)``."""
    return x.masked_fill(~_expand(mask, x), float("-inf")).amax(dim=1)


def masked_min(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Min over time of the real snippets: ``(B, T, ...) -> (B, ...)``."""
    return x.masked_fill(~_expand(mask, x), float("inf")).amin(dim=1)


def masked_topk_indices(x: torch.Tensor, mask: torch.Tensor, k: torch.Tensor, largest: bool = True
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Time indices sorted by ``x`` ``(B, T)`` (padded last) and a ``(B, T)`` mask of the first ``k_i`` ranks.

    The sort is stable, so ties keep time order in a batch and alone.
    """
    fill = float("-inf") if largest else float("inf")
    order = torch.sort(x.masked_fill(~mask, fill), dim=1, descending=largest, stable=True).indices
    ranks = torch.arange(x.shape[1], device=x.device)
    return order, ranks.unsqueeze(0) < k.unsqueeze(1)


def masked_topk_mean(x: torch.Tensor, mask: torch.Tensor, k: torch.Tensor, largest: bool = True
                     ) -> torch.Tensor:
    """Mean of the ``k_i`` largest (or smallest) real values of every column over time.

    ``x`` is ``(B, T)`` or ``(B, T, C)``; ``k`` is ``(B,)`` with ``1 <= k_i <= T_i``. Returns ``(B,)`` or ``(B, C)``.
    """
    fill = float("-inf") if largest else float("inf")
    values = torch.sort(x.masked_fill(~_expand(mask, x), fill), dim=1, descending=largest).values
    ranks = torch.arange(x.shape[1], device=x.device).unsqueeze(0) < k.unsqueeze(1)  # (B, T)
    kept = torch.where(_expand(ranks, values), values, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum(dim=1) / k.to(x.dtype).reshape((-1,) + (1,) * (x.dim() - 2))


def masked_minmax_normalize(x: torch.Tensor, mask: torch.Tensor, relu_bounds: bool = True) -> torch.Tensor:
    """BaS-Net/WUM ``minmax_norm`` over time, per column, clipped to [0, 1]; padded snippets get 0.

    ``max`` and ``min`` over the real snippets are passed through ReLU (as the reference does) and a
    non-positive range becomes 1.
    """
    hi, lo = masked_max(x, mask), masked_min(x, mask)
    if relu_bounds:
        hi, lo = hi.clamp(min=0), lo.clamp(min=0)
    delta = hi - lo
    delta = torch.where(delta > 0, delta, torch.ones_like(delta))
    out = ((x - lo.unsqueeze(1)) / delta.unsqueeze(1)).clamp(0.0, 1.0)
    return masked_fill_zero(out, mask)


def l2_normalize(x: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """``x / (||x||_2 + eps)`` over the last dim (the RSKP helper misnamed ``calculate_l1_norm``)."""
    return x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) + eps)


def masked_conv1d(conv: torch.nn.Conv1d, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Apply ``conv`` to ``(B, T, D)`` features, zeroing padded snippets first.

    With kernel 3 and zero padding 1, zeroing the padded snippets makes a padded video see exactly the
    zero border it sees alone, at every layer.
    """
    return conv(masked_fill_zero(x, mask).transpose(1, 2)).transpose(1, 2)


def packed_indices(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions of the True entries of every row of ``selected (B, N)``, in ascending order, packed left.

    Returns ``indices (B, W)`` and ``valid (B, W)`` with ``W = max(max_b count_b, 1)``; a row's slots past
    its count hold index 0 (or another unselected position) and are False in ``valid``. The stable sort
    keeps the ascending order that ``np.where`` / ``torch.nonzero`` give one row at a time.
    """
    counts = selected.sum(dim=1)
    width = max(int(counts.max().item()) if selected.numel() else 0, 1)
    order = torch.sort((~selected).to(torch.int8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=selected.device).unsqueeze(0) < counts.unsqueeze(1)
    return order, valid


def gather_rows(x: torch.Tensor, indices: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``x[b, indices[b, k]]`` for ``x (B, N, D)`` and ``indices (B, W)`` -> ``(B, W, D)``, 0 where not ``valid``."""
    rows = torch.gather(x, 1, indices.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return masked_fill_zero(rows, valid)
