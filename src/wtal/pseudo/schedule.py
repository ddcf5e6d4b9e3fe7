"""When pseudo labels are generated, which target each epoch trains on, and with what weight.

Epochs are 0-based indices. A generation made "at epoch e" is computed at the *start* of epoch e
from the student as it was after epoch e-1, and can be used from epoch e on.

Target at epoch e (``generations`` = those made at epochs <= e, oldest first):

* nothing before ``target_start_epoch`` or while no generation exists;
* ``scale * (G^t - G^(t-1))`` (a Δ label) once a delta phase has started (the last entry of
  ``delta_start_epochs`` that is <= e gives the scale) and at least two generations exist;
* the latest generation ``G^t`` otherwise.

The distillation weight is ``loss_weight`` (constant), or an exponential ramp from ``loss_weight`` at
``weight_ramp_start_epoch`` to ``loss_weight_max`` at ``weight_ramp_end_epoch``, capped there. The
reference's ``min(10 * 1.035^(e-200), 50)`` is the ramp 10 -> 50 over 200 -> 200 + ln 5 / ln 1.035.

Presets are written for a 350-epoch run (:data:`PRESET_EPOCHS`) and :meth:`PseudoSchedule.rescaled`
maps them onto the run's real length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from wtal.errors import WtalInputError

PRESET_EPOCHS = 350  # the training length the preset epoch values are written for

#: Config keys whose values are epoch indices (an ``--epochs N`` rescaler must scale them).
EPOCH_KEYS = ("generation_epochs", "target_start_epoch", "delta_start_epochs",
              "weight_ramp_start_epoch", "weight_ramp_end_epoch")


@dataclass(frozen=True)
class TargetSpec:
    """What the distillation loss trains on at one epoch."""

    kind: Literal["raw", "delta"]
    latest: int  # index into the generation list (oldest first)
    previous: int | None  # for "delta"
    scale: float


@dataclass(frozen=True)
class PseudoSchedule:
    generation_epochs: tuple[int, ...]
    temperatures: tuple[float, ...]  # fusion temperature of each generation
    target_start_epoch: int
    delta_start_epochs: tuple[int, ...] = ()
    delta_scales: tuple[float, ...] = ()
    loss_weight: float = 1.0
    loss_weight_max: float | None = None  # None: constant weight
    weight_ramp_start_epoch: float = 0.0
    weight_ramp_end_epoch: float = 0.0
    keep_generations: int = 3

    def __post_init__(self) -> None:
        gens = self.generation_epochs
        if not gens:
            raise WtalInputError("pseudo.generation_epochs is empty",
                                 fix="list at least one epoch, e.g. [200, 215, 230]")
        if any(b <= a for a, b in zip(gens, gens[1:], strict=False)) or gens[0] < 0:
            raise WtalInputError(
                f"pseudo.generation_epochs must be >= 0 and strictly increasing, got {list(gens)}")
        if len(self.temperatures) != len(gens):
            raise WtalInputError(
                f"pseudo.temperatures has {len(self.temperatures)} values for {len(gens)} generations",
                fix="give one temperature per generation epoch (or a single number)")
        if any(not (t > 0 and math.isfinite(t)) for t in self.temperatures):
            raise WtalInputError(f"pseudo.temperatures must be positive, got {list(self.temperatures)}")
        if len(self.delta_scales) != len(self.delta_start_epochs):
            raise WtalInputError("pseudo.delta_scales and pseudo.delta_start_epochs differ in length",
                                 fix="give one scale per delta start epoch")
        ds = self.delta_start_epochs
        if any(b <= a for a, b in zip(ds, ds[1:], strict=False)):
            raise WtalInputError(f"pseudo.delta_start_epochs must be strictly increasing, got {list(ds)}")
        if self.keep_generations < (2 if ds else 1):
            raise WtalInputError(f"pseudo.keep_generations={self.keep_generations} is too small",
                                 fix="keep at least 2 generations when delta labels are used")
        weights = [self.loss_weight] + ([] if self.loss_weight_max is None else [self.loss_weight_max])
        if any(not (w >= 0 and math.isfinite(w)) for w in weights):
            raise WtalInputError(f"pseudo loss weights must be finite and >= 0, got {weights}")
        if self.loss_weight_max is not None and self.loss_weight_max > 0 and self.loss_weight <= 0:
            raise WtalInputError("pseudo.loss_weight must be > 0 for an exponential ramp")

    # -- queries ---------------------------------------------------------------------------------
    def generation_index(self, epoch: int) -> int | None:
        """Index of the generation made at the start of ``epoch``, or None."""
        try:
            return self.generation_epochs.index(epoch)
        except ValueError:
            return None

    def target(self, epoch: int, generation_epochs: list[int] | tuple[int, ...]) -> TargetSpec | None:
        """The target at ``epoch`` given the epochs of the generations held (oldest first)."""
        held = [i for i, g in enumerate(generation_epochs) if g <= epoch]
        if epoch < self.target_start_epoch or not held:
            return None
        latest = held[-1]
        scale = self.delta_scale(epoch)
        if scale is not None and len(held) >= 2:
            return TargetSpec("delta", latest, held[-2], scale)
        return TargetSpec("raw", latest, None, 1.0)

    def delta_scale(self, epoch: int) -> float | None:
        """Scale of Δ labels at ``epoch``, or None before the first delta phase."""
        started = [s for e, s in zip(self.delta_start_epochs, self.delta_scales, strict=True) if e <= epoch]
        return started[-1] if started else None

    def weight(self, epoch: int) -> float:
        """Distillation loss weight at ``epoch``."""
        w0, w1 = self.loss_weight, self.loss_weight_max
        span = self.weight_ramp_end_epoch - self.weight_ramp_start_epoch
        if w1 is None or span <= 0 or w1 == w0:
            return float(w0)
        frac = (epoch - self.weight_ramp_start_epoch) / span
        return float(min(w0 * (w1 / w0) ** frac, w1))

    # -- rescaling -------------------------------------------------------------------------------
    def rescaled(self, total_epochs: int, base_epochs: int = PRESET_EPOCHS) -> PseudoSchedule:
        """Map every epoch value from a ``base_epochs`` run onto a ``total_epochs`` run.

        Integer epochs round half up; generation epochs that collide after rounding are pushed one
        epoch later (and dropped past the end), so every generation still happens. Ramp epochs stay
        real-valued so the compressed weight curve keeps its shape exactly.
        """
        if total_epochs <= 0 or base_epochs <= 0:
            raise WtalInputError(f"cannot rescale a pseudo-label schedule to {total_epochs} epochs")
        if total_epochs == base_epochs:
            return self
        f = total_epochs / base_epochs

        def to_int(e: float) -> int:
            return int(math.floor(e * f + 0.5))

        gens: list[int] = []
        temps: list[float] = []
        for e, t in zip(self.generation_epochs, self.temperatures, strict=True):
            g = max(to_int(e), gens[-1] + 1 if gens else 0)
            if g < total_epochs:
                gens.append(g)
                temps.append(t)
        if not gens:
            gens, temps = [total_epochs - 1], [self.temperatures[0]]
        deltas: dict[int, float] = {}
        for e, s in zip(self.delta_start_epochs, self.delta_scales, strict=True):
            deltas[to_int(e)] = s  # a later phase that collides wins, as it would a moment later
        return replace(self, generation_epochs=tuple(gens), temperatures=tuple(temps),
                       target_start_epoch=to_int(self.target_start_epoch),
                       delta_start_epochs=tuple(sorted(deltas)),
                       delta_scales=tuple(deltas[k] for k in sorted(deltas)),
                       weight_ramp_start_epoch=self.weight_ramp_start_epoch * f,
                       weight_ramp_end_epoch=self.weight_ramp_end_epoch * f)


def paper_schedule(loss_weight: float = 1.0) -> PseudoSchedule:
    """Paper §4.2: labels at 200, 215, 230, 245, 270, 290 of 350, T = 0.1, plain Δ from the second."""
    return PseudoSchedule(generation_epochs=(200, 215, 230, 245, 270, 290), temperatures=(0.1,) * 6,
                          target_start_epoch=200, delta_start_epochs=(215,), delta_scales=(1.0,),
                          loss_weight=loss_weight, keep_generations=3)


def reference_schedule() -> PseudoSchedule:
    """The public code: raw labels 201-250, 2 Δ from 251, 2.15 Δ from 301."""
    return PseudoSchedule(generation_epochs=(200, 230, 245, 260, 275, 300),
                          temperatures=(0.02, 0.02, 0.02, 0.002, 0.002, 0.0016),
                          target_start_epoch=201, delta_start_epochs=(251, 301), delta_scales=(2.0, 2.15),
                          loss_weight=10.0, loss_weight_max=50.0, weight_ramp_start_epoch=200.0,
                          weight_ramp_end_epoch=200.0 + math.log(5.0) / math.log(1.035), keep_generations=3)
