"""The task protocol, the result protocol and the factory by name (``module:function`` strings, imported
only when used: no registry filled on import)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from wtal.importing import is_reference, resolve

if TYPE_CHECKING:
    from wtal.data.rundata import RunData
    from wtal.engine.config import RunConfig
    from wtal.models.base import ModelContext

TASK_FACTORIES: dict[str, str] = {
    "detection": "wtal.tasks.detection:DetectionTask",
    "grounding": "wtal.tasks.grounding:GroundingTask",
}


@runtime_checkable
class TaskResult(Protocol):
    """One evaluation of a model on one split."""

    @property
    def selection_metric(self) -> float | None:
        """The number model selection maximises (None when the split has no ground truth)."""
        ...

    def summary(self) -> dict[str, Any]:
        """JSON-able metrics (``metrics.jsonl`` and ``report.json``)."""
        ...

    def headline(self) -> str:
        """A few words for the epoch's log line, e.g. ``mAP 31.20 cmAP 85.00``."""
        ...

    def report_text(self) -> str:
        """The printable metric table."""
        ...

    def write_predictions(self, path: str | Path) -> Path:
        """Write the predictions (atomically) in the task's result format."""
        ...


@runtime_checkable
class Task(Protocol):
    name: str

    def prepare_data(self, cfg: RunConfig, streams: Sequence[str], path: str | Path | None = None) -> RunData:
        """Open the data at ``path`` (default ``cfg.data.path``) with the given streams and make the splits.

        A task that fits facts on the training data (a vocabulary) returns them in ``RunData.learned``; when a
        trained run is loaded, they come back as the keyword ``learned`` (only to tasks that returned some), and
        the task uses them instead of fitting again."""
        ...

    def model_context(self, data: RunData, streams: Sequence[str]) -> ModelContext:
        """What a model reading ``streams`` is built from."""
        ...

    def evaluate(self, model: torch.nn.Module, dataset: Any, cfg: RunConfig, device: torch.device) -> TaskResult:
        """Inference over ``dataset``, decoding and the task's metric."""
        ...


def is_task_name(name: str) -> bool:
    """A shipped task name, or a ``module:factory`` string naming a task defined elsewhere."""
    return name in TASK_FACTORIES or is_reference(name)


def build_task(name: str) -> Task:
    """The task called ``name`` (``task:`` in the config): a shipped one, or ``module:factory`` (a class or
    function returning a task, importable from ``sys.path``)."""
    factory: Callable[[], Task] = resolve(name, TASK_FACTORIES, what="task")
    return factory()
