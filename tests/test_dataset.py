"""VideoDataset: whole videos, multi-hot labels, modality selection, caching, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wtal.data.annotations import AnnotationSet, Instance, VideoInfo
from wtal.data.batch import collate_videos
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
        write_video_folders(out, ann, feats, FeatureLayout.split_evenly(DIM))
    return open_source(out)


@pytest.mark.parametrize(("modality", "columns"), [("rgb", [0, 1, 2]), ("flow", [3, 4, 5]),
                                                   ("both", [0, 1, 2, 3, 4, 5])])
def test_items_and_modality_selection(source, toy, modality, columns):
    _, feats = toy
    ds = VideoDataset(source, ["val_c", "train_a"], modality=modality)
    assert len(ds) == 2 and ds.feature_dim == len(columns)
    assert ds.num_classes == 3 and ds.classes == CLASSES
    x, y, name, index = ds[1]
    assert name == "train_a" and index == 1
    assert x.dtype == np.float32 and x.shape == (6, len(columns)) and x.flags.c_contiguous
    np.testing.assert_array_equal(x, feats["train_a"][:, columns])
    assert x[2, 0] == 200.0 + columns[0]  # hand-checked value of the first selected column
    np.testing.assert_array_equal(y, np.array([1, 0, 1], np.float32))
    assert y.dtype == np.float32
    x_last, y_last, name_last, index_last = ds[-2]
    assert name_last == "val_c" and index_last == 0 and x_last.shape == (7, len(columns))
    np.testing.assert_array_equal(y_last, np.array([0, 0, 1], np.float32))
    with pytest.raises(IndexError):
        ds[2]


class CountingSource:
    """Wraps a source and counts feature loads."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0
        self.path, self.annotations, self.layout = inner.path, inner.annotations, inner.layout

    def features(self, name):
        self.calls += 1
        return self.inner.features(name)


@pytest.mark.parametrize(("cache", "loads"), [(True, 1), (False, 3)])
def test_cache(source, cache, loads):
    counting = CountingSource(source)
    ds = VideoDataset(counting, ["train_b"], modality="rgb", cache=cache)
    first = ds[0][0]
    for _ in range(2):
        np.testing.assert_array_equal(ds[0][0], first)
    assert counting.calls == loads


def test_batches_with_collate(source):
    ds = VideoDataset(source, source.annotations.names("training"), modality="flow")
    loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=False, collate_fn=collate_videos)
    batch = next(iter(loader))
    assert batch.features.shape == (2, 6, 3) and batch.names == ["train_a", "train_b"]
    assert batch.mask.sum(dim=1).tolist() == [6, 4]
    assert batch.labels.tolist() == [[1, 0, 1], [0, 1, 0]]


def test_bad_arguments(source):
    with pytest.raises(WtalInputError, match="unknown modality 'depth'") as err:
        VideoDataset(source, ["train_a"], modality="depth")
    assert "rgb" in err.value.fix
    with pytest.raises(WtalInputError, match="1 requested videos are not in the annotations") as err:
        VideoDataset(source, ["train_a", "ghost"])
    assert err.value.video == "ghost"
