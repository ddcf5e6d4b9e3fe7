"""Learnable prompt context for class-name text embeddings (CoOp style), through a frozen CLIP text tower.

Each class's prompt is ``[sot] v_1 ... v_M {class phrase}. [eot]``: the ``M`` context vectors ``v_i`` (width
``W`` of the tower's token embeddings) are shared by all classes and are the only parameters that learn; the
class phrase (:func:`wtal.text.clip_text.class_phrase`) and the period are the tokenizer's. The class embedding
is the tower's feature of that sequence. With ``init`` words the context starts at their token embeddings, so
an untrained learner gives exactly the tower's features of ``"{init} {class phrase}."`` (tested); without, it
starts at ``N(0, 0.02^2)`` (CoOp's initialisation).

The tower stays out of the module's parameters and state dict: a checkpoint holds the ``M x W`` context only,
and the tower is read again from the user's checkpoint file when the model is built. Rows are cut to the
longest prompt: under the tower's causal mask nothing after a row's end of text reaches its feature. Without
gradients the class rows are computed once per value of the context.
"""

from __future__ import annotations

import torch
from torch import nn

from wtal.errors import WtalInputError
from wtal.text.clip_text import ClipTextTower, ClipTokenizer, class_phrase

INIT_STD = 0.02  # CoOp's random context initialisation


def prompt_token_rows(tokenizer: ClipTokenizer, classes: list[str], context_tokens: int,
                      context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(C, L)`` token ids ``[sot, 0 x M, phrase ids, '.', eot, 0...]`` (``L`` the longest row) and each row's
    end-of-text position ``(C,)``; the ``M`` zeros are the context's placeholders."""
    rows = [[tokenizer.sot, *[0] * context_tokens, *tokenizer.encode(f"{class_phrase(c)}."), tokenizer.eot]
            for c in classes]
    longest = max(len(r) for r in rows)
    if longest > context_length:
        worst = classes[max(range(len(rows)), key=lambda i: len(rows[i]))]
        raise WtalInputError(f"the prompt of class {worst!r} with {context_tokens} context tokens is {longest} "
                             f"tokens, over the text tower's context of {context_length}",
                             fix="use fewer context tokens (model.params.prompt_context)")
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    return ids, torch.tensor([len(r) - 1 for r in rows])


class PromptLearner(nn.Module):
    """``PromptLearner(tower, tokenizer, classes, context_tokens, init)()`` -> ``(C, E)`` class embeddings (not
    normalised); gradients reach the context only."""

    def __init__(self, tower: ClipTextTower, tokenizer: ClipTokenizer, classes: list[str], context_tokens: int,
                 init: str | None = None):
        super().__init__()
        if context_tokens < 1:
            raise WtalInputError(f"prompt context of {context_tokens} tokens", fix="use at least 1 context token")
        tower.requires_grad_(False)
        self._tower = (tower.eval(),)  # a tuple: not a submodule, so neither a parameter nor in the state dict
        ids, eot = prompt_token_rows(tokenizer, classes, context_tokens, tower.context_length)
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("eot", eot, persistent=False)
        width = tower.token_embedding.weight.shape[1]
        if init is None:
            context = torch.randn(context_tokens, width) * INIT_STD
        else:
            init_ids = tokenizer.encode(init)
            if len(init_ids) != context_tokens:
                raise WtalInputError(f"the prompt initialisation {init!r} is {len(init_ids)} tokens, the context "
                                     f"{context_tokens}", fix=f"set model.params.prompt_context to {len(init_ids)}")
            with torch.no_grad():
                context = tower.token_embedding.weight[torch.tensor(init_ids)].clone()
        self.context = nn.Parameter(context.to(tower.token_embedding.weight.dtype))
        self._cached: tuple[tuple, torch.Tensor] | None = None

    @property
    def tower(self) -> ClipTextTower:
        return self._tower[0]

    def _apply(self, fn, recurse: bool = True):
        # device and dtype moves of the model reach the tower, which is not a submodule
        self.tower._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> PromptLearner:
        super().train(mode)
        self.tower.eval()  # frozen: never in training mode (it has no dropout, but stays deterministic)
        return self

    def forward(self) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.encode()
        # without gradients (evaluation, pseudo labels) the rows are reused until the context changes: every
        # in-place update (an optimiser step, a loaded state dict) bumps the tensor's version
        key = (self.context.data_ptr(), self.context._version, self.context.dtype, self.context.device)
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self.encode())
        return self._cached[1]

    def encode(self) -> torch.Tensor:
        x = self.tower.token_embedding(self.token_ids)  # (C, L, W)
        m = self.context.shape[0]
        context = self.context.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :1], context, x[:, 1 + m:]], dim=1)
        return self.tower.encode_embedded(x, self.eot)
