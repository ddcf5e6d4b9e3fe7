"""The data of a run: its train / validation / test datasets, the streams it loads, and what a model may
know about them.

The validation split is carved from the training videos with its own seed (``data.val_seed``), stratified
by each video's sorted label set, so every label combination with enough videos is represented. Training
uses only video-level labels; the validation videos' ground-truth instances are used for model selection
(held-out selection, the standard practice when no separate validation set exists).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wtal.data.annotations import AnnotationSet
from wtal.errors import WtalInputError


@dataclass
class RunData:
    """Datasets of one run (each ``dataset[i] -> Sample`` with ``collate``) and their shared facts."""

    train: Any
    val: Any | None
    test: Any
    streams: dict[str, int]  # the streams loaded for the run (model and teacher) -> widths
    classes: list[str]
    snippets_per_second: float
    source: Any = None  # the feature source (detection: a FeatureSource)
    class_text: np.ndarray | None = None  # (C, E) class-name text embeddings, when the data has them
    extras: dict[str, Any] = field(default_factory=dict)  # task-specific facts (a grounding vocabulary, ...)
    # JSON-able facts fitted on the training data that a trained model depends on (a grounding vocabulary):
    # stored in RUN/data.json and handed back to the task's prepare_data(learned=...) when the run is loaded,
    # so that prediction on other data encodes its inputs as the model was trained.
    learned: dict[str, Any] = field(default_factory=dict)

    @property
    def annotations(self) -> AnnotationSet:
        return self.source.annotations

    def split(self, name: str):
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

