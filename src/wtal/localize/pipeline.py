"""From a CAS ``(T, C)`` and video-level scores to action instances: gate, propose, suppress, convert.

Two presets (:meth:`LocalizeConfig.from_preset`):

``paper`` (GauFuse as written, usable for any model's CAS)
    Proposals ``[s, e)`` with the ``alpha * L`` outer margin (alpha 0.25, paper §3.2 / OIC); thresholds
    *relative* to each class column's range, ``(x - min) / (max - min) > f`` with ``f = 0.025, ..., 0.975``
    (20 values, as many as the reference grid). The reference's absolute grid ``0.001 .. 0.039`` only suits
    RSKP's softmax-times-attention CAS, whose actions live below 0.04; a relative grid gives the same
    density of cuts for sigmoid, softmax or logit CAS alike. Duplicate runs are kept once. Fusion groups by
    true IoU > ``fuse_iou`` = 0.25 (the paper gives no value; 0.25 is the reference code's number, here
    applied to the stricter IoU of Eq. 1), weights ``softmax(q / T)`` with T = 0.03 (paper §4.2, test).
``reference`` (the public GauFuse code at test time)
    Absolute grid ``arange(0.001, 0.04, 0.002)``, power margin ``0.0785 L^0.9``, inner including the
    snippet after the run, stored ends ``e + 1``, no de-duplication; fusion with overlap
    ``intersection / (length of the other + 1)`` > 0.25, weights ``exp(inner / T)``, ranking and fused score
    by the contrast, T = 0.2. Known differences: ties in score are broken by our stable rule rather than
    numpy quicksort order, and the weight normaliser is ``sum(w)`` rather than ``sum(sign(inner) w)``
    (identical whenever inner > 0, i.e. for any non-negative CAS).

Both gate classes by video score ``>= class_threshold`` (0.16, the GauFuse value), or by given labels.
Without scores or labels every class is localized.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wtal.data.segments import SegmentTable
from wtal.data.timebase import snippets_to_seconds
from wtal.errors import WtalInputError
from wtal.localize.fusion import OVERLAPS, TEMPLATES, fuse_by_class
from wtal.localize.proposals import LinearMargin, PowerMargin, track_proposals, track_ranges
from wtal.localize.suppression import nms_by_class, soft_nms

PRESETS = ("paper", "reference")
METHODS = ("fusion", "nms", "soft-nms")
PAPER_THRESHOLDS = tuple(float(x) for x in np.round(np.arange(0.025, 1.0, 0.05), 6))
REFERENCE_THRESHOLDS = tuple(float(x) for x in np.arange(0.001, 0.04, 0.002))


@dataclass(frozen=True)
class LocalizeConfig:
    """All post-processing settings; build it with :meth:`from_preset`."""

    preset: str = "paper"
    method: str = "fusion"  # "fusion" | "nms" | "soft-nms"
    template: str = "gaussian"  # fusion template: "gaussian" | "exponential" | "uniform" | "t"
    temperature: float = 0.03  # fusion softmax temperature, in units of the weight logits
    # "absolute": temperature in the units of the weight logits (scores) | "relative": in units of each
    # fused CAS column's range (max - min over the video), as relative thresholds are, so it means the same
    # on a softmax CAS (range ~1) as on the reference's CAS x attention (range ~0.04)
    temperature_mode: str = "absolute"
    class_threshold: float = 0.16  # keep a class when its video score is >= this
    thresholds: tuple[float, ...] = PAPER_THRESHOLDS
    threshold_mode: str = "relative"  # "relative" (fractions of each column's range) | "absolute"
    margin: str = "linear"  # "linear": alpha * L | "power": margin_coef * L ** margin_exponent
    margin_alpha: float = 0.25
    margin_coef: float = 0.0785
    margin_exponent: float = 0.9
    score_gamma: float = 0.0  # proposal score += gamma * video score
    min_length: int = 2  # snippets
    dedup: bool = True  # keep identical runs found at several thresholds once
    fuse_iou: float = 0.25  # group members overlap the top instance by more than this
    overlap: str = "iou"  # "iou" | "reference" (intersection / (other length + 1))
    fusion_weights: str = "score"  # softmax logits: "score" (paper) | "inner" (reference code)
    t_dof: float = 3.0  # degrees of freedom of the t template
    nms_iou: float = 0.5
    soft_nms_sigma: float = 0.5
    soft_nms_method: str = "gaussian"  # "gaussian" | "linear"
    soft_nms_iou: float = 0.3  # linear soft-NMS only
    soft_nms_score_threshold: float = 0.0

    def __post_init__(self) -> None:
        _choice("preset", self.preset, PRESETS)
        _choice("method", self.method, METHODS)
        _choice("template", self.template, TEMPLATES)
        _choice("threshold_mode", self.threshold_mode, ("relative", "absolute"))
        _choice("temperature_mode", self.temperature_mode, ("relative", "absolute"))
        _choice("margin", self.margin, ("linear", "power"))
        _choice("overlap", self.overlap, OVERLAPS)
        _choice("fusion_weights", self.fusion_weights, ("score", "inner"))
        _choice("soft_nms_method", self.soft_nms_method, ("gaussian", "linear"))
        for name in ("temperature", "margin_alpha", "margin_coef", "t_dof", "soft_nms_sigma"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise WtalInputError(f"{name} must be a finite number >= 0, got {value!r}",
                                     fix=f"pass a non-negative {name}")
        for name in ("class_threshold", "score_gamma", "fuse_iou", "nms_iou", "soft_nms_iou",
                     "soft_nms_score_threshold", "margin_exponent"):
            if not np.isfinite(getattr(self, name)):
                raise WtalInputError(f"{name} must be finite, got {getattr(self, name)!r}")
        if self.t_dof == 0 or self.soft_nms_sigma == 0:
            raise WtalInputError("t_dof and soft_nms_sigma must be > 0")
        if not self.thresholds or not np.all(np.isfinite(self.thresholds)):
            raise WtalInputError(f"thresholds must be a non-empty list of finite numbers, "
                                 f"got {self.thresholds!r}")
        if int(self.min_length) < 1:
            raise WtalInputError(f"min_length must be >= 1, got {self.min_length!r}")

    @classmethod
    def from_preset(cls, name: str = "paper", **overrides) -> LocalizeConfig:
        """The ``paper`` or ``reference`` settings, with ``overrides`` (``None`` values are ignored).

        ``threshold_mode="relative"`` without ``thresholds`` takes the relative grid
        (:data:`PAPER_THRESHOLDS`) whatever the preset: the reference preset's absolute grid (0.001 to
        0.039, sized for RSKP's small CAS values) read as fractions of the range would cut every CAS at
        its floor.
        """
        _choice("preset", name, PRESETS)
        base = {} if name == "paper" else dict(
            preset="reference", temperature=0.2, thresholds=REFERENCE_THRESHOLDS, threshold_mode="absolute",
            margin="power", dedup=False, overlap="reference", fusion_weights="inner", nms_iou=0.25)
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = set(overrides) - set(fields)
        if unknown:
            raise WtalInputError(f"unknown localize setting(s): {sorted(unknown)}",
                                 fix=f"use fields of LocalizeConfig: {fields}")
        given = {k: v for k, v in overrides.items() if v is not None}
        base.update(given)
        if base.get("threshold_mode") == "relative" and "thresholds" not in given:
            base["thresholds"] = PAPER_THRESHOLDS
        if "thresholds" in base:
            grid = np.asarray(base["thresholds"], dtype=np.float64).ravel()
            base["thresholds"] = tuple(float(x) for x in grid)
        return cls(**base)

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> LocalizeConfig:
        """The config of a run's ``postprocess`` section: ``{preset, **overrides}``."""
        params = dict(section)
        return cls.from_preset(params.pop("preset", "paper"), **params)

    def outer_margin(self):
        if self.margin == "linear":
            return LinearMargin(self.margin_alpha)
        return PowerMargin(self.margin_coef, self.margin_exponent)


@dataclass(frozen=True)
class VideoInstances:
    """Action instances of one video in snippet units (``end`` exclusive), by class then descending score."""

    cls: np.ndarray  # (n,) int64 column index of the CAS
    start: np.ndarray  # (n,) float64
    end: np.ndarray  # (n,) float64
    score: np.ndarray  # (n,) float64

    def __len__(self) -> int:
        return len(self.cls)

    @classmethod
    def empty(cls) -> VideoInstances:
        return cls(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0))


def check_cas(cas, video: str | None = None, n_classes: int | None = None) -> np.ndarray:
    """``cas`` as a float64 ``(T, C)`` array with T >= 1, finite; otherwise :class:`WtalInputError`."""
    arr = np.asarray(cas)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise WtalInputError(f"a CAS must be a (T, C) array with T >= 1 and C >= 1, got shape {arr.shape}",
                             video=video, fix="store one (snippets, classes) array per video")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise WtalInputError(f"a CAS must be numeric, got dtype {arr.dtype}", video=video)
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise WtalInputError("the CAS contains NaN or inf", video=video,
                             fix="check the model output (e.g. a zero division in attention normalisation)")
    if n_classes is not None and arr.shape[1] != n_classes:
        raise WtalInputError(f"the CAS has {arr.shape[1]} class columns but {n_classes} classes are named",
                             video=video, fix="make __classes__ list one name per CAS column")
    return arr


def gated_classes(n_classes: int, video_scores, cfg: LocalizeConfig, labels=None,
                  video: str | None = None) -> np.ndarray:
    """Column indices to localize: labels > 0 if given, else video score >= threshold, else all."""
    if labels is not None:
        lab = _vector(labels, n_classes, "labels", video)
        return np.flatnonzero(lab > 0)
    if video_scores is not None:
        vs = _vector(video_scores, n_classes, "video scores", video)
        return np.flatnonzero(vs >= cfg.class_threshold)
    return np.arange(n_classes)


def localize_video(cas: np.ndarray, video_scores: np.ndarray | None, cfg: LocalizeConfig,
                   labels: np.ndarray | None = None, *, video: str | None = None) -> VideoInstances:
    """Action instances of one video from its CAS ``(T, C)`` (snippet units)."""
    _, cls, start, end, score = localize_batch([cas], [video_scores], cfg, [labels], [video])
    return VideoInstances(cls, start, end, score)


def localize_batch(cas: Sequence[np.ndarray], video_scores: Sequence[np.ndarray | None], cfg: LocalizeConfig,
                   labels: Sequence[np.ndarray | None] | None = None, names: Sequence[str | None] | None = None):
    """Localize several videos in one vectorised pass; returns ``(video, cls, start, end, score)`` arrays.

    ``video`` indexes the inputs; rows are ordered by video, class, then descending score (snippet units).
    Every gated (video, class) column becomes one track of :func:`track_proposals`, and suppression runs
    on all tracks at once, so the number of numpy calls does not grow with the number of videos.
    """
    labels = [None] * len(cas) if labels is None else labels
    names = [None] * len(cas) if names is None else names
    columns, lengths, track_video, track_class, track_score = [], [], [], [], []
    for i, (video_cas, vs, lab, name) in enumerate(zip(cas, video_scores, labels, names, strict=True)):
        video_cas = check_cas(video_cas, name)
        n_t, n_c = video_cas.shape
        keep = gated_classes(n_c, vs, cfg, lab, name)
        columns.append(video_cas[:, keep].T.ravel())
        lengths.append(np.full(len(keep), n_t))
        track_video.append(np.full(len(keep), i))
        track_class.append(keep)
        track_score.append(np.zeros(len(keep)) if vs is None else _vector(vs, n_c, "video scores", name)[keep])
    lengths = np.concatenate(lengths).astype(np.int64)
    if not len(lengths):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0)
    values = np.concatenate(columns)
    props = track_proposals(values, lengths, cfg.thresholds, cfg.outer_margin(),
                            relative=cfg.threshold_mode == "relative", min_length=cfg.min_length,
                            track_scores=np.concatenate(track_score), gamma=cfg.score_gamma,
                            convention=cfg.preset, dedup=cfg.dedup, merge_copies=True)
    column_range = track_ranges(values, lengths)[1] if needs_column_range(cfg) else None
    track, start, end, score = suppress(props.track, props.start, props.end, props.score, props.inner, cfg,
                                        props.count, column_range=column_range)
    video = np.concatenate(track_video).astype(np.int64)[track]
    cls = np.concatenate(track_class).astype(np.int64)[track]
    return video, cls, start, end, score


def needs_column_range(cfg: LocalizeConfig) -> bool:
    """Whether :func:`suppress` needs each track's CAS range (fusion with a relative temperature)."""
    return cfg.method == "fusion" and cfg.temperature_mode == "relative"


def suppress(cls, start, end, score, inner, cfg: LocalizeConfig, count=None, column_range=None):
    """Proposals of several classes -> ``(cls, start, end, score)`` by ``cfg.method``, each class on its own.

    Ordered by class, then descending score. ``count`` (default: all 1) is the number of identical copies
    each proposal stands for; the result is that of the copies listed one by one. ``column_range[c]`` is
    the range of class ``c``'s CAS column, required by ``temperature_mode="relative"`` fusion.
    """
    if cfg.method == "fusion":
        weights = inner if cfg.fusion_weights == "inner" else score
        if needs_column_range(cfg):
            if column_range is None:
                raise ValueError("temperature_mode 'relative' needs the CAS column ranges")
            spread = np.asarray(column_range, dtype=np.float64)[np.asarray(cls, dtype=np.int64)]
            # a flat column yields no proposals from relative thresholds; keep absolute units if it does
            weights = np.asarray(weights, dtype=np.float64) / np.where(spread > 0, spread, 1.0)
        return fuse_by_class(cls, start, end, score, temperature=cfg.temperature, iou_threshold=cfg.fuse_iou,
                             template=cfg.template, weights_from=weights, overlap=cfg.overlap, dof=cfg.t_dof,
                             count=count)
    if cfg.method == "nms":
        keep = nms_by_class(cls, start, end, score, cfg.nms_iou, overlap=cfg.overlap, count=count)
        return cls[keep], start[keep], end[keep], score[keep]
    if count is not None:  # soft-NMS decays each copy on its own: list them one by one
        copies = np.repeat(np.arange(len(cls)), count)
        cls, start, end, score = cls[copies], start[copies], end[copies], score[copies]
    parts = []
    for c in np.unique(cls):  # soft-NMS rescoring is sequential by nature: one loop per class
        mine = cls == c
        s, e, q = soft_nms(start[mine], end[mine], score[mine], cfg.soft_nms_sigma, method=cfg.soft_nms_method,
                           iou_threshold=cfg.soft_nms_iou, score_threshold=cfg.soft_nms_score_threshold,
                           overlap=cfg.overlap)
        parts.append((np.full(len(s), c, dtype=np.int64), s, e, q))
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0), np.zeros(0)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))


def localize_videos(cas: Mapping[str, np.ndarray], scores: Mapping[str, np.ndarray] | None,
                    classes: Sequence[str], cfg: LocalizeConfig, snippets_per_second: float,
                    labels: Mapping[str, np.ndarray] | None = None, *,
                    batch_snippets: int = 2_000_000) -> SegmentTable:
    """Localize every video; returns detections in seconds (rows by video, class, descending score).

    Videos are processed in batches of about ``batch_snippets`` CAS values to bound memory.
    """
    classes = tuple(classes)
    names = list(cas)
    for name in names:
        check_cas(cas[name], name, len(classes))
        if scores is not None and name not in scores:
            raise WtalInputError("no video scores for this video", video=name,
                                 fix="give scores for every video, or none (then every class is localized)")
    batches, size = [[]], 0
    for name in names:
        if size >= batch_snippets:
            batches.append([])
            size = 0
        batches[-1].append(name)
        size += np.size(cas[name])
    parts = [_localize_to_table(batch, cas, scores, labels, classes, cfg, snippets_per_second)
             for batch in batches if batch]
    return SegmentTable.concat(parts, classes) if parts else SegmentTable.empty(classes)


def _localize_to_table(names, cas, scores, labels, classes, cfg, snippets_per_second) -> SegmentTable:
    video, cls, start, end, score = localize_batch(
        [cas[n] for n in names], [None if scores is None else scores[n] for n in names], cfg,
        None if labels is None else [labels.get(n) for n in names], names)
    return SegmentTable(classes, np.array(names, dtype=object)[video], cls,
                        snippets_to_seconds(start, snippets_per_second),
                        snippets_to_seconds(end, snippets_per_second), score)


def instances_to_table(instances: Mapping[str, VideoInstances], classes: Sequence[str],
                       snippets_per_second: float) -> SegmentTable:
    """Snippet-unit instances of many videos -> one :class:`SegmentTable` in seconds."""
    classes = tuple(classes)
    names = list(instances)
    counts = [len(instances[n]) for n in names]
    if not sum(counts):
        return SegmentTable.empty(classes)
    video = np.repeat(np.array(names, dtype=object), counts)
    cls, start, end, score = (np.concatenate([getattr(instances[n], f) for n in names])
                              for f in ("cls", "start", "end", "score"))
    return SegmentTable(classes, video, cls.astype(np.int64), snippets_to_seconds(start, snippets_per_second),
                        snippets_to_seconds(end, snippets_per_second), score.astype(np.float64))


def _vector(x, n: int, what: str, video: str | None) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if arr.shape != (n,):
        raise WtalInputError(f"{what} must have one value per class ({n}), got shape {np.shape(x)}",
                             video=video)
    if not np.all(np.isfinite(arr)):
        raise WtalInputError(f"{what} contain NaN or inf", video=video)
    return arr


def _choice(name: str, value, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise WtalInputError(f"unknown {name} {value!r}", fix=f"use one of {list(allowed)}")
