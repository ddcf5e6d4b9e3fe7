"""Batches of samples for training and inference: length-sorted groups with little padding.

Every dataset used here has ``dataset[i] -> Sample`` and ``dataset.collate(samples) -> Batch`` (the task
decides how its fields are collated); these helpers only decide which samples go together.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from wtal.data.batch import Batch


def iterate_batches(dataset, order: list[int], batch_size: int, device: torch.device) -> Iterator[Batch]:
    """Batches of ``batch_size`` samples of ``dataset`` in the given order, on ``device``."""
    for start in range(0, len(order), batch_size):
        yield dataset.collate([dataset[i] for i in order[start : start + batch_size]]).to(device)


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


def length_sorted_batches(dataset, batch_size: int, device: torch.device, window: int = 8,
                          max_snippets: int | None = None) -> Iterator[Batch]:
    """Inference batches with little padding: within windows of ``window * batch_size`` consecutive
    videos (only one window is held in memory), videos are sorted by length and grouped by
    :func:`plan_micro_batches` (at most ``batch_size`` videos and ``max_snippets`` padded snippets per
    batch; ``None``: :func:`default_max_snippets`)."""
    if max_snippets is None:
        max_snippets = default_max_snippets(dataset.input_width, device)
    span = max(batch_size * window, 1)
    for start in range(0, len(dataset), span):
        items = [dataset[i] for i in range(start, min(start + span, len(dataset)))]
        for group in plan_micro_batches([it.length for it in items], max_snippets, batch_size):
            yield dataset.collate([items[k] for k in group]).to(device)
