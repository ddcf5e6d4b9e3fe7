"""The training loop: padded whole-video batches, summed per-video losses, reference accumulation semantics.

One optimiser step per ``data.batch_size`` videos. The loss of a batch is the **sum** of the per-video
totals (model losses plus plug-in losses), so a padded batch gives the gradient that the reference codes
accumulate with one ``backward()`` per video. ``optim.batch_reduction: mean`` divides the step's gradient by
its number of videos (the references that average one loss over a true batch).

Micro-batches: a step's videos (the same random draw) are run as length-sorted padded micro-batches of at
most ``data.max_batch_snippets`` padded snippets (:func:`wtal.engine.rundata.plan_micro_batches`), one
forward/backward each; their gradients accumulate, so the step's gradient is still the per-video sum and
padding stays small (THUMOS lengths are heavy-tailed: padding a whole step to its longest video wastes
~3x). A model with state updated by its losses (RSKP's memory bank: all videos of one forward read the
memory, then update it) sees in a later micro-batch the memory updated by the earlier ones; this sits
between one padded step and the reference's one-video-at-a-time loop, which reads the memory updated by
every earlier video. Micro-batches also draw dropout masks in a different order than one padded batch.

As in the reference, the video counter is global: when the
number of training videos is not a multiple of the batch size, the last videos of an epoch are accumulated
into the first step of the next epoch (their gradient is carried, and saved in checkpoints).

Epoch ``e`` (0-based): plug-ins' ``on_epoch_start`` -> shuffled batches (seeded generator) ->
``model.on_epoch_end`` -> evaluation when due (every ``train.eval_every`` epochs and at the last one) ->
``metrics.jsonl`` record -> ``checkpoints/last.pt`` (and ``best.pt`` when the selection metric improved).
Evaluation runs under a saved-and-restored RNG state, so evaluating or not never changes training.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from wtal.atomic import write_json_atomic, write_text_atomic
from wtal.data.batch import Batch, collate_videos
from wtal.engine.allocator import keep_freed_memory
from wtal.engine.checkpoint import load_checkpoint, save_checkpoint
from wtal.engine.config import OptimConfig, RunConfig
from wtal.engine.distributed import DistContext, resolve_device
from wtal.engine.evaluate import SplitResult, evaluate_split
from wtal.engine.logging import MetricsLog, get_logger, progress
from wtal.engine.plugins import PluginContext, TrainerPlugin, build_plugins
from wtal.engine.rundata import RunData, default_max_snippets, iterate_batches, plan_micro_batches, prepare_data
from wtal.engine.seeding import capture_rng_state, restore_rng_state, seed_everything
from wtal.errors import WtalInputError


@dataclass
class TrainState:
    epoch: int = 0  # finished epochs = index of the next epoch to run
    global_step: int = 0  # optimiser steps taken
    pending: int = 0  # videos accumulated into the gradient since the last step
    best_metric: float | None = None
    best_epoch: int | None = None


def learning_rate(optim: OptimConfig, epoch: int, global_step: int, steps_per_epoch: float,
                  input_dim: int | None = None) -> float:
    """Learning rate of the optimiser step ``global_step`` (0-based) taken during epoch ``epoch``, for
    features of ``input_dim`` channels (``optim.width_scaling``; ``None``: no width factor)."""
    lr = optim.lr * (optim.width_scaling.factor(input_dim) if input_dim is not None else 1.0)
    schedule = optim.schedule
    if schedule.type == "step":
        lr *= schedule.factors[bisect.bisect_right(schedule.milestones, epoch)]
    warmup_steps = schedule.warmup_epochs * steps_per_epoch
    if warmup_steps > 0:
        lr *= min(1.0, (global_step + 1) / warmup_steps)
    return lr


def build_model(cfg: RunConfig, input_dim: int, num_classes: int) -> torch.nn.Module:
    from wtal.models.factory import build_model as factory

    try:
        return factory(cfg.model.name, input_dim, num_classes, **cfg.model.params)
    except TypeError as exc:  # a parameter the model does not take
        raise WtalInputError(f"model {cfg.model.name!r}: {exc}",
                             fix="check model.params against the model's hyper-parameters") from exc


def make_optimizer(optim: OptimConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    cls = torch.optim.Adam if optim.name == "adam" else torch.optim.AdamW
    return cls(params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)


class Trainer:
    """Trains one run. ``run_dir=None`` trains in memory (nothing written)."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path | None = None, *, data: RunData | None = None,
                 device: torch.device | str | None = None, dist: DistContext | None = None,
                 plugins: list[TrainerPlugin] | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.dist = dist or DistContext()
        self.device = torch.device(device) if device is not None else resolve_device(None)
        self.writes = self.run_dir is not None and self.dist.is_main
        self.log = get_logger()
        if cfg.train.num_threads is not None:  # process-wide: oversubscribed cores make torch much slower
            torch.set_num_threads(cfg.train.num_threads)
        if cfg.train.keep_freed_memory and self.device.type == "cpu" and keep_freed_memory():
            self.log.debug("glibc malloc: heap only, no trimming (train.keep_freed_memory)")
        seed_everything(cfg.train.seed, deterministic=cfg.train.deterministic)
        self.data = data if data is not None else prepare_data(cfg)
        self.model = build_model(cfg, self.data.input_dim, len(self.data.classes)).to(self.device)
        self.optimizer = make_optimizer(cfg.optim, self.model)
        self.loader_generator = torch.Generator()
        self.loader_generator.manual_seed(cfg.train.seed)
        self.state = TrainState()
        self.steps_per_epoch = len(self.data.train) / cfg.data.batch_size
        width_factor = cfg.optim.width_scaling.factor(self.data.input_dim)
        if width_factor != 1.0:
            self.log.info("learning rate %.3g x %.3g (optim.width_scaling: %d-d features, tuned on %d-d) = %.3g",
                          cfg.optim.lr, width_factor, self.data.input_dim, cfg.optim.width_scaling.reference_dim,
                          cfg.optim.lr * width_factor)
        self.max_batch_snippets = cfg.data.max_batch_snippets or default_max_snippets(self.data.input_dim,
                                                                                      self.device)
        context = PluginContext(self.data.classes, self.data.snippets_per_second, len(self.data.train),
                                cfg.train.epochs, self.device, dict(cfg.postprocess), cfg.to_dict())
        self.plugins = plugins if plugins is not None else build_plugins(cfg.pseudo, context)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl" if self.run_dir else Path("metrics.jsonl"),
                                  enabled=self.writes,
                                  tensorboard_dir=(self.run_dir / "tensorboard")
                                  if self.run_dir and cfg.train.tensorboard else None)

    # ------------------------------------------------------------------------------------------ paths

    @property
    def checkpoint_dir(self) -> Path:
        if self.run_dir is None:
            raise RuntimeError("an in-memory Trainer (run_dir=None) has no checkpoints")
        return self.run_dir / "checkpoints"

    # ------------------------------------------------------------------------------------------ batches

    def train_batches(self) -> Iterator[Batch]:
        """The whole training set in a fixed order (for model / plug-in passes between epochs)."""
        order = list(range(len(self.data.train)))
        return iterate_batches(self.data.train, order, self.cfg.data.eval_batch_size, self.device)

    def epoch_chunks(self) -> Iterator[list[int]]:
        """This epoch's shuffled training videos, cut so that every optimiser step sees ``batch_size``
        videos of the global counter (the first chunk completes a step carried over from the last epoch)."""
        n, size = len(self.data.train), self.cfg.data.batch_size
        order = torch.randperm(n, generator=self.loader_generator).tolist()
        pos, pending = 0, self.state.pending
        while pos < n:
            take = min(size - pending, n - pos)
            yield order[pos : pos + take]
            pos += take
            pending = (pending + take) % size

    # ------------------------------------------------------------------------------------------ training

    def fit(self, resume: bool = False) -> dict[str, Any] | None:
        """Train the remaining epochs, then evaluate the selected model on the test split."""
        cfg = self.cfg
        if resume:
            self.load(self.checkpoint_dir / "last.pt")
            self.metrics.resume(self.state.epoch)
            self.log.info("resumed from %s at epoch %d (step %d)", self.checkpoint_dir / "last.pt",
                          self.state.epoch, self.state.global_step)
        elif self.writes:
            write_text_atomic(self.run_dir / "config.yaml", cfg.to_yaml())
        if cfg.train.select == "test":
            self.log.warning("train.select is 'test': the model is selected on the TEST split, so the "
                             "reported test mAP is optimistic (the reference repositories' protocol, "
                             "not held-out)")
        self.log.info("training %s on %d videos (%d validation, %d test), %d epochs, %s, device %s%s",
                      cfg.model.name, len(self.data.train), len(self.data.val) if self.data.val else 0,
                      len(self.data.test), cfg.train.epochs, f"{self.steps_per_epoch:g} steps/epoch",
                      self.device,
                      f", {self.dist.world_size} processes" if self.dist.enabled else "")
        for epoch in range(self.state.epoch, cfg.train.epochs):
            record = self.train_epoch(epoch)
            self.model.on_epoch_end(epoch, self.train_batches)
            improved = False
            if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
                evaluation, improved = self.evaluate_epoch(epoch)
                record.update(evaluation)
            self.state.epoch = epoch + 1
            if self.writes:
                self.metrics.write(record)
            self.log.info(_epoch_line(record))
            self.save("last.pt", also_best=improved)
        return self.finish()

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.cfg
        self.model.train()
        for plugin in self.plugins:
            plugin.on_epoch_start(epoch, self.model, self.train_batches)
        sums: dict[str, float] = defaultdict(float)
        videos = snippets = 0
        t0 = time.perf_counter()
        chunks = progress(self.epoch_chunks(), enabled=cfg.train.progress and self.dist.is_main,
                          total=math.ceil(len(self.data.train) / cfg.data.batch_size) + 1,
                          desc=f"epoch {epoch + 1}/{cfg.train.epochs}")
        for chunk in chunks:
            for batch in self.micro_batches(self.dist.shard(chunk)):
                losses = self.batch_losses(batch, epoch)
                losses["total"].sum().backward()  # accumulates: the step's gradient is the per-video sum
                for key, value in losses.items():
                    sums[key] += float(value.detach().sum())
                videos += len(batch.names)
                snippets += int(batch.mask.sum())
            self.state.pending += len(chunk)
            if self.state.pending == cfg.data.batch_size:
                self.step(epoch)
        if self.state.pending and self.dist.enabled:
            self._settle_carried_gradient()
        elapsed = time.perf_counter() - t0
        totals = torch.tensor([videos, snippets, *sums.values()], dtype=torch.float64)
        keys = list(sums)
        self.dist.all_reduce_sum_([totals])
        n_videos = max(float(totals[0]), 1.0)
        record: dict[str, Any] = {"epoch": epoch, "step": self.state.global_step,
                                  "lr": learning_rate(cfg.optim, epoch, max(self.state.global_step - 1, 0),
                                                      self.steps_per_epoch, self.data.input_dim),
                                  "loss": {k: float(v) / n_videos
                                           for k, v in zip(keys, totals[2:], strict=True)},
                                  "train_seconds": elapsed,
                                  "train_snippets_per_s": float(totals[1]) / elapsed}
        return record

    def micro_batches(self, videos: list[int]) -> Iterator[Batch]:
        """The training videos ``videos`` as length-sorted padded batches of at most
        ``max_batch_snippets`` padded snippets (a longer video alone), on the device."""
        items = [self.data.train[i] for i in videos]
        for group in plan_micro_batches([it[0].shape[0] for it in items], self.max_batch_snippets):
            yield collate_videos([items[k] for k in group]).to(self.device)

    def batch_losses(self, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        """Per-video ``(B,)`` losses of the model plus plug-ins; ``total`` includes the plug-in terms."""
        out = self.model(batch.features, batch.mask)
        losses = dict(self.model.losses(out, batch.labels, batch.mask, epoch))
        total = losses["total"]
        for i, plugin in enumerate(self.plugins):
            extra = plugin.loss(self.model, out, batch, epoch)
            if extra is not None:
                losses[f"plugin/{getattr(plugin, 'name', type(plugin).__name__)}{i}"] = extra
                total = total + extra
        if not bool(torch.isfinite(total).all()):
            bad = [n for n, ok in zip(batch.names, torch.isfinite(total).tolist(), strict=True) if not ok]
            raise WtalInputError(f"non-finite training loss at epoch {epoch}", video=bad[0],
                                 fix="lower optim.lr, set optim.grad_clip, or check this video's features")
        losses["total"] = total
        return losses

    def step(self, epoch: int) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        self._reduce_gradients(params)
        if self.cfg.optim.batch_reduction == "mean":  # the references' mean loss over a true batch
            for p in params:
                if p.grad is not None:
                    p.grad.div_(self.state.pending)
        lr = learning_rate(self.cfg.optim, epoch, self.state.global_step, self.steps_per_epoch, self.data.input_dim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.cfg.optim.grad_clip is not None:
            with_grad = [p for p in params if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(with_grad, self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.global_step += 1
        self.state.pending = 0

    def _reduce_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum gradients over ranks. A parameter that got a gradient on any rank gets one on all ranks;
        one that got none anywhere keeps ``None`` (so Adam skips it, as in a single process)."""
        if not self.dist.enabled or not params:
            return
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
        self.dist.all_reduce_sum_([has])
        grads = []
        for p, flag in zip(params, has.tolist(), strict=True):
            if flag > 0:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                grads.append(p.grad)
        self.dist.all_reduce_sum_(grads)

    def _settle_carried_gradient(self) -> None:
        """At an epoch end inside an optimiser step: rank 0 holds the summed gradient, the others zero, so the
        next step's reduction still sums every video once (and rank 0's checkpoint holds the whole carry)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        self._reduce_gradients(params)
        if not self.dist.is_main:
            for p in params:
                if p.grad is not None:
                    p.grad.zero_()

    # ------------------------------------------------------------------------------------------ evaluation

    def evaluate(self, split: str) -> SplitResult:
        """Evaluate the current model on ``split`` without touching any RNG stream."""
        rng = capture_rng_state(self.loader_generator)
        try:
            return evaluate_split(self.model, self.data.split(split), postprocess=self.cfg.postprocess,
                                  tiou=self.cfg.eval.tiou, device=self.device,
                                  batch_size=self.cfg.data.eval_batch_size,
                                  snippets_per_second=self.data.snippets_per_second,
                                  max_snippets=self.cfg.data.max_batch_snippets)
        finally:
            restore_rng_state(rng, self.loader_generator)

    def evaluate_epoch(self, epoch: int) -> tuple[dict[str, Any], bool]:
        """Validation (and, with ``select: test``, test) metrics on rank 0; whether the selection improved."""
        if not self.dist.is_main:
            return {}, False
        record: dict[str, Any] = {}
        t0 = time.perf_counter()
        if self.data.val is not None:
            record["val"] = self.evaluate("val").summary()
        if self.cfg.train.select == "test":
            record["test"] = self.evaluate("test").summary()
        record["eval_seconds"] = time.perf_counter() - t0
        select = self.cfg.train.select
        if select == "last":
            return record, False
        metric = _selection_metric(record[select])
        improved = metric is not None and (self.state.best_metric is None or metric > self.state.best_metric)
        if improved:
            self.state.best_metric, self.state.best_epoch = metric, epoch
        record["selection"] = {"by": select, "metric": metric, "best": self.state.best_metric,
                               "best_epoch": self.state.best_epoch}
        return record, improved

    def finish(self) -> dict[str, Any] | None:
        """Evaluate the selected model on the test split (rank 0); write predictions and ``report.json``."""
        report = None
        if self.dist.is_main:
            selected = "last"
            if self.cfg.train.select != "last" and self.run_dir is not None \
                    and (self.checkpoint_dir / "best.pt").is_file():
                self.model.load_state_dict(load_checkpoint(self.checkpoint_dir / "best.pt")["model"])
                selected = "best"
            epoch = self.state.best_epoch if selected == "best" else self.state.epoch - 1
            test = self.evaluate("test")
            val = self.evaluate("val") if self.data.val is not None else None
            report = {"model": self.cfg.model.name, "selection": self.cfg.train.select,
                      "checkpoint": selected, "epoch": epoch, "epochs": self.cfg.train.epochs, "test": test.summary(),
                      "val": val.summary() if val is not None else None}
            if test.report is not None:
                self.log.info("test detection mAP (%s checkpoint, epoch %s, selected by %s):\n%s", selected,
                              epoch, self.cfg.train.select, test.report.table())
            self.log.info("test classification mAP: %s", _fmt(test.classification_map))
            if self.writes:
                from wtal.evaluation.results import write_results

                write_results(self.run_dir / "predictions" / "test.json", test.detections)
                write_json_atomic(self.run_dir / "report.json", report, indent=2)
        self.dist.barrier()
        self.metrics.close()
        return report

    # ------------------------------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The whole training state (collective in multi-process runs: RNG states are gathered)."""
        rng = self.dist.all_gather_object(capture_rng_state(self.loader_generator))
        grads = {}
        if self.state.pending:
            grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters()
                     if p.grad is not None}
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "grads": grads,
                "state": asdict(self.state), "rng": rng, "plugins": [p.state_dict() for p in self.plugins],
                "world_size": self.dist.world_size, "config": self.cfg.to_dict()}

    def save(self, name: str, also_best: bool = False) -> None:
        if self.run_dir is None:
            return
        state = self.state_dict()
        if self.writes:
            save_checkpoint(self.checkpoint_dir / name, state)
            if also_best:
                save_checkpoint(self.checkpoint_dir / "best.pt", state)
        self.dist.barrier()

    def load(self, path: str | Path) -> None:
        ckpt = load_checkpoint(path)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.optimizer.zero_grad(set_to_none=True)
        if self.dist.is_main:
            for name, p in self.model.named_parameters():
                if name in ckpt["grads"]:
                    p.grad = ckpt["grads"][name].to(p.device)
        self.state = TrainState(**ckpt["state"])
        rng = ckpt["rng"]
        if len(rng) != self.dist.world_size:
            self.log.warning("checkpoint written by %d process(es), resuming with %d: dropout streams differ "
                             "from an uninterrupted run", len(rng), self.dist.world_size)
        restore_rng_state(rng[self.dist.rank % len(rng)], self.loader_generator)
        if len(ckpt["plugins"]) != len(self.plugins):
            raise WtalInputError(f"checkpoint has {len(ckpt['plugins'])} plug-in state(s), the run has "
                                 f"{len(self.plugins)}", path=path, fix="resume with the run's own config")
        for plugin, plugin_state in zip(self.plugins, ckpt["plugins"], strict=True):
            plugin.load_state_dict(plugin_state)


def _selection_metric(summary: dict[str, Any]) -> float | None:
    """Average detection mAP over the configured tIoUs; classification mAP when there is no ground truth."""
    if summary.get("average") is not None:
        return float(summary["average"])
    return summary.get("classification_map")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _epoch_line(record: dict[str, Any]) -> str:
    parts = [f"epoch {record['epoch'] + 1}", f"lr {record['lr']:.3g}"]
    parts += [f"{k} {v:.4f}" for k, v in record["loss"].items()]
    parts.append(f"{record['train_snippets_per_s']:.0f} snippets/s")
    for split in ("val", "test"):
        if split in record:
            parts.append(f"{split} mAP {_fmt(record[split].get('average'))} "
                         f"cmAP {_fmt(record[split].get('classification_map'))}")
    return " | ".join(parts)
