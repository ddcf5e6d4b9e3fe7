"""Synthetic THUMOS14-like data: annotations drawn from fitted distributions, features from a latent model.

The generator is deterministic given :class:`SynthConfig` (its ``seed`` included) and writes the same set in
both feature layouts (``wtal synth``). Every knob named below is a field of :class:`SynthConfig`.

**Annotations** (fitted to the W-TALC THUMOS14 files: 412 videos, 6365 instances). Each video gets a
``duration`` from a log-normal truncated to ``duration_range``. The first ``round(train_fraction * N)`` videos
are subset ``'validation'`` (training), the rest ``'test'``. Every video has a primary class (balanced per
subset); with ``multilabel_prob`` it also has a second class, a sibling of the same venue (below) with
``sibling_multilabel_prob``. Each class ``c`` has a median instance length ``L_c`` (log-normal across classes)
and an instance rate ``lambda_c`` that falls with ``L_c`` (short actions repeat: dunks, swings). The instance
count is ``1 + NegBin(mean = lambda_c * (duration / 150 s) ** count_duration_exponent - 1)``; lengths are
log-normal around ``L_c``, with a ``long_instance_prob`` share of long ones (about a minute). Instances
never overlap, fill at most ``max_coverage`` of the video, and are separated by Dirichlet gaps of
concentration ``gap_concentration`` (small: instances cluster, as in real compilations). Times are rounded to
0.1 s. A ``ambiguous_video_fraction`` share of test videos lists some distractor episodes (below) as
"Ambiguous" segments.

**Features.** Snippet ``t`` covers ``[t, t + 1)`` in snippet units (``snippets_per_second``). Each modality
(RGB = first half of the columns, flow = second half, ``d = dim / 2`` each) has its own random dictionary of
unit-norm atoms. Concept atoms are sparse and non-negative (a random ``atom_density`` share of the channels,
at least ``min_atom_support``), like class-selective units of a post-ReLU network; nuisance and domain atoms
are dense and signed. Per video and modality the latent and the feature are::

    z[t] = b + beta_v + sum_k W[t, k] * atom_k + sigma_v * e[t]
    x[t] = s_v * output_scale * softplus(k * z[t]) / k

with ``b`` a per-channel bias (``channel_bias_mean``, ``channel_bias_sd``), ``k = softplus_sharpness`` (a
smooth ReLU, like the averaged post-ReLU activations of I3D: non-negative, rarely exactly zero), ``e``
unit-variance noise that is AR(1) across snippets (coefficient ``noise_ar``), and coefficients ``W`` whose
strengths are in units of the per-channel noise sd (an atom of strength ``a`` gives a single-snippet linear
SNR of about ``a``) at ``dim == reference_dim``; at other dimensions the concept strengths are multiplied by
``(dim / reference_dim) ** strength_dim_exponent`` (0 keeps the oracle SNR, under which a linear learner
with D weights and ~200 training videos does worse at larger D; 0.5 keeps the per-channel SNR; the default
0.3 lets D = 2048 be somewhat easier than D = 256, as wider real features are):

- *action phases*: each class has ``P = len(phase_fractions)`` sub-action phases (start, middle, end) that
  split an instance in per-instance Dirichlet proportions (the middle, ``core_phase``, lasts at least
  ``core_min_s``). Phase ``p`` of class ``c`` has an atom that shares ``phase_sharing[p]`` of its energy
  with the same phase of its venue siblings; its coefficient is
  ``strength[m][p] * w_c[m] * amp_i * overlap(snippet, phase)``, with ``phase_strength_rgb`` /
  ``phase_strength_flow`` (start: appearance, in RGB; middle: motion, strong, in flow; end: weak), a
  per-class modality balance ``w_c`` and a per-instance amplitude ``amp_i``. Only the middle is strongly
  discriminative, so a detector finds its middle and misses the ends (incomplete localization).
- *class context*: an atom per class (``context_sharing`` of it shared with its venue scene), mostly in RGB
  (``context_strength``). It is present in the instance, decays as ``exp(-distance / context_decay_s)``
  around it, stays at ``context_ambient`` over the rest of a video of that class, and is fully on in
  *distractor episodes*: background look-alikes (preparation without the action) placed between instances at
  ``distractor_rate_per_min``, which also carry the start phase at ``distractor_phase_strength``; a
  ``distractor_foreign_prob`` share imitates a class the video does not have. Together these cause
  over-complete detections and false positives.
- *venue scene*: classes are grouped into venues (THUMOS-like: one large athletics group, two pairs, the
  rest alone); the venue atom (``venue_strength``) is on for the whole video at a per-video level.
- *generic motion/person*: one atom (``motion_strength``, mostly flow), on in every action snippet and in
  background "activity" episodes (alternating renewal process, ``background_activity_fraction`` of the time,
  mean episode ``background_activity_mean_s``) at level ``background_activity_level``.
- *nuisance*: ``nuisance_rank`` dense atoms with AR(1) coefficients of sd ``nuisance_strength`` and
  correlation time ``nuisance_corr_s`` (camera motion, lighting).
- *domain shift* per video: ``domain_rank`` dense atoms with constant coefficients of sd ``domain_offset_sd``,
  a scalar bias ``beta_v ~ N(0, domain_bias_sd)``, a noise level ``sigma_v = exp(N(0, noise_level_sd))`` and
  an output gain ``s_v = exp(N(0, domain_gain_sd))``, each drawn per video and modality.

**CLIP-like stream** (``clip_dim > 0``; off by default). A second embedding space of ``clip_dim`` channels with
class-name text embeddings (``SyntheticSet.class_text``, unit rows ``sqrt(clip_text_common) g +
sqrt(clip_text_venue) q_venue + sqrt(rest) q_c``: one prompt direction ``g`` shared by every class, a part
shared with the venue siblings, a part of the class's own) and image-side unit directions that put
``clip_text_alignment`` of their energy along their class's text row (the rest is visual only). Per snippet,
from the same hidden events as the I3D-like streams, the image embedding is::

    y[t] = gap_strength * gap + action_strength * sum_p phase_cover[t, c, p] * appearance_c
           + context_strength * context[t, c] * scene_c + venue_strength * venue_level * venue_v
           + person_strength * motion[t] * person + drift[t] + noise[t]

It is *appearance and scene driven*: the **appearance** term sees every phase of an instance alike (not only
the key motion that dominates the I3D-like flow), and also a distractor episode's start-phase look-alike; the
**scene** term follows the I3D model's class-context timeline (the instance, an exponential decay around it,
an ambient level over the whole video, fully on in distractor episodes between instances); the **venue** scene
is on all video long and is aligned with the mean text of the venue's classes; ``person`` (a person moving,
along the common prompt direction) follows the generic-motion timeline; ``gap`` is the image side's common
offset (CLIP's modality gap); ``drift`` is a per-video AR(1) over ``nuisance_corr_s`` of norm
``clip_nuisance_strength`` and ``noise`` per-snippet noise of norm ``clip_noise``. Zero-shot scoring (cosine
to the text rows) therefore fires on scene look-alikes around and between instances: over-complete. The
stream and the text come from their own random streams (``[seed, 4]``, ``[seed, 5, video]``), so switching
them on changes no other output. Written as ``clip/{train,test}/VIDEO.npy`` beside the W-TALC bundle (PVLR's
layout), ``features/{split}/clip/`` in the per-video folders, and ``class_text.npy`` in both.

``SyntheticSet.snippet_labels[name][t, c]`` is true when the centre of snippet ``t`` lies in an instance of
class ``c``; ``snippet_phase[name][t]`` is 0 for background, else ``1 + p`` for phase ``p``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import ndtr, ndtri

from wtal.atomic import write_atomic
from wtal.data.annotations import AnnotationSet, Instance, VideoInfo
from wtal.data.streams import CLASS_TEXT_FILE, write_stream_files
from wtal.data.timebase import (
    I3D_SNIPPETS_PER_SECOND,
    FeatureLayout,
    seconds_to_snippets,
    snippet_count,
    snippets_to_seconds,
)
from wtal.errors import WtalInputError

BUNDLE_NAME = "SynThumos"
CLIP_STREAM = "clip"
_RGB, _FLOW = 0, 1


@dataclass
class FeatureNoiseConfig:
    """The knobs of the latent-to-feature step that both synthetic generators share (see the module docstring)."""

    # strengths above are for a joint dimension of reference_dim; at dim D they are multiplied by
    # (D / reference_dim) ** strength_dim_exponent (0.5 would keep the per-channel SNR constant)
    reference_dim: int = 256
    strength_dim_exponent: float = 0.3
    # noise and domain shift
    noise_ar: float = 0.5  # AR(1) coefficient of the per-channel noise across snippets
    nuisance_rank: int = 16
    nuisance_strength: tuple[float, float] = (1.5, 1.5)
    nuisance_corr_s: float = 4.0
    domain_rank: int = 8
    domain_offset_sd: float = 1.0
    domain_bias_sd: float = 0.2
    domain_gain_sd: float = 0.2
    noise_level_sd: float = 0.15
    channel_bias_mean: float = -0.5
    channel_bias_sd: float = 0.3
    softplus_sharpness: float = 2.0  # x = softplus(k z) / k: a smooth ReLU (k -> inf gives ReLU)
    output_scale: float = 1.0


@dataclass
class SynthConfig(FeatureNoiseConfig):
    """Every knob of the synthetic model (see the module docstring). Pairs are ``(rgb, flow)``."""

    # size
    num_videos: int = 412
    dim: int = 2048  # joint feature dimension: RGB half then flow half
    num_classes: int = 20
    seed: int = 0
    train_fraction: float = 200 / 412  # share of videos in subset 'validation' (the training split)
    snippets_per_second: float = I3D_SNIPPETS_PER_SECOND
    # video durations (seconds): log-normal fitted to THUMOS14 (log-mean 4.98, log-sd 0.88), truncated
    duration_log_mean: float = 4.98
    duration_log_sd: float = 0.88
    duration_range: tuple[float, float] = (8.9, 1673.0)
    # instances
    instance_rate_median: float = 11.0  # median over classes of the mean count in a 150 s video
    instance_rate_class_sd: float = 0.5  # log-sd of the rate across classes, beyond the length effect
    rate_length_exponent: float = 0.8  # rate ~ (class median length) ** -exponent: short actions repeat
    count_duration_exponent: float = 0.75  # mean count ~ duration ** exponent
    count_dispersion: float = 1.5  # negative-binomial shape (smaller: heavier tail)
    length_median_s: float = 3.2  # median over classes of the class median instance length
    length_class_sd: float = 0.65  # log-sd of class median lengths
    length_instance_sd: float = 0.55  # log-sd of lengths within a class
    long_instance_prob: float = 0.004  # share of long instances (replays of a whole attempt, lifts)
    long_instance_median_s: float = 40.0
    length_range: tuple[float, float] = (0.2, 120.0)
    max_coverage: float = 0.85  # instances fill at most this share of a video
    gap_concentration: float = 1.0  # Dirichlet concentration of the gaps (small: clustered instances)
    multilabel_prob: float = 0.14
    sibling_multilabel_prob: float = 0.85  # a second class comes from the same venue with this probability
    second_class_share: float = 0.4  # share of a multi-label video's instances that are the second class
    ambiguous_video_fraction: float = 0.25  # share of test videos with "Ambiguous" segments
    # feature model: dictionary
    atom_density: float = 0.05  # share of channels a concept atom activates
    min_atom_support: int = 4
    # action phases (start, middle, end)
    phase_fractions: tuple[float, ...] = (0.3, 0.4, 0.3)
    phase_fraction_concentration: float = 20.0  # Dirichlet concentration of per-instance phase proportions
    core_phase: int = 1  # the key-motion phase (the middle)
    core_min_s: float = 1.0  # the core phase lasts at least this long (or the whole instance)
    phase_sharing: tuple[float, ...] = (0.5, 0.0, 0.4)  # energy each phase atom shares with venue siblings
    phase_strength_rgb: tuple[float, ...] = (2.0, 2.0, 0.8)
    phase_strength_flow: tuple[float, ...] = (0.8, 3.5, 1.5)
    modality_balance_sd: float = 0.3  # log-sd of the per-class RGB/flow balance w_c
    instance_amplitude_sd: float = 0.35  # log-sd of the per-instance amplitude
    # class context, distractors, venue, generic motion
    context_strength: tuple[float, float] = (1.6, 0.3)
    context_sharing: float = 0.5
    context_decay_s: float = 4.0
    context_ambient: float = 0.25
    distractor_rate_per_min: float = 0.8
    distractor_length_s: float = 4.0  # median episode length
    distractor_phase_strength: float = 0.6  # start-phase amplitude inside a distractor episode
    distractor_foreign_prob: float = 0.15
    venue_strength: tuple[float, float] = (1.5, 0.2)
    motion_strength: tuple[float, float] = (0.4, 1.5)
    background_activity_fraction: float = 0.3
    background_activity_mean_s: float = 6.0
    background_activity_level: float = 0.7
    # CLIP-like stream and class-name text embeddings (0: none; their own random streams, so switching them
    # on leaves every other output unchanged)
    clip_dim: int = 0
    clip_text_common: float = 0.6  # share of every class text embedding along one prompt direction
    clip_text_venue: float = 0.15  # share a class text embedding has with its venue siblings'
    clip_text_alignment: float = 0.4  # share of an appearance / scene direction along its class's text
    clip_action_strength: float = 1.0  # every phase of an instance (appearance: the whole action is seen)
    clip_context_strength: float = 1.0  # scene look-alikes: the class-context timeline of the I3D model
    clip_venue_strength: float = 0.8  # the venue scene, all video long
    clip_person_strength: float = 0.5  # a person moving (action and background activity), along the prompt
    clip_gap_strength: float = 2.0  # the image side's common offset (CLIP's modality gap)
    clip_nuisance_strength: float = 0.6  # per-video slow drift (camera, lighting), AR(1) over nuisance_corr_s
    clip_noise: float = 0.6  # per-snippet noise (norm of the noise vector)

    def __post_init__(self) -> None:
        if self.num_videos < 2:
            raise ValueError(f"num_videos must be >= 2 (one train and one test video), got {self.num_videos}")
        if self.dim < 2 or self.dim % 2:
            raise ValueError(f"dim must be even and >= 2 (RGB half + flow half), got {self.dim}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        p = len(self.phase_fractions)
        if not (len(self.phase_sharing) == len(self.phase_strength_rgb) == len(self.phase_strength_flow) == p):
            raise ValueError("phase_fractions, phase_sharing and phase_strength_* must have the same length")
        if not 0 <= self.noise_ar < 1:
            raise ValueError(f"noise_ar must be in [0, 1), got {self.noise_ar}")
        if self.clip_dim < 0 or self.clip_dim == 1:
            raise ValueError(f"clip_dim must be 0 (no CLIP stream) or >= 2, got {self.clip_dim}")
        if not 0 <= self.clip_text_common + self.clip_text_venue <= 1:
            raise ValueError("clip_text_common + clip_text_venue must lie in [0, 1]")

    @property
    def num_train(self) -> int:
        return min(max(int(round(self.train_fraction * self.num_videos)), 1), self.num_videos - 1)


@dataclass
class SyntheticSet:
    annotations: AnnotationSet
    features: dict[str, np.ndarray]  # (T, dim) float32, non-negative
    layout: FeatureLayout
    snippet_labels: dict[str, np.ndarray]  # (T, C) bool: snippet centre inside an instance of the class
    snippet_phase: dict[str, np.ndarray] = field(default_factory=dict)  # (T,) int8: 0 background, 1 + phase
    clip: dict[str, np.ndarray] = field(default_factory=dict)  # (T, clip_dim) float32 (empty: no CLIP stream)
    class_text: np.ndarray | None = None  # (C, clip_dim) float32 unit rows, class-list order


@dataclass
class _World:
    """Everything shared by all videos: class parameters, venues and the two atom dictionaries."""

    classes: list[str]
    venue: np.ndarray  # (C,) venue index of each class
    length_log_median: np.ndarray  # (C,) log seconds
    rate: np.ndarray  # (C,) mean instance count in a 150 s video
    balance: np.ndarray  # (C, 2) modality weight w_c
    atoms: list[np.ndarray]  # per modality (n_atoms, d) float32


@dataclass
class _ClipWorld:
    """The CLIP-like embedding space: class text embeddings and the image side's unit directions."""

    text: np.ndarray  # (C, E) unit rows
    appearance: np.ndarray  # (C, E) an instance of the class, whatever its phase
    scene: np.ndarray  # (C, E) the class's surroundings (context and look-alikes)
    venue: np.ndarray  # (V, E) the venue scene
    person: np.ndarray  # (E,) a person moving: along the prompts' common direction
    gap: np.ndarray  # (E,) common offset of every image embedding


@dataclass
class _Timeline:
    """One video's hidden events, shared by the I3D-like and the CLIP-like streams."""

    phase_cover: np.ndarray  # (T, C, P) instance phases (and distractors' start phase) per snippet
    context: np.ndarray  # (T, C) class context: instance, decay around it, ambient, distractors
    motion: np.ndarray  # (T,) generic motion: action snippets and background activity
    venue_level: float


@dataclass
class _Plan:
    """One video's sampled annotations plus the hidden structure its features need."""

    info: VideoInfo
    label_idx: np.ndarray  # classes of the video
    cls: np.ndarray  # (K,) instance classes
    start: np.ndarray  # (K,) seconds
    end: np.ndarray  # (K,) seconds
    amp: np.ndarray  # (K,) instance amplitude
    phase_props: np.ndarray  # (K, P) phase proportions
    distractor_cls: np.ndarray  # (M,)
    distractor_start: np.ndarray  # (M,) seconds
    distractor_end: np.ndarray  # (M,) seconds
    ambiguous: list[tuple[float, float]]


# ------------------------------------------------------------------------------------------------ world


def _venue_sizes(num_classes: int) -> list[int]:
    """THUMOS-like grouping: about a third of the classes share one venue, then two pairs, then singletons."""
    big = max(1, round(0.35 * num_classes))
    sizes, left = [big], num_classes - big
    for _ in range(2):
        if left >= 2:
            sizes.append(2)
            left -= 2
    return sizes + [1] * left


def _sparse_atoms(rng: np.random.Generator, n: int, d: int, cfg: SynthConfig) -> np.ndarray:
    support = min(d, max(cfg.min_atom_support, int(round(cfg.atom_density * d))))
    order = np.argsort(rng.random((n, d)), axis=1)[:, :support]
    atoms = np.zeros((n, d))
    np.put_along_axis(atoms, order, np.abs(rng.standard_normal((n, support))) + 0.1, axis=1)
    return atoms / np.linalg.norm(atoms, axis=1, keepdims=True)


def _dense_atoms(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    atoms = rng.standard_normal((n, d))
    return atoms / np.linalg.norm(atoms, axis=1, keepdims=True)


def _mix(own: np.ndarray, shared: np.ndarray, share) -> np.ndarray:
    share = np.asarray(share, dtype=np.float64)
    mixed = np.sqrt(1.0 - share) * own + np.sqrt(share) * shared
    return mixed / np.linalg.norm(mixed, axis=-1, keepdims=True)


def _atom_slices(cfg: SynthConfig, num_venues: int) -> dict[str, slice]:
    """Rows of the dictionary: phases (class-major), context, venue, motion, nuisance, domain."""
    C, P = cfg.num_classes, len(cfg.phase_fractions)
    sizes = [("phase", C * P), ("context", C), ("venue", num_venues), ("motion", 1),
             ("nuisance", cfg.nuisance_rank), ("domain", cfg.domain_rank)]
    out, start = {}, 0
    for name, n in sizes:
        out[name] = slice(start, start + n)
        start += n
    return out


def _build_world(cfg: SynthConfig) -> _World:
    rng = np.random.default_rng([cfg.seed, 0])
    C, P, d = cfg.num_classes, len(cfg.phase_fractions), cfg.dim // 2
    venue = np.repeat(np.arange(len(_venue_sizes(C))), _venue_sizes(C))
    venue = venue[rng.permutation(C)]
    num_venues = int(venue.max()) + 1
    z_len = rng.standard_normal(C)
    length_log_median = math.log(cfg.length_median_s) + cfg.length_class_sd * z_len
    rate = cfg.instance_rate_median * np.exp(-cfg.rate_length_exponent * cfg.length_class_sd * z_len
                                             + cfg.instance_rate_class_sd * rng.standard_normal(C))
    w = np.exp(cfg.modality_balance_sd * rng.standard_normal(C))
    balance = np.stack([w, 1.0 / w], axis=1)
    atoms = []
    for _modality in (_RGB, _FLOW):
        own_phase = _sparse_atoms(rng, C * P, d, cfg).reshape(C, P, d)
        venue_phase = _sparse_atoms(rng, num_venues * P, d, cfg).reshape(num_venues, P, d)
        phase = _mix(own_phase, venue_phase[venue], np.asarray(cfg.phase_sharing)[None, :, None])
        venue_scene = _sparse_atoms(rng, num_venues, d, cfg)
        context = _mix(_sparse_atoms(rng, C, d, cfg), venue_scene[venue], cfg.context_sharing)
        motion = _sparse_atoms(rng, 1, d, cfg)
        nuisance = _dense_atoms(rng, cfg.nuisance_rank, d)
        domain = _dense_atoms(rng, cfg.domain_rank, d)
        atoms.append(np.concatenate([phase.reshape(C * P, d), context, venue_scene, motion, nuisance, domain])
                     .astype(np.float32))
    classes = [f"Action{c:02d}" for c in range(C)]
    return _World(classes, venue, length_log_median, rate, balance, atoms)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _build_clip_world(cfg: SynthConfig, world: _World) -> _ClipWorld:
    """Text rows ``sqrt(common) g + sqrt(venue) q_venue + sqrt(rest) q_c``; image directions share
    ``clip_text_alignment`` of their energy with their class's text (the rest is visual only)."""
    rng = np.random.default_rng([cfg.seed, 4])
    C, E = cfg.num_classes, cfg.clip_dim
    num_venues = int(world.venue.max()) + 1
    common = _dense_atoms(rng, 1, E)[0]
    venue_text = _dense_atoms(rng, num_venues, E)
    own = _dense_atoms(rng, C, E)
    rest = 1.0 - cfg.clip_text_common - cfg.clip_text_venue
    text = _unit(math.sqrt(cfg.clip_text_common) * common + math.sqrt(cfg.clip_text_venue) * venue_text[world.venue]
                 + math.sqrt(rest) * own)
    a = cfg.clip_text_alignment
    appearance = _unit(math.sqrt(a) * text + math.sqrt(1 - a) * _dense_atoms(rng, C, E))
    scene = _unit(math.sqrt(a) * text + math.sqrt(1 - a) * _dense_atoms(rng, C, E))
    venue_mean = np.stack([text[world.venue == v].mean(axis=0) for v in range(num_venues)])
    venue = _unit(math.sqrt(a) * _unit(venue_mean) + math.sqrt(1 - a) * _dense_atoms(rng, num_venues, E))
    person = _unit(math.sqrt(a) * common + math.sqrt(1 - a) * _dense_atoms(rng, 1, E)[0])
    gap = _dense_atoms(rng, 1, E)[0]
    return _ClipWorld(text.astype(np.float32), appearance, scene, venue, person, gap)


def _clip_features(world: _World, clip: _ClipWorld, cfg: SynthConfig, plan: _Plan, timeline: _Timeline,
                   index: int) -> np.ndarray:
    """(T, clip_dim) float32 image embeddings of one video (see the module docstring)."""
    rng = np.random.default_rng([cfg.seed, 5, index])
    T, E = timeline.context.shape[0], cfg.clip_dim
    venues = np.unique(world.venue[plan.label_idx])
    out = cfg.clip_gap_strength * np.broadcast_to(clip.gap, (T, E)).astype(np.float64)
    out += cfg.clip_action_strength * timeline.phase_cover.sum(axis=2) @ clip.appearance
    out += cfg.clip_context_strength * timeline.context @ clip.scene
    out += cfg.clip_venue_strength * timeline.venue_level * clip.venue[venues].sum(axis=0)
    out += cfg.clip_person_strength * timeline.motion[:, None] * clip.person
    phi = math.exp(-1.0 / seconds_to_snippets(cfg.nuisance_corr_s, cfg.snippets_per_second))
    drift = _ar1(rng.standard_normal((T, E)).astype(np.float32), phi)
    out += cfg.clip_nuisance_strength / math.sqrt(E) * drift
    out += cfg.clip_noise / math.sqrt(E) * rng.standard_normal((T, E))
    return out.astype(np.float32)


# ------------------------------------------------------------------------------------------ annotations


def _durations(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Log-normal durations truncated to ``duration_range`` by inverse-CDF sampling (no clipping spikes)."""
    lo, hi = (np.log(cfg.duration_range) - cfg.duration_log_mean) / cfg.duration_log_sd
    u = rng.uniform(ndtr(lo), ndtr(hi), size=cfg.num_videos)
    return np.exp(cfg.duration_log_mean + cfg.duration_log_sd * ndtri(u))


def _primary_classes(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    n_train = cfg.num_train
    parts = [rng.permutation(np.arange(n) % cfg.num_classes) for n in (n_train, cfg.num_videos - n_train)]
    return np.concatenate(parts)


def _second_class(world: _World, cfg: SynthConfig, rng: np.random.Generator, c1: int) -> int:
    siblings = np.flatnonzero((world.venue == world.venue[c1]) & (np.arange(cfg.num_classes) != c1))
    others = np.flatnonzero(np.arange(cfg.num_classes) != c1)
    if len(siblings) and rng.random() < cfg.sibling_multilabel_prob:
        return int(rng.choice(siblings))
    return int(rng.choice(others))


def _instance_lengths(world: _World, cfg: SynthConfig, rng: np.random.Generator, cls: np.ndarray,
                      duration: float) -> np.ndarray:
    lengths = np.exp(world.length_log_median[cls] + cfg.length_instance_sd * rng.standard_normal(len(cls)))
    long = rng.random(len(cls)) < cfg.long_instance_prob
    lengths[long] = np.exp(math.log(cfg.long_instance_median_s) + 0.5 * rng.standard_normal(int(long.sum())))
    lo, hi = cfg.length_range
    return np.clip(lengths, lo, min(hi, max(lo, cfg.max_coverage * duration)))


def _place(rng: np.random.Generator, lengths: np.ndarray, duration: float, concentration: float):
    """Non-overlapping intervals of the given lengths in random order with Dirichlet gaps."""
    free = duration - lengths.sum()
    gaps = rng.dirichlet(np.full(len(lengths) + 1, concentration)) * free
    starts = np.cumsum(gaps[:-1]) + np.concatenate([[0.0], np.cumsum(lengths[:-1])])
    return starts, starts + lengths


def _phase_proportions(cfg: SynthConfig, rng: np.random.Generator, lengths: np.ndarray) -> np.ndarray:
    """(K, P) Dirichlet phase proportions; the core phase lasts at least ``core_min_s`` (short actions are
    mostly their key motion), the other phases share the rest in their drawn ratios."""
    props = rng.dirichlet(np.asarray(cfg.phase_fractions) * cfg.phase_fraction_concentration, size=len(lengths))
    core = cfg.core_phase
    target = np.maximum(props[:, core], np.minimum(cfg.core_min_s / np.maximum(lengths, 1e-9), 1.0))
    rest = 1.0 - props[:, core]
    scale = np.divide(1.0 - target, rest, out=np.zeros_like(rest), where=rest > 0)
    props *= scale[:, None]
    props[:, core] = target
    return props


def _distractors(world: _World, cfg: SynthConfig, rng: np.random.Generator, label_idx: np.ndarray,
                 duration: float, start: np.ndarray, end: np.ndarray):
    n = rng.poisson(cfg.distractor_rate_per_min * duration / 60.0)
    lengths = np.minimum(np.exp(math.log(cfg.distractor_length_s) + 0.5 * rng.standard_normal(n)), 0.5 * duration)
    d_start = rng.uniform(0.0, 1.0, n) * (duration - lengths)
    d_end = d_start + lengths
    overlaps = (d_start[:, None] < end[None, :]) & (d_end[:, None] > start[None, :])
    keep = ~overlaps.any(axis=1)
    d_start, d_end = d_start[keep], d_end[keep]
    cls = rng.choice(label_idx, size=len(d_start))
    foreign = rng.random(len(d_start)) < cfg.distractor_foreign_prob
    for i in np.flatnonzero(foreign):  # a look-alike of another class, preferably a venue sibling
        cls[i] = _second_class(world, cfg, rng, int(cls[i]))
    return cls, np.round(d_start, 1), np.maximum(np.round(d_end, 1), np.round(d_start, 1) + 0.1)


def _plan_video(world: _World, cfg: SynthConfig, index: int, duration: float, subset: str, c1: int) -> _Plan:
    rng = np.random.default_rng([cfg.seed, 1, index])
    label_idx = np.array([c1])
    if cfg.num_classes > 1 and rng.random() < cfg.multilabel_prob:
        label_idx = np.array([c1, _second_class(world, cfg, rng, c1)])
    mean = float(world.rate[label_idx].mean()) * (duration / 150.0) ** cfg.count_duration_exponent
    extra = max(mean - 1.0, 0.0)
    count = 1 + (rng.negative_binomial(cfg.count_dispersion, cfg.count_dispersion / (cfg.count_dispersion + extra))
                 if extra > 0 else 0)
    count = max(count, len(label_idx))
    cls = np.where(rng.random(count) < cfg.second_class_share, label_idx[-1], label_idx[0])
    cls[: len(label_idx)] = label_idx  # every video label has at least one instance
    cls = cls[rng.permutation(count)]
    lengths = _instance_lengths(world, cfg, rng, cls, duration)
    keep = np.cumsum(lengths) <= cfg.max_coverage * duration
    keep[0] = True
    cls, lengths = cls[keep], lengths[keep]
    label_idx = np.unique(cls)
    start, end = _place(rng, lengths, duration, cfg.gap_concentration)
    start, end = np.round(start, 1), np.round(end, 1)
    end = np.maximum(end, start + 0.1)  # rounding keeps order; this only guards lengths near the minimum
    amp = np.exp(cfg.instance_amplitude_sd * rng.standard_normal(len(cls)))
    props = _phase_proportions(cfg, rng, end - start)
    d_cls, d_start, d_end = _distractors(world, cfg, rng, label_idx, duration, start, end)
    ambiguous: list[tuple[float, float]] = []
    if subset == "test" and len(d_cls) and rng.random() < cfg.ambiguous_video_fraction:
        pick = np.sort(rng.choice(len(d_cls), size=min(len(d_cls), int(rng.integers(1, 5))), replace=False))
        ambiguous = [(float(d_start[i]), float(d_end[i])) for i in pick]
    name = f"video_{subset}_{index + 1:07d}"
    labels = tuple(world.classes[c] for c in label_idx)
    instances = [Instance(world.classes[c], float(s), float(e)) for c, s, e in zip(cls, start, end, strict=True)]
    info = VideoInfo(name, subset, float(round(duration, 2)), labels, instances, cfg.snippets_per_second)
    return _Plan(info, label_idx, cls, start, end, amp, props, d_cls, d_start, d_end, ambiguous)


# --------------------------------------------------------------------------------------------- features


def _overlap(T: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(T, *a.shape) length of the overlap of snippet [t, t+1) with [a, b) (snippet units)."""
    t = np.arange(T, dtype=np.float64).reshape((T,) + (1,) * a.ndim)
    return np.clip(np.minimum(t + 1.0, b) - np.maximum(t, a), 0.0, 1.0)


def _ar1(x: np.ndarray, phi: float, tol: float = 1e-4) -> np.ndarray:
    """Turn iid unit-variance rows of ``x`` (T, n) into a stationary unit-variance AR(1) along axis 0, in place.

    ``y[t] = sum_k phi**k * sqrt(1 - phi**2) * x[t - k]`` (``x[0]`` carries the stationary variance), computed by
    log-step doubling (``y[s:] += phi**s * y[:-s]`` for s = 1, 2, 4, ...) and truncated at lags where
    ``phi**lag < tol``; no loop over snippets.
    """
    if phi <= 0 or len(x) < 2:
        return x
    x[1:] *= np.float32(math.sqrt(1.0 - phi * phi))
    shift, coef = 1, phi
    while coef > tol and shift < len(x):
        x[shift:] += np.float32(coef) * x[:-shift]
        shift, coef = 2 * shift, coef * coef
    return x


def _activity_mask(rng: np.random.Generator, cfg: SynthConfig, T: int) -> np.ndarray:
    """(T,) 0/1 background-activity state from an alternating renewal process (exponential episodes)."""
    frac = cfg.background_activity_fraction
    if frac <= 0 or T == 0:
        return np.zeros(T)
    on = seconds_to_snippets(cfg.background_activity_mean_s, cfg.snippets_per_second)
    off = on * (1 - frac) / max(frac, 1e-6)
    n = int(2 * T / (on + off)) + 8
    durations = rng.exponential(np.tile([off, on], n))
    bounds = np.cumsum(durations)
    while bounds[-1] < T:  # rare: extend until the episodes cover the video
        bounds = np.concatenate([bounds, bounds[-1] + np.cumsum(rng.exponential(np.tile([off, on], n)))])
    state = np.searchsorted(bounds, np.arange(T) + 0.5) % 2  # odd episodes are "on"
    return state.astype(np.float64)


def _coefficients(world: _World, cfg: SynthConfig, plan: _Plan, T: int, rng: np.random.Generator):
    """Per-modality (T, n_atoms) coefficients, plus snippet labels (T, C) and phases (T,)."""
    C, P, r = cfg.num_classes, len(cfg.phase_fractions), cfg.snippets_per_second
    slices = _atom_slices(cfg, int(world.venue.max()) + 1)
    s = seconds_to_snippets(plan.start, r)
    e = seconds_to_snippets(plan.end, r)
    bounds = s[:, None] + np.concatenate([np.zeros((len(s), 1)), np.cumsum(plan.phase_props, axis=1)],
                                         axis=1) * (e - s)[:, None]  # (K, P + 1)
    cover = _overlap(T, bounds[:, :-1], bounds[:, 1:])  # (T, K, P)
    onehot = np.eye(C)[plan.cls]  # (K, C)
    phase_cover = np.einsum("tkp,k,kc->tcp", cover, plan.amp, onehot)  # (T, C, P)
    # distractors: start phase of their class at a reduced amplitude, context fully on
    d_s = seconds_to_snippets(plan.distractor_start, r)
    d_e = seconds_to_snippets(plan.distractor_end, r)
    d_cover = _overlap(T, d_s, d_e)  # (T, M)
    d_onehot = np.eye(C)[plan.distractor_cls]
    phase_cover[:, :, 0] += cfg.distractor_phase_strength * d_cover @ d_onehot
    # context: 1 inside an instance, exp(-distance / decay) around it, ambient level over the video
    centre = np.arange(T, dtype=np.float64)[:, None] + 0.5
    dist = snippets_to_seconds(np.maximum(np.maximum(s[None, :] - centre, centre - e[None, :]), 0.0), r)
    near = np.exp(-dist / cfg.context_decay_s)  # (T, K)
    context = np.zeros((T, C))
    context[:, plan.label_idx] = cfg.context_ambient
    for c in plan.label_idx:  # one to three classes per video
        context[:, c] = np.maximum(context[:, c], near[:, plan.cls == c].max(axis=1))
    context = np.maximum(context, np.minimum(d_cover @ d_onehot, 1.0))
    # generic motion: every action snippet and background activity episodes
    action = np.minimum(cover.sum(axis=(1, 2)), 1.0)
    motion = np.maximum(action, cfg.background_activity_level * _activity_mask(rng, cfg, T))
    # labels and phases by snippet centre
    inside = (s[None, :] <= centre) & (centre < e[None, :])  # (T, K)
    labels = (inside.astype(np.float64) @ onehot) > 0
    phase_of = (centre[:, :, None] >= bounds[None, :, 1:]).sum(axis=2) + 1  # (T, K) phase index 1..P(+1)
    phase = np.where(inside, np.minimum(phase_of, P), 0).max(axis=1).astype(np.int8)

    venue_level = rng.uniform(0.5, 1.5)
    nuisance = rng.standard_normal((T, cfg.nuisance_rank * 2)).astype(np.float32)
    phi = math.exp(-1.0 / seconds_to_snippets(cfg.nuisance_corr_s, r))
    nuisance = _ar1(nuisance, phi).reshape(T, 2, cfg.nuisance_rank)
    domain = cfg.domain_offset_sd * rng.standard_normal((2, cfg.domain_rank))
    strengths = (np.asarray(cfg.phase_strength_rgb), np.asarray(cfg.phase_strength_flow))
    gain = (cfg.dim / cfg.reference_dim) ** cfg.strength_dim_exponent  # for the concept atoms only
    coefs = []
    for m in (_RGB, _FLOW):
        w = np.zeros((T, world.atoms[m].shape[0]), dtype=np.float32)
        w[:, slices["phase"]] = gain * (phase_cover * strengths[m] * world.balance[:, m, None]).reshape(T, C * P)
        w[:, slices["context"]] = gain * cfg.context_strength[m] * context
        w[:, slices["venue"]][:, np.unique(world.venue[plan.label_idx])] = gain * cfg.venue_strength[m] * venue_level
        w[:, slices["motion"]] = gain * cfg.motion_strength[m] * motion[:, None]
        w[:, slices["nuisance"]] = cfg.nuisance_strength[m] * nuisance[:, m]
        w[:, slices["domain"]] = domain[m]
        coefs.append(w)
    timeline = _Timeline(phase_cover, context, motion, venue_level)
    return coefs, labels, phase, timeline


def _video_features(world: _World, cfg: SynthConfig, plan: _Plan, index: int, channel_bias: list[np.ndarray]):
    rng = np.random.default_rng([cfg.seed, 2, index])
    T = snippet_count(plan.info.duration, cfg.snippets_per_second)
    coefs, labels, phase, timeline = _coefficients(world, cfg, plan, T, rng)
    d = cfg.dim // 2
    out = np.empty((T, cfg.dim), dtype=np.float32)
    for m in (_RGB, _FLOW):
        out[:, m * d:(m + 1) * d] = _stream_features(rng, cfg, coefs[m], world.atoms[m], channel_bias[m])
    return out, labels, phase, timeline


def _stream_features(rng: np.random.Generator, cfg, coefs: np.ndarray, atoms: np.ndarray,
                     channel_bias: np.ndarray) -> np.ndarray:
    """One modality's ``(T, d)`` features from its ``(T, n_atoms)`` coefficients: AR(1) noise at a per-video
    level, plus the atoms, channel and per-video bias, then ``s_v * output_scale * softplus(k z) / k``.

    ``cfg`` needs ``noise_ar``, ``noise_level_sd``, ``domain_bias_sd``, ``softplus_sharpness``, ``output_scale``
    and ``domain_gain_sd`` (the detection and the grounding generators share this model)."""
    z = _ar1(rng.standard_normal((len(coefs), atoms.shape[1]), dtype=np.float32), cfg.noise_ar)
    z *= np.float32(math.exp(cfg.noise_level_sd * rng.standard_normal()))
    z += coefs @ atoms
    z += channel_bias + np.float32(cfg.domain_bias_sd * rng.standard_normal())
    z *= np.float32(cfg.softplus_sharpness)
    np.logaddexp(np.float32(0.0), z, out=z)  # softplus(k z): smooth ReLU, never negative
    z *= np.float32(cfg.output_scale * math.exp(cfg.domain_gain_sd * rng.standard_normal()) / cfg.softplus_sharpness)
    return z


# ------------------------------------------------------------------------------------------------ API


def generate(cfg: SynthConfig) -> SyntheticSet:
    """The synthetic set of ``cfg``, in memory. Deterministic given ``cfg``."""
    world = _build_world(cfg)
    rng = np.random.default_rng([cfg.seed, 3])
    durations = _durations(cfg, rng)
    primary = _primary_classes(cfg, rng)
    d = cfg.dim // 2
    channel_bias = [(cfg.channel_bias_mean + cfg.channel_bias_sd * rng.standard_normal(d)).astype(np.float32)
                    for _ in (_RGB, _FLOW)]
    clip_world = _build_clip_world(cfg, world) if cfg.clip_dim else None
    videos, ambiguous, features, labels, phases, clip = {}, {}, {}, {}, {}, {}
    for i in range(cfg.num_videos):
        subset = "validation" if i < cfg.num_train else "test"
        plan = _plan_video(world, cfg, i, float(durations[i]), subset, int(primary[i]))
        name = plan.info.name
        videos[name] = plan.info
        if plan.ambiguous:
            ambiguous[name] = plan.ambiguous
        features[name], labels[name], phases[name], timeline = _video_features(world, cfg, plan, i, channel_bias)
        if clip_world is not None:
            clip[name] = _clip_features(world, clip_world, cfg, plan, timeline, i)
    annotations = AnnotationSet(list(world.classes), videos, ambiguous, source=f"synthetic(seed={cfg.seed})")
    layout = FeatureLayout.split_evenly(cfg.dim, cfg.snippets_per_second)
    return SyntheticSet(annotations, features, layout, labels, phases, clip,
                        clip_world.text if clip_world is not None else None)


def write_synthetic(out: str | Path, cfg: SynthConfig, data: SyntheticSet | None = None) -> dict[str, Path]:
    """Generate (unless ``data`` is given) and write ``out/wtalc`` (bundle ``SynThumos``) and ``out/folders``."""
    from wtal.data.folders import write_video_folders
    from wtal.data.wtalc import write_wtalc_bundle

    data = generate(cfg) if data is None else data
    out = Path(out)
    streams = {v: data.layout.split(x) for v, x in data.features.items()}
    if data.clip:  # before the bundle's feature file and the folders' gt.json, which complete each layout
        split_of = {v.name: ("test" if v.subset == "test" else "train") for v in data.annotations.videos.values()}
        write_stream_files(out / "wtalc" / CLIP_STREAM, data.clip, split_of)
        for folder in (out / "wtalc", out / "folders"):
            _save_array(folder / CLASS_TEXT_FILE, data.class_text)
        streams = {v: {**x, CLIP_STREAM: data.clip[v]} for v, x in streams.items()}
    wtalc = write_wtalc_bundle(out / "wtalc", BUNDLE_NAME, data.annotations, data.features)
    folders = write_video_folders(out / "folders", data.annotations, streams)
    return {"wtalc": Path(wtalc), "folders": Path(folders)}


def _save_array(path: Path, arr: np.ndarray) -> None:
    write_atomic(path, lambda fh: np.save(fh, arr, allow_pickle=False), binary=True)


def synth_command(out: str, dim: int | None, videos: int | None, seed: int, task: str = "detection",
                  clip_dim: int = 0) -> int:
    """``wtal synth``: write the synthetic set and print a summary (``task`` ``grounding``: the sentence-grounding
    set of :mod:`wtal.data.synthetic_grounding`). ``dim`` and ``videos`` default to each task's real size."""
    if task == "grounding":
        from wtal.data.synthetic_grounding import GroundingSynthConfig, grounding_synth_command

        defaults = GroundingSynthConfig()
        return grounding_synth_command(out, defaults.dim if dim is None else dim,
                                       defaults.num_videos if videos is None else videos, seed)
    dim = SynthConfig.dim if dim is None else dim
    videos = SynthConfig.num_videos if videos is None else videos
    if dim < 2 or dim % 2:
        raise WtalInputError(f"--dim must be an even number >= 2 (RGB half + flow half), got {dim}",
                             fix="use e.g. --dim 2048 (I3D size) or --dim 256 for a quick CPU run")
    if videos < 2:
        raise WtalInputError(f"--videos must be >= 2 (at least one train and one test video), got {videos}",
                             fix="use e.g. --videos 412 (THUMOS14 size) or --videos 40")
    if clip_dim < 0 or clip_dim == 1:
        raise WtalInputError(f"--clip-dim must be 0 (no CLIP stream) or >= 2, got {clip_dim}",
                             fix="use e.g. --clip-dim 512 (CLIP ViT-B/16 size)")
    t0 = time.perf_counter()
    cfg = SynthConfig(num_videos=videos, dim=dim, seed=seed, clip_dim=clip_dim)
    data = generate(cfg)
    t_gen = time.perf_counter() - t0
    paths = write_synthetic(out, cfg, data)
    t_all = time.perf_counter() - t0
    ann = data.annotations
    durations = np.array([v.duration for v in ann.videos.values()])
    lengths = np.array([i.end - i.start for v in ann.videos.values() for i in v.instances])
    snippets = sum(len(f) for f in data.features.values())
    multi = sum(len(v.labels) > 1 for v in ann.videos.values())
    print(f"synthetic THUMOS-like set (seed {seed}): {len(ann.names('validation'))} train + "
          f"{len(ann.names('test'))} test videos, {len(ann.classes)} classes, dim {dim}")
    print(f"  videos: {durations.min():.1f}-{durations.max():.1f} s (median {np.median(durations):.1f} s), "
          f"{snippets} snippets, {multi} multi-label")
    print(f"  instances: {len(lengths)} ({len(ann.ground_truth(ann.names('test')).label)} test), "
          f"{lengths.min():.1f}-{lengths.max():.1f} s (median {np.median(lengths):.1f} s), "
          f"{sum(len(s) for s in ann.ambiguous.values())} ambiguous segments")
    print(f"  W-TALC bundle: {paths['wtalc']}")
    print(f"  per-video folders: {paths['folders']}")
    if clip_dim:
        print(f"  CLIP-like stream: {clip_dim}-d ({CLIP_STREAM}/ in both layouts), class text embeddings "
              f"{CLASS_TEXT_FILE}")
    print(f"  time: {t_gen:.1f} s generating, {t_all - t_gen:.1f} s writing")
    return 0
