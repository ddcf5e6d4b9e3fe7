"""The GauFuse trainer plug-in: teacher generations, Δ targets and the distillation loss for any model.

Configured by the run config's ``pseudo`` section, e.g. ``pseudo: {name: gaufuse, preset: paper}``
(``method:`` is accepted for ``name:``). Keys (all optional, the preset fills the rest):

=========================  ====================================================================
``preset``                 ``paper`` (default) or ``reference``, see below
``generation_epochs``      epochs whose start makes a new generation (a teacher snapshot)   [epochs]
``temperatures``           fusion temperature per generation (or one number)
``target_start_epoch``     first epoch trained on pseudo labels                             [epoch]
``delta_start_epochs``     epochs from which Δ labels are used, with ``delta_scales``        [epochs]
``delta_scales``           ``scale`` of ``scale * (G^t - G^(t-1))`` per delta phase
``loss_weight``            distillation weight (the start of the ramp if ``loss_weight_max``)
``loss_weight_max``        cap of the exponential weight ramp, or null for a constant weight
``weight_ramp_start_epoch``, ``weight_ramp_end_epoch``: the ramp goes from ``loss_weight`` to
                           ``loss_weight_max`` between them (floats)                        [epoch]
``keep_generations``       generations held in memory and checkpoints (>= 2 for Δ)
``loss``                   ``bounded`` or ``cross_entropy`` (:mod:`wtal.pseudo.distill`)
``source``                 ``localization`` or ``distill_mix`` (:mod:`wtal.pseudo.teacher`)
``class_gate``             ``labels`` (ground-truth video labels) or ``predicted`` (video score)
``background_column``      also label the background column (``distill_mix`` only)
``teacher_dropout``        keep the teacher in train mode while it labels
``localize``               ``{preset, ...}`` overrides of :class:`wtal.localize.LocalizeConfig`
``linpro``                 ``{preset, ...}`` overrides of :class:`wtal.pseudo.linpro.LinProConfig`
``workers``                processes for post-processing (null: automatic)
``labels_from``            ``auto`` (default: the run's teacher when it has one, else the student's own
                           snapshot), ``teacher`` (the run's teacher; a run without one is an error) or
                           ``student`` (always the student's snapshot, e.g. when the run's teacher is
                           meant for another plug-in). A frozen teacher (``teacher.run``) gives the
                           same labels at every generation (eval mode, fixed weights), so Δ targets
                           would be 0: such a schedule is refused; use one generation and no Δ phase
``normalize``              divide every generation by one run-wide scale fixed at the first
                           generation (its 99th percentile of positive labels), so targets live in
                           about [0, 1] whatever the CAS scale of the base model; Δ keeps its meaning
                           because all generations share the scale (paper preset: true)
``loss_balance``           r, or null: at the first generation the distillation weight is set so that
                           the weighted term equals r times the base model's own loss, both measured
                           by one eval-mode pass over the training set against that generation
                           (paper preset: 1.0); ``loss_weight`` then only shapes a ramp. Base models
                           put their losses on very different scales (BaS-Net's is about 0.2, RSKP's
                           about 1.5), so one absolute weight lets the labels swamp one model and
                           barely touch another
=========================  ====================================================================

Epochs: the presets are written for a 350-epoch run and are mapped proportionally onto the run's
length (``total_epochs``). Keys marked [epoch(s)] given in the config are taken literally as epochs of
the run; their names end in ``_epoch``/``_epochs`` so the engine's ``--epochs`` rescaler scales them.

Presets
-------
``paper`` (fixes what looks accidental in the public code): generations at 200, 215, 230, 245, 270, 290 of
350, temperature 0.1, the raw first generation until the second exists, then plain Δ = G^t - G^(t-1);
the teacher in eval mode (deterministic labels); labels read through the model's test-time
``localization_scores`` (the same pipeline as test predictions), only for the video's ground-truth
classes, no background column; the ``paper`` localizer (IoU grouping, weights softmax(q / T)) and the
``paper`` LinPro (class-uniform by construction); the bounded loss; a constant weight balanced against
the base model's loss (``loss_balance`` 1.0); labels normalised by one run-wide scale (``normalize``):
LinPro labels carry the CAS's units (RSKP's softmax-times-attention CAS peaks near 0.04, a sigmoid CAS
near 1), so without it the same weight means a 25x different loss for different base models. The fusion
temperatures are in the units of the CAS scores unless ``localize: {temperature_mode: relative}`` makes them
fractions of each CAS column's range (``rskp_gaufuse.yaml`` does: the paper's 0.1 was set on a CAS of
range ~0.04, so 2.5 there).

``reference`` (faithful to the public code): generations at 200, 230, 245,
260, 275, 300 with T = 0.02, 0.02, 0.02, 0.002, 0.002, 0.0016; raw labels from 201, 2 Δ from 251, 2.15 Δ
from 301; weight ``min(10 * 1.035^(e - 200), 50)``; teacher with dropout on; labels from the 0.8/0.2
``distill_mix`` CAS with the background column, gated by predicted video score >= 0.16; the ``reference``
localizer and LinPro; plain (unbounded) cross entropy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from wtal.data.batch import Batch
from wtal.errors import WtalInputError
from wtal.localize.pipeline import LocalizeConfig
from wtal.pseudo.balance import balanced_weight_factor
from wtal.pseudo.distill import LossKind, distillation_loss
from wtal.pseudo.generate import Generation, GenerationConfig, GenerationTimings, generate
from wtal.pseudo.linpro import LinProConfig, LinProStats
from wtal.pseudo.schedule import PRESET_EPOCHS, PseudoSchedule, TargetSpec, paper_schedule, reference_schedule
from wtal.pseudo.teacher import pad_video_rows

logger = logging.getLogger(__name__)

#: distillation weight of the paper preset when ``loss_balance`` is null or cannot be measured (the paper
#: gives none; the reference starts at 10 and grows to 50). With the preset's ``loss_balance`` the
#: measured balance replaces it.
PAPER_LOSS_WEIGHT = 10.0

_SCHEDULE_KEYS = tuple(f.name for f in fields(PseudoSchedule))
_GENERATION_KEYS = ("source", "class_gate", "background_column", "teacher_dropout", "workers")
_OTHER_KEYS = ("name", "method", "preset", "loss", "localize", "linpro", "normalize", "loss_balance", "labels_from")
LABEL_SOURCES = ("auto", "teacher", "student")

_PRESET_OPTIONS: dict[str, dict[str, Any]] = {
    "paper": dict(loss="bounded", source="localization", class_gate="labels", background_column=False,
                  teacher_dropout=False, normalize=True, loss_balance=1.0),
    "reference": dict(loss="cross_entropy", source="distill_mix", class_gate="predicted",
                      background_column=True, teacher_dropout=True, normalize=False, loss_balance=None),
}


@dataclass(frozen=True)
class GauFuseConfig:
    schedule: PseudoSchedule
    generation: GenerationConfig
    loss: LossKind
    normalize: bool = False
    loss_balance: float | None = None
    labels_from: str = "auto"  # auto | teacher | student: which model makes the generations

    @classmethod
    def from_dict(cls, cfg: dict[str, Any] | None, *, total_epochs: int) -> GauFuseConfig:
        """Resolve a ``pseudo`` config mapping (see the module docstring) for a run of ``total_epochs``."""
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - set(_SCHEDULE_KEYS) - set(_GENERATION_KEYS) - set(_OTHER_KEYS))
        if unknown:
            raise WtalInputError(f"unknown pseudo setting {unknown[0]!r}",
                                 fix=f"valid keys: {sorted(_SCHEDULE_KEYS + _GENERATION_KEYS + _OTHER_KEYS)}")
        method = cfg.get("name", cfg.get("method", "gaufuse"))
        if method != "gaufuse":
            raise WtalInputError(f"unknown pseudo-label method {method!r}", fix="use name: gaufuse")
        preset = cfg.get("preset", "paper")
        if preset not in _PRESET_OPTIONS:
            raise WtalInputError(f"unknown pseudo preset {preset!r}", fix="use 'paper' or 'reference'")
        schedule = _schedule(preset, cfg, total_epochs)
        opts = {**_PRESET_OPTIONS[preset],
                **{k: cfg[k] for k in (*_GENERATION_KEYS, "loss", "normalize", "loss_balance") if k in cfg}}
        loss = opts.pop("loss")
        normalize = bool(opts.pop("normalize"))
        balance = opts.pop("loss_balance")
        if balance is not None:
            try:
                balance = float(balance)
            except (TypeError, ValueError):
                balance = float("nan")
            if not (balance > 0 and np.isfinite(balance)):
                raise WtalInputError(f"pseudo.loss_balance must be a positive number or null, got "
                                     f"{cfg.get('loss_balance')!r}", fix="e.g. loss_balance: 1.0")
        if loss not in ("bounded", "cross_entropy"):
            raise WtalInputError(f"unknown pseudo loss {loss!r}", fix="use 'bounded' or 'cross_entropy'")
        localize = _sub_config(LocalizeConfig, cfg.get("localize"), preset, "localize")
        if localize.method != "fusion":
            logger.info("pseudo labels use %s instead of Gaussian fusion", localize.method)
        linpro = _sub_config(LinProConfig, cfg.get("linpro"), preset, "linpro")
        generation = GenerationConfig(localize=localize, linpro=linpro, **opts)
        labels_from = cfg.get("labels_from", "auto")
        if labels_from not in LABEL_SOURCES:
            raise WtalInputError(f"unknown pseudo.labels_from {labels_from!r}",
                                 fix=f"use one of {', '.join(LABEL_SOURCES)}")
        return cls(schedule=schedule, generation=generation, loss=loss, normalize=normalize,
                   loss_balance=balance, labels_from=labels_from)


def _schedule(preset: str, cfg: dict[str, Any], total_epochs: int) -> PseudoSchedule:
    base = paper_schedule(PAPER_LOSS_WEIGHT) if preset == "paper" else reference_schedule()
    base = base.rescaled(total_epochs, PRESET_EPOCHS)
    try:
        given = {k: _CONVERT[k](cfg[k]) for k in _SCHEDULE_KEYS if k in cfg}
    except (TypeError, ValueError) as exc:
        raise WtalInputError(f"invalid pseudo schedule setting: {exc}",
                             fix="epochs are integers or integer lists; weights and scales numbers") from exc
    if "generation_epochs" in given and "temperatures" not in given:
        temps = set(base.temperatures)
        if len(temps) != 1:
            raise WtalInputError("pseudo.generation_epochs is set but pseudo.temperatures is not",
                                 fix="give one temperature per generation epoch")
        given["temperatures"] = (temps.pop(),)
    if "temperatures" in given and len(given["temperatures"]) == 1:
        count = len(given.get("generation_epochs", base.generation_epochs))
        given["temperatures"] = given["temperatures"] * count
    return replace(base, **given)


def _ints(value: Any) -> tuple[int, ...]:
    values = value if isinstance(value, list | tuple) else [value]
    if any(isinstance(v, bool) or float(v) != int(v) for v in values):
        raise ValueError(f"expected integer epochs, got {value!r}")
    return tuple(int(v) for v in values)


def _floats(value: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in (value if isinstance(value, list | tuple) else [value]))


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "generation_epochs": _ints, "temperatures": _floats, "target_start_epoch": lambda v: _ints(v)[0],
    "delta_start_epochs": _ints, "delta_scales": _floats, "loss_weight": float,
    "loss_weight_max": _optional_float, "weight_ramp_start_epoch": float, "weight_ramp_end_epoch": float,
    "keep_generations": lambda v: _ints(v)[0],
}


def _sub_config(cls, raw: dict[str, Any] | None, preset: str, where: str):
    raw = dict(raw or {})
    sub_preset = raw.pop("preset", preset)
    try:
        return cls.from_preset(sub_preset, **raw)
    except TypeError as exc:
        raise WtalInputError(f"invalid pseudo.{where} setting: {exc}") from exc


class GauFusePlugin:
    """Trainer plug-in; see the module docstring. Generations are kept oldest first."""

    name = "gaufuse"

    def __init__(self, config: GauFuseConfig, *, num_classes: int, teacher: torch.nn.Module | None = None):
        self.config = config
        self.num_classes = int(num_classes)
        self.teacher = teacher  # labels come from this model (a trained run, or a joint teacher), else the student
        self.generations: list[Generation] = []
        self.history: list[dict[str, float]] = []  # one summary per generation made in this run
        self.label_scale = 1.0  # run-wide divisor of all generations (fixed at the first one if normalize)
        self.weight_factor = 1.0  # multiplies the schedule's weight (fixed at the first one if loss_balance)
        self._cache_key: tuple | None = None
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def schedule(self) -> PseudoSchedule:
        return self.config.schedule

    # -- hooks -----------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, model: torch.nn.Module,
                       train_batches: Callable[[], Iterable[Batch]]) -> None:
        index = self.schedule.generation_index(epoch)
        if index is None or any(g.epoch == epoch for g in self.generations):
            return  # nothing due, or already made before a --resume
        gen = generate(self.teacher if self.teacher is not None else model, train_batches,
                       self.config.generation, epoch=epoch, temperature=self.schedule.temperatures[index])
        self._check_width(gen)
        first = not self.generations and not self.history
        if self.config.normalize and first:
            self.label_scale = label_scale(gen.labels)
        self.generations = [*self.generations, gen][-self.schedule.keep_generations:]
        if self.config.loss_balance is not None and first:
            self.weight_factor = self._balanced_weight_factor(model, train_batches, epoch)
        t = gen.timings
        summary = {"epoch": float(epoch), "videos": float(len(gen.labels)), "teacher_s": t.teacher,
                   "postprocess_s": t.postprocess_wall, "lp_solved": float(gen.stats.solved),
                   "lp_relaxed": float(gen.stats.relaxed), "lp_failed": float(gen.stats.failed),
                   "labelled_fraction": _labelled_fraction(gen.labels), "label_scale": self.label_scale,
                   "loss_weight": self.schedule.weight(epoch) * self.weight_factor}
        self.history.append(summary)
        logger.info("pseudo labels generation %d at epoch %d: %d videos, teacher %.2fs, "
                    "post-processing %.2fs, %s", index, epoch, len(gen.labels), t.teacher, t.postprocess_wall,
                    gen.stats)

    def loss(self, model: torch.nn.Module, out: Any, batch: Batch, epoch: int, teacher_out: Any = None
             ) -> torch.Tensor | None:
        spec = self.target_spec(epoch)
        weight = self.schedule.weight(epoch) * self.weight_factor
        if spec is None or weight == 0:
            return None
        return weight * self._distillation_loss(model, out, batch, spec)

    def _distillation_loss(self, model: torch.nn.Module, out: Any, batch: Batch, spec: TargetSpec
                           ) -> torch.Tensor:
        """The unweighted per-video ``(B,)`` distillation loss of ``model``'s output against ``spec``."""
        branches = model.distill_logits(out)
        ref = branches[0][1]
        target = self._batch_targets(spec, batch, ref.shape[1], ref.device, ref.dtype)
        return distillation_loss(branches, target, batch.mask, self.config.loss)

    def _balanced_weight_factor(self, model: torch.nn.Module, train_batches: Callable[[], Iterable[Batch]],
                                epoch: int) -> float:
        """The factor that makes the weighted distillation term ``loss_balance`` x the base model's loss,
        against the newest generation's raw labels (:func:`wtal.pseudo.balance.balanced_weight_factor`)."""
        spec = TargetSpec("raw", len(self.generations) - 1, None, 1.0)
        return balanced_weight_factor(model, train_batches, epoch,
                                      lambda probe, out, batch: self._distillation_loss(probe, out, batch, spec),
                                      ratio=self.config.loss_balance, weight=self.schedule.weight(epoch),
                                      what="pseudo.loss_balance")

    # -- targets ---------------------------------------------------------------------------------
    def target_spec(self, epoch: int) -> TargetSpec | None:
        return self.schedule.target(epoch, [g.epoch for g in self.generations])

    def video_target(self, spec: TargetSpec, name: str) -> np.ndarray:
        """The ``(T, K)`` float32 target of one video under ``spec``."""
        latest = self.generations[spec.latest].labels
        if name not in latest:
            raise WtalInputError(f"video {name!r} has no pseudo labels", video=name,
                                 fix="keep the training set unchanged between pseudo-label generations "
                                     "(and when resuming)")
        if spec.kind == "raw":
            return (latest[name] / self.label_scale).astype(np.float32)
        previous = self.generations[spec.previous].labels[name]
        delta = latest[name].astype(np.float64) - previous
        return (spec.scale / self.label_scale * delta).astype(np.float32)

    def _batch_targets(self, spec: TargetSpec, batch: Batch, t_max: int, device: torch.device,
                       dtype: torch.dtype) -> torch.Tensor:
        key = (spec, tuple(g.epoch for g in self.generations), str(device), dtype)
        if key != self._cache_key:
            self._cache_key, self._cache = key, {}
        lengths = batch.mask.sum(dim=1).tolist()
        rows = []
        for name, length in zip(batch.names, lengths, strict=True):
            target = self._cache.get(name)
            if target is None:
                target = torch.as_tensor(self.video_target(spec, name), dtype=dtype, device=device)
                self._cache[name] = target
            if target.shape[0] != int(length):
                raise WtalInputError(
                    f"pseudo labels cover {target.shape[0]} snippets but the video has {length}", video=name,
                    fix="resume only with the features the labels were made from")
            rows.append(target)
        return pad_video_rows(rows, t_max)

    def _check_width(self, gen: Generation) -> None:
        expected = self.num_classes + (1 if self.config.generation.background_column else 0)
        for name, labels in gen.labels.items():
            if labels.shape[1] != expected:
                raise WtalInputError(f"pseudo labels have {labels.shape[1]} columns, expected {expected}",
                                     video=name,
                                     fix="make the model's localization_scores return one column per class")
            break

    def latest_labels(self, video: str) -> tuple[int, np.ndarray] | None:
        """The newest generation's pseudo labels of ``video``: ``(epoch index it was made at, (T, K))``."""
        for gen in reversed(self.generations):
            if video in gen.labels:
                return gen.epoch, gen.labels[video]
        return None

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "generations": [{"epoch": g.epoch,
                             "labels": {n: torch.from_numpy(a.copy()) for n, a in g.labels.items()},
                             "stats": [g.stats.solved, g.stats.relaxed, g.stats.failed]}
                            for g in self.generations],
            "history": [dict(h) for h in self.history],
            "label_scale": self.label_scale,
            "weight_factor": self.weight_factor,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            raise WtalInputError(f"unsupported GauFuse plug-in state version {state.get('version')!r}")
        self.generations = [
            Generation(epoch=int(g["epoch"]),
                       labels={n: t.detach().cpu().numpy().astype(np.float32)
                               for n, t in g["labels"].items()},
                       stats=LinProStats(*(int(x) for x in g["stats"])), timings=GenerationTimings())
            for g in state["generations"]]
        self.history = [dict(h) for h in state.get("history", [])]
        self.label_scale = float(state.get("label_scale", 1.0))
        self.weight_factor = float(state.get("weight_factor", 1.0))
        self._cache_key, self._cache = None, {}


def label_scale(labels: dict[str, np.ndarray], quantile: float = 99.0) -> float:
    """Robust size of a generation: the ``quantile`` of its positive labels (1.0 when it has none)."""
    positive = np.concatenate([a[a > 0].ravel() for a in labels.values()] or [np.zeros(0)])
    return float(np.percentile(positive, quantile)) if positive.size else 1.0


def _labelled_fraction(labels: dict[str, np.ndarray]) -> float:
    total = sum(a.shape[0] for a in labels.values())
    hit = sum(int(np.count_nonzero(a.max(axis=1) > 0)) for a in labels.values())
    return hit / max(total, 1)


def build_gaufuse_plugin(context: Any, **params: Any) -> GauFusePlugin:
    """Factory for :mod:`wtal.engine.plugins` (``pseudo: {name: gaufuse, ...}``). With a teacher in the run
    (``teacher:``), its scores make the labels instead of the student's snapshot (``labels_from``)."""
    cfg = GauFuseConfig.from_dict({"name": "gaufuse", **params}, total_epochs=context.epochs)
    return GauFusePlugin(cfg, num_classes=len(context.classes),
                         teacher=label_teacher(cfg, getattr(context, "teacher", None)))


def label_teacher(cfg: GauFuseConfig, teacher: Any) -> torch.nn.Module | None:
    """The model whose generations label the student (None: the student's own snapshot), checked against
    the schedule. ``teacher`` is the run's :class:`wtal.engine.teacher.Teacher` or None."""
    if cfg.labels_from == "student":
        return None
    if teacher is None:
        if cfg.labels_from == "teacher":
            raise WtalInputError("pseudo.labels_from is 'teacher' but the run has no teacher",
                                 fix="name a trained run with --set teacher.run=RUN (trained on the same data)")
        return None
    if not teacher.joint and cfg.schedule.delta_start_epochs:
        raise WtalInputError(
            f"pseudo labels from a frozen teacher ({teacher.description}) are the same at every generation, so "
            f"the Δ targets from epoch {cfg.schedule.delta_start_epochs[0]} on would all be 0",
            fix="set pseudo.delta_start_epochs: [] and pseudo.delta_scales: [] (one generation is enough), or "
                "pseudo.labels_from: student")
    return teacher.model
