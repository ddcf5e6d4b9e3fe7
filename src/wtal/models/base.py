"""What every model is built from (:class:`ModelContext`) and the small protocol the engine calls.

Shapes: ``B`` samples, ``T`` snippets (padded to the longest sample in the batch), ``C`` action classes.
``batch.mask`` is a ``(B, T)`` bool tensor, True on real snippets. Every temporal softmax, sum, mean and
top-k inside a model must respect the mask, so that a padded batch gives the same per-sample losses and
gradients as one sample at a time.

A model reads named feature streams (``batch.inputs[name]``, ``(B, T, D_name)``): the streams it was built
for, in the order of ``context.streams``, and nothing else, so a model trained on ``rgb`` never needs the
``flow`` files. Epochs are 0-based indices, as in the reference code ("epoch index e").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from wtal.data.batch import Batch
from wtal.data.timebase import I3D_SNIPPETS_PER_SECOND
from wtal.errors import WtalInputError


@dataclass(frozen=True)
class ModelContext:
    """What a model may know about its data when it is built."""

    streams: Mapping[str, int]  # the streams the model reads, in order -> their widths
    classes: tuple[str, ...]
    snippets_per_second: float = I3D_SNIPPETS_PER_SECOND
    class_text: np.ndarray | None = None  # (C, E) class-name text embeddings, class-list order
    extras: Mapping[str, Any] = field(default_factory=dict)  # task-specific (e.g. a grounding vocabulary)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_dim(self) -> int:
        """Width of the model's streams concatenated (its joint input)."""
        return sum(int(w) for w in self.streams.values())

    def require_class_text(self, model: str) -> np.ndarray:
        if self.class_text is None:
            raise WtalInputError(f"model {model!r} needs class-name text embeddings and the data has none",
                                 fix="put class_text.npy ((C, E), class-list order) in the data folder, e.g. "
                                     "with `wtal embed-classes`")
        return self.class_text


@dataclass
class ModelOutput:
    video_scores: torch.Tensor  # (B, C) action-class scores in [0, 1] (classification mAP, class gating)
    cas_logits: torch.Tensor  # (B, T, C+1) snippet logits; column C is background
    attention: torch.Tensor | None  # (B, T) class-agnostic foreground attention in [0, 1], or None
    extras: dict[str, Any] = field(default_factory=dict)  # model-specific tensors (other branches, ...)


@runtime_checkable
class WtalModel(Protocol):
    """What the engine, the localizer and the pseudo-label pipeline need from a detection model."""

    num_classes: int
    input_streams: tuple[str, ...]  # the streams it reads from a batch

    def __call__(self, batch: Batch) -> ModelOutput: ...

    def losses(self, out: ModelOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        """Per-sample losses, each a ``(B,)`` tensor; the key ``"total"`` is the weighted sum.

        The engine sums ``total`` over the batch (a batch equals the reference's gradient accumulation).
        """
        ...

    def localization_scores(self, out: ModelOutput, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's test-time recipe: ``(cas (B, T, C) in [0, 1], video_scores (B, C))``."""
        ...

    def distill_logits(self, out: ModelOutput) -> list[tuple[float, torch.Tensor]]:
        """Weighted ``(B, T, C+1)`` logits that snippet-level pseudo labels supervise."""
        ...

    def on_epoch_end(self, epoch: int, train_batches: Callable[[], Iterable[Batch]]) -> None:
        """Model-specific state changes at the end of epoch ``epoch`` (e.g. RSKP's memory initialisation).

        ``train_batches()`` iterates the training set in a fixed order; the model switches itself to eval
        mode for such passes and restores its mode afterwards.
        """
        ...


class StreamModel(nn.Module):
    """Base of the models: remembers the streams it reads and the classes, and joins its streams."""

    def __init__(self, context: ModelContext):
        super().__init__()
        self.input_streams = tuple(context.streams)
        self.stream_widths = {s: int(w) for s, w in context.streams.items()}
        self.num_classes = context.num_classes

    def joint_input(self, batch: Batch) -> torch.Tensor:
        """The model's streams concatenated along the feature axis, ``(B, T, sum D)``."""
        return branch_features(batch, self.input_streams)

    def on_epoch_end(self, epoch: int, train_batches: Callable[[], Iterable[Batch]]) -> None:
        return None

    def activation_map(self, out: Any, batch: Batch) -> torch.Tensor:
        """``(B, T, K)`` the model's per-snippet activation in [0, 1], the map a teacher's global distillation
        matches: a detection model's test-time class map (``localization_scores``); a grounding model overrides it
        with its query-conditioned activation (one column)."""
        return self.localization_scores(out, batch.mask)[0]

    # Multi-process training: a model whose losses update its own state (a memory bank, a label store)
    # queues those updates while ``defer_state_updates`` is on and applies everyone's in ``sync_state``, so
    # that every process keeps the same state. Models without such state need neither.
    def defer_state_updates(self) -> None:
        """Queue training-time state updates until :meth:`sync_state` (called after every optimiser step)."""
        return None

    def sync_state(self, dist: Any) -> None:
        """Apply the queued state updates of every process (``dist``: a ``DistContext``), in rank order."""
        return None


def data_sized_state_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the buffers whose shape the training data sets (a module lists them in its
    ``data_sized_buffers``, e.g. a snippet label store): loading a state resizes them to the saved shape,
    so their shapes are not part of what makes a checkpoint fit a model."""
    return {f"{prefix}.{name}" if prefix else name for prefix, module in model.named_modules()
            for name in getattr(module, "data_sized_buffers", ())}


def branch_inputs(stream_widths: Mapping[str, int], per_stream: bool) -> list[tuple[tuple[str, ...], int]]:
    """The input of each branch of a multi-branch model: one branch per stream, or one on all streams
    joined (``per_stream=False``); each ``(stream names, total width)``."""
    if per_stream:
        return [((s,), int(w)) for s, w in stream_widths.items()]
    return [(tuple(stream_widths), sum(int(w) for w in stream_widths.values()))]


def branch_features(batch: Batch, names: tuple[str, ...]) -> torch.Tensor:
    """The features of one branch: its stream, or its streams joined along the feature axis."""
    if len(names) == 1:
        return batch.inputs[names[0]]
    return torch.cat([batch.inputs[s] for s in names], dim=-1)
