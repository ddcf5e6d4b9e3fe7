"""Vision-language distillation ablation: train the rows' runs (serially), then print the tables.

    nice -n 10 python benchmarks/ablate_vlp.py --data DIR --out OUTDIR [--epochs 40] [--seeds 0,1,2]
        [--rows main|choices|all|NAME,NAME] [--no-train] [--threads 1]

``DIR`` is a W-TALC bundle with a ``clip`` stream and ``class_text.npy`` (``wtal synth --clip-dim 512``).
Every row is a shipped config plus ``--set`` overrides (:data:`ROWS`); runs live in
``OUTDIR/runs/ROW/seedS`` and one with ``report.json`` is not trained again. Zero-shot VLP is not trained:
the clip stream against the class text embeddings (``vlp`` with no temporal module, no residual, no
background), with the CBP config's post-processing.

For each run the script evaluates, on the test split, the CBP branch alone (the run's model, what
``wtal predict`` gives), the trained VLP branch alone (``--teacher-weight 1``) and the fused CAS
(``--teacher-weight`` 0.5, and 0.25 / 0.75 for the rows in :data:`FUSION_ROWS`), each from the run's selected
checkpoint: detection mAP at tIoU 0.1:0.7 and its average, and snippet-level foreground precision and recall
(:func:`snippet_precision_recall`). Cells are mean ± sample std over the seeds that finished (percent); the
tables go to stdout and, with every per-seed number, to ``OUTDIR/ablation.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wtal.atomic import write_json_atomic
from wtal.data.annotations import AnnotationSet
from wtal.engine.config import resolve_config
from wtal.engine.predict import load_run
from wtal.evaluation.wtalc import gt_snippet_range
from wtal.models.factory import build_model
from wtal.tasks.base import build_task

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
AVERAGE = "AVG(0.1:0.7)"
FUSION_WEIGHT = 0.5  # the fused rows' weight (docs/methods/vlp.md: no reason to prefer either branch)
FUSION_WEIGHTS = (0.25, 0.5, 0.75)  # measured on the rows in FUSION_ROWS (each costs a test evaluation)
FUSION_ROWS = ("both",)
ZERO_SHOT_PARAMS = {"temporal": "none", "text_residual": False, "background": False}
REL_THRESHOLD = 0.5  # snippet-level foreground: CAS at least half-way between its video minimum and maximum


@dataclass(frozen=True)
class Row:
    name: str
    config: str  # a shipped config name
    overrides: tuple[str, ...]
    group: str  # main | choices
    what: str


def _alt(key: str, value: object) -> str:
    return f"plugins.0.{key}={value}"


ROWS: tuple[Row, ...] = (
    Row("cbp", "rskp", (), "main", "CBP alone (RSKP on rgb+flow)"),
    Row("no_labels", "rskp_vlp", (_alt("background_labels", "false"), _alt("foreground_labels", "false")),
        "main", "alternate training, no labels (control: each branch learns half the time)"),
    Row("b_only", "rskp_vlp", (_alt("foreground_labels", "false"),), "main", "B step labels only"),
    Row("f_only", "rskp_vlp", (_alt("background_labels", "false"),), "main", "F step labels only"),
    Row("both", "rskp_vlp", (), "main", "B + F (rskp_vlp.yaml)"),
    Row("both_gaufuse", "rskp_vlp_gaufuse", (), "main", "B + F + GauFuse (rskp_vlp_gaufuse.yaml)"),
    Row("cbp_gaufuse", "rskp_gaufuse", (), "main", "CBP + GauFuse (rskp_gaufuse.yaml)"),
    Row("ratio_half", "rskp_vlp", (_alt("background_ratio", 0.175), _alt("foreground_ratio", 0.075)), "choices",
        "label ratios halved (0.175 / 0.075)"),
    Row("ratio_150", "rskp_vlp", (_alt("background_ratio", 0.525), _alt("foreground_ratio", 0.225)), "choices",
        "label ratios x1.5 (0.525 / 0.225)"),
    Row("threshold", "rskp_vlp", (_alt("selection", "threshold"),), "choices",
        "threshold selection (min-max normalised 0.2 / 0.8)"),
    Row("agnostic", "rskp_vlp", (_alt("label_loss", "agnostic"),), "choices", "class-agnostic foreground loss"),
    Row("no_temporal", "rskp_vlp", ("teacher.model.params.temporal=none",), "choices", "VLP without temporal module"),
    Row("no_residual", "rskp_vlp", ("teacher.model.params.text_residual=false",), "choices",
        "VLP without the learnable text residual"),
    Row("b1_f3", "rskp_vlp", (_alt("f_step_epochs", 3),), "choices", "step lengths B 1 / F 3 epochs"),
    Row("warmup_short", "rskp_vlp", (_alt("warmup_epochs", 25),), "choices", "warm-up 1/8 of the run (25 of 200)"),
    Row("basnet", "basnet", (), "choices", "BaS-Net alone"),
    Row("basnet_vlp", "basnet_vlp", (), "choices", "BaS-Net + B + F (basnet_vlp.yaml)"),
)


def run_dir(out: Path, row: Row, seed: int) -> Path:
    return out / "runs" / row.name / f"seed{seed}"


def train_command(row: Row, data: Path, out: Path, seed: int, epochs: int, threads: int) -> list[str]:
    cmd = [sys.executable, "-m", "wtal.cli", "train", "--config", str(CONFIG_DIR / f"{row.config}.yaml"),
           "--data", str(data), "--epochs", str(epochs), "--seed", str(seed), "--out", str(run_dir(out, row, seed)),
           "--set", f"train.num_threads={threads}", "--set", "train.progress=false"]
    for override in row.overrides:
        cmd += ["--set", override]
    return cmd


def train(rows: list[Row], data: Path, out: Path, seeds: list[int], epochs: int, threads: int) -> None:
    """Missing runs, seed-major (every row's first seed before any row's second)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for seed in seeds:
        for row in rows:
            folder = run_dir(out, row, seed)
            if (folder / "report.json").is_file():
                continue
            cmd = train_command(row, data, out, seed, epochs, threads)
            if (folder / "checkpoints" / "last.pt").is_file():
                cmd.append("--resume")
            folder.parent.mkdir(parents=True, exist_ok=True)
            print("training", row.name, "seed", seed, flush=True)
            with open(folder.parent / f"seed{seed}.log", "w", encoding="utf-8") as log:
                subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)


# ------------------------------------------------------------------------------------------- metrics


def snippet_truth(annotations: AnnotationSet, name: str, length: int) -> np.ndarray:
    """``(T, C)`` bool: the snippet lies in a ground-truth instance of the class (the W-TALC snippet grid)."""
    video = annotations.videos[name]
    truth = np.zeros((length, len(annotations.classes)), dtype=bool)
    for inst in video.instances:
        first, stop = gt_snippet_range(np.array([inst.start]), np.array([inst.end]), video.snippets_per_second)
        truth[max(int(first[0]), 0):min(int(stop[0]), length), annotations.classes.index(inst.label)] = True
    return truth


def snippet_precision_recall(cas: dict[str, np.ndarray], annotations: AnnotationSet) -> tuple[float, float]:
    """Pooled snippet-level foreground precision and recall over the videos of ``cas``.

    For each video and each of its ground-truth classes, a snippet is predicted foreground when that class's
    CAS is at least :data:`REL_THRESHOLD` of the way from the video's minimum to its maximum (scale-free, so
    branches with differently scaled CAS are compared alike), and is foreground when it lies in an instance of
    the class.
    """
    tp = fp = fn = 0
    for name, scores in cas.items():
        truth = snippet_truth(annotations, name, scores.shape[0])
        for label in annotations.videos[name].labels:
            c = annotations.classes.index(label)
            column = scores[:, c].astype(np.float64)
            lo, hi = column.min(), column.max()
            predicted = (column - lo) >= REL_THRESHOLD * (hi - lo) if hi > lo else np.zeros_like(column, bool)
            tp += int((predicted & truth[:, c]).sum())
            fp += int((predicted & ~truth[:, c]).sum())
            fn += int((~predicted & truth[:, c]).sum())
    return tp / max(tp + fp, 1), tp / max(tp + fn, 1)


def summarize(result, annotations: AnnotationSet) -> dict:
    precision, recall = snippet_precision_recall(result.cas, annotations)
    return {"mAP": list(result.report.mAP), "average": float(result.report.averages[AVERAGE]),
            "precision": 100.0 * precision, "recall": 100.0 * recall}


def evaluate_run(folder: Path, fusion_weights: tuple[float, ...]) -> dict[str, dict]:
    """Test metrics of a run: ``cbp`` (the run's model), and with a teacher ``vlp`` and ``fused@W``."""
    cache = folder / "vlp_eval.json"
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    loaded = load_run(folder, device="cpu")
    annotations = loaded.data.annotations
    metrics = {"cbp": summarize(loaded.task.evaluate(loaded.model, loaded.data.test, loaded.cfg, "cpu"), annotations)}
    if loaded.cfg.teacher is not None:
        for weight in (1.0, *fusion_weights):
            fused = load_run(folder, device="cpu", teacher_weight=weight)
            key = "vlp" if weight == 1.0 else f"fused@{weight:g}"
            metrics[key] = summarize(fused.task.evaluate(fused.model, fused.data.test, fused.cfg, "cpu"), annotations)
    write_json_atomic(cache, metrics, indent=1)
    return metrics


def zero_shot(data: Path) -> dict:
    """Zero-shot VLP: an untrained ``vlp`` model without temporal module, residual or background."""
    cfg = resolve_config(CONFIG_DIR / "rskp.yaml", data_path=data)
    task = build_task("detection")
    run_data = task.prepare_data(cfg, ["clip"])
    model = build_model("vlp", task.model_context(run_data, ["clip"]), **ZERO_SHOT_PARAMS).eval()
    with torch.no_grad():
        result = task.evaluate(model, run_data.test, cfg, torch.device("cpu"))
    return summarize(result, run_data.annotations)


# ------------------------------------------------------------------------------------------- tables


def cell(values: list[float]) -> str:
    if not values:
        return "—"
    mean = float(np.mean(values))
    return f"{mean:.1f} ± {float(np.std(values, ddof=1)):.1f}" if len(values) > 1 else f"{mean:.1f}"


def table(rows: list[Row], results: dict, seeds: list[int], zero: dict | None) -> str:
    lines = ["| row | seeds | CBP mAP | CBP P | CBP R | VLP mAP | VLP P | VLP R | fused mAP (0.25 / 0.5 / 0.75) |",
             "|---|---|---|---|---|---|---|---|---|"]
    if zero is not None:
        lines.append(f"| zero-shot VLP (no training) | – | – | – | – | {zero['average']:.1f} | "
                     f"{zero['precision']:.1f} | {zero['recall']:.1f} | – |")
    for row in rows:
        per_seed = [results[row.name][s] for s in seeds if s in results.get(row.name, {})]
        if not per_seed:
            continue

        def values(key: str, metric: str, per_seed: list[dict] = per_seed) -> list[float]:
            return [r[key][metric] for r in per_seed if key in r]

        fused = " / ".join(cell(values(f"fused@{w:g}", "average")) for w in (0.25, 0.5, 0.75))
        lines.append(f"| {row.what} | {len(per_seed)} | {cell(values('cbp', 'average'))} | "
                     f"{cell(values('cbp', 'precision'))} | {cell(values('cbp', 'recall'))} | "
                     f"{cell(values('vlp', 'average'))} | {cell(values('vlp', 'precision'))} | "
                     f"{cell(values('vlp', 'recall'))} | {fused if per_seed[0].get('vlp') else '–'} |")
    return "\n".join(lines)


def select_rows(spec: str) -> list[Row]:
    if spec == "all":
        return list(ROWS)
    if spec in ("main", "choices"):
        return [r for r in ROWS if r.group == spec]
    names = spec.split(",")
    unknown = sorted(set(names) - {r.name for r in ROWS})
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; rows: {[r.name for r in ROWS]}")
    return [r for r in ROWS if r.name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rows", default="all")
    parser.add_argument("--no-train", action="store_true", help="only evaluate the runs that exist")
    parser.add_argument("--train-only", action="store_true", help="train the missing runs, print no table")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = select_rows(args.rows)
    if not args.no_train:
        train(rows, args.data, args.out, seeds, args.epochs, args.threads)
    if args.train_only:
        return
    results: dict = {}
    for row in rows:
        for seed in seeds:
            folder = run_dir(args.out, row, seed)
            if (folder / "report.json").is_file():
                weights = FUSION_WEIGHTS if row.name in FUSION_ROWS else (FUSION_WEIGHT,)
                results.setdefault(row.name, {})[seed] = evaluate_run(folder, weights)
    zero = zero_shot(args.data)
    text = table(rows, results, seeds, zero)
    print(text)
    write_json_atomic(args.out / "ablation.json", {"rows": {r.name: {"config": r.config, "overrides": list(r.overrides),
                                                                     "what": r.what} for r in rows},
                                                   "results": results, "zero_shot": zero, "table": text}, indent=1)


if __name__ == "__main__":
    main()
