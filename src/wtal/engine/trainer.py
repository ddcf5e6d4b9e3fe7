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
from wtal.data.batch import Batch
from wtal.data.batching import default_max_snippets, iterate_batches, plan_micro_batches
from wtal.data.rundata import RunData
from wtal.engine.checkpoint import load_checkpoint, save_checkpoint
from wtal.engine.config import OptimConfig, RunConfig
from wtal.engine.distributed import DistContext, resolve_device
from wtal.engine.logging import MetricsLog, get_logger, progress
from wtal.engine.plugins import PluginContext, TrainerPlugin, build_plugins, frozen_roles
from wtal.engine.runs import build_section_model, data_fingerprint, load_weights, write_fingerprint
from wtal.engine.seeding import capture_rng_state, restore_rng_state, seed_everything
from wtal.engine.teacher import Teacher, build_teacher, teacher_streams
from wtal.errors import WtalInputError
from wtal.tasks.base import Task, TaskResult, build_task


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
    elif schedule.type == "inverse_sqrt":
        if global_step < schedule.warmup_steps:
            start = schedule.warmup_init_lr
            return start + global_step * (lr - start) / schedule.warmup_steps
        return lr * math.sqrt(schedule.warmup_steps / global_step)
    warmup_steps = schedule.warmup_epochs * steps_per_epoch
    if warmup_steps > 0:
        lr *= min(1.0, (global_step + 1) / warmup_steps)
    return lr


def run_streams(cfg: RunConfig) -> list[str]:
    """The streams a run loads for training: the model's, then the teacher's others."""
    return list(dict.fromkeys([*cfg.model.streams, *teacher_streams(cfg)]))


def make_optimizer(optim: OptimConfig, *models: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for model in models for p in model.parameters() if p.requires_grad]
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
        seed_everything(cfg.train.seed, deterministic=cfg.train.deterministic)
        self.task: Task = build_task(cfg.task)
        self.data = data if data is not None else self.task.prepare_data(cfg, run_streams(cfg))
        self.model = build_section_model(cfg.model, self.task, self.data).to(self.device)
        self.teacher: Teacher | None = build_teacher(cfg, self.task, self.data, self.device)
        joint = [self.teacher.model] if self.teacher is not None and self.teacher.joint else []
        self.optimizer = make_optimizer(cfg.optim, self.model, *joint)
        if self.dist.enabled:
            for model in (self.model, *joint):
                model.defer_state_updates()
        self.loader_generator = torch.Generator()
        self.loader_generator.manual_seed(cfg.train.seed)
        self.state = TrainState()
        self.steps_per_epoch = len(self.data.train) / cfg.data.batch_size
        self.input_dim = sum(self.data.streams[s] for s in cfg.model.streams)
        width_factor = cfg.optim.width_scaling.factor(self.input_dim)
        if width_factor != 1.0:
            self.log.info("learning rate %.3g x %.3g (optim.width_scaling: %d-d features, tuned on %d-d) = %.3g",
                          cfg.optim.lr, width_factor, self.input_dim, cfg.optim.width_scaling.reference_dim,
                          cfg.optim.lr * width_factor)
        if self.teacher is not None:
            self.log.info("teacher: %s", self.teacher.description)
        self.max_batch_snippets = cfg.data.max_batch_snippets or default_max_snippets(self.data.train.input_width,
                                                                                      self.device)
        context = PluginContext(self.data.classes, self.data.snippets_per_second, len(self.data.train),
                                cfg.train.epochs, self.device, dict(cfg.postprocess), cfg.to_dict(),
                                streams=dict(self.data.streams), teacher=self.teacher,
                                build_model=lambda section: build_section_model(section, self.task, self.data))
        self.plugins = plugins if plugins is not None else build_plugins(cfg.plugin_specs(), context)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl" if self.run_dir else Path("metrics.jsonl"),
                                  enabled=self.writes,
                                  tensorboard_dir=(self.run_dir / "tensorboard")
                                  if self.run_dir and cfg.train.tensorboard else None)

    @property
    def joint_teacher(self) -> torch.nn.Module | None:
        """The teacher model when it trains with the student."""
        return self.teacher.model if self.teacher is not None and self.teacher.joint else None

    @property
    def trained_models(self) -> list[torch.nn.Module]:
        return [self.model] + ([self.joint_teacher] if self.joint_teacher is not None else [])

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
            self.log.info("resumed from %s after epoch %d of %d (step %d)", self.checkpoint_dir / "last.pt",
                          self.state.epoch, cfg.train.epochs, self.state.global_step)
        elif self.writes:
            write_text_atomic(self.run_dir / "config.yaml", cfg.to_yaml())
        if self.writes:
            write_fingerprint(self.run_dir, data_fingerprint(self.task.name, self.data, cfg.model.streams))
        if cfg.train.select == "test":
            self.log.warning("train.select is 'test': the model is selected on the TEST split, so the "
                             "reported test metric is optimistic (the reference repositories' protocol, "
                             "not held-out)")
        self.log.info("training %s (%s) on %d samples (%d validation, %d test), %d epochs, %s, device %s%s",
                      cfg.model.name, "+".join(cfg.model.streams), len(self.data.train),
                      len(self.data.val) if self.data.val else 0, len(self.data.test), cfg.train.epochs,
                      f"{self.steps_per_epoch:g} steps/epoch", self.device,
                      f", {self.dist.world_size} processes" if self.dist.enabled else "")
        for epoch in range(self.state.epoch, cfg.train.epochs):
            record = self.train_epoch(epoch)
            for model in self.trained_models:
                model.on_epoch_end(epoch, self.train_batches)
            improved, headlines = False, {}
            if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
                evaluation, improved, headlines = self.evaluate_epoch(epoch)
                record.update(evaluation)
            self.state.epoch = epoch + 1
            if self.writes:
                self.metrics.write(record)
            self.log.info(_epoch_line(record, cfg.train.epochs, headlines))
            self.save("last.pt", also_best=improved)
        return self.finish()

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train epoch index ``epoch`` (0-based); the record counts it as epoch ``epoch + 1``."""
        cfg = self.cfg
        frozen = frozen_roles(self.plugins, epoch, has_joint_teacher=self.joint_teacher is not None)
        for role, model in zip(("model", "teacher"), self.trained_models, strict=False):
            model.train(role not in frozen)
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
                losses = self.batch_losses(batch, epoch, frozen)
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
        videos, snippets, sums = self._sum_over_ranks(videos, snippets, sums)
        n_videos = max(float(videos), 1.0)
        return {"epoch": epoch + 1, "step": self.state.global_step,
                "lr": learning_rate(cfg.optim, epoch, max(self.state.global_step - 1, 0), self.steps_per_epoch,
                                    self.input_dim),
                "loss": {k: v / n_videos for k, v in sums.items()},
                "train_seconds": elapsed,
                "train_snippets_per_s": float(snippets) / elapsed}

    def _sum_over_ranks(self, videos: int, snippets: int, sums: dict[str, float]
                        ) -> tuple[float, float, dict[str, float]]:
        """Epoch totals over all ranks. A rank may have seen no sample (an uneven last shard, or batches of
        one sample over several ranks), so it may lack loss keys: the keys travel with the values."""
        if not self.dist.enabled:
            return float(videos), float(snippets), dict(sums)
        merged: dict[str, float] = defaultdict(float)
        total_videos = total_snippets = 0.0
        for rank_videos, rank_snippets, rank_sums in self.dist.all_gather_object((videos, snippets, dict(sums))):
            total_videos += rank_videos
            total_snippets += rank_snippets
            for key, value in rank_sums.items():
                merged[key] += value
        return total_videos, total_snippets, dict(merged)

    def micro_batches(self, videos: list[int]) -> Iterator[Batch]:
        """The training samples ``videos`` as length-sorted padded batches of at most
        ``max_batch_snippets`` padded snippets (a longer sample alone), on the device."""
        train = self.data.train
        items = [train[i] for i in videos]
        for group in plan_micro_batches([it.length for it in items], self.max_batch_snippets):
            yield train.collate([items[k] for k in group]).to(self.device)

    def batch_losses(self, batch: Batch, epoch: int, frozen: frozenset[str] = frozenset()
                     ) -> dict[str, torch.Tensor]:
        """Per-sample ``(B,)`` losses of the model, a jointly trained teacher and the plug-ins; ``total``
        includes them all. A ``frozen`` role (``"model"``, ``"teacher"``) only runs forward, without gradient
        and without losses (see :func:`wtal.engine.plugins.frozen_roles`)."""
        out, losses = _forward(self.model, batch, epoch, frozen="model" in frozen)
        terms = [losses["total"]] if losses else []
        teacher_out = None
        if self.joint_teacher is not None:
            teacher_out, teacher_losses = _forward(self.joint_teacher, batch, epoch, frozen="teacher" in frozen)
            losses.update({f"teacher/{k}": v for k, v in teacher_losses.items()})
            terms += [teacher_losses["total"]] if teacher_losses else []
        for i, plugin in enumerate(self.plugins):
            extra = plugin.loss(self.model, out, batch, epoch, teacher_out=teacher_out)
            if extra is not None:
                losses[f"plugin/{getattr(plugin, 'name', type(plugin).__name__)}{i}"] = extra
                terms.append(extra)
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        if not bool(torch.isfinite(total).all()):
            bad = [n for n, ok in zip(batch.names, torch.isfinite(total).tolist(), strict=True) if not ok]
            raise WtalInputError(f"non-finite training loss in epoch {epoch + 1}", video=bad[0],
                                 fix="lower optim.lr, set optim.grad_clip, or check this video's features")
        losses["total"] = total
        return losses

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for model in self.trained_models for p in model.parameters() if p.requires_grad]

    def step(self, epoch: int) -> None:
        params = self.trainable_parameters()
        self._reduce_gradients(params)
        if self.cfg.optim.batch_reduction == "mean":  # the references' mean loss over a true batch
            for p in params:
                if p.grad is not None:
                    p.grad.div_(self.state.pending)
        lr = learning_rate(self.cfg.optim, epoch, self.state.global_step, self.steps_per_epoch, self.input_dim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.cfg.optim.grad_clip is not None:
            with_grad = [p for p in params if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(with_grad, self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.global_step += 1
        self.state.pending = 0
        if self.dist.enabled:
            for model in self.trained_models:
                model.sync_state(self.dist)

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
        params = self.trainable_parameters()
        self._reduce_gradients(params)
        if not self.dist.is_main:
            for p in params:
                if p.grad is not None:
                    p.grad.zero_()
        for model in self.trained_models:  # the epoch-end passes and the checkpoint see every video's update
            model.sync_state(self.dist)

    # ------------------------------------------------------------------------------------------ evaluation

    def evaluate(self, split: str) -> TaskResult:
        """Evaluate the current model on ``split`` without touching any RNG stream."""
        rng = capture_rng_state(self.loader_generator)
        try:
            return self.task.evaluate(self.model, self.data.split(split), self.cfg, self.device)
        finally:
            restore_rng_state(rng, self.loader_generator)

    def evaluate_epoch(self, epoch: int) -> tuple[dict[str, Any], bool, dict[str, str]]:
        """Validation (and, with ``select: test``, test) metrics on rank 0; whether the selection improved;
        each split's headline for the log."""
        if not self.dist.is_main:
            return {}, False, {}
        record: dict[str, Any] = {}
        results: dict[str, TaskResult] = {}
        t0 = time.perf_counter()
        if self.data.val is not None:
            results["val"] = self.evaluate("val")
        if self.cfg.train.select == "test":
            results["test"] = self.evaluate("test")
        record.update({split: result.summary() for split, result in results.items()})
        record["eval_seconds"] = time.perf_counter() - t0
        headlines = {split: result.headline() for split, result in results.items()}
        select = self.cfg.train.select
        if select == "last":
            return record, False, headlines
        metric = results[select].selection_metric
        improved = metric is not None and (self.state.best_metric is None or metric > self.state.best_metric)
        if improved:
            self.state.best_metric, self.state.best_epoch = metric, epoch
        best_epoch = None if self.state.best_epoch is None else self.state.best_epoch + 1
        record["selection"] = {"by": select, "metric": metric, "best": self.state.best_metric,
                               "best_epoch": best_epoch}
        return record, improved, headlines

    def finish(self) -> dict[str, Any] | None:
        """Evaluate the selected model on the test split (rank 0); write predictions and ``report.json``."""
        report = None
        if self.dist.is_main:
            selected = "last"
            if self.cfg.train.select != "last" and self.run_dir is not None \
                    and (self.checkpoint_dir / "best.pt").is_file():
                best = load_checkpoint(self.checkpoint_dir / "best.pt")
                self.model.load_state_dict(best["model"])
                if self.joint_teacher is not None:  # the selected state of the whole run, teacher included
                    self.joint_teacher.load_state_dict(best["teacher"])
                selected = "best"
            epoch = (self.state.best_epoch if selected == "best" else self.state.epoch - 1) + 1
            test = self.evaluate("test")
            val = self.evaluate("val") if self.data.val is not None else None
            report = {"task": self.task.name, "model": self.cfg.model.name, "streams": list(self.cfg.model.streams),
                      "selection": self.cfg.train.select, "checkpoint": selected, "epoch": epoch,
                      "epochs": self.cfg.train.epochs, "test": test.summary(),
                      "val": val.summary() if val is not None else None}
            self.log.info("test metrics (%s checkpoint, epoch %d of %d, selected by %s):\n%s", selected, epoch,
                          self.cfg.train.epochs, self.cfg.train.select, test.report_text())
            if self.writes:
                test.write_predictions(self.run_dir / "predictions" / "test.json")
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
            grads = {n: p.grad.detach().clone() for n, p in self.named_parameters() if p.grad is not None}
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "grads": grads,
                 "state": asdict(self.state), "rng": rng, "plugins": [p.state_dict() for p in self.plugins],
                 "world_size": self.dist.world_size, "config": self.cfg.to_dict()}
        if self.joint_teacher is not None:
            state["teacher"] = self.joint_teacher.state_dict()
        return state

    def save(self, name: str, also_best: bool = False) -> None:
        if self.run_dir is None:
            return
        state = self.state_dict()
        if self.writes:
            save_checkpoint(self.checkpoint_dir / name, state)
            if also_best:
                save_checkpoint(self.checkpoint_dir / "best.pt", state)
        self.dist.barrier()

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """The trained parameters by checkpoint name (a joint teacher's prefixed ``teacher.``)."""
        yield from self.model.named_parameters()
        if self.joint_teacher is not None:
            for name, p in self.joint_teacher.named_parameters():
                yield f"teacher.{name}", p

    def load(self, path: str | Path) -> None:
        path = Path(path)
        ckpt = load_checkpoint(path)
        load_weights(self.model, ckpt["model"], checkpoint=path, run=self.run_dir)
        if self.joint_teacher is not None:
            if "teacher" not in ckpt:
                raise WtalInputError("the checkpoint has no jointly trained teacher", path=path,
                                     fix="resume with the run's own config")
            load_weights(self.joint_teacher, ckpt["teacher"], checkpoint=path, run=self.run_dir)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.optimizer.zero_grad(set_to_none=True)
        if self.dist.is_main:
            for name, p in self.named_parameters():
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


def _forward(model: torch.nn.Module, batch: Batch, epoch: int, *, frozen: bool
             ) -> tuple[Any, dict[str, torch.Tensor]]:
    """``model``'s output and losses on ``batch``; a frozen model runs without gradient and returns no losses."""
    if frozen:
        with torch.no_grad():
            return model(batch), {}
    out = model(batch)
    return out, dict(model.losses(out, batch, epoch))


def _epoch_line(record: dict[str, Any], epochs: int, headlines: dict[str, str]) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"lr {record['lr']:.3g}"]
    parts += [f"{k} {v:.4f}" for k, v in record["loss"].items()]
    parts.append(f"{record['train_snippets_per_s']:.0f} snippets/s")
    parts += [f"{split} {headline}" for split, headline in headlines.items()]
    return " | ".join(parts)
