"""The pseudo-label teacher: a frozen snapshot of the student, and its scores over the training set.

Two ways to read label scores from a teacher (``source``):

* ``"localization"`` (paper preset): the model's own test-time recipe, ``model.localization_scores``,
  with ``C`` action columns. Labels are then made by the same pipeline that makes test predictions,
  which is the point of the paper ("bridging the train-test gap").
* ``"distill_mix"`` (reference preset, the public GauFuse code): ``Σ_b w_b softmax(L_b) ⊙ attention`` over the
  model's weighted ``distill_logits`` branches (RSKP: 0.8 o.S + 0.2 m.S), normalised by ``Σ_b w_b``.
  With ``background_column`` it keeps the ``C+1``-th (background) column as the reference does.
  Video scores of the action columns come from ``localization_scores``; the model has no video score
  for background, so that column is scored by the mean of its top ``max(1, T // 8)`` CAS values (the
  usual MIL top-k rule).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from wtal.data.batch import Batch

ScoreSource = Literal["localization", "distill_mix"]


@dataclass
class VideoScores:
    """One training video as the teacher sees it (float64, real snippets only)."""

    cas: np.ndarray  # (T, K) snippet scores in [0, 1]
    video_scores: np.ndarray | None  # (K,); None: no class gating by score
    labels: np.ndarray  # (K,) ground-truth multi-hot video labels (background column: 0)


def snapshot_teacher(model: torch.nn.Module, *, dropout: bool = False) -> torch.nn.Module:
    """A deep copy of ``model`` with no gradients, in eval mode (``dropout=True``: left in train mode).

    ``dropout=True`` reproduces the reference, whose teacher is never put in eval mode, so its labels
    are sampled with dropout active.
    """
    teacher = copy.deepcopy(model)
    teacher.train(dropout)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def model_device(model: torch.nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _topk_mean(column: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the top ``max(1, T_b // 8)`` real values of each row of ``column (B, T)``."""
    lengths = mask.sum(dim=1)
    k = torch.clamp(lengths // 8, min=1)
    ranked = torch.sort(column.masked_fill(~mask, float("-inf")), dim=1, descending=True).values
    take = torch.arange(column.shape[1], device=column.device)[None, :] < k[:, None]
    return torch.where(take, ranked, torch.zeros_like(ranked)).sum(dim=1) / k.to(column.dtype)


def _mixed_cas(model: torch.nn.Module, out, mask: torch.Tensor) -> torch.Tensor:
    branches = model.distill_logits(out)
    total_weight = sum(w for w, _ in branches)
    cas = sum(w * torch.softmax(logits, dim=-1) for w, logits in branches) / total_weight
    if out.attention is not None:
        cas = cas * out.attention.unsqueeze(-1)
    return cas


@torch.no_grad()
def teacher_scores(teacher: torch.nn.Module, train_batches: Callable[[], Iterable[Batch]], *,
                   source: ScoreSource = "localization",
                   background_column: bool = False) -> dict[str, VideoScores]:
    """Run ``teacher`` over the training set and return each video's label scores, keyed by name."""
    if source not in ("localization", "distill_mix"):
        raise ValueError(f"unknown teacher score source {source!r}")
    if background_column and source != "distill_mix":
        raise ValueError("a background column needs source='distill_mix'")
    device = model_device(teacher)
    result: dict[str, VideoScores] = {}
    for batch in train_batches():
        batch = batch.to(device)
        mask = batch.mask
        out = teacher(batch)
        cas, video = teacher.localization_scores(out, mask)
        labels = batch.labels
        if source == "distill_mix":
            mixed = _mixed_cas(teacher, out, mask)
            num_actions = cas.shape[-1]
            if background_column:
                bg_score = _topk_mean(mixed[..., num_actions], mask)
                video = torch.cat([video, bg_score[:, None]], dim=1)
                labels = torch.cat([labels, torch.zeros_like(labels[:, :1])], dim=1)
                cas = mixed[..., : num_actions + 1]
            else:
                cas = mixed[..., :num_actions]
        cas_np = cas.double().cpu().numpy()
        video_np = video.double().cpu().numpy()
        labels_np = labels.double().cpu().numpy()
        lengths = mask.sum(dim=1).cpu().numpy()
        for b, name in enumerate(batch.names):
            result[name] = VideoScores(cas_np[b, : int(lengths[b])], video_np[b], labels_np[b])
    return result


def pad_video_rows(rows: Sequence[torch.Tensor], t_max: int) -> torch.Tensor:
    """Per-video ``(T_b, K)`` targets zero-padded along time into one ``(B, t_max, K)`` tensor."""
    padded = rows[0].new_zeros((len(rows), t_max, rows[0].shape[1]))
    for b, row in enumerate(rows):
        padded[b, : row.shape[0]] = row
    return padded
