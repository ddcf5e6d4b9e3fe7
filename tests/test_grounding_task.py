"""The sentence-grounding task: data preparation (validation carve, vocabulary, samples without training
timestamps), collation, the leakage guarantee, the `wtal` commands end to end, and the real Charades-STA file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from wtal.cli import main
from wtal.data.grounding import carve_validation, read_grounding_json, write_grounding_json
from wtal.data.synthetic_grounding import GroundingSynthConfig, write_grounding_synthetic
from wtal.data.text import tokenize
from wtal.engine.config import resolve_config
from wtal.engine.runs import check_compatible
from wtal.engine.trainer import Trainer
from wtal.errors import WtalInputError
from wtal.evaluation.grounding import read_grounding_results
from wtal.models.base import ModelContext
from wtal.models.factory import build_model
from wtal.tasks.grounding import GroundingTask

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
TINY_CPL = """extends: cpl_charades.yaml
model:
  streams: [rgb, flow]
  params: {hidden_dim: 16, num_heads: 2, ffn_dim: 32, video_layers: 1, text_layers: 1, word_dim: 8,
           proposal_stride: 1}
grounding: {num_clips: null}
data: {batch_size: 8, eval_batch_size: 16, val_fraction: 0.2}
optim: {schedule: {warmup_steps: 2}}
train: {epochs: 3, progress: false, num_threads: 1}
"""


def _config(tmp_path: Path, data: Path, *overrides: str, epochs: int | None = None):
    path = tmp_path / "tiny_cpl.yaml"
    path.write_text(TINY_CPL, encoding="utf-8")
    return resolve_config(path, data_path=data, epochs=epochs, overrides=list(overrides))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("grounding") / "data"
    write_grounding_synthetic(folder, GroundingSynthConfig(num_videos=30, dim=16, seed=0))
    return folder


def _hand_made(folder: Path) -> Path:
    """Six training videos (two sentences each), two test videos, streams rgb (6-d) and flow (4-d)."""
    rng = np.random.default_rng(0)
    train = [[f"tr{v}", 20.0 + v, [1.0 + v, 6.0 + v], s] for v in range(6)
             for s in (f"a person opens door number {v}.", "someone laughs.")]
    train.append(["tr0", 20.0, [2.0, 3.0], "zebra zebra."])  # one rare word
    test = [["te0", 15.0, [0.0, 4.0], "a person opens the window."], ["te1", 12.0, [3.0, 9.0], "quokka."]]
    (folder / "train.json").parent.mkdir(parents=True, exist_ok=True)
    (folder / "train.json").write_text(json.dumps(train))
    (folder / "test.json").write_text(json.dumps(test))
    for video in [f"tr{v}" for v in range(6)] + ["te0", "te1"]:
        t = int(rng.integers(8, 20))
        for stream, dim in (("rgb", 6), ("flow", 4)):
            (folder / "features" / stream).mkdir(parents=True, exist_ok=True)
            np.save(folder / "features" / stream / f"{video}.npy", rng.random((t, dim)).astype(np.float32))
    return folder


# ------------------------------------------------------------------------------------------ data


def test_prepare_data_carves_by_video_and_withholds_training_moments(tmp_path):
    data = _hand_made(tmp_path / "data")
    cfg = _config(tmp_path, data, "data.val_fraction=0.34")
    run = GroundingTask().prepare_data(cfg, ["rgb", "flow"])
    train_videos, val_videos = set(run.train.names), set(run.val.names)
    assert len(val_videos) == 2 and len(train_videos) == 4 and not train_videos & val_videos
    assert set(run.test.names) == {"te0", "te1"} and run.streams == {"rgb": 6, "flow": 4}
    # the training part never carries a moment; the validation part and the test file do (for the metric)
    assert not any(q.has_moment for q in run.train.queries) and run.val.has_moments and run.test.has_moments
    sample = run.train[0]
    assert set(sample.fields) == {"words", "word_weights", "query"} and sample.labels is None
    # same carve as the reader's, by seed; another seed moves other videos
    _, val = carve_validation(read_grounding_json(data / "train.json"), 0.34, cfg.data.val_seed)
    assert set(val.videos()) == val_videos
    other = GroundingTask().prepare_data(_config(tmp_path, data, "data.val_fraction=0.34", "data.val_seed=5"),
                                         ["rgb"])
    assert set(other.val.names) != val_videos and other.streams == {"rgb": 6}


def test_vocabulary_comes_from_the_training_part_and_encodes_samples(tmp_path):
    data = _hand_made(tmp_path / "data")
    run = GroundingTask().prepare_data(_config(tmp_path, data, "data.val_fraction=0.34"), ["rgb", "flow"])
    vocabulary = run.extras["vocabulary"]
    train_words = {t for q in run.train.queries for t in tokenize(q.sentence)}
    assert set(vocabulary.words) == train_words  # built from the training part only
    assert "window" not in vocabulary and "quokka" not in vocabulary  # test-only words
    for dataset in (run.train, run.val, run.test):
        for i in range(len(dataset)):
            q, words = dataset.queries[i], dataset[i].fields["words"]
            assert [vocabulary.word(int(w)) for w in words] == [t for t in tokenize(q.sentence) if t in vocabulary]
            assert dataset[i].fields["query"] == q.id
    # a test sentence without a known word is kept (empty) and predicted; the stored facts rebuild the ids
    assert len(run.test[1].fields["words"]) == 0
    again = GroundingTask().prepare_data(_config(tmp_path, data, "data.val_fraction=0.34"), ["rgb"],
                                         learned=json.loads(json.dumps(run.learned)))
    assert again.extras["vocabulary"] == vocabulary


def test_training_sentences_without_known_words_are_dropped_and_cuts_apply(tmp_path, caplog):
    data = _hand_made(tmp_path / "data")
    cfg = _config(tmp_path, data, "data.val_fraction=0", "train.select=last", "grounding.min_word_count=3")
    with caplog.at_level("WARNING"):
        run = GroundingTask().prepare_data(cfg, ["rgb", "flow"])
    vocabulary = run.extras["vocabulary"]
    assert "zebra" not in vocabulary and "door" in vocabulary and "laughs" in vocabulary  # zebra: 2 < 3
    assert all(q.sentence != "zebra zebra." for q in run.train.queries) and len(run.train) == 12
    assert "dropped 1 training queries" in caplog.text
    capped = GroundingTask().prepare_data(_config(tmp_path, data, "grounding.max_vocabulary=3"), ["rgb"])
    assert len(capped.extras["vocabulary"].words) == 3


def test_collate_pads_words_and_keeps_query_ids(tmp_path):
    data = _hand_made(tmp_path / "data")
    run = GroundingTask().prepare_data(_config(tmp_path, data), ["rgb", "flow"])
    samples = [run.test[1], run.test[0]]  # an empty sentence first
    batch = run.test.collate(samples)
    f = batch.fields
    n = len(samples[1].fields["words"])
    assert f["words"].shape == (2, n) and f["word_mask"].sum(1).tolist() == [0, n]
    assert f["words"][1].tolist() == samples[1].fields["words"].tolist() and f["query"].tolist() == [1, 0]
    assert torch.equal(f["word_weights"][1], torch.as_tensor(samples[1].fields["word_weights"]))
    assert not f["words"][0].any() and batch.labels is None


def test_missing_features_error_or_drop(tmp_path):
    data = _hand_made(tmp_path / "data")
    for stream in ("rgb", "flow"):
        (data / "features" / stream / "tr5.npy").unlink()
    with pytest.raises(WtalInputError, match="have no features"):
        GroundingTask().prepare_data(_config(tmp_path, data), ["rgb"])
    run = GroundingTask().prepare_data(_config(tmp_path, data, "grounding.missing_features=drop"), ["rgb"])
    assert "tr5" not in set(run.train.names) | set(run.val.names)


def test_fixed_length_resampling(tmp_path):
    data = _hand_made(tmp_path / "data")
    run = GroundingTask().prepare_data(_config(tmp_path, data, "grounding.num_clips=16"), ["rgb", "flow"])
    assert {run.test[i].length for i in range(2)} == {16} and run.test[0].inputs["flow"].shape == (16, 4)


def test_a_cpl_model_needs_a_vocabulary_and_a_run_with_other_words_is_refused(tmp_path):
    with pytest.raises(WtalInputError, match="vocabulary"):
        build_model("cpl", ModelContext({"rgb": 4}, ()))
    data = _hand_made(tmp_path / "data")
    run = GroundingTask().prepare_data(_config(tmp_path, data), ["rgb"])
    fingerprint = {"task": "grounding", "streams": {"rgb": 6}, "learned": run.learned}
    other = json.loads(json.dumps(fingerprint))
    other["learned"]["vocabulary"]["words"][0] = "elsewhere"
    with pytest.raises(WtalInputError, match="another vocabulary"):
        check_compatible(fingerprint, other, what="teacher", path=tmp_path, fix="x")


# ------------------------------------------------------------------------------------------ leakage


def _rewrite_moments(src: Path, dst: Path, queries: set[int], seed: int) -> None:
    """A copy of the data folder whose training file gives ``queries`` random moments inside their videos."""
    shutil.copytree(src, dst, symlinks=True)
    rng = np.random.default_rng(seed)
    rows = json.loads((src / "train.json").read_text())
    for i in queries:
        duration = rows[i][1]
        start = float(rng.uniform(0, 0.7 * duration))
        rows[i][2] = [round(start, 2), round(start + float(rng.uniform(0.5, 0.3 * duration)), 2)]
    (dst / "train.json").write_text(json.dumps(rows))


def _epochs(cfg, epochs: int) -> tuple[list[dict[str, torch.Tensor]], list[float]]:
    trainer = Trainer(cfg, None, device="cpu")
    weights, selection = [], []
    for epoch in range(epochs):
        trainer.train_epoch(epoch)
        weights.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        selection.append(trainer.evaluate("val").selection_metric)
    return weights, selection


def test_training_timestamps_never_reach_the_model(tmp_path, synthetic):
    cfg = _config(tmp_path, synthetic)
    train_part, val_part = carve_validation(read_grounding_json(synthetic / "train.json"), cfg.data.val_fraction,
                                            cfg.data.val_seed)
    baseline, base_val = _epochs(cfg, 2)
    _rewrite_moments(synthetic, tmp_path / "shuffled", set(train_part.ids().tolist()), seed=1)
    weights, val = _epochs(_config(tmp_path, tmp_path / "shuffled"), 2)
    for a, b in zip(baseline, weights, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert val == base_val  # model selection reads only the validation part's moments
    # the validation part's moments are read (for selection only): new ones change the metric, not the weights
    _rewrite_moments(synthetic, tmp_path / "val_moved", set(val_part.ids().tolist()), seed=2)
    weights, val = _epochs(_config(tmp_path, tmp_path / "val_moved"), 2)
    assert all(torch.equal(baseline[-1][k], weights[-1][k]) for k in weights[-1]) and val != base_val


# ------------------------------------------------------------------------------------------ commands


def test_train_predict_eval_plot_end_to_end(tmp_path, synthetic):
    cfg_path = tmp_path / "tiny_cpl.yaml"
    cfg_path.write_text(TINY_CPL, encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg_path), "--data", str(synthetic), "--epochs", "2", "--seed", "1",
                 "--out", str(run), "--device", "cpu"]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["task"] == "grounding" and set(report["test"]["R@1"]) == {"0.1", "0.3", "0.5", "0.7"}
    assert main(["predict", "--run", str(run), "--out", str(tmp_path / "preds.json"), "--device", "cpu"]) == 0
    raw = json.loads((tmp_path / "preds.json").read_text())
    assert raw["task"] == "grounding" and raw == json.loads((run / "predictions" / "test.json").read_text())
    test = read_grounding_json(synthetic / "test.json")
    predictions = read_grounding_results(tmp_path / "preds.json")
    assert [p.query for p in predictions] == test.ids().tolist()
    for p, q in zip(predictions, test, strict=True):
        entry = raw["results"][p.query]
        assert len(entry["segments"]) >= 5 and np.all(np.diff(entry["scores"]) <= 0)  # best first
        assert p.video == q.video and (np.asarray(entry["segments"]) >= 0).all()
        assert (np.asarray(entry["segments"]) <= q.duration + 1e-9).all()  # seconds
    assert main(["eval", "--task", "grounding", "--pred", str(tmp_path / "preds.json"), "--gt",
                 str(synthetic / "test.json"), "--json", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    for key in ("R@1", "R@5"):
        assert evaluated[key] == pytest.approx(report["test"][key], abs=1e-6)
    assert evaluated["mIoU"] == pytest.approx(report["test"]["mIoU"], abs=1e-6)

    # other data: the run's vocabulary encodes it (a training file with other words changes nothing)
    other = tmp_path / "other"
    shutil.copytree(synthetic, other, symlinks=True)
    rows = json.loads((synthetic / "train.json").read_text())
    write_grounding_json(other / "train.json", read_grounding_json(synthetic / "train.json").select(
        lambda q: "door" not in q.sentence))
    assert len(read_grounding_json(other / "train.json")) < len(rows)
    assert main(["predict", "--run", str(run), "--data", str(other), "--out", str(tmp_path / "other.json"),
                 "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "other.json").read_text()) == raw

    assert main(["plot", "--run", str(run), "--query", str(test[0].id)]) == 0
    png = run / "plots" / f"test_query{test[0].id}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", "--run", str(run), "--video", test[0].video]) == 2  # a detection plot of a grounding run
    assert main(["plot", "--run", str(run), "--query", "100000"]) == 2


# ------------------------------------------------------------------------------------------ real files


@pytest.mark.skipif(not (SHARED / "charades-sta" / "test.json").is_file(), reason="../shared/data is absent")
def test_prepare_data_from_the_real_charades_sta_file_with_tiny_features(tmp_path):
    real = SHARED / "charades-sta" / "test.json"
    data = tmp_path / "charades"
    data.mkdir()
    for name in ("train.json", "test.json"):
        (data / name).symlink_to(real.resolve())
    queries = read_grounding_json(real)
    rng = np.random.default_rng(0)
    (data / "features" / "rgb").mkdir(parents=True)
    for video in queries.videos():
        np.save(data / "features" / "rgb" / f"{video}.npy", rng.random((int(rng.integers(5, 12)), 1, 1, 4),
                                                                       dtype=np.float32))  # LGI's (T, 1, 1, D)
    cfg = _config(tmp_path, data, "model.streams=[rgb]", "grounding.num_clips=200", "grounding.max_vocabulary=1111")
    run = GroundingTask().prepare_data(cfg, ["rgb"])
    assert len(queries) == 3158 and len(queries.videos()) == 1225
    assert len(run.train) + len(run.val) == 3158 and len(set(run.val.names)) == round(0.2 * 1225)
    assert not set(run.train.names) & set(run.val.names) and run.streams == {"rgb": 4}
    vocabulary = run.extras["vocabulary"]
    train_tokens = {t for q in run.train.queries for t in tokenize(q.sentence)}
    assert set(vocabulary.words) <= train_tokens and len(vocabulary.words) == min(1111, len(train_tokens))
    first = run.test[0]
    assert first.inputs["rgb"].shape == (200, 4) and first.name == "3MSZA"
    assert [vocabulary.word(int(w)) for w in first.fields["words"]] == \
        [t for t in tokenize("person turn a light on.") if t in vocabulary]
    assert run.test.queries[0].duration == 30.96
