"""Allowed numeric ranges of config values, declared next to the values they constrain.

A value outside its range (``dropout: 1.5``, ``lr: -1``, ``tiou: [0]``, NaN) is rejected with one
:class:`~wtal.errors.WtalInputError` naming the key, the value and the allowed range, when the config is
read, before any data is opened or any model built. Dataclass fields declare their range with
:func:`in_range`, and :func:`check_fields` checks them all::

    @dataclass(frozen=True)
    class Hyperparameters:
        dropout: float = in_range(0.5, BELOW_ONE)
        temperatures: tuple[float, ...] = in_range((1.0, 2.0), POSITIVE)  # every element

``None`` (an optional value left unset) is always allowed; a tuple or list is checked element-wise.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from wtal.errors import WtalInputError


@dataclass(frozen=True)
class Range:
    """Finite numbers from ``low`` to ``high`` (``None``: unbounded), ends excluded when ``*_open``;
    ``integer``: whole numbers only (counts, sizes, epoch indices)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            return (f"{kind} in {'(' if self.low_open else '['}{_num(self.low)}, "
                    f"{_num(self.high)}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {_num(self.high)}"
        return f"a finite {kind.split()[-1]}"


POSITIVE = Range(0, low_open=True)  # scales, temperatures, lengths, learning rates
NON_NEGATIVE = Range(0)  # loss weights, decay, mixing weights
UNIT = Range(0, 1)  # a convex mixing weight w (the other term gets 1 - w)
BELOW_ONE = Range(0, 1, high_open=True)  # dropout (1 drops everything), decay rates, damping factors
FRACTION = Range(0, 1, low_open=True)  # a non-empty share, e.g. a tIoU threshold
COUNT = Range(1, integer=True)  # widths, sizes, numbers of things
INDEX = Range(0, integer=True)  # epoch indices, iteration counts that may be 0, seeds
DIVISOR = Range(1)  # top-k ratios: k = T // ratio must not exceed the video's T snippets


def in_range(default: Any, allowed: Range) -> Any:
    """A dataclass field with ``default`` whose values must lie in ``allowed`` (see :func:`check_fields`);
    a list default is copied for every instance."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"range": allowed})
    return dataclasses.field(default=default, metadata={"range": allowed})


def check_fields(obj: Any, prefix: str = "") -> None:
    """Check every field of the dataclass instance ``obj`` that declares a range (``prefix`` + name in errors)."""
    for f in dataclasses.fields(obj):
        allowed = f.metadata.get("range")
        if allowed is not None:
            check_range(prefix + f.name, getattr(obj, f.name), allowed)


def check_range(key: str, value: Any, allowed: Range) -> None:
    """Raise :class:`WtalInputError` unless ``value`` (each element of a tuple or list; ``None`` passes)
    lies in ``allowed``."""
    items = value if isinstance(value, tuple | list) else (value,)
    if not all(v is None or allowed.contains(v) for v in items):
        raise WtalInputError(f"invalid config value {key} = {value!r}",
                             fix=f"use {allowed.describe()}" + (" for each element" if items is value else ""))


def _num(x: float) -> str:
    return f"{x:g}"
