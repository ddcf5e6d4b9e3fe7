"""Synthetic Charades-STA-like grounding set: determinism, Charades-STA statistics, modality evidence, writer
and `wtal synth --task grounding`."""

from __future__ import annotations

import numpy as np
import pytest

from wtal.cli import main
from wtal.data.grounding import GroundingFeatures, read_grounding_json
from wtal.data.synthetic_grounding import (
    GroundingSynthConfig,
    _build_world,
    iter_videos,
    split_queries,
    write_grounding_synthetic,
)
from wtal.data.text import tokenize
from wtal.data.timebase import snippet_count


@pytest.fixture(scope="module")
def small():
    cfg = GroundingSynthConfig(num_videos=12, dim=32, seed=3)
    return cfg, list(iter_videos(cfg))


@pytest.fixture(scope="module")
def charades_sized():
    """About a quarter of Charades-STA's videos without features: the annotation statistics matter here."""
    cfg = GroundingSynthConfig(num_videos=1500, dim=4, seed=0)
    return cfg, split_queries(cfg, list(iter_videos(cfg, features=False)))


def test_deterministic_by_seed(small):
    cfg, videos = small
    again = list(iter_videos(GroundingSynthConfig(num_videos=12, dim=32, seed=3)))
    for a, b in zip(videos, again, strict=True):
        assert (a.queries, a.events, a.duration) == (b.queries, b.events, b.duration)
        for stream in ("rgb", "flow"):
            np.testing.assert_array_equal(a.features[stream], b.features[stream])
    other = list(iter_videos(GroundingSynthConfig(num_videos=12, dim=32, seed=4), features=False))
    assert [v.queries for v in other] != [v.queries for v in videos]


def test_shapes_and_values(small):
    cfg, videos = small
    for v in videos:
        t = snippet_count(v.duration, cfg.snippets_per_second)
        for stream in ("rgb", "flow"):
            x = v.features[stream]
            assert x.shape == (t, 16) and x.dtype == np.float32 and np.isfinite(x).all() and (x >= 0).all()


def test_statistics_land_near_charades_sta(charades_sized):
    _, (train, test) = charades_sized
    queries = train + test
    videos = {q.video for q in queries}
    assert len(test) / len(queries) == pytest.approx(0.2, abs=0.04)
    assert 2.0 <= len(queries) / len(videos) <= 2.6  # Charades-STA: 2.19 (train), 2.58 (test)
    rel = np.array([(q.end - q.start) / q.duration for q in queries])
    assert rel.mean() == pytest.approx(0.27, abs=0.03)
    durations = np.array([q.duration for q in queries])
    assert 27 <= np.median(durations) <= 34
    lengths = np.array([q.end - q.start for q in queries])
    assert lengths.min() >= 2.5 - 1e-9 and 6.5 <= np.median(lengths) <= 8.5
    assert all(0 <= q.start < q.end <= q.duration for q in queries)
    assert 0.15 <= np.mean([q.start == 0 for q in queries]) <= 0.3  # Charades-STA: 22-25 %
    words = [len(tokenize(q.sentence)) for q in queries]
    assert max(words) <= 10 and 5 <= np.mean(words) <= 7.5  # Charades-STA: 3-10 words, mean 6.3
    assert [q.id for q in train] == list(range(len(train))) and not {q.video for q in train} & {q.video for q in test}


def test_same_moment_sentences_and_distractors(charades_sized):
    cfg, _ = charades_sized
    videos = list(iter_videos(GroundingSynthConfig(num_videos=300, dim=4, seed=1), features=False))
    pairs = [(a[:2] == b[:2]) for v in videos for i, a in enumerate(v.queries) for b in v.queries[i + 1:]]
    assert 0.15 <= np.mean(pairs) <= 0.45  # Charades-STA: 29-31 % of a video's sentence pairs share the moment
    undescribed = [sum(not e.described for e in v.events) for v in videos]
    assert np.mean(undescribed) > 1.0


def _contrast(x, atom, inside):
    """Mean projection on ``atom`` inside the event minus outside, in units of the outside spread."""
    p = x @ atom
    return (p[inside].mean() - p[~inside].mean()) / (p[~inside].std() + 1e-9)


def test_verbs_show_mainly_in_flow_and_objects_in_rgb():
    cfg = GroundingSynthConfig(num_videos=60, dim=128, seed=2, undescribed_rate=0.0, lookalike_prob=0.0,
                               object_ambient=0.0, object_context_s=0.01)  # objects only during their events
    world = _build_world(cfg)
    contrast = {"verb": [[], []], "object": [[], []]}
    for v in iter_videos(cfg):
        t = len(v.features["rgb"])
        centre = (np.arange(t) + 0.5) / cfg.snippets_per_second
        for e in v.events:
            verb, obj = world.actions[e.action]
            inside = (centre >= e.start) & (centre < e.end)
            others = [o for o in v.events if o is not e]
            if obj is None or inside.sum() < 2 or (~inside).sum() < 2 or any(
                    world.actions[o.action][0] == verb or world.actions[o.action][1] == obj for o in others):
                continue
            for m, stream in enumerate(("rgb", "flow")):
                atoms = world.atoms[m]
                x = v.features[stream]
                contrast["verb"][m].append(_contrast(x, atoms[world.slices["verb"]][world.verbs.index(verb)], inside))
                contrast["object"][m].append(
                    _contrast(x, atoms[world.slices["object"]][world.objects.index(obj)], inside))
    verb_rgb, verb_flow = map(np.mean, contrast["verb"])
    obj_rgb, obj_flow = map(np.mean, contrast["object"])
    assert verb_flow > 2 * verb_rgb and verb_flow > 0.5
    assert obj_rgb > 1.5 * obj_flow and obj_rgb > 0.3


def test_writer_layout_and_cli(tmp_path, capsys):
    cfg = GroundingSynthConfig(num_videos=8, dim=12, seed=5)
    paths = write_grounding_synthetic(tmp_path / "set", cfg)
    train, test = read_grounding_json(paths["train"]), read_grounding_json(paths["test"])
    features = GroundingFeatures(paths["features"])
    assert features.stream_widths() == {"rgb": 6, "flow": 6}
    videos = set(train.videos()) | set(test.videos())
    assert len(videos) == 8 and features.videos() == videos and len(test.videos()) == 2
    for q in test:
        x = features.features(q.video)
        assert len(x["rgb"]) == snippet_count(q.duration, cfg.snippets_per_second)
    assert main(["synth", "--task", "grounding", "--out", str(tmp_path / "cli"), "--videos", "8", "--dim", "12",
                 "--seed", "5"]) == 0
    assert "moment/duration" in capsys.readouterr().out
    assert (tmp_path / "cli" / "train.json").read_text() == paths["train"].read_text()
    assert main(["synth", "--task", "grounding", "--out", str(tmp_path / "bad"), "--dim", "7"]) == 2
