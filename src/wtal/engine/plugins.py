"""Trainer plug-ins (e.g. GauFuse pseudo labels): the hook points and the factory over ``cfg.pseudo``.

A plug-in is any object with these four methods:

- ``on_epoch_start(epoch, model, train_batches)``: called before epoch ``epoch`` trains; ``train_batches()``
  iterates the whole training set in a fixed order (batches of ``data.eval_batch_size`` videos on the
  training device, ``Batch.index`` = position in the training set).
- ``loss(model, out, batch, epoch) -> (B,) tensor | None``: an extra per-video loss, added to the model's
  per-video ``total`` before the batch sum (so it follows the same accumulation semantics).
- ``state_dict() -> dict`` / ``load_state_dict(state)``: saved in and restored from checkpoints (plain
  tensors and containers only).

``cfg.pseudo`` is ``null`` (no plug-in), one mapping ``{name: ..., <params>}`` or a list of them. Names map
to ``"module:factory"`` strings below, imported only when used; a factory is called as
``factory(context, **params)`` with a :class:`PluginContext`.
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
}


@runtime_checkable
class TrainerPlugin(Protocol):
    def on_epoch_start(self, epoch: int, model: torch.nn.Module, train_batches: Callable[[], Iterable[Batch]]
                       ) -> None: ...

    def loss(self, model: torch.nn.Module, out: Any, batch: Batch, epoch: int) -> torch.Tensor | None: ...

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


def build_plugins(spec: dict[str, Any] | list[dict[str, Any]] | None, context: PluginContext
                  ) -> list[TrainerPlugin]:
    """Plug-ins described by ``cfg.pseudo`` (``[]`` for ``null``)."""
    if spec is None:
        return []
    specs = spec if isinstance(spec, list) else [spec]
    plugins = []
    for item in specs:
        if not isinstance(item, dict) or "name" not in item:
            raise WtalInputError(f"pseudo: {item!r} is not a plug-in mapping with a 'name'",
                                 fix=f"write pseudo: {{name: one of {sorted(PLUGIN_FACTORIES)}, ...}} "
                                     "or null")
        params = {k: v for k, v in item.items() if k != "name"}
        plugins.append(_factory(item["name"])(context, **params))
    return plugins


def _factory(name: str) -> Callable[..., TrainerPlugin]:
    target = PLUGIN_FACTORIES.get(name)
    if target is None:
        raise WtalInputError(f"unknown pseudo-label plug-in {name!r}",
                             fix=f"use one of {sorted(PLUGIN_FACTORIES)}")
    module_name, func_name = target.split(":")
    try:
        return getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise WtalInputError(f"pseudo-label plug-in {name!r} is not available ({exc})",
                             fix="set pseudo: null, or install a wtal version that provides it") from exc
