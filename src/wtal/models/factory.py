"""Plain typed factory: a model by config name (no import-side-effect registry)."""

from __future__ import annotations

from torch import nn

from wtal.errors import WtalInputError
from wtal.models.base import ModelContext
from wtal.models.basnet import BaSNet
from wtal.models.facnet import FACNet
from wtal.models.mil import MILModel
from wtal.models.mutual import MutualLearning
from wtal.models.recipes import parse_hyperparameters
from wtal.models.rskp import RSKP
from wtal.models.stpn import STPN
from wtal.models.wum import WUM

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "rskp": RSKP,
    "stpn": STPN,
    "basnet": BaSNet,
    "wum": WUM,
    "facnet": FACNet,
    "mil": MILModel,
    "mutual": MutualLearning,
}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_CLASSES)


def model_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``; an unknown name is a user error listing the known ones."""
    key = name.strip().lower()
    if key not in MODEL_CLASSES:
        raise WtalInputError(f"unknown model name '{name}'", fix=f"use one of: {', '.join(MODEL_NAMES)}")
    return MODEL_CLASSES[key]


def check_hyperparameters(name: str, params: dict) -> None:
    """Raise :class:`WtalInputError` for an unknown model, an unknown hyperparameter or a value out of range
    (before any data is read or model built). A composite model (``mutual``) checks its own keys and its base
    model's with its ``check_params``."""
    cls = model_class(name)
    checker = getattr(cls, "check_params", None)
    if checker is not None:
        checker(params)
    else:
        parse_hyperparameters(cls.hyperparameters, name, params)


def build_model(name: str, context: ModelContext, **params) -> nn.Module:
    """``model_class(name)(context, **params)``; ``params`` are the model's hyperparameters."""
    if not context.streams or any(int(w) < 1 for w in context.streams.values()) or context.num_classes < 1:
        raise WtalInputError(f"model '{name}' needs at least one stream of width >= 1 and one class, got "
                             f"streams {dict(context.streams)} and {context.num_classes} classes",
                             fix="check the feature files, model.streams and the class list")
    cls = model_class(name)
    try:
        return cls(context, **params)
    except TypeError as exc:  # e.g. an unknown keyword of a model without a hyperparameter dataclass
        raise WtalInputError(f"bad hyperparameters for model '{name}': {exc}",
                             fix="see the model's documented keyword arguments") from exc
