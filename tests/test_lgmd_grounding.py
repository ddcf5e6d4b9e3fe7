"""Local-global multi-modal distillation for sentence grounding: the mutual model over CPL branches (its mutual
term and fused ranking), the boundary_distill and activation_distill plug-ins on grounding models, the
teacher's compatibility checks, and the teacher -> RGB student -> predict pipeline end to end."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from wtal.cli import main
from wtal.data.synthetic_grounding import GroundingSynthConfig, write_grounding_synthetic
from wtal.engine.config import resolve_config
from wtal.engine.plugins import PluginContext, build_plugins
from wtal.engine.teacher import Teacher
from wtal.errors import WtalInputError
from wtal.models.cpl import best_segment, query_generators
from wtal.models.factory import build_model
from wtal.models.mutual import stream_context
from wtal.tasks.grounding import GroundingTask

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["model.params.hidden_dim=16", "model.params.num_heads=2", "model.params.ffn_dim=32",
        "model.params.video_layers=1", "model.params.text_layers=1", "model.params.word_dim=8",
        "model.params.proposal_stride=1", "model.params.dropout=0.0", "grounding.num_clips=null",
        "data.batch_size=8", "data.eval_batch_size=16", "data.val_fraction=0.2", "optim.schedule.warmup_steps=2",
        "train.progress=false", "train.num_threads=1"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lgmd_grounding") / "data"
    write_grounding_synthetic(folder, GroundingSynthConfig(num_videos=24, dim=16, seed=0))
    return folder


@pytest.fixture(scope="module")
def prepared(synthetic):
    """(task, run data with rgb and flow, a training batch of 5 queries)."""
    cfg = resolve_config(CONFIGS / "lgmd_teacher_cpl.yaml", data_path=synthetic, overrides=TINY)
    task = GroundingTask()
    data = task.prepare_data(cfg, ["rgb", "flow"])
    return task, data, data.train.collate([data.train[i] for i in range(5)])


def _mutual(prepared, **params):
    task, data, _ = prepared
    cfg = resolve_config(CONFIGS / "lgmd_teacher_cpl.yaml", overrides=TINY)
    torch.manual_seed(0)
    return build_model("mutual", task.model_context(data, ["rgb", "flow"]), **{**cfg.model.params, **params})


def _cpl(prepared, streams=("rgb",), seed=1):
    task, data, _ = prepared
    cfg = resolve_config(CONFIGS / "cpl_rgb.yaml", overrides=TINY)
    torch.manual_seed(seed)
    return build_model("cpl", task.model_context(data, list(streams)), **cfg.model.params)


def _time_kl(target: np.ndarray, student: np.ndarray, tau: float) -> float:
    """tau^2 KL(p || q) of two activations in (0, 1] as distributions a^(1/tau) normalised over time."""
    p = np.maximum(target, 1e-8) ** (1 / tau)
    q = np.maximum(student, 1e-8) ** (1 / tau)
    p, q = p / p.sum(), q / q.sum()
    return tau ** 2 * float(np.sum(p * (np.log(p) - np.log(q))))


# ------------------------------------------------------------------------------------------- mutual model
def test_each_branch_is_cpl_on_its_stream_alone(prepared):
    task, data, batch = prepared
    model = _mutual(prepared).eval()
    out = model(batch)
    for stream, branch_out in zip(("rgb", "flow"), out.extras["branches"], strict=True):
        alone = build_model("cpl", stream_context(task.model_context(data, ["rgb", "flow"]), stream),
                            **dataclasses.asdict(model.branches[stream].hp)).eval()
        alone.load_state_dict(model.branches[stream].state_dict())
        torch.testing.assert_close(alone(batch).proposal_nll, branch_out.proposal_nll)
    changed = dataclasses.replace(batch, inputs={**batch.inputs, "flow": batch.inputs["flow"] + 3.0})
    torch.testing.assert_close(model(changed).extras["branches"][0].proposal_nll,
                               out.extras["branches"][0].proposal_nll)  # the RGB branch never reads flow


def test_mutual_term_is_the_symmetric_softened_kl_of_the_branches_activations(prepared):
    _, _, batch = prepared
    tau = 2.5
    model = _mutual(prepared, mutual_temperature=tau, mutual_weight=0.5).eval()
    with torch.no_grad():
        out = model(batch)
        losses = model.losses(out, batch, 0)
        rgb, flow = (model.branches[s].snippet_activation(o, batch).numpy()
                     for s, o in zip(("rgb", "flow"), out.extras["branches"], strict=True))
    lengths = batch.lengths.tolist()
    for b, t in enumerate(lengths):
        assert float(losses["rgb/mutual"][b]) == pytest.approx(_time_kl(flow[b, :t], rgb[b, :t], tau), rel=1e-4)
        assert float(losses["flow/mutual"][b]) == pytest.approx(_time_kl(rgb[b, :t], flow[b, :t], tau), rel=1e-4)
    own = losses["rgb/total"] + losses["flow/total"]
    torch.testing.assert_close(losses["total"], own + 0.5 * (losses["rgb/mutual"] + losses["flow/mutual"]))
    # symmetric: exchanging the two branches' weights exchanges the two terms
    swapped = _mutual(prepared, mutual_temperature=tau, mutual_weight=0.5).eval()
    swapped.branches["rgb"].load_state_dict(model.branches["flow"].state_dict())
    swapped.branches["flow"].load_state_dict(model.branches["rgb"].state_dict())
    crossed = dataclasses.replace(batch, inputs={"rgb": batch.inputs["flow"], "flow": batch.inputs["rgb"]})
    with torch.no_grad():
        again = swapped.losses(swapped(crossed), crossed, 0)
    torch.testing.assert_close(again["rgb/mutual"], losses["flow/mutual"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(again["flow/mutual"], losses["rgb/mutual"], rtol=1e-4, atol=1e-6)


def test_mutual_term_is_zero_when_the_branches_agree_and_pulls_each_branch_only_by_its_own_map(prepared):
    _, _, batch = prepared
    model = _mutual(prepared).eval()
    model.branches["flow"].load_state_dict(model.branches["rgb"].state_dict())
    same = dataclasses.replace(batch, inputs={"rgb": batch.inputs["rgb"], "flow": batch.inputs["rgb"].clone()})
    losses = model.losses(model(same), same, 0)
    torch.testing.assert_close(losses["mutual"], torch.zeros_like(losses["mutual"]), atol=1e-6, rtol=0)
    # different branches: the term's gradient reaches a branch through its own map only (the other is a target)
    model = _mutual(prepared).eval()
    out = model(batch)
    mutual = model.mutual_losses(out, batch)
    mutual[0].sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in model.branches["flow"].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.branches["rgb"].parameters())


def test_mutual_learning_over_classes_is_refused_for_a_grounding_base(prepared):
    with pytest.raises(WtalInputError, match="(?s)mutual_axis.*use one of time"):
        _mutual(prepared, mutual_axis="classes")


def test_fused_ranking_scores_every_pooled_proposal_with_both_branches(prepared):
    _, _, batch = prepared
    model = _mutual(prepared, fusion_weights=[3.0, 1.0]).eval()
    with torch.no_grad():
        out = model(batch)
        rgb, flow = out.extras["branches"]
        centers, widths = torch.cat([rgb.centers, flow.centers], 1), torch.cat([rgb.widths, flow.widths], 1)
        f = batch.fields
        straight = [model.branches[s].cpl.segment_nll(
            batch.inputs, batch.mask, f["words"], f["word_mask"], centers, widths, word_weights=f["word_weights"],
            generator=query_generators(f["query"], model.branches[s].hp.eval_seed)) for s in ("rgb", "flow")]
    torch.testing.assert_close(out.proposal_nll, 0.75 * straight[0] + 0.25 * straight[1], rtol=1e-5, atol=1e-5)
    segments, scores = model.ranked_segments(out)
    assert segments.shape == (5, 16, 2) and np.all(np.diff(scores, axis=1) <= 0)
    k = int(out.proposal_nll[0].argmin())
    c, w = float(centers[0, k]), float(widths[0, k])
    assert segments[0, 0] == pytest.approx([max(c - w / 2, 0), min(c + w / 2, 1)], abs=1e-6)
    # while training no pass is added: the pooled distribution is the branches' mixed by the fusion weights
    model.train()
    torch.manual_seed(3)
    out = model(batch)
    rgb, flow = out.extras["branches"]
    mixture = torch.cat([0.75 * model.proposal_distribution(rgb), 0.25 * model.proposal_distribution(flow)], 1)
    torch.testing.assert_close(model.proposal_distribution(out), mixture)


# ------------------------------------------------------------------------------------------- plug-ins
def _context(teacher, task="grounding") -> PluginContext:
    return PluginContext(classes=[], snippets_per_second=0.0, num_train_videos=5, epochs=3,
                         device=torch.device("cpu"), postprocess={}, config={"task": task}, teacher=teacher)


def test_boundary_distill_pulls_the_students_top_proposal_to_the_teachers_top_segment(prepared):
    _, _, batch = prepared
    teacher_model = _mutual(prepared).eval()
    (plugin,) = build_plugins([{"name": "boundary_distill", "loss_balance": None, "weight": 3.0}],
                              _context(Teacher(teacher_model, ("rgb", "flow"), joint=False, description="t")))
    plugin.on_epoch_start(0, None, lambda: iter([batch]))
    student = _cpl(prepared)
    out = student(batch)
    loss = plugin.loss(student, out, batch, 0)
    with torch.no_grad():
        target, _ = teacher_model.ranked_segments(teacher_model(batch))
    best = out.proposal_nll.argmin(1)
    for b in range(5):
        c, w = float(out.centers[b, best[b]].detach()), float(out.widths[b, best[b]].detach())
        mine = np.array([max(c - w / 2, 0), min(c + w / 2, 1)])
        assert float(loss[b].detach()) == pytest.approx(3.0 * np.abs(mine - target[b, 0]).mean(), rel=1e-5)
    loss.sum().backward()  # only the top proposal's centre and width move
    grad = student.cpl.proposal_fc.weight.grad.view(student.hp.num_proposals, 2, -1)
    assert grad[sorted(set(best.tolist()))].abs().sum() > 0
    untouched = sorted(set(range(student.hp.num_proposals)) - set(best.tolist()))
    assert untouched and torch.all(grad[untouched] == 0)
    # a student whose answers are the teacher's has nothing to learn
    torch.testing.assert_close(plugin.term(student, out, batch, best_segment(out).detach().double()),
                               torch.zeros(5), atol=1e-7, rtol=0)


def test_activation_distill_matches_a_grounding_students_activation_to_the_teachers(prepared):
    _, _, batch = prepared
    teacher_model = _mutual(prepared).eval()
    (plugin,) = build_plugins([{"name": "activation_distill", "loss_balance": None, "temperature": 2.0,
                                "classes": "all"}],
                              _context(Teacher(teacher_model, ("rgb", "flow"), joint=False, description="t")))
    plugin.on_epoch_start(0, None, lambda: iter([batch]))
    student = _cpl(prepared).eval()
    with torch.no_grad():
        out = student(batch)
        got = plugin.loss(student, out, batch, 0)
        a_t = teacher_model.snippet_activation(teacher_model(batch), batch).numpy()
        a_s = student.snippet_activation(out, batch).numpy()
    for b, t in enumerate(batch.lengths.tolist()):
        assert float(got[b]) == pytest.approx(_time_kl(a_t[b, :t], a_s[b, :t], 2.0), rel=1e-4)
    # a student that is the teacher has nothing to learn
    (same,) = build_plugins([{"name": "activation_distill", "loss_balance": None}],
                            _context(Teacher(teacher_model, ("rgb", "flow"), joint=False, description="t")))
    same.on_epoch_start(0, None, lambda: iter([batch]))
    with torch.no_grad():
        zero = same.loss(teacher_model, teacher_model(batch), batch, 0)
    torch.testing.assert_close(zero, torch.zeros(5), atol=1e-6, rtol=0)


def test_boundary_distill_is_for_grounding_runs_with_a_teacher(prepared):
    teacher = Teacher(_mutual(prepared), ("rgb", "flow"), joint=False, description="t")
    with pytest.raises(WtalInputError, match="grounding teacher"):
        build_plugins([{"name": "boundary_distill"}], _context(teacher, task="detection"))
    with pytest.raises(WtalInputError, match="needs a teacher"):
        build_plugins([{"name": "boundary_distill"}], _context(None))
    with pytest.raises(WtalInputError, match="unknown boundary_distill"):
        build_plugins([{"name": "boundary_distill", "temperature": 2}], _context(teacher))


# ------------------------------------------------------------------------------------------- end to end
def _train(config: str, data: Path, out: Path, *sets: str) -> int:
    args = ["train", "--config", str(CONFIGS / config), "--data", str(data), "--out", str(out), "--epochs", "2",
            "--seed", "0", "--device", "cpu"]
    for item in [*TINY, *sets]:
        args += ["--set", item]
    return main(args)


@pytest.fixture(scope="module")
def teacher_run(synthetic, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("lgmd_grounding_runs") / "teacher"
    assert _train("lgmd_teacher_cpl.yaml", synthetic, run) == 0
    return run


def test_teacher_then_rgb_student_then_predict_reads_rgb_only(synthetic, teacher_run, tmp_path, capsys):
    report = json.loads((teacher_run / "report.json").read_text())
    assert report["task"] == "grounding" and 0 <= report["test"]["mIoU"] <= 100
    student = tmp_path / "student"
    assert _train("lgmd_student_cpl.yaml", synthetic, student, f"teacher.run={teacher_run}") == 0
    log = (student / "train.log").read_text()
    assert "boundary_distill" in log and "activation_distill" in log and "teacher: mutual on rgb+flow" in log
    assert main(["predict", "--run", str(student), "--out", str(tmp_path / "p.json"), "--device", "cpu"]) == 0
    predictions = json.loads((tmp_path / "p.json").read_text())
    assert predictions["task"] == "grounding" and len(predictions["results"]) == report["test"]["queries"]

    no_flow = tmp_path / "no_flow"
    shutil.copytree(synthetic, no_flow)
    shutil.rmtree(no_flow / "features" / "flow")
    zero_flow = tmp_path / "zero_flow"
    shutil.copytree(synthetic, zero_flow)
    for path in (zero_flow / "features" / "flow").glob("*.npy"):
        np.save(path, np.zeros_like(np.load(path)))
    for folder in (no_flow, zero_flow):
        out = tmp_path / f"{folder.name}.json"
        assert main(["predict", "--run", str(student), "--data", str(folder), "--out", str(out),
                     "--device", "cpu"]) == 0
        assert json.loads(out.read_text()) == predictions
    # the teacher itself needs its flow stream; a folder of another RGB width is refused
    assert main(["predict", "--run", str(teacher_run), "--data", str(no_flow), "--out", str(tmp_path / "t.json"),
                 "--device", "cpu"]) != 0
    narrow = tmp_path / "narrow"
    write_grounding_synthetic(narrow, GroundingSynthConfig(num_videos=24, dim=8, seed=0))
    capsys.readouterr()
    assert main(["predict", "--run", str(student), "--data", str(narrow), "--out", str(tmp_path / "n.json"),
                 "--device", "cpu"]) == 2
    assert "'rgb' is 4-d instead of 8-d" in capsys.readouterr().err and not (tmp_path / "n.json").exists()


def test_a_teacher_of_other_words_widths_or_task_is_refused(synthetic, teacher_run, tmp_path, capsys):
    def refused(data: Path, *sets: str, teacher: Path = teacher_run) -> str:
        capsys.readouterr()
        assert _train("lgmd_student_cpl.yaml", data, tmp_path / "s", f"teacher.run={teacher}", *sets) == 2
        return capsys.readouterr().err

    assert "another vocabulary" in refused(synthetic, "grounding.max_vocabulary=10")
    narrow = tmp_path / "narrow"
    write_grounding_synthetic(narrow, GroundingSynthConfig(num_videos=24, dim=8, seed=0))
    assert "'rgb' is 4-d instead of 8-d" in refused(narrow)
    detection = tmp_path / "detection"
    assert main(["synth", "--out", str(tmp_path / "det_data"), "--dim", "16", "--videos", "12"]) == 0
    assert main(["train", "--config", "mil", "--data", str(tmp_path / "det_data" / "wtalc"), "--out", str(detection),
                 "--epochs", "1", "--device", "cpu", "--set", "train.progress=false"]) == 0
    assert "task 'grounding' instead of 'detection'" in refused(synthetic, teacher=detection)
