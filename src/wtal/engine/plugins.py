"""Trainer plug-ins (e.g. GauFuse pseudo labels): the hook points and the factory over the run's plug-ins.

A plug-in is any object with these methods:

- ``on_epoch_start(epoch, model, train_batches)``: called before epoch ``epoch`` trains; ``train_batches()``
  iterates the whole training set in a fixed order (batches of ``data.eval_batch_size`` samples on the
  training device, ``Batch.index`` = position in the training set).
- ``loss(model, out, batch, epoch, teacher_out=None) -> (B,) tensor | None``: an extra per-sample loss,
  added to the model's per-sample ``total`` before the batch sum (so it follows the same accumulation
  semantics); ``teacher_out`` is the jointly trained teacher's output on the same batch, if the run has one.
- ``state_dict() -> dict`` / ``load_state_dict(state)``: saved in and restored from checkpoints (plain
  tensors and containers only). Other modules read a plug-in's state only through the plug-in.

The run's plug-ins are ``cfg.pseudo`` (the GauFuse shorthand) followed by ``cfg.plugins``, each a mapping
``{name: ..., <params>}``. Names map to ``"module:factory"`` strings below, imported only when used; a
factory is called as ``factory(context, **params)`` with a :class:`PluginContext`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from wtal.data.batch import Batch
from wtal.errors import WtalInputError

PLUGIN_FACTORIES: dict[str, str] = {
    "gaufuse": "wtal.pseudo.plugin:build_gaufuse_plugin",
    "activation_distill": "wtal.pseudo.activation:build_activation_distill_plugin",
}


@runtime_checkable
class TrainerPlugin(Protocol):
    def on_epoch_start(self, epoch: int, model: torch.nn.Module, train_batches: Callable[[], Iterable[Batch]]
                       ) -> None: ...

    def loss(self, model: torch.nn.Module, out: Any, batch: Batch, epoch: int, teacher_out: Any = None
             ) -> torch.Tensor | None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class PluginContext:
    """What a plug-in factory may need to know about the run."""

    classes: list[str]
    snippets_per_second: float
    num_train_videos: int
    epochs: int
    device: torch.device
    postprocess: dict[str, Any]
    config: dict[str, Any]  # the whole resolved run config
    streams: dict[str, int] | None = None  # the streams the run loads -> widths
    teacher: Any = None  # wtal.engine.teacher.Teacher, or None
    build_model: Callable[[Any], torch.nn.Module] | None = None  # ModelConfig -> a model for the run's data


def build_plugins(specs: list[dict[str, Any]] | dict[str, Any] | None, context: PluginContext
                  ) -> list[TrainerPlugin]:
    """Plug-ins described by a list of mappings (``[]`` for ``None``)."""
    if specs is None:
        return []
    specs = specs if isinstance(specs, list) else [specs]
    plugins = []
    for item in specs:
        if not isinstance(item, dict) or "name" not in item:
            raise WtalInputError(f"plug-in {item!r} is not a mapping with a 'name'",
                                 fix=f"write {{name: one of {sorted(PLUGIN_FACTORIES)}, ...}}")
        params = {k: v for k, v in item.items() if k != "name"}
        plugins.append(_factory(item["name"])(context, **params))
    return plugins


def _factory(name: str) -> Callable[..., TrainerPlugin]:
    target = PLUGIN_FACTORIES.get(name, name if name.count(":") == 1 else None)
    if target is None:
        raise WtalInputError(f"unknown plug-in {name!r}",
                             fix=f"use one of {sorted(PLUGIN_FACTORIES)} or a 'module:factory' string")
    module_name, func_name = target.split(":")
    try:
        return getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise WtalInputError(f"plug-in {name!r} is not available ({exc})",
                             fix="remove it from the config, or install a wtal version that provides it") from exc
