"""Learnable prompt context (wtal.text.prompt) and the VLP branch built on it, with a tiny random CLIP text tower."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_clip_text import CONTEXT, EMBED, _random_state, vocab  # noqa: F401  (vocab: a pytest fixture)
from test_engine_data import write_tiny

from wtal.cli import main
from wtal.data.batch import Batch
from wtal.errors import WtalInputError
from wtal.models.base import ModelContext
from wtal.models.factory import build_model

pytest.importorskip("regex")  # the tokenizer's Unicode classes (the dev and clip extras install it)

from wtal.text.clip_text import ClipTextTower, ClipTokenizer  # noqa: E402
from wtal.text.prompt import PromptLearner, prompt_token_rows  # noqa: E402

CLASSES = ("Hello", "Doing", "HelloDo")  # phrases "hello", "doing", "hello do" in the tiny vocabulary


@pytest.fixture()
def files(tmp_path, vocab):  # noqa: F811
    weights = tmp_path / "clip.pt"
    torch.save(_random_state(), weights)
    return weights, vocab


def _tower_and_tokenizer(files):
    weights, vocab_path = files
    tower = ClipTextTower.from_state_dict(torch.load(weights))
    return tower, ClipTokenizer(vocab_path, context_length=CONTEXT)


def test_prompt_rows_hold_placeholders_then_the_class_phrase(files):
    _, tok = _tower_and_tokenizer(files)
    ids, eot = prompt_token_rows(tok, list(CLASSES), 2, CONTEXT)
    expected = [[tok.sot, 0, 0, *tok.encode("hello."), tok.eot], [tok.sot, 0, 0, *tok.encode("doing."), tok.eot],
                [tok.sot, 0, 0, *tok.encode("hello do."), tok.eot]]
    longest = max(len(r) for r in expected)
    assert ids.tolist() == [r + [0] * (longest - len(r)) for r in expected]
    assert eot.tolist() == [len(r) - 1 for r in expected]
    with pytest.raises(WtalInputError, match="over the text tower's context of 12") as err:
        prompt_token_rows(tok, list(CLASSES), 9, CONTEXT)
    assert "prompt_context" in err.value.fix


def test_untrained_prompts_are_the_towers_features_of_the_initial_words(files):
    """Context started at the token embeddings of "hello do": the learner's class rows equal the tower's features
    of the full-length token rows of "hello do {class phrase}." (rows cut to the longest prompt change nothing)."""
    tower, tok = _tower_and_tokenizer(files)
    learner = PromptLearner(tower, tok, list(CLASSES), 2, init="hello do")
    with torch.no_grad():
        expected = tower(tok(["hello do hello.", "hello do doing.", "hello do hello do."]))
        torch.testing.assert_close(learner(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(WtalInputError, match="is 2 tokens, the context 3") as err:
        PromptLearner(tower, tok, list(CLASSES), 3, init="hello do")
    assert "prompt_context to 2" in err.value.fix


def test_rows_without_gradients_are_reused_until_the_context_changes(files):
    tower, tok = _tower_and_tokenizer(files)
    learner = PromptLearner(tower, tok, list(CLASSES), 2)
    with torch.no_grad():
        first = learner()
        assert learner() is first
    optimizer = torch.optim.SGD([learner.context], lr=1.0)
    learner().sum().backward()  # with gradients: always computed afresh
    optimizer.step()
    with torch.no_grad():
        after = learner()
        assert after is not first and not torch.allclose(after, first)
        torch.testing.assert_close(after, learner.encode())


def _context() -> ModelContext:
    return ModelContext({"clip": EMBED}, CLASSES)


def _prompt_params(files) -> dict:
    weights, vocab_path = files
    return {"prompt_context": 2, "prompt_init": "hello do", "text_encoder": str(weights), "text_vocab": str(vocab_path),
            "text_residual": False, "dropout": 0.0}


def _batch(rng, n=6, length=9) -> Batch:
    x = torch.as_tensor(rng.normal(size=(n, length, EMBED)).astype(np.float32))
    labels = torch.as_tensor(np.eye(len(CLASSES), dtype=np.float32)[np.arange(n) % len(CLASSES)])
    return Batch(inputs={"clip": x}, mask=torch.ones(n, length, dtype=torch.bool), labels=labels,
                 names=[f"v{i}" for i in range(n)], index=torch.arange(n), fields={})


def test_only_the_context_learns_and_a_checkpoint_holds_only_it(files):
    """A VLP branch on prompts needs no class_text.npy; training moves the context and nothing of the tower; its
    state dict has the context and not the tower; a branch rebuilt from the same files and that state dict
    scores identically; 40 steps on the context alone lower the MIL loss on a fixed batch."""
    torch.manual_seed(0)
    model = build_model("vlp", _context(), temporal="none", **_prompt_params(files))
    tower_before = {k: v.clone() for k, v in model.prompts.tower.state_dict().items()}
    context_before = model.prompts.context.detach().clone()
    batch = _batch(np.random.default_rng(0))
    optimizer = torch.optim.Adam([model.prompts.context], lr=0.05)
    losses = []
    for _ in range(40):
        loss = model.losses(model(batch), batch, 0)["total"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0]
    assert not torch.equal(model.prompts.context, context_before)
    assert all(torch.equal(v, tower_before[k]) for k, v in model.prompts.tower.state_dict().items())
    assert all(not p.requires_grad for p in model.prompts.tower.parameters())
    state = model.state_dict()
    assert "prompts.context" in state and not any("token_embedding" in k or "blocks" in k for k in state)
    rebuilt = build_model("vlp", _context(), temporal="none", **_prompt_params(files))
    rebuilt.load_state_dict(state)
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(batch).cas_logits, model(batch).cas_logits)


def test_model_moves_reach_the_tower(files):
    model = build_model("vlp", _context(), temporal="none", **_prompt_params(files)).double()
    assert model.prompts.tower.token_embedding.weight.dtype == torch.float64
    batch = _batch(np.random.default_rng(1))
    batch.inputs["clip"] = batch.inputs["clip"].double()
    assert model(batch).cas_logits.dtype == torch.float64


def test_prompt_settings_are_checked(files, tmp_path):
    params = _prompt_params(files)
    with pytest.raises(WtalInputError, match="needs model.params.text_encoder and model.params.text_vocab"):
        build_model("vlp", _context(), prompt_context=2)
    with pytest.raises(WtalInputError, match="model.params.text_encoder: no such file"):
        build_model("vlp", _context(), **{**params, "text_encoder": str(tmp_path / "missing.pt")})
    with pytest.raises(WtalInputError, match="text_activation"):
        build_model("vlp", _context(), **{**params, "text_activation": "relu"})
    with pytest.raises(WtalInputError, match="are 24-d but the 'clip' stream is 8-d"):
        build_model("vlp", ModelContext({"clip": 8}, CLASSES), **params)


def test_rskp_vlp_trains_and_predicts_on_learnt_prompts_from_the_cli(tmp_path, files):
    """``rskp_vlp`` with the VLP teacher on prompts (one learnable context token; no class_text.npy read): train,
    then ``predict --teacher-weight`` rebuilds the tower from the files and uses the saved context."""
    weights, vocab_path = files
    data = write_tiny(tmp_path / "data", clip_dim=EMBED)["wtalc"]
    for text in (tmp_path / "data").rglob("class_text.npy"):
        text.unlink()
    run = tmp_path / "run"
    prompt = [f"teacher.model.params.{k}={v}" for k, v in
              {"prompt_context": 1, "text_encoder": weights, "text_vocab": vocab_path}.items()]
    argv = ["train", "--config", "rskp_vlp", "--data", str(data), "--out", str(run), "--epochs", "2",
            *(x for s in [*prompt, "train.progress=false"] for x in ("--set", s))]
    assert main(argv) == 0
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert saved["teacher"]["prompts.context"].shape == (1, 128)
    assert main(["predict", "--run", str(run), "--out", str(tmp_path / "fused.json"), "--teacher-weight", "0.5"]) == 0
    assert (tmp_path / "fused.json").is_file()
