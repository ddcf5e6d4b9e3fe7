"""Engine throughput: padded batches vs one video at a time (the reference repositories' loop).

For each model, on the same synthetic THUMOS-like videos and the same weights:

- training: ``batch`` videos per optimiser step, run as the engine does (length-sorted micro-batches of at
  most ``--max-snippets`` padded snippets, :func:`wtal.data.batching.plan_micro_batches`), as one batch
  padded to the step's longest video (the engine before micro-batches), or one video at a time with
  gradient accumulation (one forward/backward per video, as RS/GF/MM do);
- inference: length-sorted batches of at most ``eval_batch`` videos and ``--max-snippets`` padded
  snippets (the engine's ``length_sorted_batches``) vs one video at a time;
- equal losses: the per-video losses of the engine's micro-batches and of single videos (dropout off);
- the batching bound: one-video training steps at T = 16, 64, 256, 1024 fitted as ``a + b T`` (a: the
  per-video cost that batching shares, dispatch and small ops; b: the per-snippet compute it cannot
  share). Perfect batching of ``batch`` videos of the mean length ``T`` (no padding, no extra work) is
  at most ``(a + b T) / (a / batch + b T)`` faster; where ``a`` is small against ``b T`` (CPU, long
  videos, wide features) no engine can reach a large speed-up.

Times are best of ``--repeats``. ``--clock cpu`` (the default with ``--threads 1``) takes process CPU
seconds, so other jobs on a shared machine disturb them less; at one thread CPU time is the single-core wall
time. With more threads the default is ``--clock wall`` (``time.perf_counter``; run it on an idle machine):
CPU time would charge the batched path for the cores it keeps busy, and using the cores that a one-video
step's small operations leave idle is part of what batching buys. The bound is then the one-video cost model
at that thread count, which batched work can exceed by running in parallel.

Usage: python benchmarks/bench_engine.py [--dim 256] [--videos 60] [--models mil,rskp,...] [--threads N]
       [--clock cpu|wall] [--max-snippets N]
Prints one table row per model: snippets/s of each path, the speed-ups, the batching bound with the
per-video overhead's share of a one-video step at the mean length, and the largest loss difference.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wtal.data.batch import Sample, collate_samples
from wtal.data.batching import default_max_snippets, length_sorted_batches, plan_micro_batches
from wtal.data.dataset import VideoDataset
from wtal.data.sources import open_source
from wtal.data.synthetic import SynthConfig, write_synthetic
from wtal.engine.allocator import keep_freed_memory
from wtal.models import ModelContext, build_model


def _chunks(group, mode: str, max_snippets: int):
    if mode == "micro":
        return [[group[k] for k in g] for g in plan_micro_batches([it.length for it in group], max_snippets)]
    return [group] if mode == "padded" else [[it] for it in group]


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def _train_pass(model, optimizer, items, batch: int, mode: str, max_snippets: int, clock) -> float:
    model.train()
    t0 = clock()
    for start in range(0, len(items), batch):
        for chunk in _chunks(items[start : start + batch], mode, max_snippets):
            b = collate_samples(chunk)
            out = model(b)
            model.losses(out, b, 0)["total"].sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return clock() - t0


@torch.no_grad()
def _infer_pass(model, dataset, eval_batch: int, batched: bool, max_snippets: int, clock) -> float:
    model.eval()
    t0 = clock()
    if batched:
        for b in length_sorted_batches(dataset, eval_batch, torch.device("cpu"), max_snippets=max_snippets):
            model.localization_scores(model(b), b.mask)
    else:
        for i in range(len(dataset)):
            b = collate_samples([dataset[i]])
            model.localization_scores(model(b), b.mask)
    return clock() - t0


def _batching_bound(model, items, batch: int, mean_length: float, clock) -> tuple[float, float]:
    """``(bound, a / (a + b T))`` from timed one-video steps: the speed-up bound and the per-video
    overhead's share of a one-video step of the mean length (see the module doc)."""
    model.train()
    first = items[0]
    rows = []
    for t in (16, 64, 256, 1024):
        # tiles the first video's snippets
        inputs = {s: np.resize(x, (t, x.shape[1])) for s, x in first.inputs.items()}
        b = collate_samples([Sample(inputs, first.labels, "bound", 0)])
        repeats = max(3, 2048 // t)
        times = []
        for _ in range(repeats + 1):
            t0 = clock()
            model.losses(model(b), b, 0)["total"].sum().backward()
            times.append(clock() - t0)
        rows.append((t, float(np.median(times[1:]))))
    model.zero_grad(set_to_none=True)
    slope, intercept = np.polyfit(*np.array(rows).T, 1)
    a, b = max(float(intercept), 0.0), max(float(slope), 1e-12)
    one = a + b * mean_length
    return one / (a / batch + b * mean_length), a / one


@torch.no_grad()
def _loss_difference(model, items, batch: int, max_snippets: int) -> float:
    """Max |micro-batched - per-video| total loss (eval mode: no dropout)."""
    model.eval()
    worst = 0.0
    for start in range(0, len(items), batch):
        for chunk in _chunks(items[start : start + batch], "micro", max_snippets):
            b = collate_samples(chunk)
            batched = model.losses(model(b), b, 0)["total"]
            for j, it in enumerate(chunk):
                s = collate_samples([it])
                single = model.losses(model(s), s, 0)["total"][0]
                worst = max(worst, abs(float(batched[j] - single)))
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--videos", type=int, default=60, help="synthetic videos (about half are training videos)")
    p.add_argument("--models", default="mil,rskp,stpn,basnet,wum,facnet")
    p.add_argument("--batch", type=int, default=10, help="videos per optimiser step")
    p.add_argument("--eval-batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2, help="timed passes (the best is kept)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clock", choices=sorted(CLOCKS), default=None,
                   help="cpu: process CPU time; wall: elapsed time (default: cpu at one thread, else wall)")
    p.add_argument("--max-snippets", type=int, default=None,
                   help="padded snippets per pass (default: the engine's default_max_snippets(dim))")
    p.add_argument("--data", default=None, help="existing feature source (default: generate one)")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="apply the trainer's glibc setting (wtal.engine.allocator) to every path")
    args = p.parse_args()
    if args.keep_freed_memory and not keep_freed_memory():
        print("--keep-freed-memory: not glibc, nothing applied")
    if args.threads:
        torch.set_num_threads(args.threads)
    clock_name = args.clock or ("cpu" if torch.get_num_threads() == 1 else "wall")
    clock = CLOCKS[clock_name]
    tmp = None
    if args.data is None:
        tmp = tempfile.TemporaryDirectory()
        cfg = SynthConfig(num_videos=args.videos, dim=args.dim, seed=0, duration_log_mean=4.3)
        args.data = str(write_synthetic(Path(tmp.name), cfg)["wtalc"])
    source = open_source(args.data)
    ann = source.annotations
    train = VideoDataset(source, ann.names("validation"), ["rgb", "flow"], cache=True)
    test = VideoDataset(source, ann.names("test"), ["rgb", "flow"], cache=True)
    items = [train[i] for i in range(len(train))]
    budget = args.max_snippets or default_max_snippets(train.input_width)
    n_train = sum(it.length for it in items)
    n_test = sum(test[i].length for i in range(len(test)))
    print(f"data: {len(train)} train videos ({n_train} snippets), {len(test)} test videos ({n_test} snippets), "
          f"dim {train.input_width}, {len(ann.classes)} classes; torch threads {torch.get_num_threads()}; "
          f"max {budget} padded snippets per pass; snippets/s of {clock_name} time")
    header = (f"{'model':<8} {'train micro':>12} {'train padded':>13} {'train 1-by-1':>13} {'speed-up':>9} "
              f"{'bound':>6} {'overhead':>9} {'infer batched':>14} {'infer 1-by-1':>13} {'speed-up':>9} "
              f"{'max |dloss|':>12}")
    print(header)
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build_model(name, ModelContext(train.stream_widths, tuple(ann.classes)))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)
        diff = _loss_difference(model, items, args.batch, budget)
        _train_pass(model, optimizer, items[: args.batch], args.batch, "micro", budget, clock)  # warm-up
        # repeats interleave the three paths: one path's large allocations change glibc malloc's dynamic mmap
        # threshold, and with it the page faults of every later pass, so no path may only run before another
        times = {mode: [] for mode in ("micro", "padded", "single")}
        for _ in range(args.repeats):
            for mode, seen in times.items():
                seen.append(_train_pass(model, optimizer, items, args.batch, mode, budget, clock))
        tb, tp, ts = (min(times[mode]) for mode in ("micro", "padded", "single"))
        bound, overhead = _batching_bound(model, items, args.batch, n_train / len(items), clock)
        infer = [(_infer_pass(model, test, args.eval_batch, True, budget, clock),
                  _infer_pass(model, test, args.eval_batch, False, budget, clock)) for _ in range(args.repeats)]
        ib, is_ = (min(t[k] for t in infer) for k in (0, 1))
        print(f"{name:<8} {n_train / tb:>10.0f}/s {n_train / tp:>11.0f}/s {n_train / ts:>11.0f}/s {ts / tb:>8.2f}x "
              f"{bound:>5.2f}x {overhead:>8.0%} {n_test / ib:>12.0f}/s {n_test / is_:>11.0f}/s {is_ / ib:>8.2f}x "
              f"{diff:>12.2e}", flush=True)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
