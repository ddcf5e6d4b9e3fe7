"""Inference over a split and its evaluation: CAS, detections, detection mAP, classification mAP."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from wtal.data.dataset import VideoDataset
from wtal.data.segments import SegmentTable
from wtal.engine.rundata import length_sorted_batches


@dataclass
class SplitResult:
    cas: dict[str, np.ndarray]  # video -> (T, C) float32 in [0, 1]
    scores: dict[str, np.ndarray]  # video -> (C,) float32
    detections: SegmentTable
    report: object | None  # wtal.evaluation.DetectionReport, None without ground truth
    classification_map: float | None

    def summary(self) -> dict:
        out: dict = {"videos": len(self.cas), "detections": len(self.detections),
                     "classification_map": self.classification_map}
        if self.report is not None:
            out.update({"mAP": list(self.report.mAP), "thresholds": list(self.report.thresholds),
                        "average": self.report.average, "averages": dict(self.report.averages)})
        return out


@torch.no_grad()
def infer(model: torch.nn.Module, dataset: VideoDataset, device: torch.device, batch_size: int,
          max_snippets: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Test-time CAS and video scores of every video (the model's ``localization_scores`` recipe);
    ``max_snippets``: padded snippets per batch (``None``: ``rundata.default_max_snippets``)."""
    was_training = model.training
    model.eval()
    cas_out: dict[str, np.ndarray] = {}
    score_out: dict[str, np.ndarray] = {}
    try:
        for batch in length_sorted_batches(dataset, batch_size, device, max_snippets=max_snippets):
            out = model(batch.features, batch.mask)
            cas, scores = model.localization_scores(out, batch.mask)
            cas = cas.float().cpu().numpy()
            scores = scores.float().cpu().numpy()
            for b, (name, n) in enumerate(zip(batch.names, batch.lengths.tolist(), strict=True)):
                cas_out[name] = cas[b, :n]
                score_out[name] = scores[b]
    finally:
        model.train(was_training)
    # Keep the dataset's video order in the outputs.
    return {n: cas_out[n] for n in dataset.names}, {n: score_out[n] for n in dataset.names}


def localize_config(postprocess: dict):
    from wtal.localize.pipeline import LocalizeConfig

    params = dict(postprocess)
    preset = params.pop("preset", "paper")
    return LocalizeConfig.from_preset(preset, **params)


def evaluate_split(model: torch.nn.Module, dataset: VideoDataset, *, postprocess: dict, tiou: list[float],
                   device: torch.device, batch_size: int, snippets_per_second: float,
                   max_snippets: int | None = None) -> SplitResult:
    from wtal.evaluation.classification import classification_map
    from wtal.evaluation.detection import detection_map
    from wtal.localize.pipeline import localize_videos

    cas, scores = infer(model, dataset, device, batch_size, max_snippets)
    ann = dataset.source.annotations
    detections = localize_videos(cas, scores, ann.classes, localize_config(postprocess), snippets_per_second)
    gt = ann.ground_truth(dataset.names)
    report = detection_map(gt, detections, tiou) if len(gt) else None
    labels = np.stack([ann.multi_hot(n) for n in dataset.names])
    cmap = classification_map(np.stack([scores[n] for n in dataset.names]), labels) if labels.any() else None
    return SplitResult(cas, scores, detections, report, cmap)
