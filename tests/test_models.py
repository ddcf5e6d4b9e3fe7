"""Base models: masked ops, RSKP pieces (Woodbury, EM, memory), output contracts, factory."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import SMALL_MODELS, as_double, collate_joint, fill_label_store, joint_context, model_context

from wtal.data.batch import Batch
from wtal.errors import WtalInputError
from wtal.models import DETECTION_MODEL_NAMES, MODEL_NAMES, WtalModel, build_model
from wtal.models.losses import (
    attention_contrast,
    binary_cross_entropy,
    normalized_cross_entropy,
    softened_cross_entropy,
)
from wtal.models.masked import (
    masked_mean,
    masked_minmax_normalize,
    masked_softmax,
    masked_topk_mean,
    topk_count,
)
from wtal.models.rskp import propagate, propagate_dense, responsibilities

DIM, CLASSES = 32, 4


def _batch(lengths=(6, 17, 11), seed=0, dim=DIM, scale=1.0) -> Batch:
    rng = np.random.default_rng(seed)
    labels = [np.eye(CLASSES, dtype=np.float32)[i % CLASSES] for i in range(len(lengths))]
    labels[-1][(len(lengths)) % CLASSES] = 1.0  # one multi-label video
    return collate_joint([(rng.normal(size=(t, dim)).astype(np.float32) * scale, labels[i], f"v{i}", i)
                           for i, t in enumerate(lengths)])


def _model(name, **params):
    torch.manual_seed(0)
    return build_model(name, model_context(name, DIM, CLASSES), **{**SMALL_MODELS.get(name, {}), **params})


# ------------------------------------------------------------------------------------------- masked ops
def test_masked_topk_mean_uses_per_video_k_and_ignores_padding():
    x = torch.tensor([[5.0, 1.0, 3.0, 100.0], [2.0, 8.0, 4.0, 6.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    k = torch.tensor([2, 3])
    torch.testing.assert_close(masked_topk_mean(x, mask, k), torch.tensor([4.0, 6.0]))
    torch.testing.assert_close(masked_topk_mean(x, mask, k, largest=False), torch.tensor([2.0, 4.0]))


def test_topk_count_is_floor_of_true_length_at_least_one():
    mask = torch.arange(20).unsqueeze(0) < torch.tensor([1, 7, 8, 17, 20]).unsqueeze(1)
    assert topk_count(mask, 8.0).tolist() == [1, 1, 1, 2, 2]
    assert topk_count(mask, 4.0).tolist() == [1, 1, 2, 4, 5]


def test_masked_softmax_and_mean_exclude_padding():
    x = torch.tensor([[0.0, float(np.log(3.0)), 50.0]])
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(masked_softmax(x, mask), torch.tensor([[0.25, 0.75, 0.0]]))
    torch.testing.assert_close(masked_mean(x, mask), torch.tensor([float(np.log(3.0)) / 2]))


def test_masked_minmax_normalize_matches_reference_rule():
    x = torch.tensor([[[-1.0], [1.0], [3.0], [9.0]]])  # min < 0: ReLU'd min is 0 -> negative values clip to 0
    mask = torch.tensor([[True, True, True, False]])
    torch.testing.assert_close(masked_minmax_normalize(x, mask)[0, :, 0], torch.tensor([0.0, 1 / 3, 1.0, 0.0]))
    flat = torch.full((1, 3, 1), -2.0)  # max <= 0 -> range 1
    torch.testing.assert_close(masked_minmax_normalize(flat, torch.ones(1, 3, dtype=torch.bool)),
                               torch.zeros(1, 3, 1))


# ------------------------------------------------------------------------------------------------ losses
def test_loss_helpers_on_hand_values():
    log_p = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    target = torch.tensor([[1.0, 1.0, 0.0]])
    torch.testing.assert_close(normalized_cross_entropy(log_p, target),
                               torch.tensor([-(np.log(0.5) + np.log(0.25)) / 2], dtype=torch.float32))
    probs = torch.tensor([[0.2, 0.7, 1.0]])
    tgt = torch.tensor([[0.0, 0.5, 1.0]])
    torch.testing.assert_close(binary_cross_entropy(probs, tgt),
                               torch.nn.BCELoss(reduction="none")(probs, tgt).mean(dim=1, keepdim=False))
    att = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0]])
    mask = torch.ones_like(att, dtype=torch.bool)
    torch.testing.assert_close(attention_contrast(att, mask, 8.0), torch.tensor([0.0 - 0.9]))
    same = torch.randn(2, 5, 3)
    ce = softened_cross_entropy(same, same, torch.ones(2, 5, dtype=torch.bool), 0.2)
    p = torch.softmax(same / 0.2, -1)
    torch.testing.assert_close(ce, -(p * p.log()).sum(-1).mean(-1))  # CE of a distribution with itself


# --------------------------------------------------------------------------------------------------- RSKP
def test_woodbury_propagation_equals_dense_inverse():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 30, 16, generator=gen, dtype=torch.float64)
    bases = torch.randn(2, 8, 16, generator=gen, dtype=torch.float64)
    mask = torch.ones(2, 30, dtype=torch.bool)
    fast = propagate(x, mask, bases, 0.5, 5.0)
    # the dense closed form written out independently: (1-w) (I - w^2 Z^T Zh)^{-1} (X + w Z^T mu)
    z, z_hat = responsibilities(x, mask, bases, 5.0)
    dense = 0.5 * torch.linalg.inv(torch.eye(30, dtype=torch.float64) - 0.25 * z.transpose(1, 2) @ z_hat) @ (
        x + 0.5 * z.transpose(1, 2) @ bases)
    torch.testing.assert_close(fast, dense, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(propagate_dense(x, bases, 0.5, 5.0), dense, atol=1e-10, rtol=1e-9)


def test_woodbury_fixed_point_of_two_way_propagation():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 12, 6, generator=gen, dtype=torch.float64)
    bases = torch.randn(1, 3, 6, generator=gen, dtype=torch.float64)
    mask = torch.ones(1, 12, dtype=torch.bool)
    w = 0.5
    x_tilde = propagate(x, mask, bases, w, 5.0)
    z, z_hat = responsibilities(x, mask, bases, 5.0)
    m = w * z_hat @ x_tilde + (1 - w) * bases
    torch.testing.assert_close(x_tilde, w * z.transpose(1, 2) @ m + (1 - w) * x, atol=1e-12, rtol=0)


def test_propagation_ignores_padded_snippets_and_padded_bases():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 9, 6, generator=gen, dtype=torch.float64)
    bases = torch.randn(1, 4, 6, generator=gen, dtype=torch.float64)
    alone = propagate(x, torch.ones(1, 9, dtype=torch.bool), bases, 0.5, 5.0)
    x_pad = torch.cat([x, torch.randn(1, 5, 6, generator=gen, dtype=torch.float64)], dim=1)
    mask = torch.arange(14).unsqueeze(0) < 9
    bases_pad = torch.cat([bases, torch.randn(1, 3, 6, generator=gen, dtype=torch.float64)], dim=1)
    base_mask = torch.arange(7).unsqueeze(0) < 4
    x_pad = torch.where(mask.unsqueeze(-1), x_pad, torch.zeros(()))  # models zero padded snippets
    padded = propagate(x_pad, mask, bases_pad, 0.5, 5.0, base_mask)
    torch.testing.assert_close(padded[:, :9], alone, atol=1e-12, rtol=0)


def test_em_responsibilities_normalisation():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 10, 8, generator=gen)
    mask = torch.arange(10).unsqueeze(0) < torch.tensor([[10], [6]])
    z, z_hat = responsibilities(x, mask, torch.randn(2, 5, 8, generator=gen), 5.0)
    col = z.sum(dim=1)  # over bases
    torch.testing.assert_close(col, mask.float())
    torch.testing.assert_close(z_hat.sum(dim=2), torch.ones(2, 5), atol=1e-6, rtol=0)
    assert torch.all(z_hat[1, :, 6:] == 0)


def test_rskp_em_bases_are_responsibility_weighted_means():
    model = _model("rskp", dropout=0.0, em_iterations=1).double()
    batch = as_double(_batch())
    out = model(batch)
    x = out.extras["x"]
    _, z_hat = responsibilities(x, batch.mask, model.bases.unsqueeze(0).expand(3, -1, -1), 5.0)
    torch.testing.assert_close(out.extras["mu"], z_hat @ x)


def _memory_model(slots=2, dim=2, classes=3):
    model = build_model("rskp", joint_context(dim, classes), memory_slots=slots, num_bases=3, embed_dim=dim)
    return model


def test_memory_bank_keeps_top_scores_and_never_refreshes():
    model = _memory_model()
    mu = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # 3 bases, D=2
    pred = torch.tensor([[[0.5, 0.1, 0.0, 0.4], [0.2, 0.7, 0.0, 0.1], [0.9, 0.3, 0.0, 0.0]]])  # (1, K, C+1)
    model.update_memory(mu, pred, torch.tensor([[1.0, 1.0, 0.0]]))
    torch.testing.assert_close(model.memory_scores, torch.tensor([[0.9, 0.5], [0.7, 0.3], [0.0, 0.0]]))
    torch.testing.assert_close(model.memory[0], torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    torch.testing.assert_close(model.memory[1], torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
    assert torch.all(model.memory[2] == 0)  # a class not in the labels is untouched
    # a second video: only scores above the stored ones enter; stored entries keep their old scores
    mu2 = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [3.0, 3.0]]])
    pred2 = torch.tensor([[[0.6, 0.0, 0.0, 0.4], [0.1, 0.0, 0.0, 0.9], [0.95, 0.0, 0.0, 0.05]]])
    model.update_memory(mu2, pred2, torch.tensor([[1.0, 0.0, 0.0]]))
    torch.testing.assert_close(model.memory_scores[0], torch.tensor([0.95, 0.9]))
    torch.testing.assert_close(model.memory[0], torch.tensor([[3.0, 3.0], [1.0, 1.0]]))
    torch.testing.assert_close(model.memory_scores[1], torch.tensor([0.7, 0.3]))


def test_memory_read_uses_the_positive_classes_in_order():
    model = _memory_model()
    model.memory.copy_(torch.arange(12, dtype=torch.float32).reshape(3, 2, 2))
    bases, base_mask = model.read_memory(torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]))
    torch.testing.assert_close(bases[0], model.memory[1:].reshape(4, 2))
    torch.testing.assert_close(bases[1, :2], model.memory[0])
    assert base_mask.tolist() == [[True] * 4, [True, True, False, False]]


def test_rskp_reads_memory_before_its_own_update():
    torch.manual_seed(1)
    model = build_model("rskp", joint_context(DIM, CLASSES), dropout=0.0)
    model.memory.normal_()
    model.memory_scores.zero_()  # zero scores: every video's bases replace stored entries
    labels = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])  # same class: video 2 must not see video 1's update
    batch = dataclasses.replace(_batch(lengths=(9, 14)), labels=labels)
    before = model.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    model.train()
    trained = model.losses(model(batch), batch, 150)
    assert not torch.equal(model.memory, before["memory"])
    updated = {k: v.clone() for k, v in model.state_dict().items()}

    model.eval()  # eval mode: no update, so these recompute the losses from a fixed memory
    model.load_state_dict(before)
    from_before = model.losses(model(batch), batch, 150)
    model.load_state_dict(updated)
    from_after = model.losses(model(batch), batch, 150)
    torch.testing.assert_close(trained["fore"], from_before["fore"])
    assert not torch.allclose(trained["fore"], from_after["fore"])


@pytest.mark.parametrize("name, epoch_key, slots", [("rskp", "warmup_epoch", 5), ("issf", "memory_init_epoch", 9)])
def test_memory_initialised_at_the_end_of_its_epoch_in_eval_mode(name, epoch_key, slots):
    model = _model(name, **{epoch_key: 2})
    batch = _batch(lengths=(24, 30))  # labels: class 0, classes {1, 2}; class 3 has no video
    calls = []

    def batches():
        calls.append(model.training)
        yield batch

    model.train()
    model.on_epoch_end(1, batches)
    assert calls == [] and torch.all(model.memory == 0)
    model.on_epoch_end(2, batches)
    assert calls == [False] and model.training
    filled = (model.memory_scores > 0).sum(dim=1)
    assert filled.tolist() == [slots, slots, slots, 0]  # every video has enough candidates for its classes
    state = model.state_dict()
    assert "memory" in state and "memory_scores" in state
    again = _model(name, **{epoch_key: 2})
    again.on_epoch_end(2, lambda: iter([batch]))
    torch.testing.assert_close(again.memory, model.memory, atol=0, rtol=0)


def test_rskp_spl_weight_schedule():
    model = _model("rskp")
    assert [model.spl_weight(e) for e in (0, 100, 101, 250)] == [1.0, 1.0, 0.5, 0.5]
    gf = _model("rskp", spl_restore_epoch=200)
    assert [gf.spl_weight(e) for e in (100, 101, 200, 201)] == [1.0, 0.5, 0.5, 1.0]


def test_rskp_test_recipe_and_distillation_weights():
    model = _model("rskp", test_cas_weights=(0.85, 0.15)).eval()
    batch = _batch()
    out = model(batch)
    cas, video = model.localization_scores(out, batch.mask)
    o, m = out.extras["o"], out.extras["m"]
    expected = (0.85 * o.logits.softmax(-1) + 0.15 * m.logits.softmax(-1))[..., :CLASSES] * o.attention[..., None]
    torch.testing.assert_close(cas, expected * batch.mask[..., None])
    torch.testing.assert_close(video, (0.6 * o.p_ca + 0.4 * m.p_ca)[:, :CLASSES])
    weights = [w for w, _ in model.distill_logits(out)]
    assert weights == [0.8, 0.2]
    # without the attention the CAS is the class softmax mix alone (the wtal configs' scale-free recipe)
    plain = _model("rskp", test_cas_weights=(0.85, 0.15), test_attention=False).eval()
    plain.load_state_dict(model.state_dict())
    cas_plain, _ = plain.localization_scores(plain(batch), batch.mask)
    expected_plain = (0.85 * o.logits.softmax(-1) + 0.15 * m.logits.softmax(-1))[..., :CLASSES]
    torch.testing.assert_close(cas_plain, expected_plain * batch.mask[..., None])


# ------------------------------------------------------------------------------- contracts of every model
@pytest.mark.parametrize("name", DETECTION_MODEL_NAMES)
def test_output_shapes_and_ranges(name):
    model = _model(name).eval()
    assert isinstance(model, WtalModel)
    batch = _batch()
    out = model(batch)
    B, T = batch.mask.shape
    assert out.video_scores.shape == (B, CLASSES)
    assert out.cas_logits.shape == (B, T, CLASSES + 1)
    assert torch.all((out.video_scores >= 0) & (out.video_scores <= 1))
    if out.attention is not None:
        assert out.attention.shape == (B, T)
        assert torch.all((out.attention >= 0) & (out.attention <= 1))
    cas, video = model.localization_scores(out, batch.mask)
    assert cas.shape == (B, T, CLASSES) and video.shape == (B, CLASSES)
    assert torch.all((cas >= 0) & (cas <= 1)) and torch.all((video >= 0) & (video <= 1))
    assert torch.all(cas[~batch.mask] == 0)
    losses = model.losses(out, batch, 150)
    assert "total" in losses and all(v.shape == (B,) for v in losses.values())
    for weight, logits in model.distill_logits(out):
        assert weight > 0 and logits.shape == (B, T, CLASSES + 1)
    assert sum(w for w, _ in model.distill_logits(out)) == pytest.approx(1.0)


@pytest.mark.parametrize("name", DETECTION_MODEL_NAMES)
def test_gradients_reach_every_parameter(name):
    model = _model(name).train()
    if name in ("rskp", "issf"):  # a filled memory: the memory branch runs
        model.memory.normal_()
    if name == "vlp":  # its zero-initialised output layer passes no gradient to the convolution at first
        torch.nn.init.normal_(model.out.weight)
    batch = _batch(scale=2.0)
    if name == "mmsd":  # stored labels, so that the self-voting loss takes part
        fill_label_store(model, batch.lengths.tolist())
    out = model(batch)
    model.losses(out, batch, 150)["total"].sum().backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), pname
        assert param.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", DETECTION_MODEL_NAMES)
@pytest.mark.parametrize("case", ["T=1", "zeros"])
def test_no_nan_for_single_snippet_and_all_zero_features(name, case):
    model = _model(name).train()
    if name in ("rskp", "issf"):  # a filled memory: the memory branch runs
        model.memory.normal_()
    if case == "T=1":
        batch = _batch(lengths=(1, 1))
    else:
        batch = _batch(lengths=(4, 9))
        for x in batch.inputs.values():
            x.zero_()
    if name == "mmsd":
        fill_label_store(model, batch.lengths.tolist())
    out = model(batch)
    losses = model.losses(out, batch, 150)
    losses["total"].sum().backward()
    cas, video = model.localization_scores(out, batch.mask)
    for tensor in [*losses.values(), cas, video, out.cas_logits]:
        assert torch.isfinite(tensor).all()
    for pname, param in model.named_parameters():
        assert param.grad is None or torch.isfinite(param.grad).all(), pname


def test_wum_background_column_gives_magnitude_split_softmax():
    model = _model("wum").eval()
    batch = _batch()
    out = model(batch)
    probs = out.cas_logits.softmax(-1)
    fg = out.attention.clamp(1e-6, 1 - 1e-6)
    torch.testing.assert_close(probs[..., :CLASSES], out.extras["cas"].softmax(-1) * fg[..., None])
    torch.testing.assert_close(probs[..., CLASSES], 1 - fg)
    act_mag = out.extras["magnitude"].masked_fill(~batch.mask, -1).amax(1)
    assert torch.all(act_mag > 0)


@pytest.mark.parametrize("name", ["stpn", "facnet"])
def test_per_stream_models_give_each_stream_its_own_branch(name):
    model = _model(name).eval()
    batch = _batch()
    out = model(batch)
    changed = dataclasses.replace(batch, inputs={"rgb": batch.inputs["rgb"], "flow": batch.inputs["flow"] + 1.0})
    out2 = model(changed)
    first = (lambda o: o.extras["tcams"][0]) if name == "stpn" else (lambda o: o.extras["streams"][0]["logits"])
    second = (lambda o: o.extras["tcams"][1]) if name == "stpn" else (lambda o: o.extras["streams"][1]["logits"])
    torch.testing.assert_close(first(out), first(out2))
    assert not torch.allclose(second(out), second(out2))


def test_basnet_video_score_is_softmax_of_topk_mean_of_suppressed_cas():
    model = _model("basnet").eval()
    batch = _batch(lengths=(16, 9))
    out = model(batch)
    for b, length in enumerate([16, 9]):
        cas = out.cas_logits[b, :length]
        k = max(length // 8, 1)
        expected = cas.sort(dim=0, descending=True).values[:k].mean(0).softmax(-1)[:CLASSES]
        torch.testing.assert_close(out.video_scores[b], expected)


# ------------------------------------------------------------------------------------------------ factory
def test_factory_names_and_errors():
    assert set(MODEL_NAMES) >= {"rskp", "stpn", "basnet", "wum", "facnet", "mil"}
    with pytest.raises(WtalInputError, match="rskp.*stpn"):
        build_model("nope", joint_context(DIM, CLASSES))
    with pytest.raises(WtalInputError, match="unknown hyperparameter"):
        build_model("rskp", joint_context(DIM, CLASSES), scale_factor=3)
    model = build_model("RSKP", joint_context(DIM, CLASSES), test_cas_weights=[0.85, 0.15])
    assert model.hp.test_cas_weights == (0.85, 0.15)


def test_rskp_video_without_labels_skips_memory_branch():
    model = _model("rskp", dropout=0.0).train()
    model.memory.normal_()
    batch = _batch(lengths=(5, 8))
    labels = torch.tensor([[0.0, 0, 0, 0], [0.0, 1, 0, 0]])
    scores_before = model.memory_scores.clone()
    losses = model.losses(model(batch), dataclasses.replace(batch, labels=labels), 150)
    assert all(torch.isfinite(v).all() for v in losses.values())
    changed = (model.memory_scores != scores_before).any(dim=1)
    assert changed.tolist() == [False, True, False, False]
