"""Time the grounding pieces: a CPL training step and evaluation pass, and the synthetic grounding generator.

    python benchmarks/bench_grounding.py                      # CPL at CPL's sizes, generator at full scale
    python benchmarks/bench_grounding.py --skip-generator --batch 8 --clips 64 --dim 512
    python benchmarks/bench_grounding.py --skip-model --videos 600 --write /tmp/synth
    python benchmarks/bench_grounding.py --skip-generator --batch 11 --clips 47 --dim 256 --hidden 64 --stride 1

CPL: one training step (forward with the reference and negative passes, losses, backward, Adam step) and one
evaluation forward on a random batch of ``--batch`` videos of ``--clips`` clips, ``--dim`` features and sentences
of ``--words`` words, vocabulary ``--vocab`` (defaults: CPL's Charades-STA sizes 32 / 200 / 1024 / 10 / 1113), hidden
size ``--hidden`` (FFN twice that) and proposal stride ``--stride`` (CPL: 256 and 4).
Times are process CPU seconds per step (also wall seconds), median of ``--repeats`` after one warm-up step.
Generator: CPU and wall seconds for ``--videos`` videos at ``--gen-dim`` features, in memory, and optionally
written to ``--write``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from wtal.data.synthetic_grounding import GroundingSynthConfig, iter_videos, write_grounding_synthetic
from wtal.models.cpl import CPL, CPLHyperparameters


def _timed(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(cpu), statistics.median(wall)


def bench_cpl(batch: int, clips: int, dim: int, words: int, vocab: int, repeats: int, device: str, hidden: int = 256,
              stride: int = 4) -> None:
    g = torch.Generator().manual_seed(0)
    hp = CPLHyperparameters(hidden_dim=hidden, ffn_dim=2 * hidden, proposal_stride=stride)
    model = CPL({"rgb": dim}, vocab, hp).to(device)
    video = {"rgb": torch.randn(batch, clips, dim, generator=g).to(device)}
    video_mask = torch.ones(batch, clips, dtype=torch.bool, device=device)
    ids = torch.randint(2, vocab, (batch, words), generator=g).to(device)
    word_mask = torch.ones(batch, words, dtype=torch.bool, device=device)
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)

    def train_step():
        model.train()
        out = model(video, video_mask, ids, word_mask, epoch=0, generator=g)
        model.losses(out)["total"].mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        if device != "cpu":
            torch.cuda.synchronize()

    def eval_step():
        model.eval()
        with torch.no_grad():
            model(video, video_mask, ids, word_mask, generator=g)
        if device != "cpu":
            torch.cuda.synchronize()

    params = sum(p.numel() for p in model.parameters())
    print(f"CPL ({params / 1e6:.2f} M parameters, hidden {hidden}, stride {stride}), batch {batch}, {clips} clips x "
          f"{dim}-d, {words} words, "
          f"vocabulary {vocab}, {torch.get_num_threads()} threads, {device}")
    for name, fn in (("train step (fwd + losses + bwd + Adam)", train_step), ("eval forward (K proposals)", eval_step)):
        cpu, wall = _timed(fn, repeats)
        print(f"  {name}: {cpu:.2f} s CPU, {wall:.2f} s wall per batch; {batch / cpu:.1f} sentences per CPU second, "
              f"{batch / wall:.1f} per wall second")


def bench_generator(videos: int, dim: int, write: str | None) -> None:
    cfg = GroundingSynthConfig(num_videos=videos, dim=dim)
    c, w = time.process_time(), time.perf_counter()
    snippets = sum(len(v.features["rgb"]) for v in iter_videos(cfg))
    print(f"generator: {videos} videos, dim {dim}, {snippets} snippets: {time.process_time() - c:.1f} s CPU, "
          f"{time.perf_counter() - w:.1f} s wall in memory")
    if write:
        c, w = time.process_time(), time.perf_counter()
        write_grounding_synthetic(write, cfg)
        size = sum(p.stat().st_size for p in Path(write).rglob("*") if p.is_file())
        print(f"  written to {write} ({size / 2**30:.2f} GiB): {time.process_time() - c:.1f} s CPU, "
              f"{time.perf_counter() - w:.1f} s wall")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--clips", type=int, default=200)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--words", type=int, default=10)
    p.add_argument("--vocab", type=int, default=1113)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--videos", type=int, default=6000)
    p.add_argument("--gen-dim", type=int, default=1024)
    p.add_argument("--write", default=None, help="also write the set here ('tmp': a temporary folder)")
    p.add_argument("--skip-model", action="store_true")
    p.add_argument("--skip-generator", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_model:
        bench_cpl(args.batch, args.clips, args.dim, args.words, args.vocab, args.repeats, args.device, args.hidden,
                  args.stride)
    if not args.skip_generator:
        if args.write == "tmp":
            with tempfile.TemporaryDirectory() as tmp:
                bench_generator(args.videos, args.gen_dim, tmp)
        else:
            bench_generator(args.videos, args.gen_dim, args.write)


if __name__ == "__main__":
    main()
