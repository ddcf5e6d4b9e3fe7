"""``wtal train`` and ``wtal predict``: argument handling only; the work is in Trainer and predict."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from wtal.engine.allocator import keep_freed_memory
from wtal.engine.config import RunConfig, load_run_config, resolve_config
from wtal.engine.distributed import init_distributed, launched_rank, resolve_device, shutdown_distributed
from wtal.engine.logging import get_logger, log_failure_to_file, setup_logging
from wtal.engine.runs import RunLock
from wtal.errors import WtalInputError

if TYPE_CHECKING:
    import torch


def apply_process_settings(cfg: RunConfig, device: torch.device) -> None:
    """Process-wide settings a training command applies (the library never does this on its own): torch's
    intra-op threads (``train.num_threads``; oversubscribed cores make torch much slower) and, on CPU with
    glibc, heap-only allocations without trimming (``train.keep_freed_memory``)."""
    import torch

    if cfg.train.num_threads is not None:
        torch.set_num_threads(cfg.train.num_threads)
    if cfg.train.keep_freed_memory and device.type == "cpu" and keep_freed_memory():
        get_logger().debug("glibc malloc: heap only, no trimming (train.keep_freed_memory)")


def train_command(config: str, data: str, out: str, epochs: int | None = None, seed: int | None = None,
                  overrides: list[str] | None = None, resume: bool = False, device: str | None = None) -> int:
    """``wtal train``: one process owns the run folder for the run's life (rank 0 of a multi-process run);
    an error before or during training is also written to ``RUN/train.log``."""
    run_dir = Path(out)
    main = launched_rank() == 0
    with RunLock(run_dir) if main else contextlib.nullcontext():
        setup_logging(run_dir, enabled=main)
        try:
            cfg = _run_config(run_dir, config, data, epochs, seed, overrides or [], resume)
            torch_device = resolve_device(device)
            ctx = init_distributed(torch_device, cfg.train.collective_timeout_s)
            finished = False
            try:
                from wtal.engine.trainer import Trainer

                apply_process_settings(cfg, torch_device)
                Trainer(cfg, run_dir, device=torch_device, dist=ctx).fit(resume=resume)
                finished = True
            finally:
                shutdown_distributed(ctx, finished=finished)
        except WtalInputError as exc:
            log_failure_to_file(f"error: {exc}")
            raise
    return 0


def _run_config(run_dir: Path, config: str, data: str, epochs: int | None, seed: int | None,
                overrides: list[str], resume: bool) -> RunConfig:
    """The config of a new run, or a resumed run's own (``--data`` may point to the moved data)."""
    has_checkpoint = (run_dir / "checkpoints" / "last.pt").is_file()
    if not resume:
        if has_checkpoint:
            raise WtalInputError("the run folder already holds a training run", path=run_dir,
                                 fix="add --resume to continue it, or choose another --out folder")
        return resolve_config(config, overrides=overrides, epochs=epochs, seed=seed, data_path=data)
    if not has_checkpoint:
        raise WtalInputError("nothing to resume: the run folder has no checkpoints/last.pt", path=run_dir,
                             fix="start the run without --resume")
    cfg = load_run_config(run_dir / "config.yaml")
    requested = resolve_config(config, overrides=overrides, epochs=epochs, seed=seed, data_path=data)
    if requested.to_dict() != cfg.to_dict():
        get_logger().warning("--resume continues with the run's own config.yaml; the --config/--set/--epochs/"
                             "--seed given now differ from it and are ignored (--data is used)")
    cfg.data.path = str(Path(data).resolve())
    return cfg


def predict_command(run: str, out: str, split: str = "test", cas: str | None = None, device: str | None = None,
                    data: str | None = None, teacher_weight: float | None = None) -> int:
    from wtal.engine.predict import load_run, predict_split

    setup_logging(None)
    log = get_logger()
    loaded = load_run(run, resolve_device(device), data_path=data, teacher_weight=teacher_weight)
    result = predict_split(loaded, split)
    path = result.write_predictions(out)
    log.info("predictions of %d %s samples (%s%s, %s) -> %s", len(loaded.data.split(split)), split,
             "+".join(loaded.cfg.model.streams),
             f" fused with the teacher, weight {teacher_weight:g}" if teacher_weight is not None else "",
             loaded.checkpoint.name, path)
    if cas is not None:
        if not hasattr(result, "write_cas"):
            raise WtalInputError(f"--cas: the {loaded.task.name} task has no class activation sequences",
                                 fix="drop --cas")
        log.info("CAS file -> %s", result.write_cas(cas))
    log.info("%s metrics:\n%s", split, result.report_text())
    return 0
