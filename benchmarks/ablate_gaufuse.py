"""GauFuse ablations (the issue's Tables 3, 4 and 5): train the runs, re-post-process saved CAS, print tables.

    python benchmarks/ablate_gaufuse.py --data DIR --epochs N --seeds 0,1,2 --out OUTDIR --tables 3,4,5 \
        [--models rskp,stpn,basnet,wum,facnet] [--base rskp] [--jobs 2] [--threads 1] [--set KEY=VALUE ...]

Tables (``--tables``; ``3`` means ``3-train,3-test``):

* ``3-train``: pseudo-label boundaries from NMS or uniform / exponential / t / Gaussian fusion
  (``pseudo.localize.method/template`` over the ``pseudo`` section of ``*_gaufuse.yaml``, Δ on); test
  post-processing NMS (the base config's). Every pseudo-label row starts from that shipped section.
* ``3-test``: the base model trained without pseudo labels; its saved test CAS post-processed with NMS
  (the run's own report) or fusion with each template (the ``*_gaufuse.yaml`` post-processing).
* ``4``: baseline; + LinPro (NMS boundaries, no Δ); + fusion (Gaussian boundaries, no Δ); + Δ;
  + fusion at test (the + Δ run's CAS post-processed with Gaussian fusion). "No Δ" empties
  ``pseudo.delta_start_epochs``/``delta_scales``, so every epoch trains on the latest raw generation.
* ``5``: each of ``--models`` with its plain config vs its ``*_gaufuse.yaml``, and the gain (per-seed
  paired difference).

Runs live in ``OUTDIR/runs/VARIANT/seedS``; one with ``report.json`` is skipped, an interrupted one (a
``last.pt`` but no report) is resumed. ``--set`` overrides go to every run (after the variant's own).
Test-time rows write ``RUN/test_cas.npz`` once (``wtal predict --cas``) and cache each post-processing
result in ``RUN/test_time/NAME.json``. Cells are mean ± sample std over the seeds that finished (percent);
the tables go to stdout and, with every per-seed number, to ``OUTDIR/ablation.json``.
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
import torch

from wtal.atomic import write_json_atomic
from wtal.data.sources import load_annotations
from wtal.engine.command import predict_command
from wtal.engine.config import load_config_tree, load_run_config
from wtal.evaluation.detection import detection_map
from wtal.localize import LocalizeConfig, localize_videos, read_cas_file

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
TEMPLATES = ("uniform", "exponential", "t", "gaussian")
TABLE_KEYS = ("3-train", "3-test", "4", "5")
MODEL_NAMES = {"rskp": "RSKP", "stpn": "STPN", "basnet": "BaS-Net", "wum": "WUM", "facnet": "FAC-Net"}
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


# ------------------------------------------------------------------------------------------- the ablations


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


def with_pseudo(model: str, label: str, boundaries: str, delta: bool, test: tuple[str, dict] | None = None) -> Row:
    """The plain config (its NMS test post-processing) plus the pseudo labels of ``MODEL_gaufuse.yaml``."""
    shipped = as_overrides("pseudo", load_config_tree(CONFIG_DIR / f"{model}_gaufuse.yaml")["pseudo"])
    method = (("pseudo.localize.method=nms",) if boundaries == "nms"
              else ("pseudo.localize.method=fusion", f"pseudo.localize.template={boundaries}"))
    no_delta = () if delta else ("pseudo.delta_start_epochs=[]", "pseudo.delta_scales=[]")
    overrides = (*shipped, *method, *no_delta)
    variant = f"{model}-pl-{boundaries}" + ("-delta" if delta else "")
    return Row(label, variant, f"{model}.yaml", overrides, test)


def fusion_at_test(model: str, template: str) -> tuple[str, dict]:
    """The test post-processing of ``MODEL_gaufuse.yaml`` with another fusion template."""
    postprocess = dict(load_config_tree(CONFIG_DIR / f"{model}_gaufuse.yaml")["postprocess"])
    return f"fusion-{template}", {**postprocess, "method": "fusion", "template": template}


def build_tables(keys: list[str], models: list[str], base: str) -> dict[str, Table]:
    name = MODEL_NAMES.get(base, base)
    tables: dict[str, Table] = {}
    if "3-train" in keys:
        tables["3-train"] = Table(f"Table 3, at training: pseudo-label boundaries ({name}, test NMS)", [
            with_pseudo(base, "NMS", "nms", delta=True),
            *(with_pseudo(base, f"{t} fusion", t, delta=True) for t in TEMPLATES)])
    if "3-test" in keys:
        tables["3-test"] = Table(f"Table 3, at test: post-processing of the {name} CAS (no pseudo labels)", [
            plain(base, "NMS"), *(plain(base, f"{t} fusion", fusion_at_test(base, t)) for t in TEMPLATES)])
    if "4" in keys:
        tables["4"] = Table(f"Table 4: components ({name})", [
            plain(base, f"baseline {name}"),
            with_pseudo(base, "+ LinPro (NMS boundaries)", "nms", delta=False),
            with_pseudo(base, "+ fusion", "gaussian", delta=False),
            with_pseudo(base, "+ Δ", "gaussian", delta=True),
            with_pseudo(base, "+ fusion at test", "gaussian", delta=True,
                        test=fusion_at_test(base, "gaussian"))])
    if "5" in keys:
        rows = []
        for model in models:
            rows += [plain(model, MODEL_NAMES.get(model, model)),
                     Row(f"{MODEL_NAMES.get(model, model)} + GauFuse", f"{model}_gaufuse", f"{model}_gaufuse.yaml"),
                     Row("gain", f"{model}_gaufuse", f"{model}_gaufuse.yaml", baseline=model)]
        tables["5"] = Table("Table 5: the plug-in on each base model", rows)
    return tables


def run_specs(tables: dict[str, Table], seeds: list[int]) -> list[RunSpec]:
    """The distinct runs of all rows, in table order; one variant name always means one recipe."""
    recipes: dict[str, tuple[str, tuple[str, ...]]] = {}
    for row in (r for t in tables.values() for r in t.rows):
        recipe = (row.config, row.overrides)
        if recipes.setdefault(row.variant, recipe) != recipe:
            raise ValueError(f"variant {row.variant!r} names two recipes: {recipes[row.variant]} and {recipe}")
    return [RunSpec(v, cfg, ovr, s) for v, (cfg, ovr) in recipes.items() for s in seeds]


# --------------------------------------------------------------------------------------------- training


def train_command(spec: RunSpec, args: argparse.Namespace) -> list[str]:
    folder = spec.folder(args.out)
    cmd = [sys.executable, "-m", "wtal.cli", "train", "--config", str(CONFIG_DIR / spec.config),
           "--data", str(args.data), "--seed", str(spec.seed), "--out", str(folder),
           "--set", f"train.num_threads={args.threads}", "--set", "train.progress=false"]
    if args.epochs is not None:
        cmd += ["--epochs", str(args.epochs)]
    for override in (*spec.overrides, *args.overrides):
        cmd += ["--set", override]
    if (folder / "checkpoints" / "last.pt").is_file():
        cmd.append("--resume")  # an interrupted run: continue it
    return cmd


def train_all(specs: list[RunSpec], args: argparse.Namespace) -> list[str]:
    """Train every run without a report, ``args.jobs`` at a time; returns the failed runs' log paths."""
    todo = [s for s in specs if not (s.folder(args.out) / "report.json").is_file()]
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


def report_metrics(test: dict) -> dict[str, float]:
    """``{tIoU: mAP, ..., AVG(...): value, cmAP: value}`` from a ``report.json``'s ``test`` section."""
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


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path, help="W-TALC bundle or per-video feature folder")
    p.add_argument("--out", required=True, type=Path, help="output folder (runs/, logs/, ablation.json)")
    p.add_argument("--epochs", type=int, default=None, help="rescale every config to N epochs (default: as is)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--tables", default="3,4,5", help=f"comma-separated among 3 (both parts), {', '.join(TABLE_KEYS)}")
    p.add_argument("--models", default=",".join(MODEL_NAMES), help="base models of table 5")
    p.add_argument("--base", default="rskp", help="base model of tables 3 and 4")
    p.add_argument("--jobs", type=int, default=2, help="training runs in parallel")
    p.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads per run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override applied to every run (after the variant's own)")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    keys = [k.strip() for k in args.tables.split(",") if k.strip()]
    args.tables = [k for k in TABLE_KEYS if k in keys or k.split("-")[0] in keys]
    unknown = set(keys) - set(TABLE_KEYS) - {"3"}
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    missing = [f"{m}{s}.yaml" for m in {*args.models, args.base} for s in ("", "_gaufuse")
               if not (CONFIG_DIR / f"{m}{s}.yaml").is_file()]
    if unknown or not args.tables:
        p.error(f"--tables: use some of 3, {', '.join(TABLE_KEYS)} (got {keys!r})")
    if missing:
        p.error(f"no config {', '.join(sorted(missing))} in {CONFIG_DIR}")
    if not args.seeds or args.jobs < 1 or args.threads < 1:
        p.error("give at least one seed, --jobs >= 1 and --threads >= 1")
    args.data, args.out = args.data.resolve(), args.out.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tables = build_tables(args.tables, args.models, args.base)
    failed = train_all(run_specs(tables, args.seeds), args)
    torch.set_num_threads(args.threads)  # in-process prediction of the test-time rows
    results = {key: {"title": t.title, "rows": [summarize(r, args.seeds, args.out) for r in t.rows]}
               for key, t in tables.items()}
    for table in results.values():
        print("\n" + markdown(table["title"], table["rows"]))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    path = write_json_atomic(args.out / "ablation.json", {"settings": settings, "tables": results,
                                                          "failed": failed}, indent=1)
    print(f"\n-> {path}" + (f"; {len(failed)} run(s) failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
