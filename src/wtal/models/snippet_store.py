"""Per-snippet labels of the training videos, kept in a model's buffers so that checkpoints carry them.

A model that regenerates snippet-level pseudo labels between epochs (MMSD's self-voting labels) must find
them again after ``--resume``, exactly as they were. The store holds, for each of ``channels`` label
channels (e.g. one per stream), a label and a confidence for every snippet of every training video, keyed by
the video's position in the training set (``Batch.index`` of the training batches).

Layout: the training videos' snippets lie end to end; the video at position ``i`` owns the flat positions
``offsets[i]:offsets[i + 1]`` (a position never seen gets length 0). ``labels`` and ``confidence`` are
``(channels, total snippets)``. The store starts empty (no training set is known when a model is built) and
is sized by its first :meth:`SnippetLabelStore.allocate`; loading a state dict resizes the buffers to the saved
shapes (``data_sized_buffers``, which :func:`wtal.engine.runs.load_weights` also honours), so a checkpoint
made before or after the first generation loads into a freshly built model.
"""

from __future__ import annotations

import torch
from torch import nn

from wtal.errors import WtalInputError


class SnippetLabelStore(nn.Module):
    """Labels and confidences per snippet of every training video, for ``channels`` label channels."""

    #: buffers whose shape is set by the training data: loading a state resizes them to the saved shape
    data_sized_buffers = ("offsets", "labels", "confidence")

    def __init__(self, channels: int):
        super().__init__()
        self.channels = int(channels)
        self.register_buffer("offsets", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("labels", torch.zeros(self.channels, 0))
        self.register_buffer("confidence", torch.zeros(self.channels, 0))

    @property
    def is_empty(self) -> bool:
        """True until the first :meth:`allocate` (no labels exist yet)."""
        return self.offsets.numel() == 0

    @property
    def num_videos(self) -> int:
        return max(self.offsets.numel() - 1, 0)

    def allocate(self, index: torch.Tensor, lengths: torch.Tensor) -> None:
        """Size the store for the videos at positions ``index (n,)`` with ``lengths (n,)`` snippets; every
        label and confidence starts at 0 (the reference's initial store)."""
        index, lengths = index.to(self.offsets.device), lengths.to(self.offsets.device, torch.int64)
        num = int(index.max().item()) + 1 if index.numel() else 0
        per_position = torch.zeros(num, dtype=torch.int64, device=self.offsets.device)
        per_position[index] = lengths
        self.offsets = torch.cat([per_position.new_zeros(1), torch.cumsum(per_position, 0)])
        total = int(self.offsets[-1].item())
        self.labels = self.labels.new_zeros(self.channels, total)
        self.confidence = self.confidence.new_zeros(self.channels, total)

    def positions(self, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Flat store positions ``(B, T)`` of a batch's snippets (0 on padding); the batch's videos must be
        the stored ones (same positions, same lengths)."""
        index = index.to(self.offsets.device)
        lengths = mask.sum(dim=1).to(self.offsets.device)
        if bool((index < 0).any()) or bool((index >= self.num_videos).any()):
            raise WtalInputError(f"a batch holds training-set positions {index.tolist()}, but the snippet label "
                                 f"store holds {self.num_videos} videos",
                                 fix="resume a run with its own data and training split (data.val_fraction, "
                                     "data.val_seed)")
        stored = self.offsets[index + 1] - self.offsets[index]
        if not torch.equal(stored, lengths):
            bad = int(torch.nonzero(stored != lengths)[0, 0])
            raise WtalInputError(f"training video at position {int(index[bad])} has {int(lengths[bad])} snippets, "
                                 f"but its stored snippet labels have {int(stored[bad])}",
                                 fix="resume a run with its own data and training split")
        steps = torch.arange(mask.shape[1], device=self.offsets.device).unsqueeze(0)
        flat = self.offsets[index].unsqueeze(1) + steps
        return torch.where(mask.to(flat.device), flat, torch.zeros_like(flat))

    def read(self, index: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(labels, confidence)``, each ``(channels, B, T)`` on the mask's device, 0 on padding."""
        flat = self.positions(index, mask)
        keep = mask.to(self.labels.device).unsqueeze(0)
        zero = torch.zeros((), dtype=self.labels.dtype, device=self.labels.device)
        labels = torch.where(keep, self.labels[:, flat], zero)
        confidence = torch.where(keep, self.confidence[:, flat], zero)
        return labels.to(mask.device), confidence.to(mask.device)

    def keep_more_confident(self, index: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                            confidence: torch.Tensor) -> None:
        """Replace a snippet's stored label and confidence (per channel) where the new confidence is strictly
        higher; elsewhere keep the stored ones. ``labels`` and ``confidence`` are ``(channels, B, T)``."""
        flat = self.positions(index, mask)
        real = mask.to(flat.device)
        where = flat[real]  # (n,) every real snippet of the batch once
        new_labels = labels.to(self.labels)[:, real]
        new_confidence = confidence.to(self.confidence)[:, real]
        better = new_confidence > self.confidence[:, where]
        self.labels[:, where] = torch.where(better, new_labels, self.labels[:, where])
        self.confidence[:, where] = torch.where(better, new_confidence, self.confidence[:, where])

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for name in self.data_sized_buffers:
            saved = state_dict.get(prefix + name)
            own = self._buffers[name]
            if saved is not None and tuple(saved.shape) != tuple(own.shape):
                self._buffers[name] = own.new_zeros(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
