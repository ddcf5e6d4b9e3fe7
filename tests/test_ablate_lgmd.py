"""benchmarks/ablate_lgmd.py: its rows are the shipped configs (plus stated overrides), and the script end to end
on a tiny synthetic set (2 epochs, one seed, the main table, the two-stream row reused from an existing run)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from helpers import load_benchmark, run_benchmark_main
from test_engine_data import write_tiny

from wtal.cli import main as wtal_main
from wtal.engine.config import load_config_tree, resolve_config
from wtal.models import build_model
from wtal.models.mutual import OWN_KEYS

ablate = load_benchmark("ablate_lgmd")
EPOCHS = 40


def resolved(line, seed: int = 0, out="/runs"):
    args = type("Args", (), {"out": ablate.Path(out), "threads": 1, "overrides": []})()
    overrides = ablate.shared.run_overrides(ablate.run_spec(line.variant, seed, args), args)
    return resolve_config(ablate.CONFIG_DIR / line.variant.config, overrides=overrides, epochs=EPOCHS, seed=seed)


def rows_by_variant() -> dict[str, object]:
    tables = ablate.build_tables(["main", "design"], EPOCHS)
    return {line.variant.name: line for lines in tables.values() for line in lines}


def test_rows_are_the_shipped_configs_with_their_stated_changes():
    rows = rows_by_variant()
    rgb, flow, both = (resolved(rows[v]) for v in ("rskp_rgb", "rskp_flow", "rskp"))
    rskp = both
    assert (rgb.model.streams, flow.model.streams, both.model.streams) == (["rgb"], ["flow"], ["rgb", "flow"])
    for cfg in (rgb, flow, both):  # one model, schedule and test recipe; only the streams differ
        assert cfg.model.name == "rskp" and cfg.model.params == rskp.model.params
        assert (cfg.optim, cfg.train, cfg.postprocess) == (rskp.optim, rskp.train, rskp.postprocess)
    teacher, plain_teacher = resolved(rows["lgmd_teacher"]), resolved(rows["lgmd_teacher_nomutual"])
    for cfg in (teacher, plain_teacher):
        assert cfg.model.name == "mutual" and cfg.model.streams == ["rgb", "flow"]
        branch_params = {k: v for k, v in cfg.model.params.items() if not k.startswith(("mutual", "fusion", "base"))}
        assert branch_params == rskp.model.params and cfg.model.params["base"] == "rskp"
        assert (cfg.optim, cfg.postprocess) == (rskp.optim, rskp.postprocess)
    assert teacher.model.params["mutual_weight"] > 0 and plain_teacher.model.params["mutual_weight"] == 0
    shipped_student = load_config_tree(ablate.CONFIG_DIR / "lgmd_student_rskp.yaml")
    for variant, local, global_ in [("lgmd_student", True, True), ("lgmd_student_local", True, False),
                                    ("lgmd_student_global", False, True)]:
        cfg = resolved(rows[variant], seed=2)
        assert cfg.model == rgb.model and cfg.optim == rgb.optim and cfg.postprocess == rgb.postprocess
        assert cfg.teacher.run == "/runs/runs/lgmd_teacher/seed2"  # the teacher of the same seed
        assert (cfg.pseudo is not None) == local and bool(cfg.plugins) == global_
        if local:
            assert cfg.pseudo["labels_from"] == "teacher" and cfg.pseudo["generation_epochs"] == [0]
        if global_:
            assert cfg.plugins == shipped_student["plugins"]
    assert rows["lgmd_student_of_rskp"].variant.teacher == "rskp"


def test_every_row_resolves_and_each_variant_is_one_recipe():
    tables = ablate.build_tables(["main", "design"], EPOCHS)
    variants = ablate.variants_in_order(tables)
    names = [v.name for v in variants]
    assert len(names) == len(set(names))
    for v in variants:  # teachers come before their students
        assert v.teacher is None or names.index(v.teacher) < names.index(v.name)
    for line in (x for lines in tables.values() for x in lines):
        resolved(line)  # raises on a config or override that does not exist


def test_gap_closed_per_seed():
    def row(values):
        return {"seeds": [0, 1], "per_seed": {str(s): {ablate.HEADLINE["detection"]: v} for s, v in enumerate(values)},
                "mean": {ablate.HEADLINE["detection"]: sum(values) / 2}}

    gap = ablate.gap_closed(row([25.0, 30.0]), row([20.0, 20.0]), row([30.0, 40.0]))
    assert gap["per_seed"] == pytest.approx([0.5, 0.5]) and gap["mean"] == pytest.approx(0.5)
    assert gap["std"] == pytest.approx(0.0) and gap["of_mean_gap"] == pytest.approx(7.5 / 15.0)


def run_script(argv: list[str]) -> tuple[int, str]:
    return run_benchmark_main(ablate, argv)


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    root = tmp_path_factory.mktemp("lgmd_ablation")
    data = write_tiny(root / "data")["wtalc"]
    base = ["--data", str(data), "--epochs", "2", "--seeds", "0", "--tables", "main", "--nice", "0"]
    # an existing two-stream run, made by the row's recipe, to be reused
    existing = root / "existing" / "rskp_s0"
    assert wtal_main(["train", "--config", "rskp", "--data", str(data), "--out", str(existing), "--epochs", "2",
                      "--seed", "0", "--set", "train.num_threads=1", "--set", "train.progress=false",
                      "--device", "cpu"]) == 0
    argv = [*base, "--out", str(root / "out"), "--reuse", f"rskp={root / 'existing' / 'rskp_s{seed}'}"]
    code, stdout = run_script(argv)
    assert code == 0, stdout
    return {"root": root, "base": base, "stdout": stdout,
            "result": json.loads((root / "out" / "lgmd_ablation.json").read_text(encoding="utf-8"))}


def test_script_trains_the_rows_and_tabulates_them(ablation):
    rows = ablation["result"]["tables"]["main"]
    assert [r["label"] for r in rows] == [line.label for line in ablate.main_rows()]
    for r in rows:
        assert r["n"] == 1 and all(math.isfinite(v) for v in r["mean"].values())
        # reused runs were not measured here, and branch rows evaluate a trained run again
        assert (r["cost"] is None) == (r["variant"] == "rskp" or r["branch"] is not None)
        if r["cost"] is not None:
            assert r["cost"]["cpu_s"] > 0 and r["cost"]["max_rss_mib"] > 50
        assert (r["gap_closed"] is not None) == (r["teacher"] is not None)
    out = ablation["root"] / "out" / "runs"
    assert (out / "rskp" / "seed0").resolve() == (ablation["root"] / "existing" / "rskp_s0").resolve()
    student = yaml.safe_load((out / "lgmd_student" / "seed0" / "config.yaml").read_text(encoding="utf-8"))
    assert student["teacher"]["run"] == str(out / "lgmd_teacher" / "seed0")
    assert "RGB student, local + global: closes" in ablation["stdout"]


def test_a_branch_row_is_the_branch_evaluated_alone(ablation):
    from wtal.engine.predict import load_run

    rows = {(r["variant"], r["branch"]): r for r in ablation["result"]["tables"]["main"]}
    run = ablation["root"] / "out" / "runs" / "lgmd_teacher" / "seed0"
    loaded = load_run(run, "cpu")
    params = {k: v for k, v in loaded.cfg.model.params.items() if k not in OWN_KEYS}
    for stream in ("rgb", "flow"):
        # a standalone RSKP on that stream alone, given the branch's weights, has the row's test metrics
        alone = build_model("rskp", loaded.task.model_context(loaded.data, [stream]), **params).eval()
        alone.load_state_dict(loaded.model.branches[stream].state_dict())
        result = loaded.task.evaluate(alone, loaded.data.split("test"), loaded.cfg, torch.device("cpu"))
        assert rows[("lgmd_teacher", stream)]["mean"]["AVG(0.1:0.7)"] == pytest.approx(
            result.summary()["averages"]["AVG(0.1:0.7)"], abs=1e-9)
    fused = rows[("lgmd_teacher", None)]["mean"]
    assert fused != rows[("lgmd_teacher", "rgb")]["mean"]


def test_a_reused_run_of_another_recipe_is_refused(ablation, tmp_path):
    existing = ablation["root"] / "existing" / "rskp_s0"
    with pytest.raises(SystemExit, match="was not made by rskp_flow.yaml"):
        run_script([*ablation["base"], "--out", str(tmp_path / "out"), "--no-train",
                    "--reuse", f"rskp_flow={existing.parent / 'rskp_s{seed}'}"])
