"""End to end: benchmarks/ablate_issf.py on a tiny synthetic set (3 epochs, one seed): every row is the shipped
configs/issf.yaml with only its switches changed, gains are paired differences, finished baselines are reused."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import shutil

import pytest
import yaml
from helpers import load_benchmark, run_benchmark_main

from wtal.data.synthetic import SynthConfig, write_synthetic
from wtal.engine.config import load_run_config, resolve_config

ablate = load_benchmark("ablate_issf")
experiments = importlib.import_module("experiments")  # the runner the script imported

EPOCHS = 3
SWITCHES = ("boundary_refinement", "discrimination_memory")
MODULE_VARIANTS = {"issf-base": (False, False), "issf-refinement": (True, False), "issf-memory": (False, True),
                   "issf": (True, True)}
COLUMNS = ["0.1", "0.3", "0.5", "0.7", "AVG(0.1:0.5)", "AVG(0.3:0.7)", "AVG(0.1:0.7)"]


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    root = tmp_path_factory.mktemp("issf_ablation")
    data = write_synthetic(root / "data", SynthConfig(num_videos=40, dim=32, seed=0))["wtalc"]
    argv = ["--data", str(data), "--out", str(root / "out"), "--epochs", str(EPOCHS), "--seeds", "0",
            "--jobs", "2", "--threads", "1", "--set", "train.select=last"]
    code, stdout = run_benchmark_main(ablate, argv)
    assert code == 0, stdout
    result = json.loads((root / "out" / "ablation.json").read_text(encoding="utf-8"))
    return {"argv": argv, "data": data, "root": root, "out": root / "out", "stdout": stdout, "result": result}


def rows(ablation, table: str) -> dict[str, dict]:
    return {r["label"]: r for r in ablation["result"]["tables"][table]["rows"]}


def test_every_variant_is_the_shipped_config_with_its_switches(ablation):
    for variant, (refinement, memory) in MODULE_VARIANTS.items():
        run = ablation["out"] / "runs" / variant / "seed0"
        saved = load_run_config(run / "config.yaml").to_dict()
        overrides = [f"model.params.boundary_refinement={str(refinement).lower()}",
                     f"model.params.discrimination_memory={str(memory).lower()}",
                     "train.num_threads=1", "train.progress=false", "train.select=last"]
        shipped = resolve_config("issf.yaml", epochs=EPOCHS, seed=0, data_path=ablation["data"],
                                 overrides=overrides).to_dict()
        assert saved == shipped, variant
        assert saved["model"]["name"] == "issf"
        assert (saved["model"]["params"]["boundary_refinement"], saved["model"]["params"]["discrimination_memory"]) \
            == (refinement, memory)
    full = load_run_config(ablation["out"] / "runs" / "issf" / "seed0" / "config.yaml").to_dict()
    base = load_run_config(ablation["out"] / "runs" / "issf-base" / "seed0" / "config.yaml").to_dict()
    differing = {k for k in full["model"]["params"] if full["model"]["params"][k] != base["model"]["params"][k]}
    assert differing == set(SWITCHES) and {k for k in full if full[k] != base[k]} == {"model"}


def test_tables_hold_finite_rows_and_paired_gains(ablation):
    modules = rows(ablation, "modules")
    assert list(modules)[:4] == [ablate.VARIANTS[v][0] for v in MODULE_VARIANTS]
    for row in modules.values():
        assert row["n"] == 1 and row["seeds"] == [0]
        assert set(COLUMNS) <= set(row["mean"]) and all(math.isfinite(v) for v in row["mean"].values())
    full, base = modules["full ISSF"]["mean"], modules["base branch only (RSKP head)"]["mean"]
    for column in COLUMNS:
        assert modules["gain: full over base"]["mean"][column] == pytest.approx(full[column] - base[column])
    models = rows(ablation, "models")
    assert list(models) == ["ISSF", "RSKP", "MIL"]
    assert models["ISSF"]["mean"] == modules["full ISSF"]["mean"]  # one run serves both tables
    assert "### ISSF modules" in ablation["stdout"] and "### ISSF vs RSKP vs MIL" in ablation["stdout"]
    runs = sorted(p.parent.parent.name for p in (ablation["out"] / "runs").glob("*/seed0/report.json"))
    assert runs == sorted([*MODULE_VARIANTS, "rskp", "mil"])


def test_finished_runs_are_reused_only_when_made_by_the_variants_recipe(ablation, tmp_path):
    """``--reuse VARIANT=PATTERN`` links a finished run made by the variant's recipe; a run of another schedule
    or a name that is no variant is refused before anything trains."""
    given = tmp_path / "given"
    shutil.copytree(ablation["out"] / "runs" / "mil" / "seed0", given / "mil_s0")
    shutil.copytree(ablation["out"] / "runs" / "rskp" / "seed0", given / "rskp_s0")
    config = given / "rskp_s0" / "config.yaml"
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    raw["train"]["epochs"] = EPOCHS + 1  # another schedule
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    out = tmp_path / "out"

    def link(*reuse: str) -> None:
        argv = [*ablation["argv"][:2], "--out", str(out), *ablation["argv"][4:]]
        args = ablate.parse_args([*argv, *(x for r in reuse for x in ("--reuse", r))])
        experiments.link_reused(experiments.run_specs(ablate.build_tables(args.tables), args.seeds), args)

    with contextlib.redirect_stdout(io.StringIO()):
        link(f"mil={given}/mil_s{{seed}}")
    assert (out / "runs" / "mil" / "seed0").resolve() == (given / "mil_s0").resolve()
    with pytest.raises(SystemExit, match=r"rskp_s0 was not made by rskp.yaml .*'train'"):
        link(f"rskp={given}/rskp_s{{seed}}")
    assert not (out / "runs" / "rskp" / "seed0").exists()
    with pytest.raises(SystemExit, match="names no variant"):
        link(f"stpn={given}/rskp_s{{seed}}")


@pytest.mark.parametrize("bad", [["--tables", "gaufuse"], ["--seeds", ""], ["--jobs", "0"]])
def test_bad_arguments_are_refused(tmp_path, bad):
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(io.StringIO()):
        ablate.main(["--data", str(tmp_path), "--out", str(tmp_path / "out"), *bad])
    assert exc.value.code == 2
