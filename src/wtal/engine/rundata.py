"""The data of a run: the feature source, its train / validation / test videos and their datasets.

The validation split is carved from the training videos with its own seed (``data.val_seed``), stratified
by each video's sorted label set, so every label combination with enough videos is represented. Training
uses only video-level labels; the validation videos' ground-truth instances are used for model selection
(held-out selection, the standard practice when no separate validation set exists).
"""

from __future__ import annotations

import math
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


# Padded-snippet budget of one forward pass. Measured on CPU (one thread, forward + backward of mil / rskp /
# facnet): throughput per snippet peaks once a pass holds ~1600-4000 padded snippets at D=256 and ~400-1600
# at D=2048, and drops by up to 40% beyond (the activations leave the caches), i.e. ~2**20 feature values.
# A pass also costs a fixed ~4-7 ms (Python and kernel launches), about 1/32 of a full budget's compute.
CPU_BUDGET_VALUES = 2**20
ACCELERATOR_BUDGET_VALUES = 2**24  # not measured: accelerators want large passes; memory is the bound
PASS_OVERHEAD_FRACTION = 1 / 32


def default_max_snippets(dim: int, device: torch.device | str = "cpu") -> int:
    """Padded snippets per forward pass when ``data.max_batch_snippets`` is null: a budget of feature
    values (``2**20`` on CPU, ``2**24`` elsewhere) divided by the feature dimension."""
    values = CPU_BUDGET_VALUES if torch.device(device).type == "cpu" else ACCELERATOR_BUDGET_VALUES
    return max(values // max(int(dim), 1), 1)


def plan_micro_batches(lengths: list[int], max_snippets: int, max_videos: int | None = None) -> list[list[int]]:
    """Split videos into length-sorted groups, each padded to its longest video.

    Returns groups of positions into ``lengths`` (shortest videos first; ties keep their order). The
    partition of the sorted videos into consecutive groups minimises ``padded snippets + overhead per
    group`` (the overhead is ``PASS_OVERHEAD_FRACTION * max_snippets``) subject to ``videos * longest <=
    max_snippets`` and ``videos <= max_videos``; a video longer than the budget forms a group of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sizes = [int(lengths[i]) for i in order]
    n = len(sizes)
    cap = n if max_videos is None else max(int(max_videos), 1)
    overhead = PASS_OVERHEAD_FRACTION * max_snippets
    cost = [0.0] + [math.inf] * n  # cost[j]: best plan of the j shortest videos
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = sizes[j - 1]  # the group ending at j is padded to its last (longest) video
        for i in range(j - 1, max(j - cap, 0) - 1, -1):
            if i < j - 1 and (j - i) * longest > max_snippets:
                break
            c = cost[i] + (j - i) * longest + overhead
            if c < cost[j]:
                cost[j], cut[j] = c, i
    groups = []
    j = n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def length_sorted_batches(dataset: VideoDataset, batch_size: int, device: torch.device, window: int = 8,
                          max_snippets: int | None = None) -> Iterator[Batch]:
    """Inference batches with little padding: within windows of ``window * batch_size`` consecutive
    videos (only one window is held in memory), videos are sorted by length and grouped by
    :func:`plan_micro_batches` (at most ``batch_size`` videos and ``max_snippets`` padded snippets per
    batch; ``None``: :func:`default_max_snippets`)."""
    if max_snippets is None:
        max_snippets = default_max_snippets(dataset.feature_dim, device)
    span = max(batch_size * window, 1)
    for start in range(0, len(dataset), span):
        items = [dataset[i] for i in range(start, min(start + span, len(dataset)))]
        for group in plan_micro_batches([it[0].shape[0] for it in items], max_snippets, batch_size):
            yield collate_videos([items[k] for k in group]).to(device)
