"""The localize pipeline: presets, gating, edge cases, seconds, CAS files and the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import load_benchmark

from wtal.cli import main
from wtal.data.timebase import snippets_to_seconds
from wtal.errors import WtalInputError
from wtal.localize import (
    LocalizeConfig,
    localize_video,
    localize_videos,
    read_cas_file,
    write_cas_file,
)
from wtal.localize.command import localize_command
from wtal.localize.pipeline import REFERENCE_THRESHOLDS, localize_batch, suppress
from wtal.localize.proposals import track_proposals

CLASSES = ["Jump", "Run", "Swim"]


def _video(seed=0, n_t=120):
    """RSKP-scale CAS: class 1 has a clear action at snippets [40, 60), class 2 a weak one."""
    rng = np.random.default_rng(seed)
    cas = np.abs(rng.normal(0, 0.001, (n_t, 3)))
    cas[40:60, 1] += 0.03
    cas[90:95, 2] += 0.01
    return cas, np.array([0.05, 0.9, 0.2])


# --- configuration ---------------------------------------------------------------------------------------

def test_presets_and_overrides():
    paper = LocalizeConfig.from_preset("paper")
    assert (paper.temperature, paper.fuse_iou, paper.overlap, paper.dedup) == (0.03, 0.25, "iou", True)
    assert paper.threshold_mode == "relative" and len(paper.thresholds) == 20
    ref = LocalizeConfig.from_preset("reference", temperature=None, class_threshold=0.3)
    assert (ref.temperature, ref.class_threshold, ref.margin, ref.overlap) == (0.2, 0.3, "power", "reference")
    assert (ref.fusion_weights, ref.dedup, ref.threshold_mode) == ("inner", False, "absolute")
    np.testing.assert_allclose(ref.thresholds, np.arange(0.001, 0.04, 0.002))
    assert len(REFERENCE_THRESHOLDS) == 20


def test_relative_mode_without_a_grid_takes_the_relative_grid():
    # the reference preset's absolute grid (0.001..0.039) read as fractions would cut every CAS at its floor
    ref_relative = LocalizeConfig.from_preset("reference", threshold_mode="relative")
    assert ref_relative.thresholds == LocalizeConfig.from_preset("paper").thresholds
    assert min(ref_relative.thresholds) == pytest.approx(0.025) and max(ref_relative.thresholds) == pytest.approx(0.975)
    # an explicit grid is kept in either mode, and the absolute reference grid is untouched
    assert LocalizeConfig.from_preset("reference", threshold_mode="relative", thresholds=[0.5]).thresholds == (0.5,)
    assert LocalizeConfig.from_preset("reference").thresholds == REFERENCE_THRESHOLDS


@pytest.mark.parametrize("overrides", [{"temperature": -1.0}, {"method": "wbf"}, {"template": "cauchy"},
                                       {"thresholds": []}, {"min_length": 0}, {"nonsense": 1},
                                       {"temperature_mode": "scaled"}])
def test_bad_settings_raise_input_errors(overrides):
    with pytest.raises(WtalInputError):
        LocalizeConfig.from_preset("paper", **overrides)
    with pytest.raises(WtalInputError):
        LocalizeConfig.from_preset("best")


# --- one video -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("template", ["gaussian", "exponential", "t"])
def test_relative_temperature_makes_fusion_scale_free(template):
    # relative thresholds find the same runs on k * CAS; a relative temperature then gives the same fused
    # boundaries and k times the scores, while an absolute one sharpens the weights as k grows
    cas, scores = _video(seed=4)
    cas[30:70, 1] += np.linspace(0.0, 0.02, 40)  # uneven: proposals at different thresholds disagree
    relative = LocalizeConfig.from_preset("paper", temperature_mode="relative", temperature=0.75,
                                          template=template, class_threshold=0.0)
    absolute = LocalizeConfig.from_preset("paper", temperature=0.03, template=template, class_threshold=0.0)
    base = localize_video(cas, scores, relative)
    assert len(base) > 0
    for k in (0.01, 25.0):
        scaled = localize_video(k * cas, scores, relative)
        np.testing.assert_array_equal(scaled.cls, base.cls)
        np.testing.assert_allclose(scaled.start, base.start, rtol=0, atol=1e-9)
        np.testing.assert_allclose(scaled.end, base.end, rtol=0, atol=1e-9)
        np.testing.assert_allclose(scaled.score, k * base.score, rtol=1e-9, atol=0)
    small, large = localize_video(0.01 * cas, scores, absolute), localize_video(25.0 * cas, scores, absolute)
    assert not (np.allclose(small.start, large.start) and np.allclose(small.end, large.end))


def test_relative_temperature_is_the_absolute_one_times_the_column_range():
    cas, scores = _video(seed=5)
    cas[30:70, 1] += np.linspace(0.0, 0.02, 40)
    one = cas[:, [1]]
    spread = float(one.max() - one.min())
    got = localize_video(one, None, LocalizeConfig.from_preset("paper", temperature_mode="relative", temperature=0.5))
    want = localize_video(one, None, LocalizeConfig.from_preset("paper", temperature=0.5 * spread))
    for a, b in zip((got.start, got.end, got.score), (want.start, want.end, want.score), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="column ranges"):
        suppress(np.zeros(1, np.int64), np.zeros(1), np.ones(1), np.ones(1), np.ones(1),
                 LocalizeConfig.from_preset("paper", temperature_mode="relative"))


@pytest.mark.parametrize("preset", ["paper", "reference"])
@pytest.mark.parametrize("method", ["fusion", "nms", "soft-nms"])
def test_a_clear_action_is_found(preset, method):
    cas, scores = _video()
    out = localize_video(cas, scores, LocalizeConfig.from_preset(preset, method=method))
    assert set(out.cls.tolist()) == {1, 2}  # class 0 is gated out by its video score
    best = np.argmax(np.where(out.cls == 1, out.score, -np.inf))
    assert abs(out.start[best] - 40) <= 1.5 and abs(out.end[best] - 60) <= 1.5
    assert np.all(np.diff(out.cls) >= 0)
    for c in (1, 2):
        assert np.all(np.diff(out.score[out.cls == c]) <= 0)


def test_gating_by_score_threshold_or_labels():
    cas, scores = _video()
    cfg = LocalizeConfig.from_preset("paper")
    assert set(localize_video(cas, scores, cfg).cls.tolist()) == {1, 2}
    strict = LocalizeConfig.from_preset("paper", class_threshold=0.5)
    assert set(localize_video(cas, scores, strict).cls.tolist()) == {1}
    assert set(localize_video(cas, scores, cfg, labels=np.array([0, 0, 1])).cls.tolist()) == {2}
    assert set(localize_video(cas, None, cfg).cls.tolist()) >= {1, 2}  # no scores: every class is tried


@pytest.mark.parametrize("preset", ["paper", "reference"])
@pytest.mark.parametrize("cas", [np.zeros((1, 3)), np.full((1, 3), 0.5), np.full((50, 3), 0.02), np.zeros((50, 3)),
                                 np.full((3, 3), -7.0)])
def test_degenerate_cas_gives_finite_output(preset, cas):
    for method in ("fusion", "nms", "soft-nms"):
        out = localize_video(cas, None, LocalizeConfig.from_preset(preset, method=method))
        assert np.all(np.isfinite(out.start)) and np.all(np.isfinite(out.score))
        assert out.cls.dtype == np.int64 and out.start.dtype == np.float64


@pytest.mark.parametrize("bad", [np.zeros((0, 3)), np.zeros(5), np.array([[0.1, np.nan, 0.2]]),
                                 np.array([["a", "b", "c"]])])
def test_bad_cas_raises_input_error(bad):
    with pytest.raises(WtalInputError):
        localize_video(bad, None, LocalizeConfig())


def test_bad_video_scores_raise_input_error_with_the_video():
    cas, _ = _video()
    with pytest.raises(WtalInputError, match="video: v1"):
        localize_video(cas, np.array([0.1, 0.2]), LocalizeConfig(), video="v1")


@pytest.mark.parametrize("preset, overrides", [("paper", {}), ("reference", {}),
                                               ("paper", {"temperature_mode": "relative", "temperature": 0.75}),
                                               ("reference", {"temperature_mode": "relative"})])
def test_matches_the_straightforward_implementation(preset, overrides):
    bench = load_benchmark("bench_localize")
    cfg = LocalizeConfig.from_preset(preset, **overrides)
    cas, scores = bench.synthetic_cas(seed=3)
    names = list(cas)[:12]
    cas, scores = {n: cas[n] for n in names}, {n: scores[n] for n in names}
    table = localize_videos(cas, scores, [f"class_{c}" for c in range(bench.N_CLASSES)], cfg, 1.5625)
    assert bench.compare(table, bench.slow_localize(cas, scores, cfg, 1.5625)).startswith("identical")


@pytest.mark.parametrize("overrides", [{"method": "fusion"}, {"method": "fusion", "fuse_iou": 1.0},
                                       {"method": "nms"}, {"method": "nms", "nms_iou": 1.0}, {"method": "soft-nms"}])
def test_merging_identical_proposals_changes_no_result(overrides):
    # the reference preset keeps each copy of a run found at several thresholds; the pipeline merges them
    cfg = LocalizeConfig.from_preset("reference", class_threshold=0.0, **overrides)
    rng = np.random.default_rng(2)
    cas = [np.round(np.abs(rng.normal(0, 0.01, (n_t, 3))), 3) for n_t in (30, 75, 140)]
    cas[1][20:35, 2] += 0.03
    video, cls, start, end, score = localize_batch(cas, [None] * 3, cfg)
    copies = track_proposals(np.concatenate([c.T.ravel() for c in cas]), np.repeat([len(c) for c in cas], 3),
                             cfg.thresholds, cfg.outer_margin(), min_length=cfg.min_length, convention="reference",
                             dedup=False)
    assert len(copies.track) > len(np.unique(np.stack(copies[:3]), axis=1).T)  # there are copies to merge
    track, *want = suppress(copies.track, copies.start, copies.end, copies.score, copies.inner, cfg)
    want_video, want_cls = np.divmod(track, 3)  # track i * 3 + c is column c of video i
    np.testing.assert_array_equal(video, want_video)
    np.testing.assert_array_equal(cls, want_cls)
    for got, expected in zip((start, end, score), want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


# --- many videos, seconds ----------------------------------------------------------------------------

def test_localize_videos_converts_through_the_timebase_and_batches_consistently():
    rng = np.random.default_rng(5)
    cas, scores = {}, {}
    for i in range(5):
        video, s = _video(seed=i, n_t=int(rng.integers(70, 200)))
        cas[f"v{i}"], scores[f"v{i}"] = video, s
    cfg = LocalizeConfig.from_preset("paper")
    table = localize_videos(cas, scores, CLASSES, cfg, 2.5)
    assert table.classes == tuple(CLASSES)
    for name in cas:
        one = localize_video(cas[name], scores[name], cfg)
        mine = table.video == name
        np.testing.assert_array_equal(table.label[mine], one.cls)
        np.testing.assert_allclose(table.start[mine], snippets_to_seconds(one.start, 2.5))
        np.testing.assert_allclose(table.end[mine], snippets_to_seconds(one.end, 2.5))
        np.testing.assert_allclose(table.score[mine], one.score)
    small = localize_videos(cas, scores, CLASSES, cfg, 2.5, batch_snippets=1)
    for column in ("start", "end", "score", "label"):
        np.testing.assert_allclose(getattr(small, column), getattr(table, column))
    assert small.video.tolist() == table.video.tolist()


def test_localize_videos_rejects_mismatched_inputs():
    cas, scores = _video()
    with pytest.raises(WtalInputError, match="video: a"):
        localize_videos({"a": cas}, {"b": scores}, CLASSES, LocalizeConfig(), 1.5625)
    with pytest.raises(WtalInputError, match="3 class columns but 2"):
        localize_videos({"a": cas}, None, CLASSES[:2], LocalizeConfig(), 1.5625)


def test_localize_batch_with_no_gated_class():
    out = localize_batch([np.zeros((10, 3))], [np.zeros(3)], LocalizeConfig())
    assert all(len(x) == 0 for x in out)


# --- CAS files and the command -----------------------------------------------------------------------

def test_cas_file_round_trip(tmp_path):
    cas_a, s_a = _video(0)
    cas_b, s_b = _video(1, n_t=30)
    path = write_cas_file(tmp_path / "cas.npz", {"video a": cas_a.astype(np.float32), "b": cas_b}, CLASSES, 2.0,
                          {"video a": s_a, "b": s_b})
    cas, scores, classes, rate = read_cas_file(path)
    assert list(cas) == ["video a", "b"] and classes == CLASSES and rate == 2.0
    np.testing.assert_allclose(cas["video a"], cas_a.astype(np.float32))
    assert cas["b"].dtype == np.float64
    np.testing.assert_array_equal(scores["b"], s_b)
    write_cas_file(tmp_path / "plain.npz", {"b": cas_b}, CLASSES)
    cas, scores, _, rate = read_cas_file(tmp_path / "plain.npz")
    assert scores is None and rate == 1.5625


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays, message", [
    ({"v": np.zeros((4, 3))}, "__classes__"),
    ({"v": np.zeros((4, 2)), "__classes__": np.array(CLASSES)}, "2 columns"),
    ({"v": np.full((4, 3), np.nan), "__classes__": np.array(CLASSES)}, "NaN"),
    ({"v": np.zeros((0, 3)), "__classes__": np.array(CLASSES)}, "T >= 1"),
    ({"__classes__": np.array(CLASSES)}, "no videos"),
    ({"v": np.zeros((4, 3)), "w": np.zeros((4, 3)), "v/score": np.zeros(3), "__classes__": np.array(CLASSES)},
     "some videos"),
    ({"v": np.zeros((4, 3)), "x/score": np.zeros(3), "__classes__": np.array(CLASSES)}, "belong to no video"),
    ({"v": np.zeros((4, 3)), "v/score": np.zeros(2), "__classes__": np.array(CLASSES)}, "video scores"),
    ({"v": np.zeros((4, 3)), "__classes__": np.array(CLASSES), "__fps__": np.float64(-1)}, "positive"),
    ({"v": np.zeros((4, 3)), "__classes__": np.array(CLASSES), "__extra__": np.zeros(1)}, "reserved"),
    ({"v": np.array([[None] * 3], dtype=object), "__classes__": np.array(CLASSES)},
     "array 'v' holds Python objects"),
])
def test_bad_cas_files_raise_input_errors(tmp_path, arrays, message):
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(WtalInputError, match=message) as info:
        read_cas_file(path)
    assert info.value.path == str(path)


def test_unreadable_or_missing_cas_files(tmp_path):
    with pytest.raises(WtalInputError, match="not found"):
        read_cas_file(tmp_path / "missing.npz")
    with pytest.raises(WtalInputError, match="cannot be stored"):
        write_cas_file(tmp_path / "x.npz", {"a/b": np.zeros((2, 3))}, CLASSES)
    with pytest.raises(WtalInputError, match="no video scores"):
        write_cas_file(tmp_path / "x.npz", {"a": np.zeros((2, 3))}, CLASSES, scores={})
    assert not (tmp_path / "x.npz").exists()


def _zip_member_corrupted(path, marker: bytes):
    """Flip one byte of the stored (uncompressed) data that starts with ``marker``: its CRC no longer matches."""
    data = bytearray(path.read_bytes())
    data[data.index(marker) + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(("content", "what"), [
    (b'{"results": {}}\n', "this is a text file starting with '{\"results\": {}}'"),
    (b"", "this is an empty file"),
    (b"\x80\x04\x95 pickled", "this is a Python pickle"),
    (bytes(range(16)), "this is a binary file of unknown format (first bytes 00 01 02"),
])
def test_a_file_that_is_not_an_npz_archive_is_named_for_what_it_is(tmp_path, content, what):
    path = tmp_path / "cas.npz"
    path.write_bytes(content)
    with pytest.raises(WtalInputError) as info:
        read_cas_file(path)
    message = str(info.value)
    assert message.startswith(what) and "not a numpy .npz archive (a zip file of .npy arrays" in message
    assert info.value.path == str(path) and "wtal predict --cas" in info.value.fix
    assert "allow_pickle" not in message and "pickle.load" not in message and "unsafe" not in message


def test_a_single_npy_array_and_a_truncated_archive(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros((4, 3)))
    (tmp_path / "one.npy").rename(tmp_path / "one.npz")
    with pytest.raises(WtalInputError, match="this is a single numpy .npy array, not a numpy .npz") as info:
        read_cas_file(tmp_path / "one.npz")
    assert "one array per video" in info.value.fix
    good = write_cas_file(tmp_path / "good.npz", {"v": np.zeros((40, 3))}, CLASSES)
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:200])
    with pytest.raises(WtalInputError, match="damaged or truncated zip archive"):
        read_cas_file(tmp_path / "cut.npz")


def test_an_unreadable_array_is_named_by_its_key(tmp_path):
    ok = {"good": np.zeros((4, 3)), "__classes__": np.array(CLASSES)}
    path = _npz(tmp_path / "objects.npz", **ok, clip_7=np.array([[None] * 3], dtype=object))
    with pytest.raises(WtalInputError, match=r"array 'clip_7' holds Python objects \(dtype object\), not numbers"
                       ) as info:
        read_cas_file(path)
    assert "allow_pickle" not in str(info.value) and "float32" in info.value.fix
    path = _npz(tmp_path / "names.npz", good=np.zeros((4, 3)), __classes__=np.array(CLASSES, dtype=object))
    with pytest.raises(WtalInputError, match="array '__classes__' holds Python objects") as info:
        read_cas_file(path)
    assert "dtype=str" in info.value.fix
    path = _zip_member_corrupted(_npz(tmp_path / "crc.npz", **ok, clip_8=np.full((50, 3), 7.25)),
                                 np.float64(7.25).tobytes() * 4)
    with pytest.raises(WtalInputError, match=r"array 'clip_8' cannot be read \(Bad CRC-32") as info:
        read_cas_file(path)
    assert info.value.path == str(path) and "write the CAS file again" in info.value.fix


def test_duplicate_class_names_are_named(tmp_path):
    path = _npz(tmp_path / "dup.npz", v=np.zeros((4, 5)), __classes__=np.array(["a", "b", "a", "c", "c"]))
    with pytest.raises(WtalInputError, match=r"duplicate class names in '__classes__': \['a', 'c'\]") as info:
        read_cas_file(path)
    assert info.value.path == str(path) and "own class name" in info.value.fix
    with pytest.raises(WtalInputError, match=r"duplicate class names in '__classes__': \['Run'\]"):
        write_cas_file(tmp_path / "out.npz", {"v": np.zeros((4, 3))}, ["Run", "Jump", "Run"])
    assert not (tmp_path / "out.npz").exists()


def test_localize_command_writes_activitynet_json(tmp_path, capsys):
    cas_a, s_a = _video(0)
    path = write_cas_file(tmp_path / "cas.npz", {"a": cas_a, "b": np.zeros((5, 3))}, CLASSES, 2.0,
                          {"a": s_a, "b": np.zeros(3)})
    out = tmp_path / "preds.json"
    assert localize_command(str(path), str(out), "fusion", "paper", None, None, None) == 0
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"a"}
    expected = localize_video(cas_a, s_a, LocalizeConfig.from_preset("paper"))
    rows = data["results"]["a"]
    assert len(rows) == len(expected)
    assert rows[0]["label"] == CLASSES[expected.cls[0]]
    assert rows[0]["segment"] == pytest.approx([expected.start[0] / 2.0, expected.end[0] / 2.0])
    assert "detections" in capsys.readouterr().out


def test_cli_localize_and_its_errors(tmp_path, capsys):
    cas_a, s_a = _video(0)
    path = write_cas_file(tmp_path / "cas.npz", {"a": cas_a}, CLASSES, scores={"a": s_a})
    out = tmp_path / "preds.json"
    assert main(["localize", "--cas", str(path), "--out", str(out), "--preset", "reference", "--method", "nms",
                 "--temperature", "0.1", "--class-threshold", "0.5"]) == 0
    labels = {r["label"] for r in json.loads(out.read_text())["results"]["a"]}
    assert labels == {"Run"}
    assert main(["localize", "--cas", str(tmp_path / "none.npz"), "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["localize", "--cas", str(path), "--out", str(out), "--temperature", "-1"]) == 2


def test_cli_localize_relative_temperature_is_scale_free(tmp_path):
    cas_a, s_a = _video(3)
    cas_a[30:70, 1] += np.linspace(0.0, 0.02, 40)
    rows = {}
    for k in (1.0, 20.0):
        path = write_cas_file(tmp_path / f"cas{k}.npz", {"a": k * cas_a}, CLASSES, scores={"a": s_a})
        out = tmp_path / f"preds{k}.json"
        assert main(["localize", "--cas", str(path), "--out", str(out), "--temperature", "0.75",
                     "--temperature-mode", "relative"]) == 0
        rows[k] = json.loads(out.read_text())["results"]["a"]
    assert len(rows[1.0]) == len(rows[20.0]) > 0
    for a, b in zip(rows[1.0], rows[20.0], strict=True):
        assert a["segment"] == pytest.approx(b["segment"], abs=1e-6)
        assert 20.0 * a["score"] == pytest.approx(b["score"], rel=1e-5)
