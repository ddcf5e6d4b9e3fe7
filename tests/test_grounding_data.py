"""Grounding annotations (JSON and Charades-STA lines), feature streams, resampling and validation carving."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import SHARED_DATA

from wtal.data.grounding import (
    GroundingFeatures,
    carve_validation,
    durations_from_lengths,
    read_charades_sta_lines,
    read_durations,
    read_grounding_json,
    read_queries,
    require_features,
    resample_clips,
    split_files,
    write_grounding_json,
)
from wtal.data.timebase import seconds_to_video_snippets, video_snippets_to_seconds
from wtal.errors import WtalInputError


def _shared_file(*parts):
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"real annotation file not found at {path} (it lives in ../shared/data beside the repo)")
    return path


@pytest.mark.parametrize(("parts", "queries", "videos", "clipped"), [
    (("charades-sta", "train.json"), 10602, 4842, 0),
    (("charades-sta", "test.json"), 3158, 1225, 0),
    (("activitynet-captions", "val_data.json"), 17505, 4917, 134),
    (("activitynet-captions", "test_data.json"), 17031, 4885, 111),
])
def test_real_annotation_files(parts, queries, videos, clipped):
    qs = read_grounding_json(_shared_file(*parts))
    assert (len(qs), len(qs.videos()), qs.clipped) == (queries, videos, clipped)
    assert qs.ids().tolist() == list(range(queries))
    m = qs.moments()
    d = np.array([q.duration for q in qs])
    assert (m[:, 0] >= 0).all() and (m[:, 1] <= d).all() and (m[:, 1] >= m[:, 0]).all()


def test_charades_first_entry_and_relative_length():
    qs = read_grounding_json(_shared_file("charades-sta", "train.json"))
    q = qs[0]
    assert (q.video, q.duration, q.start, q.end) == ("AO8RW", 33.67, 0.0, 6.9)
    assert q.sentence == "a person is putting a book on a shelf."
    m = qs.moments()
    rel = (m[:, 1] - m[:, 0]) / np.array([q.duration for q in qs])
    assert rel.mean() == pytest.approx(0.270, abs=0.001)


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_clipping_counts_and_values(tmp_path):
    path = _write(tmp_path, "q.json", [["v1", 10.0, [-0.5, 3.0], "a"], ["v1", 10.0, [2.0, 10.01], "b"],
                                       ["v2", 5, [1, 2], "c"]])
    qs = read_grounding_json(path)
    assert qs.clipped == 2
    np.testing.assert_array_equal(qs.moments(), [[0.0, 3.0], [2.0, 10.0], [1.0, 2.0]])


@pytest.mark.parametrize(("entries", "message"), [
    ({"v": 1}, "JSON list"),
    ([["v1", 10.0, [0, 1], "ok"], ["v1", 10.0, [0, 1]]], "entry 1 is not"),
    ([["v1", 10.0, [0, 1], "ok"], ["v1", "ten", [0, 1], "x"]], "entry 1: duration"),
    ([["v1", 10.0, [3, 1], "x"]], "entry 0: moment [3.0, 1.0] ends before"),
    ([["v1", 10.0, [11, 12], "x"]], "lies outside the video"),
    ([["v1", 0.0, [0, 1], "x"]], "not positive"),
    ([["v1", 10.0, [0, 1], "x"], ["v1", 12.0, [0, 1], "y"]], "differs from 10.0"),
    ([["v1", 10.0, [0, float("nan")], "x"]], "end nan is not a finite number"),
])
def test_malformed_json_entries(tmp_path, entries, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(WtalInputError) as err:
        read_grounding_json(path)
    assert message in str(err.value) and str(path) in str(err.value) and "fix:" in str(err.value)


def test_charades_sta_lines_with_csv_and_json_durations(tmp_path):
    lines = _write(tmp_path, "charades_sta_test.txt",
                   "3MSZA 24.3 30.4##person turn a light on.\n\n3MSZA 0.0 4.2##person flipped the switch.\n"
                   "B2Y3M 1 9##a person is eating.\n")
    csv_file = _write(tmp_path, "Charades_v1_test.csv", "id,subject,length\n3MSZA,X,30.1\nB2Y3M,Y,20.5\n")
    json_file = _write(tmp_path, "durations.json", {"3MSZA": 30.1, "B2Y3M": 20.5})
    from_csv = read_charades_sta_lines(lines, read_durations(csv_file))
    from_json = read_queries(lines, read_durations(json_file))
    assert from_csv.queries == from_json.queries
    assert [(q.id, q.video, q.start, q.end, q.sentence) for q in from_csv] == [
        (0, "3MSZA", 24.3, 30.1, "person turn a light on."), (1, "3MSZA", 0.0, 4.2, "person flipped the switch."),
        (2, "B2Y3M", 1.0, 9.0, "a person is eating.")]
    assert from_csv.clipped == 1


def test_charades_sta_line_errors(tmp_path):
    good = {"A": 10.0}
    with pytest.raises(WtalInputError, match="line 2 \\(entry 1\\)"):
        read_charades_sta_lines(_write(tmp_path, "a.txt", "A 0 1##x\nA 0 1 x\n"), good)
    with pytest.raises(WtalInputError, match="no duration known"):
        read_charades_sta_lines(_write(tmp_path, "b.txt", "B 0 1##x\n"), good)
    with pytest.raises(WtalInputError, match="carry no video durations"):
        read_queries(tmp_path / "b.txt")
    with pytest.raises(WtalInputError, match="names no video and duration"):
        read_durations(_write(tmp_path, "d.csv", "name,seconds\nA,3\n"))
    with pytest.raises(WtalInputError, match="positive finite"):
        read_durations(_write(tmp_path, "d.json", {"A": -1}))


def test_durations_from_feature_lengths_and_snippet_time():
    assert durations_from_lengths({"a": 47}, 25 / 16) == {"a": pytest.approx(30.08)}
    # snippet i of a 30 s video with 200 snippets covers [0.15 i, 0.15 (i + 1))
    np.testing.assert_allclose(video_snippets_to_seconds([0, 1, 200], 30.0, 200), [0.0, 0.15, 30.0])
    np.testing.assert_allclose(seconds_to_video_snippets([0.15, 29.85], 30.0, 200), [1.0, 199.0])


def test_write_read_roundtrip_and_withheld_moments(tmp_path):
    src = _write(tmp_path, "q.json", [["v1", 10.0, [0.5, 3.0], "a b"], ["v2", 5.0, [1.0, 2.0], "c"]])
    qs = read_grounding_json(src)
    assert read_grounding_json(write_grounding_json(tmp_path / "out.json", qs)).queries == qs.queries
    hidden = qs.without_moments()
    assert [q.sentence for q in hidden] == ["a b", "c"] and not any(q.has_moment for q in hidden)
    with pytest.raises(WtalInputError, match="no moment"):
        hidden.moments()
    with pytest.raises(WtalInputError, match="without moments"):
        write_grounding_json(tmp_path / "x.json", hidden)


def test_split_files(tmp_path):
    with pytest.raises(WtalInputError, match="no training and test"):
        split_files(tmp_path)
    for name in ("train_data.json", "test_data.json"):
        (tmp_path / name).write_text("[]")
    assert [p.name for p in split_files(tmp_path)] == ["train_data.json", "test_data.json"]


def test_carve_validation_by_video_seeded_and_order_free(tmp_path):
    rows = [[f"v{i // 3}", 30.0, [0.0, 5.0], f"s{i}"] for i in range(60)]  # 20 videos, 3 queries each
    qs = read_grounding_json(_write(tmp_path, "t.json", rows))
    train, val = carve_validation(qs, 0.25, seed=3)
    assert len(val.videos()) == 5 and len(train.videos()) == 15
    assert not set(train.videos()) & set(val.videos())
    assert sorted(np.concatenate([train.ids(), val.ids()]).tolist()) == list(range(60))
    random.Random(0).shuffle(rows)
    _, val_shuffled = carve_validation(read_grounding_json(_write(tmp_path, "s.json", rows)), 0.25, seed=3)
    assert set(val_shuffled.videos()) == set(val.videos())
    assert set(carve_validation(qs, 0.25, seed=4)[1].videos()) != set(val.videos())
    assert len(carve_validation(qs, 0.001, seed=0)[1].videos()) == 1  # at least one video
    with pytest.raises(WtalInputError, match="not in \\[0, 1\\)"):
        carve_validation(qs, 1.0, seed=0)


# ----------------------------------------------------------------------------------------------- features


def _npy_streams(root, lengths, widths=(("rgb", 6), ("flow", 4))):
    rng = np.random.default_rng(0)
    data = {}
    for stream, d in widths:
        (root / stream).mkdir(parents=True, exist_ok=True)
        for video, t in lengths.items():
            x = rng.random((t, d)).astype(np.float32)
            np.save(root / stream / f"{video}.npy", x)
            data[stream, video] = x
    return data


def test_folder_streams_widths_order_and_loading(tmp_path):
    root = tmp_path / "features"
    data = _npy_streams(root, {"a": 5, "b": 3}, widths=(("clip", 3), ("flow", 4), ("rgb", 6)))
    feats = GroundingFeatures(root)
    assert feats.streams == ("rgb", "flow", "clip")
    assert feats.stream_widths() == {"rgb": 6, "flow": 4, "clip": 3}
    assert feats.videos() == {"a", "b"}
    out = feats.features("b", ["flow"])
    assert list(out) == ["flow"]
    np.testing.assert_array_equal(out["flow"], data["flow", "b"])
    with pytest.raises(WtalInputError, match="unknown feature stream"):
        feats.features("a", ["audio"])


def test_stream_length_mismatch_and_missing_video(tmp_path):
    root = tmp_path / "features"
    _npy_streams(root, {"a": 5})
    np.save(root / "flow" / "b.npy", np.zeros((7, 4), np.float32))
    np.save(root / "rgb" / "b.npy", np.zeros((6, 6), np.float32))
    feats = GroundingFeatures(root)
    with pytest.raises(WtalInputError) as err:
        feats.features("b")
    assert "'rgb' has 6 snippets but stream 'flow' has 7" in str(err.value) and "video: b" in str(err.value)
    (root / "rgb" / "b.npy").unlink()
    assert feats.videos() == {"a"} and feats.videos(["flow"]) == {"a", "b"}
    with pytest.raises(WtalInputError, match="no features of stream 'rgb'"):
        feats.features("b")
    np.save(root / "rgb" / "c.npy", np.zeros((5, 9), np.float32))
    np.save(root / "flow" / "c.npy", np.zeros((5, 4), np.float32))
    with pytest.raises(WtalInputError, match="has 9 columns here but 6"):
        feats.features("c")


def test_singleton_axes_are_squeezed(tmp_path):
    (tmp_path / "f" / "rgb").mkdir(parents=True)
    x = np.arange(12, dtype=np.float32).reshape(3, 1, 1, 4)
    np.save(tmp_path / "f" / "rgb" / "v.npy", x)
    np.testing.assert_array_equal(GroundingFeatures(tmp_path / "f").features("v")["rgb"], x.reshape(3, 4))


def test_hdf5_streams_dataset_and_group_layouts(tmp_path):
    h5py = pytest.importorskip("h5py")
    root = tmp_path / "features"
    root.mkdir()
    rgb, c3d = np.random.default_rng(1).random((2, 5, 3)).astype(np.float32)
    with h5py.File(root / "rgb.hdf5", "w") as f:  # CPL's Charades layout: one dataset per video
        f["v1"] = rgb
        f["v2"] = rgb[:2]
    with h5py.File(root / "c3d.h5", "w") as f:  # CPL's ActivityNet layout: VIDEO/c3d_features
        f.create_group("v1")["c3d_features"] = c3d
        g = f.create_group("v2")
        g["c3d_features"] = c3d[:2]
        g["other"] = c3d[:2]
    feats = GroundingFeatures(root)
    assert feats.streams == ("rgb", "c3d") and feats.stream_widths() == {"rgb": 3, "c3d": 3}
    out = feats.features("v1")
    np.testing.assert_array_equal(out["rgb"], rgb)
    np.testing.assert_array_equal(out["c3d"], c3d)
    assert feats.features("v2")["c3d"].shape == (2, 3)
    with pytest.raises(WtalInputError, match="no dataset for this video"):
        feats.features("v3")


def test_require_features_error_or_drop(tmp_path):
    qs = read_grounding_json(_write(tmp_path, "q.json", [["a", 9.0, [0, 1], "x"], ["b", 9.0, [0, 1], "y"],
                                                         ["a", 9.0, [1, 2], "z"]]))
    with pytest.raises(WtalInputError, match="1 of 2 videos have no features \\(first: b\\)"):
        require_features(qs, {"a"})
    kept, dropped = require_features(qs, {"a"}, drop_missing=True)
    assert dropped == 1 and kept.ids().tolist() == [0, 2]


def _cpl_resample(x, n):
    """CPL's resampling loop, written out: rounded boundaries clamped to T - 1, mean or single feature."""
    idx = np.round(np.arange(0, n + 1) / n * len(x)).astype(np.int64)
    idx[idx >= len(x)] = len(x) - 1
    return np.stack([x[s] if s == e else x[s:e].mean(axis=0) for s, e in zip(idx[:-1], idx[1:], strict=True)])


@pytest.mark.parametrize("t", [1, 2, 3, 47, 199, 200, 201, 457])
def test_resample_matches_cpl_loop(t):
    x = np.random.default_rng(t).random((t, 5)).astype(np.float32)
    out = resample_clips(x, 200)
    assert out.shape == (200, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out, _cpl_resample(x, 200), rtol=1e-5, atol=1e-6)
