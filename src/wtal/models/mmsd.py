"""MMSD: multi-modality self-distillation (Huang, Wang, Li; IEEE TIP 2021).

Three streams, each with the RSKP-family cosine head (:class:`~wtal.models.heads.CosinePredictionHead`):

* RGB stream: ``h_rgb = Dropout(ReLU(Linear(rgb)))`` (the stream's own width), then the embedding
  ``x_rgb = Dropout(ReLU(Linear(h_rgb)))``;
* flow stream: the same on the flow features;
* fused stream: ``x_fused = Dropout(ReLU(Linear([h_rgb, h_flow])))`` on the two *first-layer* embeddings.

Losses, per video (the engine sums over the batch), for each stream ``s``:

* classification ``caa_weight * NCE(p_ca^s, [y, 0]) + csa_weight * NCE(p_cw^s, [y, 1])`` (the class-agnostic
  attention video loss and the class-wise MIL loss);
* snippet-score contrast on ``P = sigmoid(S^s)`` (:func:`snippet_score_contrast`);
* multi-modality knowledge distillation, temperature-softened cross entropy of the snippet logits:
  ``CE_T(S^rgb <- S^flow) + CE_T(S^flow <- S^rgb) + CE_T(S^fused <- (S^rgb + S^flow) / 2)``. The target
  side of each term is detached, so each term moves only the stream it is written for: RGB learns from flow
  and flow from RGB (mutual, each with the other frozen as teacher), and the fused stream learns from the
  single-modality average, which itself receives nothing back through this term. The fused stream's own
  losses (all four terms) do reach the single-modality *first* layers, since its input is their output;
* multi-modality self-voting (:func:`reliable_labels`): once labels exist, each stream's class-agnostic
  attention is pulled (mean squared error) to the reliable labels on the snippets the streams vote reliable.

``total = cls_weight * cls + att_weight * att + distill_weight * pkd + voting_weight * pdl``.

Pseudo labels (:meth:`MMSD.on_epoch_end`): after ``label_epochs`` epochs (the reference: 40, 80, ..., 240 of
240) an eval-mode pass over the training set gives, per stream, ``l_t = 1[a_t > label_threshold]`` and the
confidence ``kappa_t = |sum_{c in y} p_tc - p_t,bg|`` (``p = softmax(S)``); a snippet's stored label and
confidence change only where the new confidence is strictly higher. The labels live in
:class:`~wtal.models.snippet_store.SnippetLabelStore`, keyed by training-set position, inside the model's
buffers, so checkpoints (and ``--resume``) carry them.

Test (:meth:`MMSD.localization_scores`): ``(0.2 softmax S^rgb + 0.4 softmax S^flow + 0.4 softmax S^fused) *
(0.2 a^rgb + 0.4 a^flow + 0.4 a^fused)``, video scores ``0.2 / 0.4 / 0.4`` of ``p_ca``
(``test_stream_weights``, normalised to sum 1; ``[1, 0, 0]`` scores the RGB stream alone). ``configs/mmsd.yaml``
sets ``test_attention: false`` (the softmax mixture alone, cut at thresholds relative to its range): nothing in
MMSD's losses fixes the attention's absolute level, which falls to a few hundredths on the synthetic data.

Where the public code is broken or silent (details and reasons in docs/methods/mmsd.md):
``SingleStream.forward`` returns four values and ``WSTAL.forward`` unpacks five (the fifth, the normalised
embedding, is used nowhere), and the training script imports an ``AttLoss`` that does not exist (it uses
``FrmScrLoss`` only), so neither is needed here. The L2 normalisation and the attention normalisation get the
shared head's eps (the reference has none and gives NaN on an all-zero embedding). The voting label is the
plain mean of the selected stored labels (the reference divides by ``count + 1e-4``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from wtal.data.batch import Batch
from wtal.errors import WtalInputError
from wtal.models.base import ModelContext, ModelOutput, StreamModel
from wtal.models.heads import BranchOutput, CosinePredictionHead
from wtal.models.losses import (
    attention_contrast,
    normalized_cross_entropy,
    softened_cross_entropy,
    with_background,
)
from wtal.models.masked import masked_fill_zero, masked_mean, masked_minmax_normalize
from wtal.models.recipes import parse_hyperparameters
from wtal.models.snippet_store import SnippetLabelStore
from wtal.ranges import BELOW_ONE, COUNT, DIVISOR, INDEX, NON_NEGATIVE, POSITIVE, UNIT, in_range

#: the streams MMSD reads, in the order of its single-modality streams
MODALITIES = ("rgb", "flow")
#: its three streams, in the order of ``test_stream_weights`` and of the label store's channels
STREAMS = ("rgb", "flow", "fused")


@dataclass(frozen=True)
class MMSDHyperparameters:
    """Reference values (MMSD ``train_options.py``); ``embed_dim=None`` is the narrower stream's width
    (1024 on I3D, the reference's ``out_feat_num``)."""

    embed_dim: int | None = in_range(None, COUNT)
    dropout: float = in_range(0.6, BELOW_ONE)
    scale: float = in_range(20.0, POSITIVE)
    caa_weight: float = in_range(1.0, NON_NEGATIVE)  # lambda_caa: class-agnostic attention video loss
    csa_weight: float = in_range(0.5, NON_NEGATIVE)  # lambda_csa: class-wise (MIL) video loss
    cls_weight: float = in_range(1.0, NON_NEGATIVE)
    att_weight: float = in_range(0.1, NON_NEGATIVE)  # snippet-score contrast
    att_topk_ratio: float = in_range(8.0, DIVISOR)
    distill_weight: float = in_range(0.1, NON_NEGATIVE)  # knowledge distillation (0: off)
    distill_temperature: float = in_range(0.2, POSITIVE)
    voting_weight: float = in_range(2.0, NON_NEGATIVE)  # self-voting pseudo-label loss (0: off, no label passes)
    # labels (re)generated at the end of these many epochs, i.e. used from these epoch indices on
    label_epochs: tuple[int, ...] = in_range((40, 80, 120, 160, 200, 240), INDEX)
    label_threshold: float = in_range(0.55, UNIT)  # theta: l_t = 1[a_t > theta]
    # "absolute": theta on the attention itself (reference); "relative": on the attention min-max normalised
    # over each video's snippets, i.e. theta as a fraction of the video's attention range
    label_threshold_mode: str = "absolute"
    confidence_threshold: float = in_range(0.6, UNIT)  # a stream is confident on a snippet from here
    vote_margin: float = in_range(0.3, UNIT)  # another stream votes when it is this much more confident
    test_stream_weights: tuple[float, float, float] = in_range((0.2, 0.4, 0.4), NON_NEGATIVE)  # rgb, flow, fused
    test_attention: bool = True  # multiply the test CAS by the weighted attention (reference)

    def __post_init__(self) -> None:  # checked with the config, before any data is read
        if self.label_threshold_mode not in ("absolute", "relative"):
            raise WtalInputError(f"invalid config value model.params.label_threshold_mode = "
                                 f"{self.label_threshold_mode!r}", fix="use 'absolute' or 'relative'")
        if all(w == 0 for w in self.test_stream_weights):
            raise WtalInputError(f"mmsd test_stream_weights {list(self.test_stream_weights)} are all 0",
                                 fix="give at least one stream (rgb, flow, fused) a positive test weight")


def snippet_confidence(logits: torch.Tensor, labels_with_background: torch.Tensor) -> torch.Tensor:
    """``|sum_{c in y} p_tc - p_t,bg|`` with ``p = softmax(logits)`` over the ``C+1`` columns: ``(B, T)`` in
    [0, 1]; ``labels_with_background`` is ``[y, 1]`` ``(B, C+1)``."""
    probs = torch.softmax(logits, dim=-1) * labels_with_background.unsqueeze(1)
    return (probs[..., :-1].sum(dim=-1) - probs[..., -1]).abs()


def reliable_labels(confidence: torch.Tensor, stored: torch.Tensor, confidence_threshold: float,
                    vote_margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-modality self-voting: the reliable label of every stream and where it is reliable.

    ``confidence`` (current predictions) and ``stored`` (the stored labels) are ``(S, B, T)`` over the
    ``S`` streams. Stream ``b`` votes for stream ``a``'s snippet when ``b`` is confident there
    (``confidence >= confidence_threshold``) and, for ``b != a``, at least ``vote_margin`` more confident
    than ``a``. The label is the mean of the voters' stored labels; the snippet is reliable for ``a`` when
    any stream votes. Returns ``(labels (S, B, T), reliable (S, B, T) bool)``.
    """
    confident = confidence >= confidence_threshold  # (S, B, T)
    gap = confidence.unsqueeze(0) - confidence.unsqueeze(1)  # [a, b] = conf_b - conf_a
    itself = torch.eye(confidence.shape[0], dtype=torch.bool, device=confidence.device)[:, :, None, None]
    votes = confident.unsqueeze(0) & (itself | (gap >= vote_margin))  # [a, b]: b votes for a
    count = votes.sum(dim=1)
    labels = (votes.to(stored.dtype) * stored.unsqueeze(0)).sum(dim=1) / count.clamp(min=1).to(stored.dtype)
    return labels, count > 0


def snippet_score_contrast(probs: torch.Tensor, labels_with_background: torch.Tensor, mask: torch.Tensor,
                           ratio: float) -> torch.Tensor:
    """MMSD ``FrmScrLoss`` per video on snippet scores ``probs (B, T, C+1)`` in [0, 1]:

    * temporal: ``sum_c y_c (mean bottom-k P_c - mean top-k P_c)`` with ``y = [labels, 1]`` and
      ``k = max(T // ratio, 1)`` (the background column takes part);
    * separation: ``-mean_t |max_{c < C} y_c P_tc - P_t,bg|`` (each snippet clearly action or background).
    """
    temporal = (attention_contrast(probs, mask, ratio) * labels_with_background).sum(dim=-1)
    gated = probs * labels_with_background.unsqueeze(1)
    separation = -masked_mean((gated[..., :-1].amax(dim=-1) - gated[..., -1]).abs(), mask)
    return temporal + separation


def _layer(width_in: int, width_out: int, dropout: float) -> nn.Sequential:
    """``Linear -> ReLU -> Dropout`` with xavier weights and zero bias (the reference's initialisation)."""
    linear = nn.Linear(width_in, width_out)
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(linear, nn.ReLU(), nn.Dropout(dropout))


class MMSD(StreamModel):
    """``MMSD(context, **MMSDHyperparameters fields)``; reads exactly the ``rgb`` and ``flow`` streams."""

    hyperparameters = MMSDHyperparameters

    def __init__(self, context: ModelContext, **hyperparameters):
        super().__init__(context)
        hp = parse_hyperparameters(MMSDHyperparameters, "mmsd", hyperparameters)
        self.hp = hp
        check_streams(self.input_streams)
        rgb, flow = self.stream_widths["rgb"], self.stream_widths["flow"]
        dim = hp.embed_dim or min(rgb, flow)
        self.first_layers = nn.ModuleDict({"rgb": _layer(rgb, rgb, hp.dropout), "flow": _layer(flow, flow, hp.dropout)})
        self.embeddings = nn.ModuleDict({"rgb": _layer(rgb, dim, hp.dropout), "flow": _layer(flow, dim, hp.dropout),
                                         "fused": _layer(rgb + flow, dim, hp.dropout)})
        self.heads = nn.ModuleDict({s: CosinePredictionHead(dim, self.num_classes, hp.scale) for s in STREAMS})
        self.label_store = SnippetLabelStore(len(STREAMS))

    @property
    def test_weights(self) -> list[float]:
        """``test_stream_weights`` normalised to sum 1 (rgb, flow, fused)."""
        total = float(sum(self.hp.test_stream_weights))
        return [float(w) / total for w in self.hp.test_stream_weights]

    # ----------------------------------------------------------------------------------------- forward
    def forward(self, batch: Batch) -> ModelOutput:
        mask = batch.mask
        hidden = {m: self.first_layers[m](batch.inputs[m]) for m in MODALITIES}
        inputs = {"rgb": hidden["rgb"], "flow": hidden["flow"], "fused": torch.cat([hidden["rgb"], hidden["flow"]], -1)}
        branches = [self.heads[s](masked_fill_zero(self.embeddings[s](inputs[s]), mask), mask) for s in STREAMS]
        weights = self.test_weights
        video = sum(w * b.p_ca for w, b in zip(weights, branches, strict=True))[:, : self.num_classes]
        snippet_probs = sum(w * torch.softmax(b.logits, dim=-1) for w, b in zip(weights, branches, strict=True))
        attention = sum(w * b.attention for w, b in zip(weights, branches, strict=True))
        # logits whose softmax is the weighted class mixture (the CAS before the attention factor)
        cas_logits = torch.log(snippet_probs.clamp(min=1e-30))
        return ModelOutput(video_scores=video, cas_logits=cas_logits, attention=attention,
                           extras={"streams": branches, "snippet_probs": snippet_probs})

    # -------------------------------------------------------------------------------------------- losses
    def losses(self, out: ModelOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        hp, mask = self.hp, batch.mask
        branches: list[BranchOutput] = out.extras["streams"]
        y_fore, y_back = with_background(batch.labels, 0.0), with_background(batch.labels, 1.0)
        cls = sum(hp.caa_weight * normalized_cross_entropy(torch.log_softmax(b.ca_logits, -1), y_fore)
                  + hp.csa_weight * normalized_cross_entropy(torch.log_softmax(b.cw_logits, -1), y_back)
                  for b in branches)
        att = sum(snippet_score_contrast(torch.sigmoid(b.logits), y_back, mask, hp.att_topk_ratio) for b in branches)
        pkd = self.distillation(branches, mask)
        pdl = self.self_voting(branches, batch, y_back)
        total = hp.cls_weight * cls + hp.att_weight * att + hp.distill_weight * pkd + hp.voting_weight * pdl
        return {"total": total, "cls": cls, "att": att, "pkd": pkd, "pdl": pdl}

    def distillation(self, branches: list[BranchOutput], mask: torch.Tensor) -> torch.Tensor:
        """RGB <- flow, flow <- RGB, fused <- mean(RGB, flow); the targets are detached (see the module doc)."""
        rgb, flow, fused = (b.logits for b in branches)
        temperature = self.hp.distill_temperature
        return (softened_cross_entropy(rgb, flow, mask, temperature)
                + softened_cross_entropy(flow, rgb, mask, temperature)
                + softened_cross_entropy(fused, 0.5 * (rgb + flow), mask, temperature))

    def self_voting(self, branches: list[BranchOutput], batch: Batch, y_back: torch.Tensor) -> torch.Tensor:
        """Sum over the streams of the mean squared error between the attention and the reliable labels on
        the video's reliable snippets (0 for a stream with none, and before the first generation)."""
        mask = batch.mask
        if self.label_store.is_empty or self.hp.voting_weight == 0:
            return torch.zeros(mask.shape[0], dtype=branches[0].attention.dtype, device=mask.device)
        stored, _ = self.label_store.read(batch.index, mask)
        confidence = torch.stack([snippet_confidence(b.logits.detach(), y_back) for b in branches])
        targets, reliable = reliable_labels(confidence, stored.to(confidence.dtype), self.hp.confidence_threshold,
                                            self.hp.vote_margin)
        reliable = reliable & mask.unsqueeze(0)
        attention = torch.stack([b.attention for b in branches])
        squared = torch.where(reliable, (attention - targets) ** 2, torch.zeros_like(attention))
        per_stream = squared.sum(dim=-1) / reliable.sum(dim=-1).clamp(min=1).to(squared.dtype)  # (S, B)
        return per_stream.sum(dim=0)

    # ------------------------------------------------------------------------------------- pseudo labels
    def on_epoch_end(self, epoch: int, train_batches: Callable[[], Iterable[Batch]]) -> None:
        """After ``label_epochs`` epochs (epoch index ``e`` ends epoch ``e + 1``): regenerate the labels."""
        if self.hp.voting_weight > 0 and epoch + 1 in self.hp.label_epochs:
            self.generate_labels(train_batches)

    @torch.no_grad()
    def generate_labels(self, train_batches: Callable[[], Iterable[Batch]]) -> None:
        """One eval-mode pass over the training set: each stream's ``1[a > theta]`` and its confidence; a
        snippet's stored label changes only where the new confidence is strictly higher."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        passes = []
        try:
            for batch in train_batches():
                batch = batch.to(device)
                branches = self(batch).extras["streams"]
                y_back = with_background(batch.labels, 1.0)
                labels = torch.stack([self.attention_labels(b.attention, batch.mask) for b in branches])
                confidence = torch.stack([snippet_confidence(b.logits, y_back) for b in branches])
                passes.append((batch.index, batch.mask, labels, confidence))
        finally:
            self.train(was_training)
        if not passes:
            return
        if self.label_store.is_empty:
            self.label_store.allocate(torch.cat([p[0] for p in passes]), torch.cat([p[1].sum(dim=1) for p in passes]))
        for index, mask, labels, confidence in passes:
            self.label_store.keep_more_confident(index, mask, labels, confidence)

    def attention_labels(self, attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """A stream's vote ``1[a_t > theta]`` (``relative``: ``a`` min-max normalised over the video first);
        0 on padding."""
        if self.hp.label_threshold_mode == "relative":
            attention = masked_minmax_normalize(attention.unsqueeze(-1), mask, relu_bounds=False).squeeze(-1)
        return masked_fill_zero((attention > self.hp.label_threshold).to(attention.dtype), mask)

    # ------------------------------------------------------------------------------------------ test time
    def localization_scores(self, out: ModelOutput, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted class softmax of the streams times their weighted attention (``test_attention=False``:
        the softmax mixture alone); video scores: the weighted ``p_ca``."""
        cas = out.extras["snippet_probs"][..., : self.num_classes]
        if self.hp.test_attention:
            cas = cas * out.attention.unsqueeze(-1)
        return masked_fill_zero(cas, mask), out.video_scores

    def distill_logits(self, out: ModelOutput) -> list[tuple[float, torch.Tensor]]:
        return [(w, b.logits) for w, b in zip(self.test_weights, out.extras["streams"], strict=True) if w > 0]


def check_streams(streams: tuple[str, ...]) -> None:
    """MMSD reads exactly ``rgb`` and ``flow``; anything else is a user error naming what is missing."""
    missing = [m for m in MODALITIES if m not in streams]
    if missing:
        raise WtalInputError(f"mmsd needs the {' and '.join(repr(m) for m in missing)} stream"
                             f"{'s' if len(missing) > 1 else ''}, but model.streams is {list(streams)}",
                             fix="set model.streams: [rgb, flow] and give data with both RGB and optical-flow "
                                 "features (mmsd distils between the two modalities)")
    extra = [s for s in streams if s not in MODALITIES]
    if extra:
        raise WtalInputError(f"mmsd reads only the rgb and flow streams, but model.streams also names {extra}",
                             fix="set model.streams: [rgb, flow]")
