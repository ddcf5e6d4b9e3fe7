"""Multi-process training on one machine: time per epoch of 1 process vs N gloo processes, and how far the
N-process weights end from the single process's.

    python benchmarks/bench_ddp.py --data DIR --out OUTDIR [--config rskp] [--epochs 10] [--processes 2] \
        [--set KEY=VALUE ...]

Runs (skipped when their report exists): one process with one torch thread, one process with N threads, and
N processes of one thread each (``torchrun --standalone``); all with the config's seed and batch. The table
gives the median training seconds per epoch (``metrics.jsonl``), the speed-up over one single-thread process,
the test AVG mAP and the largest absolute and relative difference of the final weights (``last.pt``) from the
single-thread run. N processes sum the same per-video gradients as one process, in another order, so
their weights differ by float rounding, which Adam's steps can amplify; dropout masks also differ (each rank
draws its own), and RSKP's memory receives a step's updates rank by rank.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch


def train(cmd_prefix: list[str], args: argparse.Namespace, out: Path, threads: int) -> Path:
    if not (out / "report.json").is_file():
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        cmd = [*cmd_prefix, "-m", "wtal.cli", "train", "--config", args.config, "--data", str(args.data),
               "--out", str(out), "--epochs", str(args.epochs), "--device", "cpu",
               "--set", f"train.num_threads={threads}", "--set", "train.progress=false"]
        for override in args.overrides:
            cmd += ["--set", override]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return out


def summary(run: Path, reference: dict[str, torch.Tensor] | None) -> dict:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    weights = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    report = json.loads((run / "report.json").read_text())
    out = {"seconds": float(np.median([r["train_seconds"] for r in records])),
           "avg": report["test"]["averages"].get("AVG(0.1:0.7)", report["test"].get("average"))}
    if reference is not None:
        out["abs"] = max(float((weights[k] - v).abs().max()) for k, v in reference.items())
        out["rel"] = max(float((weights[k] - v).abs().max() / (v.abs().max() + 1e-12)) for k, v in reference.items())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--config", default="rskp", help="shipped config name or path (default: rskp)")
    p.add_argument("--epochs", type=int, default=10, help="--epochs of the runs (default: 10)")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override of every run, applied after --epochs rescales the schedule (e.g. "
                        "data.batch_size=10)")
    args = p.parse_args(argv)
    n = args.processes
    single = train([sys.executable], args, args.out / "single-1thread", 1)
    threads = train([sys.executable], args, args.out / f"single-{n}threads", n)
    ranks = train([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"],
                  args, args.out / f"ddp-{n}processes", 1)
    reference = torch.load(single / "checkpoints" / "last.pt", weights_only=True)["model"]
    base = summary(single, None)
    print(f"| setup | s / epoch | speed-up | test AVG mAP | max abs weight diff | max rel weight diff |\n"
          f"|---|---:|---:|---:|---:|---:|\n"
          f"| 1 process, 1 thread | {base['seconds']:.2f} | 1.00x | {base['avg']:.2f} | | |")
    for label, run in ((f"1 process, {n} threads", threads), (f"{n} processes, 1 thread each", ranks)):
        s = summary(run, reference)
        print(f"| {label} | {s['seconds']:.2f} | {base['seconds'] / s['seconds']:.2f}x | {s['avg']:.2f} | "
              f"{s['abs']:.2e} | {s['rel']:.2e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
