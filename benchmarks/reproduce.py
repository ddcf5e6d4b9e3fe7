"""Re-run one table of docs/results.md: ``python benchmarks/reproduce.py --table NAME [--out DIR] [--data DIR]``.

Each table names the script and arguments that made it; training tables run on the standard synthetic set
(``wtal synth --dim 256 --seed 0``, written to ``OUT/data`` unless ``--data`` is given) at the shipped short
schedule (``--epochs 40``), seeds 0, 1 and 2, one torch thread per run. ``--list`` prints the tables.
Extra arguments after ``--`` go to the table's script (e.g. ``-- --seeds 0``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
SHORT = ["--epochs", "40", "--seeds", "0,1,2", "--threads", "1"]


@dataclass(frozen=True)
class Entry:
    script: str
    args: tuple[str, ...] = ()
    trains: bool = False  # needs --data and --out (an experiment over training runs)
    what: str = ""


TABLES: dict[str, Entry] = {
    "models": Entry("ablate_models.py", (*SHORT,), True, "every base model at the short schedule"),
    "gaufuse": Entry("ablate_gaufuse.py", (*SHORT, "--tables", "5"), True,
                     "the GauFuse plug-in on each base model (plain vs *_gaufuse.yaml)"),
    "gaufuse-ablations": Entry("ablate_gaufuse.py", (*SHORT, "--tables", "3,4"), True,
                               "GauFuse Tables 3 and 4 on RSKP"),
    "ddp": Entry("bench_ddp.py", (), True, "multi-process training: speed-up and weights against one process"),
    "engine": Entry("bench_engine.py", ("--threads", "1", "--repeats", "2"), False,
                    "batched vs one-video-at-a-time training and inference"),
    "eval": Entry("bench_eval.py", (), False, "detection mAP speed vs a per-detection loop"),
    "localize": Entry("bench_localize.py", (), False, "post-processing speed vs per-snippet Python"),
    "linpro": Entry("bench_linpro.py", (), False, "LinPro's reduced LP vs the dense LP"),
    "pseudo-generation": Entry("bench_pseudo_generation.py", (), False, "one pseudo-label generation"),
    "synth": Entry("bench_synth.py", (), False, "the synthetic generator's speed and difficulty"),
}


def ensure_data(out: Path) -> Path:
    """The standard synthetic set in ``OUT/data`` (written once)."""
    folder = out / "data"
    if not (folder / "wtalc").is_dir():
        subprocess.run([sys.executable, "-m", "wtal.cli", "synth", "--out", str(folder), "--dim", "256",
                        "--seed", "0"], check=True)
    return folder / "wtalc"


def command(name: str, out: Path, data: Path | None, extra: list[str]) -> list[str]:
    entry = TABLES[name]
    cmd = [sys.executable, str(BENCHMARKS / entry.script), *entry.args]
    if entry.trains:
        cmd += ["--data", str(data if data is not None else ensure_data(out)), "--out", str(out / name)]
    return cmd + extra


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", choices=sorted(TABLES), help="the table to re-run")
    p.add_argument("--out", type=Path, default=Path("reproduce-out"), help="output folder (default: reproduce-out)")
    p.add_argument("--data", type=Path, default=None, help="feature source (default: OUT/data, generated once)")
    p.add_argument("--list", action="store_true", help="list the tables and their commands")
    args = p.parse_args(argv)
    if args.list or args.table is None:
        for name, entry in TABLES.items():
            print(f"{name:<18} {entry.what}\n{'':<18} python benchmarks/{entry.script} {' '.join(entry.args)}"
                  + (" --data DATA --out OUT" if entry.trains else ""))
        return 0
    cmd = command(args.table, args.out.resolve(), args.data, extra)
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main())
