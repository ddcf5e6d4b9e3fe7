"""Weighted instance fusion: hand-computed groups, templates, limits, invariances and bounds."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wtal.localize.fusion import (
    copies_to_rows,
    fit_template,
    fuse_by_class,
    fuse_instances,
    greedy_groups,
    greedy_groups_stepwise,
    overlap_with,
    rank_order,
    temporal_iou,
)
from wtal.localize.pipeline import REFERENCE_THRESHOLDS
from wtal.localize.proposals import PowerMargin, track_proposals
from wtal.localize.suppression import nms_by_class


def _fuse(s, e, q, **kw):
    kw.setdefault("temperature", 0.2)
    kw.setdefault("iou_threshold", 0.25)
    return fuse_instances(np.array(s, float), np.array(e, float), np.array(q, float), **kw)


# --- overlap -------------------------------------------------------------------------------------------

def test_temporal_iou_hand_cases_and_broadcasting():
    assert temporal_iou(0, 10, 5, 15) == pytest.approx(5 / 15)
    assert temporal_iou(0, 10, 10, 20) == 0.0  # touching, exclusive ends
    assert temporal_iou(2, 4, 2, 4) == 1.0
    assert temporal_iou(3, 3, 3, 3) == 0.0  # empty union gives 0, not NaN
    assert temporal_iou(0, 10, 2, 4) == pytest.approx(0.2)  # nested
    got = temporal_iou(np.array([[0.0], [5.0]]), np.array([[10.0], [6.0]]), np.array([0.0, 5.0]), np.array([5.0, 10.0]))
    assert got.shape == (2, 2)
    np.testing.assert_allclose(got, [[0.5, 0.5], [0.0, 0.2]])


def test_reference_overlap_is_intersection_over_other_length_plus_one():
    # top [0, 10), other [8, 12): (min(10, 12) - max(0, 8) + 1) / (12 - 8 + 1) = 3 / 5
    assert overlap_with(0, 10, np.array([8.0]), np.array([12.0]), "reference")[0] == pytest.approx(0.6)
    # not symmetric: seen from [8, 12), the other one is [0, 10): 3 / 11
    assert overlap_with(8, 12, np.array([0.0]), np.array([10.0]), "reference")[0] == pytest.approx(3 / 11)
    # a gap of one snippet: intersection term 0 -> 0
    assert overlap_with(0, 10, np.array([11.0]), np.array([15.0]), "reference")[0] == 0.0


# --- hand-computed fusion ------------------------------------------------------------------------------

def test_two_overlapping_instances_gaussian_weighted_mean():
    # IoU([0,10), [2,12)) = 8 / 12 > 0.25: one group; weights softmax([0.9, 0.5] / 0.2)
    s, e, q = _fuse([0, 2], [10, 12], [0.9, 0.5])
    g_a = math.exp(4.5) / (math.exp(4.5) + math.exp(2.5))
    g_b = 1 - g_a
    assert len(s) == 1
    assert s[0] == pytest.approx(2 * g_b)
    assert e[0] == pytest.approx(10 * g_a + 12 * g_b)
    assert q[0] == pytest.approx(0.9 * g_a + 0.5 * g_b)


def test_three_instances_two_groups_sorted_by_fused_score():
    # A and B overlap (IoU 9/11); C is far away and stays alone
    s, e, q = _fuse([0, 1, 20], [10, 11, 30], [0.9, 0.6, 0.8], temperature=0.1)
    g_a = 1 / (1 + math.exp(-3.0))
    fused_q = 0.9 * g_a + 0.6 * (1 - g_a)
    assert fused_q > 0.8
    np.testing.assert_allclose(q, [fused_q, 0.8])
    np.testing.assert_allclose(s, [1 - g_a, 20.0])
    np.testing.assert_allclose(e, [10 * g_a + 11 * (1 - g_a), 30.0])


def test_group_uses_strictly_greater_iou_and_the_top_as_centre():
    # top A [0,10); C [2,10) has IoU 0.8 -> joins A; B [6,16) has IoU 4/16 = 0.25, not > 0.25 -> own group
    s, e, q, members = _fuse([0, 6, 2], [10, 16, 10], [0.9, 0.5, 0.7], return_members=True)
    groups = sorted(sorted(m.tolist()) for m in members)
    assert groups == [[0, 2], [1]]
    alone = [i for i, m in enumerate(members) if m.tolist() == [1]][0]
    assert (s[alone], e[alone], q[alone]) == (6.0, 16.0, 0.5)


def test_three_overlapping_instances_in_one_group():
    s, e, q = _fuse([0, 1, 2], [10, 10, 11], [0.3, 0.2, 0.1], temperature=0.1)
    w = np.exp(np.array([0.3, 0.2, 0.1]) / 0.1)
    g = w / w.sum()
    assert s[0] == pytest.approx(g @ [0, 1, 2])
    assert e[0] == pytest.approx(g @ [10, 10, 11])
    assert q[0] == pytest.approx(g @ [0.3, 0.2, 0.1])


def test_reference_variant_weights_from_inner_and_asymmetric_overlap():
    # A [0,20) ranks first (q); B [18,22): IoU 2/22 < 0.25, but the reference overlap is 3/5 > 0.25
    s_iou, _, _ = _fuse([0, 18], [20, 22], [0.3, 0.2])
    assert len(s_iou) == 2
    inner = np.array([0.5, 0.9])
    s, e, q = _fuse([0, 18], [20, 22], [0.3, 0.2], weights_from=inner, overlap="reference")
    g_a = math.exp(2.5) / (math.exp(2.5) + math.exp(4.5))  # weights exp(inner / T) favour B
    assert len(s) == 1
    assert s[0] == pytest.approx(18 * (1 - g_a))
    assert e[0] == pytest.approx(20 * g_a + 22 * (1 - g_a))
    assert q[0] == pytest.approx(0.3 * g_a + 0.2 * (1 - g_a))  # the fused score is the contrast


@pytest.mark.parametrize("template", ["gaussian", "exponential", "t"])
@pytest.mark.parametrize("temperature", [0.0, 1e-6])
def test_small_temperature_keeps_the_top_instance(template, temperature):
    s, e, q = _fuse([3, 0, 5, 1], [13, 12, 14, 11], [0.8, 0.79, 0.5, 0.6], temperature=temperature,
                    template=template)
    assert (s[0], e[0], q[0]) == (3.0, 13.0, 0.8)


def test_zero_temperature_splits_equally_between_tied_tops():
    s, e, q = _fuse([0, 2, 1], [10, 12, 11], [0.7, 0.7, 0.1], temperature=0.0)
    assert (s[0], e[0], q[0]) == (1.0, 11.0, 0.7)


def test_uniform_template_is_the_midrange_whatever_the_weights():
    s, e, q = _fuse([0, 1, 4], [10, 12, 11], [0.9, 0.1, 0.2], template="uniform", temperature=0.01)
    assert (s[0], e[0], q[0]) == (2.0, 11.0, pytest.approx(0.5))


def test_exponential_template_is_the_weighted_median():
    # weights softmax([1.0, 0.9, 0.8] / 1) = 0.367, 0.332, 0.301: the median start is the middle one
    s, e, q = _fuse([0, 1, 2], [10, 13, 11], [1.0, 0.9, 0.8], template="exponential", temperature=1.0)
    assert (s[0], e[0], q[0]) == (1.0, 11.0, 0.9)
    # two members with equal weights: every point between them minimises; the midpoint is returned
    s, e, _ = _fuse([0, 2], [10, 12], [0.5, 0.4], weights_from=np.array([1.0, 1.0]), template="exponential")
    assert (s[0], e[0]) == (1.0, 11.0)


def test_t_template_resists_an_outlier_and_solves_its_estimating_equation():
    starts = np.array([0.0, 0.1, 0.2, 10.0])
    s, _, _ = _fuse(starts, [20, 20, 20, 20], [0.4, 0.3, 0.2, 0.1], weights_from=np.ones(4), template="t",
                    dof=3.0)
    assert 0.0 < s[0] < 0.6 * starts.mean()  # the Gaussian template would give the mean, 2.575
    g = np.full(4, 0.25)
    scale2 = 3.0 * g @ (starts - g @ starts) ** 2
    r = starts - s[0]
    assert abs(g @ (r / (scale2 + r * r))) < 1e-9


def test_t_template_under_a_one_hot_weighting_is_the_dominant_value_without_overflow():
    """Weights of 1e-310 leave a scale near 1e-310: the outliers' distance ratios pass the float range. Their
    weights are 0 in the limit, so the location is the dominant member's value, with no overflow warning."""
    values, g, bounds = np.array([[0.0, 1.0, 5.0]]), np.array([1.0, 1e-310, 1e-309]), np.array([0, 3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fit_template(values, g, bounds, "t").tolist() == [[0.0]]


def test_empty_single_and_identical_instances():
    s, e, q = _fuse([], [], [])
    assert len(s) == len(e) == len(q) == 0
    assert _fuse([4], [9], [0.3]) == (np.array([4.0]), np.array([9.0]), np.array([0.3]))
    s, e, q = _fuse([4, 4, 4], [9, 9, 9], [0.3, 0.3, 0.3])
    assert (len(s), s[0], e[0], q[0]) == (1, 4.0, 9.0, 0.3)


def test_huge_logits_do_not_overflow():
    s, e, q = _fuse([0, 1], [10, 11], [1000.0, 999.0], temperature=1e-3)
    assert np.all(np.isfinite([s, e, q]))
    assert (s[0], e[0]) == (0.0, 10.0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="finite"):
        _fuse([0, np.nan], [1, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="temperature"):
        _fuse([0], [1], [0.1], temperature=-1.0)
    with pytest.raises(ValueError, match="template"):
        _fuse([0], [1], [0.1], template="cauchy")
    with pytest.raises(ValueError, match="length"):
        _fuse([0, 1], [1], [0.1])


def test_classes_are_fused_separately():
    cls = np.array([0, 1, 0])
    c, s, e, q = fuse_by_class(cls, np.array([0.0, 0.0, 1.0]), np.array([10.0, 10.0, 11.0]),
                               np.array([0.9, 0.8, 0.5]), temperature=0.2, iou_threshold=0.25)
    assert c.tolist() == [0, 1]
    assert (s[1], e[1], q[1]) == (0.0, 10.0, 0.8)
    g = 1 / (1 + math.exp(-2.0))
    assert s[0] == pytest.approx(1 - g)


# --- invariances and properties --------------------------------------------------------------------------

def _random_instances(rng, n, integer=True):
    s = rng.integers(0, 40, n).astype(float) if integer else rng.uniform(0, 40, n)
    e = s + rng.integers(1, 15, n)
    q = np.round(rng.uniform(-0.2, 1.0, n), 1)  # rounding makes ties
    return s, e, q


@pytest.mark.parametrize("template", ["gaussian", "exponential", "uniform", "t"])
@pytest.mark.parametrize("overlap", ["iou", "reference"])
def test_permutation_invariance(template, overlap):
    rng = np.random.default_rng(7)
    for _ in range(20):
        s, e, q = _random_instances(rng, 30)
        w = np.round(rng.uniform(0, 1, 30), 1)
        ref = fuse_instances(s, e, q, temperature=0.1, iou_threshold=0.3, template=template, weights_from=w,
                             overlap=overlap)
        p = rng.permutation(30)
        got = fuse_instances(s[p], e[p], q[p], temperature=0.1, iou_threshold=0.3, template=template,
                             weights_from=w[p], overlap=overlap)
        for a, b in zip(ref, got, strict=True):
            np.testing.assert_array_equal(a, b)


# --- copies merged into one instance with a count ----------------------------------------------------------

def test_a_count_weighs_like_that_many_copies():
    # A [0,10) q 0.9 alone, B [2,12) q 0.5 twice: weights e^4.5 : 2 e^2.5 (T = 0.2)
    s, e, q = _fuse([0, 2], [10, 12], [0.9, 0.5], count=[1, 2])
    g_b = 2 * math.exp(2.5) / (math.exp(4.5) + 2 * math.exp(2.5))
    assert len(s) == 1
    assert s[0] == pytest.approx(2 * g_b)
    assert e[0] == pytest.approx(10 * (1 - g_b) + 12 * g_b)
    assert q[0] == pytest.approx(0.9 * (1 - g_b) + 0.5 * g_b)
    copies = _fuse([0, 2, 2], [10, 12, 12], [0.9, 0.5, 0.5])
    np.testing.assert_allclose(np.concatenate((s, e, q)), np.concatenate(copies), rtol=0, atol=1e-12)


def test_copies_that_would_not_join_each_other_stay_apart():
    s, e = np.array([0.0, 5.0, 7.0]), np.array([4.0, 5.0, 9.0])
    origin, count = copies_to_rows([3, 2, 1], s, e, 0.5, "iou")  # [5, 5) is empty: IoU with itself is 0
    assert origin.tolist() == [0, 1, 1, 2] and count.tolist() == [3, 1, 1, 1]
    origin, count = copies_to_rows([3, 2, 1], s, e, 1.0, "reference")  # nothing overlaps by more than 1
    assert origin.tolist() == [0, 0, 0, 1, 1, 2] and count.tolist() == [1] * 6
    for bad in ([1, 0, 1], [1, 1.5, 1], [1, 1]):
        with pytest.raises(ValueError, match="count"):
            copies_to_rows(bad, s, e, 0.5)


def _random_cas_tracks(rng, n_tracks=8):
    """RSKP-scale columns, rounded so that some scores tie; thresholds find nested and repeated runs."""
    lengths = rng.integers(20, 90, n_tracks)
    smooth = [np.convolve(np.abs(rng.normal(0, 1, n + 4)), np.ones(5) / 5, mode="valid") for n in lengths]
    values = np.round(np.concatenate(smooth) * 0.02, 3)
    return values, lengths


def _sorted_rows(p, rows=None, repeat=None) -> np.ndarray:
    """Rows ``(track, start, end, score, inner)`` of ``p`` (those in ``rows``, ``repeat`` times each), sorted."""
    table = np.stack(p[:5], axis=1)
    table = table if rows is None else table[rows]
    table = table if repeat is None else np.repeat(table, repeat, axis=0)
    return table[np.lexsort(table.T)]


@pytest.mark.parametrize("template", ["gaussian", "exponential", "uniform", "t"])
def test_merged_copies_give_the_results_of_the_copies_on_random_cas(template):
    rng = np.random.default_rng(11)
    for _ in range(6):
        values, lengths = _random_cas_tracks(rng)
        options = dict(min_length=2, convention="reference", dedup=False)
        copies = track_proposals(values, lengths, REFERENCE_THRESHOLDS, PowerMargin(), **options)
        merged = track_proposals(values, lengths, REFERENCE_THRESHOLDS, PowerMargin(), merge_copies=True, **options)
        assert np.all(copies.count == 1) and len(merged.track) < len(copies.track)
        np.testing.assert_array_equal(_sorted_rows(merged, repeat=merged.count), _sorted_rows(copies))
        for overlap in ("iou", "reference"):
            for threshold, temperature in ((0.25, 0.2), (0.6, 0.0), (1.0, 0.2)):
                kw = dict(temperature=temperature, iou_threshold=threshold, template=template, overlap=overlap,
                          return_members=True)
                *want, want_members = fuse_by_class(copies.track, copies.start, copies.end, copies.score,
                                                    weights_from=copies.inner, **kw)
                *got, got_members = fuse_by_class(merged.track, merged.start, merged.end, merged.score,
                                                  weights_from=merged.inner, count=merged.count, **kw)
                np.testing.assert_array_equal(got[0], want[0])
                for a, b in zip(got[1:], want[1:], strict=True):
                    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
                for got_m, want_m in zip(got_members, want_members, strict=True):  # the same copies in each group
                    np.testing.assert_array_equal(_sorted_rows(merged, got_m), _sorted_rows(copies, want_m))
                if template == "gaussian":  # NMS keeps the same instances
                    want_keep = nms_by_class(copies.track, copies.start, copies.end, copies.score, threshold,
                                             overlap=overlap)
                    got_keep = nms_by_class(merged.track, merged.start, merged.end, merged.score, threshold,
                                            overlap=overlap, count=merged.count)
                    for a, b in zip(copies[:4], merged[:4], strict=True):
                        np.testing.assert_array_equal(b[got_keep], a[want_keep])


def test_vectorised_grouping_matches_the_stepwise_greedy_loop():
    rng = np.random.default_rng(3)
    for trial in range(300):
        n = int(rng.integers(1, 60))
        s, e, q = _random_instances(rng, n, integer=trial % 2 == 0)
        cat = rng.integers(0, 3, n)
        order = rank_order(q, s, e, q, cat)
        s, e, cat = s[order], e[order], cat[order]
        for overlap in ("iou", "reference"):
            for threshold in (-0.5, 0.0, 0.3, 0.7):
                expected = greedy_groups_stepwise(s, e, threshold, overlap, cat)
                for rounds in (32, 2, 0):  # 0 and 2 exercise the one-seed-at-a-time finish
                    got = greedy_groups(s, e, threshold, overlap, cat, max_rounds=rounds)
                    np.testing.assert_array_equal(got, expected)


instance_lists = st.integers(1, 25).flatmap(lambda n: st.tuples(
    st.lists(st.floats(0, 100, allow_nan=False), min_size=n, max_size=n),
    st.lists(st.floats(0, 30, allow_nan=False), min_size=n, max_size=n),
    st.lists(st.floats(-1, 1, allow_nan=False), min_size=n, max_size=n)))


@settings(max_examples=150, deadline=None)
@given(instance_lists, st.sampled_from([0.0, 1e-3, 0.03, 0.2, 5.0]), st.sampled_from([0.0, 0.25, 0.6]),
       st.sampled_from(["gaussian", "exponential", "uniform", "t"]), st.sampled_from(["iou", "reference"]))
def test_fused_values_lie_within_their_group(data, temperature, threshold, template, overlap):
    start, length, score = (np.array(x) for x in data)
    end = start + length
    s, e, q, members = fuse_instances(start, end, score, temperature=temperature, iou_threshold=threshold,
                                      template=template, overlap=overlap, return_members=True)
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(e)) and np.all(np.isfinite(q))
    assert sorted(np.concatenate(members).tolist()) == list(range(len(start)))  # a partition of the input
    assert np.all(np.diff(q) <= 0)
    for i, m in enumerate(members):
        assert start[m].min() <= s[i] <= start[m].max()
        assert end[m].min() <= e[i] <= end[m].max()
        assert score[m].min() <= q[i] <= score[m].max()
        assert s[i] <= e[i]
        top = m[0]  # the group's centre is its best-ranked member: nothing better is left in the group
        assert score[top] == score[m].max()


@settings(max_examples=200, deadline=None)
@given(st.floats(-50, 50), st.floats(0, 30), st.floats(-50, 50), st.floats(0, 30))
def test_iou_is_symmetric_bounded_and_one_only_for_equal_intervals(s1, l1, s2, l2):
    iou = float(temporal_iou(s1, s1 + l1, s2, s2 + l2))
    assert 0.0 <= iou <= 1.0
    assert iou == float(temporal_iou(s2, s2 + l2, s1, s1 + l1))
    if iou == 1.0:
        assert (s1, s1 + l1) == pytest.approx((s2, s2 + l2))
    if s1 + l1 <= s2 or s2 + l2 <= s1:
        assert iou == 0.0
