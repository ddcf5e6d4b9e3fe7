"""CLIP's text tower and BPE tokenizer read from files in open_clip's layouts, and `wtal embed-classes`."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch
from test_engine_data import write_tiny

from wtal.cli import main
from wtal.data.sources import open_source
from wtal.errors import WtalInputError

pytest.importorskip("regex")  # the tokenizer's Unicode classes (the dev and clip extras install it)

from wtal.text.clip_text import (  # noqa: E402
    ClipTextTower,
    ClipTokenizer,
    bytes_to_unicode,
    class_phrase,
    class_text_embeddings,
    load_state_dict,
)

WIDTH, LAYERS, CONTEXT, EMBED = 128, 2, 12, 24  # 2 heads of 64


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    """A tiny BPE file in CLIP's format: a header line, then merges in rank order."""
    path = tmp_path_factory.mktemp("vocab") / "bpe_tiny.txt.gz"
    merges = ["h e", "he l", "l o</w>", "hel lo</w>", "d o</w>", "i n", "in g</w>"]
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return path


def test_tokenizer_ids_hand_solved(vocab):
    tok = ClipTokenizer(vocab, context_length=8)
    table = list(bytes_to_unicode().values())
    byte = {ch: i for i, ch in enumerate(table)}  # single symbols: 0..255; end-of-word forms: 256..511
    merge = {m: 512 + i for i, m in enumerate(["he", "hel", "lo</w>", "hello</w>", "do</w>", "in", "ing</w>"])}
    assert tok.sot == 512 + 7 and tok.eot == 512 + 8
    # "Hello" -> lower -> h e l l o</w> -> he -> hel -> lo</w> -> hello</w>
    assert tok.encode("Hello") == [merge["hello</w>"]]
    # "doing" -> d o i n g</w>: no "d o" merge inside a word (only "d o</w>"), then in, ing</w>
    assert tok.encode("doing") == [byte["d"], byte["o"], merge["ing</w>"]]
    # punctuation is its own pre-token; "a" alone is an end-of-word symbol; entities are unescaped
    assert tok.encode("a &amp;hello!") == [256 + byte["a"], 256 + byte["&"], merge["hello</w>"], 256 + byte["!"]]
    rows = tok(["hello do", "hello " * 10])
    assert rows[0].tolist() == [tok.sot, merge["hello</w>"], merge["do</w>"], tok.eot, 0, 0, 0, 0]
    assert rows[1, -1] == tok.eot and rows[1, 0] == tok.sot  # truncated to the context, eot kept last


def _random_state(projection: str = "parameter", prefix: str = "") -> dict[str, torch.Tensor]:
    """Random text-tower weights in open_clip's CLIP layout (plus image-tower keys that must be ignored)."""
    g = torch.Generator().manual_seed(0)

    def r(*shape, scale=0.05):
        return scale * torch.randn(*shape, generator=g)

    state = {"token_embedding.weight": r(600, WIDTH, scale=0.5), "positional_embedding": r(CONTEXT, WIDTH),
             "ln_final.weight": 1 + r(WIDTH), "ln_final.bias": r(WIDTH), "logit_scale": torch.tensor(4.6),
             "visual.conv1.weight": r(8, 3, 2, 2)}
    for i in range(LAYERS):
        p = f"transformer.resblocks.{i}."
        state.update({p + "ln_1.weight": 1 + r(WIDTH), p + "ln_1.bias": r(WIDTH), p + "ln_2.weight": 1 + r(WIDTH),
                      p + "ln_2.bias": r(WIDTH), p + "attn.in_proj_weight": r(3 * WIDTH, WIDTH),
                      p + "attn.in_proj_bias": r(3 * WIDTH), p + "attn.out_proj.weight": r(WIDTH, WIDTH),
                      p + "attn.out_proj.bias": r(WIDTH), p + "mlp.c_fc.weight": r(4 * WIDTH, WIDTH),
                      p + "mlp.c_fc.bias": r(4 * WIDTH), p + "mlp.c_proj.weight": r(WIDTH, 4 * WIDTH),
                      p + "mlp.c_proj.bias": r(WIDTH)})
    if projection == "parameter":
        state["text_projection"] = r(WIDTH, EMBED, scale=0.2)
    else:
        state["text_projection.weight"] = r(EMBED, WIDTH, scale=0.2)
        state["text_projection.bias"] = r(EMBED)
    return {(prefix + k if not k.startswith("visual") else k): v for k, v in state.items()}


def _reference_encode(state: dict[str, torch.Tensor], tokens: torch.Tensor, quick: bool) -> torch.Tensor:
    """open_clip's encode_text written with torch's own MultiheadAttention and LayerNorm."""
    x = torch.nn.functional.embedding(tokens, state["token_embedding.weight"]) + state["positional_embedding"]
    mask = torch.full((CONTEXT, CONTEXT), float("-inf")).triu(1)
    for i in range(LAYERS):
        p = f"transformer.resblocks.{i}."
        attn = torch.nn.MultiheadAttention(WIDTH, WIDTH // 64, batch_first=True)
        attn.load_state_dict({"in_proj_weight": state[p + "attn.in_proj_weight"],
                              "in_proj_bias": state[p + "attn.in_proj_bias"],
                              "out_proj.weight": state[p + "attn.out_proj.weight"],
                              "out_proj.bias": state[p + "attn.out_proj.bias"]})
        h = torch.nn.functional.layer_norm(x, (WIDTH,), state[p + "ln_1.weight"], state[p + "ln_1.bias"])
        x = x + attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = torch.nn.functional.layer_norm(x, (WIDTH,), state[p + "ln_2.weight"], state[p + "ln_2.bias"])
        h = torch.nn.functional.linear(h, state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h) if quick else torch.nn.functional.gelu(h)
        x = x + torch.nn.functional.linear(h, state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"])
    x = torch.nn.functional.layer_norm(x, (WIDTH,), state["ln_final.weight"], state["ln_final.bias"])
    pooled = x[torch.arange(len(tokens)), tokens.argmax(dim=-1)]
    if "text_projection" in state:
        return pooled @ state["text_projection"]
    return torch.nn.functional.linear(pooled, state["text_projection.weight"], state["text_projection.bias"])


@pytest.mark.parametrize(("projection", "prefix", "activation"),
                         [("parameter", "", "quick_gelu"), ("linear", "text.", "gelu"), ("parameter", "", "gelu")])
def test_text_tower_equals_the_reference_definition(projection, prefix, activation):
    state = _random_state(projection, prefix)
    tower = ClipTextTower.from_state_dict(state, activation)
    tokens = torch.tensor([[598, 5, 17, 599, 0, 0, 0, 0, 0, 0, 0, 0],
                           [598, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 599]])
    plain = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    with torch.no_grad():
        expected = _reference_encode(plain, tokens, quick=activation == "quick_gelu")
        torch.testing.assert_close(tower(tokens), expected, rtol=1e-5, atol=1e-5)
        other = ClipTextTower.from_state_dict(state, "gelu" if activation == "quick_gelu" else "quick_gelu")
        assert not torch.allclose(other(tokens), expected, atol=1e-4)  # the activation matters


def test_checkpoint_files_in_every_format(tmp_path):
    state = _random_state()
    nested = tmp_path / "open_clip.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, nested)
    st = tmp_path / "open_clip_model.safetensors"
    header, blobs, offset = {}, [], 0
    for k, v in state.items():
        data = v.numpy().astype("<f4").tobytes()
        header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    st.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))
    for path in (nested, st):
        loaded = load_state_dict(path)
        assert set(loaded) == set(state)
        torch.testing.assert_close(loaded["text_projection"], state["text_projection"])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WtalInputError, match="not a readable checkpoint"):
        load_state_dict(tmp_path / "junk.pt")
    with pytest.raises(WtalInputError, match="no CLIP text tower"):
        ClipTextTower.from_state_dict({"visual.conv1.weight": torch.zeros(1)})
    broken = dict(state)
    del broken["transformer.resblocks.1.mlp.c_fc.bias"]
    with pytest.raises(WtalInputError, match="not in CLIP's layout"):
        ClipTextTower.from_state_dict(broken)


def test_class_phrases():
    assert class_phrase("CricketBowling") == "cricket bowling"
    assert class_phrase("CleanAndJerk") == "clean and jerk"
    assert class_phrase("Playing_guitar") == "playing guitar"
    assert class_phrase("Using the pommel horse") == "using the pommel horse"
    assert class_phrase("HTMLParser2Go") == "html parser 2 go"


def test_embed_classes_command_writes_class_text_the_source_reads(tmp_path, vocab, capsys):
    data = write_tiny(tmp_path / "data")["wtalc"]
    weights = tmp_path / "clip.pt"
    torch.save(_random_state(), weights)
    assert main(["embed-classes", "--clip-weights", str(weights), "--vocab", str(vocab), "--data", str(data),
                 "--templates", "a video of a person doing {class}.", "{class}"]) == 0
    assert "3 classes x 24-d" in capsys.readouterr().out
    source = open_source(data)
    emb = source.class_text()
    assert emb.shape == (3, EMBED) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    tower = ClipTextTower.from_state_dict(_random_state())
    tok = ClipTokenizer(vocab, context_length=CONTEXT)
    classes = list(source.annotations.classes)
    one = class_text_embeddings(tower, tok, classes, ("a video of a person doing {class}.",))
    two = class_text_embeddings(tower, tok, classes, ("{class}",))
    mean = one + two  # both unit rows: the normalised mean is the normalised sum
    np.testing.assert_allclose(emb, mean / np.linalg.norm(mean, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert main(["embed-classes", "--clip-weights", str(weights), "--vocab", str(vocab), "--data", str(data),
                 "--templates", "no placeholder"]) == 2


def test_equal_to_open_clip_when_it_is_installed(vocab):
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32-quickgelu")
    tokens = tokenizer(["a video of a person doing cricket bowling.", "Café déjà vu — 東京"])
    from open_clip.tokenizer import default_bpe

    assert torch.equal(ClipTokenizer(default_bpe())(["a video of a person doing cricket bowling.",
                                                       "Café déjà vu — 東京"]), tokens)
    with torch.no_grad():
        tower = ClipTextTower.from_state_dict(model.state_dict(), "quick_gelu")
        torch.testing.assert_close(tower(tokens), model.encode_text(tokens), rtol=1e-4, atol=1e-4)
