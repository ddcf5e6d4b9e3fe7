"""Teachers (a trained run loaded frozen, a model trained jointly), streams at inference, and a task defined
outside wtal trained by the unchanged trainer."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from test_engine_data import tiny_run_yaml, write_tiny

from wtal.cli import main
from wtal.data.sources import open_source
from wtal.engine.config import resolve_config
from wtal.engine.trainer import Trainer
from wtal.errors import WtalInputError


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The tiny set in the per-video folder layout (streams are files that can be deleted or replaced)."""
    return write_tiny(tmp_path_factory.mktemp("teacher"))["folders"]


def _train(tmp_path, cfg_path, data, out, *sets) -> int:
    return main(["train", "--config", str(cfg_path), "--data", str(data), "--out", str(out), "--device", "cpu",
                 *[x for s in sets for x in ("--set", s)]])


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, folders):
    tmp = tmp_path_factory.mktemp("t")
    cfg = tiny_run_yaml(tmp / "teacher.yaml", epochs=3)
    assert _train(tmp, cfg, folders, tmp / "teacher") == 0
    return tmp / "teacher"


#: a frozen teacher labels the same at every generation: one generation, no Δ phase (else a clear error)
ONE_GENERATION = "delta_start_epochs: [], delta_scales: []}"


def test_rgb_student_of_an_rgb_flow_teacher_predicts_without_flow(tmp_path, folders, teacher_run):
    pseudo = "pseudo: {name: gaufuse, preset: paper, " + ONE_GENERATION
    cfg = tiny_run_yaml(tmp_path / "student.yaml", epochs=4, extra=pseudo)
    student = tmp_path / "student"
    assert _train(tmp_path, cfg, folders, student, "model.streams=[rgb]", f"teacher.run={teacher_run}") == 0
    log = (student / "train.log").read_text()
    assert "teacher: mil on rgb+flow from" in log and "pseudo labels generation" in log
    fingerprint = json.loads((student / "data.json").read_text())
    assert fingerprint["streams"] == {"rgb": 8}  # the student's own streams only
    own = json.loads((student / "predictions" / "test.json").read_text())

    # the same data without any flow file, and with the flow replaced by noise: identical predictions
    no_flow = tmp_path / "no_flow"
    shutil.copytree(folders, no_flow)
    for split in ("train", "test"):
        shutil.rmtree(no_flow / "features" / split / "flow")
    assert main(["predict", "--run", str(student), "--data", str(no_flow), "--out", str(tmp_path / "a.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text()) == own
    noisy = tmp_path / "noisy"
    shutil.copytree(folders, noisy)
    rng = np.random.default_rng(0)
    for f in noisy.glob("features/*/flow/*.npy"):
        np.save(f, rng.normal(size=np.load(f).shape).astype(np.float32))
    assert main(["predict", "--run", str(student), "--data", str(noisy), "--out", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text()) == own
    # the teacher itself needs its flow
    assert main(["predict", "--run", str(teacher_run), "--data", str(no_flow), "--out", str(tmp_path / "c.json")]) == 2


def test_the_teacher_run_makes_the_pseudo_labels(tmp_path, folders, teacher_run):
    pseudo = "pseudo: {name: gaufuse, " + ONE_GENERATION
    cfg = resolve_config(tiny_run_yaml(tmp_path / "s.yaml", epochs=4, extra=pseudo),
                         overrides=["model.streams=[rgb]", f"teacher.run={teacher_run}"], data_path=folders)
    trainer = Trainer(cfg, None, device="cpu")
    assert trainer.teacher is not None and not trainer.teacher.joint
    assert trainer.teacher.streams == ("rgb", "flow") and set(trainer.data.streams) == {"rgb", "flow"}
    assert all(not p.requires_grad for p in trainer.teacher.model.parameters())
    (plugin,) = trainer.plugins
    assert plugin.teacher is trainer.teacher.model
    before = [p.clone() for p in trainer.teacher.model.parameters()]
    trainer.fit()
    assert plugin.generations  # labels were made, by the frozen teacher, which never changed
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.teacher.model.parameters(), strict=True))


def test_a_teacher_of_other_data_is_refused(tmp_path, teacher_run):
    other = write_tiny(tmp_path / "other", num_classes=4)["folders"]
    cfg = tiny_run_yaml(tmp_path / "s.yaml", epochs=1)
    with pytest.raises(WtalInputError, match="4 classes instead of 3"):
        Trainer(resolve_config(cfg, overrides=[f"teacher.run={teacher_run}"], data_path=other), None, device="cpu")


class TeacherCASDistillation:
    """A test plug-in: the student's snippet logits pulled towards the joint teacher's (both get gradients)."""

    name = "cas_distill"

    def __init__(self, context, weight: float = 1.0):
        assert context.teacher is not None and context.teacher.joint
        self.weight = weight

    def on_epoch_start(self, epoch, model, train_batches):
        return None

    def loss(self, model, out, batch, epoch, teacher_out=None):
        assert teacher_out is not None
        diff = (out.cas_logits - teacher_out.cas_logits) ** 2
        return self.weight * (diff.mean(dim=2) * batch.mask).sum(dim=1) / batch.mask.sum(dim=1)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        return None


def test_a_jointly_trained_teacher_learns_saves_and_resumes(tmp_path, folders):
    extra = ("teacher: {model: {name: mil, streams: [flow], params: {dropout: 0.0}}}\n"
             "plugins: [{name: 'test_teachers_and_tasks:TeacherCASDistillation', weight: 0.5}]")
    cfg_path = tiny_run_yaml(tmp_path / "joint.yaml", epochs=3, extra=extra)
    cfg = resolve_config(cfg_path, overrides=["model.streams=[rgb]"], data_path=folders)
    trainer = Trainer(cfg, tmp_path / "run", device="cpu")
    teacher = trainer.teacher.model
    start = [p.detach().clone() for p in teacher.parameters()]
    batch = trainer.data.train.collate([trainer.data.train[i] for i in range(3)])
    losses = trainer.batch_losses(batch, 0)
    assert {"teacher/total", "teacher/mil", "plugin/cas_distill0"} <= set(losses)
    assert torch.allclose(losses["total"], losses["mil"] + losses["teacher/total"] + losses["plugin/cas_distill0"])
    trainer.model.zero_grad(set_to_none=True)
    trainer.fit()
    assert any(not torch.equal(a, b) for a, b in zip(start, teacher.parameters(), strict=True))
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert set(ckpt["teacher"]) == set(teacher.state_dict())

    # kill after epoch 2, resume: the same final student and teacher as the uninterrupted run
    killed = Trainer(cfg, tmp_path / "killed", device="cpu")
    for epoch in range(2):
        killed.train_epoch(epoch)
        killed.state.epoch = epoch + 1
        killed.save("last.pt")
    Trainer(cfg, tmp_path / "killed", device="cpu").fit(resume=True)
    again = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=True)
    for part in ("model", "teacher"):
        for name, value in ckpt[part].items():
            assert torch.allclose(value, again[part][name], atol=1e-6), f"{part}.{name}"


def test_a_task_and_a_model_defined_outside_wtal_train_with_the_unchanged_trainer(tmp_path, folders):
    extra = "task: 'tiny_task:Top1Task'"
    cfg_path = tiny_run_yaml(tmp_path / "top1.yaml", epochs=30, extra=extra)
    run = tmp_path / "run"
    assert _train(tmp_path, cfg_path, folders, run, "model.name=tiny_task:MeanPoolClassifier",
                  "model.params={}", "optim.lr=0.1", "train.eval_every=5") == 0
    report = json.loads((run / "report.json").read_text())
    ann = open_source(folders).annotations
    targets = [int(np.argmax(ann.multi_hot(n))) for n in ann.names("test")]
    majority = 100.0 * max(targets.count(c) for c in set(targets)) / len(targets)
    assert report["task"] == "top1" and report["test"]["top1"] > majority + 10  # beats always-the-commonest
    predictions = json.loads((run / "predictions" / "test.json").read_text())
    assert len(predictions) == report["test"]["videos"] and set(predictions.values()) <= {0, 1, 2}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["selection"]["by"] == "val" and "top1" in records[-1]["val"]
