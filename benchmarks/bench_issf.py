"""ISSF's time and memory against RSKP: one training step as the video length T grows, and a training epoch.

The interaction units let every snippet attend to the salient and to the non-salient snippets of its video:
``T x |S|`` plus ``T x |N|`` scores, ``T^2`` in all. ISSF evaluates them in blocks of query snippets that
are recomputed in the backward pass (``wtal.models.issf.attend``), so their activations stay linear in T;
``straight`` is the same model with one block (the textbook formula, quadratic memory).

Part 1 (``--lengths``, ``--dims``): one forward + backward of one video of T snippets (random features,
one label, memory filled so that the memory branch runs), for ISSF (blocked), ISSF (straight) and RSKP,
each measurement in a fresh subprocess: CPU seconds (``time.process_time``, best of ``--repeats``; one
thread) and peak tensor memory (the largest total of the tensors alive at once during the step, from
torch's memory timeline of the CPU allocator; resident-set sizes mix in glibc's heap reuse, which varied
by +-100 MiB between runs). Printed with the ratios to RSKP and the growth factor from the previous T.

Part 2 (``--data DIR``): training epochs of the shipped short schedule (``--epochs``, default 40) of
``issf.yaml`` and ``rskp.yaml`` on that data, in the memory phase of each (memory filled by its eval pass,
then epochs after its initialisation epoch): CPU seconds of one epoch and the peak tensor memory of the next.

Usage: python benchmarks/bench_issf.py [--dims 256,2048] [--lengths 250,500,1000,2000,5000] [--repeats 1]
       [--data DIR] [--epochs 40] [--skip-lengths]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("issf", "issf-straight", "rskp")
CLASSES = 20


def peak_tensor_bytes(work: Callable[[], None]) -> int:
    """The largest total size of the tensors alive at one time while ``work()`` runs, counted from its start
    (torch's memory timeline of the CPU allocator; parameters and anything allocated before do not count)."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True,
                                record_shapes=True, with_stack=True) as prof:
        work()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text(encoding="utf-8"))
    return int(max(sum(row) for row in sizes)) if sizes else 0


def build(variant: str, dim: int):
    import torch

    import wtal.models.issf as issf_module
    from wtal.models import ModelContext, build_model

    if variant == "issf-straight":
        issf_module.ATTENTION_BLOCK_ELEMENTS = 2**62  # one block: the straight formula
    torch.manual_seed(0)
    context = ModelContext({"rgb": dim // 2, "flow": dim - dim // 2}, tuple(f"c{i}" for i in range(CLASSES)))
    model = build_model("rskp" if variant == "rskp" else "issf", context).train()
    model.memory.normal_()
    model.memory_scores.uniform_()
    return model


def measure_step(variant: str, dim: int, length: int, repeats: int) -> dict:
    """In this (fresh) process: CPU seconds and peak tensor memory of one training step on one video."""
    import torch

    from wtal.data.batch import Batch

    torch.set_num_threads(1)
    model = build(variant, dim)
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(1, length, dim, generator=gen).abs()
    labels = torch.zeros(1, CLASSES)
    labels[0, 3] = 1.0
    batch = Batch({"rgb": features[..., : dim // 2], "flow": features[..., dim // 2 :]},
                  torch.ones(1, length, dtype=torch.bool), labels, ["v"], torch.zeros(1, dtype=torch.int64))
    epoch = 150  # after every warm-up: all branches and the memory run

    def step(on: Batch) -> None:
        model.zero_grad(set_to_none=True)
        out = model(on)
        model.losses(out, on, epoch)["total"].sum().backward()

    step(batch)  # warm-up
    model.zero_grad(set_to_none=True)
    memory = peak_tensor_bytes(lambda: model.losses(model(batch), batch, epoch)["total"].sum().backward())
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        step(batch)
        best = min(best, time.process_time() - start)
    return {"seconds": best, "memory": memory}


def measure_epoch(config: str, data: str, epochs: int) -> dict:
    """In this (fresh) process: CPU seconds and peak memory of one training epoch in the memory phase."""
    import torch

    from wtal.engine.config import resolve_config
    from wtal.engine.trainer import Trainer

    cfg = resolve_config(config, epochs=epochs, data_path=data, overrides=["train.progress=false"])
    torch.set_num_threads(1)
    trainer = Trainer(cfg, None, device="cpu")
    for batch in trainer.train_batches():  # load (and cache) every training video first
        del batch
    params = cfg.model.params
    init_epoch = params.get("memory_init_epoch", params.get("warmup_epoch"))
    trainer.model.on_epoch_end(init_epoch, trainer.train_batches)
    start = time.process_time()
    trainer.train_epoch(init_epoch + 1)
    seconds = time.process_time() - start
    memory = peak_tensor_bytes(lambda: trainer.train_epoch(init_epoch + 2))
    return {"seconds": seconds, "memory": memory, "snippets": sum(int(b.mask.sum()) for b in trainer.train_batches())}


def in_subprocess(*args: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "_measure", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}" if n < 10 * 2**20 else f"{n / 2**20:.0f}"


def length_table(dims: list[int], lengths: list[int], repeats: int) -> list[dict]:
    rows = []
    for dim in dims:
        print(f"\n### one training step, D = {dim} (CPU seconds, one thread; peak tensor memory MiB)\n")
        print("| T | ISSF s | RSKP s | ISSF / RSKP time | ISSF MiB | straight MiB | RSKP MiB | ISSF / RSKP memory "
              "| straight / RSKP memory | ISSF time growth | ISSF memory growth | straight memory growth |")
        print("|---:|" + "---:|" * 11)
        previous = None
        for length in lengths:
            got = {v: in_subprocess("step", v, str(dim), str(length), str(repeats)) for v in VARIANTS}
            row = {"dim": dim, "length": length, **{v: got[v] for v in VARIANTS}}
            growth = ["–", "–", "–"]
            if previous is not None:
                scale = f"(T x{length / previous['length']:g})"
                growth = [f"x{got['issf']['seconds'] / previous['issf']['seconds']:.1f} {scale}",
                          f"x{got['issf']['memory'] / previous['issf']['memory']:.1f}",
                          f"x{got['issf-straight']['memory'] / previous['issf-straight']['memory']:.1f}"]
            i, s, r = got["issf"], got["issf-straight"], got["rskp"]
            print(f"| {length} | {i['seconds']:.3f} | {r['seconds']:.3f} | {i['seconds'] / r['seconds']:.2f} "
                  f"| {mib(i['memory'])} | {mib(s['memory'])} | {mib(r['memory'])} | {i['memory'] / r['memory']:.2f} "
                  f"| {s['memory'] / r['memory']:.2f} | " + " | ".join(growth) + " |", flush=True)
            rows.append(row)
            previous = row
    return rows


def epoch_table(data: str, epochs: int) -> dict:
    got = {name: in_subprocess("epoch", str(REPO / "configs" / f"{name}.yaml"), data, str(epochs))
           for name in ("issf", "rskp")}
    print(f"\n### one training epoch of the {epochs}-epoch schedule on {data} (memory phase, one thread)\n")
    print("| model | CPU s / epoch | snippets / CPU s | peak tensor MiB |")
    print("|---|---:|---:|---:|")
    for name, m in got.items():
        print(f"| {name} | {m['seconds']:.1f} | {m['snippets'] / m['seconds']:.0f} | {mib(m['memory'])} |")
    i, r = got["issf"], got["rskp"]
    print(f"\nISSF / RSKP: time x{i['seconds'] / r['seconds']:.2f}, peak memory x{i['memory'] / r['memory']:.2f}")
    return got


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_measure":
        kind, *rest = argv[1:]
        if kind == "step":
            result = measure_step(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
        else:
            result = measure_epoch(rest[0], rest[1], int(rest[2]))
        print(json.dumps(result))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dims", default="256,2048", help="feature widths of the length sweep")
    p.add_argument("--lengths", default="250,500,1000,2000,5000", help="video lengths T of the sweep")
    p.add_argument("--repeats", type=int, default=1, help="timed steps per measurement (best is kept)")
    p.add_argument("--skip-lengths", action="store_true", help="only the epoch measurement")
    p.add_argument("--data", default=None, help="data for the epoch measurement (W-TALC bundle or folder)")
    p.add_argument("--epochs", type=int, default=40, help="schedule length of the epoch measurement")
    args = p.parse_args(argv)
    results: dict = {}
    if not args.skip_lengths:
        results["lengths"] = length_table([int(d) for d in args.dims.split(",")],
                                          [int(t) for t in args.lengths.split(",")], args.repeats)
    if args.data is not None:
        results["epoch"] = epoch_table(args.data, args.epochs)
    print("\n" + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
