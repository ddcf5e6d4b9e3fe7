"""Readers and writers of the W-TALC bundle, per-video folders and ActivityNet JSON (small generated data)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from wtal.data.activitynet import read_activitynet_json, write_activitynet_json
from wtal.data.annotations import AnnotationSet, Instance, VideoInfo
from wtal.data.folders import FolderSource, write_video_folders
from wtal.data.sources import FeatureSource, load_annotations, open_source, split_subsets
from wtal.data.timebase import I3D_SNIPPETS_PER_SECOND, FeatureLayout
from wtal.data.validate import check_features
from wtal.data.wtalc import WtalcSource, read_wtalc_annotations, write_wtalc_bundle
from wtal.errors import WtalInputError

DIM = 8
LAYOUT = FeatureLayout.split_evenly(DIM)


def joint(source, name: str) -> np.ndarray:
    """RGB and flow of ``name`` concatenated (the joint feature the writers were given)."""
    parts = source.features(name, ["rgb", "flow"])
    return np.concatenate([parts["rgb"], parts["flow"]], axis=1)


def write_folders(folder, ann, feats, layout=LAYOUT):
    return write_video_folders(folder, ann, {v: layout.split(x) for v, x in feats.items()})


def small_annotations(durations=(10.0, 8.0, 12.0, 6.4)) -> AnnotationSet:
    """Hand-made THUMOS-like set: multi-label video, labels_all != instance labels, a segment past the end."""
    d1, d2, d3, d4 = durations
    videos = [
        VideoInfo("video_validation_1", "validation", d1, ("Alpha",),
                  [Instance("Alpha", 1.0, 2.5), Instance("Alpha", 4.0, 6.0)]),
        VideoInfo("video_validation_2", "validation", d2, ("Beta", "Gamma"),
                  [Instance("Beta", 0.0, 1.0), Instance("Gamma", 3.0, 8.5)]),  # ends after the duration
        VideoInfo("video_test_1", "test", d3, ("Gamma",),
                  [Instance("Gamma", 2.0, 3.0), Instance("Beta", 5.0, 5.0)]),
        VideoInfo("video_test_2", "test", d4, ("Alpha",), [Instance("Alpha", 0.1, 0.7)]),
    ]
    return AnnotationSet(["Alpha", "Beta", "Gamma"], {v.name: v for v in videos},
                         {"video_test_1": [(0.5, 1.25)]})


def small_features(annotations: AnnotationSet, dim: int = DIM, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = {"video_validation_1": 15, "video_validation_2": 12, "video_test_1": 18, "video_test_2": 10}
    return {n: rng.normal(size=(lengths[n], dim)).astype(np.float32) for n in annotations.videos}


@pytest.fixture
def ann() -> AnnotationSet:
    return small_annotations()


@pytest.fixture
def feats(ann) -> dict[str, np.ndarray]:
    return small_features(ann)


@pytest.fixture
def bundle(tmp_path, ann, feats) -> Path:
    write_wtalc_bundle(tmp_path / "bundle", "Toy", ann, feats)
    return tmp_path / "bundle"


@pytest.fixture
def folder(tmp_path, ann, feats) -> Path:
    return write_folders(tmp_path / "folders", ann, feats)


def assert_same_annotations(a: AnnotationSet, b: AnnotationSet) -> None:
    assert a.classes == b.classes
    assert list(a.videos) == list(b.videos)
    for name in a.videos:
        assert a.videos[name] == b.videos[name], name
    assert a.ambiguous == b.ambiguous


# ------------------------------------------------------------------------------------------- W-TALC bundle


def test_bundle_files_have_the_real_formats(bundle, ann):
    assert sorted(p.name for p in bundle.iterdir()) == sorted(
        ["Toy-I3D-JOINTFeatures.npy", "classlist.npy", "subset.npy", "videoname.npy", "labels_all.npy",
         "labels.npy", "segments.npy", "duration.npy", "Ambiguous_test.txt"])
    classlist = np.load(bundle / "classlist.npy")
    assert classlist.dtype.kind == "S" and list(classlist) == [b"Alpha", b"Beta", b"Gamma"]
    assert np.load(bundle / "subset.npy").dtype.kind == "S"
    assert list(np.load(bundle / "videoname.npy"))[2] == b"video_test_1"
    labels_all = np.load(bundle / "labels_all.npy", allow_pickle=True)
    assert labels_all.dtype == object and labels_all[1] == ["Beta", "Gamma"] and type(labels_all[1]) is list
    segments = np.load(bundle / "segments.npy", allow_pickle=True)
    assert segments[1] == [[0.0, 1.0], [3.0, 8.5]]
    labels = np.load(bundle / "labels.npy", allow_pickle=True)
    assert labels[2] == ["Gamma", "Beta"]
    duration = np.load(bundle / "duration.npy")
    assert duration.shape == (4, 1) and duration.dtype == np.float64 and duration[2, 0] == 12.0
    assert (bundle / "Ambiguous_test.txt").read_text() == "video_test_1  0.5 1.25\n"
    features = np.load(bundle / "Toy-I3D-JOINTFeatures.npy", allow_pickle=True)
    assert features.dtype == object and features.shape == (4,) and features[0].shape == (15, DIM)
    assert not list(bundle.glob(".*"))  # no temporary files left behind


def test_bundle_round_trip(bundle, ann, feats):
    assert_same_annotations(read_wtalc_annotations(bundle), ann)
    source = WtalcSource(bundle)
    assert isinstance(source, FeatureSource)
    assert source.stream_widths() == {"rgb": 4, "flow": 4}
    assert source.snippets_per_second == I3D_SNIPPETS_PER_SECOND
    for name, x in feats.items():
        got = source.features(name, ["rgb", "flow"])
        assert got["rgb"].dtype == np.float32 and got["flow"].dtype == np.float32
        np.testing.assert_array_equal(got["rgb"], x[:, :4])
        np.testing.assert_array_equal(got["flow"], x[:, 4:])


def test_missing_duration_is_written_from_the_feature_length(tmp_path):
    ann = small_annotations(durations=(10.0, None, 12.0, 6.4))
    write_wtalc_bundle(tmp_path, "Toy", ann, small_features(ann))
    duration = read_wtalc_annotations(tmp_path).videos["video_validation_2"].duration
    assert duration == pytest.approx(12 / 1.5625)  # T = 12 snippets


def test_reader_decodes_python2_bytes_labels_and_1d_duration(bundle, ann):
    # ActivityNet's labels.npy holds bytes (a Python 2 pickle) while labels_all holds str; duration is 1-D.
    labels = np.empty(4, dtype=object)
    for i, v in enumerate(ann.videos.values()):
        labels[i] = [i.label.encode() for i in v.instances]
    np.save(bundle / "labels.npy", labels, allow_pickle=True)
    np.save(bundle / "duration.npy", np.array([10.0, 8.0, 12.0, 6.4]))
    assert_same_annotations(read_wtalc_annotations(bundle), ann)


def test_optional_files_may_be_absent(bundle):
    (bundle / "duration.npy").unlink()
    (bundle / "Ambiguous_test.txt").unlink()
    got = read_wtalc_annotations(bundle)
    assert got.ambiguous == {} and all(v.duration is None for v in got.videos.values())


def test_ambiguous_lines_of_unknown_videos_are_ignored(bundle):
    (bundle / "Ambiguous_test.txt").write_text(
        "video_test_1  0.5 1.25\nvideo_test_999  3.0 4.0\n\nvideo_test_2  1.0 2.0\nvideo_test_1  7.5 9.0\n")
    assert read_wtalc_annotations(bundle).ambiguous == {"video_test_1": [(0.5, 1.25), (7.5, 9.0)],
                                                        "video_test_2": [(1.0, 2.0)]}


def test_labels_all_duplicates_are_dropped_in_order(bundle):
    labels_all = np.load(bundle / "labels_all.npy", allow_pickle=True)
    labels_all[1] = ["Gamma", "Beta", "Gamma"]
    np.save(bundle / "labels_all.npy", labels_all, allow_pickle=True)
    assert read_wtalc_annotations(bundle).videos["video_validation_2"].labels == ("Gamma", "Beta")


@pytest.mark.parametrize("layout", ["annotations-child", "feature-file", "annotations-above"])
def test_original_wtalc_layout_with_annotation_folder(tmp_path, bundle, ann, feats, layout):
    root = tmp_path / "orig"
    feature_dir = root / "feats" if layout == "annotations-above" else root
    feature_dir.mkdir(parents=True)
    shutil.move(bundle / "Toy-I3D-JOINTFeatures.npy", feature_dir)
    shutil.move(bundle, root / "Toy-Annotations")
    path = {"annotations-child": root, "feature-file": root / "Toy-I3D-JOINTFeatures.npy",
            "annotations-above": feature_dir}[layout]
    source = open_source(path)
    assert isinstance(source, WtalcSource)
    assert source.annotation_folder == root / "Toy-Annotations"
    np.testing.assert_array_equal(joint(source, "video_test_2"), feats["video_test_2"])
    assert_same_annotations(load_annotations(path), ann)


def test_rate_override(bundle):
    source = open_source(bundle, snippets_per_second=2.5)
    assert source.snippets_per_second == 2.5
    assert source.annotations.videos["video_test_1"].snippets_per_second == 2.5


@pytest.mark.parametrize("rate", [0, -1.0, float("nan"), "fast"])
def test_bad_rate(bundle, rate):
    with pytest.raises(WtalInputError, match="snippets_per_second"):
        open_source(bundle, snippets_per_second=rate)


def test_2048_columns_give_the_standard_i3d_layout(tmp_path, ann):
    write_wtalc_bundle(tmp_path, "Toy", ann, small_features(ann, dim=2048))
    assert WtalcSource(tmp_path).stream_widths() == {"rgb": 1024, "flow": 1024}  # RGB 0-1023, flow 1024-2047


# ------------------------------------------------------------------------------------- per-video folders


def test_folder_files_and_round_trip(folder, ann, feats):
    rgb = np.load(folder / "features" / "train" / "rgb" / "video_validation_2.npy")
    flow = np.load(folder / "features" / "test" / "flow" / "video_test_1.npy")
    np.testing.assert_array_equal(rgb, feats["video_validation_2"][:, :4])
    np.testing.assert_array_equal(flow, feats["video_test_1"][:, 4:])
    assert not (folder / "features" / "test" / "rgb" / "video_validation_2.npy").exists()
    gt = json.loads((folder / "gt.json").read_text())
    assert gt["database"]["video_validation_2"]["annotations"][1] == {"label": "Gamma", "segment": [3.0, 8.5]}
    assert gt["database"]["video_test_1"]["subset"] == "test"

    source = open_source(folder)
    assert isinstance(source, FolderSource) and isinstance(source, FeatureSource)
    assert source.stream_widths() == {"rgb": 4, "flow": 4}
    assert_same_annotations(source.annotations, ann)
    for name, x in feats.items():
        np.testing.assert_array_equal(joint(source, name), x)


def test_folder_with_streams_of_different_widths(tmp_path, ann, feats):
    layout = FeatureLayout(I3D_SNIPPETS_PER_SECOND, (0, 6), (6, 8))
    source = FolderSource(write_folders(tmp_path, ann, feats, layout))
    assert source.stream_widths() == {"rgb": 6, "flow": 2}
    np.testing.assert_array_equal(joint(source, "video_test_2"), feats["video_test_2"])


def test_folder_video_in_the_other_split_folder_still_loads(folder, feats):
    for modality in ("rgb", "flow"):
        src = folder / "features" / "test" / modality / "video_test_2.npy"
        src.rename(folder / "features" / "train" / modality / "video_test_2.npy")
    np.testing.assert_array_equal(joint(FolderSource(folder), "video_test_2"), feats["video_test_2"])


def test_activitynet_subsets_go_to_train_and_test_folders(tmp_path, ann, feats):
    for v in ann.videos.values():
        v.subset = "training" if v.subset == "validation" else "validation"
    out = write_folders(tmp_path, ann, feats)
    assert (out / "features" / "train" / "rgb" / "video_validation_1.npy").is_file()
    assert (out / "features" / "test" / "flow" / "video_test_1.npy").is_file()


# ------------------------------------------------------------------------------------------- ActivityNet JSON


def test_activitynet_json_without_extensions(tmp_path):
    doc = {"version": "VERSION 1.2",
           "taxonomy": [{"nodeName": "Sports", "parentName": "Root"},
                        {"nodeName": "Zumba", "parentName": "Sports"}],
           "database": {
               "vid_b": {"subset": "training", "duration": 30.5, "url": "x",
                         "annotations": [{"label": "Zumba", "segment": [1.0, 4.5]},
                                         {"label": "Archery", "segment": [6, 9]}]},
               "vid_a": {"subset": "validation", "duration": 12.0,
                         "annotations": [{"label": "Archery", "segment": [0.5, 2.0]}]},
               "vid_c": {"subset": "testing", "annotations": []}}}
    path = tmp_path / "anet.json"
    path.write_text(json.dumps(doc))
    got = read_activitynet_json(path)
    assert got.classes == ["Archery", "Zumba"]  # sorted labels; the hierarchical taxonomy is ignored
    assert list(got.videos) == ["vid_b", "vid_a", "vid_c"]
    assert got.videos["vid_b"].labels == ("Archery", "Zumba")  # instance labels in class order
    assert got.videos["vid_b"].instances == [Instance("Zumba", 1.0, 4.5), Instance("Archery", 6.0, 9.0)]
    assert got.videos["vid_c"].duration is None and got.videos["vid_c"].labels == ()
    assert got.videos["vid_a"].snippets_per_second == I3D_SNIPPETS_PER_SECOND
    assert split_subsets(got) == ("training", "validation")


def test_activitynet_json_class_list_and_rate(tmp_path):
    doc = {"classes": ["Zumba", "Archery", "Unused"], "snippets_per_second": 2.5,
           "database": {"v": {"subset": "test", "duration": 5.0, "snippets_per_second": 4.0,
                              "annotations": [{"label": "Archery", "segment": [1, 2]}]},
                        "w": {"subset": "validation", "duration": 5.0, "annotations": []}}}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(doc))
    got = read_activitynet_json(path)
    assert got.classes == ["Zumba", "Archery", "Unused"]
    assert got.videos["v"].snippets_per_second == 4.0 and got.videos["w"].snippets_per_second == 2.5
    assert read_activitynet_json(path, snippets_per_second=1.0).videos["v"].snippets_per_second == 1.0


def test_activitynet_json_round_trip(tmp_path, ann):
    path = write_activitynet_json(tmp_path / "gt.json", ann)
    assert_same_annotations(read_activitynet_json(path), ann)
    assert_same_annotations(load_annotations(path), ann)


# ------------------------------------------------------------------------------------------- detection


def test_load_annotations_from_every_kind_of_path(bundle, folder, ann):
    assert_same_annotations(load_annotations(bundle), ann)  # annotation folder (also a bundle folder)
    assert_same_annotations(load_annotations(bundle / "Toy-I3D-JOINTFeatures.npy"), ann)
    assert_same_annotations(load_annotations(folder), ann)
    assert_same_annotations(load_annotations(folder / "gt.json"), ann)


def test_split_subsets():
    def with_subsets(*subsets):
        videos = {f"v{i}": VideoInfo(f"v{i}", s, 1.0, ()) for i, s in enumerate(subsets)}
        return AnnotationSet([], videos)

    assert split_subsets(with_subsets("validation", "test")) == ("validation", "test")
    assert split_subsets(with_subsets("training", "validation")) == ("training", "validation")
    assert split_subsets(with_subsets("train", "test")) == ("train", "test")
    assert split_subsets(with_subsets("training", "validation", "test")) == ("training", "test")
    assert split_subsets(with_subsets("training", "validation", "testing")) == ("training", "validation")
    for bad in [("test",), ("validation",), ("a", "b")]:
        with pytest.raises(WtalInputError, match="subsets"):
            split_subsets(with_subsets(*bad))


def test_open_source_explains_what_it_expected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WtalInputError) as err:
        open_source(tmp_path / "empty")
    assert "JOINTFeatures.npy" in str(err.value) and "gt.json" in str(err.value)
    assert err.value.path == str(tmp_path / "empty") and err.value.fix
    with pytest.raises(WtalInputError, match="not found"):
        open_source(tmp_path / "nowhere")
    with pytest.raises(WtalInputError, match="no annotations"):
        load_annotations(tmp_path / "empty")


# ------------------------------------------------------------------------------------------- bad input


def _save_object(path: Path, values: list) -> None:
    arr = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        arr[i] = v
    np.save(path, arr, allow_pickle=True)


def _replace_features(bundle: Path, name: str, value) -> None:
    path = bundle / "Toy-I3D-JOINTFeatures.npy"
    feats = list(np.load(path, allow_pickle=True))
    names = [n.decode() for n in np.load(bundle / "videoname.npy")]
    feats[names.index(name)] = value
    _save_object(path, feats)


@pytest.mark.parametrize(("value", "message"), [
    (np.zeros((0, DIM), np.float32), "T = 0"),
    (np.zeros(DIM, np.float32), "2-D"),
    (np.zeros((3, DIM, 1), np.float32), "2-D"),
    (np.zeros((5, DIM + 2), np.float32), "columns, expected 8"),
    (np.where(np.eye(5, DIM) > 0, np.nan, 0.0), "NaN/inf"),
    (np.full((5, DIM), np.inf), "NaN/inf"),
    (np.full((5, DIM), 1e300), "NaN/inf"),  # overflows float32
    (np.array([["a"] * DIM] * 3), "not a numeric array"),
])
def test_bad_features_in_the_bundle(bundle, value, message):
    _replace_features(bundle, "video_test_1", value)
    source = WtalcSource(bundle)
    joint(source, "video_test_2")  # the other videos are fine
    with pytest.raises(WtalInputError, match=message) as err:
        joint(source, "video_test_1")
    assert err.value.video == "video_test_1"
    assert err.value.path.endswith("Toy-I3D-JOINTFeatures.npy") and err.value.fix


def test_nan_position_is_reported():
    x = np.zeros((6, 4), np.float32)
    x[4, 1] = np.nan
    with pytest.raises(WtalInputError, match="first in snippet 4, 1 snippets affected"):
        check_features(x, path="f.npy", video="v")


def test_feature_file_with_wrong_number_of_videos(bundle):
    _save_object(bundle / "Toy-I3D-JOINTFeatures.npy", [np.zeros((3, DIM), np.float32)] * 3)
    with pytest.raises(WtalInputError, match="holds 3 videos but the annotations") as err:
        joint(WtalcSource(bundle), "video_test_1")
    assert err.value.fix


def test_writer_rejects_bad_features(tmp_path, ann, feats):
    feats["video_test_2"] = feats["video_test_2"].copy()
    feats["video_test_2"][3, 2] = np.inf
    with pytest.raises(WtalInputError, match="NaN/inf") as err:
        write_wtalc_bundle(tmp_path, "Toy", ann, feats)
    assert err.value.video == "video_test_2"
    del feats["video_test_1"]
    with pytest.raises(WtalInputError, match="no features") as err:
        write_folders(tmp_path, ann, feats)
    assert err.value.video == "video_test_1"


@pytest.mark.parametrize("missing", ["classlist", "subset", "videoname", "labels_all", "labels", "segments"])
def test_missing_annotation_file(bundle, missing):
    (bundle / f"{missing}.npy").unlink()
    with pytest.raises(WtalInputError, match="not found") as err:
        read_wtalc_annotations(bundle)
    assert err.value.path == str(bundle / f"{missing}.npy") and "classlist.npy" in err.value.fix


def test_missing_folder_and_corrupt_npy(tmp_path, bundle):
    with pytest.raises(WtalInputError, match="not found"):
        read_wtalc_annotations(tmp_path / "nope")
    (bundle / "segments.npy").write_bytes(b"this is not numpy")
    with pytest.raises(WtalInputError, match="not a readable .npy") as err:
        read_wtalc_annotations(bundle)
    assert err.value.path.endswith("segments.npy")


@pytest.mark.parametrize(("file", "value", "message", "reported_file"), [
    ("labels_all", ["Alpha", "Delta"], "unknown class 'Delta'", "labels_all"),
    ("labels", ["Gamma", "Omega"], "unknown class 'Omega'", "labels"),
    ("labels", ["Gamma"], "segments.npy has 2 segments but labels.npy has 1", "segments"),
    ("segments", [[2.0, 3.0], [6.0, 5.0]], "ends before it starts", "segments"),
    ("segments", [[2.0, 3.0], [6.0]], "not a \\[start, end\\] pair", "segments"),
    ("segments", [[2.0, 3.0], [6.0, float("nan")]], "not finite", "segments"),
    ("labels_all", "Gamma", "list of class names", "labels_all"),
])
def test_bad_annotation_values(bundle, file, value, message, reported_file):
    values = list(np.load(bundle / f"{file}.npy", allow_pickle=True))
    values[2] = value  # video_test_1
    _save_object(bundle / f"{file}.npy", values)
    with pytest.raises(WtalInputError, match=message) as err:
        read_wtalc_annotations(bundle)
    assert err.value.video == "video_test_1" and err.value.fix
    assert err.value.path == str(bundle / f"{reported_file}.npy")


def test_annotation_arrays_of_different_lengths(bundle):
    np.save(bundle / "subset.npy", np.array([b"test"] * 3))
    with pytest.raises(WtalInputError, match=r"subset.npy has shape \(3,\), expected \(4,\)"):
        read_wtalc_annotations(bundle)
    np.save(bundle / "subset.npy", np.array([b"test"] * 4))
    np.save(bundle / "duration.npy", np.ones((4, 2)))
    with pytest.raises(WtalInputError, match="duration.npy has shape"):
        read_wtalc_annotations(bundle)
    np.save(bundle / "duration.npy", np.array([1.0, -2.0, 1.0, 1.0]))
    with pytest.raises(WtalInputError, match="positive finite") as err:
        read_wtalc_annotations(bundle)
    assert err.value.video == "video_validation_2"


def test_duplicate_video_names(bundle):
    np.save(bundle / "videoname.npy", np.array([b"a", b"b", b"a", b"c"]))
    with pytest.raises(WtalInputError, match="listed twice") as err:
        read_wtalc_annotations(bundle)
    assert err.value.video == "a"


@pytest.mark.parametrize(("line", "message"), [
    ("video_test_1 0.5\n", "expected '<video>  <start> <end>'"),
    ("video_test_1  zero 1.0\n", "not numbers"),
    ("video_test_1  2.0 1.0\n", "ends before it starts"),
])
def test_bad_ambiguous_file(bundle, line, message):
    (bundle / "Ambiguous_test.txt").write_text("video_test_2  1.0 2.0\n" + line)
    with pytest.raises(WtalInputError, match=message) as err:
        read_wtalc_annotations(bundle)
    assert err.value.path.endswith("Ambiguous_test.txt:2")


def test_bundle_folder_with_two_feature_files(bundle):
    shutil.copy(bundle / "Toy-I3D-JOINTFeatures.npy", bundle / "Other-I3D-JOINTFeatures.npy")
    with pytest.raises(WtalInputError, match="2 feature files"):
        open_source(bundle)


def test_feature_file_without_annotations(tmp_path, bundle):
    shutil.move(bundle / "Toy-I3D-JOINTFeatures.npy", tmp_path / "Toy-I3D-JOINTFeatures.npy")
    with pytest.raises(WtalInputError, match="no W-TALC annotation files") as err:
        open_source(tmp_path / "Toy-I3D-JOINTFeatures.npy")
    assert "Toy-Annotations" in err.value.fix


@pytest.mark.parametrize(("text", "message", "video"), [
    ('{"database": {"v": {"subset": "test", ', "malformed JSON", None),
    ('[1, 2]', "expected an object with key 'database'", None),
    ('{"version": 1}', "missing key 'database'", None),
    ('{"database": []}', "'database' must be a dict", None),
    ('{"database": {"v": {"duration": 3, "annotations": []}}}', "missing key 'subset'", "v"),
    ('{"database": {"v": {"subset": "test"}}}', "missing key 'annotations'", "v"),
    ('{"database": {"v": {"subset": "test", "annotations": [{"label": "A"}]}}}',
     "missing key 'segment'", "v"),
    ('{"database": {"v": {"subset": "test", "annotations": [{"segment": [1, 2]}]}}}',
     "missing key 'label'", "v"),
    ('{"database": {"v": {"subset": "test", "annotations": [{"label": "A", "segment": [2, 1]}]}}}',
     "ends before it starts", "v"),
    ('{"database": {"v": {"subset": "test", "annotations": [{"label": "A", "segment": [1, 2, 3]}]}}}',
     "not a \\[start, end\\] pair", "v"),
    ('{"database": {"v": {"subset": "test", "annotations": [{"label": "A", "segment": ["a", 2]}]}}}',
     "not a pair of numbers", "v"),
    ('{"database": {"v": {"subset": "test", "duration": -1, "annotations": []}}}', "positive finite", "v"),
    ('{"classes": ["A"], "database": {"v": {"subset": "test", '
     '"annotations": [{"label": "B", "segment": [1, 2]}]}}}',
     "unknown class 'B'", "v"),
    ('{"classes": ["A"], "database": {"v": {"subset": "test", "labels": ["C"], "annotations": []}}}',
     "unknown class 'C'", "v"),
    ('{"classes": "A", "database": {}}', "'classes' must be", None),
    ('{"snippets_per_second": 0, "database": {}}', "snippets_per_second 0", None),
    ('{"database": {"v": {"subset": "test", "annotations": []}}, "ambiguous": {"v": [[1]]}}',
     "ambiguous segments", "v"),
])
def test_bad_json(tmp_path, text, message, video):
    path = tmp_path / "gt.json"
    path.write_text(text)
    with pytest.raises(WtalInputError, match=message) as err:
        read_activitynet_json(path)
    assert err.value.path == str(path) and err.value.video == video and err.value.fix


def test_missing_json(tmp_path):
    with pytest.raises(WtalInputError, match="not found"):
        read_activitynet_json(tmp_path / "gt.json")


def test_folder_source_bad_files(folder):
    source = FolderSource(folder)
    flow = folder / "features" / "test" / "flow" / "video_test_1.npy"
    np.save(flow, np.zeros((5, 4), np.float32))
    with pytest.raises(WtalInputError, match="stream 'flow' has 5 snippets but 'rgb' has 18") as err:
        joint(source, "video_test_1")
    assert err.value.video == "video_test_1"
    np.save(flow, np.zeros((18, 3), np.float32))
    with pytest.raises(WtalInputError, match="flow features have 3 columns, expected 4") as err:
        joint(source, "video_test_1")
    assert err.value.path == str(flow)
    flow.unlink()
    with pytest.raises(WtalInputError, match="flow feature file not found") as err:
        joint(source, "video_test_1")
    assert err.value.path == str(flow)
    rgb = folder / "features" / "test" / "rgb" / "video_test_2.npy"
    _save_object(rgb, [1, 2])
    with pytest.raises(WtalInputError, match="not a readable numeric .npy"):
        joint(source, "video_test_2")
    with pytest.raises(WtalInputError, match="not in gt.json"):
        joint(source, "nope")


def test_folder_source_empty_first_video(folder):
    np.save(folder / "features" / "train" / "rgb" / "video_validation_1.npy", np.zeros((0, 4), np.float32))
    with pytest.raises(WtalInputError, match="T = 0") as err:
        FolderSource(folder).stream_widths()
    assert err.value.video == "video_validation_1"


def test_write_video_folders_rejects_other_subsets_and_uneven_streams(tmp_path, ann, feats):
    ann.videos["video_test_2"].subset = "extra"
    with pytest.raises(WtalInputError, match="subset 'extra'"):
        write_folders(tmp_path, ann, feats)
    ann.videos["video_test_2"].subset = "test"
    streams = {v: LAYOUT.split(x) for v, x in feats.items()}
    streams["video_test_2"] = {"rgb": streams["video_test_2"]["rgb"]}
    with pytest.raises(WtalInputError, match="streams .* differ"):
        write_video_folders(tmp_path, ann, streams)
