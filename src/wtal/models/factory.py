"""Plain typed factory: a model by config name (no import-side-effect registry)."""

from __future__ import annotations

from torch import nn

from wtal.errors import WtalInputError
from wtal.models.basnet import BaSNet, BaSNetHyperparameters
from wtal.models.facnet import FACNet, FACNetHyperparameters
from wtal.models.mil import MILHyperparameters, MILModel
from wtal.models.recipes import PostprocessDefaults, parse_hyperparameters
from wtal.models.rskp import RSKP, RSKPHyperparameters
from wtal.models.stpn import STPN, STPNHyperparameters
from wtal.models.wum import WUM, WUMHyperparameters

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "rskp": RSKP,
    "stpn": STPN,
    "basnet": BaSNet,
    "wum": WUM,
    "facnet": FACNet,
    "mil": MILModel,
}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_CLASSES)
# each model's hyperparameter dataclass, so a config is checked before any data is read or model built
HYPERPARAMETERS: dict[str, type] = {
    "rskp": RSKPHyperparameters,
    "stpn": STPNHyperparameters,
    "basnet": BaSNetHyperparameters,
    "wum": WUMHyperparameters,
    "facnet": FACNetHyperparameters,
    "mil": MILHyperparameters,
}


def model_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``; an unknown name is a user error listing the known ones."""
    key = name.strip().lower()
    if key not in MODEL_CLASSES:
        raise WtalInputError(f"unknown model name '{name}'", fix=f"use one of: {', '.join(MODEL_NAMES)}")
    return MODEL_CLASSES[key]


def check_hyperparameters(name: str, params: dict) -> None:
    """Raise :class:`WtalInputError` for an unknown model, an unknown hyperparameter or a value out of range."""
    model_class(name)
    parse_hyperparameters(HYPERPARAMETERS[name.strip().lower()], name, params)


def build_model(name: str, input_dim: int, num_classes: int, **params) -> nn.Module:
    """``model_class(name)(input_dim, num_classes, **params)``; ``params`` are the model's hyperparameters."""
    if int(input_dim) < 2 or int(num_classes) < 1:
        raise WtalInputError(f"model '{name}' needs input_dim >= 2 and num_classes >= 1, "
                             f"got input_dim={input_dim}, num_classes={num_classes}",
                             fix="check the feature files and the class list")
    cls = model_class(name)
    try:
        return cls(int(input_dim), int(num_classes), **params)
    except TypeError as exc:  # e.g. an unknown keyword of a model without a hyperparameter dataclass
        raise WtalInputError(f"bad hyperparameters for model '{name}': {exc}",
                             fix="see the model's documented keyword arguments") from exc


def postprocess_defaults(name: str) -> PostprocessDefaults:
    """The model's reference test-time post-processing settings (RSKP's when a model has none)."""
    recipe = getattr(model_class(name), "postprocess_defaults", None)
    return recipe() if recipe is not None else PostprocessDefaults()
