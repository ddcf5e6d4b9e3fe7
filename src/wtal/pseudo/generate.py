"""One pseudo-label generation: teacher scores -> fused instances -> LinPro labels ``G (T, K)`` per video.

Post-processing (localization with Gaussian fusion at the generation's temperature, then LinPro) is
independent per video, so it runs over a process pool when the training set is large enough for the pool
to pay for itself (``MIN_SNIPPETS_FOR_POOL``, measured with ``benchmarks/bench_pseudo_generation.py``).
Results do not depend on the number of workers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from wtal.data.batch import Batch
from wtal.errors import WtalInputError
from wtal.localize.pipeline import LocalizeConfig, localize_video
from wtal.parallel import available_cores, map_chunks
from wtal.pseudo.linpro import LinProConfig, LinProStats, video_pseudo_labels
from wtal.pseudo.teacher import ScoreSource, VideoScores, snapshot_teacher, teacher_scores

logger = logging.getLogger(__name__)

#: below this many snippets in the training set, post-processing runs in this process: starting
#: workers and shipping the CAS would cost more than the parallel speed-up gains.
MIN_SNIPPETS_FOR_POOL = 20_000

ClassGate = Literal["labels", "predicted"]


@dataclass(frozen=True)
class GenerationConfig:
    """How a teacher's scores become pseudo labels.

    source / background_column: see :mod:`wtal.pseudo.teacher`.
    class_gate: ``"labels"`` keeps only the video's ground-truth classes (paper preset: the K action
        classes the video is labelled with); ``"predicted"`` keeps classes whose predicted video score
        reaches the localizer's ``class_threshold`` (reference: 0.16, background column included).
    teacher_dropout: leave the teacher in train mode (the reference's behaviour).
    localize: ``LocalizeConfig`` (its temperature is replaced by each generation's own).
    linpro: ``LinProConfig``.
    workers: processes for post-processing; None decides from the training-set size.
    """

    localize: LocalizeConfig
    linpro: LinProConfig
    source: ScoreSource = "localization"
    class_gate: ClassGate = "labels"
    background_column: bool = False
    teacher_dropout: bool = False
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.source not in ("localization", "distill_mix"):
            raise WtalInputError(f"unknown pseudo.source {self.source!r}",
                                 fix="use 'localization' or 'distill_mix'")
        if self.class_gate not in ("labels", "predicted"):
            raise WtalInputError(f"unknown pseudo.class_gate {self.class_gate!r}",
                                 fix="use 'labels' or 'predicted'")
        if self.background_column and self.source != "distill_mix":
            raise WtalInputError("pseudo.background_column needs pseudo.source: distill_mix",
                                 fix="set background_column: false or source: distill_mix")
        if self.workers is not None and self.workers < 1:
            raise WtalInputError(f"pseudo.workers must be >= 1 or null, got {self.workers}")


@dataclass
class GenerationTimings:
    """Seconds spent in each stage (post-processing stages summed over workers, plus wall time)."""

    teacher: float = 0.0
    localize: float = 0.0
    linpro: float = 0.0
    postprocess_wall: float = 0.0
    workers: int = 1
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Generation:
    epoch: int
    labels: dict[str, np.ndarray]  # name -> (T, K) float32
    stats: LinProStats
    timings: GenerationTimings


def _label_chunk(items: list[tuple[str, VideoScores]], localize_cfg: LocalizeConfig, linpro_cfg: LinProConfig,
                 gate_by_labels: bool) -> tuple[dict[str, np.ndarray], LinProStats, float, float]:
    stats = LinProStats()
    out: dict[str, np.ndarray] = {}
    t_loc = t_lp = 0.0
    for name, vs in items:
        t0 = time.perf_counter()
        gate = vs.labels if gate_by_labels else None
        inst = localize_video(vs.cas, vs.video_scores, localize_cfg, labels=gate, video=name)
        t1 = time.perf_counter()
        T, K = vs.cas.shape
        g = video_pseudo_labels(T, K, np.asarray(inst.cls, dtype=np.int64), inst.start, inst.end, inst.score,
                                linpro_cfg, stats)
        t2 = time.perf_counter()
        out[name] = g.astype(np.float32)
        t_loc += t1 - t0
        t_lp += t2 - t1
    return out, stats, t_loc, t_lp


def _auto_workers(scores: Mapping[str, VideoScores]) -> int:
    snippets = sum(v.cas.shape[0] for v in scores.values())
    return 1 if snippets < MIN_SNIPPETS_FOR_POOL else available_cores()


def label_videos(scores: Mapping[str, VideoScores], localize_cfg: LocalizeConfig, linpro_cfg: LinProConfig, *,
                 gate_by_labels: bool, workers: int | None = None
                 ) -> tuple[dict[str, np.ndarray], LinProStats, GenerationTimings]:
    """Localize and LinPro-label every video: ``{name: (T, K) float32}``, LP stats and stage timings."""
    items = list(scores.items())
    n_workers = max(1, min(_auto_workers(scores) if workers is None else workers, len(items)))
    t0 = time.perf_counter()
    labels, stats, t_loc, t_lp = {}, LinProStats(), 0.0, 0.0
    for part, part_stats, loc, lp in map_chunks(_label_chunk, items, n_workers, localize_cfg, linpro_cfg,
                                                gate_by_labels):
        labels.update(part)
        stats.merge(part_stats)
        t_loc += loc
        t_lp += lp
    labels = {name: labels[name] for name, _ in items}
    timings = GenerationTimings(localize=t_loc, linpro=t_lp, postprocess_wall=time.perf_counter() - t0,
                                workers=n_workers)
    return labels, stats, timings


def generate(model: torch.nn.Module, train_batches: Callable[[], Iterable[Batch]], cfg: GenerationConfig, *,
             epoch: int, temperature: float) -> Generation:
    """Snapshot ``model`` as the teacher and make one generation of pseudo labels for the training set."""
    t0 = time.perf_counter()
    teacher = snapshot_teacher(model, dropout=cfg.teacher_dropout)
    scores = teacher_scores(teacher, train_batches, source=cfg.source,
                            background_column=cfg.background_column)
    del teacher
    t_teacher = time.perf_counter() - t0
    if not scores:
        raise WtalInputError("the training set is empty: no pseudo labels can be generated")
    localize_cfg = _with_temperature(cfg.localize, temperature)
    labels, stats, timings = label_videos(scores, localize_cfg, cfg.linpro,
                                          gate_by_labels=cfg.class_gate == "labels", workers=cfg.workers)
    timings.teacher = t_teacher
    if stats.relaxed or stats.failed:
        logger.info("pseudo labels at epoch %d: %s", epoch, stats)
    return Generation(epoch=epoch, labels=labels, stats=stats, timings=timings)


def _with_temperature(cfg: LocalizeConfig, temperature: float) -> LocalizeConfig:
    return replace(cfg, temperature=float(temperature))
