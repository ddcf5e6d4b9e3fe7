"""Synthetic Charades-STA-like sentence grounding: indoor videos, sentences about their actions, two streams.

The generator is deterministic given :class:`GroundingSynthConfig` (its ``seed`` included) and writes
``OUT/features/{rgb,flow}/VIDEO.npy``, ``OUT/train.json`` and ``OUT/test.json`` in CPL's format
(``[video, duration_s, [start_s, end_s], sentence]``; ``wtal synth --task grounding``). Every knob named below
is a field of :class:`GroundingSynthConfig`.

**What it imitates.** Charades-STA: about 6k short indoor videos (about 30 s) of one person in one room, each
with a few sentences ("a person is opening the door.") that describe one action each; the measured CPL files
have 2.2 (train) / 2.6 (test) sentences per video, moments of 7-8 s (0.27 of the video, never more than half
of it, at least 2.5 s), 22-25 % of them starting at 0 s, rarely ending at the video's end, and in about 30 % of
a video's sentence pairs the two sentences share the same moment (two actions at once, e.g. holding a cup
while drinking).

**World.** A fixed vocabulary of verbs (each with its present, progressive and past forms, e.g. ``opens`` /
``opening`` / ``opened``), each in a *motion group* (open/close, take/put, eat/drink, ...) and each with the
objects it applies to (or none: ``sits down``, ``laughs``), objects in *appearance categories* (kitchenware,
furniture, textiles, devices, ...), and rooms. An *action* is a compatible (verb, object) pair (about 200);
its popularity is log-normal (``action_popularity_sd``): some actions are far more common than others.

**Annotations.** A video gets a room (uniform), a ``duration`` (log-normal ``duration_log_mean`` /
``duration_log_sd`` truncated to ``duration_range``, fitted to the per-video Charades-STA durations) and
``1 + NegBin(mean = sentences_mean - 1, shape = sentences_dispersion)`` sentences (at most ``max_sentences``).
Each sentence describes one action; the first opens an *episode* (an interval of the video); each further one
joins an existing episode with ``same_moment_prob`` (another action at the same time: identical moments), else
opens a new one. Episode lengths are log-normal (``moment_log_mean`` / ``moment_log_sd``) clipped to
``[min_moment_s, max_moment_fraction * duration]``; an episode starts at 0 with ``start_at_zero_prob``, else at
``u * (duration - length)``, ``u ~ Beta(start_beta)`` (early starts are more common). Annotated moments are the
episode's interval moved by ``annotation_jitter_s`` (normal sd, per boundary) and rounded to 0.1 s, like the
imprecise human boundaries of Charades-STA (a start at 0 s stays at 0 s); the features follow the true
interval.

**Sentences** are composed from fillers and the action's words: a subject ("a person", "the person",
"someone", ...), the verb in one of its forms ("opens", "is opening", "opened"), a determiner ("the", "a",
"their", "some" for mass nouns) and the object, optionally prefixed by "then" (``then_prob``) and with the
room ("in the kitchen", ``location_prob``, only while the sentence keeps at most ``max_words`` words).
Fillers carry no visual concept; a room word names the whole video's scene, which does not localize.

**Features.** Snippet ``t`` covers ``[t, t + 1) / snippets_per_second`` seconds. Two streams, RGB and flow,
``dim / 2`` channels each, each with its own random dictionary of unit-norm atoms (sparse non-negative concept
atoms, dense signed nuisance atoms), with the latent and the output as in the detection generator
(:mod:`wtal.data.synthetic`)::

    z[t] = b + beta_v + sum_k W[t, k] * atom_k + sigma_v * e[t]
    x[t] = s_v * output_scale * softplus(k * z[t]) / k

Concept coefficients are in units of the per-channel noise sd at ``dim == reference_dim`` and scaled by
``(dim / reference_dim) ** strength_dim_exponent`` otherwise.

- *verbs*: one atom per verb, sharing ``verb_sharing`` of its energy with its motion group (opening and
  closing look alike); strength ``verb_strength`` (RGB, flow): mainly flow.
- *objects*: one atom per object, sharing ``object_sharing`` with its category; strength ``object_strength``:
  mainly RGB. An object of the video stays visible outside its actions at ``object_ambient`` of its strength,
  rising to full strength as ``exp(-distance / object_context_s)`` near them (a door is visible all along).
- An *event* (an action over an interval) carries its verb and object at a per-event amplitude (log-normal,
  ``event_amplitude_sd``), ramping up and down over ``ramp_s`` at its ends.
- Events are the described episodes' actions, plus *undescribed actions* (Poisson, ``undescribed_rate`` per
  video: Charades videos hold more actions than their sentences) and *look-alikes*: with ``lookalike_prob`` per
  described action an episode elsewhere with the same object and another verb, or the same verb and another
  object (half each), the distractors that make a sentence's words appear outside its moment.
- *room*: an atom per room (``room_strength``, mainly RGB) over the whole video at a per-video level;
  *person motion*: one atom (``motion_strength``, mainly flow) on during every event and in background
  activity episodes (``background_activity_fraction`` of the time, mean ``background_activity_mean_s``, level
  ``background_activity_level``); *nuisance* (``nuisance_rank`` AR(1) atoms, sd ``nuisance_strength``,
  correlation ``nuisance_corr_s``), *domain shift* (``domain_rank`` constant atoms of sd ``domain_offset_sd``,
  bias ``domain_bias_sd``, noise level ``noise_level_sd``, gain ``domain_gain_sd``), AR(1) noise
  (``noise_ar``), channel bias (``channel_bias_mean``, ``channel_bias_sd``), softplus sharpness.

Videos are split at random: ``test_fraction`` of them (whole videos) form ``test.json``. Nothing here is tuned
to make a method win: strengths are set so that one snippet's concept is visible above the noise but not
obvious, as in the detection generator.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import ndtr, ndtri

from wtal.atomic import write_atomic, write_json_atomic
from wtal.data.grounding import FEATURES_DIR, Query, write_grounding_json
from wtal.data.synthetic import (
    FeatureNoiseConfig,
    _activity_mask,
    _ar1,
    _dense_atoms,
    _mix,
    _overlap,
    _sparse_atoms,
    _stream_features,
)
from wtal.data.timebase import I3D_SNIPPETS_PER_SECOND, seconds_to_snippets, snippet_count, snippets_to_seconds
from wtal.errors import WtalInputError

STREAMS = ("rgb", "flow")
_RGB, _FLOW = 0, 1

# verb: (present, progressive, past, motion group, objects it takes; () = intransitive)
_KITCHEN = ("cup", "glass", "dishes", "sandwich", "food")
_HANDHELD = ("cup", "phone", "book", "towel", "bag", "box", "blanket", "pillow", "sandwich", "glass", "laptop",
             "shoes", "clothes", "picture", "paper", "camera", "broom")
VERBS: dict[str, tuple[str, str, str, str, tuple[str, ...]]] = {
    "open": ("opens", "opening", "opened", "open_close",
             ("door", "window", "refrigerator", "cabinet", "box", "laptop", "bag", "book", "closet")),
    "close": ("closes", "closing", "closed", "open_close",
              ("door", "window", "refrigerator", "cabinet", "box", "laptop", "bag", "book", "closet")),
    "hold": ("holds", "holding", "held", "hold", _HANDHELD),
    "take": ("takes", "taking", "took", "take_put", _HANDHELD),
    "put": ("puts down", "putting down", "put down", "take_put", _HANDHELD),
    "throw": ("throws", "throwing", "threw", "throw", ("pillow", "blanket", "clothes", "towel", "bag", "shoes",
                                                       "box", "paper")),
    "eat": ("eats", "eating", "ate", "eat_drink", ("sandwich", "food")),
    "drink": ("drinks from", "drinking from", "drank from", "eat_drink", ("cup", "glass")),
    "pour": ("pours", "pouring", "poured", "eat_drink", ("water", "coffee")),
    "wash": ("washes", "washing", "washed", "wash", ("dishes", "cup", "hands", "clothes", "window", "glass")),
    "watch": ("watches", "watching", "watched", "look", ("television", "laptop", "phone", "window")),
    "look": ("looks at", "looking at", "looked at", "look", ("picture", "phone", "mirror", "book", "window",
                                                            "laptop")),
    "read": ("reads", "reading", "read", "look", ("book", "paper", "phone")),
    "sit": ("sits on", "sitting on", "sat on", "sit_stand", ("chair", "sofa", "bed", "floor")),
    "lie": ("lies on", "lying on", "lay on", "sit_stand", ("bed", "sofa", "floor")),
    "stand": ("stands up", "standing up", "stood up", "sit_stand", ()),
    "walk": ("walks through", "walking through", "walked through", "walk", ("doorway",)),
    "run": ("runs", "running", "ran", "walk", ()),
    "laugh": ("laughs", "laughing", "laughed", "face", ()),
    "smile": ("smiles", "smiling", "smiled", "face", ()),
    "sneeze": ("sneezes", "sneezing", "sneezed", "face", ()),
    "cook": ("cooks", "cooking", "cooked", "cook", ("food", "dinner")),
    "fix": ("fixes", "fixing", "fixed", "fix", ("light", "door", "chair", "laptop", "vacuum")),
    "turn_on": ("turns on", "turning on", "turned on", "switch", ("light", "laptop", "television", "vacuum")),
    "turn_off": ("turns off", "turning off", "turned off", "switch", ("light", "laptop", "television", "vacuum")),
    "dress": ("puts on", "putting on", "put on", "dress", ("shoes", "clothes", "jacket")),
    "tidy": ("tidies", "tidying", "tidied", "tidy", ("table", "shelf", "closet", "clothes", "blanket")),
    "sweep": ("sweeps", "sweeping", "swept", "tidy", ("floor",)),
    "snuggle": ("snuggles with", "snuggling with", "snuggled with", "hold", ("pillow", "blanket")),
}
OBJECT_CATEGORIES: dict[str, tuple[str, ...]] = {
    "kitchen": ("cup", "glass", "dishes", "sandwich", "food", "dinner", "water", "coffee", "refrigerator"),
    "furniture": ("table", "chair", "sofa", "bed", "shelf", "cabinet", "closet", "floor"),
    "textiles": ("towel", "blanket", "pillow", "clothes", "shoes", "jacket"),
    "devices": ("phone", "laptop", "television", "camera", "light", "vacuum"),
    "paper": ("book", "paper", "picture", "box", "bag"),
    "house": ("door", "window", "doorway", "mirror", "broom", "hands"),
}
ROOMS = ("kitchen", "bedroom", "living room", "bathroom", "hallway", "garage", "pantry", "laundry room",
         "dining room", "home office", "basement", "entryway")
SUBJECTS = ("a person", "the person", "person", "someone", "a man", "a woman", "the man", "the woman")
_SUBJECT_P = (0.35, 0.2, 0.25, 0.05, 0.05, 0.04, 0.03, 0.03)
MASS_NOUNS = frozenset({"food", "water", "coffee", "clothes", "dishes", "shoes", "dinner", "hands"})


@dataclass
class GroundingSynthConfig(FeatureNoiseConfig):
    """Every knob of the synthetic grounding model (see the module docstring). Pairs are ``(rgb, flow)``."""

    # size
    num_videos: int = 6000
    dim: int = 1024  # joint feature dimension: RGB half and flow half, written as two streams
    seed: int = 0
    test_fraction: float = 0.2
    snippets_per_second: float = I3D_SNIPPETS_PER_SECOND
    # durations (seconds): Charades-STA per-video log-mean 3.40, log-sd 0.26, 5.5-194 s
    duration_log_mean: float = 3.40
    duration_log_sd: float = 0.26
    duration_range: tuple[float, float] = (5.5, 194.0)
    # sentences and moments
    sentences_mean: float = 2.2
    sentences_dispersion: float = 2.5  # negative-binomial shape of (sentences - 1)
    max_sentences: int = 10
    same_moment_prob: float = 0.3
    moment_log_mean: float = 2.03  # 7.6 s
    moment_log_sd: float = 0.38
    min_moment_s: float = 2.5
    max_moment_fraction: float = 0.5
    start_at_zero_prob: float = 0.17  # plus starts that the annotation jitter clips to 0: about 22 % in all
    start_beta: tuple[float, float] = (1.0, 1.4)
    annotation_jitter_s: float = 0.8
    action_popularity_sd: float = 0.8
    # sentence wording
    then_prob: float = 0.1
    location_prob: float = 0.15
    max_words: int = 10
    # other events
    undescribed_rate: float = 1.0
    lookalike_prob: float = 0.5
    # feature model
    atom_density: float = 0.05
    min_atom_support: int = 4
    verb_strength: tuple[float, float] = (0.6, 2.5)
    object_strength: tuple[float, float] = (2.0, 0.4)
    verb_sharing: float = 0.5
    object_sharing: float = 0.4
    object_ambient: float = 0.25
    object_context_s: float = 3.0
    event_amplitude_sd: float = 0.35
    ramp_s: float = 1.0
    room_strength: tuple[float, float] = (1.5, 0.2)
    motion_strength: tuple[float, float] = (0.3, 1.2)
    background_activity_fraction: float = 0.3
    background_activity_mean_s: float = 4.0
    background_activity_level: float = 0.6

    def __post_init__(self) -> None:
        if self.num_videos < 2:
            raise ValueError(f"num_videos must be >= 2 (one train and one test video), got {self.num_videos}")
        if self.dim < 2 or self.dim % 2:
            raise ValueError(f"dim must be even and >= 2 (RGB half + flow half), got {self.dim}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.sentences_mean < 1 or self.max_sentences < 1:
            raise ValueError("sentences_mean and max_sentences must be >= 1")
        if not 0 <= self.noise_ar < 1:
            raise ValueError(f"noise_ar must be in [0, 1), got {self.noise_ar}")


@dataclass(frozen=True)
class Event:
    """An action happening in a video: what the features show (seconds, true interval)."""

    action: int
    start: float
    end: float
    amplitude: float
    described: bool


@dataclass
class SyntheticVideo:
    name: str
    duration: float
    room: int
    queries: list[tuple[float, float, str]]  # annotated (start, end, sentence)
    events: list[Event]
    features: dict[str, np.ndarray] = field(default_factory=dict)  # stream -> (T, dim / 2) float32


@dataclass
class _World:
    actions: list[tuple[str, str | None]]  # (verb key, object or None)
    popularity: np.ndarray  # (A,) sampling probabilities
    verbs: list[str]
    objects: list[str]
    atoms: list[np.ndarray]  # per stream: verbs, objects, rooms, motion, nuisance, domain
    slices: dict[str, slice]


def _objects() -> list[str]:
    return sorted({o for *_, objs in VERBS.values() for o in objs})


def _category_of(obj: str) -> str:
    return next(c for c, members in OBJECT_CATEGORIES.items() if obj in members)


def _build_world(cfg: GroundingSynthConfig) -> _World:
    rng = np.random.default_rng([cfg.seed, 0])
    verbs, objects = list(VERBS), _objects()
    actions = [(v, o) for v in verbs for o in (VERBS[v][4] or (None,))]
    popularity = np.exp(cfg.action_popularity_sd * rng.standard_normal(len(actions)))
    groups = sorted({VERBS[v][3] for v in verbs})
    categories = list(OBJECT_CATEGORIES)
    sizes = [("verb", len(verbs)), ("object", len(objects)), ("room", len(ROOMS)), ("motion", 1),
             ("nuisance", cfg.nuisance_rank), ("domain", cfg.domain_rank)]
    slices, start = {}, 0
    for name, n in sizes:
        slices[name] = slice(start, start + n)
        start += n
    d = cfg.dim // 2
    atoms = []
    for _stream in STREAMS:
        group_atoms = _sparse_atoms(rng, len(groups), d, cfg)
        verb_atoms = _mix(_sparse_atoms(rng, len(verbs), d, cfg),
                          group_atoms[[groups.index(VERBS[v][3]) for v in verbs]], cfg.verb_sharing)
        category_atoms = _sparse_atoms(rng, len(categories), d, cfg)
        object_atoms = _mix(_sparse_atoms(rng, len(objects), d, cfg),
                            category_atoms[[categories.index(_category_of(o)) for o in objects]], cfg.object_sharing)
        parts = [verb_atoms, object_atoms, _sparse_atoms(rng, len(ROOMS), d, cfg), _sparse_atoms(rng, 1, d, cfg),
                 _dense_atoms(rng, cfg.nuisance_rank, d), _dense_atoms(rng, cfg.domain_rank, d)]
        atoms.append(np.concatenate(parts).astype(np.float32))
    return _World(actions, popularity / popularity.sum(), verbs, objects, atoms, slices)


# ------------------------------------------------------------------------------------------ annotations


def _truncated_lognormal(rng: np.random.Generator, log_mean: float, log_sd: float, lo: float, hi: float) -> float:
    a, b = (np.log([lo, hi]) - log_mean) / log_sd
    return float(np.exp(log_mean + log_sd * ndtri(rng.uniform(ndtr(a), ndtr(b)))))


def _sentence_count(rng: np.random.Generator, cfg: GroundingSynthConfig) -> int:
    extra = cfg.sentences_mean - 1.0
    if extra <= 0:
        return 1
    r = cfg.sentences_dispersion
    return int(min(1 + rng.negative_binomial(r, r / (r + extra)), cfg.max_sentences))


def _episode(rng: np.random.Generator, cfg: GroundingSynthConfig, duration: float) -> tuple[float, float]:
    hi = max(cfg.max_moment_fraction * duration, min(cfg.min_moment_s, duration))
    length = float(np.clip(np.exp(cfg.moment_log_mean + cfg.moment_log_sd * rng.standard_normal()),
                           min(cfg.min_moment_s, hi), hi))
    start = 0.0 if rng.random() < cfg.start_at_zero_prob else float(rng.beta(*cfg.start_beta) * (duration - length))
    return start, start + length


def _annotate(rng: np.random.Generator, cfg: GroundingSynthConfig, start: float, end: float,
              duration: float) -> tuple[float, float]:
    """The human-annotated moment of an episode: jittered boundaries inside the video (an action under way
    when the video starts is marked from 0), at least ``min_moment_s`` long (re-centred when the jitter shrank
    it), rounded to 0.1 s."""
    s, e = np.array([start, end]) + cfg.annotation_jitter_s * rng.standard_normal(2)
    s, e = (max(float(s), 0.0) if start > 0 else 0.0), min(float(e), duration)
    if e - s < cfg.min_moment_s:
        half = min(cfg.min_moment_s, duration) / 2
        centre = min(max((start + end) / 2, half), duration - half)
        s, e = centre - half, centre + half
    return round(s, 1), min(round(e, 1), math.floor(duration * 10) / 10)


def _sentence(rng: np.random.Generator, cfg: GroundingSynthConfig, verb: str, obj: str | None, room: int) -> str:
    present, progressive, past, _, _ = VERBS[verb]
    subject = str(rng.choice(SUBJECTS, p=_SUBJECT_P))
    form = int(rng.integers(3))
    verb_words = (present, f"is {progressive}", past)[form]
    words = [subject, verb_words]
    if obj is not None:
        det = rng.choice(("the", "some", "their")) if obj in MASS_NOUNS else rng.choice(("the", "a", "their"))
        words.append(f"{det} {obj}")
    if rng.random() < cfg.then_prob:
        words.insert(1, "then")
    text = " ".join(words)
    location = f" in the {ROOMS[room]}"
    if rng.random() < cfg.location_prob and len((text + location).split()) <= cfg.max_words:
        text += location
    return text + "."


def _lookalike(rng: np.random.Generator, world: _World, action: int) -> int:
    """An action sharing the object (another verb) or the verb (another object) with ``action``."""
    verb, obj = world.actions[action]
    same_object = [i for i, (v, o) in enumerate(world.actions) if o == obj and v != verb and obj is not None]
    same_verb = [i for i, (v, o) in enumerate(world.actions) if v == verb and o != obj]
    pools = [p for p in (same_object, same_verb) if p]
    if not pools:
        return int(rng.choice(len(world.actions), p=world.popularity))
    pool = pools[int(rng.integers(len(pools)))]
    return int(rng.choice(pool))


def _plan_video(world: _World, cfg: GroundingSynthConfig, index: int) -> SyntheticVideo:
    rng = np.random.default_rng([cfg.seed, 1, index])
    duration = round(_truncated_lognormal(rng, cfg.duration_log_mean, cfg.duration_log_sd, *cfg.duration_range), 2)
    room = int(rng.integers(len(ROOMS)))
    n = _sentence_count(rng, cfg)
    amp = lambda: float(np.exp(cfg.event_amplitude_sd * rng.standard_normal()))  # noqa: E731
    episodes: list[tuple[tuple[float, float], tuple[float, float]]] = []  # (true interval, annotated moment)
    events: list[Event] = []
    queries: list[tuple[float, float, str]] = []
    used: set[int] = set()
    for _ in range(n):
        choices = np.flatnonzero(~np.isin(np.arange(len(world.actions)), list(used)))
        p = world.popularity[choices] / world.popularity[choices].sum()
        action = int(rng.choice(choices, p=p))
        used.add(action)
        if episodes and rng.random() < cfg.same_moment_prob:  # annotated once: the sentences share the moment
            interval, moment = episodes[int(rng.integers(len(episodes)))]
        else:
            interval = _episode(rng, cfg, duration)
            moment = _annotate(rng, cfg, *interval, duration)
            episodes.append((interval, moment))
        events.append(Event(action, *interval, amp(), True))
        verb, obj = world.actions[action]
        queries.append((*moment, _sentence(rng, cfg, verb, obj, room)))
    for described in list(events):
        if rng.random() < cfg.lookalike_prob:
            events.append(Event(_lookalike(rng, world, described.action), *_episode(rng, cfg, duration), amp(), False))
    for _ in range(rng.poisson(cfg.undescribed_rate)):
        action = int(rng.choice(len(world.actions), p=world.popularity))
        events.append(Event(action, *_episode(rng, cfg, duration), amp(), False))
    return SyntheticVideo(f"syn{index:05d}", duration, room, queries, events)


# ------------------------------------------------------------------------------------------ features


def _event_profiles(cfg: GroundingSynthConfig, events: list[Event], t: int) -> np.ndarray:
    """(T, E) coverage of each snippet by each event, ramping over ``ramp_s`` at the event's ends."""
    r = cfg.snippets_per_second
    start = seconds_to_snippets(np.array([e.start for e in events]), r)
    end = seconds_to_snippets(np.array([e.end for e in events]), r)
    cover = _overlap(t, start, end)
    centre = snippets_to_seconds(np.arange(t)[:, None] + 0.5, r)
    inside = np.minimum(centre - snippets_to_seconds(start, r), snippets_to_seconds(end, r) - centre)
    ramp = np.clip((inside + 0.5 / r) / max(cfg.ramp_s, 1e-9), 0.2, 1.0)
    return cover * ramp


def _coefficients(world: _World, cfg: GroundingSynthConfig, video: SyntheticVideo, t: int,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """Per stream ``(T, n_atoms)`` coefficients of the video's latent."""
    profile = _event_profiles(cfg, video.events, t) * np.array([e.amplitude for e in video.events])  # (T, E)
    verb_of = np.array([world.verbs.index(world.actions[e.action][0]) for e in video.events])
    obj_names = [world.actions[e.action][1] for e in video.events]
    verbs = profile @ np.eye(len(world.verbs))[verb_of]  # (T, V)
    objects = np.zeros((t, len(world.objects)))
    r = cfg.snippets_per_second
    centre = snippets_to_seconds(np.arange(t) + 0.5, r)
    for j, (event, obj) in enumerate(zip(video.events, obj_names, strict=True)):
        if obj is None:
            continue
        o = world.objects.index(obj)
        distance = np.maximum(np.maximum(event.start - centre, centre - event.end), 0.0)
        near = np.maximum(cfg.object_ambient, np.exp(-distance / cfg.object_context_s)) * event.amplitude
        objects[:, o] = np.maximum(objects[:, o], np.maximum(profile[:, j], near * (distance > 0)))
    motion = np.maximum(np.minimum(profile.sum(axis=1), 1.0),
                        cfg.background_activity_level * _activity_mask(rng, cfg, t))
    room_level = rng.uniform(0.5, 1.5)
    nuisance = _ar1(rng.standard_normal((t, 2 * cfg.nuisance_rank)).astype(np.float32),
                    math.exp(-1.0 / seconds_to_snippets(cfg.nuisance_corr_s, r))).reshape(t, 2, cfg.nuisance_rank)
    domain = cfg.domain_offset_sd * rng.standard_normal((2, cfg.domain_rank))
    gain = (cfg.dim / cfg.reference_dim) ** cfg.strength_dim_exponent
    s = world.slices
    coefs = []
    for m in (_RGB, _FLOW):
        w = np.zeros((t, world.atoms[m].shape[0]), dtype=np.float32)
        w[:, s["verb"]] = gain * cfg.verb_strength[m] * verbs
        w[:, s["object"]] = gain * cfg.object_strength[m] * objects
        w[:, s["room"].start + video.room] = gain * cfg.room_strength[m] * room_level
        w[:, s["motion"]] = gain * cfg.motion_strength[m] * motion[:, None]
        w[:, s["nuisance"]] = cfg.nuisance_strength[m] * nuisance[:, m]
        w[:, s["domain"]] = domain[m]
        coefs.append(w)
    return coefs


def _video_features(world: _World, cfg: GroundingSynthConfig, video: SyntheticVideo, index: int,
                    channel_bias: list[np.ndarray]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([cfg.seed, 2, index])
    t = snippet_count(video.duration, cfg.snippets_per_second)
    coefs = _coefficients(world, cfg, video, t, rng)
    return {stream: _stream_features(rng, cfg, coefs[m], world.atoms[m], channel_bias[m])
            for m, stream in enumerate(STREAMS)}


# ------------------------------------------------------------------------------------------ API


def iter_videos(cfg: GroundingSynthConfig, *, features: bool = True) -> Iterator[SyntheticVideo]:
    """Every video of the set in order (with its features unless ``features`` is False). Deterministic."""
    world = _build_world(cfg)
    rng = np.random.default_rng([cfg.seed, 3])
    d = cfg.dim // 2
    channel_bias = [(cfg.channel_bias_mean + cfg.channel_bias_sd * rng.standard_normal(d)).astype(np.float32)
                    for _ in STREAMS]
    for i in range(cfg.num_videos):
        video = _plan_video(world, cfg, i)
        if features:
            video.features = _video_features(world, cfg, video, i, channel_bias)
        yield video


def held_out_videos(cfg: GroundingSynthConfig) -> set[str]:
    """Names of the videos in the test split (a seeded ``test_fraction`` of them)."""
    n_test = min(max(int(round(cfg.test_fraction * cfg.num_videos)), 1), cfg.num_videos - 1)
    order = np.random.default_rng([cfg.seed, 4]).permutation(cfg.num_videos)
    return {f"syn{i:05d}" for i in order[:n_test]}


def split_queries(cfg: GroundingSynthConfig, videos: list[SyntheticVideo]) -> tuple[list[Query], list[Query]]:
    """``(train, test)`` queries in CPL's layout, ids = positions in their file."""
    held_out = held_out_videos(cfg)
    parts: tuple[list[Query], list[Query]] = ([], [])
    for v in videos:
        part = parts[v.name in held_out]
        first = len(part)
        part.extend(Query(first + j, v.name, v.duration, text, s, e) for j, (s, e, text) in enumerate(v.queries))
    return parts


def write_grounding_synthetic(out: str | Path, cfg: GroundingSynthConfig) -> dict[str, Path]:
    """Generate and write ``out/features/{rgb,flow}/VIDEO.npy``, ``out/train.json``, ``out/test.json`` and
    ``out/synth_config.json``, one video at a time (the annotation files last)."""
    out = Path(out)
    plans = []
    for video in iter_videos(cfg):
        for stream, x in video.features.items():
            path = out / FEATURES_DIR / stream / f"{video.name}.npy"
            write_atomic(path, lambda fh, x=x: np.save(fh, x, allow_pickle=False), binary=True)
        video.features = {}
        plans.append(video)
    train, test = split_queries(cfg, plans)
    write_json_atomic(out / "synth_config.json", asdict(cfg), indent=1)
    return {"train": write_grounding_json(out / "train.json", train),
            "test": write_grounding_json(out / "test.json", test), "features": out / FEATURES_DIR}


def grounding_synth_command(out: str, dim: int, videos: int, seed: int) -> int:
    """``wtal synth --task grounding``: write the synthetic grounding set and print a summary."""
    if dim < 2 or dim % 2:
        raise WtalInputError(f"--dim must be an even number >= 2 (RGB half + flow half), got {dim}",
                             fix="use e.g. --dim 1024 (Charades I3D size) or --dim 256 for a quick CPU run")
    if videos < 2:
        raise WtalInputError(f"--videos must be >= 2 (at least one train and one test video), got {videos}",
                             fix="use e.g. --videos 6000 (Charades-STA size) or --videos 200")
    t0 = time.perf_counter()
    cfg = GroundingSynthConfig(num_videos=videos, dim=dim, seed=seed)
    paths = write_grounding_synthetic(out, cfg)
    elapsed = time.perf_counter() - t0
    for split in ("train", "test"):
        rows = json.loads(paths[split].read_text())
        dur = {r[0]: r[1] for r in rows}
        rel = np.mean([(r[2][1] - r[2][0]) / r[1] for r in rows])
        print(f"{split}: {len(rows)} sentences, {len(dur)} videos ({len(rows) / len(dur):.2f} per video), "
              f"mean duration {np.mean(list(dur.values())):.1f} s, moment/duration {rel:.3f}")
    print(f"synthetic Charades-STA-like grounding set (seed {seed}, dim {dim}: rgb {dim // 2} + flow {dim // 2}) "
          f"in {out}\n  time: {elapsed:.1f} s")
    return 0
