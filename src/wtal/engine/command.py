"""``wtal train`` and ``wtal predict``: argument handling only; the work is in Trainer and predict."""

from __future__ import annotations

from pathlib import Path

from wtal.engine.config import load_run_config, resolve_config
from wtal.engine.distributed import init_distributed, resolve_device, shutdown_distributed
from wtal.engine.logging import get_logger, setup_logging
from wtal.errors import WtalInputError


def train_command(config: str, data: str, out: str, epochs: int | None = None, seed: int | None = None,
                  overrides: list[str] | None = None, resume: bool = False, device: str | None = None) -> int:
    run_dir = Path(out)
    torch_device = resolve_device(device)
    ctx = init_distributed(torch_device)
    try:
        setup_logging(run_dir, enabled=ctx.is_main)
        log = get_logger()
        if resume:
            if not (run_dir / "checkpoints" / "last.pt").is_file():
                raise WtalInputError("nothing to resume: the run folder has no checkpoints/last.pt",
                                     path=run_dir, fix="start the run without --resume")
            cfg = load_run_config(run_dir / "config.yaml")
            requested = resolve_config(config, overrides=overrides or [], epochs=epochs, seed=seed,
                                       data_path=data)
            if requested.to_dict() != cfg.to_dict():
                log.warning("--resume continues with the run's own config.yaml; the --config/--set/--epochs/"
                            "--seed given now differ from it and are ignored (--data is used)")
            cfg.data.path = str(data)
        else:
            if (run_dir / "checkpoints" / "last.pt").is_file():
                raise WtalInputError("the run folder already holds a training run", path=run_dir,
                                     fix="add --resume to continue it, or choose another --out folder")
            cfg = resolve_config(config, overrides=overrides or [], epochs=epochs, seed=seed, data_path=data)
        from wtal.engine.trainer import Trainer

        Trainer(cfg, run_dir, device=torch_device, dist=ctx).fit(resume=resume)
    finally:
        shutdown_distributed(ctx)
    return 0


def predict_command(run: str, out: str, split: str = "test", cas: str | None = None, device: str | None = None
                    ) -> int:
    from wtal.engine.predict import load_run, predict_split
    from wtal.evaluation.results import write_results

    setup_logging(None)
    log = get_logger()
    loaded = load_run(run, resolve_device(device))
    result = predict_split(loaded, split)
    write_results(out, result.detections)
    log.info("%d detections on %d %s videos (%s) -> %s", len(result.detections), len(result.cas), split,
             loaded.checkpoint.name, out)
    if cas is not None:
        from wtal.localize.casfile import write_cas_file

        write_cas_file(cas, result.cas, loaded.data.classes, loaded.data.snippets_per_second, result.scores)
        log.info("CAS file -> %s", cas)
    if result.report is not None:
        log.info("%s detection mAP:\n%s", split, result.report.table())
    return 0
