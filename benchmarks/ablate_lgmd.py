"""Local-global multi-modal distillation ablations: train the rows' runs, print mean ± std tables, the share of
the RGB-to-teacher gap each student closes, and each run's training cost.

    python benchmarks/ablate_lgmd.py --data DIR --out OUTDIR --epochs 40 --seeds 0,1,2 [--task grounding] \
        [--tables main,design] [--reuse VARIANT=PATTERN ...] [--threads 1] [--nice 10] [--set KEY=VALUE ...]

Tables of action localization (``--task detection``, the default; ``--tables``):

* ``main``: RSKP on RGB alone, on flow alone, on both (``rskp.yaml``); the two-branch teacher without and
  with mutual learning (``lgmd_teacher_rskp.yaml``, ``mutual_weight`` 0 / as shipped), each also evaluated
  branch by branch (one stream's branch alone, no training of its own); the RGB student with
  local distillation only (``plugins=[]``), global only (``pseudo=null``) and both (``lgmd_student_rskp.yaml``).
* ``design``: the choices made where the method's description is silent, one change each against the shipped
  configs (mutual temperature and axis, the teacher's learning rate, the global term's classes and balance,
  the distillation's start, and a student taught by the plain two-stream RSKP instead of the mutual teacher).

Tables of sentence grounding (``--task grounding``; the data a grounding folder with rgb and flow streams):

* ``main``: CPL on RGB alone, on flow alone, on both (``cpl_rgb.yaml``, ``model.streams``); the mutual teacher
  (``lgmd_teacher_cpl.yaml``), also evaluated branch by branch; the RGB student with local distillation only
  (the global term's weight 0), global only (the local term's weight 0) and both (``lgmd_student_cpl.yaml``).
* ``design``: the two-branch teacher without mutual learning (fused at test), and a student taught by the
  plain two-stream CPL instead of the mutual teacher.

Every row is a shipped config plus ``--set`` overrides. A student row names its teacher variant; its run of
seed ``s`` gets ``--set teacher.run=OUTDIR/runs/TEACHER/seed<s>``, which is trained first. Runs train one
at a time (``nice``), in ``OUTDIR/runs/VARIANT/seedS``; one with ``report.json`` is skipped, an interrupted
one resumed. ``--reuse VARIANT=PATTERN`` (``{seed}`` in the pattern) links existing runs of that variant
instead of training them (never trained here; a seed without a finished run is left out), after checking
that each was made by the row's recipe (the same resolved config).
Each trained run gets ``cost.json``: CPU seconds (user + system of the training process and the workers it
waited for), wall seconds and peak resident memory, from ``os.wait4``. Results (per seed, mean, sample std,
gap closed, costs) go to ``OUTDIR/lgmd_ablation.json``; the tables to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import experiments as shared  # noqa: E402  (the experiment runner's metrics and table helpers)

from wtal.atomic import write_json_atomic  # noqa: E402
from wtal.engine.config import resolve_config  # noqa: E402

CONFIG_DIR = shared.CONFIG_DIR
#: the headline metric of each task (the gap a student closes is measured in it)
HEADLINE = {"detection": "AVG(0.1:0.7)", "grounding": "mIoU"}
#: the variants the gap is measured between: (single-modality baseline, teacher)
GAP_ENDS = {"detection": ("rskp_rgb", "lgmd_teacher"), "grounding": ("cpl_rgb", "lgmd_teacher_cpl")}
UNITS = {"detection": "test mAP %", "grounding": "test recall % and mIoU %"}
TABLES = ("main", "design")


@dataclass(frozen=True)
class Variant:
    """A recipe: ``wtal train --config CONFIG --set OVERRIDE ...`` (+ ``teacher.run`` of ``teacher``'s run)."""

    name: str
    config: str
    overrides: tuple[str, ...] = ()
    teacher: str | None = None


@dataclass(frozen=True)
class Line:
    label: str
    variant: Variant
    branch: str | None = None  # evaluate only this stream branch of the variant's (mutual) model


NO_LOCAL = ("pseudo=null",)
NO_GLOBAL = ("plugins=[]",)


def main_rows() -> list[Line]:
    teacher = Variant("lgmd_teacher", "lgmd_teacher_rskp.yaml")
    return [
        Line("RSKP, RGB only", Variant("rskp_rgb", "rskp_rgb.yaml")),
        Line("RSKP, flow only", Variant("rskp_flow", "rskp_flow.yaml")),
        Line("RSKP, RGB+flow (two-stream)", Variant("rskp", "rskp.yaml")),
        Line("two branches, no mutual learning (fused at test)",
             Variant("lgmd_teacher_nomutual", "lgmd_teacher_rskp.yaml", ("model.params.mutual_weight=0",))),
        Line("  its RGB branch alone (RGB at test)", Variant("lgmd_teacher_nomutual", "lgmd_teacher_rskp.yaml",
                                                             ("model.params.mutual_weight=0",)), "rgb"),
        Line("  its flow branch alone (flow at test)", Variant("lgmd_teacher_nomutual", "lgmd_teacher_rskp.yaml",
                                                               ("model.params.mutual_weight=0",)), "flow"),
        Line("teacher: mutual learning", teacher),
        Line("  its RGB branch alone (RGB at test)", teacher, "rgb"),
        Line("  its flow branch alone (flow at test)", teacher, "flow"),
        Line("RGB student, local only", Variant("lgmd_student_local", "lgmd_student_rskp.yaml", NO_GLOBAL,
                                                teacher.name)),
        Line("RGB student, global only", Variant("lgmd_student_global", "lgmd_student_rskp.yaml", NO_LOCAL,
                                                 teacher.name)),
        Line("RGB student, local + global", Variant("lgmd_student", "lgmd_student_rskp.yaml", (), teacher.name)),
    ]


#: where GauFuse's paper schedule starts its pseudo labels (epoch 200 of 350), as a fraction of the run
PAPER_LABEL_START = 200 / 350


def single_stream_lr(epochs: int) -> float:
    """The teacher's configured rate (at ``epochs``) times sqrt 2: the width rule then gives each 128-d-of-256
    branch the rate a model on its one stream gets (the rule sees the teacher's two streams as one width)."""
    return resolve_config(CONFIG_DIR / "lgmd_teacher_rskp.yaml", epochs=epochs).optim.lr * 2 ** 0.5


def design_rows(epochs: int) -> list[Line]:
    teacher = "lgmd_teacher"
    student = "lgmd_student_rskp.yaml"
    late = round(PAPER_LABEL_START * epochs)
    return [
        Line("teacher: mutual temperature 1 (shipped 2)",
             Variant("lgmd_teacher_t1", "lgmd_teacher_rskp.yaml", ("model.params.mutual_temperature=1",))),
        Line("teacher: mutual maps over time (shipped: over classes)",
             Variant("lgmd_teacher_time", "lgmd_teacher_rskp.yaml", ("model.params.mutual_axis=time",))),
        Line("teacher: learning rate x sqrt 2, a one-stream model's (shipped: the two-stream model's)",
             Variant("lgmd_teacher_lr", "lgmd_teacher_rskp.yaml", (f"optim.lr={single_stream_lr(epochs)!r}",))),
        Line("student: global term over all classes (shipped: the video's classes)",
             Variant("lgmd_student_allclasses", student, ("plugins.0.classes=all",), teacher)),
        Line("student: global term weight 1, no balance (shipped: balanced)",
             Variant("lgmd_student_nobalance", student, ("plugins.0.loss_balance=null",), teacher)),
        Line(f"student: distillation from epoch {late} of {epochs}, as GauFuse's labels (shipped: from 0)",
             Variant("lgmd_student_late", student, (f"pseudo.generation_epochs=[{late}]",
                                                    f"pseudo.target_start_epoch={late}",
                                                    f"plugins.0.start_epoch={late}"), teacher)),
        Line("student of the plain two-stream RSKP (shipped: of the mutual teacher)",
             Variant("lgmd_student_of_rskp", student, (), "rskp")),
    ]


GROUNDING_TEACHER = Variant("lgmd_teacher_cpl", "lgmd_teacher_cpl.yaml")
#: a student's local term alone / global term alone: the other plug-in's weight 0 (lgmd_student_cpl.yaml lists
#: boundary_distill first, activation_distill second)
NO_GLOBAL_CPL = ("plugins.1.weight=0",)
NO_LOCAL_CPL = ("plugins.0.weight=0",)


def grounding_main_rows() -> list[Line]:
    teacher = GROUNDING_TEACHER
    student = "lgmd_student_cpl.yaml"
    return [
        Line("CPL, RGB only", Variant("cpl_rgb", "cpl_rgb.yaml")),
        Line("CPL, flow only", Variant("cpl_flow", "cpl_rgb.yaml", ("model.streams=[flow]",))),
        Line("CPL, RGB+flow (two-stream)", Variant("cpl_rgbflow", "cpl_rgb.yaml", ("model.streams=[rgb,flow]",))),
        Line("teacher: mutual learning", teacher),
        Line("  its RGB branch alone (RGB at test)", teacher, "rgb"),
        Line("  its flow branch alone (flow at test)", teacher, "flow"),
        Line("RGB student, local only", Variant("lgmd_student_cpl_local", student, NO_GLOBAL_CPL, teacher.name)),
        Line("RGB student, global only", Variant("lgmd_student_cpl_global", student, NO_LOCAL_CPL, teacher.name)),
        Line("RGB student, local + global", Variant("lgmd_student_cpl", student, (), teacher.name)),
    ]


def grounding_design_rows() -> list[Line]:
    nomutual = Variant("lgmd_teacher_cpl_nomutual", "lgmd_teacher_cpl.yaml", ("model.params.mutual_weight=0",))
    return [
        Line("two CPL branches, no mutual learning (fused at test)", nomutual),
        Line("student of the plain two-stream CPL (shipped: of the mutual teacher)",
             Variant("lgmd_student_cpl_of_cpl", "lgmd_student_cpl.yaml", (), "cpl_rgbflow")),
    ]


ROWS = {"detection": (main_rows, design_rows),
        "grounding": (grounding_main_rows, lambda epochs: grounding_design_rows())}


def build_tables(keys: list[str], epochs: int, task: str = "detection") -> dict[str, list[Line]]:
    """The rows of each table; ``epochs``: the runs' length (design rows place epochs in it)."""
    main, design = ROWS[task]
    rows = {"main": main, "design": lambda: design(epochs)}
    return {k: rows[k]() for k in keys}


def variants_in_order(tables: dict[str, list[Line]], task: str = "detection") -> list[Variant]:
    """Every variant once, teachers before their students; one name always means one recipe."""
    by_name: dict[str, Variant] = {}
    for line in (x for rows in tables.values() for x in rows):
        if by_name.setdefault(line.variant.name, line.variant) != line.variant:
            raise ValueError(f"variant {line.variant.name!r} names two recipes")
    known = {v.name: v for v in [*(x.variant for x in ROWS[task][0]()), *by_name.values()]}
    ordered: list[Variant] = []

    def visit(v: Variant) -> None:
        if v.teacher is not None:
            visit(known[v.teacher])
        if v not in ordered:
            ordered.append(v)

    for v in by_name.values():
        visit(v)
    return ordered


# ----------------------------------------------------------------------------------------------- training


def run_spec(v: Variant, seed: int, args: argparse.Namespace) -> shared.RunSpec:
    """The variant's run at ``seed``: a student names its teacher variant's run of the same seed."""
    teacher = (f"teacher.run={run_folder(args.out, v.teacher, seed)}",) if v.teacher else ()
    return shared.RunSpec(v.name, v.config, (*v.overrides, *teacher), seed)


def run_folder(out: Path, variant: str, seed: int) -> Path:
    return shared.RunSpec(variant, "", (), seed).folder(out)


def train_command(v: Variant, seed: int, args: argparse.Namespace) -> list[str]:
    return ["nice", "-n", str(args.nice), *shared.train_command(run_spec(v, seed, args), args)]


def measured_run(cmd: list[str], log: Path, env: dict[str, str]) -> tuple[int, dict[str, float]]:
    """Run ``cmd`` to completion; its exit code and cost (CPU s, wall s, peak resident MiB) from ``wait4``."""
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    cost = {"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": time.perf_counter() - start,
            "max_rss_mib": usage.ru_maxrss / 1024.0}
    return proc.returncode, cost


def train_all(variants: list[Variant], args: argparse.Namespace) -> list[str]:
    """Train every run without a report, one at a time, seed by seed; returns the failed runs' logs."""
    todo = [(seed, v) for seed in args.seeds for v in variants if v.name not in args.reuse
            and not (run_folder(args.out, v.name, seed) / "report.json").is_file()]
    print(f"{len(variants) * len(args.seeds) - len(todo)} of {len(variants) * len(args.seeds)} runs already "
          f"finished; training {len(todo)}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    for seed, v in todo:
        if v.teacher and not (run_folder(args.out, v.teacher, seed) / "report.json").is_file():
            print(f"  {v.name} seed {seed}: skipped, its teacher {v.teacher} did not finish", flush=True)
            continue
        folder, log = run_folder(args.out, v.name, seed), logs / f"{v.name}-seed{seed}.log"
        code, cost = measured_run(train_command(v, seed, args), log, env)
        ok = code == 0 and (folder / "report.json").is_file()
        if ok:
            write_json_atomic(folder / "cost.json", cost, indent=1)
        else:
            failed.append(str(log))
        print(f"  {v.name} seed {seed}: {'done' if ok else f'FAILED (exit {code}), see {log}'} in "
              f"{cost['wall_s']:.0f} s wall, {cost['cpu_s']:.0f} s CPU", flush=True)
    return failed


# ---------------------------------------------------------------------------------------------- results


def branch_metrics(run: Path, branch: str) -> dict[str, float]:
    """Test metrics of one stream branch of the run's mutual model, alone, with the run's test recipe (its
    selected checkpoint; cached in RUN/test_time/branch-<stream>.json)."""
    cache = run / "test_time" / f"branch-{branch}.json"
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))["metrics"]
    from wtal.engine.predict import load_run

    loaded = load_run(run, "cpu")
    result = loaded.task.evaluate(loaded.model.branches[branch], loaded.data.split("test"), loaded.cfg,
                                  torch.device("cpu"))
    metrics = shared.report_metrics(result.summary())
    write_json_atomic(cache, {"branch": branch, "metrics": metrics}, indent=1)
    return metrics


def summarize(line: Line, seeds: list[int], out: Path) -> dict:
    row = shared.Row(line.label, line.variant.name, line.variant.config, line.variant.overrides)
    if line.branch is None:
        summary = shared.summarize(row, seeds, out)
    else:
        finished = [s for s in seeds if (run_folder(out, line.variant.name, s) / "report.json").is_file()]
        per_seed = {s: branch_metrics(run_folder(out, line.variant.name, s), line.branch) for s in finished}
        summary = {"label": line.label, "variant": line.variant.name, "test": f"branch {line.branch}",
                   "baseline": None, **shared.seed_statistics(per_seed)}
    costs = [json.loads((run_folder(out, line.variant.name, s) / "cost.json").read_text(encoding="utf-8"))
             for s in summary["seeds"] if (run_folder(out, line.variant.name, s) / "cost.json").is_file()]
    summary["cost"] = {k: float(np.mean([c[k] for c in costs])) for k in ("cpu_s", "wall_s", "max_rss_mib")
                       } if costs else None
    summary["config"], summary["overrides"] = line.variant.config, list(line.variant.overrides)
    summary["teacher"], summary["branch"] = line.variant.teacher, line.branch
    if line.branch is not None:
        summary["cost"] = None  # no training of its own
    return summary


def gap_closed(student: dict, rgb: dict, teacher: dict, metric: str = HEADLINE["detection"]) -> dict | None:
    """Per seed ``(student - rgb) / (teacher - rgb)`` of the headline ``metric``, its mean and sample std."""
    seeds = sorted(set(student["seeds"]) & set(rgb["seeds"]) & set(teacher["seeds"]))
    shares = []
    for s in seeds:
        st, r, t = (x["per_seed"][str(s)][metric] for x in (student, rgb, teacher))
        if t != r:
            shares.append((st - r) / (t - r))
    if not shares:
        return None
    return {"seeds": seeds, "per_seed": shares, "mean": float(np.mean(shares)),
            "std": float(np.std(shares, ddof=1)) if len(shares) > 1 else None,
            "of_mean_gap": (student["mean"][metric] - rgb["mean"][metric])
            / (teacher["mean"][metric] - rgb["mean"][metric])}


def cost_table(rows: list[dict]) -> str:
    lines = ["| | training CPU s | wall s | peak RSS MiB | n |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        c = r["cost"]
        cells = ["–"] * 3 if c is None else [f"{c['cpu_s']:.0f}", f"{c['wall_s']:.0f}", f"{c['max_rss_mib']:.0f}"]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {r['n']} |")
    return "\n".join(lines)


def results(tables: dict[str, list[Line]], seeds: list[int], out: Path, task: str = "detection") -> dict:
    summaries = {key: [summarize(line, seeds, out) for line in lines] for key, lines in tables.items()}
    by_variant = {r["variant"]: r for rows in summaries.values() for r in rows if r["branch"] is None}
    rgb, teacher = (by_variant.get(name) for name in GAP_ENDS[task])
    for rows in summaries.values():
        for r in rows:
            r["gap_closed"] = None
            if r["teacher"] is not None and rgb and teacher and r["n"] and rgb["n"] and teacher["n"]:
                r["gap_closed"] = gap_closed(r, rgb, teacher, HEADLINE[task])
    return summaries


def print_tables(summaries: dict[str, list[dict]], task: str = "detection") -> None:
    for key, rows in summaries.items():
        print("\n" + shared.markdown(f"LGMD ablation: {key} ({UNITS[task]}, mean ± std over seeds)", rows))
        for r in rows:
            g = r["gap_closed"]
            if g is not None:
                std = "" if g["std"] is None else f" ± {g['std']:.2f}"
                print(f"- {r['label']}: closes {g['mean']:.2f}{std} of the RGB-to-teacher gap in {HEADLINE[task]} "
                      f"(per seed; {g['of_mean_gap']:.2f} of the gap between the means)")
        print("\n" + cost_table(rows))


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path,
                   help="W-TALC bundle or per-video feature folder (--task grounding: a grounding data folder)")
    p.add_argument("--out", required=True, type=Path, help="output folder (runs/, logs/, lgmd_ablation.json)")
    p.add_argument("--task", choices=sorted(HEADLINE), default="detection", help="the rows' task")
    p.add_argument("--epochs", type=int, default=None, help="rescale every config to N epochs (default: as is)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--tables", default="main", help=f"comma-separated among {', '.join(TABLES)}")
    shared.add_reuse_argument(p)
    p.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads per run")
    p.add_argument("--nice", type=int, default=10, help="niceness of the training processes")
    p.add_argument("--train", action=argparse.BooleanOptionalAction, default=True,
                   help="train missing runs (--no-train: only tabulate the finished ones)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override applied to every run (after the variant's own)")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.tables = [k.strip() for k in args.tables.split(",") if k.strip()]
    if not args.tables or set(args.tables) - set(TABLES):
        p.error(f"--tables: use some of {', '.join(TABLES)} (got {args.tables!r})")
    if not args.seeds or args.threads < 1:
        p.error("give at least one seed and --threads >= 1")
    args.reuse = shared.parse_reuse(p, args.reuse)
    args.data, args.out = args.data.resolve(), args.out.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    student = {"detection": "lgmd_student_rskp.yaml", "grounding": "lgmd_student_cpl.yaml"}[args.task]
    epochs = args.epochs or resolve_config(CONFIG_DIR / student).train.epochs
    tables = build_tables(args.tables, epochs, args.task)
    variants = variants_in_order(tables, args.task)
    shared.link_reused([run_spec(v, seed, args) for seed in args.seeds for v in variants], args)
    failed = train_all(variants, args) if args.train else []
    summaries = results(tables, args.seeds, args.out, args.task)
    print_tables(summaries, args.task)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    path = write_json_atomic(args.out / "lgmd_ablation.json", {"settings": settings, "tables": summaries,
                                                               "failed": failed}, indent=1)
    print(f"\n-> {path}" + (f"; {len(failed)} run(s) failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
