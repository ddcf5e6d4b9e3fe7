"""End to end: benchmarks/ablate_gaufuse.py on a tiny synthetic set (4 epochs, one seed, RSKP only)."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import yaml
from helpers import load_benchmark, run_benchmark_main

from wtal.data.synthetic import SynthConfig, write_synthetic
from wtal.pseudo.plugin import GauFuseConfig

ablate = load_benchmark("ablate_gaufuse")
experiments = load_benchmark("experiments")

EPOCHS = 4
TABLE_LABELS = {
    "3-test": ["NMS", "uniform fusion", "exponential fusion", "t fusion", "gaussian fusion"],
    "4": ["baseline RSKP", "+ LinPro (NMS boundaries)", "+ fusion", "+ Δ", "+ fusion at test"],
    "5": ["RSKP", "RSKP + GauFuse", "gain"],
}
COLUMNS = ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "AVG(0.1:0.5)", "AVG(0.3:0.7)", "AVG(0.1:0.7)"]


def run_main(argv: list[str]) -> tuple[int, str]:
    return run_benchmark_main(ablate, argv)


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    data = write_synthetic(root / "data", SynthConfig(num_videos=40, dim=32, seed=0))["wtalc"]
    # select: last, so the pseudo labels of epochs 2-3 reach the tested checkpoint (val mAP ties at 0 here).
    argv = ["--data", str(data), "--out", str(root / "out"), "--epochs", str(EPOCHS), "--seeds", "0",
            "--tables", "3-test,4,5", "--models", "rskp", "--jobs", "2", "--threads", "1",
            "--set", "train.select=last"]
    code, stdout = run_main(argv)
    assert code == 0, stdout
    result = json.loads((root / "out" / "ablation.json").read_text(encoding="utf-8"))
    return {"argv": argv, "out": root / "out", "stdout": stdout, "result": result}


def rows_by_label(ablation, key: str) -> dict[str, dict]:
    return {r["label"]: r for r in ablation["result"]["tables"][key]["rows"]}


def test_tables_hold_the_expected_rows_with_finite_numbers(ablation):
    tables = ablation["result"]["tables"]
    assert list(tables) == ["3-test", "4", "5"]
    for key, labels in TABLE_LABELS.items():
        rows = tables[key]["rows"]
        assert [r["label"] for r in rows] == labels
        for row in rows:
            assert row["n"] == 1 and row["seeds"] == [0]
            assert set(COLUMNS) <= set(row["mean"])
            assert all(math.isfinite(v) for v in row["mean"].values())
            assert all(v is None for v in row["std"].values())  # one seed: no sample std
            if row["label"] != "gain":
                assert all(0.0 <= row["mean"][c] <= 100.0 for c in COLUMNS)
        # the printed markdown table has a header, a separator and one line per row, 10 columns + n
        block = ablation["stdout"].split(f"### {tables[key]['title']}")[1].strip().split("\n\n")[0]
        lines = block.splitlines()
        assert len(lines) == 2 + len(labels)
        assert [line.split("|")[1].strip() for line in lines[2:]] == labels
        assert all(line.count("|") == 2 + len(COLUMNS) + 1 for line in lines)


def test_distinct_runs_are_trained_once(ablation):
    runs = sorted(p.parent.parent.name for p in (ablation["out"] / "runs").glob("*/seed0/report.json"))
    assert runs == ["rskp", "rskp-pl-gaussian", "rskp-pl-gaussian-delta", "rskp-pl-nms", "rskp_gaufuse"]


def test_pseudo_recipes_reach_the_run_configs(ablation):
    def pseudo_section(variant: str) -> dict:
        text = (ablation["out"] / "runs" / variant / "seed0" / "config.yaml").read_text(encoding="utf-8")
        return yaml.safe_load(text)["pseudo"]

    assert pseudo_section("rskp") is None
    for variant, method, has_delta in [("rskp-pl-nms", "nms", False), ("rskp-pl-gaussian", "fusion", False),
                                       ("rskp-pl-gaussian-delta", "fusion", True)]:
        config = GauFuseConfig.from_dict(pseudo_section(variant), total_epochs=EPOCHS)
        assert config.generation.localize.method == method
        schedule = config.schedule
        assert len(schedule.generation_epochs) >= 2  # else Δ could not happen in either case
        kinds = {spec.kind for e in range(EPOCHS) if (spec := schedule.target(e, schedule.generation_epochs))}
        assert kinds == ({"raw", "delta"} if has_delta else {"raw"}), variant


def test_test_time_nms_reproduces_the_trainers_report(ablation):
    run = ablation["out"] / "runs" / "rskp" / "seed0"
    own = experiments.report_metrics(json.loads((run / "report.json").read_text(encoding="utf-8"))["test"])
    postprocess = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["postprocess"]
    again = experiments.test_time_metrics(run, "nms-check", postprocess)
    assert again == pytest.approx(own, abs=1e-9)


def test_fusion_at_test_equals_the_shipped_gaufuse_config(ablation):
    # rskp_gaufuse.yaml trains exactly like the "+ Δ" recipe (the post-processing only changes evaluation,
    # and select: last ignores it), so post-processing the "+ Δ" CAS like it must give its numbers.
    table4, table5 = rows_by_label(ablation, "4"), rows_by_label(ablation, "5")
    assert table4["+ fusion at test"]["mean"] == pytest.approx(table5["RSKP + GauFuse"]["mean"], abs=1e-9)
    assert table4["baseline RSKP"]["mean"] == pytest.approx(table5["RSKP"]["mean"], abs=1e-12)
    gain = table5["gain"]["mean"]
    for column in COLUMNS:
        expected = table5["RSKP + GauFuse"]["mean"][column] - table5["RSKP"]["mean"][column]
        assert gain[column] == pytest.approx(expected, abs=1e-12)


def test_rerun_skips_finished_runs_and_resumes_unfinished_ones(ablation):
    runs = ablation["out"] / "runs"
    reports = sorted(runs.glob("*/seed0/report.json"))
    stamps = [p.stat().st_mtime_ns for p in reports]
    code, stdout = run_main(ablation["argv"])
    assert code == 0
    assert f"{len(reports)} of {len(reports)} runs already finished; training 0" in stdout
    assert [p.stat().st_mtime_ns for p in reports] == stamps
    again = json.loads((ablation["out"] / "ablation.json").read_text(encoding="utf-8"))
    assert again["tables"] == ablation["result"]["tables"]

    # A run without its report (interrupted after its last checkpoint) is resumed, its test-time
    # results are recomputed from the new CAS, and the tables come out the same.
    base = runs / "rskp" / "seed0"
    (base / "report.json").unlink()
    stale = base / "test_time" / "fusion-gaussian.json"
    assert stale.is_file()
    stale.write_text(json.dumps({"postprocess": json.loads(stale.read_text())["postprocess"],
                                 "metrics": {"0.1": -1.0}}), encoding="utf-8")
    code, stdout = run_main(ablation["argv"])
    assert code == 0
    assert f"{len(reports) - 1} of {len(reports)} runs already finished; training 1" in stdout
    assert "resumed from" in (base / "train.log").read_text(encoding="utf-8")
    again = json.loads((ablation["out"] / "ablation.json").read_text(encoding="utf-8"))
    assert again["tables"] == ablation["result"]["tables"]


@pytest.mark.parametrize("bad", [["--tables", "6"], ["--models", "nosuchmodel"], ["--seeds", ""]])
def test_bad_arguments_are_refused(tmp_path, bad):
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(io.StringIO()):
        ablate.main(["--data", str(tmp_path), "--out", str(tmp_path / "out"), *bad])
    assert exc.value.code == 2
