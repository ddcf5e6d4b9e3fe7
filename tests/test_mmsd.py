"""MMSD: its loss terms against straight re-implementations of the reference formulas, the gradient directions
of the distillation, self-voting, the label store (schedule, keep-best rule, checkpoints, --resume), the test
recipe, predict / localize on its CAS, the stream requirement, and tiny-data training."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import collate_joint, fill_label_store, joint_context
from test_engine import ConstantPlugin
from test_engine_data import tiny_data, tiny_run_yaml  # noqa: F401  (pytest fixture)

from wtal.cli import main
from wtal.data.segments import SegmentTable
from wtal.engine.config import resolve_config
from wtal.engine.runs import load_weights
from wtal.engine.trainer import Trainer
from wtal.errors import WtalInputError
from wtal.evaluation.classification import classification_map
from wtal.evaluation.detection import detection_map
from wtal.localize import read_cas_file
from wtal.models import build_model
from wtal.models.losses import softened_cross_entropy, with_background
from wtal.models.mmsd import reliable_labels, snippet_confidence, snippet_score_contrast
from wtal.models.snippet_store import SnippetLabelStore

DIM, CLASSES = 32, 4
LENGTHS = (6, 17, 11)


def _batch(lengths=LENGTHS, seed=0):
    rng = np.random.default_rng(seed)
    labels = [np.eye(CLASSES, dtype=np.float32)[i % CLASSES] for i in range(len(lengths))]
    labels[-1][(len(lengths)) % CLASSES] = 1.0
    return collate_joint([(rng.normal(size=(t, DIM)).astype(np.float32) * 2.0, labels[i], f"v{i}", i)
                          for i, t in enumerate(lengths)])


def _model(**params):
    torch.manual_seed(0)
    return build_model("mmsd", joint_context(DIM, CLASSES), **params)


# ---------------------------------------------------------------------------------------- loss terms
def test_snippet_score_contrast_equals_the_reference_formula():
    gen = torch.Generator().manual_seed(1)
    probs = torch.rand(1, 19, CLASSES + 1, generator=gen)
    y = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0]])  # two action classes and the background column
    # written out as the reference FrmScrLoss (one unpadded video, torch.topk over time)
    k = 19 // 8
    top = torch.topk(probs, k, dim=1).values.mean(1)
    bottom = -torch.topk(-probs, k, dim=1).values.mean(1)
    temporal = ((bottom - top) * y).sum(-1)
    gated = probs * y[:, None, :]
    separation = -(gated[..., :-1].max(-1).values - gated[..., -1]).abs().mean(-1)
    ours = snippet_score_contrast(probs, y, torch.ones(1, 19, dtype=torch.bool), 8.0)
    torch.testing.assert_close(ours, temporal + separation)


def test_snippet_confidence_on_hand_values():
    # p = softmax -> [0.5, 0.25, 0.25] for classes (a, b) and background; video label a only
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
    y = torch.tensor([[1.0, 0.0, 1.0]])
    torch.testing.assert_close(snippet_confidence(logits, y), torch.tensor([[0.25, 0.7]]))


def _reference_voting(conf, stored, con, margin):
    """The reference's three explicit stream blocks (train_Processor.generate_reliable_label), with the plain
    mean of the selected labels."""
    single = [c >= con for c in conf]
    labels, masks = [], []
    for a in range(3):
        others = [b for b in range(3) if b != a]
        votes = {a: single[a]}
        for b in others:
            votes[b] = ((conf[b] - conf[a]) >= margin) & single[b]
        mask = votes[a] | votes[others[0]] | votes[others[1]]
        count = sum(v.double() for v in votes.values())
        total = sum(stored[b] * votes[b].double() for b in range(3))
        labels.append(torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total)))
        masks.append(mask)
    return torch.stack(labels), torch.stack(masks)


def test_reliable_labels_equal_the_reference_voting_rule():
    gen = torch.Generator().manual_seed(2)
    conf = torch.rand(3, 4, 50, generator=gen, dtype=torch.float64)
    stored = torch.randint(0, 2, (3, 4, 50), generator=gen).double()
    labels, reliable = reliable_labels(conf, stored, 0.6, 0.3)
    want_labels, want_mask = _reference_voting(conf, stored, 0.6, 0.3)
    assert torch.equal(reliable, want_mask)
    torch.testing.assert_close(torch.where(reliable, labels, 0.0), want_labels)
    assert reliable.any() and (~reliable).any()


def test_reliable_labels_hand_case():
    # one snippet; confidences rgb 0.65, flow 0.2, fused 0.99; stored labels rgb 1, flow 0, fused 0
    conf = torch.tensor([0.65, 0.2, 0.99]).reshape(3, 1, 1)
    stored = torch.tensor([1.0, 0.0, 0.0]).reshape(3, 1, 1)
    labels, reliable = reliable_labels(conf, stored, 0.6, 0.3)
    # rgb: itself and fused (0.99 - 0.65 = 0.34 >= 0.3) -> mean(1, 0); flow: not confident, rgb and fused vote
    # -> mean(1, 0); fused: only itself (the others are not 0.3 more confident) -> 0
    assert reliable.flatten().tolist() == [True, True, True]
    torch.testing.assert_close(labels.flatten(), torch.tensor([0.5, 0.5, 0.0]))
    _, none = reliable_labels(torch.full((3, 1, 1), 0.5), stored, 0.6, 0.3)
    assert not none.any()  # nobody confident: no reliable label


def test_distillation_gradients_flow_only_into_each_terms_student():
    model = _model()
    gen = torch.Generator().manual_seed(3)
    mask = torch.ones(2, 9, dtype=torch.bool)
    rgb, flow, fused = (torch.randn(2, 9, CLASSES + 1, generator=gen, requires_grad=True) for _ in range(3))
    branches = [SimpleNamespace(logits=x) for x in (rgb, flow, fused)]
    model.distillation(branches, mask).sum().backward()

    def grad_of(loss, x):
        return torch.autograd.grad(loss.sum(), x)[0]

    t = model.hp.distill_temperature
    # RGB learns only from flow, flow only from RGB; the fused stream only from the (frozen) mean
    torch.testing.assert_close(rgb.grad, grad_of(softened_cross_entropy(rgb, flow, mask, t), rgb))
    torch.testing.assert_close(flow.grad, grad_of(softened_cross_entropy(flow, rgb, mask, t), flow))
    torch.testing.assert_close(fused.grad, grad_of(softened_cross_entropy(fused, (rgb + flow) / 2, mask, t), fused))


def test_fused_stream_losses_reach_the_first_layers_only():
    model = _model(dropout=0.0).train()
    batch = _batch()
    out = model(batch)
    fused = out.extras["streams"][2]
    labels = with_background(batch.labels, 0.0)
    loss = -(labels / labels.sum(1, keepdim=True) * torch.log_softmax(fused.ca_logits, -1)).sum()
    loss.backward()
    reached = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {"first_layers.rgb.0.weight", "first_layers.flow.0.weight", "embeddings.fused.0.weight"} <= reached
    assert not any(n.startswith(("embeddings.rgb", "embeddings.flow", "heads.rgb", "heads.flow")) for n in reached)


# ---------------------------------------------------------------------------------------- label store
def test_store_keeps_a_label_only_where_the_new_vote_is_more_confident():
    store = SnippetLabelStore(2)
    store.allocate(torch.tensor([1, 0]), torch.tensor([3, 2]))  # position 0 has 2 snippets, position 1 has 3
    assert store.offsets.tolist() == [0, 2, 5] and store.labels.shape == (2, 5)
    index, mask = torch.tensor([1, 0]), torch.tensor([[True, True, True], [True, True, False]])
    first = torch.tensor([[[1.0, 0.0, 1.0], [1.0, 1.0, 9.0]], [[0.0, 0.0, 0.0], [0.0, 1.0, 9.0]]])
    conf = torch.tensor([[[0.5, 0.2, 0.0], [0.3, 0.3, 9.0]], [[0.1, 0.1, 0.1], [0.9, 0.8, 9.0]]])
    store.keep_more_confident(index, mask, first, conf)
    labels, stored_conf = store.read(index, mask)
    # a confidence of 0 does not beat the initial 0: that snippet keeps its initial label 0
    assert labels[0].tolist() == [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    assert stored_conf[0, 1, 2] == 0 and labels[0, 1, 2] == 0  # padding reads as 0
    second = 1.0 - first
    conf2 = torch.tensor([[[0.6, 0.2, 0.4], [0.1, 0.9, 0.0]], [[0.1, 0.0, 0.5], [0.95, 0.1, 0.0]]])
    store.keep_more_confident(index, mask, second, conf2)
    labels, stored_conf = store.read(index, mask)
    # strictly higher replaces, equal or lower keeps
    assert labels[0].tolist() == [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    assert labels[1].tolist() == [[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
    torch.testing.assert_close(stored_conf[1], torch.tensor([[0.1, 0.1, 0.5], [0.95, 0.8, 0.0]]))


def test_store_refuses_videos_it_does_not_hold():
    store = SnippetLabelStore(3)
    store.allocate(torch.tensor([0, 1]), torch.tensor([4, 5]))
    with pytest.raises(WtalInputError, match="has 3 snippets, but its stored snippet labels have 4"):
        store.read(torch.tensor([0]), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(WtalInputError, match="holds 2 videos"):
        store.read(torch.tensor([2]), torch.ones(1, 4, dtype=torch.bool))


def test_labels_are_generated_on_the_schedule_in_eval_mode():
    model = _model(label_epochs=(2, 5)).train()
    batch = _batch()
    modes = []

    def batches():
        modes.append(model.training)
        yield batch

    for epoch in range(6):
        model.on_epoch_end(epoch, batches)
    assert modes == [False, False] and model.training  # after 2 and 5 epochs (indices 1 and 4)
    off = _model(label_epochs=(2, 5), voting_weight=0.0)
    off.on_epoch_end(1, batches)
    assert off.label_store.is_empty and len(modes) == 2  # no voting loss: no label passes


def test_generation_thresholds_the_attention_of_each_stream():
    model = _model(label_epochs=(1,))
    batch = _batch()
    model.on_epoch_end(0, lambda: iter([batch]))
    model.eval()
    out = model(batch)
    labels, confidence = model.label_store.read(batch.index, batch.mask)
    y = with_background(batch.labels, 1.0)
    for s, branch in enumerate(out.extras["streams"]):
        first = confidence[s] > 0  # a first generation replaces every label whose confidence is above 0
        want = (branch.attention > 0.55).float() * batch.mask
        assert torch.equal(labels[s][first], want[first])
        torch.testing.assert_close(confidence[s], snippet_confidence(branch.logits, y) * batch.mask)


def test_relative_labels_threshold_the_videos_attention_range():
    attention = torch.tensor([[0.01, 0.02, 0.03, 0.016, 0.9], [0.2, 0.5, 0.8, 0.3, 0.0]])
    mask = torch.tensor([[True, True, True, True, False], [True, True, True, True, True]])
    relative = _model(label_threshold_mode="relative").attention_labels(attention, mask)
    # video 0: (a - 0.01) / 0.02 = 0, 0.5, 1, 0.3 (the padded 0.9 takes no part); video 1: a / 0.8
    assert relative.tolist() == [[0, 0, 1, 0, 0], [0, 1, 1, 0, 0]]
    absolute = _model().attention_labels(attention, mask)
    assert absolute.tolist() == [[0, 0, 0, 0, 0], [0, 0, 1, 0, 0]]  # the reference's theta = 0.55 on a itself
    with pytest.raises(WtalInputError, match="label_threshold_mode"):
        _model(label_threshold_mode="percentile")


def test_short_schedule_rescales_the_label_epochs_and_the_decay():
    cfg = resolve_config("mmsd", epochs=40)
    assert cfg.model.params["label_epochs"] == [7, 13, 20, 27, 33, 40]  # 40, 80, ..., 240 of 240
    assert cfg.optim.schedule.milestones == [12] and cfg.data.batch_size == 2
    assert cfg.optim.lr == pytest.approx(5e-5 * 6)


def test_voting_loss_is_the_masked_mean_squared_error_per_stream():
    model = _model(dropout=0.0).train()
    batch = _batch()
    fill_label_store(model, LENGTHS)
    out = model(batch)
    pdl = model.losses(out, batch, 0)["pdl"]
    stored, _ = model.label_store.read(batch.index, batch.mask)
    y = with_background(batch.labels, 1.0)
    conf = torch.stack([snippet_confidence(b.logits, y) for b in out.extras["streams"]])
    want = torch.zeros(len(LENGTHS))
    for v, length in enumerate(LENGTHS):  # one video at a time, no padding, the reference's masked_select
        labels, reliable = _reference_voting(conf[:, v:v + 1, :length], stored[:, v:v + 1, :length], 0.6, 0.3)
        for s, branch in enumerate(out.extras["streams"]):
            picked = ((branch.attention[v:v + 1, :length] - labels[s]) ** 2)[reliable[s]]
            want[v] += picked.mean() if picked.numel() else 0.0
    torch.testing.assert_close(pdl, want)
    assert (pdl > 0).all()


def test_a_checkpoint_with_labels_loads_into_a_fresh_model():
    model = _model()
    fill_label_store(model, LENGTHS)
    fresh = _model()
    assert fresh.label_store.is_empty
    load_weights(fresh, model.state_dict(), checkpoint="ckpt.pt", run="run")
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    batch = _batch()
    assert torch.equal(fresh.label_store.read(batch.index, batch.mask)[0],
                       model.label_store.read(batch.index, batch.mask)[0])
    empty = _model()  # and a checkpoint from before the first generation empties a filled store
    model.load_state_dict(empty.state_dict())
    assert model.label_store.is_empty


# ---------------------------------------------------------------------------------------- test recipe
def test_test_recipe_mixes_the_streams_with_the_reference_weights():
    model = _model().eval()
    batch = _batch()
    out = model(batch)
    rgb, flow, fused = out.extras["streams"]
    cas, video = model.localization_scores(out, batch.mask)

    def mix(f):
        return 0.2 * f(rgb) + 0.4 * f(flow) + 0.4 * f(fused)

    expected = mix(lambda b: b.logits.softmax(-1))[..., :CLASSES] * mix(lambda b: b.attention)[..., None]
    torch.testing.assert_close(cas, expected * batch.mask[..., None])
    torch.testing.assert_close(video, mix(lambda b: b.p_ca)[:, :CLASSES])
    alone = _model(test_stream_weights=(0.0, 3.0, 0.0)).eval()  # flow alone (weights are normalised)
    alone.load_state_dict(model.state_dict())
    cas_flow, video_flow = alone.localization_scores(alone(batch), batch.mask)
    torch.testing.assert_close(cas_flow, flow.logits.softmax(-1)[..., :CLASSES] * flow.attention[..., None]
                               * batch.mask[..., None])
    torch.testing.assert_close(video_flow, flow.p_ca[:, :CLASSES])
    assert [w for w, _ in alone.distill_logits(alone(batch))] == [1.0]
    with pytest.raises(WtalInputError, match="all 0"):
        _model(test_stream_weights=(0.0, 0.0, 0.0))


# ---------------------------------------------------------------------------------------- streams
@pytest.mark.parametrize("streams, missing", [(("rgb",), "'flow'"), (("flow",), "'rgb'")])
def test_one_stream_is_refused_naming_the_missing_one(streams, missing):
    with pytest.raises(WtalInputError, match=f"mmsd needs the {missing} stream"):
        build_model("mmsd", joint_context(DIM, CLASSES, streams))


def test_data_without_flow_is_refused_naming_the_stream(tmp_path, tiny_data, capsys):  # noqa: F811
    data = tmp_path / "rgb_only"
    shutil.copytree(tiny_data["folders"], data)
    flow_folders = [p for p in data.rglob("flow") if p.is_dir()]
    assert flow_folders
    for folder in flow_folders:
        shutil.rmtree(folder)
    cfg = tiny_run_yaml(tmp_path / "cfg.yaml", model="mmsd", epochs=1)
    args = ["train", "--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "run"), "--device", "cpu"]
    assert main(args) == 2
    assert "no 'flow' stream" in capsys.readouterr().err
    assert main([*args, "--set", "model.streams=[rgb]"]) == 2
    assert "mmsd needs the 'flow' stream" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- training
def _cfg(tmp_path, data, epochs, sets=()):
    return resolve_config(tiny_run_yaml(tmp_path / "cfg.yaml", model="mmsd", epochs=epochs),
                          overrides=list(sets), data_path=data["wtalc"])


def test_resume_after_a_kill_reproduces_weights_and_labels(tmp_path, tiny_data):  # noqa: F811
    # dropout on; labels generated before the kill (after epoch 1) and after the resume (after epoch 3)
    cfg = _cfg(tmp_path, tiny_data, 4, ["model.params.dropout=0.5", "model.params.label_epochs=[1,3]",
                                        "train.eval_every=2"])
    straight = Trainer(cfg, tmp_path / "straight", device="cpu", plugins=[ConstantPlugin()])
    straight.fit()
    killed = Trainer(cfg, tmp_path / "killed", device="cpu", plugins=[ConstantPlugin(kill_at=2)])
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    assert not killed.model.label_store.is_empty
    resumed = Trainer(cfg, tmp_path / "killed", device="cpu", plugins=[ConstantPlugin()])
    assert resumed.model.label_store.is_empty  # a fresh model, until the checkpoint is loaded
    resumed.fit(resume=True)
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert set(a) == set(b) and "label_store.labels" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the generation after the resume ran on the restored store: confidences only grow, and some did
    stored_at_kill = killed.model.label_store.confidence
    assert torch.all(a["label_store.confidence"] >= stored_at_kill)
    assert torch.any(a["label_store.confidence"] > stored_at_kill)
    assert a["label_store.offsets"].numel() == len(straight.data.train) + 1


def test_mmsd_beats_trivial_baselines_on_tiny_data(tmp_path, tiny_data):  # noqa: F811
    cfg = _cfg(tmp_path, tiny_data, 30, ["train.eval_every=100", "train.select=last", "data.val_fraction=0.0",
                                         "model.params.label_epochs=[8,16,24]"])
    trainer = Trainer(cfg, None, device="cpu")
    untrained = trainer.evaluate("test").summary()
    report = trainer.fit()["test"]
    ann, test = trainer.data.annotations, trainer.data.test
    # each test video's ground-truth classes (an oracle) over the whole video
    rate = trainer.data.snippets_per_second
    whole = [(n, c, 0.0, test[i].length / rate, 1.0) for i, n in enumerate(test.names) for c in ann.videos[n].labels]
    oracle = detection_map(ann.ground_truth(test.names), SegmentTable.from_rows(ann.classes, whole), cfg.eval.tiou)
    assert report["average"] > max(untrained["average"] + 3, oracle.average), (report, untrained, oracle.average)
    labels = np.stack([ann.multi_hot(n) for n in test.names])
    rng = np.random.default_rng(0)
    chance = np.mean([classification_map(rng.random(labels.shape), labels) for _ in range(50)])
    assert report["classification_map"] > max(chance, untrained["classification_map"]) + 15, (report, chance)


def test_predict_and_localize_on_its_cas(tmp_path, tiny_data):  # noqa: F811
    cfg = tiny_run_yaml(tmp_path / "cfg.yaml", model="mmsd", epochs=3)
    run = tmp_path / "run"
    data = tiny_data["wtalc"]
    assert main(["train", "--config", str(cfg), "--data", str(data), "--out", str(run), "--device", "cpu",
                 "--set", "model.params.label_epochs=[1]"]) == 0
    preds, cas = tmp_path / "preds.json", tmp_path / "cas.npz"
    assert main(["predict", "--run", str(run), "--out", str(preds), "--cas", str(cas), "--device", "cpu"]) == 0
    assert json.loads(preds.read_text()) == json.loads((run / "predictions" / "test.json").read_text())
    stored = read_cas_file(cas)
    assert stored is not None
    localized = tmp_path / "localized.json"
    assert main(["localize", "--cas", str(cas), "--out", str(localized), "--method", "nms"]) == 0
    results = json.loads(localized.read_text())["results"]
    assert results and all(d["score"] == d["score"] for dets in results.values() for d in dets)
