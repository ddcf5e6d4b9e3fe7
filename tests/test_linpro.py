"""LinPro pseudo labels: hand-solved LPs, weighting rows, dense cross-checks, fallbacks, bad input."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wtal.pseudo.linpro as linpro_module
from wtal.errors import WtalInputError
from wtal.pseudo.linpro import (
    LinProConfig,
    LinProStats,
    constraint_matrix,
    pseudo_labels_for_videos,
    solve_class,
    solve_class_dense,
    video_pseudo_labels,
)

NO_MARGIN = LinProConfig(margin="alpha", alpha=0.0)


def no_margin(**kw) -> LinProConfig:
    return LinProConfig(margin="alpha", alpha=0.0, **kw)


# ---------------------------------------------------------------------------------------------------
# weighting rows


def test_paper_rows_use_the_snippet_centre_rule():
    # centres i+0.5 in [2.3, 6.7) -> inner 2..6; margin 0.25*4.4 = 1.1: left centres in [1.2, 2.3) -> 1,
    # right centres in [6.7, 7.8) -> 7
    W = constraint_matrix(12, [2.3], [6.7], LinProConfig(margin="alpha", alpha=0.25))
    np.testing.assert_array_equal(W[0], [0, -1, 1, 1, 1, 1, 1, -1, 0, 0, 0, 0])
    assert W.dtype == np.int8


def test_paper_rows_integer_boundaries_map_to_themselves_and_clip_to_the_video():
    W = constraint_matrix(6, [0, 3], [4, 8], LinProConfig(margin="alpha", alpha=0.5))
    # [0,4): no left outer (clipped), right centres in [4, 6) -> 4, 5
    np.testing.assert_array_equal(W[0], [1, 1, 1, 1, -1, -1])
    # [3,8) clipped to [3,6); left margin 2.5: centres in [0.5, 3) -> 0, 1, 2
    np.testing.assert_array_equal(W[1], [-1, -1, -1, 1, 1, 1])


def test_paper_power_margin():
    # len 20 -> m = 0.0785 * 20**0.9 = 1.163: left centres in [8.84, 10) -> 9; right in [30, 31.16) -> 30
    W = constraint_matrix(40, [10], [30], LinProConfig(margin="power"))
    expected = np.zeros(40, dtype=np.int8)
    expected[10:30] = 1
    expected[[9, 30]] = -1
    np.testing.assert_array_equal(W[0], expected)


def test_paper_short_instance_keeps_its_midpoint_snippet():
    W = constraint_matrix(8, [3.6], [3.9], NO_MARGIN)
    np.testing.assert_array_equal(W[0], [0, 0, 0, 1, 0, 0, 0, 0])


def test_reference_rows_match_the_gaufuse_code():
    cfg = LinProConfig(variant="reference")  # power margin by default
    # a=5, b=10, m=0.0785*5**0.9=0.334: left [int(4.67)=4, 5), right [10, min(19, int(11.33)=11))
    W = constraint_matrix(20, [5.7], [10.2], cfg)
    expected = np.zeros(20, dtype=np.int8)
    expected[5:10] = 1
    expected[[4, 10]] = -1
    np.testing.assert_array_equal(W[0], expected)
    # the right outer range never contains T-1: b = 11 = T-1 -> [11, min(11, 12)) is empty
    W = constraint_matrix(12, [6], [11], cfg)
    np.testing.assert_array_equal(W[0], [0, 0, 0, 0, 0, -1, 1, 1, 1, 1, 1, 0])
    # a proposal end of T+1 (GauFuse stores e+1) is clipped to the video
    W = constraint_matrix(12, [8], [13], cfg)
    np.testing.assert_array_equal(W[0], [0, 0, 0, 0, 0, 0, 0, -1, 1, 1, 1, 1])


# ---------------------------------------------------------------------------------------------------
# hand-solved LPs


def test_single_instance_without_outer_is_uniform():
    g = solve_class(10, [2], [7], [0.2], NO_MARGIN)
    np.testing.assert_allclose(g, [0, 0, 0.04, 0.04, 0.04, 0.04, 0.04, 0, 0, 0], atol=1e-12)


def test_single_instance_with_outer_puts_zero_on_the_outer_snippets():
    # inner - outer = 0.2 and min inner + outer -> outer = 0
    cfg = LinProConfig(margin="alpha", alpha=0.4)
    assert np.count_nonzero(constraint_matrix(10, [2], [7], cfg) == -1) == 4
    g = solve_class(10, [2], [7], [0.2], cfg)
    np.testing.assert_allclose(g, [0, 0, 0.04, 0.04, 0.04, 0.04, 0.04, 0, 0, 0], atol=1e-12)


def test_negative_score_goes_to_the_outer_snippets():
    # reference row: -1 at 4 and 10, +1 on 5..9; q=-0.3 -> inner 0, outer mass 0.3 over 2 snippets
    g = solve_class(20, [5], [10], [-0.3], LinProConfig(variant="reference"))
    expected = np.zeros(20)
    expected[[4, 10]] = 0.15
    np.testing.assert_allclose(g, expected, atol=1e-12)


def test_two_overlapping_instances():
    # A=[0,6) q=0.6, B=[4,10) q=0.9; classes A-only (4), both (2), B-only (4) with masses x1, x2, x3:
    # x1 + x2 = 0.6, x2 + x3 = 0.9, min x1+x2+x3 = 1.5 - x2 -> x2 = 0.6, x1 = 0, x3 = 0.3
    g = solve_class(10, [0, 4], [6, 10], [0.6, 0.9], NO_MARGIN)
    np.testing.assert_allclose(g, [0, 0, 0, 0, 0.3, 0.3, 0.075, 0.075, 0.075, 0.075], atol=1e-12)


def test_two_overlapping_instances_with_active_upper_bound():
    # same LP with g <= 0.2: x2 <= 0.4 -> x1 = 0.2, x2 = 0.4, x3 = 0.5
    g = solve_class(10, [0, 4], [6, 10], [0.6, 0.9], no_margin(upper_bound=0.2))
    np.testing.assert_allclose(g, [0.05] * 4 + [0.2] * 2 + [0.125] * 4, atol=1e-12)


def test_no_upper_bound_allows_labels_above_one():
    g = solve_class(6, [2], [4], [3.0], no_margin(upper_bound=None))
    np.testing.assert_allclose(g, [0, 0, 1.5, 1.5, 0, 0], atol=1e-12)


def test_empty_instance_list_and_single_snippet_video():
    stats = LinProStats()
    np.testing.assert_array_equal(solve_class(7, [], [], [], NO_MARGIN, stats), np.zeros(7))
    assert stats.total == 0
    g = solve_class(1, [0], [1], [0.7], LinProConfig(), stats)
    np.testing.assert_allclose(g, [0.7], atol=1e-12)
    g = solve_class(1, [0], [1], [0.7], LinProConfig(variant="reference"), stats)
    np.testing.assert_allclose(g, [0.7], atol=1e-12)
    assert stats.solved == 2


# ---------------------------------------------------------------------------------------------------
# infeasible LPs and solver failures


def test_contradictory_identical_rows_take_the_least_violation_labels(caplog):
    # x = mass on [3,5): min |x-0.2| + |x-0.4| is 0.2 on [0.2, 0.4]; then min x -> x = 0.2
    stats = LinProStats()
    with caplog.at_level(logging.WARNING, logger="wtal.pseudo.linpro"):
        g = solve_class(10, [3, 3], [5, 5], [0.2, 0.4], NO_MARGIN, stats)
    np.testing.assert_allclose(g, [0, 0, 0, 0.1, 0.1, 0, 0, 0, 0, 0], atol=1e-9)
    assert (stats.solved, stats.relaxed, stats.failed) == (0, 1, 0)
    assert "least-violation" in caplog.text


def test_score_above_the_upper_bound_saturates():
    stats = LinProStats()
    g = solve_class(10, [3], [5], [5.0], NO_MARGIN, stats)
    np.testing.assert_allclose(g, [0, 0, 0, 1, 1, 0, 0, 0, 0, 0], atol=1e-9)
    assert stats.relaxed == 1


def test_negative_score_without_outer_region_gives_zeros():
    stats = LinProStats()
    g = solve_class(10, [0], [10], [-0.1], LinProConfig(), stats)
    np.testing.assert_array_equal(g, np.zeros(10))
    assert stats.relaxed == 1


def test_zeros_fallback_is_counted_as_failed():
    stats = LinProStats()
    g = solve_class(10, [3, 3], [5, 5], [0.2, 0.4], no_margin(fallback="zeros"), stats)
    np.testing.assert_array_equal(g, np.zeros(10))
    assert (stats.solved, stats.relaxed, stats.failed) == (0, 0, 1)


def test_solver_failure_everywhere_gives_zeros(monkeypatch):
    monkeypatch.setattr(linpro_module, "linprog",
                        lambda *a, **k: SimpleNamespace(status=4, x=None, message="numerical difficulties"))
    stats = LinProStats()
    g = solve_class(10, [2], [7], [0.2], NO_MARGIN, stats)
    np.testing.assert_array_equal(g, np.zeros(10))
    assert (stats.solved, stats.relaxed, stats.failed) == (0, 0, 1)


def test_solver_failure_on_a_feasible_lp_is_repaired_by_the_relaxed_lp(monkeypatch):
    real = linpro_module.linprog
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            return SimpleNamespace(status=1, x=np.full(len(args[0]), np.nan), message="iteration limit")
        return real(*args, **kwargs)

    monkeypatch.setattr(linpro_module, "linprog", flaky)
    stats = LinProStats()
    g = solve_class(10, [0, 4], [6, 10], [0.6, 0.9], NO_MARGIN, stats)
    # zero violation is attainable, so phase 2 returns the exact optimum
    np.testing.assert_allclose(g, [0, 0, 0, 0, 0.3, 0.3, 0.075, 0.075, 0.075, 0.075], atol=1e-9)
    assert stats.relaxed == 1


# ---------------------------------------------------------------------------------------------------
# properties against the dense LP


def _classes_of(W: np.ndarray) -> np.ndarray:
    return np.unique(W.T, axis=0, return_inverse=True)[1].reshape(-1)


def _assert_uniform_within_classes(g: np.ndarray, W: np.ndarray) -> None:
    cls = _classes_of(W)
    for k in np.unique(cls):
        values = g[cls == k]
        assert np.ptp(values) <= 1e-12, (k, values)


@st.composite
def lp_cases(draw):
    T = draw(st.integers(1, 60))
    n = draw(st.integers(1, 6))
    start = np.array(draw(st.lists(st.floats(0, T, allow_nan=False), min_size=n, max_size=n)))
    length = np.array(draw(st.lists(st.floats(0, max(1.0, T / 2), allow_nan=False), min_size=n, max_size=n)))
    variant = draw(st.sampled_from(["paper", "reference"]))
    margin = draw(st.sampled_from(["alpha", "power"]))
    upper = draw(st.sampled_from([None, 1.0, 0.3]))
    seed = draw(st.integers(0, 2**32 - 1))
    cfg = LinProConfig(variant=variant, margin=margin, upper_bound=upper)
    return T, start, start + length, cfg, np.random.default_rng(seed)


PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(lp_cases())
def test_reduced_lp_equals_dense_lp_on_feasible_cases(case):
    T, start, end, cfg, rng = case
    W = constraint_matrix(T, start, end, cfg).astype(np.float64)
    # a random label inside the bounds makes the constraints feasible
    g0 = rng.random(T) * (1.0 if cfg.upper_bound is None else cfg.upper_bound) * (rng.random(T) < 0.7)
    q = W @ g0
    stats = LinProStats()
    g = solve_class(T, start, end, q, cfg, stats)
    dense = solve_class_dense(T, start, end, q, cfg)
    assert stats.solved == 1
    assert np.all(np.isfinite(g)) and np.all(g >= 0)
    if cfg.upper_bound is not None:
        assert np.all(g <= cfg.upper_bound)
    np.testing.assert_allclose(W @ g, q, atol=1e-7)
    np.testing.assert_allclose(W @ dense, q, atol=1e-7)
    assert abs(g.sum() - dense.sum()) <= 1e-7
    assert g.sum() <= g0.sum() + 1e-7  # the planted label is feasible, so never beaten
    _assert_uniform_within_classes(g, W)
    _assert_uniform_within_classes(dense, W)
    assert len(np.unique(_classes_of(W))) <= 4 * len(start) + 1


@PROPERTY
@given(lp_cases(), st.lists(st.floats(-1, 1, allow_nan=False), min_size=6, max_size=6))
def test_any_scores_give_finite_labels_in_bounds(case, scores):
    T, start, end, cfg, _ = case
    q = np.array(scores[: len(start)])
    stats = LinProStats()
    g = solve_class(T, start, end, q, cfg, stats)
    assert g.shape == (T,) and np.all(np.isfinite(g)) and np.all(g >= 0)
    if cfg.upper_bound is not None:
        assert np.all(g <= cfg.upper_bound)
    assert stats.total == 1 and stats.failed == 0
    _assert_uniform_within_classes(g, constraint_matrix(T, start, end, cfg))
    if stats.relaxed:  # the least-violation labels violate no more than the trivial label 0 does
        W = constraint_matrix(T, start, end, cfg).astype(np.float64)
        assert np.abs(W @ g - q).sum() <= np.abs(q).sum() + 1e-7


# ---------------------------------------------------------------------------------------------------
# videos


def test_video_labels_stack_the_classes():
    labels = video_pseudo_labels(10, 4, [2, 0, 2], [0, 2, 4], [6, 7, 10], [0.6, 0.2, 0.9], NO_MARGIN)
    assert labels.shape == (10, 4) and labels.dtype == np.float64
    np.testing.assert_allclose(labels[:, 2], [0, 0, 0, 0, 0.3, 0.3, 0.075, 0.075, 0.075, 0.075], atol=1e-12)
    np.testing.assert_allclose(labels[:, 0], [0, 0, 0.04, 0.04, 0.04, 0.04, 0.04, 0, 0, 0], atol=1e-12)
    np.testing.assert_array_equal(labels[:, [1, 3]], 0)
    np.testing.assert_array_equal(video_pseudo_labels(5, 3, [], [], [], []), np.zeros((5, 3)))


def _random_videos(rng: np.random.Generator, count: int) -> dict:
    videos = {}
    for i in range(count):
        T = int(rng.integers(1, 300))
        n = int(rng.integers(0, 8))
        start = rng.uniform(0, T, n)
        videos[f"video_{i}"] = (T, rng.integers(0, 3, n), start, start + rng.uniform(1, 30, n),
                                rng.uniform(-0.1, 0.6, n))
    return videos


def test_videos_parallel_equals_serial():
    videos = _random_videos(np.random.default_rng(3), 12)
    serial, serial_stats = pseudo_labels_for_videos(videos, 3, LinProConfig(), workers=1)
    parallel, parallel_stats = pseudo_labels_for_videos(videos, 3, LinProConfig(), workers=2)
    assert list(serial) == list(videos) == list(parallel)
    for name, (T, *_rest) in videos.items():
        assert serial[name].shape == (T, 3)
        np.testing.assert_array_equal(serial[name], parallel[name])
    assert serial_stats == parallel_stats and serial_stats.total > 0


def test_stats_merge():
    a = LinProStats(solved=2, relaxed=1)
    assert a.merge(LinProStats(solved=1, failed=3)) is a
    assert (a.solved, a.relaxed, a.failed, a.total) == (3, 1, 3, 7)


# ---------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("T", "start", "end", "score"),
    [
        (0, [0], [1], [0.1]),
        (10, [0], [1], [np.nan]),
        (10, [3], [2], [0.1]),
        (10, [0, 1], [2], [0.1]),
        (10, [np.inf], [np.inf], [0.1]),
    ],
)
def test_bad_instances_raise(T, start, end, score):
    with pytest.raises(WtalInputError):
        solve_class(T, start, end, score)


def test_bad_classes_and_config_raise():
    with pytest.raises(WtalInputError):
        video_pseudo_labels(10, 2, [2], [0], [3], [0.1])
    with pytest.raises(WtalInputError):
        video_pseudo_labels(10, 2, [0.5], [0], [3], [0.1])
    with pytest.raises(WtalInputError):
        LinProConfig(variant="nope")
    with pytest.raises(WtalInputError):
        LinProConfig(upper_bound=0.0)
    with pytest.raises(WtalInputError, match="video: v1"):
        pseudo_labels_for_videos({"v1": (10, [0], [0], [3], [np.nan])}, 2, workers=1)


# ---------------------------------------------------------------------------------------------------
# wtal pseudolabel


def _write_cas(path):
    from wtal.localize.casfile import write_cas_file

    a = np.zeros((40, 3))
    a[10:20, 0] = 0.9
    a[30:34, 2] = 0.5  # gated out by its video score below
    b = np.zeros((7, 3))
    write_cas_file(path, {"a": a, "b": b}, ["run", "jump", "throw"], snippets_per_second=2.0,
                   scores={"a": np.array([0.9, 0.1, 0.05]), "b": np.zeros(3)})


@pytest.mark.parametrize(
    ("preset", "inner", "value"),
    [
        # one run [10, 20), contrast 0.9 -> 0.9 / 10 per inner snippet, 0 on the outer ones
        ("paper", slice(10, 20), 0.09),
        # GauFuse: end stored as 21, inner mean over 11 snippets = 0.9 * 10 / 11, then int(e) = 21
        ("reference", slice(10, 21), 0.9 * 10 / 11 / 11),
    ],
)
def test_pseudolabel_command_writes_linpro_labels(tmp_path, capsys, preset, inner, value):
    from wtal.pseudo.command import pseudolabel_command

    _write_cas(tmp_path / "cas.npz")
    assert pseudolabel_command(str(tmp_path / "cas.npz"), str(tmp_path / "labels.npz"), preset=preset) == 0
    assert "1 solved, 0 relaxed" in capsys.readouterr().out
    with np.load(tmp_path / "labels.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["__classes__", "__fps__", "a", "b"]
        assert list(z["__classes__"]) == ["run", "jump", "throw"] and float(z["__fps__"]) == 2.0
        a, b = z["a"], z["b"]
    assert a.shape == (40, 3) and a.dtype == np.float32 and b.shape == (7, 3)
    expected = np.zeros(40)
    expected[inner] = value
    np.testing.assert_allclose(a[:, 0], expected, atol=1e-7)
    np.testing.assert_array_equal(a[:, 1:], 0)
    np.testing.assert_array_equal(b, 0)


def test_pseudolabel_command_missing_cas_file(tmp_path):
    from wtal.pseudo.command import pseudolabel_command

    with pytest.raises(WtalInputError, match="not found"):
        pseudolabel_command(str(tmp_path / "nope.npz"), str(tmp_path / "labels.npz"))
    assert not (tmp_path / "labels.npz").exists()
