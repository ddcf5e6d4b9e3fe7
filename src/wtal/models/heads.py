"""The cosine-classifier ``PredictionModule`` of RSKP (its main_branch.py), masked over time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from wtal.models.losses import logits_normalized_cross_entropy
from wtal.models.masked import l2_normalize, masked_fill_zero, masked_sum


@dataclass
class BranchOutput:
    """One pass of the head over a feature sequence (the reference's ``(p_ca, p_cw, a, S)``)."""

    ca_logits: torch.Tensor  # (B, C+1) video logits of the attention-pooled feature; p_ca = softmax
    cw_logits: torch.Tensor  # (B, C+1) video logits of the class-wise pooled features; p_cw = softmax
    attention: torch.Tensor  # (B, T) class-agnostic attention a_t in [0, 1]
    logits: torch.Tensor  # (B, T, C+1) snippet logits S = s * cos(x_t, A_c)

    @property
    def p_ca(self) -> torch.Tensor:
        return torch.softmax(self.ca_logits, dim=-1)


def xavier_linear(in_dim: int, out_dim: int) -> nn.Linear:
    """``nn.Linear`` with xavier-uniform weights and zero bias (the RSKP family's ``weights_init_random``)."""
    layer = nn.Linear(in_dim, out_dim)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class CosinePredictionHead(nn.Module):
    """Class centres ``A`` (C+1 rows, the last is background), a foreground centre ``g`` and a scale ``s``.

    ``g`` is initialised to ``-A[C]`` and is an independent parameter afterwards.
    """

    def __init__(self, embed_dim: int, num_classes: int, scale: float):
        super().__init__()
        # randn then xavier, as the reference, so the RNG stream advances the same way
        self.class_centers = nn.Parameter(torch.randn(num_classes + 1, embed_dim))
        nn.init.xavier_uniform_(self.class_centers)
        self.fg_center = nn.Parameter(-self.class_centers.detach()[-1:].clone())
        self.scale = scale

    def class_logits(self, features: torch.Tensor) -> torch.Tensor:
        """``s * cos(f, A_c)`` for every row of ``features (..., D)`` -> ``(..., C+1)``."""
        return self.scale * l2_normalize(features) @ l2_normalize(self.class_centers).T

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> BranchOutput:
        centers = l2_normalize(self.class_centers)
        x_unit = l2_normalize(x)
        logits = self.scale * x_unit @ centers.T  # (B, T, C+1)
        attention = torch.sigmoid(self.scale * (x_unit @ l2_normalize(self.fg_center).T).squeeze(-1))
        att_weights = attention / (masked_sum(attention, mask).unsqueeze(1) + 1e-5)
        cls_att = torch.sigmoid(logits)
        cls_weights = cls_att / (masked_sum(cls_att, mask).unsqueeze(1) + 1e-5)
        mask_f = mask.to(x.dtype)
        pooled_ca = torch.einsum("btd,bt->bd", x, att_weights * mask_f)
        pooled_cw = torch.einsum("btd,btc->bcd", x, cls_weights * mask_f.unsqueeze(-1))
        ca_logits = self.scale * l2_normalize(pooled_ca) @ centers.T
        cw_logits = self.scale * (l2_normalize(pooled_cw) * centers).sum(dim=-1)
        return BranchOutput(ca_logits, cw_logits, attention, logits)


def video_losses(branch: BranchOutput, y_fore: torch.Tensor, y_back: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """A branch's ``(L_fore, L_back)`` per video: normalised CE of ``p_ca`` against ``[y, 0]`` and of ``p_cw``
    against ``[y, 1]`` (the RSKP head's two video-level losses)."""
    return (logits_normalized_cross_entropy(branch.ca_logits, y_fore),
            logits_normalized_cross_entropy(branch.cw_logits, y_back))


def mixed_video_scores(branches: Sequence[tuple[float, BranchOutput]], num_classes: int) -> torch.Tensor:
    """``sum_i w_i p_ca(branch_i)`` over the action classes, ``(B, C)`` (the RSKP / ISSF test video score)."""
    mixed = sum(weight * branch.p_ca for weight, branch in branches)
    return mixed[:, :num_classes]


def mixed_cas(branches: Sequence[tuple[float, BranchOutput]], num_classes: int, attention: torch.Tensor | None,
              mask: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i softmax(S_i)`` over the action classes, times ``attention (B, T)`` when given; padded
    snippets 0 (the RSKP / ISSF test CAS)."""
    cas = sum(weight * torch.softmax(branch.logits, dim=-1) for weight, branch in branches)
    cas = cas[..., :num_classes]
    if attention is not None:
        cas = cas * attention.unsqueeze(-1)
    return masked_fill_zero(cas, mask)
