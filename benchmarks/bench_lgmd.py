"""Cost of local-global multi-modal distillation: training (teacher, student, the RSKP baselines) and inference
(the RGB student against the two-stream RSKP and the RGB+flow teacher).

    python benchmarks/bench_lgmd.py --data DIR --out OUTDIR [--epochs 40] [--threads 1] [--repeats 3]
        [--student-run RUN --two-stream-run RUN [--teacher-run RUN]]

Training: each config's ``--epochs`` recipe runs for 1 and for 4 epochs (``--set train.epochs=E``, validation only
at the end) in its own process; CPU seconds (user + system, ``os.wait4``) per epoch are the difference / 3, the
rest is the fixed cost (start-up, data, the final evaluations, and for the student its teacher's one-time
labels and maps), and the peak resident memory is the 4-epoch process's. The student is taught by the
teacher's 4-epoch run (the cost does not depend on the teacher's quality).

Inference, in this process at ``--threads``: every model built from its shipped config (weights do not change
the cost) runs over the test split with the features already in memory; process CPU seconds, best of
``--repeats``, and the feature values it reads (snippets x the width of its streams). With trained runs,
``wtal predict --run RUN --data FOLDERS`` end to end (its own process: reading each video's stream files,
the model, post-processing) on a per-video folder copy of the data, where a model reading RGB alone opens only
the RGB files; a process that only imports what ``wtal predict`` imports gives the start-up to subtract.
Results go to ``OUTDIR/bench_lgmd.json`` and stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablate_lgmd import measured_run  # noqa: E402  (CPU and peak memory of a child process)

from wtal.atomic import write_json_atomic  # noqa: E402
from wtal.data.dataset import VideoDataset  # noqa: E402
from wtal.data.folders import write_video_folders  # noqa: E402
from wtal.data.sources import open_source, split_subsets  # noqa: E402
from wtal.engine.config import resolve_config  # noqa: E402
from wtal.models import ModelContext, build_model  # noqa: E402
from wtal.tasks.detection import infer  # noqa: E402

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
TRAINED = (("two-stream RSKP", "rskp"), ("RSKP, RGB only", "rskp_rgb"), ("LGMD teacher", "lgmd_teacher_rskp"),
           ("LGMD student (RGB)", "lgmd_student_rskp"))
INFERRED = (("LGMD student (RGB)", "lgmd_student_rskp"), ("two-stream RSKP", "rskp"),
            ("LGMD teacher (RGB+flow)", "lgmd_teacher_rskp"))


def training_costs(args: argparse.Namespace, env: dict[str, str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    runs = args.out / "train"
    runs.mkdir(parents=True, exist_ok=True)
    for label, config in TRAINED:
        costs = {}
        for epochs in (1, 4):
            folder = runs / f"{config}-{epochs}"
            student = config.startswith("lgmd_student")
            extra = ["--set", f"teacher.run={runs / 'lgmd_teacher_rskp-4'}"] if student else []
            cmd = [sys.executable, "-m", "wtal.cli", "train", "--config", str(CONFIG_DIR / f"{config}.yaml"),
                   "--data", str(args.data), "--out", str(folder), "--epochs", str(args.epochs), "--seed", "0",
                   "--set", f"train.epochs={epochs}", "--set", "train.eval_every=1000",
                   "--set", f"train.num_threads={args.threads}", "--set", "train.progress=false", *extra]
            if (folder / "cost.json").is_file():
                costs[epochs] = json.loads((folder / "cost.json").read_text(encoding="utf-8"))
                continue
            code, cost = measured_run(cmd, runs / f"{config}-{epochs}.log", env)
            if code != 0:
                raise SystemExit(f"training {config} failed, see {runs / f'{config}-{epochs}.log'}")
            write_json_atomic(folder / "cost.json", cost, indent=1)
            costs[epochs] = cost
        per_epoch = (costs[4]["cpu_s"] - costs[1]["cpu_s"]) / 3
        out[label] = {"config": config, "cpu_s_per_epoch": per_epoch, "cpu_s_fixed": costs[1]["cpu_s"] - per_epoch,
                      "cpu_s_run": per_epoch * args.epochs + costs[1]["cpu_s"] - per_epoch,
                      "max_rss_mib": costs[4]["max_rss_mib"]}
        print(f"  trained {label}: {per_epoch:.2f} CPU s per epoch", flush=True)
    return out


def inference_costs(args: argparse.Namespace) -> dict[str, dict]:
    torch.set_num_threads(args.threads)
    source = open_source(args.data)
    _, test_subset = split_subsets(source.annotations)
    names = source.annotations.names(test_subset)
    out: dict[str, dict] = {}
    for label, config in INFERRED:
        cfg = resolve_config(CONFIG_DIR / f"{config}.yaml", epochs=args.epochs)
        streams = list(cfg.model.streams)
        widths = source.stream_widths()
        dataset = VideoDataset(source, names, streams, cache=True)
        snippets = sum(dataset[i].length for i in range(len(dataset)))  # also fills the cache
        torch.manual_seed(0)
        context = ModelContext({s: widths[s] for s in streams}, tuple(source.annotations.classes),
                               source.snippets_per_second)
        model = build_model(cfg.model.name, context, **cfg.model.params)
        times = []
        for _ in range(args.repeats):
            t0 = time.process_time()
            infer(model, dataset, torch.device("cpu"), cfg.data.eval_batch_size, cfg.data.max_batch_snippets)
            times.append(time.process_time() - t0)
        out[label] = {"config": config, "streams": streams, "videos": len(names), "snippets": snippets,
                      "feature_values": snippets * sum(widths[s] for s in streams),
                      "parameters": sum(p.numel() for p in model.parameters()), "forward_cpu_s": min(times)}
        print(f"  inferred {label}: {min(times):.3f} CPU s", flush=True)
    return out


def folder_copy(args: argparse.Namespace) -> Path:
    """A per-video folder copy of the data (each stream its own file per video), written once."""
    target = args.out / "folders"
    if (target / "gt.json").is_file():
        return target
    source = open_source(args.data)
    streams = list(source.stream_widths())
    features = {v: source.features(v, streams) for v in source.annotations.videos}
    return write_video_folders(target, source.annotations, features)


def predict_costs(args: argparse.Namespace, env: dict[str, str]) -> dict[str, dict]:
    folders = folder_copy(args)
    (args.out / "predict").mkdir(exist_ok=True)
    base_cmd = [sys.executable, "-m", "wtal.cli"]
    imports = "import torch, wtal.cli, wtal.engine.predict, wtal.tasks.detection, wtal.localize.pipeline"
    _, startup = measured_run([sys.executable, "-c", imports], args.out / "startup.log", env)
    runs = [("LGMD student (RGB)", args.student_run), ("two-stream RSKP", args.two_stream_run),
            ("LGMD teacher (RGB+flow)", args.teacher_run)]
    out: dict[str, dict] = {"python start-up": {"cpu_s": startup["cpu_s"], "max_rss_mib": startup["max_rss_mib"]}}
    for label, run in runs:
        if run is None:
            continue
        best = None
        for r in range(args.repeats):
            cmd = [*base_cmd, "predict", "--run", str(run), "--data", str(folders), "--device", "cpu",
                   "--out", str(args.out / "predict" / f"{Path(run).name}-{r}.json")]
            code, cost = measured_run(cmd, args.out / f"predict-{Path(run).name}.log",
                                      {**env, "OMP_NUM_THREADS": str(args.threads)})
            if code != 0:
                raise SystemExit(f"wtal predict --run {run} failed, see {args.out / f'predict-{Path(run).name}.log'}")
            best = cost if best is None or cost["cpu_s"] < best["cpu_s"] else best
        out[label] = {"run": str(run), "cpu_s": best["cpu_s"], "cpu_s_after_startup": best["cpu_s"] - startup["cpu_s"],
                      "max_rss_mib": best["max_rss_mib"]}
        print(f"  predicted with {label}: {best['cpu_s']:.2f} CPU s", flush=True)
    return out


def report(result: dict) -> str:
    lines = ["### Training (CPU s, one thread)", "", "| | per epoch | fixed | whole run | peak RSS MiB |",
             "|---|---:|---:|---:|---:|"]
    for label, r in result["training"].items():
        lines.append(f"| {label} | {r['cpu_s_per_epoch']:.2f} | {r['cpu_s_fixed']:.1f} | {r['cpu_s_run']:.0f} | "
                     f"{r['max_rss_mib']:.0f} |")
    inference = result["inference"]
    ref = inference.get("two-stream RSKP")
    lines += ["", "### Inference over the test split (features in memory)", "",
              "| | streams | feature values | vs two-stream | parameters | forward CPU s | vs two-stream |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for label, r in inference.items():
        lines.append(f"| {label} | {'+'.join(r['streams'])} | {r['feature_values']:,} | "
                     f"{r['feature_values'] / ref['feature_values']:.2f} | {r['parameters']:,} | "
                     f"{r['forward_cpu_s']:.3f} | {r['forward_cpu_s'] / ref['forward_cpu_s']:.2f} |")
    predict = result.get("predict") or {}
    if len(predict) > 1:
        two = predict.get("two-stream RSKP")
        lines += ["", "### `wtal predict` end to end on per-video folders (CPU s)", "",
                  "| | CPU s | after start-up | vs two-stream | peak RSS MiB |", "|---|---:|---:|---:|---:|"]
        for label, r in predict.items():
            ratio = "" if two is None or "cpu_s_after_startup" not in r else \
                f"{r['cpu_s_after_startup'] / two['cpu_s_after_startup']:.2f}"
            after = f"{r['cpu_s_after_startup']:.2f}" if "cpu_s_after_startup" in r else ""
            lines.append(f"| {label} | {r['cpu_s']:.2f} | {after} | {ratio} | {r['max_rss_mib']:.0f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path, help="W-TALC bundle or per-video feature folder")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--epochs", type=int, default=40, help="the recipe's --epochs (default 40)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--repeats", type=int, default=3, help="inference repeats (best is kept)")
    p.add_argument("--skip-training", action="store_true", help="only the inference measurements")
    for name in ("student", "two-stream", "teacher"):
        p.add_argument(f"--{name}-run", type=Path, default=None, help=f"a trained {name} run for `wtal predict`")
    args = p.parse_args(argv)
    args.data, args.out = args.data.resolve(), args.out.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    result = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "training": {} if args.skip_training else training_costs(args, env),
              "inference": inference_costs(args)}
    if args.student_run is not None or args.two_stream_run is not None:
        result["predict"] = predict_costs(args, env)
    print("\n" + report(result))
    write_json_atomic(args.out / "bench_lgmd.json", result, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
