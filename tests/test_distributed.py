"""Multi-process training on CPU (gloo): any batch size, any number of ranks, uneven shards; a dead rank never
leaves the others waiting; one process per run folder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ddp_worker import BATCH_SIZES, MODELS, config
from test_engine_data import write_tiny

from wtal.cli import main
from wtal.engine.runs import RunLock
from wtal.engine.trainer import Trainer
from wtal.errors import WtalInputError

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
WORKER = TESTS / "ddp_worker.py"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)]), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory) -> str:
    """11 training videos after the validation carve: divides by no batch size and no rank count tested."""
    return str(write_tiny(tmp_path_factory.mktemp("ddp"), num_videos=23)["wtalc"])


@pytest.fixture(scope="module")
def single_process_weights(odd_data) -> dict[tuple[str, int], dict[str, torch.Tensor]]:
    weights = {}
    for model in MODELS:
        for batch in BATCH_SIZES:
            trainer = Trainer(config(model, batch, odd_data), None, device="cpu")
            trainer.fit()
            weights[model, batch] = trainer.model.state_dict()
    return weights


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 3])
def test_any_batch_and_rank_count_trains_like_one_process(tmp_path, odd_data, single_process_weights, processes):
    """Batches of 1, 2 and 3 videos over 2 and 3 ranks (ranks without a video in a step included): every rank
    ends with the same weights and RSKP memory, equal to one process's up to float summation order."""
    assert len(Trainer(config("mil", 1, odd_data), None, device="cpu").data.train) == 11
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          f"--nproc_per_node={processes}", str(WORKER), "train", odd_data, str(tmp_path)],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for (model, batch), expected in single_process_weights.items():
        got = torch.load(tmp_path / f"{model}_b{batch}.pt")
        assert set(got) == set(expected)
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, atol=2e-6, rtol=2e-5, msg=f"{model} b{batch} {name}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_dead_rank_does_not_leave_the_others_waiting(tmp_path, odd_data):
    """Without torchrun to stop them, the surviving rank's collective fails by train.collective_timeout_s."""
    env = {**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, str(WORKER), "fail", odd_data, str(tmp_path), "5"],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    codes = [p.wait(timeout=120) for p in procs]
    assert codes[1] == 3 and codes[0] != 0, procs[0].stderr.read()[-2000:]
    assert time.monotonic() - t0 < 60


def test_a_second_training_process_cannot_take_a_busy_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    with RunLock(run):
        code = main(["train", "--config", "mil", "--data", str(tmp_path / "nowhere"), "--out", str(run)])
        err = capsys.readouterr().err
        assert code == 2 and f"in use by another wtal process (pid {os.getpid()})" in err
        assert not (run / "train.log").exists()  # the holder's log is left alone
        with pytest.raises(WtalInputError, match="in use"), RunLock(run):
            pass
    with RunLock(run):  # released when its holder ends
        pass


def test_a_failed_start_leaves_its_error_in_the_log_and_a_corrected_rerun_works(tmp_path, capsys):
    data = write_tiny(tmp_path / "data", num_videos=12)["wtalc"]
    run = tmp_path / "run"
    base = ["train", "--config", "mil", "--out", str(run), "--epochs", "1", "--set", "train.progress=false"]
    assert main([*base, "--data", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.count("error:") == 1
    log = (run / "train.log").read_text()
    assert "ERROR error: data path not found" in log
    assert main([*base, "--data", str(data)]) == 0
    assert (run / "report.json").is_file()
