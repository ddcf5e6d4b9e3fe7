"""benchmarks/grounding_baselines.py and the shuffle control it scores predictions with (permute_within)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import load_benchmark, run_benchmark_main

from wtal.errors import WtalInputError
from wtal.evaluation.grounding import grounding_recall, permute_within

baselines = load_benchmark("grounding_baselines")


def test_permute_within_keeps_every_row_in_its_group():
    groups = np.array(["a", "b", "a", "a", "b", "c", "a"])
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        perm = permute_within(groups, rng)
        assert sorted(perm.tolist()) == list(range(len(groups)))  # a permutation
        assert (groups[perm] == groups).all()
        assert perm[5] == 5  # alone in its group
        seen.add(tuple(perm[groups == "a"].tolist()))
    assert len(seen) > 10  # the 4 rows of "a" are really shuffled (24 orders)
    np.testing.assert_array_equal(permute_within(groups, np.random.default_rng(3)),
                                  permute_within(groups, np.random.default_rng(3)))


def test_a_prediction_blind_to_what_is_shuffled_scores_the_same_as_its_control():
    rng = np.random.default_rng(1)
    videos = np.repeat(np.arange(30), 3)
    moments = np.sort(rng.random((len(videos), 2)), axis=1)
    per_video = np.sort(rng.random((30, 5, 2)), axis=2)[videos]  # the same ranked list for a video's sentences
    counts = np.full(len(videos), 5)
    as_is = baselines.report_values(grounding_recall(per_video, counts, moments))
    np.testing.assert_allclose(baselines.shuffled(per_video, counts, moments, videos, 5), as_is)
    constant = np.broadcast_to(per_video[:1], per_video.shape)
    np.testing.assert_allclose(baselines.shuffled(constant, counts, moments, np.zeros(len(videos)), 5),
                               baselines.report_values(grounding_recall(constant, counts, moments)))
    # a prediction that knows each sentence's moment loses when moved to another sentence of its video
    perfect = moments[:, None, :]
    within = baselines.shuffled(perfect, np.ones(len(videos), int), moments, videos, 5)
    assert within[3] < 60.0 and within[4] < 80.0  # R@1 at IoU 0.7 and mIoU, from 100


def _folder(tmp_path):
    rng = np.random.default_rng(0)
    train = [[f"t{i}", 20.0, [2.0 * (i % 3), 2.0 * (i % 3) + 5.0], "someone opens a door"] for i in range(20)]
    starts = rng.uniform(0, 14, size=12)  # two sentences per test video
    test = [[f"v{i // 2}", 20.0, [float(s), float(s) + 6.0], "a person sits down"] for i, s in enumerate(starts)]
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "test.json").write_text(json.dumps(test))
    return test


def _write_pred(path, test, segments_s):
    results = [{"query": i, "video": q[0], "segments": segments_s[i], "scores": list(range(len(segments_s[i]), 0, -1))}
               for i, q in enumerate(test)]
    path.write_text(json.dumps({"task": "grounding", "results": results}))
    return str(path)


def test_script_end_to_end(tmp_path):
    test = _folder(tmp_path)
    perfect = _write_pred(tmp_path / "perfect.json", test, [[q[2], [0.0, 1.0]] for q in test])
    whole = _write_pred(tmp_path / "whole.json", test, [[[0.0, 20.0]] for _ in test])
    code, out = run_benchmark_main(baselines, ["--data", str(tmp_path), "--pred", perfect, whole,
                                               "--permutations", "4"])
    assert code == 0
    lines = {line.split("|")[0].strip(): line for line in out.splitlines() if "|" in line}
    assert "100.00 100.00 100.00 100.00 | 100.00" in lines[perfect]
    assert lines["whole video"].split("|")[1:] == lines[whole].split("|")[1:]  # the same segments, read from file
    assert "prior (fitted on 2 validation moments)" in lines  # 2 of the 20 training videos carved, never test
    mean = lines["mean ± sample std over 2 files"].split("|")[2].strip()
    miou_whole = float(lines[whole].split("|")[2])
    assert mean == f"{(100 + miou_whole) / 2:.2f} ± {np.std([100, miou_whole], ddof=1):.2f}"
    assert "top-1 length 1.000, centre 0.500" in out  # the whole-video file
    assert "top-1 length 0.300, centre" in out and "correlation with the moments' centres 1.000" in out  # perfect


def test_script_refuses_a_prediction_for_another_file(tmp_path):
    test = _folder(tmp_path)
    short = _write_pred(tmp_path / "short.json", test[:-1], [[q[2]] for q in test[:-1]])
    with pytest.raises(WtalInputError, match="1 of 12 queries have no prediction"):
        run_benchmark_main(baselines, ["--data", str(tmp_path), "--pred", short])
