"""Pseudo-label schedule (targets per epoch, weights, rescaling) and the distillation loss."""

from __future__ import annotations

import math

import pytest
import torch

from wtal.errors import WtalInputError
from wtal.models.losses import log_one_minus_softmax
from wtal.pseudo.distill import distillation_loss, snippet_distill_loss
from wtal.pseudo.schedule import PseudoSchedule, TargetSpec, paper_schedule, reference_schedule

# ---------------------------------------------------------------------------------------------------
# schedule


def _held(gens, epoch, keep=3):
    """Generation epochs a plug-in holds at ``epoch`` (made at epoch starts, the last ``keep`` kept)."""
    return [g for g in gens if g <= epoch][-keep:]


def test_paper_targets_by_epoch():
    s = paper_schedule(loss_weight=3.0)
    gens = s.generation_epochs
    assert gens == (200, 215, 230, 245, 270, 290)
    assert s.target(199, _held(gens, 199)) is None
    assert s.target(200, _held(gens, 200)) == TargetSpec("raw", 0, None, 1.0)
    assert s.target(214, _held(gens, 214)) == TargetSpec("raw", 0, None, 1.0)
    # Δ from the second generation on: G215 - G200, then always the two latest
    assert s.target(215, _held(gens, 215)) == TargetSpec("delta", 1, 0, 1.0)
    held = _held(gens, 300)
    assert held == [245, 270, 290]
    assert s.target(300, held) == TargetSpec("delta", 2, 1, 1.0)
    assert s.weight(0) == s.weight(349) == 3.0


def test_reference_targets_by_epoch():
    s = reference_schedule()
    gens = s.generation_epochs
    assert gens == (200, 230, 245, 260, 275, 300)
    assert s.temperatures == (0.02, 0.02, 0.02, 0.002, 0.002, 0.0016)
    # labels made at 200 are first used at 201 (the public code's schedule)
    assert s.target(200, _held(gens, 200)) is None
    assert s.target(201, _held(gens, 201)) == TargetSpec("raw", 0, None, 1.0)
    held = _held(gens, 244)
    assert held[s.target(244, held).latest] == 230
    held = _held(gens, 250)
    assert s.target(250, held) == TargetSpec("raw", 2, None, 1.0)  # still raw G245
    held = _held(gens, 251)
    spec = s.target(251, held)
    assert (spec.kind, held[spec.latest], held[spec.previous], spec.scale) == ("delta", 245, 230, 2.0)
    held = _held(gens, 300)
    spec = s.target(300, held)
    assert (held[spec.latest], held[spec.previous], spec.scale) == (300, 275, 2.0)
    spec = s.target(301, held)
    assert (held[spec.latest], held[spec.previous], spec.scale) == (300, 275, 2.15)


def test_reference_weight_is_capped_exponential():
    s = reference_schedule()
    for e in (201, 220, 246, 247, 300, 349):
        assert s.weight(e) == pytest.approx(min(10 * 1.035 ** (e - 200), 50.0), rel=1e-9)
    assert s.weight(201) == pytest.approx(10.35)
    assert s.weight(247) == 50.0


def test_rescaled_paper_schedule():
    s = paper_schedule().rescaled(35)
    # 200, 215, 230, 245, 270, 290 times 0.1, rounded half up
    assert s.generation_epochs == (20, 22, 23, 25, 27, 29)
    assert s.delta_start_epochs == (22,)
    assert s.target_start_epoch == 20
    assert s.target(21, [20]).kind == "raw"
    assert s.target(22, [20, 22]).kind == "delta"


def test_rescaled_reference_weight_keeps_its_shape():
    s = reference_schedule().rescaled(70)  # 5x shorter
    assert s.generation_epochs == (40, 46, 49, 52, 55, 60)
    assert s.delta_start_epochs == (50, 60) and s.delta_scales == (2.0, 2.15)
    # one epoch of the short run is five of the long one
    assert s.weight(41) == pytest.approx(10 * 1.035 ** 5)
    assert s.weight(50) == 50.0


def test_rescaling_never_merges_generations():
    s = paper_schedule().rescaled(10)
    gens = s.generation_epochs
    assert all(b > a for a, b in zip(gens, gens[1:], strict=False))
    assert gens[0] == 6 and gens[-1] <= 9 and len(gens) == len(s.temperatures) >= 2


@pytest.mark.parametrize("kwargs", [
    dict(generation_epochs=(5, 5), temperatures=(0.1, 0.1)),
    dict(generation_epochs=(5, 3), temperatures=(0.1, 0.1)),
    dict(generation_epochs=(), temperatures=()),
    dict(generation_epochs=(5, 7), temperatures=(0.1,)),
    dict(generation_epochs=(5, 7), temperatures=(0.1, -1.0)),
    dict(generation_epochs=(5, 7), temperatures=(0.1, 0.1), delta_start_epochs=(7,), delta_scales=()),
    dict(generation_epochs=(5, 7), temperatures=(0.1, 0.1), delta_start_epochs=(7,), delta_scales=(1.0,),
         keep_generations=1),
    dict(generation_epochs=(5, 7), temperatures=(0.1, 0.1), loss_weight=float("nan")),
])
def test_bad_schedules_are_rejected(kwargs):
    with pytest.raises(WtalInputError):
        PseudoSchedule(target_start_epoch=0, **kwargs)


# ---------------------------------------------------------------------------------------------------
# distillation loss


def test_hand_computed_losses_for_a_negative_target():
    logits = torch.zeros(1, 1, 2)  # p = (0.5, 0.5)
    target = torch.tensor([[[-0.5]]])
    bounded = snippet_distill_loss(logits, target, "bounded")
    ce = snippet_distill_loss(logits, target, "cross_entropy")
    assert bounded.item() == pytest.approx(-0.5 * math.log(0.5))  # -|d| log(1 - p)
    assert ce.item() == pytest.approx(0.5 * math.log(0.5))  # -d log p, negative


def test_bounded_loss_is_bounded_below_and_cross_entropy_is_not():
    target = torch.tensor([[[-1.0, 0.0, 0.0]]])
    for shift in (0.0, -10.0, -100.0, -1000.0):
        logits = torch.tensor([[[shift, 0.0, 0.0]]])
        assert snippet_distill_loss(logits, target, "bounded").item() >= 0.0
    ce = [snippet_distill_loss(torch.tensor([[[s, 0.0, 0.0]]]), target, "cross_entropy").item()
          for s in (0.0, -10.0, -100.0)]
    assert ce[0] > ce[1] > ce[2] and ce[2] < -90  # keeps rewarding p -> 0


def test_bounded_loss_is_nonnegative_for_random_signed_targets():
    gen = torch.Generator().manual_seed(0)
    logits = 20 * torch.randn(4, 30, 6, generator=gen)
    target = torch.randn(4, 30, 5, generator=gen)
    assert (snippet_distill_loss(logits, target, "bounded") >= 0).all()


@pytest.mark.parametrize("d", [0.3, -0.3])
def test_gradient_follows_paper_eq9(d):
    logits = torch.tensor([[[0.4, -0.2, 0.1]]], requires_grad=True)
    p0 = torch.softmax(logits.detach(), -1)[0, 0, 0].item()
    target = torch.tensor([[[d, 0.0, 0.0]]])
    (g_b,) = torch.autograd.grad(snippet_distill_loss(logits, target, "bounded").sum(), logits)
    (g_ce,) = torch.autograd.grad(snippet_distill_loss(logits, target, "cross_entropy").sum(), logits)
    # eq. 9: -dL/dL_c = d (1 - p_c); the bounded loss agrees in sign, and exactly for d > 0
    assert -g_ce[0, 0, 0].item() == pytest.approx(d * (1 - p0), rel=1e-5)
    assert math.copysign(1, -g_b[0, 0, 0].item()) == math.copysign(1, d)
    expected = d * (1 - p0) if d > 0 else d * p0  # -|d| p_c for a negative target
    assert -g_b[0, 0, 0].item() == pytest.approx(expected, rel=1e-5)


def test_log_one_minus_softmax_is_exact_near_one():
    logits = torch.tensor([[60.0, 0.0, 0.0]])
    out = log_one_minus_softmax(logits)
    assert torch.isfinite(out).all()
    assert out[0, 0].item() == pytest.approx(math.log(2.0) - 60.0, rel=1e-6)
    ref = torch.log1p(-torch.softmax(torch.tensor([[1.0, 2.0, -1.0]], dtype=torch.float64), -1))
    assert torch.allclose(log_one_minus_softmax(torch.tensor([[1.0, 2.0, -1.0]], dtype=torch.float64)), ref)


def test_padding_and_branch_weights():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(1, 7, 4, generator=gen)
    ta = torch.randn(1, 7, 3, generator=gen)
    mask1 = torch.ones(1, 7, dtype=torch.bool)
    single = distillation_loss([(1.0, a)], ta, mask1, "bounded")
    # the same video padded to 10 snippets with garbage (even inf) beyond its end
    padded = torch.cat([a, torch.full((1, 3, 4), float("inf"))], dim=1)
    tpad = torch.cat([ta, torch.zeros(1, 3, 3)], dim=1)
    mask = torch.tensor([[True] * 7 + [False] * 3])
    for kind in ("bounded", "cross_entropy"):
        want = distillation_loss([(1.0, a)], ta, mask1, kind)
        got = distillation_loss([(1.0, padded)], tpad, mask, kind)
        assert torch.allclose(got, want)
    # hand check of the masked mean for one snippet-loss tensor
    per_snippet = snippet_distill_loss(a, ta, "bounded")
    assert single.item() == pytest.approx(per_snippet.mean().item(), rel=1e-6)
    b = torch.randn(1, 7, 4, generator=gen)
    mixed = distillation_loss([(0.8, a), (0.2, b)], ta, mask1, "bounded")
    expect = 0.8 * single + 0.2 * distillation_loss([(1.0, b)], ta, mask1, "bounded")
    assert torch.allclose(mixed, expect)
