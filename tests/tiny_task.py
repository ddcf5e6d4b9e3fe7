"""A task and a model defined outside wtal (for the tests): top-1 video classification.

It shows what a new task needs: its own targets (one class index per video), decoding (the arg-max class),
metric (top-1 accuracy, the selection key) and prediction file, all used by the unchanged trainer through
``task: "tiny_task:Top1Task"`` and ``model: {name: "tiny_task:MeanPoolClassifier"}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wtal.data.batch import Batch, Sample, collate_samples
from wtal.data.dataset import VideoDataset
from wtal.models.base import ModelOutput, StreamModel
from wtal.tasks.detection import DetectionTask


class Top1Dataset(VideoDataset):
    """Videos with one target: the index of their first label (a task-specific field)."""

    def __getitem__(self, i: int) -> Sample:
        sample = super().__getitem__(i)
        sample.fields["target"] = int(np.argmax(sample.labels))
        return sample

    def collate(self, samples) -> Batch:
        return collate_samples(samples, lambda s: {"target": torch.tensor([x.fields["target"] for x in s])})


@dataclass
class Top1Result:
    names: list[str]
    predicted: list[int]
    accuracy: float

    @property
    def selection_metric(self) -> float:
        return self.accuracy

    def summary(self) -> dict:
        return {"top1": self.accuracy, "videos": len(self.names)}

    def headline(self) -> str:
        return f"top-1 {self.accuracy:.1f}"

    def report_text(self) -> str:
        return f"top-1 accuracy: {self.accuracy:.2f} % of {len(self.names)} videos"

    def write_predictions(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(zip(self.names, self.predicted, strict=True))))
        return path


class Top1Task(DetectionTask):
    """Detection's data and model context, another target, decoding and metric."""

    name = "top1"

    def prepare_data(self, cfg, streams, path=None):
        data = super().prepare_data(cfg, streams, path)
        for split in ("train", "val", "test"):
            ds = getattr(data, split)
            if ds is not None:
                setattr(data, split, Top1Dataset(ds.source, ds.names, ds.streams, ds.cache))
        return data

    @torch.no_grad()
    def evaluate(self, model, dataset, cfg, device) -> Top1Result:
        model.eval()
        predicted, correct = [], 0
        for i in range(len(dataset)):
            batch = dataset.collate([dataset[i]]).to(device)
            guess = int(model(batch).video_scores.argmax(dim=1))
            predicted.append(guess)
            correct += guess == int(batch.fields["target"])
        model.train()
        return Top1Result(list(dataset.names), predicted, 100.0 * correct / max(len(dataset), 1))


class MeanPoolClassifier(StreamModel):
    """Softmax regression on the mean of the model's streams."""

    def __init__(self, context, **params):
        super().__init__(context)
        self.linear = nn.Linear(context.input_dim, context.num_classes)

    def forward(self, batch: Batch) -> ModelOutput:
        x = self.joint_input(batch)
        mask = batch.mask.unsqueeze(-1).to(x.dtype)
        logits = self.linear((x * mask).sum(1) / mask.sum(1))
        return ModelOutput(video_scores=torch.softmax(logits, -1), cas_logits=logits[:, None], attention=None,
                           extras={"logits": logits})

    def losses(self, out: ModelOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        ce = nn.functional.cross_entropy(out.extras["logits"], batch.fields["target"], reduction="none")
        return {"total": ce, "ce": ce}
