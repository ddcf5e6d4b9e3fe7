"""Vision-language distillation: the synthetic CLIP-like stream, the VLP branch, the alternate-training plug-in,
the trainer's freezing hook, fused prediction and the configs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import load_benchmark
from test_engine_data import write_tiny

from wtal.data.batch import Batch
from wtal.data.sources import open_source
from wtal.data.synthetic import SynthConfig, generate, write_synthetic
from wtal.engine.config import resolve_config
from wtal.engine.plugins import frozen_roles
from wtal.engine.predict import load_run
from wtal.engine.trainer import Trainer
from wtal.errors import WtalInputError
from wtal.models.base import ModelContext
from wtal.models.factory import build_model
from wtal.models.masked import l2_normalize
from wtal.pseudo.alternate import AlternateConfig, AlternatePlugin, confident_snippets, label_targets

CONFIGS = "configs"
SHORT = ["train.progress=false", "train.eval_every=1", "train.num_threads=1"]


@pytest.fixture(scope="module")
def clip_set():
    return generate(SynthConfig(num_videos=24, dim=16, clip_dim=32, seed=1))


@pytest.fixture(scope="module")
def clip_data(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("tiny_clip"), clip_dim=16)


# ------------------------------------------------------------------------------------------- synthetic data
def test_clip_stream_leaves_the_other_outputs_unchanged(clip_set):
    plain = generate(SynthConfig(num_videos=24, dim=16, seed=1))
    assert plain.clip == {} and plain.class_text is None
    assert plain.annotations.videos == clip_set.annotations.videos
    for name, x in plain.features.items():
        np.testing.assert_array_equal(clip_set.features[name], x)
        assert clip_set.clip[name].shape == (x.shape[0], 32) and clip_set.clip[name].dtype == np.float32
    norms = np.linalg.norm(clip_set.class_text, axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-6)


def test_clip_stream_is_over_complete_against_its_class_text(clip_set):
    """Zero-shot cosine to the video's class: highest in instances, but also raised in the background of a
    video of that class (scene) compared with videos of other classes."""
    ann = clip_set.annotations
    inside, background, other = [], [], []
    for name, v in ann.videos.items():
        x = clip_set.clip[name] / np.linalg.norm(clip_set.clip[name], axis=1, keepdims=True)
        cos = x @ clip_set.class_text.T
        for c in (ann.classes.index(lab) for lab in v.labels):
            labels = clip_set.snippet_labels[name][:, c]
            inside += list(cos[labels, c])
            background += list(cos[~clip_set.snippet_labels[name].any(axis=1), c])
        absent = [c for c in range(len(ann.classes)) if ann.classes[c] not in v.labels]
        other += list(cos[:, absent].ravel())
    assert np.mean(inside) > np.mean(background) > np.mean(other)


def test_clip_stream_is_written_in_both_layouts(tmp_path, clip_set):
    cfg = SynthConfig(num_videos=24, dim=16, clip_dim=32, seed=1)
    paths = write_synthetic(tmp_path, cfg, clip_set)
    name = next(iter(clip_set.annotations.videos))
    assert (tmp_path / "wtalc" / "clip" / "train" / f"{name}.npy").is_file()  # PVLR's {train,test}/ layout
    for key in ("wtalc", "folders"):
        source = open_source(paths[key])
        assert source.stream_widths() == {"rgb": 8, "flow": 8, "clip": 32}
        np.testing.assert_array_equal(source.features(name, ["clip"])["clip"], clip_set.clip[name])
        np.testing.assert_array_equal(source.class_text(), clip_set.class_text)


def test_synth_command_clip_dim(tmp_path, capsys):
    from wtal.cli import main

    assert main(["synth", "--out", str(tmp_path / "s"), "--dim", "8", "--videos", "4", "--clip-dim", "6"]) == 0
    assert "CLIP-like stream: 6-d" in capsys.readouterr().out
    assert open_source(tmp_path / "s" / "folders").stream_widths() == {"rgb": 4, "flow": 4, "clip": 6}
    assert open_source(tmp_path / "s" / "wtalc").class_text().shape == (20, 6)
    assert main(["synth", "--out", str(tmp_path / "t"), "--dim", "8", "--videos", "4", "--clip-dim", "1"]) == 2
    assert not (tmp_path / "t").exists()


# ------------------------------------------------------------------------------------------- VLP branch
def _vlp_context(width=8, classes=3, seed=0):
    text = np.random.default_rng(seed).normal(size=(classes, width)).astype(np.float32)
    return ModelContext({"clip": width}, tuple(f"c{i}" for i in range(classes)), class_text=text), text


def _batch(x: np.ndarray, labels: np.ndarray) -> Batch:
    t = torch.as_tensor(x)
    return Batch(inputs={"clip": t}, mask=torch.ones(t.shape[:2], dtype=torch.bool),
                 labels=torch.as_tensor(labels), names=[f"v{i}" for i in range(len(x))],
                 index=torch.arange(len(x)), fields={})


def test_untrained_vlp_branch_is_zero_shot_clip():
    context, text = _vlp_context()
    x = np.random.default_rng(1).normal(size=(2, 7, 8)).astype(np.float32)
    batch = _batch(x, np.eye(3, dtype=np.float32)[:2])
    cos = (x / np.linalg.norm(x, axis=-1, keepdims=True)) @ (text / np.linalg.norm(text, axis=1, keepdims=True)).T
    zero_shot = build_model("vlp", context, temporal="none", text_residual=False, background=False).eval()
    cas, _ = zero_shot.localization_scores(zero_shot(batch), batch.mask)
    expected = torch.softmax(torch.as_tensor(100.0 * cos), dim=-1)  # CLIP's per-snippet zero-shot classes
    torch.testing.assert_close(cas, expected.float(), rtol=1e-5, atol=1e-6)
    trainable = build_model("vlp", context).eval()  # zero-initialised adapter and residual: the same cosines
    logits = trainable(batch).cas_logits
    torch.testing.assert_close(logits[..., :3], torch.as_tensor(100.0 * cos).float(), rtol=1e-4, atol=1e-4)
    background = l2_normalize(torch.as_tensor(text).mean(0))
    torch.testing.assert_close(logits[..., 3], 100.0 * l2_normalize(torch.as_tensor(x)) @ background,
                               rtol=1e-4, atol=1e-4)


def test_vlp_branch_checks_its_inputs():
    context, _ = _vlp_context(width=8)
    with pytest.raises(WtalInputError, match="class text embeddings are 8-d but the 'clip' stream is 6-d"):
        build_model("vlp", ModelContext({"clip": 6}, context.classes, class_text=context.class_text))
    with pytest.raises(WtalInputError, match="needs class-name text embeddings") as err:
        build_model("vlp", ModelContext({"clip": 8}, context.classes))
    assert "embed-classes" in err.value.fix
    with pytest.raises(WtalInputError, match="odd kernel"):
        build_model("vlp", context, kernel_size=4)


def test_vlp_branch_learns_classes_from_video_labels():
    """MIL training on two classes whose snippets point along their text rows beats the untrained branch."""
    rng = np.random.default_rng(0)
    context, text = _vlp_context(width=16, classes=2, seed=3)
    model = build_model("vlp", context, dropout=0.0)
    videos, labels = [], []
    for i in range(16):
        c = i % 2
        x = rng.normal(size=(10, 16)) * 0.5 + 0.3 * text[1 - c]  # distractor along the other class
        x[3:6] += 1.5 * text[c]
        videos.append(x)
        labels.append(np.eye(2)[c])
    batch = _batch(np.stack(videos).astype(np.float32), np.stack(labels).astype(np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = model.losses(model(batch), batch, 0)["total"].mean()
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first


# ------------------------------------------------------------------------------------------- alternate plug-in
def test_alternate_phases_follow_the_schedule():
    config = AlternateConfig.from_dict({"warmup_epochs": 2, "b_step_epochs": 1, "f_step_epochs": 2})
    assert [config.phase(e) for e in range(8)] == ["joint", "joint", "B", "F", "F", "B", "F", "F"]
    plugin = AlternatePlugin(config, teacher=None, num_classes=3)
    assert plugin.frozen_roles(1) == frozenset() and plugin.frozen_roles(2) == {"model"}
    assert plugin.frozen_roles(3) == {"teacher"}
    with pytest.raises(WtalInputError, match="neither B nor F"):
        AlternateConfig.from_dict({"b_step_epochs": 0, "f_step_epochs": 0})
    with pytest.raises(WtalInputError, match="unknown vlp_alternate setting 'ratio'"):
        AlternateConfig.from_dict({"ratio": 0.2})
    with pytest.raises(WtalInputError, match="label_loss"):
        AlternateConfig.from_dict({"label_loss": "focal"})


def test_confident_snippets_by_ratio_and_by_threshold():
    score = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.7, 0.0], [0.2, 0.8, 0.4, 0.6, 0.0, 0.0]])
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    ratio = AlternateConfig(background_ratio=0.5, foreground_ratio=0.34)
    # video 0: 6 snippets -> 3 lowest (0.0, 0.1, 0.3), 2 highest (0.9, 0.7); video 1: 4 -> 2 lowest, 1 highest
    low = confident_snippets(score, mask, ratio, lowest=True)
    high = confident_snippets(score, mask, ratio, lowest=False)
    assert low.tolist() == [[False, True, False, True, False, True], [True, False, True, False, False, False]]
    assert high.tolist() == [[True, False, False, False, True, False], [False, True, False, False, False, False]]
    thresholds = AlternateConfig(selection="threshold", background_threshold=0.2, foreground_threshold=0.8)
    # video 0 normalised: 1, .11, .56, .33, .78, 0; video 1 (0.2..0.8): 0, 1, .33, .67
    assert confident_snippets(score, mask, thresholds, lowest=True).tolist() == [
        [False, True, False, False, False, True], [True, False, False, False, False, False]]
    assert confident_snippets(score, mask, thresholds, lowest=False).tolist() == [
        [True, False, False, False, False, False], [False, True, False, False, False, False]]


def test_label_targets_and_losses():
    chosen = torch.tensor([[True, False, True]])
    cls = torch.tensor([[1, 0, 2]])
    background = label_targets(chosen, cls, 3, background=True, kind="class")
    assert background[0, :, 3].tolist() == [1.0, 0.0, 1.0] and background[..., :3].abs().sum() == 0
    fg = label_targets(chosen, cls, 3, background=False, kind="class")
    assert fg[0].tolist() == [[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]]
    agnostic = label_targets(chosen, cls, 3, background=False, kind="agnostic")
    assert agnostic[0, :, 3].tolist() == [-1.0, 0.0, -1.0]


class _Branch(torch.nn.Module):
    """A stand-in branch whose CAS and logits are given."""

    def __init__(self, cas, logits):
        super().__init__()
        self.cas, self.logits = cas, logits

    def localization_scores(self, out, mask):
        return self.cas, None

    def distill_logits(self, out):
        return [(1.0, self.logits)]


def test_f_step_loss_is_cross_entropy_on_the_vlp_top_snippets():
    """Hand-solved: the frozen VLP's top share of snippets, labelled with its best ground-truth class, is
    the CBP's cross-entropy target; the loss is the per-video mean over all snippets."""
    T, C = 4, 2
    vlp_cas = torch.tensor([[[0.1, 0.0], [0.9, 0.2], [0.3, 0.8], [0.2, 0.1]]])
    cbp_logits = torch.randn(1, T, C + 1)
    labels = torch.tensor([[1.0, 1.0]])
    batch = Batch(inputs={}, mask=torch.ones(1, T, dtype=torch.bool), labels=labels, names=["v"],
                  index=torch.zeros(1, dtype=torch.long), fields={})
    config = AlternateConfig.from_dict({"warmup_epochs": 0, "b_step_epochs": 0, "f_step_epochs": 1,
                                        "foreground_ratio": 0.5, "foreground_weight": 2.0})
    plugin = AlternatePlugin(config, teacher=_Branch(vlp_cas, None), num_classes=C)
    loss = plugin.loss(_Branch(None, cbp_logits), None, batch, 0, teacher_out=object())
    logp = torch.log_softmax(cbp_logits[0], dim=-1)
    expected = 2.0 * -(logp[1, 0] + logp[2, 1]) / T  # snippets 1 (class 0, 0.9) and 2 (class 1, 0.8)
    torch.testing.assert_close(loss, expected.reshape(1))


# ------------------------------------------------------------------------------------------- trainer hook
def test_frozen_roles_are_checked():
    class Freeze:
        def __init__(self, roles):
            self.roles = roles

        def frozen_roles(self, epoch):
            return self.roles

    assert frozen_roles([Freeze({"model"}), object()], 0, has_joint_teacher=True) == {"model"}
    with pytest.raises(WtalInputError, match="freeze everything"):
        frozen_roles([Freeze({"model"}), Freeze({"teacher"})], 0, has_joint_teacher=True)
    with pytest.raises(WtalInputError, match="freeze everything"):
        frozen_roles([Freeze({"model"})], 0, has_joint_teacher=False)
    with pytest.raises(WtalInputError, match="no jointly trained teacher"):
        frozen_roles([Freeze({"teacher"})], 0, has_joint_teacher=False)
    with pytest.raises(WtalInputError, match="unknown role"):
        frozen_roles([Freeze({"student"})], 0, has_joint_teacher=True)


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_alternate_training_freezes_one_branch_per_step(clip_data, tmp_path):
    """Joint warm-up epoch: both branches move; B epoch: only the VLP branch (teacher); F epoch: only the CBP
    branch, whose RSKP memory bank (a buffer updated by its losses) stays as it was in the B epoch."""
    cfg = resolve_config(f"{CONFIGS}/rskp_vlp.yaml", data_path=clip_data["wtalc"], seed=0,
                         overrides=[*SHORT, "train.epochs=3", "plugins.0.warmup_epochs=1",
                                    "model.params.warmup_epoch=0"])
    trainer = Trainer(cfg, None, device="cpu")
    snapshots = [(_params(trainer.model), _params(trainer.joint_teacher))]
    for epoch in range(3):
        trainer.train_epoch(epoch)
        trainer.model.on_epoch_end(epoch, trainer.train_batches)
        snapshots.append((_params(trainer.model), _params(trainer.joint_teacher)))
    (m0, t0), (m1, t1), (m2, t2), (m3, t3) = snapshots
    assert _changed(m0, m1) and _changed(t0, t1)  # joint
    assert not _changed(m1, m2) and _changed(t1, t2)  # B: CBP frozen (memory included)
    assert _changed(m2, m3) and not _changed(t2, t3)  # F: VLP frozen
    assert "memory" in _changed(m2, m3)


def test_vlp_config_on_data_without_a_clip_stream_stops_with_a_clear_error(tmp_path):
    plain = write_tiny(tmp_path)
    cfg = resolve_config(f"{CONFIGS}/rskp_vlp.yaml", data_path=plain["wtalc"], overrides=SHORT)
    with pytest.raises(WtalInputError, match="no 'clip' stream") as err:
        Trainer(cfg, None, device="cpu")
    assert "teacher.model.streams" in err.value.fix


def test_alternate_plugin_without_a_joint_teacher_is_an_error(clip_data):
    cfg = resolve_config(f"{CONFIGS}/rskp_vlp.yaml", data_path=clip_data["wtalc"], overrides=[*SHORT, "teacher=null"])
    with pytest.raises(WtalInputError, match="needs a jointly trained VLP branch"):
        Trainer(cfg, None, device="cpu")


def test_gaufuse_labels_from_student_ignores_the_run_teacher():
    from wtal.pseudo.plugin import build_gaufuse_plugin

    context = SimpleNamespace(classes=["a", "b"], epochs=40, teacher=SimpleNamespace(model="VLP", joint=True))
    assert build_gaufuse_plugin(context).teacher == "VLP"
    assert build_gaufuse_plugin(context, labels_from="student").teacher is None
    with pytest.raises(WtalInputError, match="labels_from"):
        build_gaufuse_plugin(context, labels_from="vlp")


# ------------------------------------------------------------------------------------------- prediction
def test_fused_prediction_mixes_the_run_model_and_its_teacher(clip_data, tmp_path):
    run = tmp_path / "run"
    cfg = resolve_config(f"{CONFIGS}/rskp_vlp.yaml", data_path=clip_data["wtalc"], seed=0,
                         overrides=[*SHORT, "train.epochs=2", "plugins.0.warmup_epochs=1"])
    Trainer(cfg, run, device="cpu").fit()
    alone = load_run(run, device="cpu")
    assert alone.model.input_streams == ("rgb", "flow")
    for weight in (0.0, 0.3, 1.0):
        fused = load_run(run, device="cpu", teacher_weight=weight)
        test = fused.data.test
        batch = test.collate([test[i] for i in range(3)])
        with torch.no_grad():
            cas, video = fused.model.localization_scores(fused.model(batch), batch.mask)
            cas_a, video_a = fused.model.first.localization_scores(fused.model.first(batch), batch.mask)
            cas_b, video_b = fused.model.second.localization_scores(fused.model.second(batch), batch.mask)
        torch.testing.assert_close(cas, (1 - weight) * cas_a + weight * cas_b)
        torch.testing.assert_close(video, (1 - weight) * video_a + weight * video_b)
    plain = tmp_path / "plain"
    Trainer(resolve_config(f"{CONFIGS}/rskp.yaml", data_path=clip_data["wtalc"],
                           overrides=[*SHORT, "train.epochs=1"]), plain, device="cpu").fit()
    with pytest.raises(WtalInputError, match="the run has no teacher"):
        load_run(plain, device="cpu", teacher_weight=0.5)


# ------------------------------------------------------------------------------------------- ablation script
def test_ablation_rows_come_from_the_shipped_configs():
    ablate = load_benchmark("ablate_vlp")
    for row in ablate.ROWS:
        cfg = resolve_config(f"{CONFIGS}/{row.config}.yaml", overrides=list(row.overrides))
        if row.name.startswith(("b_", "f_", "both", "no_labels", "ratio", "threshold", "agnostic", "b1")):
            spec = cfg.plugins[0]
            assert spec["name"] == "vlp_alternate"
            assert spec["background_labels"] == (row.name not in ("f_only", "no_labels"))
            assert spec["foreground_labels"] == (row.name not in ("b_only", "no_labels"))
    rows = {r.name: r for r in ablate.ROWS}
    assert rows["both"].config == "rskp_vlp" and rows["both"].overrides == ()
    assert rows["cbp"].config == "rskp" and rows["both_gaufuse"].config == "rskp_vlp_gaufuse"


def test_snippet_precision_recall_hand_solved():
    ablate = load_benchmark("ablate_vlp")
    from wtal.data.annotations import AnnotationSet, Instance, VideoInfo

    video = VideoInfo("v", "test", 6.4, ("a",), [Instance("a", 1.6, 3.2)], snippets_per_second=1.25)
    ann = AnnotationSet(["a", "b"], {"v": video})
    # 8 snippets of 0.8 s; the instance covers snippets 2, 3 (W-TALC grid: 1.6*1.25=2 .. 3.2*1.25=4)
    cas = np.array([[0.0, 0], [0.2, 0], [1.0, 0], [0.4, 0], [0.9, 0], [0.1, 0], [0.0, 0], [0.0, 0]])
    precision, recall = ablate.snippet_precision_recall({"v": cas}, ann)
    assert (precision, recall) == (pytest.approx(1 / 2), pytest.approx(1 / 2))  # predicted: 2 and 4
