"""Fixed-seed short runs of every shipped config, recorded once and compared by ``test_golden_runs.py``.

Each shipped detection config trains for ``EPOCHS`` epochs (``--epochs`` rescaling, so every schedule
boundary, pseudo-label generation and memory warm-up falls inside the run) on a tiny synthetic set, and the
per-epoch mean losses and the final validation / test metrics are recorded. A refactoring that keeps
behaviour keeps these numbers; ``python tests/golden_runs.py --write`` re-records them after a deliberate
change of behaviour (say why in the commit).

Configs that read a stream beyond I3D rgb/flow (the vision-language ones read ``clip`` and need class text
embeddings) cannot run on the tiny set of ``golden_runs.json``, which has neither: they are recorded apart,
in ``golden_runs_clip.json``, on the same tiny set generated with a 16-d CLIP-like stream
(``python tests/golden_runs.py --clip --write``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
GOLDEN_FILE = Path(__file__).resolve().parent / "data" / "golden_runs.json"
CLIP_GOLDEN_FILE = Path(__file__).resolve().parent / "data" / "golden_runs_clip.json"
CLIP_DIM = 16
STUDENT_GOLDEN_FILE = Path(__file__).resolve().parent / "data" / "golden_student_runs.json"
EPOCHS = 6
SEED = 0

#: Shipped student configs -> the shipped config of their teacher run. A student cannot train alone (it names
#: its teacher with --set teacher.run=RUN), so it is left out of the record of self-contained configs and has
#: its own record (STUDENT_GOLDEN_FILE): the teacher config's short run, then the student's short run taught
#: by it.
STUDENT_CONFIGS = {"lgmd_student_rskp": "lgmd_teacher_rskp"}


def _detection_config_streams() -> dict[str, set[str]]:
    """Every shipped self-contained detection config (a `detection` task or no task key, students of a teacher
    run excepted: see :data:`STUDENT_CONFIGS`) -> the streams its run loads."""
    import yaml

    from wtal.engine.config import resolve_config
    from wtal.engine.trainer import run_streams

    out = {}
    for path in sorted(CONFIGS.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if raw.get("task", "detection") == "detection" and path.stem not in STUDENT_CONFIGS:
            out[path.stem] = set(run_streams(resolve_config(path)))
    return out


def detection_configs() -> list[str]:
    """The shipped detection configs that run on I3D rgb/flow alone (recorded in ``golden_runs.json``)."""
    return [name for name, streams in _detection_config_streams().items() if streams <= {"rgb", "flow"}]


def clip_configs() -> list[str]:
    """The shipped detection configs that also read other streams (recorded in ``golden_runs_clip.json``)."""
    return [name for name, streams in _detection_config_streams().items() if not streams <= {"rgb", "flow"}]


def write_data(folder: Path, clip: bool = False) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_engine_data import write_tiny

    return write_tiny(folder, **({"clip_dim": CLIP_DIM} if clip else {}))["wtalc"]


def run_config(name: str, data: Path, out: Path, extra: tuple[str, ...] = ()) -> dict:
    """Train ``configs/<name>.yaml`` on ``data`` (``extra``: more ``--set`` overrides) and return its
    per-epoch losses and final metrics."""
    import torch

    from wtal.engine.config import resolve_config
    from wtal.engine.trainer import Trainer

    torch.set_num_threads(1)
    cfg = resolve_config(CONFIGS / f"{name}.yaml", epochs=EPOCHS, seed=SEED, data_path=data,
                         overrides=["train.progress=false", "train.eval_every=1", "train.num_threads=1", *extra])
    report = Trainer(cfg, out, device="cpu").fit()
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"losses": [e["loss"] for e in epochs],
            "val": [e.get("val", {}).get("average") for e in epochs],
            "test": {k: report["test"].get(k) for k in ("mAP", "average", "classification_map")},
            "epoch": report["epoch"]}


def record_all(names: list[str] | None = None, clip: bool = False) -> dict[str, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_data(tmp / "data", clip)
        chosen = names or (clip_configs() if clip else detection_configs())
        return {name: run_config(name, data, tmp / name) for name in chosen}


def record_students(names: list[str] | None = None) -> dict[str, dict]:
    """Short runs of student configs, each taught by its teacher config's short run on the same data."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_data(tmp / "data")
        records = {}
        for name in names or sorted(STUDENT_CONFIGS):
            teacher = tmp / f"teacher-of-{name}"
            run_config(STUDENT_CONFIGS[name], data, teacher)
            records[name] = run_config(name, data, tmp / name, (f"teacher.run={teacher}",))
        return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"re-record {GOLDEN_FILE.name}")
    parser.add_argument("--clip", action="store_true", help=f"the configs with a clip stream ({CLIP_GOLDEN_FILE.name})")
    parser.add_argument("--students", action="store_true",
                        help=f"record the student configs instead (their file: {STUDENT_GOLDEN_FILE.name})")
    parser.add_argument("--out", default=None, help="write the records to this file instead")
    args = parser.parse_args()
    records = record_students() if args.students else record_all(clip=args.clip)
    golden = STUDENT_GOLDEN_FILE if args.students else CLIP_GOLDEN_FILE if args.clip else GOLDEN_FILE
    target = golden if args.write else (Path(args.out) if args.out else None)
    text = json.dumps(records, indent=1, sort_keys=True)
    if target is None:
        print(text)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text + "\n", encoding="utf-8")
        print(f"{len(records)} configs -> {target}")


if __name__ == "__main__":
    main()
