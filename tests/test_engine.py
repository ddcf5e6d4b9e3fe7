"""The training engine: padded batches vs one video at a time, reference accumulation, plug-ins, resume."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine_data import tiny_data, tiny_run_yaml  # noqa: F401  (pytest fixture)

from wtal.data.batching import default_max_snippets, plan_micro_batches
from wtal.engine.command import apply_process_settings
from wtal.engine.config import resolve_config
from wtal.engine.runs import build_section_model
from wtal.engine.seeding import seed_everything
from wtal.engine.trainer import Trainer, run_streams
from wtal.evaluation.classification import classification_map
from wtal.tasks import build_task
from wtal.tasks.detection import infer


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
    assert len({it.length for it in items}) > 1
    params = [p for p in trainer.model.parameters() if p.requires_grad]

    trainer.model.zero_grad(set_to_none=True)
    losses = trainer.batch_losses(trainer.data.train.collate(items), epoch=0)
    losses["total"].sum().backward()
    batched = [p.grad.clone() for p in params]

    trainer.model.zero_grad(set_to_none=True)
    single_totals = []
    for it in items:  # the reference loop: one backward per video, gradients accumulate (sum)
        single = trainer.batch_losses(trainer.data.train.collate([it]), epoch=0)
        single["total"].sum().backward()
        single_totals.append(single)
    for key in losses:
        assert torch.allclose(losses[key], torch.cat([s[key] for s in single_totals]), atol=1e-5, rtol=1e-5), key
    for g_batch, p in zip(batched, params, strict=True):
        assert torch.allclose(g_batch, p.grad, atol=1e-5, rtol=1e-4)


def accumulation_loop(cfg, scale: float = 1.0) -> tuple[torch.nn.Module, int]:
    """The reference codes' loop: one video per backward (its loss times ``scale``), an optimiser step every
    ``batch_size`` videos of a global counter; returns the model and the number of videos seen."""
    seed_everything(cfg.train.seed)
    task = build_task(cfg.task)
    data = task.prepare_data(cfg, run_streams(cfg))
    model = build_section_model(cfg.model, task, data)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                           weight_decay=cfg.optim.weight_decay)
    gen = torch.Generator()
    gen.manual_seed(cfg.train.seed)
    counter = 0
    for epoch in range(cfg.train.epochs):
        for i in torch.randperm(len(data.train), generator=gen).tolist():
            batch = data.train.collate([data.train[i]])
            (scale * model.losses(model(batch), batch, epoch)["total"].sum()).backward()
            counter += 1
            if counter % cfg.data.batch_size == 0:
                opt.step()
                opt.zero_grad(set_to_none=True)
    return model, counter


@pytest.mark.parametrize("max_snippets", [None, 90])
def test_training_matches_the_reference_accumulation_loop(tmp_path, tiny_data, max_snippets):  # noqa: F811
    """Trainer == per-video backward + optimizer step every batch_size videos of a GLOBAL counter
    (18 training videos, batch 4: steps straddle epoch ends), with one padded pass per step or with
    micro-batches of at most 90 padded snippets (1-2 tiny videos)."""
    cfg = _cfg(tmp_path, tiny_data, epochs=3, sets=["train.eval_every=10", "optim.weight_decay=5e-4",
                                                      f"data.max_batch_snippets={max_snippets or 'null'}"])
    trainer = Trainer(cfg, None, device="cpu")
    if max_snippets is not None:
        assert len(list(trainer.micro_batches(list(range(4))))) >= 2
    assert len(trainer.data.train) % cfg.data.batch_size != 0
    for epoch in range(cfg.train.epochs):
        trainer.train_epoch(epoch)

    model, counter = accumulation_loop(cfg)
    assert trainer.state.global_step == counter // cfg.data.batch_size
    for (name, a), b in zip(trainer.model.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name
    carried = [p.grad for p in model.parameters()]  # 54 % 4 = 2 videos carried into a next epoch
    assert all(g is not None for g in carried)
    for p, g in zip(trainer.model.parameters(), carried, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-5)


def test_batch_reduction_mean_steps_on_the_mean_loss_of_each_batch(tmp_path, tiny_data):  # noqa: F811
    """``optim.batch_reduction: mean`` (BaS-Net, WUM: one mean loss over a true batch) == the accumulation loop
    with each video's loss divided by the batch size. With Adam this differs from the summed gradient only
    through the L2 weight decay, so a strong decay makes the two visibly different."""
    sets = ["train.eval_every=10", "optim.weight_decay=0.5", "optim.batch_reduction=mean"]
    cfg = _cfg(tmp_path, tiny_data, epochs=2, sets=sets)
    trainer = Trainer(cfg, None, device="cpu")
    for epoch in range(cfg.train.epochs):
        trainer.train_epoch(epoch)

    (mean_loop, _), (sum_loop, _) = accumulation_loop(cfg, 1.0 / cfg.data.batch_size), accumulation_loop(cfg)
    trained = trainer.model.state_dict()
    for (name, a), b in zip(trained.items(), mean_loop.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name
    assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(trained.values(), sum_loop.state_dict().values(),
                                                                     strict=True))


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

    def loss(self, model, out, batch, epoch, teacher_out=None):
        if self.weight == 0:
            return None
        return self.weight * model.losses(out, batch, epoch)["total"]

    def state_dict(self):
        return {"started": torch.tensor(self.started, dtype=torch.int64)}

    def load_state_dict(self, state):
        self.started = state["started"].tolist()


def test_plugin_loss_is_added_per_video(tmp_path, tiny_data):  # noqa: F811
    cfg = _cfg(tmp_path, tiny_data)
    plugin = ConstantPlugin(weight=0.5)
    trainer = Trainer(cfg, None, device="cpu", plugins=[plugin])
    batch = trainer.data.train.collate([trainer.data.train[i] for i in range(3)])
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


def _brute_force_cost(sizes: list[int], budget: int, cap: int, overhead: float) -> float:
    """Cheapest split of the sorted sizes into consecutive groups, by enumerating every split."""
    sizes = sorted(sizes)
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=len(sizes) - 1):
        bounds = [0, *[i + 1 for i, c in enumerate(cuts) if c], len(sizes)]
        groups = [sizes[a:b] for a, b in itertools.pairwise(bounds)]
        if all(len(g) == 1 or (len(g) <= cap and len(g) * g[-1] <= budget) for g in groups):
            best = min(best, sum(len(g) * g[-1] + overhead for g in groups))
    return best


def test_plan_micro_batches_hand_cases():
    # overhead 320 / 32 = 10 snippets per pass: 4 short videos together (4 * 30 = 120 <= 320), the long
    # one alone (over the budget); merging 30 with 100 would pad 3 videos by 70 > 10.
    assert plan_micro_batches([30, 400, 28, 100, 29, 30], 320) == [[2, 4, 0, 5], [3], [1]]
    # a cap of 2 videos per batch (inference's eval_batch_size)
    assert plan_micro_batches([5, 5, 5, 5, 5], 10_000, max_videos=2) == [[0, 1], [2, 3], [4]]
    assert plan_micro_batches([], 100) == []
    # the automatic budget scales with the feature dimension
    assert default_max_snippets(2048) == 512 and default_max_snippets(256) == 4096


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=9), st.integers(1, 1200), st.integers(1, 5))
def test_plan_micro_batches_is_a_cheapest_valid_partition(lengths, budget, cap):
    groups = plan_micro_batches(lengths, budget, max_videos=cap)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    flat = [lengths[i] for g in groups for i in g]
    assert flat == sorted(flat)  # consecutive groups of the length-sorted videos
    for g in groups:
        assert len(g) == 1 or (len(g) <= cap and len(g) * max(lengths[i] for i in g) <= budget)
    overhead = budget / 32
    cost = sum(len(g) * max(lengths[i] for i in g) + overhead for g in groups)
    assert cost == pytest.approx(_brute_force_cost(lengths, budget, cap, overhead))


def test_micro_batched_step_gives_the_single_batch_gradient(tmp_path, tiny_data):  # noqa: F811
    cfg = _cfg(tmp_path, tiny_data, sets=["data.max_batch_snippets=100"])
    trainer = Trainer(cfg, None, device="cpu")
    videos = [3, 0, 7, 5, 11, 2]
    params = [p for p in trainer.model.parameters() if p.requires_grad]

    trainer.model.zero_grad(set_to_none=True)
    whole = trainer.batch_losses(trainer.data.train.collate([trainer.data.train[i] for i in videos]), epoch=0)
    whole["total"].sum().backward()
    expected = [p.grad.clone() for p in params]

    trainer.model.zero_grad(set_to_none=True)
    micro = list(trainer.micro_batches(videos))
    assert len(micro) >= 3 and sorted(n for b in micro for n in b.names) == \
        sorted(trainer.data.train.names[i] for i in videos)
    assert all(b.mask.numel() <= 100 or len(b.names) == 1 for b in micro)
    total = 0.0
    for batch in micro:
        losses = trainer.batch_losses(batch, epoch=0)
        losses["total"].sum().backward()
        total += float(losses["total"].detach().sum())
    assert total == pytest.approx(float(whole["total"].detach().sum()), rel=1e-5)
    for g, p in zip(expected, params, strict=True):
        assert torch.allclose(g, p.grad, atol=1e-5, rtol=1e-4)


def test_inference_does_not_depend_on_the_batch_budget(tmp_path, tiny_data):  # noqa: F811
    cfg = _cfg(tmp_path, tiny_data, model="rskp")
    trainer = Trainer(cfg, None, device="cpu")
    cas_small, scores_small = infer(trainer.model, trainer.data.test, torch.device("cpu"), 8, max_snippets=50)
    cas_big, scores_big = infer(trainer.model, trainer.data.test, torch.device("cpu"), 8, max_snippets=10**6)
    assert list(cas_small) == list(cas_big) == trainer.data.test.names
    for name in cas_small:
        np.testing.assert_allclose(cas_small[name], cas_big[name], atol=1e-5)
        np.testing.assert_allclose(scores_small[name], scores_big[name], atol=1e-5)


def test_the_library_has_no_process_wide_side_effects(tmp_path, tiny_data, monkeypatch):  # noqa: F811
    """A Trainer used from Python leaves torch's threads and malloc alone; the CLI applies them."""
    calls = []
    monkeypatch.setattr("wtal.engine.command.keep_freed_memory", lambda: calls.append(1) or True)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        cfg = _cfg(tmp_path, tiny_data, sets=["train.num_threads=1", "train.keep_freed_memory=true"])
        Trainer(cfg, None, device="cpu").train_epoch(0)
        assert torch.get_num_threads() == 2 and calls == []
        apply_process_settings(cfg, torch.device("cpu"))
        assert torch.get_num_threads() == 1 and calls == [1]
    finally:
        torch.set_num_threads(before)


def test_width_scaling_sets_the_optimiser_rate_from_the_feature_dimension(tmp_path, tiny_data):  # noqa: F811
    base = Trainer(_cfg(tmp_path, tiny_data), None, device="cpu")
    dim = base.input_dim
    cfg = _cfg(tmp_path, tiny_data, sets=[f"optim.width_scaling.reference_dim={4 * dim}"])
    trainer = Trainer(cfg, None, device="cpu")
    record = trainer.train_epoch(0)
    used = trainer.optimizer.param_groups[0]["lr"]
    assert used == pytest.approx(cfg.optim.lr * 2.0)  # (4 D / D) ** 0.5
    assert record["lr"] == pytest.approx(used)  # metrics.jsonl shows the rate actually used
    assert cfg.optim.lr == base.cfg.optim.lr  # the config keeps the configured rate


@pytest.mark.parametrize("enabled", [True, False])
def test_training_keeps_freed_memory_only_when_asked(tmp_path, tiny_data, monkeypatch, enabled):  # noqa: F811
    calls = []
    monkeypatch.setattr("wtal.engine.command.keep_freed_memory", lambda: calls.append(1) or True)
    apply_process_settings(_cfg(tmp_path, tiny_data, sets=[f"train.keep_freed_memory={str(enabled).lower()}"]),
                           torch.device("cpu"))
    assert calls == ([1] if enabled else [])


def test_keep_freed_memory_serves_large_blocks_from_the_heap():
    # in a fresh process: glibc mmaps a 64 MB block by default; after keep_freed_memory() it comes from the heap
    import subprocess
    import sys

    script = """
import ctypes, sys
from wtal.engine.allocator import keep_freed_memory
libc = ctypes.CDLL(None)
if not hasattr(libc, "mallinfo2"):
    print("skip"); sys.exit()
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc.mallinfo2.restype = Info
def mmapped_after_alloc():
    block = libc.malloc(64 << 20)
    size = libc.mallinfo2().hblkhd
    libc.free(block)
    return size
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
before = mmapped_after_alloc()
applied = keep_freed_memory()
print(applied, before >= 64 << 20, mmapped_after_alloc() < 64 << 20)
"""
    if sys.platform != "linux":
        pytest.skip("glibc only")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    if out == ["skip"]:
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    assert out == ["True", "True", "True"]
