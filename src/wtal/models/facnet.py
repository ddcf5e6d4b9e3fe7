"""FAC-Net (Huang et al., ICCV 2021; LeonHLJ/FAC-Net): foreground-action consistency with a cosine head.

Per stream: embedding ``Linear -> ReLU -> Dropout(0.5) -> Linear -> ReLU -> Dropout(0.5)``; class centres
``A`` (C+1 rows, xavier) and a foreground centre ``g = -A[C]``; snippet logits ``S = s cos(x_t, A_c)`` and
``s cos(x_t, g)`` with ``s = 5``. For each temperature tau in (1, 2, 5) the attentions are softmax over
time (the video's real snippets) of ``tau * S`` (class-wise) and ``tau * s cos(x, g)`` (class-agnostic):
- class-wise branch: class-pooled features scored against ``g``; target ``[y, 0]``;
- class-agnostic branch: fg-pooled feature scored against ``A``; target ``[y, 0]``;
- MIL branch: ``sum_t S_tc att_tc``; target ``[y, 1]``.
Scores are averaged over tau and multiplied by 2 (and by ``s`` for the two cosine branches).
Loss: ``1.0 NCE_cw + 0.1 NCE_ca + 0.1 NCE_mil``.

The reference trains one model per modality on 1024-d inputs. With ``per_stream=True`` (default) each input
stream (RGB, flow) gets its own independent branch with a summed loss (identical to separate training; the
reference picks each stream's epoch separately, which one model cannot). The reference fuses
the streams at the proposal level (RGB scores x0.1, then NMS 0.9); here the CAS ``softmax(S)`` and the
video scores (class-agnostic ``p_ca``) of the streams are averaged with ``test_stream_weights``. The L2
normalisation gets eps 1e-9 (the reference has none, which gives NaN on all-zero embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from wtal.data.batch import Batch
from wtal.errors import WtalInputError
from wtal.models.base import ModelContext, ModelOutput, StreamModel, branch_features, branch_inputs
from wtal.models.losses import normalized_cross_entropy, with_background
from wtal.models.masked import l2_normalize, masked_fill_zero, masked_softmax
from wtal.models.recipes import parse_hyperparameters
from wtal.ranges import BELOW_ONE, COUNT, NON_NEGATIVE, POSITIVE, in_range


@dataclass(frozen=True)
class FACNetHyperparameters:
    per_stream: bool = True  # one branch per input stream (the reference trains one model per modality)
    embed_dim: int | None = in_range(None, COUNT)  # None -> the stream's input width (1024 per stream on I3D)
    dropout: float = in_range(0.5, BELOW_ONE)
    scale: float = in_range(5.0, POSITIVE)
    temperatures: tuple[float, ...] = in_range((1.0, 2.0, 5.0), POSITIVE)
    cw_weight: float = in_range(1.0, NON_NEGATIVE)
    ca_weight: float = in_range(0.1, NON_NEGATIVE)
    mil_weight: float = in_range(0.1, NON_NEGATIVE)
    test_stream_weights: tuple[float, ...] = in_range((0.5, 0.5), NON_NEGATIVE)  # one per stream branch (RGB, flow)
    # epsilon of the L2 normalisations; 0 reproduces the reference, whose all-zero embedding rows (dead ReLUs
    # under dropout) give 0/0 = NaN: on 128-d streams its training loss became NaN at epoch 20 of 40
    l2_eps: float = in_range(1e-9, NON_NEGATIVE)


class FACNetStream(nn.Module):
    """One modality: embedding, centres and the three branches. Returns video logits and snippet logits."""

    def __init__(self, input_dim: int, num_classes: int, embed_dim: int, dropout: float, scale: float,
                 temperatures: tuple[float, ...], l2_eps: float = 1e-9):
        super().__init__()
        self.embedding = nn.Sequential(nn.Linear(input_dim, input_dim), nn.ReLU(), nn.Dropout(dropout),
                                       nn.Linear(input_dim, embed_dim), nn.ReLU(), nn.Dropout(dropout))
        self.class_centers = nn.Parameter(torch.zeros(num_classes + 1, embed_dim))
        nn.init.xavier_uniform_(self.class_centers)
        self.fg_center = nn.Parameter(-self.class_centers.detach()[-1:].clone())
        for layer in self.embedding:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.scale = scale
        self.temperatures = temperatures
        self.l2_eps = l2_eps

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        emb = masked_fill_zero(self.embedding(x), mask)
        eps = self.l2_eps
        emb_unit = l2_normalize(emb, eps)
        centers, fg = l2_normalize(self.class_centers, eps), l2_normalize(self.fg_center, eps)
        logits = self.scale * emb_unit @ centers.T  # (B, T, C+1)
        fg_logits = self.scale * (emb_unit @ fg.T).squeeze(-1)  # (B, T)
        cw, ca, mil = [], [], []
        for tau in self.temperatures:
            cls_att = masked_softmax(tau * logits, mask)  # (B, T, C+1)
            fg_att = masked_softmax(tau * fg_logits, mask)  # (B, T)
            cw_feat = l2_normalize(torch.einsum("btd,btc->bcd", emb, cls_att), eps)
            ca_feat = l2_normalize(torch.einsum("btd,bt->bd", emb, fg_att), eps)
            cw.append((cw_feat @ fg.T).squeeze(-1))
            ca.append(ca_feat @ centers.T)
            mil.append((logits * cls_att).sum(dim=1))
        two_s = 2.0 * self.scale
        return {"cw_logits": two_s * torch.stack(cw).mean(0), "ca_logits": two_s * torch.stack(ca).mean(0),
                "mil_logits": 2.0 * torch.stack(mil).mean(0), "logits": logits}


class FACNet(StreamModel):
    """``FACNet(context, **FACNetHyperparameters fields)``."""

    hyperparameters = FACNetHyperparameters

    def __init__(self, context: ModelContext, **hyperparameters):
        super().__init__(context)
        num_classes = context.num_classes
        hp = parse_hyperparameters(FACNetHyperparameters, "facnet", hyperparameters)
        self.hp = hp
        self.branch_inputs = branch_inputs(self.stream_widths, hp.per_stream)
        if len(self.branch_inputs) > 1 and len(hp.test_stream_weights) != len(self.branch_inputs):
            raise WtalInputError(f"facnet has {len(self.branch_inputs)} stream branches but "
                                 f"{len(hp.test_stream_weights)} test_stream_weights",
                                 fix="give one test weight per stream of model.streams")
        self.streams = nn.ModuleList(
            FACNetStream(width, num_classes, hp.embed_dim or width, hp.dropout, hp.scale, hp.temperatures,
                         hp.l2_eps)
            for _, width in self.branch_inputs)

    @property
    def stream_weights(self) -> list[float]:
        return list(self.hp.test_stream_weights) if len(self.branch_inputs) > 1 else [1.0]

    def forward(self, batch: Batch) -> ModelOutput:
        mask = batch.mask
        outs = [branch(branch_features(batch, names), mask)
                for branch, (names, _) in zip(self.streams, self.branch_inputs, strict=True)]
        weights = self.stream_weights
        video = sum(w * torch.softmax(o["ca_logits"], dim=-1) for w, o in zip(weights, outs, strict=True))
        cas = sum(w * torch.softmax(o["logits"], dim=-1) for w, o in zip(weights, outs, strict=True))
        # log of the fused CAS: logits whose softmax is the fused CAS (one stream: log_softmax of S)
        cas_logits = torch.log(cas.clamp(min=1e-30))
        return ModelOutput(video_scores=video[:, : self.num_classes], cas_logits=cas_logits, attention=None,
                           extras={"streams": outs})

    def losses(self, out: ModelOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        labels = batch.labels
        hp = self.hp
        y_fore, y_back = with_background(labels, 0.0), with_background(labels, 1.0)

        def nce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return normalized_cross_entropy(torch.log_softmax(logits, dim=-1), target)

        streams = out.extras["streams"]
        cw = sum(nce(o["cw_logits"], y_fore) for o in streams)
        ca = sum(nce(o["ca_logits"], y_fore) for o in streams)
        mil = sum(nce(o["mil_logits"], y_back) for o in streams)
        total = hp.cw_weight * cw + hp.ca_weight * ca + hp.mil_weight * mil
        return {"total": total, "cw": cw, "ca": ca, "mil": mil}

    def localization_scores(self, out: ModelOutput, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stream-weighted ``softmax(S)`` (action columns); video scores: stream-weighted ``p_ca``."""
        cas = torch.softmax(out.cas_logits, dim=-1)[..., : self.num_classes]
        return masked_fill_zero(cas, mask), out.video_scores

    def distill_logits(self, out: ModelOutput) -> list[tuple[float, torch.Tensor]]:
        return [(w, o["logits"]) for w, o in zip(self.stream_weights, out.extras["streams"], strict=True)]
