"""How far can LGMD's two distillations take an RGB-only student? The student recipe with an oracle teacher.

    python benchmarks/lgmd_oracle.py --data DIR --out OUTDIR [--config lgmd_student_rskp] [--epochs 40]
        [--seeds 0,1,2] [--threads 1]

The student config (RSKP on RGB, local pseudo labels + global activation distillation) is trained with its
teacher replaced by the ground truth: the oracle's activation map is 1 on the snippets whose centre lies in an
annotated instance of the class and 0 elsewhere, its video scores the video's labels. The local labels are
then the annotated instances run through the same fusion and LinPro as a real teacher's, and the global term
matches the student's map over time to the annotated extent. The test mAP bounds what a perfect teacher could
give this student through these two terms on these RGB features, so it separates what the RGB features can
express from how well the teacher and the distillation transfer. Runs go to ``OUTDIR/seedS``; a finished one
is read back. The mean ± sample std of the test mAP goes to stdout and ``OUTDIR/oracle.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from wtal.atomic import write_json_atomic
from wtal.data.annotations import VideoInfo
from wtal.data.batch import Batch
from wtal.data.timebase import snippets_to_seconds
from wtal.engine.command import apply_process_settings
from wtal.engine.config import resolve_config
from wtal.engine.logging import setup_logging
from wtal.engine.plugins import PluginContext
from wtal.engine.teacher import Teacher
from wtal.engine.trainer import Trainer
from wtal.pseudo.activation import build_activation_distill_plugin
from wtal.pseudo.plugin import build_gaufuse_plugin
from wtal.pseudo.teacher import pad_video_rows

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
METRIC = "AVG(0.1:0.7)"


def ground_truth_map(info: VideoInfo, classes: list[str], length: int) -> np.ndarray:
    """``(T, C)``: 1 where the snippet's centre lies in an annotated instance of the class."""
    centres = snippets_to_seconds(np.arange(length) + 0.5, info.snippets_per_second)
    out = np.zeros((length, len(classes)), dtype=np.float32)
    for inst in info.instances:
        out[(centres >= inst.start) & (centres < inst.end), classes.index(inst.label)] = 1.0
    return out


class OracleTeacher(torch.nn.Module):
    """A frozen "teacher" whose test-time map is the ground truth of the batch's videos."""

    def __init__(self, videos: dict[str, VideoInfo], classes: list[str]):
        super().__init__()
        self.videos, self.classes = videos, list(classes)
        self.register_buffer("anchor", torch.zeros(1))  # gives the model a device

    def forward(self, batch: Batch) -> Batch:
        return batch

    def localization_scores(self, batch: Batch, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [torch.from_numpy(ground_truth_map(self.videos[n], self.classes, int(t)))
                for n, t in zip(batch.names, batch.lengths.tolist(), strict=True)]
        return pad_video_rows(rows, mask.shape[1]).to(mask.device), batch.labels


def train_seed(args: argparse.Namespace, seed: int) -> dict:
    run = args.out / f"seed{seed}"
    if (run / "report.json").is_file():
        return json.loads((run / "report.json").read_text(encoding="utf-8"))
    cfg = resolve_config(CONFIG_DIR / f"{args.config}.yaml", epochs=args.epochs, seed=seed, data_path=args.data,
                         overrides=[f"train.num_threads={args.threads}", "train.progress=false"])
    setup_logging(run)
    apply_process_settings(cfg, torch.device("cpu"))
    trainer = Trainer(cfg, run, device="cpu", plugins=[])
    data = trainer.data
    oracle = Teacher(OracleTeacher(data.source.annotations.videos, data.classes), (), False, "the ground truth")
    context = PluginContext(data.classes, data.snippets_per_second, len(data.train), cfg.train.epochs,
                            trainer.device, dict(cfg.postprocess), cfg.to_dict(), streams=dict(data.streams),
                            teacher=oracle)
    specs = cfg.plugin_specs()
    builders = {"gaufuse": build_gaufuse_plugin, "activation_distill": build_activation_distill_plugin}
    trainer.plugins = [builders[s["name"]](context, **{k: v for k, v in s.items() if k != "name"}) for s in specs]
    return trainer.fit()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--config", default="lgmd_student_rskp", help="a student config of configs/")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    args.data, args.out = args.data.resolve(), args.out.resolve()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    values = {s: float(train_seed(args, s)["test"]["averages"][METRIC]) for s in seeds}
    mean = float(np.mean(list(values.values())))
    std = float(np.std(list(values.values()), ddof=1)) if len(values) > 1 else None
    print(f"RGB student of an oracle teacher ({args.config}): test {METRIC} {mean:.2f}"
          + ("" if std is None else f" ± {std:.2f}") + f" over seeds {seeds}: {values}")
    write_json_atomic(args.out / "oracle.json", {"config": args.config, "metric": METRIC, "per_seed": values,
                                                 "mean": mean, "std": std}, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
