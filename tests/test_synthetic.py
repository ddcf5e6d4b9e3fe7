"""Synthetic THUMOS-like generator: determinism, shapes, statistics, modality evidence, writers and CLI."""

from __future__ import annotations

import numpy as np
import pytest

from wtal.cli import main
from wtal.data.sources import open_source
from wtal.data.synthetic import SynthConfig, generate, write_synthetic
from wtal.data.timebase import snippet_count


@pytest.fixture(scope="module")
def small():
    return generate(SynthConfig(num_videos=16, dim=32, seed=3))


@pytest.fixture(scope="module")
def thumos_sized():
    """Full THUMOS14 size with tiny features: annotation statistics are what matters here."""
    return generate(SynthConfig(num_videos=412, dim=4, seed=0))


def test_deterministic_by_seed(small):
    again = generate(SynthConfig(num_videos=16, dim=32, seed=3))
    assert again.annotations.videos == small.annotations.videos
    assert again.annotations.ambiguous == small.annotations.ambiguous
    for name, x in small.features.items():
        np.testing.assert_array_equal(again.features[name], x)
        np.testing.assert_array_equal(again.snippet_labels[name], small.snippet_labels[name])
    other = generate(SynthConfig(num_videos=16, dim=32, seed=4))
    assert [v.duration for v in other.annotations.videos.values()] != \
        [v.duration for v in small.annotations.videos.values()]


def test_shapes_dtypes_values(small):
    ann = small.annotations
    assert len(ann.classes) == 20 and len(ann.videos) == 16
    assert small.layout.dim == 32 and small.layout.columns("flow") == slice(16, 32)
    for name, v in ann.videos.items():
        x = small.features[name]
        T = snippet_count(v.duration, v.snippets_per_second)
        assert x.shape == (T, 32) and x.dtype == np.float32
        assert np.isfinite(x).all() and (x >= 0).all()
        assert small.snippet_labels[name].shape == (T, 20) and small.snippet_labels[name].dtype == bool
        assert small.snippet_phase[name].shape == (T,)


def test_snippet_labels_follow_instances(small):
    """Snippet t is labelled c iff its centre (t + 0.5) / r lies in an instance of c (checked by index math)."""
    ann = small.annotations
    for name, v in ann.videos.items():
        r = v.snippets_per_second
        expected = np.zeros_like(small.snippet_labels[name])
        for inst in v.instances:
            first = int(np.ceil(inst.start * r - 0.5))  # smallest t with t + 0.5 >= start * r
            stop = int(np.ceil(inst.end * r - 0.5))  # smallest t with t + 0.5 >= end * r (excluded)
            expected[max(first, 0):max(stop, 0), ann.classes.index(inst.label)] = True
        np.testing.assert_array_equal(small.snippet_labels[name], expected)
        assert ((small.snippet_phase[name] > 0) == expected.any(axis=1)).all()


def test_phases_are_ordered_inside_instances(small):
    for name, v in small.annotations.videos.items():
        phase = small.snippet_phase[name].astype(int)
        r = v.snippets_per_second
        for inst in v.instances:
            t = np.arange(int(np.ceil(inst.start * r - 0.5)), int(np.ceil(inst.end * r - 0.5)))
            assert (np.diff(phase[t]) >= 0).all()


def test_annotation_statistics_are_thumos_like(thumos_sized):
    ann = thumos_sized.annotations
    vids = list(ann.videos.values())
    assert len(ann.names("validation")) == 200 and len(ann.names("test")) == 212
    durations = np.array([v.duration for v in vids])
    assert durations.min() >= 8.9 and durations.max() <= 1673.0
    assert 100 <= np.median(durations) <= 220
    lengths = np.array([i.end - i.start for v in vids for i in v.instances])
    assert lengths.min() >= 0.1 and lengths.max() <= 120.0 + 1e-9
    assert 2.0 <= np.median(lengths) <= 4.5 and lengths.max() > 30
    counts = np.array([len(v.instances) for v in vids])
    assert counts.min() >= 1 and 8 <= counts.mean() <= 25 and counts.max() >= 60  # heavy tail
    multi = np.mean([len(v.labels) > 1 for v in vids])
    assert 0.05 <= multi <= 0.25
    for v in vids:
        assert set(v.labels) == {i.label for i in v.instances}
        starts = np.array(sorted(i.start for i in v.instances))
        ends = np.array(sorted(i.end for i in v.instances))
        assert starts[0] >= 0 and ends[-1] <= v.duration + 0.05
        assert (starts[1:] >= ends[:-1]).all()  # never overlapping
    assert ann.ambiguous and all(ann.videos[n].subset == "test" for n in ann.ambiguous)


def _nearest_mean_accuracy(data, modality: str, phase: int) -> float:
    """Class accuracy of a nearest-class-mean probe on one modality's snippets of one phase (train -> test)."""
    cols = data.layout.columns(modality)

    def collect(subset):
        xs, ys = [], []
        for name in data.annotations.names(subset):
            sel = data.snippet_phase[name] == phase
            xs.append(data.features[name][sel, cols])
            ys.append(data.snippet_labels[name][sel].argmax(axis=1))
        return np.concatenate(xs).astype(np.float64), np.concatenate(ys)

    x_tr, y_tr = collect("validation")
    x_te, y_te = collect("test")
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-9
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    classes = np.unique(y_tr)
    means = np.stack([x_tr[y_tr == c].mean(0) for c in classes])
    known = np.isin(y_te, classes)
    pred = classes[np.argmin(((x_te[known, None, :] - means[None]) ** 2).sum(-1), axis=1)]
    return float((pred == y_te[known]).mean())


def test_rgb_and_flow_carry_complementary_evidence():
    """Start phases (appearance) are recognised better from RGB, middle phases (motion) better from flow."""
    data = generate(SynthConfig(num_videos=80, dim=256, seed=1))
    start_rgb, start_flow = (_nearest_mean_accuracy(data, m, 1) for m in ("rgb", "flow"))
    mid_rgb, mid_flow = (_nearest_mean_accuracy(data, m, 2) for m in ("rgb", "flow"))
    assert start_rgb > start_flow + 0.05
    assert mid_flow > mid_rgb + 0.05
    assert start_rgb > 0.1 and mid_flow > 0.3  # chance is 1/20; start phases are weak and venue-shared


def test_written_layouts_read_back(tmp_path):
    cfg = SynthConfig(num_videos=8, dim=16, seed=2, ambiguous_video_fraction=1.0, distractor_rate_per_min=6.0)
    data = generate(cfg)
    paths = write_synthetic(tmp_path, cfg, data)
    assert paths["wtalc"].parent == tmp_path / "wtalc" and paths["folders"] == tmp_path / "folders"
    assert (tmp_path / "wtalc" / "Ambiguous_test.txt").read_text().strip()
    for key in ("wtalc", "folders"):
        src = open_source(paths[key])
        assert src.stream_widths() == {"rgb": 8, "flow": 8}
        assert src.annotations.classes == data.annotations.classes
        for name, v in data.annotations.videos.items():
            got = src.annotations.videos[name]
            assert got.subset == v.subset and set(got.labels) == set(v.labels)
            assert [(i.label, i.start, i.end) for i in got.instances] == \
                [(i.label, i.start, i.end) for i in v.instances]
            got_streams = src.features(name, ["rgb", "flow"])
            np.testing.assert_array_equal(np.concatenate([got_streams["rgb"], got_streams["flow"]], axis=1),
                                          data.features[name])
    assert open_source(paths["wtalc"]).annotations.ambiguous == data.annotations.ambiguous


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["synth", "--out", str(out), "--dim", "8", "--videos", "6", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "3 train + 3 test videos" in text and str(out / "wtalc") in text
    assert (out / "folders" / "gt.json").is_file()
    assert open_source(out / "wtalc").stream_widths() == {"rgb": 4, "flow": 4}


@pytest.mark.parametrize("argv", [["--dim", "7"], ["--dim", "0"], ["--videos", "1"]])
def test_cli_synth_rejects_bad_sizes(tmp_path, capsys, argv):
    assert main(["synth", "--out", str(tmp_path / "x"), *argv]) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_config_validation():
    with pytest.raises(ValueError):
        SynthConfig(dim=3)
    with pytest.raises(ValueError):
        SynthConfig(phase_strength_rgb=(1.0, 1.0))
