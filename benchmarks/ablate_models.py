"""Every base model with its shipped config, trained over seeds: the models table of docs/results.md.

    python benchmarks/ablate_models.py --data DIR --out OUTDIR --epochs 40 --seeds 0,1,2 \
        [--models mil,rskp,stpn,basnet,wum,facnet] [--jobs 1] [--threads 1] [--set KEY=VALUE ...]

Runs and caching as in ``experiments.py``; the table goes to stdout and, with every per-seed number, to
``OUTDIR/models.json``.
"""

from __future__ import annotations

import argparse
import sys

from experiments import CONFIG_DIR, Table, add_run_arguments, check_run_arguments, plain, run_tables

MODEL_LABELS = {"mil": "MIL (top-k)", "rskp": "RSKP", "stpn": "STPN", "basnet": "BaS-Net", "wum": "WUM",
                "facnet": "FAC-Net"}


def build_tables(models: list[str]) -> dict[str, Table]:
    return {"models": Table("Base models at their shipped configs",
                            [plain(m, MODEL_LABELS.get(m, m)) for m in models])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(p)
    p.add_argument("--models", default=",".join(MODEL_LABELS), help="comma-separated shipped model configs")
    args = p.parse_args(argv)
    check_run_arguments(p, args)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    missing = [m for m in models if not (CONFIG_DIR / f"{m}.yaml").is_file()]
    if missing:
        p.error(f"no config {', '.join(f'{m}.yaml' for m in missing)} in {CONFIG_DIR}")
    return run_tables(build_tables(models), args, "models.json")


if __name__ == "__main__":
    sys.exit(main())
