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
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the script executes
    spec.loader.exec_module(module)
    return module


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


def grouped_by_video(rows: list[tuple]) -> list[tuple]:
    """Rows in result-file order: videos by first appearance (a JSON object), each video's rows in order."""
    results: dict = {}
    for r in rows:
        results.setdefault(r[0], []).append(r)
    return [r for video_rows in results.values() for r in video_rows]
