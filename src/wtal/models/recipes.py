"""Hyperparameter parsing shared by the models.

Each model keeps its hyperparameters in a frozen dataclass whose defaults are the reference values on
2048-d I3D features; :func:`parse_hyperparameters` turns config keyword arguments into it and rejects
unknown names with a :class:`~wtal.errors.WtalInputError` that lists the known ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from wtal.errors import WtalInputError

H = TypeVar("H")


def parse_hyperparameters(cls: type[H], model_name: str, params: dict[str, Any]) -> H:
    """Build the hyperparameter dataclass ``cls`` from ``params``; unknown keys are a user error."""
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise WtalInputError(f"unknown hyperparameter(s) {unknown} for model '{model_name}'",
                             fix=f"use only: {', '.join(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    return cls(**values)
