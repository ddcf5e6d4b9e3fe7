"""Hyperparameter parsing and the per-model test-time post-processing defaults.

Each model keeps its hyperparameters in a frozen dataclass whose defaults are the reference values on
2048-d I3D features, and whose fields declare their allowed ranges (:func:`wtal.ranges.in_range`);
:func:`parse_hyperparameters` turns config keyword arguments into it and rejects unknown names, values out
of range and tuples of the wrong length with a :class:`~wtal.errors.WtalInputError`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

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


def arange_grid(start: float, stop: float, step: float) -> tuple[float, ...]:
    """``np.arange(start, stop, step)`` as a tuple of Python floats (the references' threshold grids)."""
    return tuple(float(v) for v in np.arange(start, stop, step))


@dataclass(frozen=True)
class PostprocessDefaults:
    """A model's reference test recipe after its CAS (``localization_scores``) is computed.

    Snippet units throughout. Proposals: runs of ``cas > threshold`` for every threshold in ``cas_thresholds``
    (and, when ``extra_signal`` is set, runs of ``extras[extra_signal] > t`` for ``t`` in ``extra_thresholds``,
    scored on the CAS), at least ``min_length`` snippets long, scored ``inner - outer_weight * outer
    + score_bonus * video_score`` with an outer margin ``margin_scale * length ** margin_power`` on each side;
    then class-wise ``suppression`` ("nms" or "gaussian") at ``overlap_threshold``.
    """

    class_threshold: float = 0.1  # keep class c when video_score[c] >= this
    cas_thresholds: tuple[float, ...] = arange_grid(0.001, 0.04, 0.002)
    min_length: int = 2
    margin_scale: float = 0.25
    margin_power: float = 1.0
    outer_weight: float = 1.0
    score_bonus: float = 0.0
    suppression: str = "nms"
    overlap_kind: str = "inter_over_other"  # or "iou"
    overlap_threshold: float = 0.5
    fusion_temperature: float = 0.2  # only for suppression == "gaussian"
    upsample: int = 1  # BaS-Net/WUM/STPN interpolate the CAS x24 before thresholding
    binarize_video_score: bool = False  # BaS-Net: the bonus uses 1[score >= class_threshold]
    top_class_fallback: bool = False  # WUM: keep the arg-max class when none passes the threshold
    extra_signal: str | None = None
    extra_thresholds: tuple[float, ...] = ()

    def localize_overrides(self) -> dict[str, Any]:
        """Keyword overrides for ``wtal.localize.LocalizeConfig.from_preset`` (absolute thresholds).

        ``outer_weight``, ``upsample``, ``binarize_video_score``, ``top_class_fallback`` and ``extra_signal`` have
        no counterpart there and are left out.
        """
        margin: dict[str, Any] = (
            {"margin": "linear", "margin_alpha": self.margin_scale} if self.margin_power == 1.0
            else {"margin": "power", "margin_coef": self.margin_scale, "margin_exponent": self.margin_power})
        overlap = "iou" if self.overlap_kind == "iou" else "reference"
        suppression: dict[str, Any] = (
            {"method": "fusion", "fuse_iou": self.overlap_threshold, "temperature": self.fusion_temperature}
            if self.suppression == "gaussian" else {"method": "nms", "nms_iou": self.overlap_threshold})
        return {"class_threshold": self.class_threshold, "thresholds": self.cas_thresholds,
                "threshold_mode": "absolute", "min_length": self.min_length, "score_gamma": self.score_bonus,
                "overlap": overlap, **margin, **suppression}
