"""CLIP's text tower in plain torch, read from an open_clip / OpenAI checkpoint, and its BPE tokenizer.

Only what class-name text embeddings need: nothing downloads, the weights and the BPE vocabulary
(``bpe_simple_vocab_16e6.txt.gz``, shipped with open_clip and OpenAI's CLIP) come from files the user gives.

Checkpoint layout (the text tower's keys of open_clip's ``CLIP`` and of OpenAI's checkpoints, optionally
under ``state_dict`` / ``module.`` / ``text.``)::

    token_embedding.weight                  (V, W)
    positional_embedding                    (L, W)      L = context length (77)
    transformer.resblocks.{i}.ln_1.{weight,bias}, .ln_2.{weight,bias}
    transformer.resblocks.{i}.attn.in_proj_{weight,bias}      (3W, W), (3W,)
    transformer.resblocks.{i}.attn.out_proj.{weight,bias}     (W, W), (W,)
    transformer.resblocks.{i}.mlp.c_fc.{weight,bias}          (4W, W), (4W,)
    transformer.resblocks.{i}.mlp.c_proj.{weight,bias}        (W, 4W), (W,)
    ln_final.{weight,bias}
    text_projection                         (W, E)      (or text_projection.weight (E, W), a Linear)

Forward (open_clip ``CLIP.encode_text``): token + positional embeddings; pre-LayerNorm residual blocks
``x += attn(ln_1(x))`` with ``W / 64`` heads and the causal mask (``-inf`` above the diagonal: a token sees
itself and the tokens before it), ``x += mlp(ln_2(x))`` with ``QuickGELU`` (``x * sigmoid(1.702 x)``, OpenAI's
weights) or exact GELU (most open_clip-trained weights: say which, the checkpoint does not); ``ln_final``;
the feature at the end-of-text token (the highest id of each row: ``argmax``); times ``text_projection``.
LayerNorm epsilon 1e-5.

Tokenizer (OpenAI's ``SimpleTokenizer``): text cleaned (HTML entities unescaped twice, whitespace
collapsed, lower-cased; ``ftfy`` mojibake repair is not applied), split by CLIP's pattern (contractions,
letter runs, single digits, other non-space runs), bytes mapped to printable characters, byte-pair merges
in the file's order (its first line is a header; at most 48,894 merges), ids: 256 byte symbols, their 256
end-of-word forms, one per merge, then ``<start_of_text>`` and ``<end_of_text>`` (49,406 and 49,407 with
the real file). Rows are ``[sot, tokens..., eot]`` zero-padded to the context length, truncated to it with
``eot`` last.
"""

from __future__ import annotations

import gzip
import html
import json
import pickle
import re as stdlib_re
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wtal.errors import WtalInputError

MAX_MERGES = 49152 - 256 - 2
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
HEAD_WIDTH = 64
ACTIVATIONS = ("quick_gelu", "gelu")
# our block's module -> the key prefix of open_clip's ResidualAttentionBlock (then "weight" / "bias")
_BLOCK_KEYS = {"ln_1": "ln_1.", "ln_2": "ln_2.", "in_proj": "attn.in_proj_", "out_proj": "attn.out_proj.",
               "c_fc": "mlp.c_fc.", "c_proj": "mlp.c_proj."}
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": None}


# ------------------------------------------------------------------------------------------- tokenizer


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible byte -> printable character table (printable Latin-1 bytes map to themselves)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _pattern():
    try:
        import regex
    except ImportError as exc:
        raise WtalInputError("the CLIP tokenizer needs the 'regex' package (Unicode letter classes)",
                             fix="pip install 'wtal[clip]' (or pip install regex)") from exc
    special = "|".join(stdlib_re.escape(t) for t in SPECIAL_TOKENS)
    return regex.compile(special + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                         regex.IGNORECASE)


def read_merges(path: str | Path) -> list[tuple[str, str]]:
    """The merges of a CLIP BPE vocabulary file (gzip or plain text), after its header line."""
    path = Path(path)
    if not path.is_file():
        raise WtalInputError("BPE vocabulary file not found", path=path,
                             fix="pass CLIP's bpe_simple_vocab_16e6.txt.gz (shipped with open_clip and OpenAI's CLIP)")
    try:
        raw = gzip.open(path).read() if path.read_bytes()[:2] == b"\x1f\x8b" else path.read_bytes()
        lines = raw.decode("utf-8").split("\n")[1 : MAX_MERGES + 1]
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise WtalInputError(f"not a readable BPE vocabulary ({exc})", path=path,
                             fix="pass CLIP's bpe_simple_vocab_16e6.txt.gz") from None
    merges = [tuple(line.split()) for line in lines if line.strip()]
    bad = next((m for m in merges if len(m) != 2), None)
    if bad is not None:
        raise WtalInputError(f"BPE merge line {' '.join(bad)!r} is not two symbols", path=path,
                             fix="pass CLIP's bpe_simple_vocab_16e6.txt.gz")
    return merges  # type: ignore[return-value]


class ClipTokenizer:
    """CLIP's byte-pair tokenizer over a vocabulary file (see the module docstring)."""

    def __init__(self, vocab_path: str | Path, context_length: int = 77):
        merges = read_merges(vocab_path)
        symbols = list(bytes_to_unicode().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + list(SPECIAL_TOKENS)
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot, self.eot = self.encoder[SPECIAL_TOKENS[0]], self.encoder[SPECIAL_TOKENS[1]]
        self.context_length = context_length
        self.pattern = _pattern()
        self._cache: dict[str, list[str]] = {t: [t] for t in SPECIAL_TOKENS}

    @staticmethod
    def clean(text: str) -> str:
        return " ".join(html.unescape(html.unescape(text)).split()).lower()

    def bpe(self, token: str) -> list[str]:
        """The symbols of one pre-token (its last symbol marked ``</w>``) after the ranked merges."""
        if token in self._cache:
            return self._cache[token]
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:], strict=False)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        table = bytes_to_unicode()
        ids: list[int] = []
        for token in self.pattern.findall(self.clean(text)):
            mapped = "".join(table[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self.bpe(mapped))
        return ids

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """``(N, context_length)`` int64 rows ``[sot, ..., eot, 0, ...]``."""
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot
            out[i, : len(ids)] = torch.tensor(ids)
        return out


# ------------------------------------------------------------------------------------------- checkpoint


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file (8-byte header length, JSON header, raw little-endian data)."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, stop = info["data_offsets"]
        buffer = raw[8 + size + start : 8 + size + stop]
        if info["dtype"] == "BF16":
            words = np.frombuffer(buffer, dtype="<u2").astype(np.uint32) << 16
            array = words.view(np.float32)
        elif info["dtype"] in _SAFETENSORS_DTYPES:
            array = np.frombuffer(buffer, dtype=np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<"))
        else:
            continue  # integer buffers (position ids, ...) are not text-tower weights
        out[name] = torch.from_numpy(array.astype(np.float32).reshape(info["shape"]))
    return out


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors: a ``.safetensors`` file, a ``torch.save`` state dict (possibly under
    ``state_dict``), or an OpenAI TorchScript archive."""
    path = Path(path)
    if not path.is_file():
        raise WtalInputError("CLIP checkpoint not found", path=path, fix="pass the model's weights file")
    fix = "pass an open_clip / OpenAI CLIP weights file (.pt, .bin or .safetensors)"
    if path.suffix == ".safetensors":
        try:
            return _read_safetensors(path)
        except (OSError, ValueError, KeyError, struct.error, json.JSONDecodeError) as exc:
            raise WtalInputError(f"not a readable checkpoint ({exc})", path=path, fix=fix) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        try:  # OpenAI's original .pt files are TorchScript archives
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        except (OSError, RuntimeError, ValueError):
            raise WtalInputError(f"not a readable checkpoint ({str(exc).splitlines()[0]})", path=path,
                                 fix=fix) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WtalInputError("the checkpoint holds no state dict", path=path, fix="pass a CLIP weights file")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def text_tower_state(state: dict[str, torch.Tensor], path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The text tower's tensors without their prefix (``""`` for ``CLIP``, ``text.`` for open_clip's
    ``CustomTextCLIP``)."""
    for prefix in ("", "text."):
        if f"{prefix}token_embedding.weight" in state:
            return {k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)}
    raise WtalInputError("no CLIP text tower in the checkpoint (no token_embedding.weight)", path=path,
                         fix="pass the weights of a CLIP model (open_clip or OpenAI), not of an image-only model")


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class TextBlock(nn.Module):
    """A pre-LayerNorm residual block: causal self-attention and a 4x MLP."""

    def __init__(self, width: int, heads: int, mlp_width: int, activation: str):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)
        self.c_fc, self.c_proj = nn.Linear(width, mlp_width), nn.Linear(mlp_width, width)
        self.act = QuickGELU() if activation == "quick_gelu" else nn.GELU()

    def attention(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = self.in_proj(x).reshape(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) / (width // self.heads) ** 0.5 + mask, dim=-1)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(n, length, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln_1(x), mask)
        return x + self.c_proj(self.act(self.c_fc(self.ln_2(x))))


class ClipTextTower(nn.Module):
    """CLIP's text encoder (see the module docstring); build it with :meth:`from_state_dict`."""

    def __init__(self, vocab_size: int, context_length: int, width: int, layers: int, embed_dim: int,
                 activation: str = "quick_gelu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise WtalInputError(f"unknown activation {activation!r}", fix=f"use one of {', '.join(ACTIVATIONS)}")
        if width % HEAD_WIDTH:
            raise WtalInputError(f"text width {width} is not a multiple of the 64-wide attention heads",
                                 fix="pass a standard CLIP checkpoint")
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.zeros(context_length, width))
        self.blocks = nn.ModuleList(TextBlock(width, width // HEAD_WIDTH, 4 * width, activation)
                                    for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.zeros(width, embed_dim))
        self.projection_bias = nn.Parameter(torch.zeros(embed_dim))  # 0 unless the projection is a Linear
        self.register_buffer("causal_mask", torch.full((context_length, context_length), float("-inf")).triu(1),
                             persistent=False)

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], activation: str = "quick_gelu",
                        path: str | Path | None = None) -> ClipTextTower:
        text = text_tower_state(state, path)
        try:
            vocab_size, width = text["token_embedding.weight"].shape
            context_length = text["positional_embedding"].shape[0]
            layers = len({k.split(".")[2] for k in text if k.startswith("transformer.resblocks.")})
            if "text_projection" in text:  # a parameter, x @ P
                projection = text["text_projection"]
                bias = torch.zeros(projection.shape[1])
            else:  # an nn.Linear
                projection = text["text_projection.weight"].T
                bias = text.get("text_projection.bias", torch.zeros(projection.shape[1]))
            tower = cls(vocab_size, context_length, width, layers, projection.shape[1], activation)
            own = {"token_embedding.weight": text["token_embedding.weight"],
                   "positional_embedding": text["positional_embedding"], "text_projection": projection,
                   "projection_bias": bias, **{f"ln_final.{p}": text[f"ln_final.{p}"] for p in ("weight", "bias")}}
            for i in range(layers):
                for mine, theirs in _BLOCK_KEYS.items():
                    for p in ("weight", "bias"):
                        own[f"blocks.{i}.{mine}.{p}"] = text[f"transformer.resblocks.{i}.{theirs}{p}"]
            tower.load_state_dict(own)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise WtalInputError(f"the checkpoint's text tower is not in CLIP's layout ({exc})", path=path,
                                 fix="pass an open_clip / OpenAI CLIP checkpoint (token_embedding, positional_"
                                     "embedding, transformer.resblocks.*, ln_final, text_projection)") from None
        return tower.eval()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, L)`` token ids -> ``(N, E)`` text features (not normalised)."""
        return self.encode_embedded(self.token_embedding(tokens), tokens.argmax(dim=-1))

    def encode_embedded(self, x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """``(N, L, W)`` token embeddings, ``L`` up to the context length, and each row's end-of-text position
        ``(N,)`` -> ``(N, E)`` text features. Under the causal mask no position after a row's end of text reaches
        its feature, so rows may be cut to their longest prompt."""
        length = x.shape[1]
        x = x + self.positional_embedding[:length]
        for block in self.blocks:
            x = block(x, self.causal_mask[:length, :length])
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), eot] @ self.text_projection + self.projection_bias


# ------------------------------------------------------------------------------------------- class names

DEFAULT_TEMPLATES = ("a video of a person doing {class}.", "a photo of a person doing {class}.",
                     "a person is doing {class}.", "a video of {class}.", "a clip of someone doing {class}.")
# word boundaries inside a name: lower->Upper, the last capital of an acronym before a word, letter<->digit
_CAMEL = stdlib_re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])"
                           r"|(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])")


def class_phrase(name: str) -> str:
    """A class name as words: ``CricketBowling`` -> ``cricket bowling``, ``Playing_guitar`` -> ``playing guitar``."""
    spaced = _CAMEL.sub(" ", name.replace("_", " ").replace("-", " "))
    return " ".join(spaced.split()).lower()


@torch.no_grad()
def class_text_embeddings(tower: ClipTextTower, tokenizer: ClipTokenizer, classes: list[str],
                          templates: tuple[str, ...] = DEFAULT_TEMPLATES) -> np.ndarray:
    """``(C, E)`` float32 unit rows: per class, the normalised mean of its normalised prompt embeddings
    (CLIP's prompt ensembling), each prompt a template with ``{class}`` replaced by :func:`class_phrase`."""
    bad = [t for t in templates if "{class}" not in t]
    if not templates or bad:
        raise WtalInputError(f"prompt template {bad[0]!r} has no {{class}} placeholder" if bad else "no templates",
                             fix='write templates like "a video of a person doing {class}."')
    rows = []
    for name in classes:
        prompts = [t.replace("{class}", class_phrase(name)) for t in templates]
        features = tower(tokenizer(prompts).to(tower.positional_embedding.device))
        features = features / features.norm(dim=-1, keepdim=True)
        mean = features.mean(dim=0)
        rows.append(mean / mean.norm())
    return torch.stack(rows).cpu().numpy().astype(np.float32)
