"""GauFuse plug-in: teacher snapshots, generations on a stub model, Δ targets, config, checkpoints."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from helpers import collate_joint
from torch import nn

from wtal.errors import WtalInputError
from wtal.localize.pipeline import LocalizeConfig, localize_video
from wtal.models.base import ModelOutput
from wtal.pseudo.generate import label_videos
from wtal.pseudo.linpro import LinProConfig, constraint_matrix
from wtal.pseudo.plugin import (
    GauFuseConfig,
    GauFusePlugin,
    build_gaufuse_plugin,
    label_scale,
)
from wtal.pseudo.teacher import VideoScores, snapshot_teacher, teacher_scores

C = 3


class StubModel(nn.Module):
    """Feature column c is the evidence for class c; logits = gain * features - 2, background logit 0."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.num_classes = C
        self.gain = nn.Parameter(torch.tensor(8.0))
        self.drop = nn.Dropout(dropout)

    def forward(self, batch):
        x, mask = self.drop(batch.inputs["rgb"]), batch.mask
        logits = torch.cat([self.gain * x - 2.0, torch.zeros_like(x[..., :1])], dim=-1)
        p = torch.softmax(logits, -1)[..., :C]
        video = (p * mask[..., None]).amax(dim=1)
        return ModelOutput(video_scores=video, cas_logits=logits, attention=None)

    def localization_scores(self, out, mask):
        # per-class sigmoid: a class's CAS does not move where another class fires
        cas = torch.sigmoid(out.cas_logits[..., :C]) * mask[..., None]
        return cas, out.video_scores

    def distill_logits(self, out):
        return [(1.0, out.cas_logits)]

    def losses(self, out, batch, epoch):
        """Video-level BCE times ``base_scale`` (a model whose losses live on another scale)."""
        bce = torch.nn.functional.binary_cross_entropy(out.video_scores.clamp(1e-6, 1 - 1e-6), batch.labels,
                                                       reduction="none").mean(dim=1)
        return {"total": self.base_scale * bce}

    base_scale = 1.0


def _videos():
    """Three videos; each has one action block of its labelled class, plus a weaker distractor class."""
    specs = [("a", 60, 0, (10, 25)), ("b", 45, 1, (5, 30)), ("c", 80, 2, (40, 52))]
    items = []
    for i, (name, T, cls, (s, e)) in enumerate(specs):
        f = np.zeros((T, C), np.float32)
        f[s:e, cls] = 1.0
        f[0:8, (cls + 1) % C] = 0.3  # unlabelled class: must stay out of the paper preset's labels
        y = np.zeros(C, np.float32)
        y[cls] = 1.0
        items.append((f, y, name, i))
    return items


ITEMS = _videos()


def collate_rgb(items):
    return collate_joint(items, streams=("rgb",))


def train_batches():
    yield collate_rgb(ITEMS[:2])
    yield collate_rgb(ITEMS[2:])


def _plugin(preset="paper", total=10, **extra):
    return GauFusePlugin(GauFuseConfig.from_dict({"name": "gaufuse", "preset": preset, **extra}, total_epochs=total),
                         num_classes=C)


# ---------------------------------------------------------------------------------------------------
# teacher


def test_teacher_is_a_frozen_eval_copy():
    student = StubModel(dropout=0.5).train()
    teacher = snapshot_teacher(student)
    assert not teacher.training and not teacher.drop.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert student.training and student.gain.requires_grad
    assert teacher.gain.data_ptr() != student.gain.data_ptr()
    batch = next(train_batches())
    before = teacher(batch).cas_logits.clone()
    with torch.no_grad():
        student.gain.mul_(-3.0)
    after = teacher(batch).cas_logits
    assert torch.equal(before, after)
    # the reference keeps dropout on
    assert snapshot_teacher(student, dropout=True).training


def test_teacher_scores_cover_real_snippets_only():
    scores = teacher_scores(snapshot_teacher(StubModel()), train_batches)
    assert sorted(scores) == ["a", "b", "c"]
    assert scores["a"].cas.shape == (60, C) and scores["b"].cas.shape == (45, C)
    assert scores["c"].labels.tolist() == [0.0, 0.0, 1.0]
    mixed = teacher_scores(snapshot_teacher(StubModel()), train_batches, source="distill_mix",
                           background_column=True)
    assert mixed["b"].cas.shape == (45, C + 1) and mixed["b"].video_scores.shape == (C + 1,)
    assert mixed["b"].labels[-1] == 0.0
    # without attention the mix of one branch is that branch's softmax
    batch = collate_rgb(ITEMS[:1])
    logits = StubModel()(batch).cas_logits[0]
    assert np.allclose(mixed["a"].cas, torch.softmax(logits, -1).detach().numpy())


# ---------------------------------------------------------------------------------------------------
# generation


def test_generation_gives_finite_labels_only_inside_instances():
    scores = teacher_scores(snapshot_teacher(StubModel()), train_batches)
    loc = LocalizeConfig.from_preset("paper", temperature=0.1)
    lp = LinProConfig.from_preset("paper")
    labels, stats, timings = label_videos(scores, loc, lp, gate_by_labels=True, workers=1)
    assert stats.failed == 0 and timings.workers == 1
    for name, (f, y, _, _) in zip("abc", ITEMS, strict=True):
        g = labels[name]
        assert g.dtype == np.float32 and g.shape == (f.shape[0], C) and np.isfinite(g).all()
        cls = int(np.argmax(y))
        assert np.all(g[:, np.arange(C) != cls] == 0)  # only ground-truth classes are labelled
        # zero outside every instance's inner and outer windows (the columns W cares about)
        inst = localize_video(scores[name].cas, scores[name].video_scores, loc, labels=y)
        support = constraint_matrix(f.shape[0], inst.start, inst.end, lp).any(axis=0)
        assert support.any() and not support.all()
        assert np.all(g[~support, cls] == 0)
        assert g[:, cls].max() > 0 and (g >= 0).all()


def test_pool_gives_the_same_labels():
    scores = teacher_scores(snapshot_teacher(StubModel()), train_batches)
    loc, lp = LocalizeConfig.from_preset("paper", temperature=0.1), LinProConfig.from_preset("paper")
    serial, _, _ = label_videos(scores, loc, lp, gate_by_labels=True, workers=1)
    pooled, _, t = label_videos(scores, loc, lp, gate_by_labels=True, workers=2)
    assert t.workers == 2 and list(pooled) == list(serial)
    assert all(np.array_equal(serial[k], pooled[k]) for k in serial)


def test_video_without_instances_gets_zero_rows():
    flat = VideoScores(cas=np.full((20, C), 0.2), video_scores=np.zeros(C), labels=np.zeros(C))
    labels, _, _ = label_videos({"flat": flat}, LocalizeConfig.from_preset("paper"),
                                LinProConfig.from_preset("paper"), gate_by_labels=True, workers=1)
    assert labels["flat"].shape == (20, C) and not labels["flat"].any()


# ---------------------------------------------------------------------------------------------------
# the plug-in over a (tiny) schedule


def _run_epoch(plugin, model, epoch):
    plugin.on_epoch_start(epoch, model, train_batches)
    batch = next(train_batches())
    return plugin.loss(model, model(batch), batch, epoch)


def test_paper_plugin_targets_and_delta():
    plugin = _plugin("paper", total=10)  # generations at 6, 7, 8, 9 (see test_pseudo_schedule)
    model = StubModel()
    for epoch in range(6):
        assert _run_epoch(plugin, model, epoch) is None
    raw = _run_epoch(plugin, model, 6)
    assert raw.shape == (2,) and torch.isfinite(raw).all() and (raw > 0).all()
    # an unchanged eval-mode teacher gives identical labels, so the Δ target is exactly 0
    assert torch.equal(_run_epoch(plugin, model, 7), torch.zeros(2))
    g6, g7 = (plugin.generations[i].labels for i in (0, 1))
    assert all(np.array_equal(g6[k], g7[k]) for k in g6)
    # a changed student changes the next generation; the target is G8 - G7
    with torch.no_grad():
        model.gain.fill_(2.0)
    loss = _run_epoch(plugin, model, 8)
    spec = plugin.target_spec(8)
    assert spec.kind == "delta" and spec.scale == 1.0
    g8 = plugin.generations[spec.latest].labels
    g7 = plugin.generations[spec.previous].labels
    # all generations share the run-wide scale fixed at the first one (normalize: paper preset)
    assert plugin.label_scale == pytest.approx(label_scale(g6)) and plugin.label_scale > 0
    assert np.allclose(plugin.video_target(spec, "a"), (g8["a"] - g7["a"]) / plugin.label_scale, atol=1e-6)
    assert not np.array_equal(g8["a"], g7["a"])
    assert torch.isfinite(loss).all() and (loss >= 0).all()  # bounded loss, even with negative targets
    _run_epoch(plugin, model, 9)
    assert [g.epoch for g in plugin.generations] == [7, 8, 9]  # three kept


def test_label_scale_is_a_robust_quantile_and_survives_checkpoints():
    labels = {"a": np.array([[0.0, 0.02], [0.04, 0.0]]), "b": np.array([[0.03, 0.0]])}
    assert label_scale(labels, quantile=50.0) == pytest.approx(0.03)
    assert label_scale({"a": np.zeros((3, 2))}) == 1.0  # nothing labelled: no rescaling
    plugin = _plugin("paper", total=10)
    plugin.on_epoch_start(6, StubModel(), train_batches)
    restored = _plugin("paper", total=10)
    restored.load_state_dict(plugin.state_dict())
    assert restored.label_scale == plugin.label_scale != 1.0
    spec = plugin.target_spec(6)
    assert np.array_equal(restored.video_target(spec, "a"), plugin.video_target(spec, "a"))
    # the raw target is the generation divided by the scale, so its robust maximum is about 1
    targets = np.concatenate([plugin.video_target(spec, n).ravel() for n in plugin.generations[0].labels])
    assert targets.max() >= 0.99 and np.percentile(targets[targets > 0], 99) == pytest.approx(1.0, abs=1e-5)


def test_reference_preset_does_not_normalize():
    assert not _plugin("reference", total=35).config.normalize
    assert _plugin("reference", total=35).config.loss_balance is None


def _mean_losses(plugin, model, epoch):
    """Per-video means over the training set of the plug-in's term and the model's own loss (eval mode)."""
    model.eval()
    distill = base = 0.0
    with torch.no_grad():
        for batch in train_batches():
            out = model(batch)
            distill += float(plugin.loss(model, out, batch, epoch).sum())
            base += float(model.losses(out, batch, epoch)["total"].sum())
    return distill / len(ITEMS), base / len(ITEMS)


@pytest.mark.parametrize("base_scale", [0.05, 3.0])
@pytest.mark.parametrize("balance", [0.5, 2.0])
def test_loss_balance_sets_the_term_relative_to_the_base_loss(balance, base_scale):
    model = StubModel()
    model.base_scale = base_scale
    plugin = _plugin("paper", total=10, loss_balance=balance)
    plugin.on_epoch_start(6, model, train_batches)
    distill, base = _mean_losses(plugin, model, 6)
    assert distill == pytest.approx(balance * base, rel=1e-5)
    assert plugin.history[0]["loss_weight"] == pytest.approx(plugin.weight_factor * plugin.schedule.weight(6))
    # fixed at the first generation: a later generation does not re-balance, and the factor is checkpointed
    factor = plugin.weight_factor
    model.base_scale = 100.0
    plugin.on_epoch_start(7, model, train_batches)
    assert plugin.weight_factor == factor
    restored = _plugin("paper", total=10, loss_balance=balance)
    restored.load_state_dict(plugin.state_dict())
    assert restored.weight_factor == factor


def test_loss_balance_falls_back_to_loss_weight_when_unmeasurable(caplog):
    model = StubModel()
    model.base_scale = 0.0  # a base loss of 0 gives no scale to balance against
    plugin = _plugin("paper", total=10, loss_balance=1.0, loss_weight=2.5)
    with caplog.at_level("WARNING"):
        plugin.on_epoch_start(6, model, train_batches)
    assert plugin.weight_factor == 1.0 and "loss_balance" in caplog.text
    batch = next(train_batches())
    out = model(batch)
    unbalanced = _plugin("paper", total=10, loss_balance=None, loss_weight=2.5)
    unbalanced.on_epoch_start(6, model, train_batches)
    assert torch.allclose(plugin.loss(model, out, batch, 6), unbalanced.loss(model, out, batch, 6))


def test_loss_backpropagates_into_the_student():
    plugin = _plugin("paper", total=10)
    model = StubModel()
    plugin.on_epoch_start(6, model, train_batches)
    batch = next(train_batches())
    plugin.loss(model, model(batch), batch, 6).sum().backward()
    assert model.gain.grad is not None and torch.isfinite(model.gain.grad)


def test_reference_plugin_labels_background_and_scales_delta():
    plugin = _plugin("reference", total=35)
    assert plugin.schedule.generation_epochs == (20, 23, 25, 26, 28, 30)
    model = StubModel()
    plugin.on_epoch_start(20, model, train_batches)
    assert plugin.generations[0].labels["a"].shape == (60, C + 1)
    plugin.on_epoch_start(23, model, train_batches)
    plugin.on_epoch_start(25, model, train_batches)
    spec = plugin.target_spec(25)
    assert spec.kind == "delta" and spec.scale == 2.0
    batch = next(train_batches())
    loss = plugin.loss(model, model(batch), batch, 25)
    assert loss.shape == (2,) and torch.isfinite(loss).all()


def test_state_dict_round_trip_and_resume():
    plugin = _plugin("paper", total=10)
    model = StubModel()
    for epoch in (6, 7):
        plugin.on_epoch_start(epoch, model, train_batches)
    buf = io.BytesIO()
    torch.save(plugin.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    restored = _plugin("paper", total=10)
    restored.load_state_dict(state)
    assert [g.epoch for g in restored.generations] == [6, 7]
    for a, b in zip(plugin.generations, restored.generations, strict=True):
        assert all(np.array_equal(a.labels[k], b.labels[k]) for k in a.labels)

    def must_not_run():
        raise AssertionError("a generation already in the checkpoint was recomputed")

    restored.on_epoch_start(7, model, must_not_run)  # resuming inside epoch 7
    batch = next(train_batches())
    out = model(batch)
    assert torch.equal(restored.loss(model, out, batch, 7), plugin.loss(model, out, batch, 7))
    with pytest.raises(WtalInputError):
        restored.load_state_dict({"version": 99})


def test_labels_must_match_the_videos():
    plugin = _plugin("paper", total=10)
    model = StubModel()
    plugin.on_epoch_start(6, model, train_batches)
    f, y, _, _ = ITEMS[0]
    wrong = collate_rgb([(f[:50], y, "a", 0)])
    with pytest.raises(WtalInputError, match="50"):
        plugin.loss(model, model(wrong), wrong, 6)
    unknown = collate_rgb([(f, y, "zzz", 0)])
    with pytest.raises(WtalInputError, match="zzz"):
        plugin.loss(model, model(unknown), unknown, 6)


# ---------------------------------------------------------------------------------------------------
# configuration


def test_presets_resolve():
    paper = GauFuseConfig.from_dict({"name": "gaufuse"}, total_epochs=350)
    assert paper.loss_balance == 1.0
    assert paper.loss == "bounded" and not paper.generation.teacher_dropout
    assert paper.generation.class_gate == "labels" and not paper.generation.background_column
    assert paper.generation.localize.preset == "paper" and paper.generation.localize.method == "fusion"
    assert paper.schedule.generation_epochs == (200, 215, 230, 245, 270, 290)
    ref = GauFuseConfig.from_dict({"method": "gaufuse", "preset": "reference"}, total_epochs=350)
    assert ref.loss == "cross_entropy" and ref.generation.teacher_dropout and ref.generation.background_column
    assert ref.generation.linpro.variant == "reference" and ref.generation.localize.preset == "reference"


def test_explicit_epoch_keys_are_taken_literally():
    cfg = GauFuseConfig.from_dict({"preset": "paper", "generation_epochs": [3, 5, 7], "delta_start_epochs": [5],
                                   "loss_weight": 2.5, "localize": {"template": "uniform"}}, total_epochs=10)
    s = cfg.schedule
    assert s.generation_epochs == (3, 5, 7) and s.temperatures == (0.1, 0.1, 0.1)
    assert s.delta_start_epochs == (5,) and s.weight(9) == 2.5
    assert cfg.generation.localize.template == "uniform"


@pytest.mark.parametrize("cfg", [
    {"preset": "nope"},
    {"name": "other"},
    {"preset": "paper", "typo_key": 1},
    {"preset": "paper", "background_column": True},
    {"preset": "paper", "loss": "l2"},
    {"preset": "paper", "generation_epochs": [5, 3]},
    {"preset": "paper", "generation_epochs": [1.5]},
    {"preset": "reference", "generation_epochs": [3, 5]},  # temperatures differ per generation
    {"preset": "paper", "localize": {"no_such_field": 1}},
    {"preset": "paper", "loss_balance": 0},
    {"preset": "paper", "loss_balance": -1.0},
    {"preset": "paper", "loss_balance": "lots"},
])
def test_bad_configs_are_rejected(cfg):
    with pytest.raises(WtalInputError):
        GauFuseConfig.from_dict(cfg, total_epochs=20)


def test_factories():
    from wtal.engine.plugins import PluginContext, build_plugins

    assert build_plugins(None, None) == []
    ctx = PluginContext(classes=["x", "y", "z"], snippets_per_second=25 / 16, num_train_videos=3, epochs=35,
                        device=torch.device("cpu"), postprocess={}, config={})
    (plugin,) = build_plugins({"name": "gaufuse", "preset": "paper"}, ctx)
    assert isinstance(plugin, GauFusePlugin) and plugin.schedule.generation_epochs[0] == 20
    assert build_gaufuse_plugin(ctx).num_classes == 3
    with pytest.raises(WtalInputError, match="unknown plug-in 'nope'"):
        build_plugins([{"name": "nope"}], ctx)
