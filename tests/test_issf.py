"""ISSF: saliency selection, interaction units (blocked vs straight attention), memory, losses, test recipe,
training engine (resume, no test video in the memory) and its configs."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import as_double, collate_joint, joint_context
from test_engine import ConstantPlugin, _cfg
from test_engine_data import tiny_data  # noqa: F401  (pytest fixture)

from wtal.engine.config import resolve_config
from wtal.engine.trainer import Trainer
from wtal.models import build_model
from wtal.models.class_memory import read_class_memory
from wtal.models.issf import attend, attention_pool, memory_momentum, salient_snippets
from wtal.models.losses import softened_cross_entropy
from wtal.models.masked import l2_normalize

DIM, CLASSES = 32, 4
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _features(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).unsqueeze(0)


def _model(**params) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("issf", joint_context(DIM, CLASSES), **params).double()


def _batch(lengths=(9, 23, 14), seed=0, labels=None):
    rng = np.random.default_rng(seed)
    if labels is None:
        labels = [np.eye(CLASSES)[i % CLASSES] for i in range(len(lengths))]
    items = [(rng.normal(size=(t, DIM)) * 2.0, np.asarray(labels[i]), f"v{i}", i) for i, t in enumerate(lengths)]
    return as_double(collate_joint(items))


# ------------------------------------------------------------------------------------------ saliency
def test_salient_snippets_hand_solved():
    # 1-d features 0, 0, 5, 5, 5, 1, 1, 1: d = |x_t - x_{t-1}| (x_{-1} = 0) = 0, 0, 5, 0, 0, 4, 0, 0;
    # k = floor(0.5 * 8) - 1 = 3: snippets 2 (5), 5 (4) and, by time order among the zeros, 0;
    # their predecessors 1 and 4 (snippet 0 has none) -> {0, 1, 2, 4, 5}
    x = _features([[0.0], [0.0], [5.0], [5.0], [5.0], [1.0], [1.0], [1.0]])
    mask = torch.ones(1, 8, dtype=torch.bool)
    salient = salient_snippets(x, mask, 0.5)
    assert torch.nonzero(salient[0]).flatten().tolist() == [0, 1, 2, 4, 5]
    # the released code's index -1: snippet 0's "predecessor" is the last snippet
    wrapped = salient_snippets(x, mask, 0.5, wrap=True)
    assert torch.nonzero(wrapped[0]).flatten().tolist() == [0, 1, 2, 4, 5, 7]
    # the change sums |difference| over the feature dimensions
    x2 = _features([[1.0, 1.0], [1.0, 3.0], [4.0, 0.0], [4.0, 0.0], [3.0, 0.0], [3.0, 0.0]])  # d = 2, 2, 6, 0, 1, 0
    top = salient_snippets(x2, torch.ones(1, 6, dtype=torch.bool), 0.5)  # k = 2: snippets 2 and 0 (tie 0/1)
    assert torch.nonzero(top[0]).flatten().tolist() == [0, 1, 2]


def test_salient_snippets_respect_padding_and_short_videos():
    x = _features([[0.0], [0.0], [5.0], [5.0], [5.0], [1.0], [1.0], [1.0]])
    padded = torch.cat([x, torch.full((1, 4, 1), 100.0, dtype=torch.float64)], dim=1)  # huge padded changes
    mask = torch.arange(12).unsqueeze(0) < 8
    for wrap in (False, True):
        alone = salient_snippets(x, torch.ones(1, 8, dtype=torch.bool), 0.5, wrap)
        got = salient_snippets(padded, mask, 0.5, wrap)
        assert torch.equal(got[:, :8], alone) and not got[:, 8:].any()  # wrap goes to the last REAL snippet
    # floor(0.5 T) - 1 < 1 for T <= 3: one snippet (and its predecessor) stays salient, never an empty set
    short = _features([[1.0], [4.0], [4.0]])
    assert torch.nonzero(salient_snippets(short, torch.ones(1, 3, dtype=torch.bool), 0.5)[0]).flatten().tolist() \
        == [0, 1]
    assert salient_snippets(_features([[2.0]]), torch.ones(1, 1, dtype=torch.bool), 0.5).tolist() == [[True]]


# ----------------------------------------------------------------------------------------- attention
def _straight_attention(queries, keys):
    """softmax(Q K^T) K written out for one video and one unmasked key set."""
    weights = torch.exp(queries @ keys.T - (queries @ keys.T).max(dim=1, keepdim=True).values)
    return (weights / weights.sum(dim=1, keepdim=True)) @ keys


def test_blocked_attention_equals_the_straight_formula_with_gradients():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 37, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 11, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    key_mask = torch.arange(11).unsqueeze(0) < torch.tensor([[11], [7]])
    block = 2 * 11 * 5  # 5 query rows per block: 8 blocks, the last one short
    blocked = attend(q, k, key_mask, block_elements=block)
    weights = torch.randn(blocked.shape, generator=gen, dtype=torch.float64)
    grads_blocked = torch.autograd.grad((blocked * weights).sum(), [q, k])
    for b, n in enumerate((11, 7)):
        torch.testing.assert_close(blocked[b], _straight_attention(q[b], k[b, :n]), atol=1e-12, rtol=0)
    straight = attention_pool(q, torch.where(key_mask[..., None], k, 0.0), key_mask)
    grads_straight = torch.autograd.grad((straight * weights).sum(), [q, k])
    for g_blocked, g_straight in zip(grads_blocked, grads_straight, strict=True):
        torch.testing.assert_close(g_blocked, g_straight, atol=1e-12, rtol=0)
    assert torch.all(grads_blocked[1][1, 7:] == 0)  # padded keys get no gradient
    with torch.no_grad():
        torch.testing.assert_close(attend(q, k, key_mask, block_elements=block), blocked, atol=0, rtol=0)


def test_attention_to_an_empty_set_gives_zero():
    q = torch.randn(1, 4, 3, dtype=torch.float64)
    k = torch.randn(1, 2, 3, dtype=torch.float64)
    out = attend(q, k, torch.zeros(1, 2, dtype=torch.bool))
    assert torch.equal(out, torch.zeros_like(out))


def test_refinement_equals_a_one_video_reimplementation():
    """The reference's loop: nonzero indices, gated sets, softmax(X S'^T) S', mixed by lambda."""
    model = _model(dropout=0.0).eval()
    batch = _batch()
    out = model(batch)
    lam = model.hp.nonsalient_weight
    for b, length in enumerate(batch.mask.sum(dim=1).tolist()):
        x = out.extras["x"][b, :length]
        salient = out.extras["salient"][b, :length]
        units = []
        for members, gate in ((salient, model.salient_gate), (~salient, model.nonsalient_gate)):
            s = x[torch.nonzero(members).flatten()]
            s = s + torch.softmax(gate(s), dim=-1) * s
            units.append(torch.softmax(x @ s.T, dim=-1) @ s)
        torch.testing.assert_close(out.extras["refined"][b, :length], (1 - lam) * units[0] + lam * units[1],
                                   atol=1e-12, rtol=1e-10)


# -------------------------------------------------------------------------------------------- memory
def _memory_model(slots=2, **params):
    model = build_model("issf", joint_context(2, 3), memory_slots=slots, embed_dim=2, dropout=0.0, **params)
    return model.double()


def test_memory_update_keeps_the_top_scored_salient_features(monkeypatch):
    model = _memory_model()
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
    scores = torch.tensor([[[0.5, 0.1, 0.0, 0.4], [0.2, 0.7, 0.0, 0.1], [0.9, 0.3, 0.0, 0.0]]], dtype=torch.float64)
    valid = torch.ones(1, 3, dtype=torch.bool)
    monkeypatch.setattr(model, "salient_candidates", lambda out: (feats, valid, scores))
    model.update_memory(None, torch.tensor([[1.0, 1.0, 0.0]]), epoch=5)
    torch.testing.assert_close(model.memory_scores, torch.tensor([[0.9, 0.5], [0.7, 0.3], [0.0, 0.0]],
                                                                 dtype=torch.float64))
    torch.testing.assert_close(model.memory[0], torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(model.memory[1], torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float64))
    assert torch.all(model.memory[2] == 0)  # not a label of the video
    # a second video with an invalid (padded) candidate that would otherwise win
    feats2 = torch.tensor([[[2.0, 0.0], [9.0, 9.0]]], dtype=torch.float64)
    scores2 = torch.tensor([[[0.6, 0.0, 0.0, 0.4], [1.0, 0.0, 0.0, 0.0]]], dtype=torch.float64)
    monkeypatch.setattr(model, "salient_candidates",
                        lambda out: (feats2, torch.tensor([[True, False]]), scores2))
    model.update_memory(None, torch.tensor([[1.0, 0.0, 0.0]]), epoch=5)
    torch.testing.assert_close(model.memory_scores[0], torch.tensor([0.9, 0.6], dtype=torch.float64))
    torch.testing.assert_close(model.memory[0], torch.tensor([[1.0, 1.0], [2.0, 0.0]], dtype=torch.float64))


def test_published_memory_index_reads_and_updates_class_0_once_per_label(monkeypatch):
    """The released loop's index: a video of classes 1 and 2 merges its candidates into class 0's memory twice,
    scored by class 0's probability (the second merge meets the first one's copies: stored first on ties), and
    reads class 0's entries once per label; classes 1 and 2 stay empty."""
    model = _memory_model(slots=3)
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    scores = torch.tensor([[[0.6, 0.1, 0.2, 0.1], [0.3, 0.5, 0.1, 0.1]]], dtype=torch.float64)
    monkeypatch.setattr(model, "salient_candidates", lambda out: (feats, torch.ones(1, 2, dtype=torch.bool), scores))
    labels = torch.tensor([[0.0, 1.0, 1.0]])
    model.update_memory(None, labels, epoch=5, published_index=True)
    torch.testing.assert_close(model.memory_scores[0], torch.tensor([0.6, 0.6, 0.3], dtype=torch.float64))
    torch.testing.assert_close(model.memory[0], torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]],
                                                             dtype=torch.float64))
    assert torch.all(model.memory[1:] == 0) and torch.all(model.memory_scores[1:] == 0)
    entries, mask = read_class_memory(model.memory, labels, first_class_only=True)
    torch.testing.assert_close(entries[0], torch.cat([model.memory[0], model.memory[0]]))
    assert mask.all()
    model.update_memory(None, labels, epoch=5)  # the default: the video's classes, scored by their probabilities
    torch.testing.assert_close(model.memory_scores[1:], torch.tensor([[0.5, 0.1, 0.0], [0.2, 0.1, 0.0]],
                                                                    dtype=torch.float64))


def test_memory_update_blends_with_momentum_after_the_momentum_epoch(monkeypatch):
    model = _memory_model(slots=1, momentum_epoch=10, momentum_total_epochs=20)
    model.memory[0, 0] = torch.tensor([4.0, 0.0], dtype=torch.float64)
    model.memory_scores[0, 0] = 0.1
    feats = torch.tensor([[[0.0, 2.0]]], dtype=torch.float64)
    scores = torch.tensor([[[0.7, 0.0, 0.0, 0.3]]], dtype=torch.float64)
    monkeypatch.setattr(model, "salient_candidates", lambda out: (feats, torch.ones(1, 1, dtype=torch.bool), scores))
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    model.update_memory(None, labels, epoch=10)  # not after the momentum epoch: replaced
    torch.testing.assert_close(model.memory[0, 0], torch.tensor([0.0, 2.0], dtype=torch.float64))
    model.memory[0, 0] = torch.tensor([4.0, 0.0], dtype=torch.float64)
    model.memory_scores[0, 0] = 0.1
    model.update_memory(None, labels, epoch=20)  # m = 0.5 log(e^(20/20) + 1)
    m = 0.5 * math.log(math.e + 1.0)
    torch.testing.assert_close(model.memory[0, 0], torch.tensor([4.0 * m, 2.0 * (1 - m)], dtype=torch.float64))
    assert model.memory_scores[0, 0].item() == pytest.approx(0.7)  # the kept candidate's score
    assert memory_momentum(0, 180) == pytest.approx(0.5 * math.log(2.0))


def test_memory_candidates_are_the_salient_features_scored_by_the_head():
    model = _model(dropout=0.0).eval()
    batch = _batch()
    out = model(batch)
    entries, valid, scores = model.salient_candidates(out)
    for b in range(3):
        want = out.extras["x"][b][out.extras["salient"][b]]
        torch.testing.assert_close(entries[b][valid[b]], want)
        cos = l2_normalize(want) @ l2_normalize(model.head.class_centers).T
        torch.testing.assert_close(scores[b][valid[b]], torch.softmax(20.0 * cos, dim=-1))


def test_memory_switched_off_is_never_filled():
    model = _model(memory_init_epoch=2, discrimination_memory=False)
    model.on_epoch_end(2, lambda: iter([_batch()]))
    assert torch.all(model.memory == 0)


# -------------------------------------------------------------------------------------------- losses
def _straight_memory_branch(model, out, labels, b, length):
    """softmax(F M^T) M over the entries of video b's positive classes, through the head."""
    entries = torch.cat([model.memory[c] for c in torch.nonzero(labels[b] > 0.5).flatten().tolist()])
    refined = out.extras["refined"][b:b + 1, :length]
    recalled = torch.softmax(refined @ entries.T, dim=-1) @ entries
    return model.head(recalled, torch.ones(1, length, dtype=torch.bool))


def test_losses_and_pseudo_labels_as_the_method():
    model = _model(dropout=0.0)
    model.memory.normal_()
    model.memory_scores.uniform_()
    batch = _batch(labels=[[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]])
    model.eval()  # no memory update: the straight recomputation reads the same memory
    out = model(batch)
    before, after = model.losses(out, batch, epoch=1), model.losses(out, batch, epoch=2)
    base, saliency = out.extras["base"], out.extras["saliency"]
    for b, length in enumerate(batch.mask.sum(dim=1).tolist()):
        r = _straight_memory_branch(model, out, batch.labels, b, length)
        one = torch.ones(1, length, dtype=torch.bool)
        target = 0.2 * r.logits + 0.8 * saliency.logits[b:b + 1, :length]
        spl = softened_cross_entropy(base.logits[b:b + 1, :length], target, one, 0.2)
        torch.testing.assert_close(after["spl"][b:b + 1], spl)
        spl_early = softened_cross_entropy(base.logits[b:b + 1, :length], saliency.logits[b:b + 1, :length], one, 0.2)
        torch.testing.assert_close(before["spl"][b:b + 1], spl_early)
        y = batch.labels[b:b + 1]
        fore_r = -(torch.log_softmax(r.ca_logits, -1)[:, :CLASSES] * y / y.sum()).sum()
        torch.testing.assert_close(after["fore"][b] - before["fore"][b], 0.5 * fore_r)
    for losses, w_spl in ((before, 1.0), (after, 0.5)):
        torch.testing.assert_close(losses["total"], losses["fore"] + 0.2 * losses["back"] + 0.1 * losses["att"]
                                   + w_spl * losses["spl"])


def test_switches_remove_their_module():
    batch = _batch()
    base_only = _model(boundary_refinement=False, discrimination_memory=False, dropout=0.0).train()
    assert not hasattr(base_only, "salient_gate")
    out = base_only(batch)
    assert "saliency" not in out.extras and "salient" not in out.extras
    losses = base_only.losses(out, batch, epoch=50)
    assert torch.all(losses["spl"] == 0) and torch.all(base_only.memory == 0)
    torch.testing.assert_close(out.video_scores, out.extras["base"].p_ca[:, :CLASSES])
    memory_only = _model(boundary_refinement=False, dropout=0.0).train()
    memory_only.memory.normal_()
    memory_only.memory_scores.fill_(-1.0)  # every candidate enters
    losses = memory_only.losses(memory_only(batch), batch, epoch=50)
    assert torch.all(losses["spl"] > 0)
    assert (memory_only.memory_scores > 0).any(dim=1).tolist() == [True, True, True, False]  # class 3: no video
    refinement_only = _model(discrimination_memory=False, dropout=0.0).train()
    refinement_only.memory.normal_()
    saved = refinement_only.memory.clone()
    refinement_only.losses(refinement_only(batch), batch, epoch=50)
    assert torch.equal(refinement_only.memory, saved)


def test_video_without_labels_skips_the_memory():
    model = _model(dropout=0.0).train()
    model.memory.normal_()
    batch = _batch(lengths=(8, 11))
    labels = torch.tensor([[0.0, 0, 0, 0], [0.0, 1, 0, 0]], dtype=torch.float64)
    scores_before = model.memory_scores.clone()
    losses = model.losses(model(batch), dataclasses.replace(batch, labels=labels), 50)
    assert all(torch.isfinite(v).all() for v in losses.values())
    assert (model.memory_scores != scores_before).any(dim=1).tolist() == [False, True, False, False]


def test_test_recipe_and_distillation_branches():
    model = _model(test_cas_weights=(0.7, 0.3)).eval()
    batch = _batch()
    out = model(batch)
    cas, video = model.localization_scores(out, batch.mask)
    base, saliency = out.extras["base"], out.extras["saliency"]
    expected = (0.7 * base.logits.softmax(-1) + 0.3 * saliency.logits.softmax(-1))[..., :CLASSES]
    torch.testing.assert_close(cas, expected * base.attention[..., None] * batch.mask[..., None])
    torch.testing.assert_close(video, (0.6 * base.p_ca + 0.4 * saliency.p_ca)[:, :CLASSES])
    assert [w for w, _ in model.distill_logits(out)] == [0.8, 0.2]
    assert model.distill_logits(out)[1][1] is saliency.logits


# ---------------------------------------------------------------------------------------- training
def _issf_cfg(tmp_path, data, epochs, *sets):
    return _cfg(tmp_path, data, model="issf", epochs=epochs,
                sets=["model.params.memory_init_epoch=0", "model.params.momentum_epoch=1",
                      "model.params.momentum_total_epochs=4", *sets])


def test_resume_after_a_kill_reproduces_weights_and_memory(tmp_path, tiny_data):  # noqa: F811
    cfg = _issf_cfg(tmp_path, tiny_data, 4, "model.params.dropout=0.5", "train.eval_every=2")
    straight = Trainer(cfg, tmp_path / "straight", device="cpu", plugins=[ConstantPlugin()])
    straight.fit()
    killed = Trainer(cfg, tmp_path / "killed", device="cpu", plugins=[ConstantPlugin(kill_at=3)])
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    assert killed.state.epoch == 3
    Trainer(cfg, tmp_path / "killed", device="cpu", plugins=[ConstantPlugin()]).fit(resume=True)
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert {"memory", "memory_scores"} <= set(a) and torch.any(a["memory_scores"] > 0)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_memory_never_sees_validation_or_test_videos(tmp_path, tiny_data, monkeypatch):  # noqa: F811
    cfg = _issf_cfg(tmp_path, tiny_data, 3, "train.eval_every=1")
    trainer = Trainer(cfg, None, device="cpu")
    model, seen, last = trainer.model, [], {}
    forward, update = model.forward, model.update_memory

    def recording_forward(batch):
        last["names"] = list(batch.names)
        return forward(batch)

    def recording_update(out, labels, epoch, **kwargs):
        seen.extend(last["names"])
        return update(out, labels, epoch, **kwargs)

    monkeypatch.setattr(model, "forward", recording_forward)
    monkeypatch.setattr(model, "update_memory", recording_update)
    trainer.fit()
    assert set(seen) == set(trainer.data.train.names)  # the init pass and every training step
    memory = model.memory.clone()
    trainer.evaluate("test")
    trainer.evaluate("val")
    assert torch.equal(model.memory, memory)


# ------------------------------------------------------------------------------------------- configs
def test_shipped_configs_are_the_reference_and_its_short_schedule():
    cfg = resolve_config(CONFIGS / "issf.yaml")
    p = cfg.model.params
    assert (cfg.train.epochs, cfg.data.batch_size, cfg.optim.lr, cfg.optim.weight_decay) == (180, 10, 5e-5, 5e-4)
    assert (p["salient_fraction"], p["nonsalient_weight"], p["memory_slots"], p["momentum_epoch"]) == (0.5, 0.12, 9, 85)
    short = resolve_config(CONFIGS / "issf.yaml", epochs=40)  # 4.5x: 2 videos per step, lr x 4.5
    sp = short.model.params
    assert short.data.batch_size == 2 and short.optim.lr == pytest.approx(5e-5 * 4.5)
    assert (sp["memory_init_epoch"], sp["momentum_epoch"], sp["momentum_total_epochs"]) == (1, 19, 40)


def test_shipped_config_trains_predicts_and_localizes_from_the_cli(tmp_path, tiny_data):  # noqa: F811
    """``issf.yaml`` at 3 epochs (memory filled after epoch index 1, momentum updates from index 2), then
    ``wtal predict --cas`` and ``wtal localize`` on its CAS."""
    from wtal.cli import main
    from wtal.data.sources import open_source

    run, preds, cas, located = tmp_path / "run", tmp_path / "p.json", tmp_path / "cas.npz", tmp_path / "l.json"
    assert main(["train", "--config", "issf", "--data", str(tiny_data["wtalc"]), "--out", str(run), "--epochs", "3",
                 "--set", "train.num_threads=1", "--set", "train.progress=false", "--device", "cpu"]) == 0
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert torch.any(saved["memory_scores"] > 0)
    assert main(["predict", "--run", str(run), "--out", str(preds), "--cas", str(cas), "--device", "cpu"]) == 0
    assert json.loads(preds.read_text()) == json.loads((run / "predictions" / "test.json").read_text())
    stored = np.load(cas)
    annotations = open_source(tiny_data["wtalc"]).annotations
    assert set(annotations.names("test")) <= set(stored.files)
    assert main(["localize", "--cas", str(cas), "--out", str(located), "--method", "nms"]) == 0
    results = json.loads(located.read_text())["results"]
    assert results and set(results) <= set(annotations.names("test"))
    assert {d["label"] for dets in results.values() for d in dets} <= set(annotations.classes)
