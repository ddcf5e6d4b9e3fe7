"""`wtal demo`: synthetic THUMOS-like data -> train RSKP -> localize -> evaluate -> plot, on CPU in minutes.

Everything runs through the same library calls as the individual commands: ``wtal.data.synthetic`` writes a
W-TALC bundle, :class:`wtal.engine.trainer.Trainer` trains with model selection on a validation split carved
from the training videos and evaluates the selected checkpoint on the test split (official ActivityNet mAP
at tIoU 0.1:0.7), and ``wtal.viz`` draws one test video.
"""

from __future__ import annotations

import time
from pathlib import Path

from wtal.errors import WtalInputError

DEMO_VIDEOS = 412  # THUMOS14 size: about 2-3 minutes on 2 CPU cores
DEMO_DIM = 256


def demo_config_path() -> Path:
    """The shipped demo config (RSKP sized for CPU, see the comments in the file)."""
    from wtal.engine.config import shipped_config

    return shipped_config("demo_rskp")


def pick_video(run: Path) -> str:
    """The test video whose best detection scores highest: a readable example for the plot."""
    from wtal.evaluation.results import read_results

    pred = read_results(run / "predictions" / "test.json")
    if not len(pred):
        raise WtalInputError("the demo model made no detection on the test split", path=run,
                             fix="train longer (--epochs) or check the run's train.log")
    return str(pred.video[int(pred.score.argmax())])


def run_demo(out: str | Path = "wtal-demo", seed: int = 0, epochs: int | None = None,
             videos: int = DEMO_VIDEOS, dim: int = DEMO_DIM) -> dict:
    import torch

    from wtal.data.synthetic import SynthConfig, write_synthetic
    from wtal.engine.command import apply_process_settings
    from wtal.engine.config import resolve_config
    from wtal.engine.logging import setup_logging
    from wtal.engine.trainer import Trainer
    from wtal.viz.command import plot_run_video

    out = Path(out)
    run = out / "run"
    if (run / "checkpoints" / "last.pt").exists():
        raise WtalInputError("the demo folder already holds a run", path=out,
                             fix="pass another --out folder or delete this one")
    t0 = time.perf_counter()
    print(f"[1/4] synthesizing {videos} THUMOS-like videos ({dim}-d features) -> {out / 'data'}")
    paths = write_synthetic(out / "data", SynthConfig(num_videos=videos, dim=dim, seed=seed))
    cfg = resolve_config(demo_config_path(), epochs=epochs, seed=seed, data_path=paths["wtalc"].parent)
    print(f"[2/4] training {cfg.model.name} for {cfg.train.epochs} epochs on CPU -> {run}")
    setup_logging(run, enabled=True)
    apply_process_settings(cfg, torch.device("cpu"))
    report = Trainer(cfg, run, device="cpu").fit()
    print("[3/4] test-split detections written to", run / "predictions" / "test.json")
    video = pick_video(run)
    png = plot_run_video(run, video, out / f"timeline_{video}.png")
    print(f"[4/4] timeline plot of {video} -> {png}")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return {"report": report, "plot": png, "run": run, "data": paths}


def demo_command(out: str = "wtal-demo", seed: int = 0, epochs: int | None = None) -> int:
    run_demo(out, seed, epochs)
    return 0
