"""Run folders: where a run keeps its resolved config, its data fingerprint and its checkpoints, and how
models are built from a config section and loaded back from a run.

Layout of ``RUN/``: ``config.yaml`` (the resolved config), ``data.json`` (the data fingerprint: task, data
path, classes, streams and widths, snippet rate), ``checkpoints/{last,best}.pt``, ``metrics.jsonl``,
``train.log``, ``predictions/``, ``report.json``. Paths are stored absolute, so a run can be used from any
working directory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from wtal.atomic import write_json_atomic
from wtal.data.rundata import RunData
from wtal.data.validate import read_json_file
from wtal.engine.checkpoint import load_checkpoint
from wtal.engine.config import ModelConfig, RunConfig, load_run_config
from wtal.errors import WtalInputError
from wtal.models.base import data_sized_state_keys
from wtal.tasks.base import Task

CONFIG_FILE = "config.yaml"
DATA_FILE = "data.json"
CHECKPOINTS = "checkpoints"


def read_run_config(run: str | Path) -> RunConfig:
    run = Path(run)
    if not (run / CONFIG_FILE).is_file():
        raise WtalInputError(f"not a run folder (no {CONFIG_FILE})", path=run,
                             fix="pass the --out folder of `wtal train`")
    return load_run_config(run / CONFIG_FILE)


def run_checkpoint(run: str | Path, cfg: RunConfig, which: str = "selected") -> Path:
    """``best.pt`` or ``last.pt`` of a run: ``selected`` is the run's own choice (``best.pt`` when it selects
    by validation/test and has one, else ``last.pt``)."""
    run = Path(run)
    best, last = run / CHECKPOINTS / "best.pt", run / CHECKPOINTS / "last.pt"
    if which == "best" or (which == "selected" and cfg.train.select != "last" and best.is_file()):
        if best.is_file():
            return best
        if which == "best":
            raise WtalInputError("the run has no best.pt", path=run / CHECKPOINTS,
                                 fix="use its last checkpoint, or a run that selects by validation")
    if last.is_file():
        return last
    raise WtalInputError("the run folder has no checkpoint", path=run / CHECKPOINTS,
                         fix="pass the --out folder of a finished (or interrupted) `wtal train`")


# --------------------------------------------------------------------------------------- fingerprints

def data_fingerprint(task: str, data: RunData, streams: Sequence[str]) -> dict[str, Any]:
    """What a trained model depends on in its data: classes, the streams it reads and their widths, and the
    facts the task fitted on the training data (``RunData.learned``, e.g. a grounding vocabulary)."""
    fingerprint = {"task": task, "path": str(getattr(data.source, "path", "")), "classes": list(data.classes),
                   "streams": {s: int(data.streams[s]) for s in streams},
                   "snippets_per_second": float(data.snippets_per_second)}
    if data.learned:
        fingerprint["learned"] = data.learned
    return fingerprint


def learned_facts(run: str | Path) -> dict[str, Any]:
    """The facts a run's task fitted on its training data (``{}`` for tasks that fit none)."""
    fingerprint = read_fingerprint(Path(run))
    return dict(fingerprint.get("learned") or {}) if fingerprint else {}


def write_fingerprint(run: Path, fingerprint: dict[str, Any]) -> None:
    write_json_atomic(run / DATA_FILE, fingerprint, indent=2)


def read_fingerprint(run: Path) -> dict[str, Any] | None:
    path = Path(run) / DATA_FILE
    if not path.is_file():
        return None
    return read_json_file(path, missing="", fix="delete it; it is rewritten by the next `wtal train --resume`",
                          missing_fix="")


def check_compatible(expected: dict[str, Any], actual: dict[str, Any], *, what: str, path: Path | str,
                     fix: str) -> None:
    """Raise a :class:`WtalInputError` listing how ``actual`` data differs from what a run was trained on."""
    problems = []
    if expected.get("task") != actual.get("task"):
        problems.append(f"task {actual.get('task')!r} instead of {expected.get('task')!r}")
    if list(expected.get("classes", [])) != list(actual.get("classes", [])):
        want, got = list(expected.get("classes", [])), list(actual.get("classes", []))
        extra, missing = sorted(set(got) - set(want)), sorted(set(want) - set(got))
        detail = (f"{len(got)} classes instead of {len(want)}" if (extra or missing) else "classes in another order")
        if missing:
            detail += f", missing {missing[:3]}"
        if extra:
            detail += f", extra {extra[:3]}"
        problems.append(detail)
    for key in sorted(set(expected.get("learned", {})) | set(actual.get("learned", {}))):
        if expected.get("learned", {}).get(key) != actual.get("learned", {}).get(key):
            problems.append(f"another {key} (fitted on other training data)")
    for stream, width in expected.get("streams", {}).items():
        have = actual.get("streams", {}).get(stream)
        if have is None:
            problems.append(f"no {stream!r} stream")
        elif int(have) != int(width):
            problems.append(f"{stream!r} is {have}-d instead of {width}-d")
    if problems:
        raise WtalInputError(f"{what}: " + "; ".join(problems), path=path, fix=fix)


# --------------------------------------------------------------------------------------- models

def build_section_model(section: ModelConfig, task: Task, data: RunData, *, where: str = "model") -> torch.nn.Module:
    """The model of a config's ``model`` section (or ``teacher.model``) for ``data``."""
    from wtal.models.factory import build_model

    missing = [s for s in section.streams if s not in data.streams]
    if missing:
        raise WtalInputError(f"{where}.streams names {missing}, which the run's data does not load "
                             f"(loaded: {list(data.streams)})", fix="choose streams the data has")
    try:
        return build_model(section.name, task.model_context(data, section.streams), **section.params)
    except TypeError as exc:  # a parameter the model does not take
        raise WtalInputError(f"{where} {section.name!r}: {exc}",
                             fix=f"check {where}.params against the model's hyper-parameters") from exc


def load_weights(model: torch.nn.Module, state: dict[str, Any], *, checkpoint: Path, run: Path | str) -> None:
    """``model.load_state_dict(state)`` with one clear error when the weights do not fit the model."""
    own = model.state_dict()
    resizable = data_sized_state_keys(model)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and k not in resizable and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing weight(s), e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected weight(s), e.g. {unexpected[0]}")
        if shapes:
            parts.append(f"{len(shapes)} weight(s) of another shape, e.g. {shapes[0]} (checkpoint vs model)")
        raise WtalInputError(f"the checkpoint's weights do not fit the run's model ({'; '.join(parts)})",
                             path=checkpoint,
                             fix=f"use the run's own config.yaml and data of the same widths (run {run}), or "
                                 "retrain")
    model.load_state_dict(state)


def load_run_model(run: str | Path, task: Task, data: RunData, *, which: str = "selected",
                   device: torch.device | str = "cpu") -> tuple[RunConfig, torch.nn.Module, Path]:
    """The trained model of ``run``, built for ``data`` (checked against the run's data fingerprint), with
    its checkpoint's weights, on ``device`` and in eval mode."""
    run = Path(run)
    cfg = read_run_config(run)
    expected = read_fingerprint(run)
    if expected is not None:
        check_compatible(expected, data_fingerprint(task.name, data, cfg.model.streams),
                         what=f"the data differs from what run {run} was trained on", path=run,
                         fix="use data with the run's classes, streams and feature widths")
    elif cfg.task != task.name:
        raise WtalInputError(f"run {run} learned the {cfg.task!r} task, not {task.name!r}", path=run,
                             fix="use a run of the same task")
    model = build_section_model(cfg.model, task, data)
    checkpoint = run_checkpoint(run, cfg, which)
    load_weights(model, load_checkpoint(checkpoint)["model"], checkpoint=checkpoint, run=run)
    model.to(device).eval()
    return cfg, model, checkpoint


# --------------------------------------------------------------------------------------- ownership

LOCK_FILE = ".lock"


class RunLock:
    """An exclusive lock on a run folder, held for the life of a training process.

    ``RUN/.lock`` is locked with ``flock`` (released by the kernel when the process ends, however it ends)
    and holds the owner's pid, so a second ``wtal train`` into the same folder stops at once naming it.
    """

    def __init__(self, run: Path):
        self.path = Path(run) / LOCK_FILE
        self._fh = None

    def __enter__(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the run's life
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise WtalInputError(f"the run folder is in use by another wtal process (pid {holder})",
                                 path=self.path.parent,
                                 fix="wait for it to finish, or choose another --out folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            self._fh.close()  # closing releases the lock
            self._fh = None
