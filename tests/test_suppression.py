"""Hard NMS and soft-NMS against hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wtal.localize.suppression import nms, nms_by_class, soft_nms


def _arr(*xs):
    return tuple(np.array(x, dtype=float) for x in xs)


def test_nms_keeps_greedy_maxima():
    # B overlaps A by 9/11 > 0.5 -> dropped; C overlaps A by 5/15 -> kept; D is alone
    s, e, q = _arr([0, 1, 5, 20], [10, 11, 15, 30], [0.9, 0.8, 0.7, 0.1])
    assert nms(s, e, q, 0.5).tolist() == [0, 2, 3]


def test_nms_suppressed_instances_suppress_nothing():
    # B is dropped by A (IoU 1/3 > 0.3); C overlaps only B, so it survives
    s, e, q = _arr([0, 5, 10], [10, 15, 20], [0.9, 0.8, 0.7])
    assert nms(s, e, q, 0.3).tolist() == [0, 2]


def test_nms_threshold_is_strict_and_ties_go_to_the_earlier_start():
    s, e, q = _arr([6, 0], [16, 10], [0.5, 0.5])  # IoU 4/16 = 0.25
    assert nms(s, e, q, 0.25).tolist() == [1, 0]
    assert nms(s, e, q, 0.2).tolist() == [1]


def test_nms_reference_overlap():
    # seen from A [0,20), B [18,22) overlaps by (20 - 18 + 1) / 5 = 0.6
    s, e, q = _arr([0, 18], [20, 22], [0.9, 0.5])
    assert nms(s, e, q, 0.25).tolist() == [0, 1]
    assert nms(s, e, q, 0.25, overlap="reference").tolist() == [0]


def test_nms_by_class_does_not_mix_classes_and_empty_input():
    s, e, q = _arr([0, 0, 1], [10, 10, 10], [0.9, 0.8, 0.7])
    assert nms_by_class(np.array([1, 0, 1]), s, e, q, 0.5).tolist() == [1, 0]
    assert nms(*_arr([], [], []), 0.5).tolist() == []


def test_nms_is_permutation_invariant():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 50, 40).astype(float)
    e = s + rng.integers(1, 10, 40)
    q = np.round(rng.uniform(0, 1, 40), 1)
    keep = nms(s, e, q, 0.3)
    p = rng.permutation(40)
    assert sorted(p[nms(s[p], e[p], q[p], 0.3)].tolist()) == sorted(keep.tolist())


def test_soft_nms_gaussian_hand_case():
    # B is identical to A: 0.8 * exp(-1 / 0.5); C is far away and keeps 0.5
    s, e, q = soft_nms(*_arr([0, 0, 20], [10, 10, 30], [0.9, 0.8, 0.5]), sigma=0.5)
    np.testing.assert_allclose(q, [0.9, 0.5, 0.8 * math.exp(-2.0)])
    assert s.tolist() == [0.0, 20.0, 0.0]
    assert e.tolist() == [10.0, 30.0, 10.0]


def test_soft_nms_gaussian_decays_compound():
    s0, e0, q0 = _arr([0, 2, 4], [10, 12, 14], [0.9, 0.85, 0.8])
    iou = lambda a, b: max(0, min(e0[a], e0[b]) - max(s0[a], s0[b])) / (  # noqa: E731
        (e0[a] - s0[a]) + (e0[b] - s0[b]) - max(0, min(e0[a], e0[b]) - max(s0[a], s0[b])))
    decay = lambda a, b: math.exp(-iou(a, b) ** 2 / 0.5)  # noqa: E731
    b1, c1 = 0.85 * decay(0, 1), 0.8 * decay(0, 2)  # after picking A, C (further from A) overtakes B
    assert c1 > b1
    b2 = b1 * decay(2, 1)  # after picking C
    s, _, q = soft_nms(s0, e0, q0, sigma=0.5)
    np.testing.assert_allclose(q, [0.9, c1, b2])
    assert s.tolist() == [0.0, 4.0, 2.0]


def test_soft_nms_linear_and_score_threshold():
    # B: IoU 1/3 > 0.3 -> 0.8 * (2/3); C identical to A -> 0 -> dropped; D negative from the start -> dropped
    s, e, q = soft_nms(*_arr([0, 5, 0, 40], [10, 15, 10, 50], [0.9, 0.8, 0.7, -0.1]), method="linear",
                       iou_threshold=0.3)
    np.testing.assert_allclose(q, [0.9, 0.8 * 2 / 3])
    assert s.tolist() == [0.0, 5.0]


def test_soft_nms_bad_arguments():
    with pytest.raises(ValueError):
        soft_nms(*_arr([0], [1], [1]), method="cubic")
    with pytest.raises(ValueError):
        soft_nms(*_arr([0], [1], [1]), sigma=0.0)
    with pytest.raises(ValueError):
        nms(*_arr([0], [1], [np.inf]), 0.5)
