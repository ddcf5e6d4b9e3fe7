"""Weakly-supervised sentence grounding: a video and a sentence in, the segment the sentence describes out,
scored by CPL's recall (R@1 / R@5 at IoU thresholds, mIoU).

**Data folder** ``DIR``: ``train.json`` and ``test.json`` (or ``train_data.json`` / ``test_data.json``;
ActivityNet Captions' ``val_data.json`` renamed ``train_data.json`` or linked) in CPL's format
(:mod:`wtal.data.grounding`), and ``DIR/features`` with one folder of ``VIDEO.npy`` or one HDF5 file per stream.
A query's id is its position in its file. The task's data-side settings are the config's ``grounding`` section
(:class:`wtal.engine.config.GroundingConfig`).

**Splits.** A validation part is carved from the training videos (``data.val_fraction``, ``data.val_seed``;
whole videos with all their sentences) and selects the model; the test file is never used for selection.
(CPL itself evaluates on the test file after every epoch and keeps the best epoch.)

**What the model sees.** Training samples are built from the training queries *without* their timestamps
(:meth:`wtal.data.grounding.QuerySet.without_moments`): a sample's ``fields`` carry its word ids, masking
weights and query id, nothing else. Only the validation part's and the test file's moments are read, by
:meth:`GroundingTask.evaluate`, for the metric.

**Text.** The vocabulary is built from the training part's sentences only (not the validation part, not the
test file): words seen ``grounding.min_word_count`` times, at most ``grounding.max_vocabulary`` of them. Words
outside it are deleted from a sentence (as CPL does); a training sentence left without any known word is
dropped (counted in the log), a validation or test sentence is kept and predicted from the video alone. The
vocabulary (and the width of optional MiniLM word vectors, ``grounding.word_vectors``) is stored in the run's
``data.json`` (``RunData.learned``), so ``wtal predict`` encodes any data with the run's word ids.

**Features.** ``grounding.num_clips`` resamples every video to a fixed number of clips (CPL: 200) with
:func:`wtal.data.grounding.resample_clips`; by default videos keep their own length (padded and masked in a
batch). Time maps to the video through its duration, so no frame rate is needed. Queries whose video has no
features are an error, or dropped and counted (``grounding.missing_features: drop``).

**Decoding and metric.** A grounding model returns ranked segments as fractions of the duration
(``model.ranked_segments(out) -> (segments (B, K, 2), scores (B, K))``, best first); predictions are written
in seconds in the ``{"task": "grounding", "results": [...]}`` format (:mod:`wtal.evaluation.grounding`),
all ``K`` segments per query (CPL: 8). Recall is computed at ``eval.tiou`` (the shipped grounding configs:
0.1 / 0.3 / 0.5 / 0.7). Selection key: R@1 mIoU, CPL's own criterion, which uses every query's overlap
rather than a count at one threshold.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from wtal.data.batch import Batch, Sample, collate_samples
from wtal.data.batching import length_sorted_batches
from wtal.data.grounding import (
    FEATURES_DIR,
    GroundingFeatures,
    QuerySet,
    carve_validation,
    read_grounding_json,
    require_features,
    resample_clips,
    split_files,
)
from wtal.data.rundata import RunData
from wtal.data.text import EncodedSentences, Vocabulary, build_vocabulary, encode_sentences, minilm_word_vectors
from wtal.data.timebase import seconds_to_fraction
from wtal.errors import WtalInputError
from wtal.evaluation.grounding import (
    GroundingReport,
    grounding_recall,
    predictions_from_fractions,
    write_grounding_results,
)
from wtal.models.base import ModelContext

if TYPE_CHECKING:
    from wtal.engine.config import GroundingConfig, RunConfig

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ data


class VideoClips:
    """The feature streams of the data's videos, optionally resampled to a fixed number of clips, kept in
    memory after the first read when ``cache`` (shared by the splits: a video is read once)."""

    def __init__(self, features: GroundingFeatures, streams: Sequence[str], num_clips: int | None, cache: bool):
        self.features = features
        self.streams = list(streams)
        self.stream_widths = {s: features.stream_widths()[s] for s in self.streams}
        self.num_clips = num_clips
        self.cache = cache
        self._cached: dict[str, dict[str, np.ndarray]] = {}

    def __call__(self, video: str) -> dict[str, np.ndarray]:
        x = self._cached.get(video)
        if x is None:
            x = self.features.features(video, self.streams)
            if self.num_clips is not None:
                x = {s: resample_clips(v, self.num_clips) for s, v in x.items()}
            if self.cache:
                self._cached[video] = x
        return x


class QueryDataset(torch.utils.data.Dataset):
    """Item ``i``: the :class:`Sample` of query ``queries[i]``: its video's streams, ``labels=None``, ``name`` =
    the video, and ``fields`` ``{"words": (L_i,) int64 ids, "word_weights": (L_i,) float32, "query": id}``.
    The queries' moments stay here (for the metric) and never enter a sample."""

    def __init__(self, queries: QuerySet, encoded: EncodedSentences, clips: VideoClips):
        if len(encoded.lengths) != len(queries):
            raise ValueError(f"{len(encoded.lengths)} encoded sentences for {len(queries)} queries")
        self.queries = queries
        self.encoded = encoded
        self.clips = clips

    @property
    def names(self) -> list[str]:
        """The video of each item."""
        return [q.video for q in self.queries]

    @property
    def stream_widths(self) -> dict[str, int]:
        return dict(self.clips.stream_widths)

    @property
    def input_width(self) -> int:
        return sum(self.clips.stream_widths.values())

    @property
    def has_moments(self) -> bool:
        return len(self.queries) > 0 and all(q.has_moment for q in self.queries)

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, i: int) -> Sample:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        q, n = self.queries[i], int(self.encoded.lengths[i])
        fields = {"words": self.encoded.ids[i, :n], "word_weights": self.encoded.weights[i, :n], "query": q.id}
        return Sample(self.clips(q.video), None, q.video, i, fields)

    def collate(self, samples: Sequence[Sample]) -> Batch:
        return collate_samples(samples, collate_query_fields)


def collate_query_fields(samples: Sequence[Sample]) -> dict[str, Any]:
    """``words`` ``(B, L)`` int64 (0-padded), ``word_mask`` ``(B, L)`` bool, ``word_weights`` ``(B, L)`` float32 and
    ``query`` ``(B,)`` int64, with ``L`` the longest sentence (at least 1)."""
    lengths = [len(s.fields["words"]) for s in samples]
    width = max(max(lengths), 1)
    words = torch.zeros(len(samples), width, dtype=torch.int64)
    weights = torch.zeros(len(samples), width, dtype=torch.float32)
    for b, s in enumerate(samples):
        words[b, : lengths[b]] = torch.as_tensor(s.fields["words"], dtype=torch.int64)
        weights[b, : lengths[b]] = torch.as_tensor(s.fields["word_weights"], dtype=torch.float32)
    mask = torch.arange(width)[None, :] < torch.as_tensor(lengths)[:, None]
    return {"words": words, "word_mask": mask, "word_weights": weights,
            "query": torch.as_tensor([s.fields["query"] for s in samples], dtype=torch.int64)}


@dataclass(frozen=True)
class GroundingSource:
    """Where a run's grounding data came from (``path``: the data folder, recorded in the run's fingerprint)."""

    path: Path
    train_file: Path
    test_file: Path
    features: GroundingFeatures


# ------------------------------------------------------------------------------------------ result


@dataclass
class GroundingResult:
    queries: QuerySet  # the evaluated queries (with moments on the validation part and the test file)
    segments: np.ndarray  # (N, K, 2) float64 fractions of the duration, best first
    scores: np.ndarray  # (N, K) float64, non-increasing
    report: GroundingReport | None  # None when the queries have no moments (the training split)

    @property
    def selection_metric(self) -> float | None:
        """R@1 mIoU (percent), CPL's model-selection criterion."""
        return None if self.report is None else float(self.report.miou)

    def summary(self) -> dict[str, Any]:
        if self.report is None:
            return {"queries": len(self.queries)}
        return self.report.to_json()

    def headline(self) -> str:
        if self.report is None:
            return f"{len(self.queries)} queries"
        recall = "/".join(f"{r:.1f}" for r in self.report.recall_at_1)
        thresholds = "/".join(f"{t:g}" for t in self.report.thresholds)
        return f"R@1 {thresholds} {recall} mIoU {self.report.miou:.2f}"

    def report_text(self) -> str:
        if self.report is None:
            return f"{len(self.queries)} queries predicted (no moments to score them against)"
        return self.report.table()

    def write_predictions(self, path: str | Path) -> Path:
        """``{"task": "grounding", "results": [...]}``: every query's segments in seconds, best first."""
        return write_grounding_results(path, predictions_from_fractions(self.queries, self.segments, self.scores))


# ------------------------------------------------------------------------------------------ task


class GroundingTask:
    name = "grounding"

    def prepare_data(self, cfg: RunConfig, streams: Sequence[str], path: str | Path | None = None,
                     learned: dict[str, Any] | None = None) -> RunData:
        from wtal.engine.config import GroundingConfig

        path = path if path is not None else cfg.data.path
        if path is None:
            raise WtalInputError("no data path in the config", fix="pass --data DIR")
        folder = Path(path)
        settings: GroundingConfig = cfg.grounding or GroundingConfig()
        train_file, test_file = split_files(folder)
        features = GroundingFeatures(folder / FEATURES_DIR)
        available = features.videos(streams)
        drop = settings.missing_features == "drop"
        train_all, dropped_train = require_features(read_grounding_json(train_file), available, drop_missing=drop)
        test, dropped_test = require_features(read_grounding_json(test_file), available, drop_missing=drop)
        if dropped_train or dropped_test:
            logger.warning("dropped %d training and %d test queries whose video has no features "
                           "(grounding.missing_features: drop)", dropped_train, dropped_test)
        for queries in (train_all, test):
            if queries.clipped:
                logger.info("%s: %d moments reach outside their video and were clipped to it", queries.source,
                            queries.clipped)
        train, val = carve_validation(train_all, cfg.data.val_fraction, cfg.data.val_seed)
        if not len(train) or not len(test):
            raise WtalInputError("no training or no test queries", path=folder,
                                 fix="give annotation files with queries whose videos have features")
        vocabulary = (Vocabulary.from_json(learned["vocabulary"]) if learned
                      else build_vocabulary(train.sentences(), min_count=settings.min_word_count,
                                            max_size=settings.max_vocabulary))
        encode = lambda qs: encode_sentences(qs.sentences(), vocabulary, max_words=settings.max_words,  # noqa: E731
                                             pos_weighting=settings.pos_weighting)
        train, train_encoded = _drop_empty_training_sentences(train, encode(train))
        vectors = _word_vectors(settings, vocabulary, learned)
        clips = VideoClips(features, streams, settings.num_clips, cfg.data.cache)
        datasets = [QueryDataset(qs, encode(qs), clips) if len(qs) else None for qs in (val, test)]
        logger.info("grounding data %s: %d training queries (%d videos), %d validation (%d videos), %d test "
                    "(%d videos); vocabulary of %d words", folder, len(train), len(train.videos()), len(val),
                    len(val.videos()), len(test), len(test.videos()), len(vocabulary))
        facts = {"vocabulary": vocabulary.to_json(),
                 "word_vector_dim": None if vectors is None else int(vectors.shape[1])}
        return RunData(QueryDataset(train.without_moments(), train_encoded, clips), datasets[0], datasets[1],
                       streams=dict(clips.stream_widths), classes=[], snippets_per_second=0.0,
                       source=GroundingSource(folder.resolve(), train_file, test_file, features),
                       extras={"vocabulary": vocabulary, "word_vectors": vectors}, learned=facts)

    def model_context(self, data: RunData, streams: Sequence[str]) -> ModelContext:
        # snippets_per_second: none; a grounding video's time comes from its duration
        return ModelContext({s: data.streams[s] for s in streams}, (), data.snippets_per_second, None,
                            extras={"vocabulary": data.extras["vocabulary"],
                                    "word_vectors": data.extras.get("word_vectors")})

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, dataset: QueryDataset, cfg: RunConfig, device: torch.device
                 ) -> GroundingResult:
        segments, scores = rank_queries(model, dataset, device, cfg.data.eval_batch_size,
                                        cfg.data.max_batch_snippets)
        report = None
        if dataset.has_moments:
            durations = np.array([q.duration for q in dataset.queries], dtype=np.float64)
            moments = seconds_to_fraction(dataset.queries.moments(), durations[:, None])
            report = grounding_recall(segments, np.full(len(segments), segments.shape[1]), moments, cfg.eval.tiou)
        return GroundingResult(dataset.queries, segments, scores, report)


@torch.no_grad()
def rank_queries(model: torch.nn.Module, dataset: QueryDataset, device: torch.device, batch_size: int,
                 max_snippets: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every query's ranked segments ``(N, K, 2)`` (fractions, best first) and scores ``(N, K)``, in the dataset's
    order, from the model in eval mode (its mode is restored)."""
    was_training = model.training
    model.eval()
    segments: list[np.ndarray | None] = [None] * len(dataset)
    scores: list[np.ndarray | None] = [None] * len(dataset)
    try:
        for batch in length_sorted_batches(dataset, batch_size, device, max_snippets=max_snippets):
            seg, score = model.ranked_segments(model(batch))
            for b, i in enumerate(batch.index.tolist()):
                segments[i], scores[i] = seg[b], score[b]
    finally:
        model.train(was_training)
    return np.stack(segments), np.stack(scores)


def _drop_empty_training_sentences(train: QuerySet, encoded: EncodedSentences) -> tuple[QuerySet, EncodedSentences]:
    """Training queries whose sentence kept no word teach nothing to reconstruct: drop them (counted)."""
    empty = encoded.empty
    if not empty.any():
        return train, encoded
    logger.warning("dropped %d training queries whose sentence has no word of the vocabulary", int(empty.sum()))
    keep = ~empty
    kept_ids = set(train.ids()[keep].tolist())
    return (train.select(lambda q: q.id in kept_ids),
            EncodedSentences(encoded.ids[keep], encoded.lengths[keep], encoded.weights[keep], encoded.dropped_words,
                             encoded.truncated))


def _word_vectors(settings: GroundingConfig, vocabulary: Vocabulary, learned: dict[str, Any] | None
                  ) -> np.ndarray | None:
    """``(len(vocabulary), D)`` initial word vectors from ``grounding.word_vectors`` (None: learned from scratch).

    A loaded run's vectors are in its checkpoint: then only their width matters (zeros of that shape)."""
    if learned:
        dim = learned.get("word_vector_dim")
        return None if dim is None else np.zeros((len(vocabulary), int(dim)), dtype=np.float32)
    if settings.word_vectors is None:
        return None
    vectors, unknown = minilm_word_vectors(settings.word_vectors, vocabulary)
    logger.info("word vectors from %s: %d-d, %d of %d words unknown to its WordPiece vocabulary",
                settings.word_vectors, vectors.shape[1], unknown, len(vocabulary.words))
    return vectors
