"""The training engine: padded batches vs one video at a time, reference accumulation, plug-ins, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_engine_data import tiny_data, tiny_run_yaml  # noqa: F401  (pytest fixture)

from wtal.data.batch import collate_videos
from wtal.engine.config import resolve_config
from wtal.engine.evaluate import infer
from wtal.engine.rundata import prepare_data
from wtal.engine.seeding import seed_everything
from wtal.engine.trainer import Trainer, build_model
from wtal.evaluation.classification import classification_map


def _cfg(tmp_path, data, **kw):
    extra_sets = kw.pop("sets", [])
    cfg = resolve_config(tiny_run_yaml(tmp_path / "cfg.yaml", **kw), overrides=extra_sets,
                         data_path=data["wtalc"])
    return cfg


@pytest.mark.parametrize("model", ["mil", "rskp"])
def test_padded_batch_equals_one_video_at_a_time(tmp_path, tiny_data, model):  # noqa: F811
    cfg = _cfg(tmp_path, tiny_data, model=model)
    trainer = Trainer(cfg, None, device="cpu")
    items = [trainer.data.train[i] for i in (3, 0, 7, 5)]  # lengths differ: real padding
    assert len({it[0].shape[0] for it in items}) > 1
    params = [p for p in trainer.model.parameters() if p.requires_grad]

    trainer.model.zero_grad(set_to_none=True)
    losses = trainer.batch_losses(collate_videos(items), epoch=0)
    losses["total"].sum().backward()
    batched = [p.grad.clone() for p in params]

    trainer.model.zero_grad(set_to_none=True)
    single_totals = []
    for it in items:  # the reference loop: one backward per video, gradients accumulate (sum)
        single = trainer.batch_losses(collate_videos([it]), epoch=0)
        single["total"].sum().backward()
        single_totals.append(single)
    for key in losses:
        assert torch.allclose(losses[key], torch.cat([s[key] for s in single_totals]), atol=1e-5, rtol=1e-5), key
    for g_batch, p in zip(batched, params, strict=True):
        assert torch.allclose(g_batch, p.grad, atol=1e-5, rtol=1e-4)


def test_training_matches_the_reference_accumulation_loop(tmp_path, tiny_data):  # noqa: F811
    """Trainer == per-video backward + optimizer step every batch_size videos of a GLOBAL counter
    (18 training videos, batch 4: steps straddle epoch ends)."""
    cfg = _cfg(tmp_path, tiny_data, epochs=3, sets=["train.eval_every=10", "optim.weight_decay=5e-4"])
    trainer = Trainer(cfg, None, device="cpu")
    assert len(trainer.data.train) % cfg.data.batch_size != 0
    for epoch in range(cfg.train.epochs):
        trainer.train_epoch(epoch)

    seed_everything(cfg.train.seed)
    data = prepare_data(cfg)
    model = build_model(cfg, data.input_dim, len(data.classes))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                           weight_decay=cfg.optim.weight_decay)
    gen = torch.Generator()
    gen.manual_seed(cfg.train.seed)
    counter = 0
    for epoch in range(cfg.train.epochs):
        for i in torch.randperm(len(data.train), generator=gen).tolist():
            batch = collate_videos([data.train[i]])
            out = model(batch.features, batch.mask)
            model.losses(out, batch.labels, batch.mask, epoch)["total"].sum().backward()
            counter += 1
            if counter % cfg.data.batch_size == 0:
                opt.step()
                opt.zero_grad(set_to_none=True)
    assert trainer.state.global_step == counter // cfg.data.batch_size
    for (name, a), b in zip(trainer.model.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name
    carried = [p.grad for p in model.parameters()]  # 54 % 4 = 2 videos carried into a next epoch
    assert all(g is not None for g in carried)
    for p, g in zip(trainer.model.parameters(), carried, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-5)


class ConstantPlugin:
    """A plug-in adding ``weight * (model total)`` per video; optionally kills the run at an epoch."""

    name = "const"

    def __init__(self, weight: float = 0.0, kill_at: int | None = None):
        self.weight, self.kill_at, self.started = weight, kill_at, []

    def on_epoch_start(self, epoch, model, train_batches):
        if epoch == self.kill_at:
            raise KeyboardInterrupt("simulated kill")
        self.started.append(epoch)
        assert sum(len(b.names) for b in train_batches()) > 0

    def loss(self, model, out, batch, epoch):
        if self.weight == 0:
            return None
        return self.weight * model.losses(out, batch.labels, batch.mask, epoch)["total"]

    def state_dict(self):
        return {"started": torch.tensor(self.started, dtype=torch.int64)}

    def load_state_dict(self, state):
        self.started = state["started"].tolist()


def test_plugin_loss_is_added_per_video(tmp_path, tiny_data):  # noqa: F811
    cfg = _cfg(tmp_path, tiny_data)
    plugin = ConstantPlugin(weight=0.5)
    trainer = Trainer(cfg, None, device="cpu", plugins=[plugin])
    batch = collate_videos([trainer.data.train[i] for i in range(3)])
    losses = trainer.batch_losses(batch, 0)
    assert torch.allclose(losses["total"], 1.5 * losses["mil"])
    assert torch.allclose(losses["plugin/const0"], 0.5 * losses["mil"])


def test_resume_after_a_kill_gives_identical_weights(tmp_path, tiny_data):  # noqa: F811
    # dropout on (RNG streams must be restored) and 18 videos / batch 4 (a gradient is carried at epoch ends)
    cfg = _cfg(tmp_path, tiny_data, epochs=4, sets=["model.params.dropout=0.5", "train.eval_every=2"])
    straight = Trainer(cfg, tmp_path / "straight", device="cpu", plugins=[ConstantPlugin()])
    straight.fit()

    killed = Trainer(cfg, tmp_path / "killed", device="cpu", plugins=[ConstantPlugin(kill_at=2)])
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    assert killed.state.epoch == 2 and not (tmp_path / "killed" / "report.json").exists()
    resumed_plugin = ConstantPlugin()
    resumed = Trainer(cfg, tmp_path / "killed", device="cpu", plugins=[resumed_plugin])
    resumed.fit(resume=True)
    assert resumed_plugin.started == [0, 1, 2, 3]  # plug-in state came back from the checkpoint
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["state"] == b["state"]
    lines_a = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    lines_b = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert len(lines_a) == len(lines_b) == 4


def test_evaluation_does_not_change_training(tmp_path, tiny_data):  # noqa: F811
    cfg = _cfg(tmp_path, tiny_data, epochs=2, sets=["model.params.dropout=0.5"])
    often = Trainer(cfg, None, device="cpu")
    often.fit()
    cfg.train.eval_every = 5
    cfg.train.select = "last"
    rarely = Trainer(cfg, None, device="cpu")
    rarely.fit()
    for a, b in zip(often.model.state_dict().values(), rarely.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_tiny_training_beats_chance_on_classification(tmp_path, tiny_data):  # noqa: F811
    cfg = _cfg(tmp_path, tiny_data, epochs=8, sets=["train.eval_every=100", "train.select=last",
                                                      "data.val_fraction=0.0"])
    trainer = Trainer(cfg, None, device="cpu")
    report = trainer.fit()
    _, scores = infer(trainer.model, trainer.data.test, torch.device("cpu"), 8)
    ann = trainer.data.annotations
    labels = np.stack([ann.multi_hot(n) for n in trainer.data.test.names])
    trained = classification_map(np.stack(list(scores.values())), labels)
    assert report["test"]["classification_map"] == pytest.approx(trained)
    rng = np.random.default_rng(0)
    chance = np.mean([classification_map(rng.random(labels.shape), labels) for _ in range(50)])
    assert trained > chance + 20, (trained, chance)
