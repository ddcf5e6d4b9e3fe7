"""CPL: padding invariance, gradients, the Gaussian and negative masks, word masking, and a short training run
that localizes better than random proposals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wtal.data.text import EOS_ID
from wtal.errors import WtalInputError
from wtal.evaluation.grounding import segment_iou
from wtal.models.cpl import (
    CPL,
    CPLHyperparameters,
    CPLOutput,
    _Attention,
    curriculum_factor,
    draw_masked_words,
    gaussian_weights,
    negative_gaussians,
    proposal_distribution,
    query_generators,
    rank_proposals,
    snippet_activation,
    subsample_positions,
)

TINY = dict(hidden_dim=16, num_heads=2, ffn_dim=24, video_layers=2, text_layers=2, word_dim=8, num_proposals=3)


def _batch(lengths, word_lengths, dims=(("rgb", 5), ("flow", 3)), vocab=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    bsz, t_max, l_max = len(lengths), max(lengths), max(word_lengths)
    video = {s: torch.randn(bsz, t_max, d, generator=g) for s, d in dims}
    video_mask = torch.arange(t_max)[None, :] < torch.tensor(lengths)[:, None]
    word_mask = torch.arange(l_max)[None, :] < torch.tensor(word_lengths)[:, None]
    words = torch.randint(2, vocab, (bsz, l_max), generator=g).masked_fill(~word_mask, 0)
    video = {s: x.masked_fill(~video_mask[..., None], 0.0) for s, x in video.items()}
    masked = (torch.rand(bsz, l_max, generator=g) < 0.4) & word_mask
    return video, video_mask, words, word_mask, masked


def _row(batch, b):
    video, video_mask, words, word_mask, masked = batch
    t, n = int(video_mask[b].sum()), max(int(word_mask[b].sum()), 1)
    return ({s: x[b: b + 1, :t] for s, x in video.items()}, video_mask[b: b + 1, :t], words[b: b + 1, :n],
            word_mask[b: b + 1, :n], masked[b: b + 1, :n])


def test_padded_batch_equals_one_sample_at_a_time():
    torch.manual_seed(0)
    model = CPL({"rgb": 5, "flow": 3}, 12, CPLHyperparameters(**TINY, proposal_stride=2)).eval()
    batch = _batch([9, 21, 14, 4], [3, 6, 0, 1])
    video, video_mask, words, word_mask, masked = batch
    with torch.no_grad():
        out = model(video, video_mask, words, word_mask, masked_words=masked, epoch=3, contrast=True)
        losses = model.losses(out)
        for b in range(4):
            v, vm, w, wm, m = _row(batch, b)
            one = model(v, vm, w, wm, masked_words=m, epoch=3, contrast=True)
            for key, value in model.losses(one).items():
                torch.testing.assert_close(losses[key][b: b + 1], value, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out.proposal_nll[b: b + 1], one.proposal_nll, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out.centers[b: b + 1], one.centers, rtol=1e-5, atol=1e-6)
            p = int(one.position_mask.sum())
            torch.testing.assert_close(out.gauss[b: b + 1, :, :p], one.gauss, rtol=1e-4, atol=1e-4)
            assert not out.gauss[b, :, p:].any()


def test_negatives_left_to_the_losses_equal_negatives_in_forward_and_segment_nll_scores_proposals():
    torch.manual_seed(4)
    model = CPL({"rgb": 5, "flow": 3}, 12, CPLHyperparameters(**TINY, dropout=0.0, proposal_stride=2)).train()
    video, video_mask, words, word_mask, masked = _batch([9, 21, 14], [3, 6, 2])
    now = model(video, video_mask, words, word_mask, masked_words=masked, epoch=4)
    later = model(video, video_mask, words, word_mask, masked_words=masked, epoch=None)
    assert later.negative_nll is None
    for key, value in model.losses(now).items():
        torch.testing.assert_close(model.losses(later, epoch=4)[key], value)
    with pytest.raises(ValueError, match="epoch"):
        model.losses(model(video, video_mask, words, word_mask, masked_words=masked, epoch=None))
    # scoring the model's own proposals gives their reconstruction losses
    nll = model.segment_nll(video, video_mask, words, word_mask, now.centers, now.widths, masked_words=masked)
    torch.testing.assert_close(nll, now.proposal_nll, rtol=1e-5, atol=1e-5)


def test_proposal_distribution_and_snippet_activation_match_their_definitions():
    hp = CPLHyperparameters(num_proposals=2, sigma=4.0, min_width=0.05)
    out = CPLOutput(centers=torch.tensor([[0.25, 0.75]]), widths=torch.tensor([[0.4, 0.01]]),
                    gauss=torch.zeros(1, 2, 1), position_mask=torch.ones(1, 1, dtype=torch.bool),
                    proposal_nll=torch.tensor([[1.0, 2.0]]), reference_nll=None, negative_nll=None)
    p = proposal_distribution(out, temperature=0.5)
    expected_p = np.exp([-2.0, -4.0]) / np.exp([-2.0, -4.0]).sum()
    np.testing.assert_allclose(p[0].numpy(), expected_p, rtol=1e-6)
    act = snippet_activation(out, torch.tensor([4]), hp, temperature=0.5)[0].numpy()
    t = (np.arange(4) + 0.5) / 4  # snippet centres
    g = [np.exp(-((t - c) ** 2) / (2 * (w / 4.0) ** 2)) for c, w in ((0.25, 0.4), (0.75, 0.05))]  # width >= min
    np.testing.assert_allclose(act, expected_p[0] * g[0] + expected_p[1] * g[1], rtol=1e-5)
    two = CPLOutput(out.centers.repeat(2, 1), out.widths.repeat(2, 1), out.gauss.repeat(2, 1, 1),
                    out.position_mask.repeat(2, 1), out.proposal_nll.repeat(2, 1), None, None)
    padded = snippet_activation(two, torch.tensor([4, 2]), hp, 0.5)  # a second, shorter video
    np.testing.assert_allclose(padded[0].numpy(), act, rtol=1e-6)
    assert padded[1, 2:].abs().sum() == 0 and padded[1, :2].min() > 0


def test_gradients_reach_every_parameter():
    torch.manual_seed(1)
    model = CPL({"rgb": 5, "flow": 3}, 12, CPLHyperparameters(**TINY, proposal_stride=1)).train()
    video, video_mask, words, word_mask, masked = _batch([9, 12], [4, 5])
    out = model(video, video_mask, words, word_mask, masked_words=masked, epoch=10)
    model.losses(out)["total"].sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_masked_words_change_the_input_and_eval_masking_none_is_deterministic():
    torch.manual_seed(2)
    model = CPL({"rgb": 5, "flow": 3}, 12, CPLHyperparameters(**TINY, eval_masking="none")).eval()
    video, video_mask, words, word_mask, masked = _batch([8, 8], [6, 6])
    with torch.no_grad():
        a = model(video, video_mask, words, word_mask).proposal_nll
        b = model(video, video_mask, words, word_mask).proposal_nll
        c = model(video, video_mask, words, word_mask, masked_words=masked).proposal_nll
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_draw_masked_words_counts_and_per_query_independence():
    lengths = torch.tensor([0, 1, 2, 3, 7, 9])
    masked = draw_masked_words(lengths, None, torch.Generator().manual_seed(0))
    assert masked.sum(dim=1).tolist() == [0, 1, 1, 1, 2, 3]
    assert not (masked & ~(torch.arange(9)[None] < lengths[:, None])).any()
    weights = torch.rand(6, 9)
    alone = draw_masked_words(lengths[4:5], weights[4:5], query_generators([17], seed=5), width=9)
    batched = draw_masked_words(lengths, weights, query_generators([3, 4, 5, 6, 17, 8], seed=5))
    assert torch.equal(alone[0], batched[4])  # a query's mask does not depend on its batch


def test_draw_masked_words_follows_softmax_of_the_weights():
    # one word of three is masked with probability softmax(2, 1, 1): e / (e + 2) for the first
    g = torch.Generator().manual_seed(0)
    draws = draw_masked_words(torch.full((4000,), 3), torch.tensor([[2.0, 1.0, 1.0]]).expand(4000, 3), g)
    assert draws[:, 0].float().mean().item() == pytest.approx(math.e / (math.e + 2), abs=0.03)
    # two of six: the exact probability that word 0 (weight 2, others 1) is among them
    p0 = math.e / (math.e + 5)
    p_second = 5 * (1 / (math.e + 5)) * (math.e / (math.e + 4))
    draws = draw_masked_words(torch.full((4000,), 6), torch.tensor([[2.0] + [1.0] * 5]).expand(4000, 6), g)
    assert draws[:, 0].float().mean().item() == pytest.approx(p0 + p_second, abs=0.03)


def test_gaussian_and_negative_masks_hand_solved():
    time = torch.linspace(0, 1, 11)[None]
    valid = torch.ones(1, 11, dtype=torch.bool)
    w = gaussian_weights(time, valid, torch.tensor([[0.5]]), torch.tensor([[0.1]]))
    np.testing.assert_allclose(w[0, 0].numpy(), np.exp(-((np.linspace(0, 1, 11) - 0.5) ** 2) / 0.02), atol=1e-6)
    far = gaussian_weights(time, valid, torch.tensor([[0.55]]), torch.tensor([[1e-4]]))
    assert torch.isfinite(far).all() and far.max() == 1.0  # peak 1 even where exp() alone underflows
    hp = CPLHyperparameters()
    assert curriculum_factor(0, hp) == pytest.approx((1 / 30) ** 0.5) and curriculum_factor(40, hp) == 1.0
    assert curriculum_factor(0, CPLHyperparameters(gamma=0.0)) == 1.0
    neg = negative_gaussians(time, valid, torch.tensor([0.5]), torch.tensor([0.2]), 1.0, hp)
    left = np.exp(-((np.linspace(0, 1, 11) - 0.2) ** 2) / (2 * (0.2 / 4.5) ** 2))
    np.testing.assert_allclose(neg[0, 0].numpy(), left / left.max(), atol=1e-6)
    np.testing.assert_allclose(neg[0, 1].numpy(), left[::-1] / left.max(), atol=1e-6)
    early = negative_gaussians(time, valid, torch.tensor([0.5]), torch.tensor([0.2]), 0.0, hp)
    assert early[0, 0, 0] == 1.0 and early[0, 0, 1] < 1e-6 and early[0, 1, -1] == 1.0  # hugging the ends


def test_subsample_positions_matches_cpl_linspace():
    index, time, valid = subsample_positions(torch.tensor([200, 9, 3]), 4)
    assert index.shape == (3, 50)
    assert index[0].tolist() == torch.linspace(0, 199, 50).long().tolist()
    assert index[1, :2].tolist() == [0, 8] and valid[1].sum() == 2 and valid[2].sum() == 1
    np.testing.assert_allclose(time[0].numpy(), np.linspace(0, 1, 50), atol=1e-6)


def test_attention_reweighting_matches_definition():
    torch.manual_seed(3)
    attn = _Attention(8, 2)
    x, mem = torch.randn(1, 3, 8), torch.randn(1, 5, 8)
    valid = torch.tensor([[True, True, True, True, False]])
    weight = torch.rand(1, 5)
    q = attn.q(x).view(1, 3, 2, 4).transpose(1, 2)
    k, v = attn.kv(mem).view(1, 5, 2, 2, 4).permute(2, 0, 3, 1, 4)
    p = torch.softmax((q @ k.transpose(-1, -2) / 2).masked_fill(~valid[:, None, None], -math.inf), dim=-1)
    p = p * (weight[:, None, None] + 1e-10)
    p = p / p.sum(-1, keepdim=True)
    expected = attn.out((p @ v).transpose(1, 2).reshape(1, 3, 8))
    torch.testing.assert_close(attn(x, mem, valid, False, weight), expected)


def test_label_smoothed_nll_and_eos_targets():
    model = CPL({"rgb": 2}, 5, CPLHyperparameters(**TINY))
    logits = torch.randn(1, 2, 5)
    nll = model.sequence_nll(logits, torch.tensor([[3, EOS_ID]]), torch.tensor([[True, False]]))
    logp = torch.log_softmax(logits[0, 0], dim=-1)
    assert nll.item() == pytest.approx((-(0.9 * logp[3]) - 0.1 / 5 * logp.sum()).item(), rel=1e-6)
    targets = CPL._targets(torch.tensor([[4, 2, 0], [3, 0, 0]]), torch.tensor([2, 1]))
    assert targets.tolist() == [[4, 2, EOS_ID, 0], [3, EOS_ID, 0, 0]]


def test_from_params_rejects_unknown_names_and_checks_vectors():
    model = CPL.from_params({"rgb": 4}, 7, {"num_proposals": 5, "hidden_dim": 32})
    assert model.hp.num_proposals == 5
    with pytest.raises(WtalInputError, match="unknown hyperparameter"):
        CPL.from_params({"rgb": 4}, 7, {"proposals": 5})
    vectors = np.random.default_rng(0).random((7, 6)).astype(np.float32)
    frozen = CPL({"rgb": 4}, 7, CPLHyperparameters(train_word_vectors=False), word_vectors=vectors)
    assert frozen.words.embedding_dim == 6 and not frozen.words.weight.requires_grad
    with pytest.raises(ValueError, match="rows for a vocabulary"):
        CPL({"rgb": 4}, 8, word_vectors=vectors)
    for bad in ({"hidden_dim": 30, "num_heads": 4}, {"eval_masking": "random"}, {"dropout": 1.0},
                {"num_proposals": 0}):
        with pytest.raises(WtalInputError):
            CPL.from_params({"rgb": 4}, 7, bad)


def _concept_set(n, seed, t=16, d=8, concepts=6):
    """Videos of noise with two concept segments (one-hot channels); the sentence names one of them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.3, (n, t, d)).astype(np.float32)
    words, moments = np.zeros((n, 3), np.int64), np.zeros((n, 2))
    for i in range(n):
        c, other = rng.choice(concepts, 2, replace=False)
        for channel, keep in ((c, True), (other, False)):
            length = rng.integers(3, 7)
            s = rng.integers(0, t - length + 1)
            x[i, s: s + length, channel] += 2.0
            if keep:
                moments[i] = [s / t, (s + length) / t]
        words[i] = [2 + concepts + i % 2, 2 + c, 2 + concepts + 2]  # filler, concept, filler
    return torch.tensor(x), torch.tensor(words), moments


def test_short_training_localizes_better_than_random_proposals():
    torch.manual_seed(0)
    hp = CPLHyperparameters(hidden_dim=32, num_heads=2, ffn_dim=64, video_layers=1, text_layers=1, dropout=0.0,
                            word_dim=16, num_proposals=4, proposal_stride=1, gamma=0.0, eval_masking="none")
    model = CPL({"rgb": 8}, 11, hp)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    x, words, _ = _concept_set(64, seed=0)
    ones_v, ones_w = torch.ones(16, 16, dtype=torch.bool), torch.ones(16, 3, dtype=torch.bool)
    generator, order = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    history = []
    for step in range(150):
        idx = torch.randperm(64, generator=order)[:16]
        losses = model.losses(model({"rgb": x[idx]}, ones_v, words[idx], ones_w, epoch=step / 10,
                                    generator=generator))
        losses["total"].mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        history.append(losses["reconstruction"].mean().item())
    assert np.mean(history[-10:]) < 0.6 * np.mean(history[:10])
    model.eval()
    xt, wt, moments = _concept_set(200, seed=1)
    with torch.no_grad():
        segments, scores = rank_proposals(model({"rgb": xt}, torch.ones(200, 16, dtype=torch.bool), wt,
                                                torch.ones(200, 3, dtype=torch.bool)))
    assert (np.diff(scores, axis=1) <= 0).all()
    top1 = segment_iou(segments[:, 0], moments).mean()
    rand = segment_iou(np.sort(np.random.default_rng(0).random((200, 2)), axis=1), moments).mean()
    whole = segment_iou(np.array([0.0, 1.0]), moments).mean()
    assert top1 > rand + 0.05 and top1 > whole
