"""Tiny synthetic data for the engine tests, and tests of the validation split."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from wtal.data.annotations import AnnotationSet, VideoInfo
from wtal.data.rundata import carve_validation
from wtal.data.synthetic import SynthConfig, write_synthetic


def tiny_config(**overrides) -> SynthConfig:
    """~40 snippets per video, 16-d features, 3 classes, strong action atoms and weak nuisances: fast on
    CPU and learnable in a few epochs."""
    params = dict(num_videos=36, dim=16, num_classes=3, seed=0, duration_log_mean=3.4, duration_log_sd=0.35,
                  duration_range=(12.0, 60.0), train_fraction=0.6, nuisance_strength=(0.3, 0.3),
                  domain_offset_sd=0.2, phase_strength_rgb=(2.0, 3.0, 1.0), phase_strength_flow=(1.0, 4.0, 1.5),
                  distractor_rate_per_min=0.2, context_ambient=0.1)
    params.update(overrides)
    return SynthConfig(**params)


def write_tiny(folder: Path, **overrides) -> dict[str, Path]:
    """Write the tiny set; returns {'wtalc': feature file, 'folders': per-video folder}."""
    return write_synthetic(folder, tiny_config(**overrides))


def tiny_run_yaml(path: Path, *, model: str = "mil", epochs: int = 3, extra: str = "") -> Path:
    path.write_text(f"""
model: {{name: {model}, params: {{dropout: 0.0}}}}
data: {{val_fraction: 0.2, batch_size: 4, eval_batch_size: 8}}
optim: {{lr: 0.01, betas: [0.9, 0.99], weight_decay: 0.0}}
train: {{epochs: {epochs}, eval_every: 1, seed: 3, select: val, progress: false}}
eval: {{tiou: [0.1, 0.3, 0.5]}}
postprocess: {{preset: paper, class_threshold: 0.1}}
pseudo: null
{extra}
""", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    return write_tiny(tmp_path_factory.mktemp("tiny"))


def _annotations(labels: list[tuple[str, ...]]) -> AnnotationSet:
    videos = {f"v{i}": VideoInfo(f"v{i}", "validation", 10.0, lab) for i, lab in enumerate(labels)}
    return AnnotationSet(["a", "b", "c"], videos)


def test_carve_validation_sizes_order_and_determinism():
    labels = [("a",)] * 30 + [("b",)] * 20 + [("c",)] * 10
    ann = _annotations(labels)
    names = ann.names()
    train, val = carve_validation(names, ann, 0.1, seed=5)
    assert len(val) == 6 and len(train) == 54
    assert set(train) | set(val) == set(names) and not set(train) & set(val)
    assert train == [n for n in names if n in set(train)]  # source order kept
    assert carve_validation(names, ann, 0.1, seed=5) == (train, val)
    assert carve_validation(names, ann, 0.1, seed=6) != (train, val)
    # stratified: 6 validation videos from groups of 30/20/10 -> 3/2/1
    counts = Counter(ann.videos[n].labels[0] for n in val)
    assert counts == {"a": 3, "b": 2, "c": 1}


def test_carve_validation_edge_cases():
    ann = _annotations([("a",)] * 5)
    names = ann.names()
    assert carve_validation(names, ann, 0.0, seed=0) == (names, [])
    train, val = carve_validation(names, ann, 0.01, seed=0)  # rounds to 0 -> at least one
    assert len(val) == 1 and len(train) == 4
    train, val = carve_validation(names[:2], ann, 0.9, seed=0)  # never empties the training set
    assert len(train) == 1 and len(val) == 1
