"""The command line as a user meets it: help texts, --version, and one clean line for every failure
(bad input, a refused output, a closed pipe, Ctrl-C), never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from wtal import __version__
from wtal.cli import EXIT_INTERRUPTED, EXIT_STDOUT_CLOSED, build_parser, main

SRC = Path(__file__).resolve().parents[1] / "src"


def _subcommands() -> list[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(sub.choices)


def _help_entries(text: str) -> dict[str, str]:
    """``{option: description}`` from argparse's help text (the "options:" section)."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        start = re.match(r"^  (-\S.*?)(?:\s{2,}(\S.*))?$", line)
        if start:
            current = start.group(1).split()[0].rstrip(",")
            entries[current] = start.group(2) or ""
        elif current and re.match(r"^\s{4,}\S", line):
            entries[current] = (entries[current] + " " + line.strip()).strip()
        elif not line.strip() or not line.startswith(" "):
            current = None
    return entries


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-m", "wtal.cli", *args], capture_output=True, text=True, env=env,
                          **kwargs)


# ---------------------------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", _subcommands())
def test_every_option_has_a_description_and_shows_its_default(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    entries = _help_entries(capsys.readouterr().out)
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    actions = [a for a in sub.choices[command]._actions if a.option_strings and a.dest != "help"]
    assert {a.option_strings[-1] for a in actions} <= set(entries), "every option is listed"
    for action in actions:
        text = entries[action.option_strings[-1]]
        assert len(text.split()) >= 2, f"{command} {action.option_strings[-1]} has no description"
        flag = action.nargs == 0
        if not (flag or action.required):
            assert "(default: " in text, f"{command} {action.option_strings[-1]} does not say its default"
        if action.default not in (None, False, []) and not action.required:
            assert f"(default: {action.default})" in text


def test_help_parser_reads_descriptions_of_wrapped_lines():
    text = "options:\n  -h, --help  show help\n  --method {a,b}\n              how it works\n" \
           "              (default: a)\n  --out OUT   result\n"
    assert _help_entries(text) == {"-h": "show help", "--method": "how it works (default: a)", "--out": "result"}


def test_version(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out.strip()
    assert printed == f"wtal {metadata.version('wtal')}" == f"wtal {__version__}"


# ------------------------------------------------------------------------------------- clean errors


def _fail_with(monkeypatch, exc: BaseException) -> None:
    def synth_command(**kwargs):
        raise exc

    monkeypatch.setattr("wtal.data.synthetic.synth_command", synth_command)


SYNTH = ["synth", "--out", "somewhere", "--dim", "8", "--videos", "6"]


def test_os_error_naming_a_file_is_one_error_line(monkeypatch, capsys):
    _fail_with(monkeypatch, PermissionError(errno.EACCES, "Permission denied", "/data/out/x.npy"))
    assert main(SYNTH) == 2
    err = capsys.readouterr().err
    assert err.startswith("wtal synth: error: cannot access the file: Permission denied")
    assert "file: /data/out/x.npy" in err and "Traceback" not in err


def test_os_error_without_a_file_is_a_bug_and_keeps_its_traceback(monkeypatch):
    _fail_with(monkeypatch, OSError(errno.EIO, "Input/output error"))
    with pytest.raises(OSError, match="Input/output"):
        main(SYNTH)


def test_unwritable_output_path_is_one_error_line(tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder should be")
    assert main(["synth", "--out", str(blocker / "data"), "--dim", "8", "--videos", "6"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and str(blocker) in err and "Traceback" not in err


def test_broken_pipe_in_process_is_quiet(monkeypatch, capsys):
    _fail_with(monkeypatch, BrokenPipeError(errno.EPIPE, "Broken pipe"))
    assert main(SYNTH) == EXIT_STDOUT_CLOSED
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("args", [["synth", "--dim", "8", "--videos", "6", "--out"], ["--help"]])
def test_closed_stdout_exits_quietly(tmp_path, args):
    """``wtal synth ... | head`` after head has exited: no traceback, no "Exception ignored" at exit."""
    if args[-1] == "--out":
        args = [*args, str(tmp_path / "d")]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-m", "wtal.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert err == ""
    assert code == (0 if args == ["--help"] else EXIT_STDOUT_CLOSED)


def test_interrupt_of_other_commands_is_one_line(monkeypatch, capsys):
    _fail_with(monkeypatch, KeyboardInterrupt())
    assert main(SYNTH) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "wtal synth: interrupted\n"


def test_interrupt_of_train_says_how_to_resume(tmp_path, monkeypatch, capsys):
    def train_command(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("wtal.engine.command.train_command", train_command)
    run = tmp_path / "my run"
    argv = ["train", "--config", "rskp", "--data", "D", "--out", str(run), "--set", "optim.lr=1e-4"]
    assert main(argv) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == f"wtal train: interrupted before the first checkpoint; start again with: " \
                                      f"{shlex.join(['wtal', *argv])}\n"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    assert main(argv) == EXIT_INTERRUPTED
    line = capsys.readouterr().err
    assert line == f"wtal train: interrupted; resume with: {shlex.join(['wtal', *argv, '--resume'])}\n"
    assert main([*argv, "--resume"]) == EXIT_INTERRUPTED  # --resume is not repeated
    assert capsys.readouterr().err == line


@pytest.mark.slow
def test_sigint_during_training_prints_one_line_and_resume_finishes_the_run(tmp_path):
    data = tmp_path / "data"
    assert _cli("synth", "--out", str(data), "--dim", "16", "--videos", "12").returncode == 0
    run = tmp_path / "run"
    epochs = 200
    argv = ["train", "--config", "mil", "--data", str(data / "wtalc"), "--out", str(run), "--epochs", str(epochs),
            "--device", "cpu", "--set", "train.num_threads=1", "--set", "train.eval_every=1000",
            "--set", "model.params.embed_dim=8"]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    # the child's Ctrl-C as a terminal gives it, whatever this process inherited (a shell's background job
    # starts with SIGINT ignored, and an ignored SIGINT stays ignored across exec)
    proc = subprocess.Popen([sys.executable, "-m", "wtal.cli", *argv], stderr=subprocess.PIPE, env=env,
                            umask=0o027, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # The run takes about a second: a small pipe read in small pieces holds the child back (its log writes
    # block) to within a few dozen epochs of what has been read, so the interrupt lands mid-run however late
    # this process reacts.
    with contextlib.suppress(AttributeError, OSError):  # Linux only; elsewhere the default pipe
        fcntl.fcntl(proc.stderr.fileno(), fcntl.F_SETPIPE_SZ, 4096)
    lines, pending = [], b""
    while chunk := os.read(proc.stderr.fileno(), 128):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        lines += [line.decode() + "\n" for line in complete]
        # epoch 1's line is logged just before its checkpoint is saved; epoch 2's line proves it exists
        if any(re.search(r"epoch 2/\d+ \|", line) for line in lines):
            proc.send_signal(signal.SIGINT)
            break
    rest = pending.decode() + proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert code == EXIT_INTERRUPTED, "".join(lines) + rest
    assert "Traceback" not in rest
    (message,) = [line for line in rest.splitlines() if "interrupted" in line]
    assert rest.strip().splitlines()[-1] == message, "the interrupt line is the last word"
    assert message.startswith("wtal train: interrupted; resume with: wtal train ")
    resume = shlex.split(message.split("resume with: ", 1)[1])
    assert resume[0] == "wtal" and resume[1:] == [*argv, "--resume"]
    assert 2 <= len((run / "metrics.jsonl").read_text().splitlines()) < epochs

    finished = _cli(*resume[1:], timeout=300, umask=0o027)
    assert finished.returncode == 0, finished.stderr
    resumed_at = re.search(rf"resumed from .*last\.pt after epoch (\d+) of {epochs}", finished.stderr)
    assert resumed_at and 1 <= int(resumed_at.group(1)) < epochs, finished.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))  # epochs count from 1 everywhere
    assert (run / "report.json").is_file()
    # every output of the run (config, log, metrics, checkpoints, predictions, report) follows the umask
    modes = {p.relative_to(run).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in run.rglob("*") if p.is_file()}
    assert len(modes) >= 6 and set(modes.values()) == {0o640}, modes
