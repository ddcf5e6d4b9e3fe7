"""ISSF ablations: its modules switched off one by one in the shipped config, and ISSF against RSKP and MIL.

    python benchmarks/ablate_issf.py --data DIR --epochs N --seeds 0,1,2 --out OUTDIR [--tables modules,models]
        [--reuse VARIANT=PATTERN ...] [--jobs 1] [--threads 1] [--set KEY=VALUE ...]

Tables (``--tables``):

* ``modules``: ``configs/issf.yaml`` with hyper-parameter switches of the one model: the base branch alone
  (``boundary_refinement=false``, ``discrimination_memory=false``: RSKP's head and losses without its
  propagation, no pseudo labels); + boundary refinement (saliency inference and the two interaction units,
  the saliency branch labelling the base branch); + memory (the discrimination-enhancement memory read by
  the embedded snippets, the memory branch labelling the base branch); the full model. Gain rows are
  per-seed paired differences.
* ``models``: ``issf.yaml``, ``rskp.yaml`` and ``mil.yaml`` (the shipped configs, same data, epochs and seeds).

Runs, resuming, ``--set``, ``--reuse`` (finished runs of a variant, e.g. ``--reuse rskp=DIR/rskp_s{seed}``,
checked against its recipe) and the output (mean ± sample std over the finished seeds, percent, on stdout and in
``OUTDIR/ablation.json``) work as in ``ablate_gaufuse.py``, whose run machinery this script uses.
"""

from __future__ import annotations

import argparse
import sys

from experiments import Row, Table, add_run_arguments, check_run_arguments, run_tables

TABLE_KEYS = ("modules", "models")
NO_REFINEMENT = "model.params.boundary_refinement=false"
NO_MEMORY = "model.params.discrimination_memory=false"
VARIANTS = {  # variant -> (label, overrides of issf.yaml)
    "issf-base": ("base branch only (RSKP head)", (NO_REFINEMENT, NO_MEMORY)),
    "issf-refinement": ("+ saliency / boundary refinement", (NO_MEMORY,)),
    "issf-memory": ("+ memory", (NO_REFINEMENT,)),
    "issf": ("full ISSF", ()),
}
COMPARED = {"issf": "ISSF", "rskp": "RSKP", "mil": "MIL"}


def module_row(variant: str) -> Row:
    label, overrides = VARIANTS[variant]
    return Row(label, variant, "issf.yaml", overrides)


def gain_row(label: str, variant: str, baseline: str) -> Row:
    return Row(label, variant, "issf.yaml", VARIANTS[variant][1], baseline=baseline)


def build_tables(keys: list[str]) -> dict[str, Table]:
    tables: dict[str, Table] = {}
    if "modules" in keys:
        tables["modules"] = Table("ISSF modules (switches of configs/issf.yaml)", [
            *(module_row(v) for v in VARIANTS),
            gain_row("gain: refinement over base", "issf-refinement", "issf-base"),
            gain_row("gain: memory over base", "issf-memory", "issf-base"),
            gain_row("gain: memory on top of refinement", "issf", "issf-refinement"),
            gain_row("gain: refinement on top of memory", "issf", "issf-memory"),
            gain_row("gain: full over base", "issf", "issf-base")])
    if "models" in keys:
        tables["models"] = Table("ISSF vs RSKP vs MIL (shipped configs)", [
            Row(label, model, f"{model}.yaml") for model, label in COMPARED.items()])
    return tables


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(p)
    p.add_argument("--tables", default=",".join(TABLE_KEYS), help=f"comma-separated among {', '.join(TABLE_KEYS)}")
    args = p.parse_args(argv)
    check_run_arguments(p, args)
    keys = [k.strip() for k in args.tables.split(",") if k.strip()]
    if not keys or set(keys) - set(TABLE_KEYS):
        p.error(f"--tables: use some of {', '.join(TABLE_KEYS)} (got {keys!r})")
    args.tables = [k for k in TABLE_KEYS if k in keys]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tables = build_tables(args.tables)
    return run_tables(tables, args, "ablation.json")


if __name__ == "__main__":
    sys.exit(main())
