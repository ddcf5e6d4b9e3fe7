"""wtal.models: the base models behind one protocol (:mod:`wtal.models.base`) and a factory by name."""

from wtal.models.base import ModelOutput, WtalModel
from wtal.models.factory import MODEL_NAMES, build_model, model_class, postprocess_defaults
from wtal.models.recipes import PostprocessDefaults

__all__ = ["MODEL_NAMES", "ModelOutput", "PostprocessDefaults", "WtalModel", "build_model", "model_class",
           "postprocess_defaults"]
