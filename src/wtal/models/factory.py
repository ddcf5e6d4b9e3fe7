"""Plain typed factory: a model by config name (no import-side-effect registry)."""

from __future__ import annotations

from torch import nn

from wtal.errors import WtalInputError
from wtal.importing import is_reference, resolve
from wtal.models.base import ModelContext
from wtal.models.basnet import BaSNet
from wtal.models.cpl import CPLModel
from wtal.models.facnet import FACNet
from wtal.models.issf import ISSF
from wtal.models.mil import MILModel
from wtal.models.mmsd import MMSD
from wtal.models.mutual import MutualLearning
from wtal.models.recipes import parse_hyperparameters
from wtal.models.rskp import RSKP
from wtal.models.stpn import STPN
from wtal.models.vlp import VLPBranch
from wtal.models.wum import WUM

DETECTION_MODELS: dict[str, type[nn.Module]] = {  # action localization (wtal.models.base.WtalModel)
    "rskp": RSKP,
    "stpn": STPN,
    "basnet": BaSNet,
    "wum": WUM,
    "facnet": FACNet,
    "mil": MILModel,
    "mmsd": MMSD,
    "vlp": VLPBranch,
    "issf": ISSF,
    "mutual": MutualLearning,
}
GROUNDING_MODELS: dict[str, type[nn.Module]] = {  # sentence grounding (wtal.tasks.grounding)
    "cpl": CPLModel,
}
MODEL_CLASSES: dict[str, type[nn.Module]] = {**DETECTION_MODELS, **GROUNDING_MODELS}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_CLASSES)
DETECTION_MODEL_NAMES: tuple[str, ...] = tuple(DETECTION_MODELS)


def model_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``, or ``module:Class`` for a model defined outside wtal (importable
    from ``sys.path``); an unknown name is a user error listing the known ones."""
    return resolve(name.strip() if is_reference(name.strip()) else name.strip().lower(), MODEL_CLASSES, what="model")


def check_hyperparameters(name: str, params: dict) -> None:
    """Raise :class:`WtalInputError` for an unknown model, an unknown hyperparameter or a value out of range
    (before any data is read or model built). A composite model (``mutual``) checks its own keys and its base
    model's with its ``check_params``."""
    cls = model_class(name)
    checker = getattr(cls, "check_params", None)
    if checker is not None:
        checker(params)
    elif hasattr(cls, "hyperparameters"):
        parse_hyperparameters(cls.hyperparameters, name, params)


def build_model(name: str, context: ModelContext, **params) -> nn.Module:
    """``model_class(name)(context, **params)``; ``params`` are the model's hyperparameters."""
    cls = model_class(name)
    needs_classes = getattr(cls, "needs_classes", True)  # grounding models read sentences, not classes
    if not context.streams or any(int(w) < 1 for w in context.streams.values()) or \
            (needs_classes and context.num_classes < 1):
        raise WtalInputError(f"model '{name}' needs at least one stream of width >= 1"
                             f"{' and one class' if needs_classes else ''}, got streams {dict(context.streams)}"
                             f"{f' and {context.num_classes} classes' if needs_classes else ''}",
                             fix="check the feature files, model.streams and the class list")
    try:
        return cls(context, **params)
    except TypeError as exc:  # e.g. an unknown keyword of a model without a hyperparameter dataclass
        raise WtalInputError(f"bad hyperparameters for model '{name}': {exc}",
                             fix="see the model's documented keyword arguments") from exc
