"""The data of a run: the feature source, its train / validation / test videos and their datasets.

The validation split is carved from the training videos with its own seed (``data.val_seed``), stratified
by each video's sorted label set, so every label combination with enough videos is represented. Training
uses only video-level labels; the validation videos' ground-truth instances are used for model selection
(held-out selection, the standard practice when no separate validation set exists).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wtal.data.annotations import AnnotationSet
from wtal.data.batch import Batch, collate_videos
from wtal.data.dataset import VideoDataset
from wtal.data.sources import FeatureSource, open_source, split_subsets
from wtal.engine.config import RunConfig
from wtal.errors import WtalInputError


@dataclass
class RunData:
    source: FeatureSource
    train: VideoDataset
    val: VideoDataset | None
    test: VideoDataset

    @property
    def annotations(self) -> AnnotationSet:
        return self.source.annotations

    @property
    def classes(self) -> list[str]:
        return list(self.source.annotations.classes)

    @property
    def snippets_per_second(self) -> float:
        return float(self.source.layout.snippets_per_second)

    @property
    def input_dim(self) -> int:
        return self.train.feature_dim

    def split(self, name: str) -> VideoDataset:
        """``train``, ``val`` or ``test`` (also ``validation`` as an alias of ``val``)."""
        if name in ("val", "validation"):
            if self.val is None:
                raise WtalInputError("this run has no validation split (data.val_fraction is 0)",
                                     fix="use --split test or --split train")
            return self.val
        if name == "train":
            return self.train
        if name == "test":
            return self.test
        raise WtalInputError(f"unknown split {name!r}", fix="use train, val or test")


def carve_validation(names: list[str], annotations: AnnotationSet, fraction: float, seed: int
                     ) -> tuple[list[str], list[str]]:
    """Split ``names`` into ``(train, val)`` with ``round(fraction * N)`` validation videos (at least 1 when
    ``fraction > 0``), stratified by label set. Both keep the source order."""
    if fraction <= 0 or len(names) < 2:
        return list(names), []
    n_val = min(max(int(round(fraction * len(names))), 1), len(names) - 1)
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, n in enumerate(names):
        groups.setdefault(tuple(sorted(annotations.videos[n].labels)), []).append(i)
    # Interleave the shuffled groups so that the first n_val picks spread over groups in proportion to
    # their size: rank each member by (its position within the group + jitter) / group size.
    keys, ranks = [], []
    for members in groups.values():
        perm = rng.permutation(len(members))
        offset = rng.random()
        for pos, j in enumerate(perm):
            keys.append(members[j])
            ranks.append((pos + offset) / len(members))
    order = np.asarray(keys)[np.argsort(np.asarray(ranks), kind="stable")]
    val_idx = set(order[:n_val].tolist())
    train = [n for i, n in enumerate(names) if i not in val_idx]
    return train, [n for i, n in enumerate(names) if i in val_idx]


def prepare_data(cfg: RunConfig, path: str | Path | None = None) -> RunData:
    path = path if path is not None else cfg.data.path
    if path is None:
        raise WtalInputError("no data path in the config", fix="pass --data DIR")
    source = open_source(path)
    ann = source.annotations
    train_subset, test_subset = split_subsets(ann)
    train_subset = cfg.data.train_subset or train_subset
    test_subset = cfg.data.test_subset or test_subset
    train_all = ann.names(train_subset)
    test_names = ann.names(test_subset)
    if not train_all or not test_names:
        raise WtalInputError(f"subset {train_subset if not train_all else test_subset!r} has no videos",
                             path=path, fix="set data.train_subset / data.test_subset to subsets of the data")
    train_names, val_names = carve_validation(train_all, ann, cfg.data.val_fraction, cfg.data.val_seed)
    mod, cache = cfg.data.modality, cfg.data.cache
    return RunData(source, VideoDataset(source, train_names, mod, cache),
                   VideoDataset(source, val_names, mod, cache) if val_names else None,
                   VideoDataset(source, test_names, mod, cache))


def iterate_batches(dataset: VideoDataset, order: list[int], batch_size: int, device: torch.device
                    ) -> Iterator[Batch]:
    """Batches of ``batch_size`` videos of ``dataset`` in the given order, on ``device``."""
    for start in range(0, len(order), batch_size):
        yield collate_videos([dataset[i] for i in order[start : start + batch_size]]).to(device)


def length_sorted_batches(dataset: VideoDataset, batch_size: int, device: torch.device, window: int = 8
                          ) -> Iterator[Batch]:
    """Inference batches with little padding: videos are sorted by length within windows of
    ``window * batch_size`` consecutive videos (so only one window is held in memory at a time)."""
    span = max(batch_size * window, 1)
    for start in range(0, len(dataset), span):
        items = [dataset[i] for i in range(start, min(start + span, len(dataset)))]
        items.sort(key=lambda it: it[0].shape[0])
        for b in range(0, len(items), batch_size):
            yield collate_videos(items[b : b + batch_size]).to(device)
