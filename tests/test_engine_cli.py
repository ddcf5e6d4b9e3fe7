"""`wtal train` / `wtal predict` / `wtal localize --run` end to end; run folders from anywhere."""

from __future__ import annotations

import json

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


@pytest.mark.parametrize("bad", ["cuda:7"])
def test_cuda_request_without_cuda_is_an_input_error(tmp_path, tiny_data, bad):  # noqa: F811
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    cfg = tiny_run_yaml(tmp_path / "cfg.yaml", epochs=1)
    assert main(["train", "--config", str(cfg), "--data", str(tiny_data["wtalc"]), "--out", str(tmp_path / "r"),
                 "--device", bad]) == 2


def test_run_folders_are_portable_and_checked(tmp_path, monkeypatch, capsys):
    """A run made with relative paths works from any directory, follows its data with --data, refuses data of
    other classes or widths, and reuses its own post-processing in `wtal localize --run`."""
    from test_engine_data import write_tiny

    work = tmp_path / "work"
    write_tiny(work / "data")
    cfg = tiny_run_yaml(tmp_path / "cfg.yaml", epochs=2)
    monkeypatch.chdir(work)
    assert main(["train", "--config", str(cfg), "--data", "data/wtalc", "--out", "run", "--device", "cpu"]) == 0
    run = work / "run"
    assert json.loads((run / "data.json").read_text())["streams"] == {"rgb": 8, "flow": 8}

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    own = json.loads((run / "predictions" / "test.json").read_text())
    assert main(["predict", "--run", str(run), "--out", "p.json", "--cas", "cas.npz"]) == 0
    assert json.loads((elsewhere / "p.json").read_text()) == own

    # the run's own recipe from its CAS file gives its own predictions; the bare preset does not know it
    assert main(["localize", "--run", str(run), "--cas", "cas.npz", "--out", "l.json"]) == 0
    assert json.loads((elsewhere / "l.json").read_text()) == own

    (work / "data").rename(work / "moved")
    assert main(["predict", "--run", str(run), "--out", "p2.json"]) == 2
    assert "data path not found" in capsys.readouterr().err
    assert main(["predict", "--run", str(run), "--out", "p2.json", "--data", str(work / "moved" / "wtalc")]) == 0
    assert json.loads((elsewhere / "p2.json").read_text()) == own

    write_tiny(tmp_path / "other", num_classes=4)
    assert main(["predict", "--run", str(run), "--out", "p3.json", "--data", str(tmp_path / "other" / "wtalc")]) == 2
    assert "4 classes instead of 3" in capsys.readouterr().err
    write_tiny(tmp_path / "wide", dim=24)
    assert main(["predict", "--run", str(run), "--out", "p3.json", "--data", str(tmp_path / "wide" / "wtalc")]) == 2
    assert "'rgb' is 12-d instead of 8-d" in capsys.readouterr().err


def test_a_checkpoint_that_does_not_fit_its_model_is_one_clear_error(tmp_path, tiny_data, capsys):  # noqa: F811
    cfg = tiny_run_yaml(tmp_path / "cfg.yaml", epochs=1)
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--data", str(tiny_data["wtalc"]), "--out", str(run)]) == 0
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    resolved["model"]["params"]["embed_dim"] = 5  # the weights were trained at the input width
    (run / "config.yaml").write_text(yaml.safe_dump(resolved))
    assert main(["predict", "--run", str(run), "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert "weights do not fit the run's model" in err and "another shape" in err and "best.pt" in err
    assert err.count("error:") == 1 and "Traceback" not in err
