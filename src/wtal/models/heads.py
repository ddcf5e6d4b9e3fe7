"""The cosine-classifier ``PredictionModule`` of RSKP (its main_branch.py), masked over time."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from wtal.models.masked import l2_normalize, masked_sum


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
