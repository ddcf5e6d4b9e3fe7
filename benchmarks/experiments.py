"""The experiment runner behind the result tables: rows of training runs over seeds, trained once, summarised.

A :class:`Table` holds :class:`Row` s; a row names a *variant* (one config plus ``--set`` overrides, trained
once per seed into ``OUT/runs/VARIANT/seedS``), optionally a test-time post-processing of the saved CAS, or a
baseline variant subtracted seed by seed (a gain row). A run with ``report.json`` is never trained again, an
interrupted one (``last.pt`` without a report) is resumed. Cells are mean ± sample std over the seeds that
finished. Used by ``ablate_*.py`` and ``reproduce.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wtal.atomic import write_json_atomic
from wtal.data.sources import load_annotations
from wtal.engine.command import predict_command
from wtal.engine.config import load_run_config, resolve_config
from wtal.errors import WtalInputError
from wtal.evaluation.detection import detection_map
from wtal.localize import LocalizeConfig, localize_videos, read_cas_file

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
AVERAGES = ("AVG(0.1:0.5)", "AVG(0.3:0.7)", "AVG(0.1:0.7)")
THUMOS_COLUMNS = ("0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", *AVERAGES)  # header of a table with no runs


@dataclass(frozen=True)
class RunSpec:
    """One training run: ``wtal train --config CONFIG --seed SEED --set OVERRIDE ...``."""

    variant: str
    config: str  # file name in configs/
    overrides: tuple[str, ...]
    seed: int

    def folder(self, out: Path) -> Path:
        return out / "runs" / self.variant / f"seed{self.seed}"


@dataclass
class Row:
    """A table row: the runs of ``variant`` (one per seed), read from their report or post-processed again."""

    label: str
    variant: str
    config: str
    overrides: tuple[str, ...] = ()
    test: tuple[str, dict] | None = None  # (name, postprocess section) at test; None: the run's own report
    baseline: str | None = None  # variant subtracted seed by seed (a gain row)


@dataclass
class Table:
    title: str
    rows: list[Row] = field(default_factory=list)


def plain(model: str, label: str, test: tuple[str, dict] | None = None) -> Row:
    return Row(label, model, f"{model}.yaml", test=test)


def as_overrides(prefix: str, section: dict) -> tuple[str, ...]:
    """``--set`` strings that rebuild ``section`` (nested dicts as dotted keys, values as JSON)."""
    out: list[str] = []
    for key, value in section.items():
        if isinstance(value, dict):
            out += as_overrides(f"{prefix}.{key}", value)
        else:
            out.append(f"{prefix}.{key}={value if isinstance(value, str) else json.dumps(value)}")
    return tuple(out)


def run_specs(tables: dict[str, Table], seeds: list[int]) -> list[RunSpec]:
    """The distinct runs of all rows, in table order; one variant name always means one recipe."""
    recipes: dict[str, tuple[str, tuple[str, ...]]] = {}
    for row in (r for t in tables.values() for r in t.rows):
        recipe = (row.config, row.overrides)
        if recipes.setdefault(row.variant, recipe) != recipe:
            raise ValueError(f"variant {row.variant!r} names two recipes: {recipes[row.variant]} and {recipe}")
    return [RunSpec(v, cfg, ovr, s) for v, (cfg, ovr) in recipes.items() for s in seeds]



# --------------------------------------------------------------------------------------------- training


def run_overrides(spec: RunSpec, args: argparse.Namespace) -> list[str]:
    """Every ``--set`` of the run, in the order the runner passes them."""
    return [f"train.num_threads={args.threads}", "train.progress=false", *spec.overrides, *args.overrides]


def train_command(spec: RunSpec, args: argparse.Namespace) -> list[str]:
    folder = spec.folder(args.out)
    cmd = [sys.executable, "-m", "wtal.cli", "train", "--config", str(CONFIG_DIR / spec.config),
           "--data", str(args.data), "--seed", str(spec.seed), "--out", str(folder)]
    if args.epochs is not None:
        cmd += ["--epochs", str(args.epochs)]
    for override in run_overrides(spec, args):
        cmd += ["--set", override]
    if (folder / "checkpoints" / "last.pt").is_file():
        cmd.append("--resume")  # an interrupted run: continue it
    return cmd


#: keys that do not change what a run learns: a reused run may differ from the recipe in these
NEUTRAL_KEYS = (("train", "progress"), ("train", "num_threads"), ("train", "tensorboard"))


def parse_reuse(p: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """``--reuse VARIANT=PATTERN`` items (``{seed}`` in the pattern) as ``{variant: pattern}``."""
    reuse = {}
    for item in items:
        name, sep, pattern = item.partition("=")
        if not sep or not name or "{seed}" not in pattern:
            p.error(f"--reuse {item!r}: write VARIANT=PATTERN with {{seed}} in the pattern")
        reuse[name] = pattern
    return reuse


def check_reused(spec: RunSpec, folder: Path, args: argparse.Namespace) -> None:
    """Refuse a reused run whose saved config is not the recipe ``spec`` trains (learning-neutral keys aside)."""
    want = resolve_config(CONFIG_DIR / spec.config, overrides=run_overrides(spec, args), epochs=args.epochs,
                          seed=spec.seed, data_path=args.data).to_dict()
    try:
        have = load_run_config(folder / "config.yaml").to_dict()
    except WtalInputError as exc:
        raise SystemExit(f"--reuse {spec.variant}: cannot read {folder / 'config.yaml'} ({exc})") from exc
    for section, key in NEUTRAL_KEYS:
        want[section].pop(key, None)
        have[section].pop(key, None)
    if want != have:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise SystemExit(f"--reuse {spec.variant}: {folder} was not made by {spec.config} at these settings "
                         f"(sections differ: {diff}); train it here instead (drop this --reuse)")


def link_reused(specs: list[RunSpec], args: argparse.Namespace) -> None:
    """Link each finished run named by ``--reuse`` into the run folder of its variant and seed, after checking its
    recipe; a reused variant's seed without a finished run is left out (not trained here)."""
    unknown = set(args.reuse) - {s.variant for s in specs}
    if unknown:
        raise SystemExit(f"--reuse names no variant of these tables: {sorted(unknown)}")
    for spec in specs:
        pattern = args.reuse.get(spec.variant)
        if pattern is None:
            continue
        source = Path(pattern.format(seed=spec.seed)).resolve()
        if not (source / "report.json").is_file():
            print(f"  --reuse {spec.variant}: {source} has no report.json (yet); seed {spec.seed} left out",
                  flush=True)
            continue
        check_reused(spec, source, args)
        link = spec.folder(args.out)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() and link.resolve() != source:
            link.unlink()
        if not link.exists():
            link.symlink_to(source, target_is_directory=True)


def train_all(specs: list[RunSpec], args: argparse.Namespace) -> list[str]:
    """Train every run without a report (reused variants aside), ``args.jobs`` at a time; returns the failed runs'
    log paths."""
    todo = [s for s in specs if s.variant not in args.reuse and not (s.folder(args.out) / "report.json").is_file()]
    print(f"{len(specs) - len(todo)} of {len(specs)} runs already finished; training {len(todo)}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def train(spec: RunSpec) -> str | None:
        log = logs / f"{spec.variant}-seed{spec.seed}.log"
        folder = spec.folder(args.out)
        shutil.rmtree(folder / "test_time", ignore_errors=True)  # test-time results of an older model
        (folder / "test_cas.npz").unlink(missing_ok=True)
        start = time.perf_counter()
        with open(log, "w", encoding="utf-8") as fh:
            code = subprocess.run(train_command(spec, args), env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
        ok = code == 0 and (folder / "report.json").is_file()
        print(f"  {spec.variant} seed {spec.seed}: {'done' if ok else f'FAILED (exit {code}), see {log}'} "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
        return None if ok else str(log)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        return [log for log in pool.map(train, todo) if log is not None]


# ---------------------------------------------------------------------------------------------- metrics


#: the columns of a grounding table: recall of the top segment at three IoU thresholds, its mean IoU, and the
#: recall of the top five at IoU 0.5
GROUNDING_COLUMNS = (("R@1", "0.3"), ("R@1", "0.5"), ("R@1", "0.7"), ("mIoU", None), ("R@5", "0.5"))


def report_metrics(test: dict) -> dict[str, float]:
    """``{tIoU: mAP, ..., AVG(...): value, cmAP: value}`` from a detection ``report.json``'s ``test`` section, or
    ``{"R@1 0.3": recall, ..., "mIoU": value, "R@5 0.5": recall}`` from a grounding one."""
    if "R@1" in test:
        return {key if at is None else f"{key} {at}": float(test[key] if at is None else test[key][at])
                for key, at in GROUNDING_COLUMNS}
    metrics = {f"{t:g}": float(m) for t, m in zip(test["thresholds"], test["mAP"], strict=True)}
    metrics.update({k: float(v) for k, v in test["averages"].items() if k in AVERAGES})
    if test.get("classification_map") is not None:
        metrics["cmAP"] = float(test["classification_map"])
    return metrics


def test_time_metrics(run: Path, name: str, postprocess: dict) -> dict[str, float]:
    """Metrics of the run's saved test CAS post-processed by ``postprocess`` (cached in RUN/test_time/)."""
    cache = run / "test_time" / f"{name}.json"
    if cache.is_file():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved["postprocess"] == postprocess:
            return saved["metrics"]
    cas_file = run / "test_cas.npz"
    if not cas_file.is_file():
        predict_command(str(run), out=str(run / "predictions" / "test_predict.json"), cas=str(cas_file))
    cas, scores, classes, rate = read_cas_file(cas_file)
    cfg = load_run_config(run / "config.yaml")
    ground_truth = load_annotations(cfg.data.path).ground_truth(list(cas))
    detections = localize_videos(cas, scores, classes, LocalizeConfig.from_section(postprocess), rate)
    report = detection_map(ground_truth, detections, cfg.eval.tiou)
    own = json.loads((run / "report.json").read_text(encoding="utf-8"))["test"]  # same scores: same cmAP
    metrics = report_metrics({**report.to_json(), "classification_map": own.get("classification_map")})
    write_json_atomic(cache, {"postprocess": postprocess, "metrics": metrics}, indent=1)
    return metrics


def run_metrics(row: Row, variant: str, seed: int, out: Path) -> dict[str, float] | None:
    folder = out / "runs" / variant / f"seed{seed}"
    if not (folder / "report.json").is_file():
        return None
    if row.test is not None:
        return test_time_metrics(folder, *row.test)
    return report_metrics(json.loads((folder / "report.json").read_text(encoding="utf-8"))["test"])


def summarize(row: Row, seeds: list[int], out: Path) -> dict:
    """Per-seed metrics of a row (a paired difference for a gain row), their mean and sample std."""
    per_seed: dict[int, dict[str, float]] = {}
    for seed in seeds:
        metrics = run_metrics(row, row.variant, seed, out)
        if metrics is not None and row.baseline is not None:
            base = run_metrics(row, row.baseline, seed, out)
            metrics = None if base is None else {k: v - base[k] for k, v in metrics.items() if k in base}
        if metrics is not None:
            per_seed[seed] = metrics
    return {"label": row.label, "variant": row.variant, "test": row.test[0] if row.test else None,
            "baseline": row.baseline, **seed_statistics(per_seed)}


def seed_statistics(per_seed: dict[int, dict[str, float]]) -> dict:
    """``n``, ``seeds``, per-column ``mean`` and sample ``std`` (None for one seed), and ``per_seed``."""
    columns = list(next(iter(per_seed.values()), {}))
    values = {k: np.array([m[k] for m in per_seed.values()]) for k in columns}
    return {"n": len(per_seed), "seeds": sorted(per_seed),
            "mean": {k: float(v.mean()) for k, v in values.items()},
            "std": {k: float(v.std(ddof=1)) if len(v) > 1 else None for k, v in values.items()},
            "per_seed": {str(s): m for s, m in per_seed.items()}}


def markdown(title: str, rows: list[dict]) -> str:
    columns = next((list(r["mean"]) for r in rows if r["n"]), THUMOS_COLUMNS)
    columns = [c for c in columns if c != "cmAP"]
    lines = [f"### {title}", "", "| | " + " | ".join(f"mAP@{c}" if c[0].isdigit() else c for c in columns) + " | n |",
             "|---|" + "---:|" * (len(columns) + 1)]
    for r in rows:
        cells = []
        for c in columns:
            mean, std = r["mean"].get(c), r["std"].get(c)
            cells.append("–" if mean is None else f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}")
        lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {r['n']} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- running


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The options every experiment script shares (data, output, schedule, seeds, parallelism, overrides)."""
    p.add_argument("--data", required=True, type=Path, help="W-TALC bundle or per-video feature folder")
    p.add_argument("--out", required=True, type=Path, help="output folder (runs/, logs/, a JSON of the tables)")
    p.add_argument("--epochs", type=int, default=None, help="rescale every config to N epochs (default: as is)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--jobs", type=int, default=1, help="training runs in parallel")
    p.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads per run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override applied to every run (after the variant's own)")
    add_reuse_argument(p)


def add_reuse_argument(p: argparse.ArgumentParser) -> None:
    """``--reuse VARIANT=PATTERN`` (repeatable), read by :func:`parse_reuse`."""
    p.add_argument("--reuse", action="append", default=[], metavar="VARIANT=PATTERN",
                   help="finished runs of a variant, e.g. rskp=/runs/rskp_s{seed}, used instead of training it "
                        "(each checked against the variant's recipe)")


def check_run_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    args.seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    if not args.seeds or args.jobs < 1 or args.threads < 1:
        p.error("give at least one seed, --jobs >= 1 and --threads >= 1")
    args.data, args.out = args.data.resolve(), args.out.resolve()
    args.reuse = parse_reuse(p, args.reuse)


def run_tables(tables: dict[str, Table], args: argparse.Namespace, result_file: str, **extra) -> int:
    """Train every run the tables need, print the tables, write them with every per-seed number (and ``extra``)."""
    import torch

    specs = run_specs(tables, args.seeds)
    link_reused(specs, args)
    failed = train_all(specs, args)
    torch.set_num_threads(args.threads)  # in-process prediction of the test-time rows
    results = {key: {"title": t.title, "rows": [summarize(r, args.seeds, args.out) for r in t.rows]}
               for key, t in tables.items()}
    for table in results.values():
        print("\n" + markdown(table["title"], table["rows"]))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    path = write_json_atomic(args.out / result_file, {"settings": settings, "tables": results, **extra,
                                                        "failed": failed},
                             indent=1)
    print(f"\n-> {path}" + (f"; {len(failed)} run(s) failed: {failed}" if failed else ""))
    return 1 if failed else 0
