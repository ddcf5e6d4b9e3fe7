"""Weakly-supervised temporal action localization: videos with video-level labels in, action instances
``(class, start s, end s, score)`` out, scored by the official detection mAP.

Data: a W-TALC bundle or a per-video folder (:func:`wtal.data.sources.open_source`); the training subset
loses a validation part (:func:`wtal.data.rundata.carve_validation`). Decoding: the model's test-time CAS
(``localization_scores``) through the configured post-processing (``postprocess``,
:class:`wtal.localize.pipeline.LocalizeConfig`). Selection key: the average detection mAP over
``eval.tiou``, or the classification mAP when a split has no ground-truth instances.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from wtal.data.batching import length_sorted_batches
from wtal.data.dataset import VideoDataset
from wtal.data.rundata import RunData, carve_validation
from wtal.data.segments import SegmentTable
from wtal.data.sources import open_source, split_subsets
from wtal.errors import WtalInputError
from wtal.models.base import ModelContext

if TYPE_CHECKING:
    from wtal.engine.config import RunConfig


@dataclass
class DetectionResult:
    cas: dict[str, np.ndarray]  # video -> (T, C) float32 in [0, 1]
    scores: dict[str, np.ndarray]  # video -> (C,) float32
    detections: SegmentTable
    report: object | None  # wtal.evaluation.DetectionReport, None without ground truth
    classification_map: float | None
    classes: list[str]
    snippets_per_second: float

    @property
    def selection_metric(self) -> float | None:
        """Average detection mAP over the configured tIoUs; classification mAP when there is no ground truth."""
        if self.report is not None:
            return float(self.report.average)
        return self.classification_map

    def summary(self) -> dict:
        out: dict = {"videos": len(self.cas), "detections": len(self.detections),
                     "classification_map": self.classification_map}
        if self.report is not None:
            out.update({"mAP": list(self.report.mAP), "thresholds": list(self.report.thresholds),
                        "average": self.report.average, "averages": dict(self.report.averages)})
        return out

    def headline(self) -> str:
        average = None if self.report is None else self.report.average
        return f"mAP {_fmt(average)} cmAP {_fmt(self.classification_map)}"

    def report_text(self) -> str:
        lines = [f"classification mAP: {_fmt(self.classification_map)}"]
        if self.report is not None:
            lines.insert(0, self.report.table())
        return "\n".join(lines)

    def write_predictions(self, path: str | Path) -> Path:
        from wtal.evaluation.results import write_results

        return write_results(path, self.detections)

    def write_cas(self, path: str | Path) -> Path:
        """The test-time CAS and video scores as a CAS file (``wtal localize`` / ``wtal pseudolabel`` input)."""
        from wtal.localize.casfile import write_cas_file

        return write_cas_file(path, self.cas, self.classes, self.snippets_per_second, self.scores)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


class DetectionTask:
    name = "detection"

    def prepare_data(self, cfg: RunConfig, streams: Sequence[str], path: str | Path | None = None) -> RunData:
        path = path if path is not None else cfg.data.path
        if path is None:
            raise WtalInputError("no data path in the config", fix="pass --data DIR")
        source = open_source(path, max_length_mismatch=cfg.data.max_length_mismatch)
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
        streams, cache = list(streams), cfg.data.cache
        train = VideoDataset(source, train_names, streams, cache)
        return RunData(train, VideoDataset(source, val_names, streams, cache) if val_names else None,
                       VideoDataset(source, test_names, streams, cache), streams=dict(train.stream_widths),
                       classes=list(ann.classes), snippets_per_second=float(source.snippets_per_second),
                       source=source, class_text=source.class_text())

    def model_context(self, data: RunData, streams: Sequence[str]) -> ModelContext:
        return ModelContext({s: data.streams[s] for s in streams}, tuple(data.classes), data.snippets_per_second,
                            data.class_text)

    def evaluate(self, model: torch.nn.Module, dataset: VideoDataset, cfg: RunConfig, device: torch.device
                 ) -> DetectionResult:
        from wtal.evaluation.classification import classification_map
        from wtal.evaluation.detection import detection_map
        from wtal.localize.pipeline import LocalizeConfig, localize_videos

        cas, scores = infer(model, dataset, device, cfg.data.eval_batch_size, cfg.data.max_batch_snippets)
        ann = dataset.source.annotations
        rate = float(dataset.source.snippets_per_second)
        detections = localize_videos(cas, scores, ann.classes, LocalizeConfig.from_section(cfg.postprocess), rate)
        gt = ann.ground_truth(dataset.names)
        report = detection_map(gt, detections, cfg.eval.tiou) if len(gt) else None
        labels = np.stack([ann.multi_hot(n) for n in dataset.names])
        cmap = classification_map(np.stack([scores[n] for n in dataset.names]), labels) if labels.any() else None
        return DetectionResult(cas, scores, detections, report, cmap, list(ann.classes), rate)


@torch.no_grad()
def infer(model: torch.nn.Module, dataset: VideoDataset, device: torch.device, batch_size: int,
          max_snippets: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Test-time CAS and video scores of every video (the model's ``localization_scores`` recipe);
    ``max_snippets``: padded snippets per batch (``None``: ``batching.default_max_snippets``)."""
    was_training = model.training
    model.eval()
    cas_out: dict[str, np.ndarray] = {}
    score_out: dict[str, np.ndarray] = {}
    try:
        for batch in length_sorted_batches(dataset, batch_size, device, max_snippets=max_snippets):
            out = model(batch)
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
