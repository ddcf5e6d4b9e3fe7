"""Engine throughput: padded whole-video batches vs one video at a time (the reference repositories' loop).

For each model, on the same synthetic THUMOS-like videos and the same weights:

- training: ``batch`` videos per optimiser step, either as one padded batch (one forward/backward) or one
  video at a time with gradient accumulation (one forward/backward per video, as RS/GF/MM do);
- inference: length-sorted padded batches of ``eval_batch`` videos vs one video at a time;
- equal losses: the summed per-video losses of both paths (dropout off) must agree.

Usage: python benchmarks/bench_engine.py [--dim 256] [--videos 60] [--models mil,rskp,...] [--threads N]
Prints one table row per model: snippets/s of each path, the speed-ups and the largest loss difference.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from wtal.data.batch import collate_videos
from wtal.data.dataset import VideoDataset
from wtal.data.sources import open_source
from wtal.data.synthetic import SynthConfig, write_synthetic
from wtal.engine.rundata import length_sorted_batches
from wtal.models.factory import build_model


def _train_pass(model, optimizer, items, batch: int, batched: bool) -> float:
    model.train()
    t0 = time.perf_counter()
    for start in range(0, len(items), batch):
        group = items[start : start + batch]
        chunks = [group] if batched else [[it] for it in group]
        for chunk in chunks:
            b = collate_videos(chunk)
            out = model(b.features, b.mask)
            model.losses(out, b.labels, b.mask, 0)["total"].sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


@torch.no_grad()
def _infer_pass(model, dataset, eval_batch: int, batched: bool) -> float:
    model.eval()
    t0 = time.perf_counter()
    if batched:
        for b in length_sorted_batches(dataset, eval_batch, torch.device("cpu")):
            model.localization_scores(model(b.features, b.mask), b.mask)
    else:
        for i in range(len(dataset)):
            b = collate_videos([dataset[i]])
            model.localization_scores(model(b.features, b.mask), b.mask)
    return time.perf_counter() - t0


@torch.no_grad()
def _loss_difference(model, items, batch: int) -> float:
    """Max |batched - per-video| total loss (eval mode: no dropout)."""
    model.eval()
    worst = 0.0
    for start in range(0, len(items), batch):
        group = items[start : start + batch]
        b = collate_videos(group)
        batched = model.losses(model(b.features, b.mask), b.labels, b.mask, 0)["total"]
        for j, it in enumerate(group):
            s = collate_videos([it])
            single = model.losses(model(s.features, s.mask), s.labels, s.mask, 0)["total"][0]
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
    p.add_argument("--data", default=None, help="existing feature source (default: generate one)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = None
    if args.data is None:
        tmp = tempfile.TemporaryDirectory()
        cfg = SynthConfig(num_videos=args.videos, dim=args.dim, seed=0, duration_log_mean=4.3)
        args.data = str(write_synthetic(Path(tmp.name), cfg)["wtalc"])
    source = open_source(args.data)
    ann = source.annotations
    train = VideoDataset(source, ann.names("validation"), "both", cache=True)
    test = VideoDataset(source, ann.names("test"), "both", cache=True)
    items = [train[i] for i in range(len(train))]
    n_train = sum(it[0].shape[0] for it in items)
    n_test = sum(test[i][0].shape[0] for i in range(len(test)))
    print(f"data: {len(train)} train videos ({n_train} snippets), {len(test)} test videos ({n_test} snippets), "
          f"dim {train.feature_dim}, {len(ann.classes)} classes; torch threads {torch.get_num_threads()}")
    header = (f"{'model':<8} {'train batched':>14} {'train 1-by-1':>13} {'speed-up':>9} "
              f"{'infer batched':>14} {'infer 1-by-1':>13} {'speed-up':>9} {'max |dloss|':>12}")
    print(header)
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build_model(name, train.feature_dim, len(ann.classes))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)
        diff = _loss_difference(model, items, args.batch)
        _train_pass(model, optimizer, items[: args.batch], args.batch, True)  # warm-up
        tb = min(_train_pass(model, optimizer, items, args.batch, True) for _ in range(args.repeats))
        ts = min(_train_pass(model, optimizer, items, args.batch, False) for _ in range(args.repeats))
        ib = min(_infer_pass(model, test, args.eval_batch, True) for _ in range(args.repeats))
        is_ = min(_infer_pass(model, test, args.eval_batch, False) for _ in range(args.repeats))
        print(f"{name:<8} {n_train / tb:>12.0f}/s {n_train / ts:>11.0f}/s {ts / tb:>8.2f}x "
              f"{n_test / ib:>12.0f}/s {n_test / is_:>11.0f}/s {is_ / ib:>8.2f}x {diff:>12.2e}", flush=True)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
