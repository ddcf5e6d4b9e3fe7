"""VideoDataset and the sources' named streams: whole videos, multi-hot labels, stream selection, extra
streams, class-name text embeddings, caching, batching."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from wtal.data.annotations import AnnotationSet, Instance, VideoInfo
from wtal.data.dataset import VideoDataset
from wtal.data.folders import write_video_folders
from wtal.data.sources import open_source
from wtal.data.timebase import FeatureLayout
from wtal.data.wtalc import write_wtalc_bundle
from wtal.errors import WtalInputError

CLASSES = ["Alpha", "Beta", "Gamma"]
DIM = 6  # RGB = columns 0-2, flow = columns 3-5


@pytest.fixture(scope="module")
def toy():
    videos = [VideoInfo("train_a", "training", 4.0, ("Alpha", "Gamma"),
                        [Instance("Alpha", 0.0, 1.0), Instance("Gamma", 2.0, 3.0)]),
              VideoInfo("train_b", "training", 3.0, ("Beta",), [Instance("Beta", 0.5, 1.5)]),
              VideoInfo("val_c", "validation", 5.0, ("Gamma",), [Instance("Gamma", 1.0, 4.0)])]
    ann = AnnotationSet(list(CLASSES), {v.name: v for v in videos})
    # Column j of snippet t holds 100 * t + j, so a wrong column or row selection is visible.
    lengths = {"train_a": 6, "train_b": 4, "val_c": 7}
    feats = {n: (100.0 * np.arange(t)[:, None] + np.arange(DIM)[None, :]).astype(np.float32) + k * 1000
             for k, (n, t) in enumerate(lengths.items())}
    return ann, feats


@pytest.fixture(scope="module", params=["bundle", "folders"])
def source(request, toy, tmp_path_factory):
    ann, feats = toy
    out = tmp_path_factory.mktemp(request.param)
    if request.param == "bundle":
        write_wtalc_bundle(out, "Toy", ann, feats)
    else:
        layout = FeatureLayout.split_evenly(DIM)
        write_video_folders(out, ann, {v: layout.split(x) for v, x in feats.items()})
    return open_source(out)


@pytest.mark.parametrize(("streams", "columns"), [(["rgb"], {"rgb": [0, 1, 2]}), (["flow"], {"flow": [3, 4, 5]}),
                                                  (["rgb", "flow"], {"rgb": [0, 1, 2], "flow": [3, 4, 5]}),
                                                  (["flow", "rgb"], {"flow": [3, 4, 5], "rgb": [0, 1, 2]})])
def test_items_and_stream_selection(source, toy, streams, columns):
    _, feats = toy
    assert source.stream_widths() == {"rgb": 3, "flow": 3}
    ds = VideoDataset(source, ["val_c", "train_a"], streams)
    assert len(ds) == 2 and ds.input_width == 3 * len(streams) and list(ds.stream_widths) == streams
    assert ds.num_classes == 3 and ds.classes == CLASSES
    item = ds[1]
    assert item.name == "train_a" and item.index == 1 and item.length == 6
    assert list(item.inputs) == streams
    for stream, cols in columns.items():
        x = item.inputs[stream]
        assert x.dtype == np.float32 and x.shape == (6, 3)
        np.testing.assert_array_equal(x, feats["train_a"][:, cols])
        assert x[2, 0] == 200.0 + cols[0]  # hand-checked value of the stream's first column
    np.testing.assert_array_equal(item.labels, np.array([1, 0, 1], np.float32))
    assert item.labels.dtype == np.float32
    last = ds[-2]
    assert last.name == "val_c" and last.index == 0 and last.length == 7
    np.testing.assert_array_equal(last.labels, np.array([0, 0, 1], np.float32))
    with pytest.raises(IndexError):
        ds[2]


class CountingSource:
    """Wraps a source and counts feature loads."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0
        self.path, self.annotations = inner.path, inner.annotations

    def stream_widths(self):
        return self.inner.stream_widths()

    def features(self, name, streams):
        self.calls += 1
        return self.inner.features(name, streams)


@pytest.mark.parametrize(("cache", "loads"), [(True, 1), (False, 3)])
def test_cache(source, cache, loads):
    counting = CountingSource(source)
    ds = VideoDataset(counting, ["train_b"], ["rgb"], cache=cache)
    first = ds[0].inputs["rgb"]
    for _ in range(2):
        np.testing.assert_array_equal(ds[0].inputs["rgb"], first)
    assert counting.calls == loads


def test_batches_with_collate(source):
    ds = VideoDataset(source, source.annotations.names("training"), ["flow"])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=False, collate_fn=ds.collate)
    batch = next(iter(loader))
    assert list(batch.inputs) == ["flow"] and batch.inputs["flow"].shape == (2, 6, 3)
    assert batch.names == ["train_a", "train_b"]
    assert batch.mask.sum(dim=1).tolist() == [6, 4]
    assert batch.labels.tolist() == [[1, 0, 1], [0, 1, 0]]
    assert torch.all(batch.inputs["flow"][1, 4:] == 0)  # zero padding


def test_bad_arguments(source):
    with pytest.raises(WtalInputError, match="no 'depth' stream") as err:
        VideoDataset(source, ["train_a"], ["rgb", "depth"])
    assert "streams present: rgb, flow" in str(err.value) and "model.streams" in err.value.fix
    with pytest.raises(WtalInputError, match="1 requested videos are not in the annotations") as err:
        VideoDataset(source, ["train_a", "ghost"])
    assert err.value.video == "ghost"


# ------------------------------------------------------------------------------------------- extra streams
def _clip(t: int, k: int) -> np.ndarray:
    return (np.arange(t * 5).reshape(t, 5) + 10_000 * k).astype(np.float32)


def _add_clip_stream(kind: str, out, toy, *, split_folders: bool = False):
    ann, feats = toy
    for k, (name, x) in enumerate(feats.items()):
        if kind == "bundle":
            sub = ("train" if ann.videos[name].subset == "training" else "test") if split_folders else ""
            folder = out / "clip" / sub
        else:
            folder = out / "features" / ("train" if ann.videos[name].subset == "training" else "test") / "clip"
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{name}.npy", _clip(x.shape[0], k))


@pytest.mark.parametrize(("kind", "split_folders"), [("bundle", False), ("bundle", True), ("folders", False)])
def test_extra_stream_is_found_beside_the_features(tmp_path, toy, kind, split_folders):
    ann, feats = toy
    if kind == "bundle":
        write_wtalc_bundle(tmp_path, "Toy", ann, feats)
        (tmp_path / "Toy-Annotations").mkdir()  # an annotation-like folder is never a stream
    else:
        layout = FeatureLayout.split_evenly(DIM)
        write_video_folders(tmp_path, ann, {v: layout.split(x) for v, x in feats.items()})
    _add_clip_stream(kind, tmp_path, toy, split_folders=split_folders)
    source = open_source(tmp_path)
    assert source.stream_widths() == {"rgb": 3, "flow": 3, "clip": 5}
    item = VideoDataset(source, ["train_b"], ["clip", "rgb"])[0]
    np.testing.assert_array_equal(item.inputs["clip"], _clip(4, 1))
    np.testing.assert_array_equal(item.inputs["rgb"], feats["train_b"][:, :3])


@pytest.mark.parametrize("kind", ["bundle", "folders"])
def test_stream_length_mismatch_beyond_the_tolerance_names_the_video_and_both_lengths(tmp_path, toy, kind):
    ann, feats = toy
    if kind == "bundle":
        write_wtalc_bundle(tmp_path, "Toy", ann, feats)
        clip_file = tmp_path / "clip" / "train_a.npy"
    else:
        write_video_folders(tmp_path, ann, {v: FeatureLayout.split_evenly(DIM).split(x) for v, x in feats.items()})
        clip_file = tmp_path / "features" / "train" / "clip" / "train_a.npy"
    _add_clip_stream(kind, tmp_path, toy)
    np.save(clip_file, _clip(3, 0))  # 3 snippets, the I3D streams have 6: beyond the default tolerance of 2
    ds = VideoDataset(open_source(tmp_path), ["train_a"], ["rgb", "clip"])
    with pytest.raises(WtalInputError, match=r"stream 'clip' has 3 snippets but 'rgb' has 6") as err:
        ds[0]
    assert err.value.video == "train_a"
    strict = VideoDataset(open_source(tmp_path, max_length_mismatch=0), ["train_a"], ["rgb", "clip"])
    np.save(clip_file, _clip(7, 0))
    with pytest.raises(WtalInputError, match=r"'rgb' has 6 snippets but 'clip' has 7"):
        strict[0]


@pytest.mark.parametrize("clip_length", [4, 5, 7, 8])
def test_stream_length_mismatch_within_the_tolerance_is_truncated_and_logged(tmp_path, toy, caplog, clip_length):
    ann, feats = toy
    write_wtalc_bundle(tmp_path, "Toy", ann, feats)
    _add_clip_stream("bundle", tmp_path, toy)
    np.save(tmp_path / "clip" / "train_a.npy", _clip(clip_length, 0))  # the I3D streams have 6
    source = open_source(tmp_path)
    with caplog.at_level(logging.INFO, logger="wtal.data.streams"):
        first = VideoDataset(source, ["train_a", "train_b"], ["rgb", "clip"], cache=False)
        items = [first[0], first[0], first[1]]  # read twice: logged once
    keep = min(6, clip_length)
    assert all(x.shape[0] == keep for x in items[0].inputs.values()) and items[0].length == keep
    np.testing.assert_array_equal(items[0].inputs["rgb"], feats["train_a"][:keep, :3])  # the first snippets
    np.testing.assert_array_equal(items[0].inputs["clip"], _clip(clip_length, 0)[:keep])
    assert items[2].length == 4  # train_b's streams agree: untouched
    lines = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(lines) == 1 and "train_a" in lines[0] and f"truncated to {keep}" in lines[0]
    assert "1 video(s) truncated so far" in lines[0]
    assert source.lengths.truncated == {"train_a": {"rgb": 6, "clip": clip_length}}


def test_missing_stream_file_names_the_file(tmp_path, toy):
    ann, feats = toy
    write_wtalc_bundle(tmp_path, "Toy", ann, feats)
    _add_clip_stream("bundle", tmp_path, toy)
    (tmp_path / "clip" / "val_c.npy").unlink()
    ds = VideoDataset(open_source(tmp_path), ["val_c"], ["clip"])
    with pytest.raises(WtalInputError, match="clip feature file not found") as err:
        ds[0]
    assert err.value.path.endswith("val_c.npy") and err.value.video == "val_c"


# ------------------------------------------------------------------------------------ class text embeddings
def test_class_text_embeddings_are_read_and_checked(source):
    assert source.class_text() is None
    folder = source.feature_path.parent if hasattr(source, "feature_path") else source.path
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(folder / "class_text.npy", emb)
    try:
        np.testing.assert_array_equal(source.class_text(), emb)
        np.save(folder / "class_text.npy", emb[:2])
        with pytest.raises(WtalInputError, match=r"shape \(2, 4\), expected \(3, E\)"):
            source.class_text()
    finally:
        (folder / "class_text.npy").unlink()


def test_parent_of_a_data_folder_points_to_the_real_one(tmp_path, toy):
    ann, feats = toy
    write_wtalc_bundle(tmp_path / "wtalc", "Toy", ann, feats)
    with pytest.raises(WtalInputError, match="contains 1") as err:
        open_source(tmp_path)
    assert "--data" in err.value.fix and str(tmp_path / "wtalc") in err.value.fix
