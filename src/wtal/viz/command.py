"""`wtal plot`: timeline of one video of a trained detection run (ground truth, predictions, CAS, pseudo labels),
or of one query of a grounding run (feature and query-conditioned activation, ground truth, top proposals)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wtal.errors import WtalInputError


def latest_pseudo_labels(loaded, video: str) -> tuple[int, np.ndarray] | None:
    """The newest pseudo-label generation of ``video`` in the run's last checkpoint (the generations made so
    far, even when the selected checkpoint precedes the last one), read through the run's plug-ins:
    ``(epoch index of the generation, (T, K) labels)``, or None when the run has none."""
    from wtal.engine.checkpoint import load_checkpoint
    from wtal.engine.plugins import PluginContext, build_plugins

    specs = loaded.cfg.plugin_specs()
    last = loaded.checkpoint.parent / "last.pt"
    if not specs or not last.is_file():
        return None
    context = PluginContext(loaded.data.classes, loaded.data.snippets_per_second, len(loaded.data.train),
                            loaded.cfg.train.epochs, next(loaded.model.parameters()).device,
                            dict(loaded.cfg.postprocess), loaded.cfg.to_dict())
    plugins = build_plugins(specs, context)
    for plugin, state in zip(plugins, load_checkpoint(last).get("plugins", []), strict=False):
        plugin.load_state_dict(state)
        found = plugin.latest_labels(video) if hasattr(plugin, "latest_labels") else None
        if found is not None:
            return found
    return None


def plot_run_video(run: str | Path, video: str, out: str | Path | None = None, data: str | Path | None = None
                   ) -> Path:
    """Run the run's selected model on ``video`` and write its timeline PNG; returns the path."""
    from wtal.data.dataset import VideoDataset
    from wtal.engine.predict import load_run
    from wtal.viz.timeline import plot_timeline

    loaded = load_run(run, data_path=data)
    if loaded.task.name != "detection":
        raise WtalInputError(f"`wtal plot --video` draws action-localization runs; this run is {loaded.task.name}",
                             path=run, fix="plot a detection run")
    split = next((s for s in ("test", "val", "train")
                  if getattr(loaded.data, s) is not None and video in loaded.data.split(s).names), None)
    if split is None:
        raise WtalInputError(f"video {video!r} is not in this run's data", path=run, video=video,
                             fix="pass a video name of the run's training, validation or test split")
    dataset = loaded.data.split(split)
    one = VideoDataset(dataset.source, [video], dataset.streams)
    device = next(loaded.model.parameters()).device
    result = loaded.task.evaluate(loaded.model, one, loaded.cfg, device)
    ann = dataset.source.annotations
    pseudo = latest_pseudo_labels(loaded, video)
    out = Path(out) if out is not None else Path(run) / "plots" / f"{video}.png"
    return plot_timeline(out, video, ann.classes, loaded.data.snippets_per_second, ann.ground_truth([video]),
                         result.detections, cas=result.cas[video], pseudo=None if pseudo is None else pseudo[1],
                         pseudo_label=None if pseudo is None else f"pseudo labels (made at epoch {pseudo[0] + 1})",
                         duration=ann.videos[video].duration)


def plot_run_query(run: str | Path, query: int, split: str = "test", out: str | Path | None = None,
                   data: str | Path | None = None) -> Path:
    """Run a grounding run's selected model on query ``query`` (its id: the position in its annotation file) of
    ``split`` and write its PNG; returns the path."""
    import torch

    from wtal.engine.predict import load_run
    from wtal.tasks.grounding import QueryDataset
    from wtal.viz.grounding import plot_grounding

    loaded = load_run(run, data_path=data)
    if loaded.task.name != "grounding":
        raise WtalInputError(f"`wtal plot --query` draws sentence-grounding runs; this run is {loaded.task.name}",
                             path=run, fix="pass --video VIDEO for an action-localization run")
    dataset = loaded.data.split(split)
    position = next((i for i, q in enumerate(dataset.queries) if q.id == query), None)
    if position is None:
        raise WtalInputError(f"query {query} is not in the {split} split of this run", path=run,
                             fix=f"pass the id (position in its annotation file) of a query of the {split} split, "
                                 "or choose the split with --split")
    q = dataset.queries[position]
    one = QueryDataset(dataset.queries.select(lambda x: x.id == query), _rows(dataset.encoded, position),
                       dataset.clips)
    device = next(loaded.model.parameters()).device
    batch = one.collate([one[0]]).to(device)
    model = loaded.model
    with torch.no_grad():
        output = model(batch)
        segments, scores = model.ranked_segments(output)
        activation = (model.snippet_activation(output, batch)[0].cpu().numpy()
                      if hasattr(model, "snippet_activation") else None)
    out = Path(out) if out is not None else Path(run) / "plots" / f"{split}_query{query}.png"
    return plot_grounding(out, f"{q.video}, {split} query {query}", q.sentence, q.duration, one.clips(q.video),
                          segments[0] * q.duration, scores[0], (q.start, q.end) if q.has_moment else None, activation)


def _rows(encoded, position: int):
    from wtal.data.text import EncodedSentences

    keep = slice(position, position + 1)
    return EncodedSentences(encoded.ids[keep], encoded.lengths[keep], encoded.weights[keep], 0, 0)


def plot_command(run: str, video: str | None = None, query: int | None = None, split: str | None = None,
                 out: str | None = None, data: str | None = None) -> int:
    if (video is None) == (query is None):
        raise WtalInputError("give exactly one of --video (an action-localization run) and --query (a grounding "
                             "run)", fix="e.g. wtal plot --run RUN --query 0")
    if query is not None:
        path = plot_run_query(run, query, split or "test", out, data)
    else:
        if split is not None:
            raise WtalInputError("--split goes with --query", fix="drop --split: the video is found in any split")
        path = plot_run_video(run, video, out, data)
    print(f"wrote {path}")
    return 0
