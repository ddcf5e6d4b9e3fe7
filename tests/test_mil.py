"""The plain top-k MIL baseline: hand-computed scores and losses, masking, the model protocol."""

from __future__ import annotations

import math

import torch
from helpers import collate_joint, joint_batch, joint_context

from wtal.models.base import WtalModel
from wtal.models.mil import MILModel


def _identity_model(c: int) -> MILModel:
    """D = C + 1 with identity weights: the snippet logits are the features themselves."""
    model = MILModel(joint_context(c + 1, c, streams=("rgb",)), embed_dim=c + 1, dropout=0.0)
    with torch.no_grad():
        model.embedding[0].weight.copy_(torch.eye(c + 1))
        model.embedding[0].bias.zero_()
        model.classifier.weight.copy_(torch.eye(c + 1))
        model.classifier.bias.zero_()
    return model


def test_video_score_is_softmax_of_topk_mean_hand_computed():
    model = _identity_model(2)
    # T = 16 -> k = 2. Column 0: two largest are 5 and 3 -> 4; column 1: all 1 -> 1; background: 2 and 0 -> 1.
    x = torch.zeros(16, 3)
    x[:, 1] = 1.0
    x[3, 0], x[9, 0], x[4, 0] = 5.0, 3.0, 2.0
    x[0, 2] = 2.0
    batch = joint_batch(x[None], torch.ones(1, 16, dtype=torch.bool), torch.tensor([[1.0, 0.0]]), streams=("rgb",))
    out = model(batch)
    z = torch.tensor([4.0, 1.0, 1.0])
    assert torch.allclose(out.extras["video_logits"][0], z)
    assert torch.allclose(out.video_scores[0], torch.softmax(z, 0)[:2])
    # loss: target [y, 1] normalised, y = [1, 0] -> -(log p0 + log p_bg) / 2
    losses = model.losses(out, batch, epoch=0)
    p = torch.softmax(z, 0)
    expected = -(math.log(p[0]) + math.log(p[2])) / 2
    assert torch.allclose(losses["total"], torch.tensor([expected])) and set(losses) == {"mil", "total"}


def test_short_video_uses_k_of_one():
    model = _identity_model(1)
    x = torch.tensor([[[1.0, 0.0], [3.0, -1.0], [2.0, 4.0]]])  # T = 3 -> k = max(3 // 8, 1) = 1: the max
    out = model(joint_batch(x, torch.ones(1, 3, dtype=torch.bool), streams=("rgb",)))
    assert torch.allclose(out.extras["video_logits"], torch.tensor([[3.0, 4.0]]))


def test_padding_never_counts():
    torch.manual_seed(0)
    model = MILModel(joint_context(6, 3), dropout=0.0)
    a, b = torch.randn(20, 6), torch.randn(9, 6)
    batch = collate_joint([(a.numpy(), [1, 0, 0], "a", 0), (b.numpy(), [0, 1, 1], "b", 1)])
    for x in batch.inputs.values():
        x[1, 9:] = 1e6  # garbage in the padding must not leak
    out = model(batch)
    alone = model(joint_batch(b[None], torch.ones(1, 9, dtype=torch.bool)))
    assert torch.allclose(out.video_scores[1], alone.video_scores[0], atol=1e-6)
    cas, scores = model.localization_scores(out, batch.mask)
    assert cas.shape == (2, 20, 3) and torch.all(cas[1, 9:] == 0)
    cas_alone, _ = model.localization_scores(alone, torch.ones(1, 9, dtype=torch.bool))
    assert torch.allclose(cas[1, :9], cas_alone[0], atol=1e-6)
    # the CAS is the snippet softmax over C+1 without the background column
    assert torch.allclose(cas[0], torch.softmax(out.cas_logits[0], -1)[:, :3])


def test_protocol_and_gradients_flow():
    model = MILModel(joint_context(8, 4))
    assert isinstance(model, WtalModel) and model.num_classes == 4 and model.input_streams == ("rgb", "flow")
    x, mask = torch.randn(2, 12, 8), torch.ones(2, 12, dtype=torch.bool)
    batch = joint_batch(x, mask, torch.tensor([[1.0, 0, 0, 0], [0, 1, 1, 0]]))
    out = model(batch)
    assert out.cas_logits.shape == (2, 12, 5) and out.attention is None
    model.losses(out, batch, 0)["total"].sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    [(w, logits)] = model.distill_logits(out)
    assert w == 1.0 and logits is out.cas_logits
    assert model.on_epoch_end(0, lambda: iter(())) is None
