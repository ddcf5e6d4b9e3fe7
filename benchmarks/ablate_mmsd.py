"""MMSD ablations: distillation and self-voting switched off, each stream's own test mAP, and MMSD next to baselines.

    python benchmarks/ablate_mmsd.py --data DIR --epochs N --seeds 0,1,2 --out OUTDIR \
        [--baselines rskp,mil] [--reuse VARIANT=PATTERN ...] [--jobs 1] [--threads 1] [--set KEY=VALUE ...]

Rows (every one is ``configs/mmsd.yaml`` with at most the switches below, so a row differs from the shipped
model only in what it names):

* ``MMSD``: the shipped config;
* ``without distillation``: ``model.params.distill_weight=0``;
* ``without self-voting``: ``model.params.voting_weight=0`` (no pseudo-label passes either);
* ``without both``: both switches.

For every run the selected checkpoint is scored on the test split with the shipped stream combination (the
run's own ``report.json``) and with each stream alone: ``model.params.test_stream_weights`` ``[1, 0, 0]`` (RGB),
``[0, 1, 0]`` (flow), ``[0, 0, 1]`` (fused), the rest of the recipe unchanged (cached in
``RUN/test_time/streams.json``). ``--baselines`` adds the plain runs of those configs at the same
``--epochs`` and seeds; ``--reuse rskp=DIR/rskp_s{seed}`` uses finished runs of a variant instead of training it
(each checked against the variant's recipe). The epoch-time table takes the median ``train_seconds`` of each
run's ``metrics.jsonl`` (wall-clock seconds of the training part of an epoch; on a shared machine they measure the
contention too).

Runs live in ``OUTDIR/runs/VARIANT/seedS`` (training as ``benchmarks/ablate_gaufuse.py`` does: finished runs are
skipped, interrupted ones resumed). Cells are mean ± sample std over the seeds (percent); tables go to stdout
and, with every per-seed number, to ``OUTDIR/ablation.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
from experiments import (
    CONFIG_DIR,
    RunSpec,
    add_run_arguments,
    check_run_arguments,
    link_reused,
    markdown,
    report_metrics,
    train_all,
)

from wtal.atomic import write_json_atomic
from wtal.engine.predict import load_run
from wtal.engine.runs import build_section_model, load_weights

CONFIG = "mmsd.yaml"
HEADLINE = "AVG(0.1:0.7)"
#: (label, variant folder, --set switches) of the ablation rows
VARIANTS = (
    ("MMSD", "mmsd", ()),
    ("without distillation", "mmsd-no-distill", ("model.params.distill_weight=0",)),
    ("without self-voting", "mmsd-no-voting", ("model.params.voting_weight=0",)),
    ("without both", "mmsd-no-both", ("model.params.distill_weight=0", "model.params.voting_weight=0")),
)
#: the test-time stream choices (column label -> test_stream_weights); None is the run's own combination
STREAMS = {"shipped (0.2 RGB + 0.4 flow + 0.4 fused)": None, "RGB alone": [1.0, 0.0, 0.0],
           "flow alone": [0.0, 1.0, 0.0], "fused alone": [0.0, 0.0, 1.0]}


def ablation_specs(seeds: list[int]) -> list[RunSpec]:
    """The ablation runs, seed by seed (every row gets its first seed before any row its second)."""
    return [RunSpec(variant, CONFIG, switches, seed) for seed in seeds for _, variant, switches in VARIANTS]


# ---------------------------------------------------------------------------------------------- metrics


def stream_metrics(run: Path, streams: dict[str, list[float] | None] = STREAMS) -> dict[str, dict[str, float]]:
    """Test metrics of the run's selected checkpoint for each of ``streams`` (label -> ``test_stream_weights``;
    the rest of the recipe as the run's; ``None``: the run's own report); cached in
    ``RUN/test_time/streams.json``."""
    report = json.loads((run / "report.json").read_text(encoding="utf-8"))["test"]
    cache = run / "test_time" / "streams.json"
    if cache.is_file():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved["streams"] == streams and saved["report"] == report:
            return saved["metrics"]
    loaded = load_run(run, "cpu")
    metrics = {}
    for label, weights in streams.items():
        if weights is None:
            metrics[label] = report_metrics(report)
            continue
        section = copy.deepcopy(loaded.cfg.model)
        section.params["test_stream_weights"] = weights
        model = build_section_model(section, loaded.task, loaded.data)
        load_weights(model, loaded.model.state_dict(), checkpoint=loaded.checkpoint, run=run)
        result = loaded.task.evaluate(model.eval(), loaded.data.test, loaded.cfg, torch.device("cpu"))
        metrics[label] = report_metrics(result.summary())
    write_json_atomic(cache, {"streams": streams, "report": report, "metrics": metrics}, indent=1)
    return metrics


def epoch_seconds(run: Path) -> float | None:
    """Median ``train_seconds`` over the run's epochs."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    seconds = [json.loads(line)["train_seconds"] for line in path.read_text(encoding="utf-8").splitlines() if line]
    return float(np.median(seconds)) if seconds else None


def aggregate(label: str, per_seed: dict[int, dict[str, float]]) -> dict:
    """Mean and sample std of each metric over the seeds that have it."""
    columns = list(next(iter(per_seed.values()), {}))
    values = {k: np.array([m[k] for m in per_seed.values()]) for k in columns}
    return {"label": label, "n": len(per_seed), "seeds": sorted(per_seed),
            "mean": {k: float(v.mean()) for k, v in values.items()},
            "std": {k: float(v.std(ddof=1)) if len(v) > 1 else None for k, v in values.items()},
            "per_seed": {str(s): m for s, m in per_seed.items()}}


def finished(folder: Path) -> bool:
    return (folder / "report.json").is_file()


def build_tables(args: argparse.Namespace) -> dict[str, dict]:
    out, seeds = args.out, args.seeds
    runs = {variant: {s: RunSpec(variant, CONFIG, (), s).folder(out) for s in seeds} for _, variant, _ in VARIANTS}
    runs = {v: {s: f for s, f in folders.items() if finished(f)} for v, folders in runs.items()}
    streams_rows = []
    for label, variant, _ in VARIANTS:
        per_seed = {}
        for seed, folder in runs[variant].items():
            per_seed[seed] = {label: m[HEADLINE] for label, m in stream_metrics(folder).items()}
        streams_rows.append(aggregate(label, per_seed))
    full_rows = [aggregate(label, {s: report_metrics(json.loads((f / "report.json").read_text())["test"])
                                   for s, f in runs[variant].items()}) for label, variant, _ in VARIANTS]
    compare = [("MMSD", {s: f for s, f in runs["mmsd"].items()})]
    compare += [(model.upper(), {s: RunSpec(model, f"{model}.yaml", (), s).folder(out) for s in seeds})
                for model in args.baselines]
    compare = [(label, {s: f for s, f in folders.items() if finished(f)}) for label, folders in compare]
    compare_rows = [aggregate(label, {s: report_metrics(json.loads((f / "report.json").read_text())["test"])
                                      for s, f in folders.items()}) for label, folders in compare]
    time_rows = [aggregate(label, {s: {"median train_seconds per epoch": epoch_seconds(f)}
                                   for s, f in folders.items() if epoch_seconds(f) is not None})
                 for label, folders in [*[(lab, runs[v]) for lab, v, _ in VARIANTS], *compare[1:]]]
    return {
        "streams": {"title": f"Ablation: test {HEADLINE} of the shipped combination and of each stream alone",
                    "rows": streams_rows},
        "ablation": {"title": "Ablation: test mAP of the shipped combination", "rows": full_rows},
        "compare": {"title": "MMSD next to the baselines (test mAP)", "rows": compare_rows},
        "time": {"title": "Epoch time (wall clock, median over epochs)", "rows": time_rows},
    }


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(p)
    p.add_argument("--baselines", default="rskp,mil", help="configs trained next to MMSD (comma-separated; '' none)")
    args = p.parse_args(argv)
    check_run_arguments(p, args)
    args.baselines = [m.strip() for m in args.baselines.split(",") if m.strip()]
    missing = [f"{m}.yaml" for m in args.baselines if not (CONFIG_DIR / f"{m}.yaml").is_file()]
    if missing:
        p.error(f"no config {', '.join(missing)} in {CONFIG_DIR}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    specs = ablation_specs(args.seeds)
    specs += [RunSpec(m, f"{m}.yaml", (), s) for m in args.baselines for s in args.seeds]
    link_reused(specs, args)
    failed = train_all(specs, args)
    torch.set_num_threads(args.threads)  # in-process evaluation of the single-stream rows
    tables = build_tables(args)
    for table in tables.values():
        print("\n" + markdown(table["title"], table["rows"]))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    path = write_json_atomic(args.out / "ablation.json", {"settings": settings, "tables": tables, "failed": failed},
                             indent=1)
    print(f"\n-> {path}" + (f"; {len(failed)} run(s) failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
