"""End to end: benchmarks/ablate_mmsd.py on a tiny synthetic set (4 epochs, one seed, MIL as the baseline)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import yaml
from helpers import load_benchmark, run_benchmark_main

from wtal.data.synthetic import SynthConfig, write_synthetic
from wtal.engine.config import resolve_config

ablate = load_benchmark("ablate_mmsd")

EPOCHS = 4
ROWS = ["MMSD", "without distillation", "without self-voting", "without both"]
SWITCHES = {"mmsd": {}, "mmsd-no-distill": {"distill_weight": 0}, "mmsd-no-voting": {"voting_weight": 0},
            "mmsd-no-both": {"distill_weight": 0, "voting_weight": 0}}


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmsd_ablation")
    data = write_synthetic(root / "data", SynthConfig(num_videos=40, dim=32, seed=0))["wtalc"]
    # select: last, so that the label generations inside the 4 epochs reach the tested checkpoint
    argv = ["--data", str(data), "--out", str(root / "out"), "--epochs", str(EPOCHS), "--seeds", "0",
            "--baselines", "mil", "--threads", "1", "--set", "train.select=last"]
    code, stdout = run_benchmark_main(ablate, argv)
    assert code == 0, stdout
    result = json.loads((root / "out" / "ablation.json").read_text(encoding="utf-8"))
    return {"argv": argv, "data": data, "root": root, "out": root / "out", "stdout": stdout, "result": result}


def _run(ablation, variant: str):
    return ablation["out"] / "runs" / variant / "seed0"


def test_rows_are_the_shipped_config_with_only_their_switches(ablation):
    shipped = resolve_config(ablate.CONFIG_DIR / "mmsd.yaml", epochs=EPOCHS, seed=0, data_path=ablation["data"],
                             overrides=["train.num_threads=1", "train.progress=false", "train.select=last"]).to_dict()
    assert shipped["model"]["params"]["voting_weight"] > 0 and shipped["model"]["params"]["distill_weight"] > 0
    for variant, switches in SWITCHES.items():
        ran = yaml.safe_load((_run(ablation, variant) / "config.yaml").read_text(encoding="utf-8"))
        expected = json.loads(json.dumps(shipped))
        expected["model"]["params"].update(switches)
        assert ran == expected, variant
    # the label passes happened in the rows with self-voting, and only there
    import torch

    for variant, switches in SWITCHES.items():
        state = torch.load(_run(ablation, variant) / "checkpoints" / "last.pt", weights_only=True)["model"]
        assert (state["label_store.offsets"].numel() > 0) == ("voting_weight" not in switches), variant


def test_tables_hold_the_rows_with_finite_numbers(ablation):
    tables = ablation["result"]["tables"]
    assert list(tables) == ["streams", "ablation", "compare", "time"]
    for key in ("streams", "ablation"):
        assert [r["label"] for r in tables[key]["rows"]] == ROWS
    assert [r["label"] for r in tables["compare"]["rows"]] == ["MMSD", "MIL"]
    assert [r["label"] for r in tables["time"]["rows"]] == [*ROWS, "MIL"]
    for table in tables.values():
        for row in table["rows"]:
            assert row["n"] == 1 and all(math.isfinite(v) for v in row["mean"].values())
    streams = tables["streams"]["rows"][0]["mean"]
    assert list(streams) == list(ablate.STREAMS)
    # the shipped column is the run's own report, the same number as the ablation table's
    assert streams[next(iter(ablate.STREAMS))] == tables["ablation"]["rows"][0]["mean"][ablate.HEADLINE]
    assert "### Ablation: test AVG(0.1:0.7) of the shipped combination and of each stream alone" in ablation["stdout"]


def test_single_stream_evaluation_reproduces_the_trainers_report(tmp_path, ablation):
    run = tmp_path / "run"
    shutil.copytree(_run(ablation, "mmsd"), run)
    shutil.rmtree(run / "test_time")
    again = ablate.stream_metrics(run, {"shipped weights given": [0.2, 0.4, 0.4], "rgb": [1.0, 0.0, 0.0]})
    own = ablate.report_metrics(json.loads((run / "report.json").read_text(encoding="utf-8"))["test"])
    assert again["shipped weights given"] == pytest.approx(own, abs=1e-9)
    assert again["rgb"] != again["shipped weights given"]


def test_finished_baseline_runs_are_reused_and_reruns_train_nothing(tmp_path, ablation):
    given = tmp_path / "baselines"
    shutil.copytree(_run(ablation, "mil"), given / "mil_s0")
    out = tmp_path / "out"
    shutil.copytree(ablation["out"] / "runs", out / "runs", ignore=shutil.ignore_patterns("mil"))
    argv = [*ablation["argv"][:2], "--out", str(out), *ablation["argv"][4:], "--reuse", f"mil={given}/mil_s{{seed}}"]
    code, stdout = run_benchmark_main(ablate, argv)
    assert code == 0
    assert "5 of 5 runs already finished; training 0" in stdout
    assert (out / "runs" / "mil" / "seed0").resolve() == (given / "mil_s0").resolve()
    again = json.loads((out / "ablation.json").read_text(encoding="utf-8"))["tables"]
    assert again["compare"] == ablation["result"]["tables"]["compare"]
