"""The demo pipeline end to end on a tiny synthetic set, and the plot command on its run."""

import json

import pytest

from wtal.cli import main
from wtal.demo import demo_config_path, run_demo
from wtal.engine.config import resolve_config


def test_demo_config_is_packaged_and_resolves():
    cfg = resolve_config(demo_config_path())
    assert cfg.model.name == "rskp" and cfg.train.epochs == 40 and cfg.data.batch_size == 2


def test_demo_runs_end_to_end_and_writes_every_output(tmp_path):
    result = run_demo(tmp_path / "demo", seed=1, epochs=4, videos=40, dim=32)
    run = result["run"]
    report = json.loads((run / "report.json").read_text())
    assert report["model"] == "rskp" and len(report["test"]["mAP"]) == 7
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
    assert json.loads((run / "predictions" / "test.json").read_text())["results"]
    assert result["plot"].read_bytes()[:4] == b"\x89PNG"
    # the plot command works on the same run, for a named video
    video = result["plot"].stem.removeprefix("timeline_")
    out = tmp_path / "p.png"
    assert main(["plot", "--run", str(run), "--video", video, "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    # an unknown video is a clear input error (exit code 2), and the demo refuses to overwrite a run
    assert main(["plot", "--run", str(run), "--video", "no_such_video"]) == 2
    with pytest.raises(Exception, match="already holds a run"):
        run_demo(tmp_path / "demo", seed=1, epochs=4, videos=40, dim=32)
