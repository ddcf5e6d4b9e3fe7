"""Multi-threshold proposals: hand cases for both conventions, and a per-snippet loop cross-check."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import load_benchmark
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from wtal.localize.pipeline import LocalizeConfig
from wtal.localize.proposals import (
    LinearMargin,
    PowerMargin,
    class_proposals,
    multi_threshold_proposals,
    track_proposals,
)

CAS = np.array([0.0, 0.5, 0.6, 0.1, 0.0, 0.8, 0.9, 0.7, 0.0])


def test_paper_convention_hand_case():
    p = multi_threshold_proposals(CAS, [0.3], LinearMargin(0.25))
    # runs [1,3) and [5,8); margins 0.5 and 0.75 -> one outer snippet on each side
    assert p.start.tolist() == [1.0, 5.0]
    assert p.end.tolist() == [3.0, 8.0]
    np.testing.assert_allclose(p.inner, [0.55, 0.8])
    np.testing.assert_allclose(p.score, [0.55 - 0.05, 0.8 - 0.0])


def test_paper_margin_widths_round_up_and_clip_to_the_video():
    cas = np.array([0.2, 0.9, 0.9, 0.9, 0.9, 0.9, 0.1, 0.3, 0.4])
    p = multi_threshold_proposals(cas, [0.5], LinearMargin(0.25))  # run [1,6): margin 1.25 -> 2 snippets
    # left window clipped to [0,1); right window [6,8)
    np.testing.assert_allclose(p.score, [0.9 - (0.2 + 0.1 + 0.3) / 3])


def test_reference_convention_hand_case():
    p = multi_threshold_proposals(CAS, [0.3], PowerMargin(), convention="reference")
    # run [1,3): inner over [1,4) = 0.4; margin 0.1466: outer [0,1) -> 0; stored end 4
    # run [5,8): inner over [5,9) = 0.6; outer [4,5) U [9, 8) -> 0; stored end 9
    assert p.start.tolist() == [1.0, 5.0]
    assert p.end.tolist() == [4.0, 9.0]
    np.testing.assert_allclose(p.inner, [0.4, 0.6])
    np.testing.assert_allclose(p.score, [0.4, 0.6])


def test_reference_convention_right_window_needs_a_wide_margin():
    # run [2,20) of length 18 >= 17: margin 0.0785 * 18^0.9 = 1.06, so the right window [21, 22) is used
    cas = np.zeros(30)
    cas[2:20] = 1.0
    cas[20], cas[21] = 0.5, 0.25
    p = multi_threshold_proposals(cas, [0.9], PowerMargin(), convention="reference")
    m = 0.0785 * 18 ** 0.9
    assert int(2 - m) == 0 and int(20 + m + 1) == 22
    inner = (18 + 0.5) / 19
    outer = (0.0 + 0.0 + 0.25) / 3  # [0,2) and [21,22)
    np.testing.assert_allclose(p.score, [inner - outer])
    assert p.end.tolist() == [21.0]


def test_a_run_that_reaches_the_end_of_the_video():
    cas = np.array([0.0, 0.0, 1.0, 1.0])
    ref = multi_threshold_proposals(cas, [0.5], PowerMargin(), convention="reference")
    assert (ref.end.tolist(), ref.inner.tolist()) == ([5.0], [1.0])  # stored end T + 1, as the reference does
    paper = multi_threshold_proposals(cas, [0.5], LinearMargin(0.25))
    assert paper.end.tolist() == [4.0]
    np.testing.assert_allclose(paper.score, [1.0])  # left window [1,2) is 0; the right one is empty


def test_dedup_keeps_identical_runs_once():
    thresholds = [0.3, 0.35, 0.4]
    assert len(multi_threshold_proposals(CAS, thresholds).start) == 2
    assert len(multi_threshold_proposals(CAS, thresholds, dedup=False).start) == 6
    assert len(multi_threshold_proposals(CAS, thresholds, convention="reference").start) == 6


def test_min_length_and_tiny_videos():
    assert len(multi_threshold_proposals(np.array([1.0]), [0.5]).start) == 0
    p = multi_threshold_proposals(np.array([1.0]), [0.5], min_length=1)
    assert (p.start.tolist(), p.end.tolist(), p.score.tolist()) == ([0.0], [1.0], [1.0])
    p = multi_threshold_proposals(np.array([0.0, 1.0, 0.0]), [0.5], min_length=1, convention="reference")
    assert p.end.tolist() == [3.0]


def test_constant_cas_gives_no_nan():
    flat = np.full(50, 0.02)
    assert len(multi_threshold_proposals(flat, np.linspace(0.1, 0.9, 5), relative=True).start) == 0
    p = multi_threshold_proposals(flat, [0.01], dedup=False)
    assert p.start.tolist() == [0.0] and p.end.tolist() == [50.0]
    np.testing.assert_allclose(p.score, [0.02])  # no outer window: outer = 0


def test_video_score_term():
    base = multi_threshold_proposals(CAS, [0.3])
    boosted = multi_threshold_proposals(CAS, [0.3], video_score=0.5, gamma=0.2)
    np.testing.assert_allclose(boosted.score, base.score + 0.1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=60), st.floats(0.1, 50), st.floats(-5, 5))
def test_relative_thresholds_are_invariant_to_affine_rescaling(values, scale, shift):
    cas = np.array(values)
    # a span far below float resolution (e.g. 1e-107) is lost when the shift is added: the shifted track is
    # then truly flat, which is not a rescaling of the original
    assume(np.ptp(cas) == 0 or np.ptp(cas) > 1e-9)
    grid = np.arange(0.05, 1.0, 0.1)
    a = multi_threshold_proposals(cas, grid, relative=True)
    b = multi_threshold_proposals(scale * cas + shift, grid, relative=True)
    # boundaries can only differ where a value sits within rounding of a threshold
    if len(a.start) == len(b.start) and np.array_equal(a.start, b.start) and np.array_equal(a.end, b.end):
        np.testing.assert_allclose(b.score, scale * a.score, atol=1e-7 * (1 + abs(shift)) * scale)
    else:  # only possible when a snippet sits within rounding of a threshold
        level = (cas - cas.min()) / (cas.max() - cas.min())
        assert np.min(np.abs(level[:, None] - grid[None, :])) < 1e-9 * (1 + abs(shift) / scale)


def test_tracks_never_share_a_run():
    p = track_proposals(np.ones(7), [3, 4], [0.5])
    assert p.track.tolist() == [0, 1]
    assert p.start.tolist() == [0.0, 0.0] and p.end.tolist() == [3.0, 4.0]


def test_class_proposals_equal_per_column_calls():
    rng = np.random.default_rng(0)
    cas = rng.random((80, 4))
    grid = np.arange(0.05, 1.0, 0.1)
    many = class_proposals(cas, grid, LinearMargin(0.25), relative=True)
    for c in range(4):
        one = multi_threshold_proposals(cas[:, c], grid, relative=True)
        mine = many.track == c
        np.testing.assert_array_equal(many.start[mine], one.start)
        np.testing.assert_array_equal(many.end[mine], one.end)
        np.testing.assert_allclose(many.score[mine], one.score, atol=1e-12)


@pytest.mark.parametrize("preset", ["paper", "reference"])
def test_matches_a_per_snippet_loop(preset):
    slow_proposals = load_benchmark("bench_localize").slow_proposals
    cfg = LocalizeConfig.from_preset(preset)
    rng = np.random.default_rng(1)
    for n_t in (1, 2, 5, 40, 300):
        col = np.clip(rng.normal(0.01, 0.015, n_t), 0, None)
        col[n_t // 3: n_t // 2] += 0.03
        p = multi_threshold_proposals(col, cfg.thresholds, cfg.outer_margin(), convention=preset,
                                      relative=cfg.threshold_mode == "relative", dedup=cfg.dedup)
        got = sorted(zip(p.start, p.end, p.score, p.inner, strict=True))
        expected = sorted(slow_proposals([float(x) for x in col], cfg.thresholds, cfg))
        assert len(got) == len(expected)
        np.testing.assert_allclose(np.array(got).reshape(-1, 4), np.array(expected).reshape(-1, 4), atol=1e-12)
