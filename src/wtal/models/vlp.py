"""The vision-language (VLP) branch: snippet embeddings of a CLIP-like stream scored by cosine against the
class-name text embeddings, with a video-level MIL classification loss.

Inputs: one stream (``clip``, ``(B, T, E)`` image embeddings, one per I3D snippet) and the data's
``class_text.npy`` (``(C, E)``, class-list order, in the same joint space: ``E`` must match). Per snippet::

    v_t = normalize(x_t + adapter(x)_t)               # a light residual temporal module
    u_c = normalize(text_c + r_c)                     # r_c: a learnable residual per class
    u_bg = normalize(b)                               # a learnable background embedding
    logits[t] = scale * [cos(v_t, u_1), ..., cos(v_t, u_C), cos(v_t, u_bg)]

``adapter`` is ``W_out relu(conv_k(x))`` (a bottleneck of ``hidden_dim`` channels, temporal kernel
``kernel_size``, padded snippets zeroed first) with ``W_out`` zero-initialised, and ``r_c`` starts at 0, so
an untrained branch scores snippets exactly as zero-shot CLIP does; training moves it from there. ``b``
starts at the mean class text ("a person doing something"). ``scale`` is CLIP's trained logit scale (100).

Video scores: the mean of each class's top ``T // topk_ratio`` snippet logits, softmax over the ``C + 1``
columns; the loss is the normalised cross-entropy against ``[y, 1] / (|y| + 1)`` (every video also holds
background), as the plain MIL model. Test-time CAS: ``softmax(logits)[:, :, :C]``.

With ``prompt_context: M`` (and a CLIP checkpoint and its vocabulary, ``text_encoder`` / ``text_vocab``) the
text rows are not read from ``class_text.npy``: they are the frozen text tower's features of the prompts
``[sot] v_1 .. v_M {class}. [eot]``, whose ``M`` context vectors learn (:mod:`wtal.text.prompt`);
``prompt_init`` starts them at the token embeddings of given words.

Zero-shot (``background: false``, ``temporal: none``, ``text_residual: false``; nothing to train): the
background column is fixed at ``-scale`` (cosine -1), so the CAS is CLIP's per-snippet zero-shot
classification ``softmax_c(scale * cos(x_t, text_c))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from wtal.data.batch import Batch
from wtal.errors import WtalInputError
from wtal.models.base import ModelContext, ModelOutput, StreamModel
from wtal.models.losses import normalized_cross_entropy, with_background
from wtal.models.masked import l2_normalize, masked_conv1d, masked_fill_zero, masked_topk_mean, topk_count
from wtal.models.recipes import parse_hyperparameters
from wtal.ranges import BELOW_ONE, COUNT, DIVISOR, INDEX, POSITIVE, in_range
from wtal.text.clip_text import ACTIVATIONS, ClipTextTower, ClipTokenizer, load_state_dict
from wtal.text.prompt import PromptLearner

TEMPORAL_MODULES = ("conv", "none")


@dataclass(frozen=True)
class VLPHyperparameters:
    temporal: str = "conv"  # conv: residual bottleneck temporal convolution | none: the embeddings as given
    hidden_dim: int = in_range(128, COUNT)  # bottleneck width of the temporal module
    kernel_size: int = in_range(3, COUNT)  # temporal kernel (odd), snippets
    dropout: float = in_range(0.3, BELOW_ONE)  # on the bottleneck activations
    scale: float = in_range(100.0, POSITIVE)  # logit scale of the cosines (CLIP's trained value)
    text_residual: bool = True  # a learnable residual added to each class's text embedding
    background: bool = True  # a learnable background embedding (False: CLIP zero-shot over the C classes)
    topk_ratio: float = in_range(8.0, DIVISOR)  # video score: mean of the top T // ratio snippet logits
    # learnable prompt context (0: the data's fixed class_text.npy rows); needs a CLIP checkpoint and its vocabulary
    prompt_context: int = in_range(0, INDEX)  # M context tokens "[sot] v_1 .. v_M {class}. [eot]"
    prompt_init: str | None = None  # words the context starts from (their token count must be M); null: random
    text_encoder: str | None = None  # CLIP checkpoint (open_clip / OpenAI) whose text tower encodes the prompts
    text_vocab: str | None = None  # its BPE vocabulary (bpe_simple_vocab_16e6.txt.gz)
    text_activation: str = "quick_gelu"  # the tower's MLP activation (OpenAI weights: quick_gelu; most open_clip: gelu)


def build_prompt_learner(hp: VLPHyperparameters, classes: list[str]) -> PromptLearner:
    """The prompt learner of ``hp``: the text tower and vocabulary read from the files it names."""
    missing = [key for key in ("text_encoder", "text_vocab") if getattr(hp, key) is None]
    if missing:
        raise WtalInputError(f"model.params.prompt_context = {hp.prompt_context} needs "
                             f"{' and '.join(f'model.params.{k}' for k in missing)}",
                             fix="give the CLIP checkpoint (text_encoder) and its BPE vocabulary (text_vocab), or "
                                 "set prompt_context to 0 to use the data's class_text.npy")
    for key in ("text_encoder", "text_vocab"):
        if not Path(getattr(hp, key)).expanduser().is_file():
            raise WtalInputError(f"model.params.{key}: no such file", path=getattr(hp, key),
                                 fix="give the path of an existing file (nothing is downloaded)")
    if hp.text_activation not in ACTIVATIONS:
        raise WtalInputError(f"invalid config value model.params.text_activation = {hp.text_activation!r}",
                             fix=f"use one of {', '.join(ACTIVATIONS)}")
    encoder = Path(hp.text_encoder).expanduser()
    tower = ClipTextTower.from_state_dict(load_state_dict(encoder), hp.text_activation, path=encoder)
    tokenizer = ClipTokenizer(Path(hp.text_vocab).expanduser(), context_length=tower.context_length)
    return PromptLearner(tower, tokenizer, classes, hp.prompt_context, hp.prompt_init)


class VLPBranch(StreamModel):
    """``VLPBranch(context, **VLPHyperparameters fields)``; reads exactly one stream."""

    hyperparameters = VLPHyperparameters

    def __init__(self, context: ModelContext, **hyperparameters):
        super().__init__(context)
        hp = parse_hyperparameters(VLPHyperparameters, "vlp", hyperparameters)
        if hp.temporal not in TEMPORAL_MODULES:
            raise WtalInputError(f"invalid config value model.params.temporal = {hp.temporal!r}",
                                 fix=f"use one of {', '.join(TEMPORAL_MODULES)}")
        if hp.kernel_size % 2 == 0:
            raise WtalInputError(f"invalid config value model.params.kernel_size = {hp.kernel_size}",
                                 fix="use an odd kernel (3, 5, ...), so that snippet t stays centred")
        if len(self.input_streams) != 1:
            raise WtalInputError(f"the vlp branch reads one stream of image embeddings, got {list(self.input_streams)}",
                                 fix="set its streams to [clip]")
        self.hp = hp
        self.prompts = build_prompt_learner(hp, list(context.classes)) if hp.prompt_context else None
        if self.prompts is None:
            text = torch.as_tensor(context.require_class_text("vlp"), dtype=torch.float32)
            source = "class text embeddings"
        else:
            with torch.no_grad():
                text = self.prompts().float()  # the untrained prompts: a fixed start for the background
            source = f"the prompt embeddings of the text tower in {hp.text_encoder}"
        width = self.stream_widths[self.input_streams[0]]
        if text.shape[1] != width:
            raise WtalInputError(f"{source} are {text.shape[1]}-d but the {self.input_streams[0]!r} stream is "
                                 f"{width}-d: they must live in the same joint embedding space",
                                 fix="use the text tower of the CLIP model that made the image features "
                                     "(`wtal embed-classes` for class_text.npy)")
        if self.prompts is None:
            self.register_buffer("class_text", text)
        self.text_residual = nn.Parameter(torch.zeros_like(text)) if hp.text_residual else None
        self.background = nn.Parameter(text.mean(dim=0).clone()) if hp.background else None
        if hp.temporal == "conv":
            self.conv = nn.Conv1d(width, hp.hidden_dim, hp.kernel_size, padding=hp.kernel_size // 2)
            self.out = nn.Linear(hp.hidden_dim, width)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
            self.drop = nn.Dropout(hp.dropout)

    def text_embeddings(self) -> torch.Tensor:
        """``(C, E)`` unit class rows (the fixed text rows or the learnt prompts' features, plus the learnt
        residual)."""
        text = self.class_text if self.prompts is None else self.prompts()
        return l2_normalize(text if self.text_residual is None else text + self.text_residual)

    def snippet_embeddings(self, batch: Batch) -> torch.Tensor:
        """``(B, T, E)`` unit snippet embeddings after the temporal module; padded snippets are 0."""
        x, mask = batch.inputs[self.input_streams[0]], batch.mask
        if self.hp.temporal == "conv":
            hidden = self.drop(torch.relu(masked_conv1d(self.conv, x, mask)))
            x = x + self.out(hidden)
        return masked_fill_zero(l2_normalize(x), mask)

    def forward(self, batch: Batch) -> ModelOutput:
        v, mask = self.snippet_embeddings(batch), batch.mask
        logits = self.hp.scale * v @ self.text_embeddings().T  # (B, T, C)
        if self.background is not None:
            back = self.hp.scale * v @ l2_normalize(self.background)
        else:
            back = torch.full_like(logits[..., 0], -self.hp.scale)
        logits = masked_fill_zero(torch.cat([logits, back.unsqueeze(-1)], dim=-1), mask)  # (B, T, C+1)
        video_logits = masked_topk_mean(logits, mask, topk_count(mask, self.hp.topk_ratio))
        video = torch.softmax(video_logits, dim=-1)[:, : self.num_classes]
        return ModelOutput(video_scores=video, cas_logits=logits, attention=None,
                           extras={"video_logits": video_logits, "embeddings": v})

    def losses(self, out: ModelOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        log_probs = torch.log_softmax(out.extras["video_logits"], dim=-1)
        mil = normalized_cross_entropy(log_probs, with_background(batch.labels, float(self.background is not None)))
        return {"mil": mil, "total": mil}

    def localization_scores(self, out: ModelOutput, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cas = torch.softmax(out.cas_logits, dim=-1)[..., : self.num_classes]
        return masked_fill_zero(cas, mask), out.video_scores

    def distill_logits(self, out: ModelOutput) -> list[tuple[float, torch.Tensor]]:
        return [(1.0, out.cas_logits)]
