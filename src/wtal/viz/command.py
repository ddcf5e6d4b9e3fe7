"""`wtal plot`: timeline of one video of a trained run (ground truth, predictions, CAS, pseudo labels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wtal.errors import WtalInputError


def latest_pseudo_labels(checkpoint: Path, video: str) -> np.ndarray | None:
    """The newest pseudo-label generation of ``video`` stored by the GauFuse plug-in, if the run has one."""
    from wtal.engine.checkpoint import load_checkpoint

    for state in load_checkpoint(checkpoint).get("plugins", []):
        generations = state.get("generations") if isinstance(state, dict) else None
        if generations and video in generations[-1]["labels"]:
            return np.asarray(generations[-1]["labels"][video], dtype=np.float64)
    return None


def plot_run_video(run: str | Path, video: str, out: str | Path | None = None) -> Path:
    """Run the run's selected model on ``video`` and write its timeline PNG; returns the path."""
    from wtal.engine.evaluate import evaluate_split
    from wtal.engine.predict import load_run
    from wtal.viz.timeline import plot_timeline

    loaded = load_run(run)
    split = next((s for s in ("test", "val", "train")
                  if getattr(loaded.data, s) is not None and video in loaded.data.split(s).names), None)
    if split is None:
        raise WtalInputError(f"video {video!r} is not in this run's data", path=run, video=video,
                             fix="pass a video name of the run's training, validation or test split")
    dataset = loaded.data.split(split)
    one = type(dataset)(dataset.source, [video], dataset.modality)
    device = next(loaded.model.parameters()).device
    result = evaluate_split(loaded.model, one, postprocess=loaded.cfg.postprocess, tiou=loaded.cfg.eval.tiou,
                            device=device, batch_size=1, snippets_per_second=loaded.data.snippets_per_second,
                            max_snippets=loaded.cfg.data.max_batch_snippets)
    ann = dataset.source.annotations
    info = ann.videos[video]
    out = Path(out) if out is not None else Path(run) / "plots" / f"{video}.png"
    return plot_timeline(out, video, ann.classes, loaded.data.snippets_per_second, ann.ground_truth([video]),
                         result.detections, cas=result.cas[video],
                         pseudo=latest_pseudo_labels(loaded.checkpoint, video), duration=info.duration)


def plot_command(run: str, video: str, out: str | None = None) -> int:
    path = plot_run_video(run, video, out)
    print(f"wrote {path}")
    return 0
