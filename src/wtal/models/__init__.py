"""wtal.models: the base models behind one protocol (:mod:`wtal.models.base`) and a factory by name."""

from wtal.models.base import ModelContext, ModelOutput, StreamModel, WtalModel
from wtal.models.factory import DETECTION_MODEL_NAMES, MODEL_NAMES, build_model, model_class

__all__ = ["DETECTION_MODEL_NAMES", "MODEL_NAMES", "ModelContext", "ModelOutput", "StreamModel", "WtalModel",
           "build_model", "model_class"]
