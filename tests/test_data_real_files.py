"""The real THUMOS14 and ActivityNet 1.2 W-TALC annotation files load correctly (skipped without ../shared).

Expected numbers are the published dataset facts (the W-TALC annotation files as published).
"""

from __future__ import annotations

import numpy as np
import pytest

from wtal.data.activitynet import read_activitynet_json, write_activitynet_json
from wtal.data.annotations import Instance
from wtal.data.sources import load_annotations, split_subsets
from wtal.data.wtalc import read_wtalc_annotations, write_wtalc_bundle


@pytest.fixture(scope="module")
def thumos(thumos14_annotations):
    return read_wtalc_annotations(thumos14_annotations)


@pytest.fixture(scope="module")
def anet(activitynet12_annotations):
    return read_wtalc_annotations(activitynet12_annotations)


def test_thumos14_counts(thumos):
    assert len(thumos.classes) == 20
    assert thumos.classes[0] == "BaseballPitch" and thumos.classes[-1] == "VolleyballSpiking"
    assert thumos.classes == sorted(thumos.classes)
    assert len(thumos.names("validation")) == 200 and len(thumos.names("test")) == 212
    assert thumos.names()[:200] == thumos.names("validation")  # one order: training videos first
    assert split_subsets(thumos) == ("validation", "test")
    assert len(thumos.ground_truth(thumos.names("test"))) == 3358
    assert sum(len(v.instances) for v in thumos.videos.values()) == 6365
    assert all(v.instances for v in thumos.subset("test").videos.values())
    assert "Ambiguous" not in thumos.classes


def test_thumos14_labels(thumos):
    multi = {s: sum(len(v.labels) > 1 for v in thumos.subset(s).videos.values())
             for s in ("validation", "test")}
    assert multi == {"validation": 21, "test": 30}
    differ = [n for n, v in thumos.videos.items() if set(v.labels) != {i.label for i in v.instances}]
    assert len(differ) == 28
    assert thumos.videos["video_test_0000270"].labels == ()  # empty labels_all in the real file
    first = thumos.videos["video_validation_0000051"]
    assert first.labels == ("Billiards",) and first.duration == pytest.approx(169.794)
    assert first.instances[0] == Instance("Billiards", 67.5, 75.9)
    assert all(isinstance(lab, str) for v in thumos.videos.values() for lab in v.labels)
    y = thumos.multi_hot("video_validation_0000051")
    assert y.dtype == np.float32 and y.sum() == 1 and y[thumos.classes.index("Billiards")] == 1


def test_thumos14_segments_past_the_end_are_kept(thumos):
    past = [(n, i) for n, v in thumos.videos.items() for i in v.instances if i.end > v.duration]
    assert len(past) == 30  # not clipped
    assert all(0 <= i.start <= i.end for v in thumos.videos.values() for i in v.instances)


def test_thumos14_ambiguous(thumos):
    # 99 lines over 37 videos; one video (3 lines) is not in the reduced set and is ignored.
    assert len(thumos.ambiguous) == 36 and sum(len(s) for s in thumos.ambiguous.values()) == 96
    assert thumos.ambiguous["video_test_0000278"] == [(0.0, 1.4), (95.7, 97.2)]
    assert set(thumos.ambiguous) <= set(thumos.names("test"))


def test_activitynet12_counts(anet):
    assert len(anet.videos) == 7202
    assert len(anet.names("training")) == 4819 and len(anet.names("validation")) == 2383
    assert len(anet.classes) == 100 and anet.classes[0] == "Archery"
    assert sum(len(v.instances) for v in anet.videos.values()) == 10733
    assert split_subsets(anet) == ("training", "validation")
    assert anet.ambiguous == {}
    v = anet.videos["video_4"]  # 1-D duration.npy; labels.npy holds bytes, labels_all str
    assert v.subset == "training" and v.duration == pytest.approx(92.18) and v.labels == ("Dodgeball",)
    assert v.instances == [Instance("Dodgeball", 5.46484, 86.71838)]
    assert all(isinstance(i.label, str) for v in anet.videos.values() for i in v.instances)


def test_real_annotations_survive_json_and_bundle_round_trips(thumos, tmp_path):
    json_copy = read_activitynet_json(write_activitynet_json(tmp_path / "gt.json", thumos))
    features = {n: np.zeros((1, 2), np.float32) for n in thumos.videos}
    write_wtalc_bundle(tmp_path / "bundle", "Thumos14reduced", thumos, features)
    bundle_copy = load_annotations(tmp_path / "bundle")
    for copy in (json_copy, bundle_copy):
        assert copy.classes == thumos.classes and copy.ambiguous == thumos.ambiguous
        assert copy.videos == thumos.videos


def test_load_annotations_on_the_real_folders(thumos14_annotations, activitynet12_annotations):
    assert len(load_annotations(thumos14_annotations).videos) == 412
    assert len(load_annotations(activitynet12_annotations).videos) == 7202
