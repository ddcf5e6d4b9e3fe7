"""CPL: weakly-supervised sentence grounding by Gaussian-based contrastive proposal learning.

Zheng et al., "Weakly Supervised Temporal Sentence Grounding with Gaussian-based Contrastive Proposal
Learning", CVPR 2022. Training sees (video, sentence) pairs only; a proposal is good when the sentence can be
reconstructed from the part of the video it covers.

**Model.** Video clips (the model's streams concatenated, after input dropout) and words (learned or given
vectors, a learned start vector in front, input dropout) are projected to ``hidden_dim``; sinusoidal positions
are added to the words only. Two post-LayerNorm transformer decoders of ``video_layers`` / ``text_layers``
layers (``num_heads`` heads, ReLU FFN of ``ffn_dim``, dropout after each sub-layer) are shared by all passes:
D1 runs over clips, D2 over words.

1. *Proposals.* D2 encodes the sentence; D1 runs over the clips plus a learned prediction token appended at
   the end, cross-attending to the sentence. The prediction token attends to every clip (no clip attends to
   it); its output gives ``num_proposals`` (K) pairs ``(centre, width)`` in (0, 1) through a sigmoid.
2. *Gaussian masks.* The projected clips are sub-sampled to ``P = T // proposal_stride`` positions
   (``floor(linspace(0, T - 1, P))``) at normalised times ``linspace(0, 1, P)``. Proposal ``k`` weighs
   position ``t`` by ``exp(-(t - c_k)^2 / (2 s_k^2))`` with ``s_k = max(w_k, min_width) / sigma``, divided by
   its maximum (peak 1; computed in log space so narrow Gaussians far from the grid cannot underflow to 0/0).
3. *Masked reconstruction.* ``max(L // mask_divisor, 1)`` of the sentence's ``L`` words are replaced by a
   learned mask vector (drawn without replacement with probabilities ``softmax(masking weight)``, see
   :mod:`wtal.data.text`). D2 decodes ``[start, w_1 .. w_L]`` causally to predict ``[w_1 .. w_L, <eos>]``,
   cross-attending to D1's encoding of the clips. For a proposal both D1's self-attention probabilities and
   D2's cross-attention probabilities are multiplied by the proposal's Gaussian (+1e-10) over the keys and
   renormalised. The *reference* pass is the same without re-weighting (the whole video).
4. *Negatives* (easy to hard). For the best proposal (lowest reconstruction loss) with left gap
   ``l = max(c - w / 2, 0)`` and right gap ``r = max(1 - c - w / 2, 0)``, and ``f = min((epoch + 1) /
   curriculum_epochs, 1) ** gamma`` (epochs 0-based here; CPL counts from 1), the left negative is a Gaussian
   centred at ``a = l f / 2`` with ``s = max(a, min_width) / (sigma / 2)`` and the right one centred at
   ``1 - r f / 2`` with ``s = max(r f / 2, min_width) / (sigma / 2)``: small ones at the video ends early on,
   covering the whole gap beside the proposal at ``f = 1``.

**Losses** (per sample; CPL averages them over the batch). ``nll`` is the label-smoothed (``label_smoothing``)
token cross-entropy averaged over the sentence's targets. With ``n+`` the best proposal's, ``n_ref`` the
reference's and ``n_L``, ``n_R`` the negatives' ``nll``:
``reconstruction = (n+ + n_ref) / 2``; ``ranking = relu(n+ - n_ref + margin_reference) + relu(n+ - n_L +
margin_negative) + relu(n+ - n_R + margin_negative)``; ``diversity = ||G G^T - diversity_target I||_F^2`` with
``G`` the K Gaussians normalised to sum 1; ``total = reconstruction + alpha_rank * ranking + alpha_diversity *
diversity``.

**Decoding.** Proposals ranked by reconstruction ``nll``, ascending; proposal ``k`` is the segment
``[max(c - w / 2, 0), min(c + w / 2, 1)]`` (fractions of the duration; :func:`rank_proposals`).

**Decisions where CPL's code is a quirk or silent.**

* *End of sentence.* CPL drops the last input position of the batch, so a sentence shorter than the batch's
  longest gets one extra target (the padding id, acting as an end token) and the longest gets none: a
  sentence's loss depends on its batch. Here every sentence predicts an explicit ``<eos>`` after its last
  word, so a padded batch gives the same per-sample losses as one sample at a time.
* *Causal masks over clips.* CPL's decoders mask future positions everywhere, including over video clips
  (clip ``t`` sees clips ``<= t`` only). Kept by default (``causal_video=True``) so results stay comparable with
  CPL's reported numbers; ``causal_video=False`` lets clips attend both ways.
* *Masking at evaluation.* CPL masks words at random at test time too (under fixed seeds), so its rankings
  depend on the random stream. Here evaluation is deterministic: with ``eval_masking="seeded"`` (default) the
  words are masked as in training but drawn from a generator seeded by the query id
  (:func:`query_generators`), so a query gets the same mask in any batch; ``eval_masking="none"`` masks
  nothing at evaluation.
* *Negatives of the best proposal only.* CPL computes left/right negatives for all K proposals but its loss
  reads only the best one's; computing just those gives the same loss and gradients with 2 instead of 2K
  decoder passes. Evaluation runs the K proposal passes only (the reference and negatives do not affect the
  ranking).
* *Word vectors.* CPL feeds frozen 300-d GloVe vectors. Here they are learned from scratch (``word_dim``) or
  initialised from given vectors (e.g. MiniLM's, :func:`wtal.data.text.minilm_word_vectors`) and trained
  unless ``train_word_vectors`` is false.
* *Variable lengths.* CPL resamples every video to 200 clips, so it never pads; here videos of any length are
  padded and masked, and each sample's sub-sampling and Gaussian grid use its own length.

Hyper-parameter defaults are CPL's Charades-STA values. Its ActivityNet Captions values differ in
``gamma=0`` (no curriculum), ``alpha_rank=2``, ``alpha_diversity=0.1`` and ``diversity_target=0.13`` (word
vocabulary 8000 instead of 1111, 500-d C3D instead of 1024-d I3D features). Both train with Adam, peak
learning rate 4e-4 after a linear warm-up of 400 updates from 1e-7, inverse-square-root decay, gradient-norm
clipping at 10, batch 32, 30 epochs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtal.data.batch import Batch
from wtal.data.text import EOS_ID, PAD_ID
from wtal.errors import WtalInputError
from wtal.models.base import ModelContext, StreamModel
from wtal.models.losses import log_activation
from wtal.models.recipes import parse_hyperparameters
from wtal.ranges import BELOW_ONE, COUNT, INDEX, NON_NEGATIVE, POSITIVE, in_range

_MASKED = -1e30  # additive attention mask: exp() of it is exactly 0, and a fully masked row stays finite
GAUSS_EPS = 1e-10  # added to the Gaussian before re-weighting attention (CPL's value)


@dataclass(frozen=True)
class CPLHyperparameters:
    """CPL's hyper-parameters; defaults are its Charades-STA values (see the module docstring)."""

    hidden_dim: int = in_range(256, COUNT)
    num_heads: int = in_range(4, COUNT)
    ffn_dim: int = in_range(512, COUNT)
    video_layers: int = in_range(3, COUNT)
    text_layers: int = in_range(3, COUNT)
    dropout: float = in_range(0.1, BELOW_ONE)
    word_dim: int = in_range(300, COUNT)  # learned word vectors (ignored when vectors are given)
    train_word_vectors: bool = True
    num_proposals: int = in_range(8, COUNT)
    sigma: float = in_range(9.0, POSITIVE)
    min_width: float = in_range(0.01, POSITIVE)
    proposal_stride: int = in_range(4, COUNT)
    gamma: float = in_range(0.5, NON_NEGATIVE)
    curriculum_epochs: int = in_range(30, COUNT)  # epochs until the negatives reach the proposal (f = 1)
    margin_reference: float = in_range(0.1, NON_NEGATIVE)
    margin_negative: float = in_range(0.15, NON_NEGATIVE)
    alpha_rank: float = in_range(1.0, NON_NEGATIVE)
    alpha_diversity: float = in_range(5.0, NON_NEGATIVE)
    diversity_target: float = in_range(0.146, NON_NEGATIVE)
    label_smoothing: float = in_range(0.1, BELOW_ONE)
    mask_divisor: int = in_range(3, COUNT)
    causal_video: bool = True
    eval_masking: str = "seeded"  # or "none"
    eval_seed: int = in_range(0, INDEX)  # eval_masking "seeded": masks drawn from (eval_seed, query id)

    def __post_init__(self) -> None:
        if self.num_heads >= 1 and self.hidden_dim % self.num_heads:
            raise WtalInputError(f"model.params.hidden_dim {self.hidden_dim} is not divisible by num_heads "
                                 f"{self.num_heads}", fix="choose hidden_dim a multiple of num_heads")
        if self.eval_masking not in ("seeded", "none"):
            raise WtalInputError(f"invalid config value model.params.eval_masking = {self.eval_masking!r}",
                                 fix="use 'seeded' or 'none'")


@dataclass
class ReconstructionInputs:
    """What a reconstruction pass reads besides the key weights: kept with a training output so that the
    negatives, which depend on the epoch, can be reconstructed when the losses are computed."""

    clips: Tensor  # (B, P, H) projected clips at the sub-sampled positions
    valid: Tensor  # (B, P) bool
    time: Tensor  # (B, P) normalised times of the positions
    word_in: Tensor  # (B, L + 1, H) masked word inputs with positions
    word_valid: Tensor  # (B, L + 1) bool
    targets: Tensor  # (B, L + 1) target ids


@dataclass
class CPLOutput:
    centers: Tensor  # (B, K) proposal centres, fractions of the video
    widths: Tensor  # (B, K) proposal widths, fractions of the video
    gauss: Tensor  # (B, K, P) peak-normalised Gaussian weights, 0 on padded positions
    position_mask: Tensor  # (B, P) bool, True on a sample's sub-sampled positions
    proposal_nll: Tensor  # (B, K) reconstruction loss of each proposal
    reference_nll: Tensor | None  # (B,) whole-video reconstruction loss (training passes only)
    negative_nll: Tensor | None  # (B, 2) left/right negatives of the best proposal (training passes only)
    inputs: ReconstructionInputs | None = None  # what the proposals were scored from (negatives, re-scoring)
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. a fused output's branch outputs


# ------------------------------------------------------------------------------------------ word masking


def draw_masked_words(lengths: Tensor, weights: Tensor | None,
                      generator: torch.Generator | Sequence[torch.Generator] | None,
                      mask_divisor: int = 3, width: int | None = None) -> Tensor:
    """``(B, L)`` bool: ``max(len // mask_divisor, 1)`` words per sentence drawn without replacement with
    probabilities ``softmax(weights)`` (uniform when ``weights`` is None); nothing for empty sentences.

    Uses Gumbel top-k, which has the distribution of successive sampling without replacement. With one
    generator the noise of the whole batch is drawn at once; with one generator per sentence (e.g. from
    :func:`query_generators`) each sentence's draw depends only on its own generator and length.
    """
    lengths = lengths.detach().cpu().long()
    width = int(lengths.max().item()) if width is None else width
    bsz = len(lengths)
    if isinstance(generator, Sequence):
        uniform = torch.zeros(bsz, width, dtype=torch.float64)
        for b, g in enumerate(generator):
            uniform[b, : lengths[b]] = torch.rand(int(lengths[b]), generator=g, dtype=torch.float64)
    else:
        uniform = torch.rand(bsz, width, generator=generator, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-12, 1 - 1e-12)))
    valid = torch.arange(width)[None, :] < lengths[:, None]
    w = torch.zeros(bsz, width, dtype=torch.float64) if weights is None else weights.detach().cpu().double()
    keys = torch.where(valid, w[:, :width] + gumbel, torch.full_like(gumbel, -math.inf))
    rank = torch.argsort(torch.argsort(keys, dim=1, descending=True), dim=1)
    count = torch.where(lengths > 0, torch.clamp(lengths // mask_divisor, min=1), torch.zeros_like(lengths))
    return (rank < count[:, None]) & valid


def query_generators(query_ids: Sequence[int] | Tensor, seed: int) -> list[torch.Generator]:
    """One CPU generator per query, seeded by ``(seed, query id)``: masks that do not depend on the batch."""
    ids = query_ids.tolist() if isinstance(query_ids, Tensor) else list(query_ids)
    return [torch.Generator().manual_seed(int(np.random.SeedSequence([seed, int(q)]).generate_state(1)[0]))
            for q in ids]


# ------------------------------------------------------------------------------------------ transformer


class _Attention(nn.Module):
    """Multi-head attention with key padding, an optional causal mask and optional re-weighting of the
    attention probabilities by per-key weights (renormalised)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        for layer in (self.q, self.kv, self.out):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, memory: Tensor, memory_valid: Tensor, causal: bool,
                key_weight: Tensor | None) -> Tensor:
        n, tq, dim = x.shape
        tk, h = memory.shape[1], self.heads
        q = self.q(x).view(n, tq, h, -1).transpose(1, 2)
        k, v = self.kv(memory).view(n, tk, 2, h, -1).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim // h)  # (n, h, tq, tk)
        blocked = ~memory_valid[:, None, None, :]
        if causal:
            blocked = blocked | torch.ones(tq, tk, dtype=torch.bool, device=x.device).triu(1)
        probs = torch.softmax(scores.masked_fill(blocked, _MASKED), dim=-1)
        if key_weight is not None:
            probs = probs * (key_weight[:, None, None, :] + GAUSS_EPS)
            probs = probs / probs.sum(dim=-1, keepdim=True)
        return self.out((probs @ v).transpose(1, 2).reshape(n, tq, dim))


class _DecoderLayer(nn.Module):
    def __init__(self, hp: CPLHyperparameters):
        super().__init__()
        d = hp.hidden_dim
        self.self_attn, self.self_norm = _Attention(d, hp.num_heads), nn.LayerNorm(d)
        self.cross_attn, self.cross_norm = _Attention(d, hp.num_heads), nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, hp.ffn_dim), nn.ReLU(), nn.Linear(hp.ffn_dim, d))
        self.ffn_norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(hp.dropout)

    def forward(self, x, valid, memory, memory_valid, causal, self_weight, cross_weight):
        x = self.self_norm(x + self.dropout(self.self_attn(x, x, valid, causal, self_weight)))
        if memory is not None:
            x = self.cross_norm(x + self.dropout(self.cross_attn(x, memory, memory_valid, False, cross_weight)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class _Decoder(nn.Module):
    def __init__(self, hp: CPLHyperparameters, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(_DecoderLayer(hp) for _ in range(layers))

    def forward(self, x: Tensor, valid: Tensor, *, causal: bool, memory: Tensor | None = None,
                memory_valid: Tensor | None = None, self_weight: Tensor | None = None,
                cross_weight: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, valid, memory, memory_valid, causal, self_weight, cross_weight)
        return x


def sinusoidal_positions(length: int, dim: int, device=None) -> Tensor:
    """``(length, dim)`` tensor2tensor sinusoids (sines then cosines); row 0 is zero, as in CPL (fairseq)."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32, device=device) * -(math.log(10000.0) / max(half - 1, 1)))
    angle = torch.arange(length, dtype=torch.float32, device=device)[:, None] * freq[None, :]
    emb = torch.cat([torch.sin(angle), torch.cos(angle), torch.zeros(length, dim - 2 * half, device=device)], dim=1)
    emb[0] = 0.0
    return emb


# ------------------------------------------------------------------------------------------ Gaussians


def gaussian_weights(positions: Tensor, valid: Tensor, centers: Tensor, stds: Tensor) -> Tensor:
    """``(B, K, P)`` Gaussians over ``positions`` ``(B, P)`` with peak 1 over each row's valid positions, 0 on
    padding; ``centers`` and ``stds`` are ``(B, K)``."""
    log_w = -((positions[:, None, :] - centers[..., None]) ** 2) / (2 * stds[..., None] ** 2)
    log_w = log_w.masked_fill(~valid[:, None, :], -math.inf)
    return torch.exp(log_w - log_w.amax(dim=-1, keepdim=True))


def negative_gaussians(positions: Tensor, valid: Tensor, centers: Tensor, widths: Tensor, factor: float,
                       hp: CPLHyperparameters) -> Tensor:
    """``(B, 2, P)`` left and right negative Gaussians of proposals ``(B,)`` at curriculum factor ``factor``."""
    left = torch.clamp(centers - widths / 2, min=0) * factor / 2
    right = torch.clamp(1 - centers - widths / 2, min=0) * factor / 2
    mu = torch.stack([left, 1 - right], dim=1)
    std = torch.stack([left, right], dim=1).clamp(min=hp.min_width) / (hp.sigma / 2)
    return gaussian_weights(positions, valid, mu, std)


def curriculum_factor(epoch: float, hp: CPLHyperparameters) -> float:
    """``min((epoch + 1) / curriculum_epochs, 1) ** gamma`` for a 0-based ``epoch``."""
    return min((epoch + 1) / hp.curriculum_epochs, 1.0) ** hp.gamma


def subsample_positions(lengths: Tensor, stride: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per sample ``P = max(T // stride, 1)`` clip indices ``floor(linspace(0, T - 1, P))`` at normalised times
    ``linspace(0, 1, P)``: ``(index (B, P_max) long, time (B, P_max), valid (B, P_max) bool)``."""
    count = torch.clamp(lengths // stride, min=1)
    p_max = int(count.max().item())
    j = torch.arange(p_max, device=lengths.device, dtype=torch.float64)[None, :]
    span = (count - 1).clamp(min=1).double()[:, None]
    time = j / span
    index = torch.floor(time * (lengths - 1).double()[:, None] + 1e-9).long()
    valid = j < count[:, None]
    return index.masked_fill(~valid, 0), time.float().masked_fill(~valid, 0.0), valid


# ------------------------------------------------------------------------------------------ the model


class CPL(nn.Module):
    """CPL over named video streams and a word vocabulary (see the module docstring)."""

    def __init__(self, streams: Mapping[str, int], vocab_size: int, hp: CPLHyperparameters | None = None,
                 word_vectors: np.ndarray | None = None):
        super().__init__()
        self.hp = hp = hp or CPLHyperparameters()
        self.streams = list(streams)
        self.vocab_size = vocab_size
        video_dim = sum(streams.values())
        if word_vectors is not None:
            if word_vectors.shape[0] != vocab_size:
                raise ValueError(f"word_vectors has {word_vectors.shape[0]} rows for a vocabulary of {vocab_size}")
            self.words = nn.Embedding.from_pretrained(torch.as_tensor(word_vectors, dtype=torch.float32),
                                                      freeze=not hp.train_word_vectors, padding_idx=PAD_ID)
        else:
            self.words = nn.Embedding(vocab_size, hp.word_dim, padding_idx=PAD_ID)
        word_dim = self.words.embedding_dim
        self.start_vec = nn.Parameter(torch.zeros(word_dim))
        self.mask_vec = nn.Parameter(torch.zeros(word_dim))
        self.pred_vec = nn.Parameter(torch.zeros(video_dim))
        self.video_fc = nn.Linear(video_dim, hp.hidden_dim)
        self.word_fc = nn.Linear(word_dim, hp.hidden_dim)
        self.video_decoder = _Decoder(hp, hp.video_layers)
        self.text_decoder = _Decoder(hp, hp.text_layers)
        self.proposal_fc = nn.Linear(hp.hidden_dim, 2 * hp.num_proposals)
        self.vocab_fc = nn.Linear(hp.hidden_dim, vocab_size)
        self.dropout = nn.Dropout(hp.dropout)

    @classmethod
    def from_params(cls, streams: Mapping[str, int], vocab_size: int, params: dict[str, Any] | None = None,
                    word_vectors: np.ndarray | None = None) -> CPL:
        """Build from config keyword arguments (unknown names are a :class:`~wtal.errors.WtalInputError`)."""
        return cls(streams, vocab_size, parse_hyperparameters(CPLHyperparameters, "cpl", params or {}), word_vectors)

    # -------------------------------------------------------------------------------------- forward

    def forward(self, video: Mapping[str, Tensor], video_mask: Tensor, words: Tensor, word_mask: Tensor, *,
                epoch: float | None = 0, word_weights: Tensor | None = None, masked_words: Tensor | None = None,
                generator: torch.Generator | Sequence[torch.Generator] | None = None,
                contrast: bool | None = None) -> CPLOutput:
        """Proposals and their reconstruction losses for a batch.

        ``video``: ``{stream: (B, T, D_s)}`` zero-padded; ``video_mask`` ``(B, T)`` bool; ``words`` ``(B, L)`` word
        ids (padding ``PAD_ID``) with ``word_mask`` ``(B, L)`` bool (a prefix per row); ``word_weights`` ``(B, L)``
        masking weights. The words to mask are ``masked_words`` when given, else drawn from ``generator``
        (:func:`draw_masked_words`); at evaluation with ``eval_masking="none"`` nothing is masked. ``contrast``
        (default: training mode) adds the reference and negative passes that the losses need; with ``epoch=None``
        the negatives wait for :meth:`losses` (which then needs the epoch).
        """
        hp = self.hp
        contrast = self.training if contrast is None else contrast
        inputs, centers, widths = self._encode(video, video_mask, words, word_mask, word_weights, masked_words,
                                               generator)
        gauss = gaussian_weights(inputs.time, inputs.valid, centers, widths.clamp(min=hp.min_width) / hp.sigma)
        weights = gauss
        if contrast:  # reference pass (uniform weights = no re-weighting) batched with the proposals
            uniform = torch.ones_like(gauss[:, :1]).masked_fill(~inputs.valid[:, None], 0)
            weights = torch.cat([gauss, uniform], dim=1)
        nll = self._reconstruct(inputs, weights)
        out = CPLOutput(centers, widths, gauss, inputs.valid, nll[:, : hp.num_proposals],
                        nll[:, -1] if contrast else None, None, inputs)
        if contrast and epoch is not None:
            out.negative_nll = self.negative_nll(out, epoch)
        return out

    def negative_nll(self, out: CPLOutput, epoch: float) -> Tensor:
        """``(B, 2)`` reconstruction losses of the left and right negatives of each sample's best proposal at the
        curriculum of ``epoch`` (0-based), from a training pass's kept inputs."""
        if out.inputs is None:
            raise ValueError("the negatives need a training pass (forward with contrast=True)")
        best = out.proposal_nll.argmin(dim=1, keepdim=True)
        center, width = out.centers.gather(1, best).squeeze(1), out.widths.gather(1, best).squeeze(1)
        negatives = negative_gaussians(out.inputs.time, out.inputs.valid, center, width,
                                       curriculum_factor(epoch, self.hp), self.hp)
        return self._reconstruct(out.inputs, negatives)

    def segment_nll(self, video: Mapping[str, Tensor], video_mask: Tensor, words: Tensor, word_mask: Tensor,
                    centers: Tensor, widths: Tensor, *, word_weights: Tensor | None = None,
                    masked_words: Tensor | None = None,
                    generator: torch.Generator | Sequence[torch.Generator] | None = None) -> Tensor:
        """``(B, M)`` reconstruction losses of the sentence from given Gaussian proposals ``centers`` / ``widths``
        ``(B, M)`` (fractions of the video), masked as :meth:`forward` masks: how well a segment explains the
        sentence (e.g. the ground-truth moment against shifted ones, or a student's segments under a teacher)."""
        inputs, _, _ = self._encode(video, video_mask, words, word_mask, word_weights, masked_words, generator)
        return self.rescore(inputs, centers, widths)

    def rescore(self, inputs: ReconstructionInputs, centers: Tensor, widths: Tensor) -> Tensor:
        """``(B, M)`` reconstruction losses of Gaussian proposals ``centers`` / ``widths`` ``(B, M)`` from the inputs a
        pass kept (``CPLOutput.inputs``: the same clips and masked sentence as that pass's own proposals)."""
        stds = widths.clamp(min=self.hp.min_width) / self.hp.sigma
        return self._reconstruct(inputs, gaussian_weights(inputs.time, inputs.valid, centers, stds))

    def _encode(self, video: Mapping[str, Tensor], video_mask: Tensor, words: Tensor, word_mask: Tensor,
                word_weights: Tensor | None, masked_words: Tensor | None,
                generator: torch.Generator | Sequence[torch.Generator] | None
                ) -> tuple[ReconstructionInputs, Tensor, Tensor]:
        """The reconstruction inputs (sub-sampled clips, masked words, targets) and the proposals ``(B, K)``."""
        hp = self.hp
        x = torch.cat([video[s] for s in self.streams], dim=-1)
        t_max = x.shape[1]
        video_len, word_len = video_mask.sum(dim=1), word_mask.sum(dim=1)
        if masked_words is None:
            if not self.training and hp.eval_masking == "none":
                masked_words = torch.zeros_like(word_mask)
            else:
                masked_words = draw_masked_words(word_len, word_weights, generator, hp.mask_divisor, words.shape[1])
        masked_words = masked_words.to(word_mask.device) & word_mask

        clips, clip_valid = self._project_video(x, video_mask)
        tokens, token_valid, positions = self._project_words(words, word_len)
        centers, widths = self._propose(clips, clip_valid, tokens + positions, token_valid, t_max)

        index, time, pos_valid = subsample_positions(video_len, hp.proposal_stride)
        sampled = torch.gather(clips[:, :t_max], 1, index[..., None].expand(-1, -1, clips.shape[-1]))
        mask_token = self.word_fc(self.mask_vec)
        word_in = tokens.clone()
        word_in[:, 1:] = torch.where(masked_words[..., None], mask_token, tokens[:, 1:])
        inputs = ReconstructionInputs(sampled, pos_valid, time, word_in + positions, token_valid,
                                      self._targets(words, word_len))
        return inputs, centers, widths

    def _project_video(self, x: Tensor, video_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Clips plus the prediction token (last position), input dropout, projection; and key validity."""
        pred = self.pred_vec.expand(x.shape[0], 1, -1)
        clips = self.video_fc(self.dropout(torch.cat([x, pred], dim=1)))
        valid = torch.cat([video_mask, torch.zeros_like(video_mask[:, :1])], dim=1)  # nobody attends to the token
        return clips, valid

    def _project_words(self, words: Tensor, word_len: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``[start, w_1 .. w_L]`` projected ``(B, L + 1, H)``, validity ``(B, L + 1)``, positions ``(L + 1, H)``."""
        emb = self.words(words)
        seq = torch.cat([self.start_vec.expand(words.shape[0], 1, -1), emb], dim=1)
        tokens = self.word_fc(self.dropout(seq))
        valid = torch.arange(seq.shape[1], device=words.device)[None, :] <= word_len[:, None]
        return tokens, valid, sinusoidal_positions(seq.shape[1], self.hp.hidden_dim, words.device)

    def _propose(self, clips: Tensor, clip_valid: Tensor, sentence: Tensor, sentence_valid: Tensor,
                 t_max: int) -> tuple[Tensor, Tensor]:
        """``(centres, widths)`` ``(B, K)`` from the prediction token."""
        encoded = self.text_decoder(sentence, sentence_valid, causal=True)
        h = self.video_decoder(clips, clip_valid, causal=self.hp.causal_video, memory=encoded,
                               memory_valid=sentence_valid)
        params = torch.sigmoid(self.proposal_fc(h[:, t_max])).view(-1, self.hp.num_proposals, 2)
        return params[..., 0], params[..., 1]

    @staticmethod
    def _targets(words: Tensor, word_len: Tensor) -> Tensor:
        """``(B, L + 1)``: ``[w_1 .. w_len, <eos>]`` then padding."""
        targets = torch.cat([words, torch.full_like(words[:, :1], PAD_ID)], dim=1)
        return targets.scatter(1, word_len[:, None].long(), EOS_ID)

    def _reconstruct(self, inputs: ReconstructionInputs, weights: Tensor) -> Tensor:
        """``(B, M)`` reconstruction losses under ``M`` key weightings ``weights`` ``(B, M, P)``."""
        bsz, m, p = weights.shape
        rep = lambda t: t.repeat_interleave(m, dim=0)  # noqa: E731
        flat = weights.reshape(bsz * m, p)
        valid = rep(inputs.valid)
        memory = self.video_decoder(rep(inputs.clips), valid, causal=self.hp.causal_video, self_weight=flat)
        h = self.text_decoder(rep(inputs.word_in), rep(inputs.word_valid), causal=True, memory=memory,
                              memory_valid=valid, cross_weight=flat)
        return self.sequence_nll(self.vocab_fc(h), rep(inputs.targets), rep(inputs.word_valid)).view(bsz, m)

    def sequence_nll(self, logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
        """Label-smoothed token cross-entropy averaged over each sequence's valid targets: ``(N,)``."""
        logp = torch.log_softmax(logits, dim=-1)
        eps = self.hp.label_smoothing
        token = -(1 - eps) * logp.gather(-1, targets[..., None]).squeeze(-1) - eps / logp.shape[-1] * logp.sum(-1)
        valid = valid.to(token.dtype)
        return (token * valid).sum(dim=1) / valid.sum(dim=1)

    # -------------------------------------------------------------------------------------- losses

    def losses(self, out: CPLOutput, epoch: float | None = None) -> dict[str, Tensor]:
        """Per-sample ``(B,)`` losses: reconstruction, ranking, diversity and their weighted ``total``. ``epoch``
        (0-based) is needed when the pass left its negatives for now (``forward(epoch=None)``). A pass without the
        reference (an evaluation pass, e.g. of the eval-mode snapshot that measures a loss balance) gets it here,
        from the inputs it kept."""
        hp = self.hp
        if out.reference_nll is None and out.inputs is not None and epoch is not None:
            whole = out.inputs.valid[:, None].to(out.gauss.dtype)  # uniform weights: the whole video
            out.reference_nll = self._reconstruct(out.inputs, whole)[:, 0]
        if out.negative_nll is None and out.inputs is not None and epoch is not None:
            out.negative_nll = self.negative_nll(out, epoch)
        if out.reference_nll is None or out.negative_nll is None:
            raise ValueError("the losses need the reference and negative passes: call forward with contrast=True "
                             "(and an epoch, here or in forward)")
        best = out.proposal_nll.min(dim=1).values
        reconstruction = 0.5 * (best + out.reference_nll)
        ranking = (F.relu(best - out.reference_nll + hp.margin_reference)
                   + F.relu(best[:, None] - out.negative_nll + hp.margin_negative).sum(dim=1))
        g = out.gauss / out.gauss.sum(dim=-1, keepdim=True)
        eye = torch.eye(hp.num_proposals, device=g.device)
        diversity = ((g @ g.transpose(1, 2) - hp.diversity_target * eye) ** 2).sum(dim=(1, 2))
        total = reconstruction + hp.alpha_rank * ranking + hp.alpha_diversity * diversity
        return {"total": total, "reconstruction": reconstruction, "ranking": ranking, "diversity": diversity}


def rank_proposals(out: CPLOutput) -> tuple[np.ndarray, np.ndarray]:
    """``(segments (B, K, 2), scores (B, K))`` float64, proposals ranked by reconstruction loss (ascending);
    segments are fractions of the duration, scores the negated losses."""
    order = torch.argsort(out.proposal_nll, dim=1, stable=True)
    c, w = out.centers.gather(1, order), out.widths.gather(1, order)
    segments = torch.stack([torch.clamp(c - w / 2, min=0), torch.clamp(c + w / 2, max=1)], dim=-1)
    scores = -out.proposal_nll.gather(1, order)
    return segments.detach().cpu().double().numpy(), scores.detach().cpu().double().numpy()


def proposal_distribution(out: CPLOutput, temperature: float = 1.0) -> Tensor:
    """``(B, K)`` a distribution over each query's proposals, ``softmax(-nll / temperature)``: the better a
    proposal reconstructs the sentence, the more mass (a grounding teacher's per-query proposal distribution)."""
    return torch.softmax(-out.proposal_nll / temperature, dim=1)


def snippet_activation(out: CPLOutput, lengths: Tensor, hp: CPLHyperparameters, temperature: float = 1.0) -> Tensor:
    """``(B, T_max)`` query-conditioned activation of every snippet in [0, 1]: the proposals' Gaussians
    (``std = max(w, min_width) / sigma``, peak 1) at the snippet centres ``(i + 0.5) / T`` mixed by
    :func:`proposal_distribution`; 0 past each sample's ``lengths``."""
    t_max = int(lengths.max().item())
    idx = torch.arange(t_max, device=lengths.device, dtype=out.centers.dtype)[None, :]
    time = (idx + 0.5) / lengths.to(out.centers.dtype)[:, None]  # (B, T)
    std = out.widths.clamp(min=hp.min_width) / hp.sigma  # (B, K)
    gauss = torch.exp(-((time[:, None, :] - out.centers[..., None]) ** 2) / (2 * std[..., None] ** 2))
    activation = (proposal_distribution(out, temperature)[..., None] * gauss).sum(dim=1)
    return activation.masked_fill(idx >= lengths[:, None], 0.0)


def best_segment(out: CPLOutput) -> Tensor:
    """``(B, 2)`` the top-ranked proposal of each query as ``[start, end]`` fractions clipped to the video, as
    :func:`rank_proposals` decodes it, differentiable in the proposal's centre and width."""
    best = out.proposal_nll.argmin(dim=1, keepdim=True)
    c, w = out.centers.gather(1, best).squeeze(1), out.widths.gather(1, best).squeeze(1)
    return torch.stack([torch.clamp(c - w / 2, min=0), torch.clamp(c + w / 2, max=1)], dim=-1)


def fuse_branch_outputs(branches: Sequence[tuple[float, CPLModel, CPLOutput]]) -> CPLOutput:
    """One output from CPL branches on different streams (``(fusion weight, branch, its output)``, weights summing
    to 1): every branch's proposals pooled, ``(B, N K)``, in branch order.

    In eval mode (evaluation, prediction, a frozen teacher) a pooled proposal's loss is the fusion-weighted mean of
    every branch's reconstruction loss of it: each branch re-scores the other branches' proposals from the clips
    and masked sentence of its own pass (:meth:`CPL.rescore`, ``(N - 1) K`` extra reconstruction passes per
    branch), so every segment is judged by every stream. In training mode (where only the branches' own losses
    are read) no pass is added: a pooled proposal's loss is ``-log(f_i p_i(k))``, its branch's proposal
    distribution mixed with the fusion weights, so that :func:`proposal_distribution` of the result is that
    mixture."""
    lead = branches[0][2]
    if any(not m.training for _, m, _ in branches):
        if any(o.inputs is None for _, _, o in branches):
            raise ValueError("fusing CPL branches needs each pass's reconstruction inputs")
        nll = sum(f * torch.cat([own.proposal_nll if j == i else m.cpl.rescore(own.inputs, o.centers, o.widths)
                                 for j, (_, _, o) in enumerate(branches)], dim=1)
                  for i, (f, m, own) in enumerate(branches))
    else:
        nll = torch.cat([-(torch.log_softmax(-o.proposal_nll, dim=1) + math.log(f)) if f > 0
                         else torch.full_like(o.proposal_nll, math.inf) for f, _, o in branches], dim=1)
    return CPLOutput(torch.cat([o.centers for _, _, o in branches], dim=1),
                     torch.cat([o.widths for _, _, o in branches], dim=1),
                     torch.cat([o.gauss for _, _, o in branches], dim=1), lead.position_mask, nll, None, None,
                     extras={"branches": [o for _, _, o in branches]})


# ------------------------------------------------------------------------------------------ wtal model


class CPLModel(StreamModel):
    """CPL as a wtal model for the grounding task: ``model(batch)`` reads the model's streams and the query
    fields of a grounding batch (``words``, ``word_mask``, ``word_weights``, ``query``: see
    :mod:`wtal.tasks.grounding`); the vocabulary (and optional word vectors) come from the model context's
    ``extras``. Training passes leave their negatives to :meth:`losses`, which knows the epoch; evaluation masks
    words from generators seeded by ``(eval_seed, query id)`` (``eval_masking="seeded"``), so a query's
    ranking does not depend on its batch or on any random stream."""

    hyperparameters = CPLHyperparameters
    needs_classes = False  # a grounding model: sentences instead of action classes

    def __init__(self, context: ModelContext, **params: Any):
        super().__init__(context)
        hp = parse_hyperparameters(CPLHyperparameters, "cpl", params)
        vocabulary = context.extras.get("vocabulary")
        if vocabulary is None:
            raise WtalInputError("model 'cpl' needs a sentence vocabulary in its context",
                                 fix="train it with task: grounding (the task builds the vocabulary)")
        self.cpl = CPL(context.streams, len(vocabulary), hp, context.extras.get("word_vectors"))

    @property
    def hp(self) -> CPLHyperparameters:
        return self.cpl.hp

    def forward(self, batch: Batch) -> CPLOutput:
        fields = batch.fields
        generator = None
        if not self.training and self.hp.eval_masking == "seeded":
            generator = query_generators(fields["query"], self.hp.eval_seed)
        return self.cpl(batch.inputs, batch.mask, fields["words"], fields["word_mask"], epoch=None,
                        word_weights=fields["word_weights"], generator=generator)

    def losses(self, out: CPLOutput, batch: Batch, epoch: int) -> dict[str, Tensor]:
        return self.cpl.losses(out, epoch)

    def ranked_segments(self, out: CPLOutput) -> tuple[np.ndarray, np.ndarray]:
        """``(segments (B, K, 2), scores (B, K))``: fractions of the duration, best first (:func:`rank_proposals`)."""
        return rank_proposals(out)

    def proposal_distribution(self, out: CPLOutput, temperature: float = 1.0) -> Tensor:
        return proposal_distribution(out, temperature)

    def snippet_activation(self, out: CPLOutput, batch: Batch, temperature: float = 1.0) -> Tensor:
        """``(B, T)`` query-conditioned snippet activation (:func:`snippet_activation`) on the batch's snippets."""
        return snippet_activation(out, batch.lengths, self.hp, temperature)

    # ------------------------------------------------------------- knowledge for teachers and mutual learning
    #: a grounding activation has one column per query: it is compared as a distribution over time only
    mutual_axes = ("time",)

    def activation_map(self, out: CPLOutput, batch: Batch) -> Tensor:
        """``(B, T, 1)`` the query-conditioned snippet activation in [0, 1], 0 on padding (the map a teacher's
        global distillation matches, :mod:`wtal.pseudo.activation`)."""
        return self.snippet_activation(out, batch)[..., None]

    def mutual_maps(self, out: CPLOutput, batch: Batch) -> list[tuple[float, Tensor]]:
        """What a branch teaches the others in mutual learning (:mod:`wtal.models.mutual`): the log of its
        activation map. (Two branches' proposal distributions are over different proposals, so they are not
        compared directly; their activations are over the same snippets.)"""
        return [(1.0, log_activation(self.activation_map(out, batch)))]

    fuse_branch_outputs = staticmethod(fuse_branch_outputs)
