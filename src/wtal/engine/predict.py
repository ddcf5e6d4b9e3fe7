"""Prediction with a trained run: its stored config and data, the selected checkpoint, any split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from wtal.engine.checkpoint import load_checkpoint
from wtal.engine.config import RunConfig, load_run_config
from wtal.engine.distributed import resolve_device
from wtal.engine.evaluate import SplitResult, evaluate_split
from wtal.engine.rundata import RunData, prepare_data
from wtal.engine.trainer import build_model
from wtal.errors import WtalInputError


@dataclass
class LoadedRun:
    cfg: RunConfig
    data: RunData
    model: torch.nn.Module
    checkpoint: Path


def selected_checkpoint(run: Path, cfg: RunConfig) -> Path:
    """``best.pt`` when the run selects by validation/test and has one, else ``last.pt``."""
    best, last = run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt"
    if cfg.train.select != "last" and best.is_file():
        return best
    if last.is_file():
        return last
    raise WtalInputError("the run folder has no checkpoint", path=run / "checkpoints",
                         fix="pass the --out folder of a finished (or interrupted) `wtal train`")


def load_run(run: str | Path, device: torch.device | str | None = None, data_path: str | Path | None = None
             ) -> LoadedRun:
    run = Path(run)
    config_path = run / "config.yaml"
    if not config_path.is_file():
        raise WtalInputError("not a run folder (no config.yaml)", path=run,
                             fix="pass the --out folder of `wtal train`")
    cfg = load_run_config(config_path)
    device = torch.device(device) if device is not None else resolve_device(None)
    data = prepare_data(cfg, data_path)
    model = build_model(cfg, data.input_dim, len(data.classes)).to(device)
    checkpoint = selected_checkpoint(run, cfg)
    model.load_state_dict(load_checkpoint(checkpoint)["model"])
    model.eval()
    return LoadedRun(cfg, data, model, checkpoint)


def predict_split(loaded: LoadedRun, split: str, device: torch.device | str | None = None) -> SplitResult:
    device = next(loaded.model.parameters()).device if device is None else torch.device(device)
    return evaluate_split(loaded.model, loaded.data.split(split), postprocess=loaded.cfg.postprocess,
                          tiou=loaded.cfg.eval.tiou, device=device,
                          batch_size=loaded.cfg.data.eval_batch_size,
                          snippets_per_second=loaded.data.snippets_per_second,
                          max_snippets=loaded.cfg.data.max_batch_snippets)
