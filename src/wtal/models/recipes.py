"""Hyperparameter parsing shared by the models.

Each model keeps its hyperparameters in a frozen dataclass whose defaults are the reference values on
2048-d I3D features, and whose fields declare their allowed ranges (:func:`wtal.ranges.in_range`);
:func:`parse_hyperparameters` turns config keyword arguments into it and rejects unknown names, values out
of range and tuples of the wrong length with a :class:`~wtal.errors.WtalInputError`.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from wtal.errors import WtalInputError
from wtal.ranges import check_fields

H = TypeVar("H")


def parse_hyperparameters(cls: type[H], model_name: str, params: dict[str, Any]) -> H:
    """Build the hyperparameter dataclass ``cls`` from ``params``; unknown keys are a user error."""
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise WtalInputError(f"unknown hyperparameter(s) {unknown} for model '{model_name}'",
                             fix=f"use only: {', '.join(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    _check_tuple_lengths(cls, values)
    hp = cls(**values)
    check_fields(hp, prefix="model.params.")
    return hp


def _check_tuple_lengths(cls: type, values: dict[str, Any]) -> None:
    """A ``tuple[float, float]`` field takes exactly two values, a ``tuple[float, ...]`` field at least one."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if typing.get_origin(hints[name]) is not tuple:
            continue
        args = typing.get_args(hints[name])
        size = None if Ellipsis in args else len(args)
        if not isinstance(value, tuple) or (size is not None and len(value) != size) or not value:
            raise WtalInputError(f"invalid config value model.params.{name} = {value!r}",
                                 fix=f"give a list of {size or 'one or more'} numbers")
