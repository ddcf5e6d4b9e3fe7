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
- ``frozen_roles(epoch) -> frozenset[str]`` (optional): which of ``"model"`` (the run's model) and
  ``"teacher"`` (a jointly trained teacher) do not learn in epoch ``epoch``. The trainer runs a frozen one
  in eval mode under ``torch.no_grad()`` (no dropout, no state update such as RSKP's memory, no gradient,
  so the optimiser leaves its weights and moments alone: Adam skips parameters without a gradient) and
  adds none of its losses; plug-ins still receive its output (``out`` / ``teacher_out``) to label from.
  ``on_epoch_end`` still runs for both. The run freezes the union over its plug-ins; freezing everything
  that trains is an error. Alternate training (``vlp_alternate``) freezes one branch per step.

The run's plug-ins are ``cfg.pseudo`` (the GauFuse shorthand) followed by ``cfg.plugins``, each a mapping
``{name: ..., <params>}``. Names map to ``"module:factory"`` strings below, imported only when used; a
factory is called as ``factory(context, **params)`` with a :class:`PluginContext`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from wtal.data.batch import Batch
from wtal.errors import WtalInputError
from wtal.importing import resolve

PLUGIN_FACTORIES: dict[str, str] = {
    "gaufuse": "wtal.pseudo.plugin:build_gaufuse_plugin",
    "vlp_alternate": "wtal.pseudo.alternate:build_alternate_plugin",
    "activation_distill": "wtal.pseudo.activation:build_activation_distill_plugin",
    "boundary_distill": "wtal.pseudo.boundary:build_boundary_distill_plugin",
}
ROLES = ("model", "teacher")


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


def frozen_roles(plugins: Iterable[Any], epoch: int, *, has_joint_teacher: bool) -> frozenset[str]:
    """The roles the plug-ins freeze in epoch ``epoch`` (see the module docstring), checked."""
    roles: set[str] = set()
    for plugin in plugins:
        hook = getattr(plugin, "frozen_roles", None)
        if hook is not None:
            roles |= set(hook(epoch))
    unknown = sorted(roles - set(ROLES))
    if unknown:
        raise WtalInputError(f"a plug-in froze unknown role(s) {unknown}", fix=f"freeze only {list(ROLES)}")
    trained = {"model", "teacher"} if has_joint_teacher else {"model"}
    if "teacher" in roles and not has_joint_teacher:
        raise WtalInputError("a plug-in froze the teacher but the run has no jointly trained teacher",
                             fix="add teacher: {model: ...} to the config, or remove the plug-in")
    if trained <= roles:
        raise WtalInputError(f"the plug-ins freeze everything that trains in epoch {epoch + 1}",
                             fix="let at least one of the model and the teacher learn in every epoch")
    return frozenset(roles)


def _factory(name: str) -> Callable[..., TrainerPlugin]:
    return resolve(name, PLUGIN_FACTORIES, what="plug-in")
