"""Local-global multi-modal distillation: the activation KL, the mutual model, the activation_distill plug-in,
GauFuse labels from a frozen teacher, and the teacher -> RGB student -> predict pipeline end to end."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SMALL_MODELS, as_double, collate_joint, joint_context
from test_engine_data import write_tiny

from wtal.cli import main
from wtal.engine.config import resolve_config
from wtal.engine.plugins import PluginContext, build_plugins
from wtal.engine.teacher import Teacher
from wtal.errors import WtalInputError
from wtal.models import build_model
from wtal.models.losses import activation_kl
from wtal.models.mutual import stream_context
from wtal.models.stpn import STPN
from wtal.pseudo.activation import ActivationDistillPlugin, build_activation_distill_plugin
from wtal.pseudo.plugin import GauFuseConfig, build_gaufuse_plugin
from wtal.tasks.detection import DetectionTask

DIM, CLASSES = 32, 4


def _items(lengths=(6, 17, 11), seed=0, dim=DIM):
    rng = np.random.default_rng(seed)
    labels = [np.eye(CLASSES, dtype=np.float32)[i % CLASSES] for i in range(len(lengths))]
    labels[-1][0] = 1.0  # one multi-label video
    return [(rng.normal(size=(t, dim)).astype(np.float32) * 2.0, labels[i], f"v{i}", i)
            for i, t in enumerate(lengths)]


def _batch(**kw):
    return collate_joint(_items(**kw))


# --------------------------------------------------------------------------------------------- activation KL
def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * (np.log(p) - np.log(q))))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def test_activation_kl_over_classes_is_the_mean_snippet_kl():
    rng = np.random.default_rng(1)
    t, s = rng.normal(size=(2, 5, 3)) * 2, rng.normal(size=(2, 5, 3)) * 2
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    got = activation_kl(torch.tensor(t), torch.tensor(s), mask, 2.0, "classes")
    for b, length in enumerate([5, 3]):
        want = 4.0 * np.mean([_kl(_softmax(t[b, i] / 2), _softmax(s[b, i] / 2)) for i in range(length)])
        assert float(got[b]) == pytest.approx(want, rel=1e-10)


def test_activation_kl_over_time_averages_the_selected_columns_of_each_video():
    rng = np.random.default_rng(2)
    t, s = rng.normal(size=(2, 6, 3)), rng.normal(size=(2, 6, 3))
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    s_padded = s.copy()
    s_padded[1, 4:] = 1e6  # padded snippets never count
    columns = torch.tensor([[True, False, True], [False, False, False]])
    got = activation_kl(torch.tensor(t), torch.tensor(s_padded), mask, 1.0, "time", columns)
    want = np.mean([_kl(_softmax(t[0, :, c]), _softmax(s[0, :, c])) for c in (0, 2)])
    assert float(got[0]) == pytest.approx(want, rel=1e-10)
    assert float(got[1]) == 0.0  # no selected column
    every = activation_kl(torch.tensor(t), torch.tensor(s_padded), mask, 1.0, "time")
    want_all = np.mean([_kl(_softmax(t[1, :4, c]), _softmax(s[1, :4, c])) for c in range(3)])
    assert float(every[1]) == pytest.approx(want_all, rel=1e-10)


def test_activation_kl_is_zero_on_equal_maps_and_pulls_only_the_student():
    t = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    s = (t.detach() + 0.5 * torch.randn(2, 7, 3, dtype=torch.float64)).requires_grad_(True)
    mask = torch.ones(2, 7, dtype=torch.bool)
    for axis in ("classes", "time"):
        assert torch.allclose(activation_kl(t, t.detach().clone(), mask, 1.5, axis), torch.zeros(2, dtype=t.dtype))
        loss = activation_kl(t, s, mask, 1.5, axis)
        assert torch.all(loss > 0)
        loss.sum().backward()
        assert t.grad is None and s.grad is not None and torch.isfinite(s.grad).all()
        s.grad = None


# ------------------------------------------------------------------------------------------- mutual model
def _mutual(**params):
    torch.manual_seed(0)
    return build_model("mutual", joint_context(DIM, CLASSES), **{"dropout": 0.0, **params})


def test_each_branch_is_the_base_model_on_its_stream_alone():
    model = _mutual().eval()
    batch = _batch()
    out = model(batch)
    for stream, branch_out in zip(("rgb", "flow"), out.extras["branches"], strict=True):
        alone = build_model("rskp", stream_context(joint_context(DIM, CLASSES), stream), dropout=0.0).eval()
        alone.load_state_dict(model.branches[stream].state_dict())
        torch.testing.assert_close(alone(batch).cas_logits, branch_out.cas_logits)
        torch.testing.assert_close(alone.localization_scores(alone(batch), batch.mask)[0],
                                   model.branches[stream].localization_scores(branch_out, batch.mask)[0])
    # the RGB branch never sees flow
    changed = dataclasses.replace(batch, inputs={**batch.inputs, "flow": batch.inputs["flow"] + 3.0})
    torch.testing.assert_close(model(changed).extras["branches"][0].cas_logits, out.extras["branches"][0].cas_logits)


def test_output_fuses_the_branches_with_the_fusion_weights():
    model = _mutual(fusion_weights=[3.0, 1.0]).eval()
    batch = _batch()
    out = model(batch)
    (rgb, flow) = out.extras["branches"]
    cas_r, vid_r = model.branches["rgb"].localization_scores(rgb, batch.mask)
    cas_f, vid_f = model.branches["flow"].localization_scores(flow, batch.mask)
    cas, video = model.localization_scores(out, batch.mask)
    torch.testing.assert_close(cas, 0.75 * cas_r + 0.25 * cas_f)
    torch.testing.assert_close(video, 0.75 * vid_r + 0.25 * vid_f)
    mixture = 0.75 * rgb.cas_logits.softmax(-1) + 0.25 * flow.cas_logits.softmax(-1)
    torch.testing.assert_close(out.cas_logits.softmax(-1), mixture)
    assert [w for w, _ in model.distill_logits(out)] == pytest.approx([0.6, 0.15, 0.2, 0.05])  # RSKP 0.8 / 0.2


def test_mutual_term_is_the_symmetric_softened_kl_of_the_branches_maps():
    tau = 3.0
    model = _mutual(mutual_temperature=tau, mutual_weight=0.5).double().eval()
    batch = as_double(_batch())
    with torch.no_grad():
        out = model(batch)
        losses = model.losses(out, batch, 0)
    rgb, flow = (o.extras for o in out.extras["branches"])
    lengths = batch.mask.sum(1).tolist()

    def term(target, student, b):  # 0.8 on o.S, 0.2 on m.S, mean over real snippets, tau^2
        total = 0.0
        for w, key in ((0.8, "o"), (0.2, "m")):
            t, s = target[key].logits[b].numpy(), student[key].logits[b].numpy()
            total += w * tau ** 2 * np.mean([_kl(_softmax(t[i] / tau), _softmax(s[i] / tau))
                                             for i in range(lengths[b])])
        return total

    for b in range(len(lengths)):
        assert float(losses["rgb/mutual"][b]) == pytest.approx(term(flow, rgb, b), rel=1e-9)
        assert float(losses["flow/mutual"][b]) == pytest.approx(term(rgb, flow, b), rel=1e-9)
    want = losses["rgb/total"] + losses["flow/total"] + 0.5 * (losses["rgb/mutual"] + losses["flow/mutual"])
    torch.testing.assert_close(losses["total"], want)


def test_mutual_term_trains_each_branch_towards_the_other_only():
    model = _mutual().train()
    batch = _batch()
    out = model(batch)
    model.losses(out, batch, 0)["rgb/mutual"].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.branches["rgb"].parameters())
    assert all(p.grad is None or not p.grad.any() for p in model.branches["flow"].parameters())


def test_without_mutual_weight_the_branches_train_as_independent_models():
    model = _mutual(mutual_weight=0.0).train()
    batch = _batch()
    losses = model.losses(model(batch), batch, 0)
    assert "mutual" not in losses
    torch.testing.assert_close(losses["total"], losses["rgb/total"] + losses["flow/total"])
    # and a mutual term that starts later is absent before its epoch
    late = _mutual(mutual_start_epoch=5)
    assert "mutual" not in late.losses(late(batch), batch, 4) and "mutual" in late.losses(late(batch), batch, 5)


def test_any_base_model_can_be_a_branch():
    model = build_model("mutual", joint_context(DIM, CLASSES), base="stpn", **SMALL_MODELS["stpn"],
                        mutual_axis="time")
    batch = _batch()
    out = model(batch)
    losses = model.losses(out, batch, 0)
    assert {"rgb/cls", "flow/cls", "mutual", "total"} <= set(losses)
    assert all(torch.isfinite(v).all() and v.shape == (3,) for v in losses.values())
    assert all(isinstance(branch, STPN) for branch in model.branches.values())


@pytest.mark.parametrize("params, message", [
    ({"base": "mutual"}, "cannot be 'mutual'"),
    ({"nonsense": 1}, "unknown hyperparameter"),
    ({"dropout": 1.5}, "model.params.dropout"),
    ({"mutual_axis": "space"}, "mutual_axis"),
    ({"mutual_temperature": 0}, "mutual_temperature"),
])
def test_bad_mutual_params_stop_at_config_time(params, message):
    sets = [f"model.params.{k}={v}" for k, v in params.items()]
    with pytest.raises(WtalInputError, match=message):
        resolve_config("lgmd_teacher_rskp", overrides=sets)


def test_mutual_model_needs_one_fusion_weight_per_stream_and_two_streams():
    with pytest.raises(WtalInputError, match="2 stream branches but fusion_weights"):
        _mutual(fusion_weights=[1.0, 1.0, 1.0])
    with pytest.raises(WtalInputError, match="at least two"):
        build_model("mutual", joint_context(DIM, CLASSES, streams=("rgb",)))


# ------------------------------------------------------------------------------------ activation_distill
def _plugin_context(teacher=None) -> PluginContext:
    return PluginContext(classes=[f"class{i}" for i in range(CLASSES)], snippets_per_second=1.0, num_train_videos=3,
                         epochs=10, device=torch.device("cpu"), postprocess={}, config={}, teacher=teacher)


class CountingModel(torch.nn.Module):
    """A model wrapper that counts forward passes (of all its copies: the plug-in runs a snapshot)."""

    calls = 0

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        type(self).calls += 1
        return self.model(batch)

    def localization_scores(self, out, mask):
        return self.model.localization_scores(out, mask)

    def activation_map(self, out, batch):
        return self.model.activation_map(out, batch)


def test_activation_distill_matches_the_teachers_map_over_time_and_computes_it_once():
    teacher_model = CountingModel(_mutual().eval())
    CountingModel.calls = 0
    teacher = Teacher(teacher_model, ("rgb", "flow"), joint=False, description="t")
    (plugin,) = build_plugins([{"name": "activation_distill", "loss_balance": None, "weight": 2.0,
                                "temperature": 1.5}], _plugin_context(teacher))
    assert isinstance(plugin, ActivationDistillPlugin)
    torch.manual_seed(1)
    student = build_model("rskp", stream_context(joint_context(DIM, CLASSES), "rgb"), dropout=0.0).eval()
    items = _items()

    def train_batches():
        return iter([collate_joint(items[:2]), collate_joint(items[2:])])

    for epoch in range(3):
        plugin.on_epoch_start(epoch, student, train_batches)
    assert CountingModel.calls == 2  # two batches, one pass, never again
    batch = collate_joint(items)
    out = student(batch)
    got = plugin.loss(student, out, batch, 2).detach()
    with torch.no_grad():
        cas_s, _ = student.localization_scores(out, batch.mask)
        cas_t, _ = teacher_model.localization_scores(teacher_model(batch), batch.mask)
    for b, length in enumerate(batch.mask.sum(1).tolist()):
        classes = torch.nonzero(batch.labels[b]).flatten().tolist()
        t, s = (np.log(np.maximum(x[b, :length].double().numpy(), 1e-8)) / 1.5 for x in (cas_t, cas_s))
        want = 2.0 * 1.5 ** 2 * np.mean([_kl(_softmax(t[:, c]), _softmax(s[:, c])) for c in classes])
        assert float(got[b]) == pytest.approx(want, rel=1e-4)
    # a student that is the teacher has nothing to learn
    (same,) = build_plugins([{"name": "activation_distill", "loss_balance": None}], _plugin_context(teacher))
    same.on_epoch_start(0, teacher_model, train_batches)
    assert torch.allclose(same.loss(teacher_model, teacher_model(batch), batch, 0), torch.zeros(3), atol=1e-6)


def test_activation_distill_balance_is_measured_once_and_kept_in_checkpoints():
    teacher = Teacher(_mutual().eval(), ("rgb", "flow"), joint=False, description="t")
    (plugin,) = build_plugins([{"name": "activation_distill", "start_epoch": 1}], _plugin_context(teacher))
    student = build_model("rskp", stream_context(joint_context(DIM, CLASSES), "rgb"), dropout=0.0)
    items = _items()
    batches = lambda: iter([collate_joint(items)])  # noqa: E731
    plugin.on_epoch_start(0, student, batches)
    assert plugin.weight_factor is None and plugin.loss(student, student(collate_joint(items)), collate_joint(items),
                                                        0) is None
    plugin.on_epoch_start(1, student, batches)
    factor = plugin.weight_factor
    assert factor > 0
    # the balanced term equals the student's own loss (eval-mode means over the training set)
    student.eval()
    batch = collate_joint(items)
    with torch.no_grad():
        out = student(batch)
        assert float(plugin.loss(student, out, batch, 1).mean()) == pytest.approx(
            float(student.losses(out, batch, 1)["total"].mean()), rel=1e-5)
    resumed = build_activation_distill_plugin(_plugin_context(teacher), start_epoch=1)
    resumed.load_state_dict(plugin.state_dict())
    resumed.on_epoch_start(2, student, batches)
    assert resumed.weight_factor == factor


@pytest.mark.parametrize("params, message", [({}, "needs a teacher"), ({"weight": -1}, "activation_distill.weight"),
                                             ({"classes": "some"}, "classes"), ({"nope": 1}, "unknown")])
def test_activation_distill_refuses_bad_settings(params, message):
    teacher = None if not params else Teacher(_mutual(), ("rgb", "flow"), joint=False, description="t")
    with pytest.raises(WtalInputError, match=message):
        build_plugins([{"name": "activation_distill", **params}], _plugin_context(teacher))


# ------------------------------------------------------------------------------ GauFuse with a teacher
def test_gaufuse_labels_from_a_frozen_teacher():
    frozen = Teacher(_mutual(), ("rgb", "flow"), joint=False, description="mutual from RUN")
    one_generation = {"generation_epochs": [0], "target_start_epoch": 0, "delta_start_epochs": [],
                      "delta_scales": [], "temperatures": 1.0}
    assert build_gaufuse_plugin(_plugin_context(frozen), **one_generation).teacher is frozen.model
    assert build_gaufuse_plugin(_plugin_context(frozen), **one_generation, labels_from="student").teacher is None
    with pytest.raises(WtalInputError, match="Δ targets from epoch .* would all be 0"):
        build_gaufuse_plugin(_plugin_context(frozen))  # the paper preset's schedule has Δ phases
    joint = dataclasses.replace(frozen, joint=True)  # a jointly trained teacher changes between generations
    assert build_gaufuse_plugin(_plugin_context(joint)).teacher is joint.model
    with pytest.raises(WtalInputError, match="--set teacher.run"):
        build_gaufuse_plugin(_plugin_context(None), labels_from="teacher")
    with pytest.raises(WtalInputError, match="labels_from"):
        GauFuseConfig.from_dict({"labels_from": "anyone"}, total_epochs=10)


# -------------------------------------------------------------------------------------------- end to end
TEACHER_SETS = ["train.progress=false", "train.eval_every=1", "data.val_fraction=0.2"]


def _train(config: str, data: Path, out: Path, *sets: str) -> int:
    args = ["train", "--config", config, "--data", str(data), "--out", str(out), "--epochs", "3", "--seed", "0",
            "--device", "cpu"]
    for item in (*TEACHER_SETS, *sets):
        args += ["--set", item]
    return main(args)


@pytest.fixture(scope="module")
def lgmd_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lgmd")
    data = write_tiny(root / "data")["folders"]
    teacher, student = root / "teacher", root / "student"
    assert _train("lgmd_teacher_rskp", data, teacher) == 0
    assert _train("lgmd_student_rskp", data, student, f"teacher.run={teacher}") == 0
    return {"root": root, "data": data, "teacher": teacher, "student": student}


def _predict(run: Path, out: Path, data: Path | None = None) -> int:
    return main(["predict", "--run", str(run), "--out", str(out), "--device", "cpu",
                 *(["--data", str(data)] if data is not None else [])])


def test_student_reads_rgb_only_and_was_taught_by_the_teacher(lgmd_runs):
    student = lgmd_runs["student"]
    assert json.loads((student / "data.json").read_text())["streams"] == {"rgb": 8}
    log = (student / "train.log").read_text()
    assert "teacher: mutual on rgb+flow" in log and "pseudo labels generation 0 at epoch 0" in log
    losses = json.loads((student / "metrics.jsonl").read_text().splitlines()[-1])["loss"]
    assert losses["plugin/gaufuse0"] > 0 and losses["plugin/activation_distill1"] > 0
    assert {"rgb/mutual", "flow/mutual"} <= set(json.loads(
        (lgmd_runs["teacher"] / "metrics.jsonl").read_text().splitlines()[0])["loss"])


def _copy_with_flow(data: Path, target: Path, how: str) -> Path:
    shutil.copytree(data, target)
    for folder in (target / "features").glob("*/flow"):
        if how == "deleted":
            shutil.rmtree(folder)
        else:
            for file in folder.glob("*.npy"):
                np.save(file, np.zeros_like(np.load(file)))
    return target


def test_student_predictions_do_not_depend_on_the_flow_stream(lgmd_runs, tmp_path):
    student, data = lgmd_runs["student"], lgmd_runs["data"]
    assert _predict(student, tmp_path / "p.json") == 0
    reference = json.loads((tmp_path / "p.json").read_text())
    assert reference == json.loads((student / "predictions" / "test.json").read_text()) and reference["results"]
    for how in ("deleted", "zeroed"):
        copy = _copy_with_flow(data, tmp_path / how, how)
        assert _predict(student, tmp_path / f"{how}.json", copy) == 0
        assert json.loads((tmp_path / f"{how}.json").read_text()) == reference, how
    # the teacher does read flow: without it, it stops with a clear error; zeroed, it predicts otherwise
    assert _predict(lgmd_runs["teacher"], tmp_path / "t.json", tmp_path / "deleted") == 2
    assert _predict(lgmd_runs["teacher"], tmp_path / "t0.json") == 0
    assert _predict(lgmd_runs["teacher"], tmp_path / "t1.json", tmp_path / "zeroed") == 0
    assert (tmp_path / "t0.json").read_text() != (tmp_path / "t1.json").read_text()


@pytest.mark.parametrize("change, message", [({"num_classes": 4}, "4 classes instead of 3"),
                                             ({"dim": 20}, "'rgb' is 10-d instead of 8-d")])
def test_predict_on_a_folder_with_other_classes_or_widths_is_a_clear_error(lgmd_runs, tmp_path, capsys, change,
                                                                           message):
    other = write_tiny(tmp_path / "other", **change)["folders"]
    assert _predict(lgmd_runs["student"], tmp_path / "p.json", other) == 2
    err = capsys.readouterr().err
    assert message in err and "differs from what run" in err and "Traceback" not in err
    assert not (tmp_path / "p.json").exists()


class RenamedDetection(DetectionTask):
    """Detection under another task name: a teacher run of a task other than the student's."""

    name = "renamed-detection"


@pytest.mark.parametrize("case, message", [("classes", "3 classes instead of 4"),
                                           ("width", "'rgb' is 8-d instead of 10-d"),
                                           ("task", "task 'detection' instead of 'renamed-detection'")])
def test_student_of_an_incompatible_teacher_run_stops_with_a_clear_error(lgmd_runs, tmp_path, capsys, case,
                                                                         message):
    data = lgmd_runs["data"]
    if case == "task":
        teacher = tmp_path / "teacher"
        assert _train("lgmd_teacher_rskp", data, teacher, "task=test_lgmd:RenamedDetection") == 0
    else:
        other = write_tiny(tmp_path / "other", **({"num_classes": 4} if case == "classes" else {"dim": 20}))
        teacher = tmp_path / "teacher"
        assert _train("lgmd_teacher_rskp", other["folders"], teacher) == 0
    capsys.readouterr()
    assert _train("lgmd_student_rskp", data, tmp_path / "student", f"teacher.run={teacher}") == 2
    err = capsys.readouterr().err
    assert message in err and str(teacher) in err and "Traceback" not in err
    assert not (tmp_path / "student" / "checkpoints").exists()


def test_student_without_a_teacher_run_says_how_to_name_one(lgmd_runs, tmp_path, capsys):
    assert _train("lgmd_student_rskp", lgmd_runs["data"], tmp_path / "s") == 2
    assert "--set teacher.run=RUN" in capsys.readouterr().err


def test_student_resumed_after_a_kill_trains_as_if_uninterrupted(lgmd_runs, tmp_path):
    from wtal.engine.trainer import Trainer

    cfg = resolve_config("lgmd_student_rskp", epochs=3, seed=0, data_path=lgmd_runs["data"],
                         overrides=[*TEACHER_SETS, "train.num_threads=1", f"teacher.run={lgmd_runs['teacher']}"])
    Trainer(cfg, tmp_path / "straight", device="cpu").fit()
    killed = Trainer(cfg, tmp_path / "killed", device="cpu")
    train_epoch = killed.train_epoch

    def interrupted(epoch: int):
        if epoch == 2:
            raise KeyboardInterrupt
        return train_epoch(epoch)

    killed.train_epoch = interrupted
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    resumed = Trainer(cfg, tmp_path / "killed", device="cpu")
    resumed.fit(resume=True)
    assert resumed.plugins[1].weight_factor == killed.plugins[1].weight_factor  # kept, not re-measured
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
