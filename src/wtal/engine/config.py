"""Run configuration: plain YAML -> nested dict -> small validated dataclasses.

Sections::

    extends:     other.yaml                       # optional: start from that file, then apply this one
    task:        detection                        # what the run learns (wtal.tasks): detection | grounding
    model:       {name, streams: [rgb, flow], params: {...}}   # -> wtal.models.build_model(name, context, **params)
    data:        {path, val_fraction, val_seed, batch_size, eval_batch_size, max_batch_snippets,
                  cache, max_length_mismatch, train_subset, test_subset}
    optim:       {name, lr, betas, weight_decay, grad_clip, batch_reduction,
                  schedule: {type: constant|step|inverse_sqrt, milestones, factors, warmup_epochs,
                             warmup_steps, warmup_init_lr}}
    train:       {epochs, eval_every, seed, select: val|last|test, deterministic, tensorboard, progress,
                  num_threads, keep_freed_memory}
    eval:        {tiou: [...]}
    postprocess: {preset, ...}                    # -> LocalizeConfig.from_preset(preset, **rest)
    teacher:     null | {run: DIR} | {config: FILE}   # a model trained earlier, or one trained jointly
    pseudo:      null | {name: gaufuse, ...}      # the GauFuse plug-in (a one-entry shorthand for plugins)
    plugins:     [{name, ...}, ...]               # trainer plug-ins (see wtal.engine.plugins)
    grounding:   null | {num_clips, min_word_count, max_vocabulary, max_words, pos_weighting, word_vectors,
                         missing_features}        # task: grounding, its data side (GroundingConfig)

Keys missing from a file take the dataclass defaults below; the *resolved* config (every key filled in,
``extends`` flattened, after ``--epochs`` and ``--set``) is what a run saves as ``RUN/config.yaml``.

Composition (``extends``)
-------------------------
``extends: rskp.yaml`` names a base config (a path relative to this file, or a shipped config name); the
file's own keys are merged into it: mappings key by key, everything else (lists, scalars, null) replaced. A
base may extend another, up to ``MAX_EXTENDS_DEPTH`` levels, so that a method config states only its
differences from its base without long inheritance chains.

Epoch-valued keys
-----------------
Every epoch boundary of a schedule is recognised by its key name, anywhere in the tree (``model.params``
and ``pseudo`` included), so a model-specific boundary needs no registration:

* ``epochs`` (the run length, ``train.epochs``),
* keys ending in ``_epoch`` or ``_epochs`` (``warmup_epoch``, ``warmup_epochs``, ``dist_epochs``, ...),
* keys ending in ``_every`` (``eval_every``), and ``milestones``.

Values are ints, floats or lists of them. ``--epochs N`` multiplies each one by ``N / train.epochs``:
ints are rounded (a positive value stays >= 1), floats are kept fractional. Epoch indices are 0-based,
as in the reference code: ``warmup_epoch: 100`` of 200 becomes 20 of 40.

Short schedules (``--epochs N`` below the config's length)
----------------------------------------------------------
Rescaling the epoch boundaries alone is not enough: the reference optimisers take ``lr = 5e-5`` steps on
summed gradients for 200 epochs, so a 5x shorter run moves the weights 5x less. ``optim.short_schedule``
says what ``--epochs`` does to the optimiser when it compresses a schedule by ``f = train.epochs / N > 1``:

* ``batch_scaling: keep_steps`` divides ``data.batch_size`` (videos per optimizer step) by ``f`` (rounded,
  at least 1), so the short run takes about as many optimizer steps as the full one (``none``: unchanged),
* ``lr_scaling: linear`` multiplies ``optim.lr`` by ``f`` (``sqrt``: by ``sqrt(f)``; ``none``: unchanged),
* ``warmup_epochs`` (epochs of the *short* run) sets a linear learning-rate warm-up when the config has
  none, so the larger rate does not blow up the freshly initialised model in the first steps.

Feature width (``optim.width_scaling``)
--------------------------------------
The reference learning rates were tuned on 2048-d I3D features. With Adam every weight moves about ``lr``
per step whatever the width, and at a smaller width each unit sums fewer inputs, so the same ``lr`` changes
the model's outputs less (a 256-d synthetic run at the reference rate is still far from converged after the
full 200 epochs). ``width_scaling: {reference_dim: 2048, power: 0.5}`` multiplies the rate by
``(reference_dim / D) ** power`` for ``D``-dimensional input features (1 on I3D). The trainer applies it
once the data is open; the saved config keeps the configured ``lr`` and the log and ``metrics.jsonl`` show
the rate actually used.

Why: ``docs/design.md``; the measurements: ``docs/results.md``. ``--set`` overrides are applied
after rescaling, so the values given there are taken literally.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from wtal.errors import WtalInputError
from wtal.ranges import BELOW_ONE, COUNT, FRACTION, INDEX, NON_NEGATIVE, POSITIVE, UNIT, check_fields, in_range

# Sections whose contents are checked by their consumer (the model factory, the localizer, the plug-in
# factory), so ``--set`` may add keys there that the file does not have.
OPEN_SECTIONS = ("model.params", "postprocess", "pseudo", "plugins")
EXTENDS_KEY = "extends"
MAX_EXTENDS_DEPTH = 3
# keys of earlier wtal versions and what replaced them
RENAMED_KEYS = {"data.modality": "name the streams the model reads instead: model.streams: [rgb, flow] "
                                 "(or [rgb], or [flow])"}


SCHEDULE_TYPES = ("constant", "step", "inverse_sqrt")


@dataclass
class ScheduleConfig:
    """``constant``; ``step`` (``factors`` from ``milestones`` on); ``inverse_sqrt`` (fairseq's, as CPL uses it):
    the rate of optimiser update ``n`` (0-based) rises linearly from ``warmup_init_lr`` to ``optim.lr`` over
    ``warmup_steps`` updates, ``warmup_init_lr + n (lr - warmup_init_lr) / warmup_steps``, then decays as
    ``lr * sqrt(warmup_steps / n)``. Its warm-up counts updates, so ``--epochs`` leaves it alone."""

    type: str = "constant"  # constant | step | inverse_sqrt
    milestones: list[int] = in_range([], INDEX)  # epoch indices where the next factor starts
    factors: list[float] = in_range([], NON_NEGATIVE)  # lr multipliers, len(milestones) + 1 for "step"
    warmup_epochs: float = in_range(0.0, NON_NEGATIVE)  # linear lr warm-up over this many epochs (0: none)
    warmup_steps: int = in_range(0, INDEX)  # inverse_sqrt: optimiser updates of linear warm-up (>= 1)
    warmup_init_lr: float = in_range(0.0, NON_NEGATIVE)  # inverse_sqrt: the rate of the first update

    def validate(self) -> None:
        check_fields(self, "optim.schedule.")
        if self.type not in SCHEDULE_TYPES:
            raise _bad("optim.schedule.type", self.type, f"use one of {', '.join(SCHEDULE_TYPES)}")
        if self.type == "inverse_sqrt":
            if self.warmup_steps < 1:
                raise _bad("optim.schedule.warmup_steps", self.warmup_steps,
                           "inverse_sqrt needs warmup_steps >= 1 (CPL: 400 updates)")
            if self.warmup_epochs:
                raise _bad("optim.schedule.warmup_epochs", self.warmup_epochs,
                           "inverse_sqrt has its own warm-up (warmup_steps); set warmup_epochs to 0")
        elif self.warmup_steps or self.warmup_init_lr:
            raise _bad("optim.schedule.warmup_steps", self.warmup_steps,
                       "warmup_steps and warmup_init_lr belong to type inverse_sqrt; use warmup_epochs here")
        if self.type == "step":
            if len(self.factors) != len(self.milestones) + 1:
                raise _bad("optim.schedule.factors", self.factors,
                           f"give len(milestones) + 1 = {len(self.milestones) + 1} factors (the first "
                           "applies before the first milestone)")
            if any(b < a for a, b in zip(self.milestones, self.milestones[1:], strict=False)):
                raise _bad("optim.schedule.milestones", self.milestones, "milestones must not decrease")


@dataclass
class ShortScheduleConfig:
    lr_scaling: str = "none"  # linear | sqrt | none: lr multiplier when --epochs compresses the schedule
    warmup_epochs: float = in_range(0.0, NON_NEGATIVE)  # warm-up (epochs of the short run) added when none
    batch_scaling: str = "none"  # keep_steps | none: divide data.batch_size by the compression

    def validate(self) -> None:
        check_fields(self, "optim.short_schedule.")
        if self.batch_scaling not in ("keep_steps", "none"):
            raise _bad("optim.short_schedule.batch_scaling", self.batch_scaling, "use 'keep_steps' or 'none'")
        if self.lr_scaling not in ("linear", "sqrt", "none"):
            raise _bad("optim.short_schedule.lr_scaling", self.lr_scaling, "use 'linear', 'sqrt' or 'none'")


@dataclass
class WidthScalingConfig:
    reference_dim: int | None = in_range(None, COUNT)  # feature dimension the lr was tuned for (None: no scaling)
    power: float = in_range(0.5, UNIT)  # lr multiplier (reference_dim / input_dim) ** power (0.5: square root)

    def validate(self) -> None:
        check_fields(self, "optim.width_scaling.")

    def factor(self, input_dim: int) -> float:
        """The lr multiplier for features of ``input_dim`` channels (1 when disabled)."""
        if self.reference_dim is None:
            return 1.0
        return (self.reference_dim / input_dim) ** self.power


@dataclass
class OptimConfig:
    name: str = "adam"  # adam (L2 decay added to the gradient, as the reference) | adamw (decoupled)
    lr: float = in_range(1e-4, POSITIVE)
    betas: list[float] = in_range([0.9, 0.999], BELOW_ONE)  # Adam's decay rates of the moment estimates
    weight_decay: float = in_range(0.0, NON_NEGATIVE)
    grad_clip: float | None = in_range(None, POSITIVE)  # max global gradient norm per step (None: no clipping)
    # sum: a step's gradient is the sum of its videos' gradients (RSKP, FAC-Net: one backward() per video);
    # mean: divided by the step's video count (BaS-Net, WUM: a mean loss over a true batch). With Adam the two
    # differ only in how strongly the L2 weight decay, added to the gradient, weighs against it.
    batch_reduction: str = "sum"
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    short_schedule: ShortScheduleConfig = field(default_factory=ShortScheduleConfig)
    width_scaling: WidthScalingConfig = field(default_factory=WidthScalingConfig)

    def validate(self) -> None:
        check_fields(self, "optim.")
        if self.name not in ("adam", "adamw"):
            raise _bad("optim.name", self.name, "use 'adam' or 'adamw'")
        if len(self.betas) != 2:
            raise _bad("optim.betas", self.betas, "give two numbers, e.g. [0.9, 0.999]")
        if self.batch_reduction not in ("sum", "mean"):
            raise _bad("optim.batch_reduction", self.batch_reduction, "use 'sum' or 'mean'")
        self.schedule.validate()
        self.short_schedule.validate()
        self.width_scaling.validate()


@dataclass
class DataConfig:
    path: str | None = None  # set by `wtal train --data` (stored absolute)
    val_fraction: float = in_range(0.1, BELOW_ONE)  # training videos held out for model selection
    val_seed: int = in_range(0, INDEX)  # the held-out split depends on this seed only, not on train.seed
    batch_size: int = in_range(10, COUNT)  # videos per optimiser step (gradients are summed over them)
    eval_batch_size: int = in_range(16, COUNT)  # videos per forward pass at evaluation
    # padded snippets per forward pass (training micro-batches and evaluation batches); null: 2**20 / D on
    # CPU (wtal.engine.rundata.default_max_snippets). Never changes a step's videos or its summed gradient.
    max_batch_snippets: int | None = in_range(None, COUNT)
    cache: bool = True  # keep features in memory after the first read
    # streams of a video that differ by at most this many snippets are cut to the shortest (logged); more is
    # an error (wtal.data.streams.DEFAULT_MAX_LENGTH_MISMATCH says why 2)
    max_length_mismatch: int = in_range(2, INDEX)
    train_subset: str | None = None  # None: wtal.data.split_subsets decides
    test_subset: str | None = None

    def validate(self) -> None:
        check_fields(self, "data.")


@dataclass
class TrainConfig:
    epochs: int = in_range(100, COUNT)
    eval_every: int = in_range(5, COUNT)
    seed: int = in_range(0, INDEX)
    select: str = "val"  # val: best validation mAP | last: final epoch | test: best TEST mAP (logged warning)
    deterministic: bool = False
    tensorboard: bool = False
    progress: bool = True
    num_threads: int | None = in_range(None, COUNT)  # torch intra-op threads set by `wtal train` (null: torch's)
    keep_freed_memory: bool = True  # CPU on glibc: no mmap/trim churn per step (wtal.engine.allocator)
    collective_timeout_s: float = in_range(1800.0, POSITIVE)  # multi-process: a collective waits at most this

    def validate(self) -> None:
        check_fields(self, "train.")
        if self.select not in ("val", "last", "test"):
            raise _bad("train.select", self.select, "use 'val', 'last' or 'test'")


@dataclass
class EvalConfig:
    tiou: list[float] = in_range([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], FRACTION)

    def validate(self) -> None:
        check_fields(self, "eval.")
        if not self.tiou:
            raise _bad("eval.tiou", self.tiou, "give at least one tIoU threshold, e.g. [0.5]")


@dataclass
class ModelConfig:
    name: str = "mil"
    streams: list[str] = field(default_factory=lambda: ["rgb", "flow"])  # feature streams the model reads
    params: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str = "model") -> None:
        if not self.streams:
            raise _bad(f"{where}.streams", self.streams, "name at least one feature stream, e.g. [rgb, flow]")
        if len(set(self.streams)) != len(self.streams):
            raise _bad(f"{where}.streams", self.streams, "name each stream once")


@dataclass
class TeacherConfig:
    """A teacher model for plug-ins: one trained earlier (``run``), or one trained jointly with the student
    (``model``, or ``config``: a config file whose ``model`` section is copied into ``model`` when the run's
    config is resolved, so the run folder stays self-contained)."""

    run: str | None = None  # run folder of a trained model, loaded frozen (stored absolute)
    checkpoint: str = "selected"  # with run: selected (the run's own choice) | best | last
    config: str | None = None  # with model: the file it was read from (informational)
    model: ModelConfig | None = None  # a model trained jointly with the student

    def validate(self) -> None:
        if (self.run is None) == (self.model is None and self.config is None):
            raise _bad("teacher", {"run": self.run, "config": self.config},
                       "give exactly one of teacher.run (a trained run folder) and teacher.config / "
                       "teacher.model (a model trained jointly), or set teacher: null")
        if self.checkpoint not in ("selected", "best", "last"):
            raise _bad("teacher.checkpoint", self.checkpoint, "use 'selected', 'best' or 'last'")
        if self.model is not None:
            self.model.validate("teacher.model")


MISSING_FEATURES = ("error", "drop")


@dataclass
class GroundingConfig:
    """The sentence-grounding task's data side (``task: grounding``; see :mod:`wtal.tasks.grounding`).

    These settings decide what the model is fed (clips, word ids) before any model exists, and the vocabulary
    is fitted on the training sentences and stored with the run's data facts, so they belong to the data,
    not to ``model.params``: another grounding model on the same data reads the same samples."""

    num_clips: int | None = in_range(None, COUNT)  # resample every video to this many clips (CPL: 200); null: as is
    min_word_count: int = in_range(1, COUNT)  # vocabulary: words seen at least this often in training sentences
    max_vocabulary: int | None = in_range(None, COUNT)  # vocabulary: the most frequent words (CPL: 1111 / 8000)
    max_words: int = in_range(20, COUNT)  # words kept per sentence (CPL: 20)
    pos_weighting: bool = True  # content words twice as likely to be masked as function words (CPL)
    word_vectors: str | None = None  # a MiniLM wheel / model.zip / folder to initialise word vectors (stored absolute)
    missing_features: str = "error"  # a query whose video has no features: error | drop (counted in the log)

    def validate(self) -> None:
        check_fields(self, "grounding.")
        if self.missing_features not in MISSING_FEATURES:
            raise _bad("grounding.missing_features", self.missing_features, "use 'error' or 'drop'")


@dataclass
class RunConfig:
    task: str = "detection"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    postprocess: dict[str, Any] = field(default_factory=lambda: {"preset": "paper"})
    teacher: TeacherConfig | None = None
    pseudo: dict[str, Any] | None = None
    plugins: list[dict[str, Any]] = field(default_factory=list)
    grounding: GroundingConfig | None = None  # task: grounding (null: its defaults)

    def validate(self) -> RunConfig:
        from wtal.models.factory import check_hyperparameters  # lazy: torch and the models
        from wtal.tasks.base import TASK_FACTORIES, is_task_name

        if not is_task_name(self.task):
            raise _bad("task", self.task, f"use one of {sorted(TASK_FACTORIES)} or a 'module:factory' string")
        self.model.validate()
        check_hyperparameters(self.model.name, self.model.params)
        self.optim.validate()
        self.data.validate()
        self.train.validate()
        self.eval.validate()
        if self.teacher is not None:
            self.teacher.validate()
            if self.teacher.model is not None:
                check_hyperparameters(self.teacher.model.name, self.teacher.model.params)
        if self.grounding is not None:
            if self.task == "detection":
                raise _bad("grounding", "{...}", "the grounding section applies to task: grounding; remove it")
            self.grounding.validate()
        if self.data.val_fraction == 0 and self.train.select == "val":
            raise _bad("train.select", "val", "data.val_fraction is 0: hold out videos or use select: last")
        return self

    def plugin_specs(self) -> list[dict[str, Any]]:
        """Every plug-in of the run: ``pseudo`` (when set) first, then ``plugins``."""
        return ([self.pseudo] if self.pseudo else []) + list(self.plugins)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------------------------------
# dict <-> dataclasses


def from_dict(raw: dict[str, Any], source: str | Path | None = None) -> RunConfig:
    """Validate a nested dict into a :class:`RunConfig` (unknown keys and wrong types are errors)."""
    if not isinstance(raw, dict):
        raise WtalInputError("a config must be a YAML mapping of sections", path=source,
                             fix=f"start the file with sections like {_field_names(RunConfig)}")
    cfg = _build(RunConfig, raw, "", source)
    return cfg.validate()


def _build(cls: type, raw: Any, where: str, source) -> Any:
    if not isinstance(raw, dict):
        raise WtalInputError(f"config section {where or '<root>'!r} must be a mapping, got {raw!r}",
                             path=source, fix=f"give it keys among {_field_names(cls)}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        key = _join(where, unknown[0])
        if key in RENAMED_KEYS:
            raise WtalInputError(f"config key {key!r} was replaced", path=source, fix=RENAMED_KEYS[key])
        raise WtalInputError(f"unknown config key {key!r}", path=source,
                             fix=f"valid keys of {where or 'the config'}: {sorted(known)}")
    kwargs = {}
    for name in known & set(raw):
        kwargs[name] = _convert(hints[name], raw[name], _join(where, name), source)
    return cls(**kwargs)


def _convert(tp: Any, value: Any, where: str, source) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, source)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where, source)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise _type_error(where, value, "a list", source)
        return [_convert(args[0], v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(where, value, "a mapping", source)
        return copy.deepcopy(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(where, value, "a number", source)
        return float(value)
    if tp is int:
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not integral:
            raise _type_error(where, value, "an integer", source)
        return int(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise _type_error(where, value, "true or false", source)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _type_error(where, value, "a string", source)
        return value
    return value


def _type_error(where: str, value: Any, expected: str, source) -> WtalInputError:
    return WtalInputError(f"config key {where!r} must be {expected}, got {value!r}", path=source,
                          fix=f"write {where} as {expected}")


def _bad(key: str, value: Any, fix: str) -> WtalInputError:
    return WtalInputError(f"invalid config value {key} = {value!r}", fix=fix)


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


# ---------------------------------------------------------------------------------------------------
# loading, overrides, rescaling


def shipped_config_names() -> list[str]:
    """Names of the configs that ship with wtal (``wtal/configs/*.yaml``, the repository's ``configs/``)."""
    return sorted(p.stem for p in _shipped_folder().glob("*.yaml"))


def shipped_config(name: str) -> Path:
    """The shipped config ``name`` (``rskp`` or ``rskp.yaml``); an unknown name lists the shipped ones."""
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    path = _shipped_folder() / f"{stem}.yaml"
    if not path.is_file():
        raise WtalInputError(f"no config file {name!r} and no shipped config of that name",
                             fix=f"pass a YAML file path, or one of the shipped configs: "
                                 f"{', '.join(shipped_config_names())}")
    return path


def config_path(config: str | Path) -> Path:
    """The YAML file of ``--config``: an existing path, else the shipped config of that bare name.

    A file in the working directory wins over a shipped config of the same name.
    """
    path = Path(config)
    if path.is_file():
        return path
    if path.name == str(config):  # a bare name ("rskp", "rskp.yaml"); "./rskp" is a path
        return shipped_config(str(config))
    raise WtalInputError("config file not found", path=path,
                         fix=f"pass an existing YAML file, or the name of a shipped config: "
                             f"{', '.join(shipped_config_names())}")


def _shipped_folder() -> Path:
    return Path(str(resources.files("wtal") / "configs"))


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise WtalInputError("config file not found", path=path,
                             fix="pass an existing YAML file, e.g. configs/mil.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise WtalInputError(f"malformed YAML: {exc}", path=path, fix="fix the YAML syntax") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise WtalInputError("a config must be a YAML mapping of sections", path=path,
                             fix=f"start the file with sections like {_field_names(RunConfig)}")
    return raw


def load_config_tree(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a dict with its ``extends`` chain merged in (the file's own keys win)."""
    path = Path(path)
    raw = load_yaml(path)
    base_name = raw.pop(EXTENDS_KEY, None)
    if base_name is None:
        return raw
    if not isinstance(base_name, str) or not base_name.strip():
        raise WtalInputError(f"extends must name one config file, got {base_name!r}", path=path,
                             fix="write e.g. extends: rskp.yaml")
    chain = (*_chain, path.resolve())
    if len(chain) > MAX_EXTENDS_DEPTH:
        raise WtalInputError(f"config extends more than {MAX_EXTENDS_DEPTH} levels deep: "
                             + " -> ".join(str(p) for p in chain), path=path,
                             fix="extend a complete config directly instead of a chain of partial ones")
    base = _find_base(path, base_name)
    if base.resolve() in chain:
        raise WtalInputError(f"config extends itself in a cycle: {' -> '.join(str(p) for p in (*chain, base))}",
                             path=path, fix="remove the cycle from the extends keys")
    return merge_trees(load_config_tree(base, chain), raw)


def _find_base(path: Path, name: str) -> Path:
    """The base of ``extends: name``: a path relative to the extending file, else a shipped config's name."""
    candidate = path.parent / name
    if candidate.is_file():
        return candidate
    if Path(name).name == name and name.removesuffix(".yaml") in shipped_config_names():
        return shipped_config(name)
    raise WtalInputError(f"extends: base config {name!r} not found (looked for {candidate})", path=path,
                         fix="give the base config's path relative to this file, or a shipped config's name: "
                             f"{', '.join(shipped_config_names())}")


def merge_trees(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in: mappings key by key, anything else replaced (a copy)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_trees(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=c"`` -> ``(["a", "b"], yaml-parsed c)``."""
    if "=" not in text:
        raise WtalInputError(f"--set {text!r} is not KEY=VALUE", fix="write e.g. --set optim.lr=1e-4")
    key, value = text.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise WtalInputError(f"--set {text!r} has an empty key part", fix="write dotted keys like optim.lr")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise WtalInputError(f"--set {text!r}: value is not valid YAML ({exc})",
                             fix="quote the value") from exc
    # YAML 1.1 reads "1e-4" (no dot) as a string; numbers are what users mean there.
    if isinstance(parsed, str):
        try:
            parsed = float(parsed) if any(ch in parsed.lower() for ch in ".e") else parsed
        except ValueError:
            pass
    return parts, parsed


def apply_overrides(tree: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``--set a.b=c`` overrides to a fully resolved config dict (a copy is returned).

    Every key must already exist, except inside the open sections ``model.params``, ``postprocess``,
    ``pseudo`` and ``plugins`` whose consumers validate them; an unknown key is an error that lists the
    valid ones. A null ``teacher`` section is filled with its defaults when one of its keys is set; list
    items are addressed by index (``plugins.0.name``).
    """
    tree = copy.deepcopy(tree)
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = tree
        for depth, part in enumerate(parts):
            prefix = ".".join(parts[:depth])
            last = depth == len(parts) - 1
            open_here = any(prefix == s or prefix.startswith(s + ".") for s in OPEN_SECTIONS)
            if node is None and prefix in NULLABLE_SECTIONS:
                node = _set_path(tree, parts[:depth], dataclasses.asdict(NULLABLE_SECTIONS[prefix]()))
            elif node is None and open_here:  # e.g. pseudo: null -> pseudo.name=...
                node = _set_path(tree, parts[:depth], {})
            if isinstance(node, list):
                node = _list_item(node, part, text, prefix)
                if last:
                    raise WtalInputError(f"--set {text}: replace a whole list item through its keys",
                                         fix=f"set {prefix}.{part}.KEY=VALUE")
                continue
            if not isinstance(node, dict):
                raise WtalInputError(f"--set {text}: {prefix!r} is not a section", fix=f"set {prefix} itself")
            if part not in node and not open_here:
                raise WtalInputError(f"--set {text}: unknown config key {'.'.join(parts[:depth + 1])!r}",
                                     fix=f"valid keys of {prefix or 'the config'}: {sorted(node)}")
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {}) if open_here else node[part]
    return tree


def _list_item(items: list[Any], part: str, text: str, prefix: str) -> Any:
    if not part.isdigit() or int(part) >= len(items):
        raise WtalInputError(f"--set {text}: {prefix!r} is a list of {len(items)} item(s), {part!r} is not "
                             "one of its indices", fix=f"address an item as {prefix}.0, {prefix}.1, ...")
    return items[int(part)]


def _set_path(tree: dict[str, Any], parts: list[str], value: Any) -> Any:
    node = tree
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    node[int(parts[-1]) if isinstance(node, list) else parts[-1]] = value
    return value


# Optional sections that `--set` may create (filled with their defaults).
NULLABLE_SECTIONS = {"teacher": TeacherConfig, "grounding": GroundingConfig}


def is_epoch_key(key: str) -> bool:
    """True for keys that hold epoch numbers (see the module docstring)."""
    return key in ("epochs", "milestones") or key.endswith(("_epoch", "_epochs", "_every"))


def rescale_epochs(tree: dict[str, Any], epochs: int) -> dict[str, Any]:
    """Rescale every epoch-valued key of a resolved config dict to a run of ``epochs`` epochs.

    Also applies ``optim.short_schedule`` when the schedule is compressed (see the module docstring).
    """
    if epochs < 1:
        raise WtalInputError(f"--epochs {epochs} is not a positive number of epochs",
                             fix="use --epochs 1 or more")
    tree = copy.deepcopy(tree)
    old = int(tree["train"]["epochs"])
    ratio = epochs / old

    def scale(value: Any) -> Any:
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, list):
            return [scale(v) for v in value]
        if isinstance(value, int):
            return max(1, round(value * ratio)) if value > 0 else value
        if isinstance(value, float):
            return value * ratio
        return value

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if is_epoch_key(key) and not isinstance(value, dict):
                    node[key] = scale(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    short = tree["optim"]["short_schedule"]
    # short_schedule.warmup_epochs is given in epochs of the short run: keep it out of the rescaling.
    short_warmup = short.get("warmup_epochs", 0.0)
    walk(tree)
    short["warmup_epochs"] = short_warmup
    tree["train"]["epochs"] = epochs
    compression = old / epochs
    if compression > 1:
        rule = short.get("lr_scaling", "none")
        if rule == "linear":
            tree["optim"]["lr"] = float(tree["optim"]["lr"]) * compression
        elif rule == "sqrt":
            tree["optim"]["lr"] = float(tree["optim"]["lr"]) * math.sqrt(compression)
        if short.get("batch_scaling", "none") == "keep_steps":
            tree["data"]["batch_size"] = max(1, round(int(tree["data"]["batch_size"]) / compression))
        schedule = tree["optim"]["schedule"]
        if short_warmup and not schedule.get("warmup_epochs") and schedule.get("type") != "inverse_sqrt":
            schedule["warmup_epochs"] = float(short_warmup)
    return tree


def resolve_config(path: str | Path, *, overrides: list[str] | tuple[str, ...] = (),
                   epochs: int | None = None, seed: int | None = None,
                   data_path: str | Path | None = None) -> RunConfig:
    """Load a YAML config (a path or a shipped config's name, see :func:`config_path`, with its ``extends``
    chain), fill the defaults, rescale to ``epochs``, apply ``--set`` and the seed; paths to data and teacher
    runs become absolute, a teacher config file is read into ``teacher.model``."""
    path = config_path(path)
    tree = from_dict(load_config_tree(path), source=path).to_dict()
    if epochs is not None:
        tree = rescale_epochs(tree, epochs)
    tree = apply_overrides(tree, overrides)
    if seed is not None:
        tree["train"]["seed"] = int(seed)
    if data_path is not None:
        tree["data"]["path"] = str(data_path)
    cfg = from_dict(tree, source=path)
    if cfg.data.path is not None:
        cfg.data.path = str(Path(cfg.data.path).resolve())
    if cfg.teacher is not None:
        _resolve_teacher(cfg.teacher, Path(path))
    if cfg.grounding is not None and cfg.grounding.word_vectors is not None:
        cfg.grounding.word_vectors = str(Path(cfg.grounding.word_vectors).resolve())
    return cfg.validate()


def _resolve_teacher(teacher: TeacherConfig, config_path: Path) -> None:
    if teacher.run is not None:
        teacher.run = str(Path(teacher.run).resolve())
    if teacher.config is not None and teacher.model is None:
        file = Path(teacher.config)
        if not file.is_file() and (config_path.parent / file).is_file():
            file = config_path.parent / file
        teacher.config = str(file.resolve())
        section = from_dict(load_config_tree(file), source=file).model
        teacher.model = section


def load_run_config(path: str | Path) -> RunConfig:
    """Read a resolved config (``RUN/config.yaml``) back."""
    return from_dict(load_yaml(path), source=path)
