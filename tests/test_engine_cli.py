"""`wtal train` / `wtal predict` end to end, and 2-process DDP training on CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from test_engine_data import tiny_data, tiny_run_yaml  # noqa: F401  (pytest fixture)

from wtal.cli import main
from wtal.data.sources import open_source
from wtal.localize.casfile import read_cas_file


def test_train_then_predict_cli(tmp_path, tiny_data):  # noqa: F811
    cfg = tiny_run_yaml(tmp_path / "cfg.yaml", epochs=2)
    run = tmp_path / "run"
    data = tiny_data["folders"]  # the per-video folder format; the other tests use the W-TALC bundle
    assert main(["train", "--config", str(cfg), "--data", str(data), "--out", str(run), "--seed", "11",
                 "--set", "optim.lr=0.02", "--device", "cpu"]) == 0
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["train"]["seed"] == 11 and resolved["optim"]["lr"] == 0.02
    assert resolved["data"]["path"] == str(data) and resolved["optim"]["schedule"]["type"] == "constant"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    report = json.loads((run / "report.json").read_text())
    assert report["selection"] == "val" and len(report["test"]["mAP"]) == 3
    assert json.loads((run / "predictions" / "test.json").read_text())["results"] is not None

    preds, cas = tmp_path / "preds.json", tmp_path / "cas.npz"
    assert main(["predict", "--run", str(run), "--out", str(preds), "--cas", str(cas), "--device", "cpu"]) == 0
    source = open_source(data)
    ann = source.annotations
    test_names = ann.names("test")
    results = json.loads(preds.read_text())["results"]
    assert results and set(results) <= set(test_names)
    for video, dets in results.items():
        duration = ann.videos[video].duration
        for d in dets:
            assert d["label"] in ann.classes
            start, end = d["segment"]
            assert 0 <= start < end <= duration + 1.0  # seconds, not snippets
    # same detections as the run's own test predictions (same checkpoint, same post-processing)
    assert json.loads(preds.read_text()) == json.loads((run / "predictions" / "test.json").read_text())
    cas_data = read_cas_file(cas)
    stored = np.load(cas)
    assert list(stored["__classes__"]) == ann.classes
    for name in test_names:
        assert stored[name].shape == (source.features(name, ["rgb"])["rgb"].shape[0], len(ann.classes))
    assert cas_data is not None

    # a finished run refuses a fresh start; --resume of a finished run only re-evaluates
    assert main(["train", "--config", str(cfg), "--data", str(data), "--out", str(run), "--device", "cpu"]) == 2
    assert main(["train", "--config", str(cfg), "--data", str(data), "--out", str(run), "--resume",
                 "--device", "cpu"]) == 0


def test_cli_input_errors(tmp_path, tiny_data, capsys):  # noqa: F811
    cfg = tiny_run_yaml(tmp_path / "cfg.yaml", epochs=1)
    assert main(["predict", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "p.json")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["train", "--config", str(cfg), "--data", str(tiny_data["wtalc"]), "--out", str(tmp_path / "r"),
                 "--set", "optim.lrr=1"]) == 2
    assert "valid keys of optim" in capsys.readouterr().err
    assert main(["train", "--config", str(cfg), "--data", str(tiny_data["wtalc"]), "--out", str(tmp_path / "r"),
                 "--resume"]) == 2


def test_select_test_is_logged(tmp_path, tiny_data):  # noqa: F811
    cfg = tiny_run_yaml(tmp_path / "cfg.yaml", epochs=1)
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--data", str(tiny_data["wtalc"]), "--out", str(run),
                 "--set", "train.select=test", "--device", "cpu"]) == 0
    assert "selected on the TEST split" in (run / "train.log").read_text()
    assert "test" in json.loads((run / "metrics.jsonl").read_text().splitlines()[0])


def test_ddp_two_cpu_processes_match_one_process(tmp_path, tiny_data):  # noqa: F811
    """2 ranks x (half of every global batch) with gradients all-reduced as a sum == 1 process (dropout 0)."""
    cfg = tiny_run_yaml(tmp_path / "cfg.yaml", epochs=2, extra="")
    args = ["train", "--config", str(cfg), "--data", str(tiny_data["wtalc"]), "--device", "cpu",
            "--set", "train.eval_every=5"]
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "wtal.cli", *args, "--out", str(tmp_path / "ddp")],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "single" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)
    assert b["world_size"] == 2 and len(b["rng"]) == 2
    assert a["state"]["global_step"] == b["state"]["global_step"]
    for key in a["model"]:  # equal up to float summation order
        assert torch.allclose(a["model"][key], b["model"][key], atol=1e-5, rtol=1e-4), key
    assert (tmp_path / "ddp" / "report.json").is_file()


@pytest.mark.parametrize("bad", ["cuda:7"])
def test_cuda_request_without_cuda_is_an_input_error(tmp_path, tiny_data, bad):  # noqa: F811
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    cfg = tiny_run_yaml(tmp_path / "cfg.yaml", epochs=1)
    assert main(["train", "--config", str(cfg), "--data", str(tiny_data["wtalc"]), "--out", str(tmp_path / "r"),
                 "--device", bad]) == 2
