"""Helpers shared by several test modules (import as ``from helpers import ...``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# Small layer sizes that keep the model tests fast.
SMALL_MODELS = {"basnet": {"hidden_dim": 24, "filter_hidden": 16}, "wum": {"hidden_dim": 24},
                "stpn": {"attention_hidden": 16}}


def load_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/<name>.py`` as a module (its straightforward reference implementations)."""
    if str(BENCHMARKS) not in sys.path:  # the scripts import their shared modules (experiments.py)
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the script executes
    spec.loader.exec_module(module)
    return module


def run_benchmark_main(module: ModuleType, argv: list[str]) -> tuple[int, str]:
    """``module.main(argv)`` with stdout captured and the ``wtal`` logger left as it was (prediction
    reconfigures it)."""
    import contextlib
    import io
    import logging

    logger = logging.getLogger("wtal")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = module.main(argv)
    finally:
        for h in list(logger.handlers):
            logger.removeHandler(h)
        for h in saved[0]:
            logger.addHandler(h)
        logger.propagate, logger.level = saved[1], saved[2]
    return code, out.getvalue()


def voc_interpolated_ap(tp: list[int], npos: int) -> float:
    """Area under the precision envelope (VOC 2011), summed where recall changes."""
    prec, rec, hits = [], [], 0
    for k, t in enumerate(tp, start=1):
        hits += t
        prec.append(hits / k)
        rec.append(hits / npos)
    mprec, mrec = [0.0, *prec, 0.0], [0.0, *rec, 1.0]
    for i in range(len(mprec) - 2, -1, -1):
        mprec[i] = max(mprec[i], mprec[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mprec[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def joint_context(dim: int, num_classes: int, streams: tuple[str, ...] = ("rgb", "flow")):
    """A model context whose streams split a ``dim``-wide joint feature evenly (RGB first half, flow second)."""
    from wtal.models.base import ModelContext

    if len(streams) == 1:
        widths = {streams[0]: dim}
    else:
        widths = {streams[0]: dim // 2, streams[1]: dim - dim // 2}
    return ModelContext(widths, tuple(f"class{i}" for i in range(num_classes)))


def model_context(name: str, dim: int, num_classes: int):
    """The context the model-wide tests build model ``name`` from: :func:`joint_context`, except for the VLP
    branch, which reads one stream of image embeddings (here the RGB half of a joint batch) in the space of
    the class text embeddings it needs."""
    import numpy as np

    from wtal.models.base import ModelContext

    context = joint_context(dim, num_classes)
    if name != "vlp":
        return context
    text = np.random.default_rng(1).normal(size=(num_classes, dim // 2)).astype(np.float32)
    return ModelContext({"rgb": dim // 2}, context.classes, class_text=text)


def split_joint(x, streams: tuple[str, ...] = ("rgb", "flow")) -> dict:
    """A joint ``(..., D)`` array or tensor as named streams (halves, RGB first)."""
    if len(streams) == 1:
        return {streams[0]: x}
    half = x.shape[-1] // 2
    return {streams[0]: x[..., :half], streams[1]: x[..., half:]}


def joint_batch(features, mask, labels=None, streams: tuple[str, ...] = ("rgb", "flow")):
    """A Batch from a joint ``(B, T, D)`` tensor (split into streams), a mask and optional labels."""
    import torch

    from wtal.data.batch import Batch

    b = features.shape[0]
    return Batch(split_joint(features, streams), mask, labels, [f"v{i}" for i in range(b)],
                 torch.arange(b, dtype=torch.int64))


def collate_joint(items, streams: tuple[str, ...] = ("rgb", "flow")):
    """Collate ``(features (T, D), labels, name, index)`` items (joint features) into a Batch."""
    import numpy as np

    from wtal.data.batch import Sample, collate_samples

    samples = [Sample(split_joint(np.asarray(f, dtype=np.float32), streams),
                      None if y is None else np.asarray(y, dtype=np.float32), n, i) for f, y, n, i in items]
    return collate_samples(samples)


def batch_features(batch, streams: tuple[str, ...] = ("rgb", "flow")):
    """The joint ``(B, T, D)`` features of a batch (its streams concatenated)."""
    import torch

    return torch.cat([batch.inputs[s] for s in streams], dim=-1)


def as_double(batch):
    """The batch with float64 inputs and labels (for float64 equivalence checks)."""
    import dataclasses

    return dataclasses.replace(batch, inputs={k: v.double() for k, v in batch.inputs.items()},
                               labels=None if batch.labels is None else batch.labels.double())


def fill_label_store(model, lengths, seed: int = 0) -> None:
    """Random stored snippet labels (0/1) and confidences for training positions ``0 .. len(lengths) - 1``
    of an MMSD model's label store."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    store = model.label_store
    store.allocate(torch.arange(len(lengths)), torch.as_tensor(lengths))
    store.labels.copy_(torch.randint(0, 2, store.labels.shape, generator=gen).to(store.labels.dtype))
    store.confidence.copy_(torch.rand(store.confidence.shape, generator=gen, dtype=store.confidence.dtype))


def grouped_by_video(rows: list[tuple]) -> list[tuple]:
    """Rows in result-file order: videos by first appearance (a JSON object), each video's rows in order."""
    results: dict = {}
    for r in rows:
        results.setdefault(r[0], []).append(r)
    return [r for video_rows in results.values() for r in video_rows]
