"""GauFuse ablations (Tables 3-5 below): train the runs, re-post-process saved CAS, print tables.

    python benchmarks/ablate_gaufuse.py --data DIR --epochs N --seeds 0,1,2 --out OUTDIR --tables 3,4,5 \
        [--models rskp,stpn,basnet,wum,facnet] [--base rskp] [--jobs 2] [--threads 1] [--set KEY=VALUE ...]

Tables (``--tables``; ``3`` means ``3-train,3-test``):

* ``3-train``: pseudo-label boundaries from NMS or uniform / exponential / t / Gaussian fusion
  (``pseudo.localize.method/template`` over the ``pseudo`` section of ``*_gaufuse.yaml``, Δ on); test
  post-processing NMS (the base config's). Every pseudo-label row starts from that shipped section.
* ``3-test``: the base model trained without pseudo labels; its saved test CAS post-processed with NMS
  (the run's own report) or fusion with each template (the ``*_gaufuse.yaml`` post-processing).
* ``4``: baseline; + LinPro (NMS boundaries, no Δ); + fusion (Gaussian boundaries, no Δ); + Δ;
  + fusion at test (the + Δ run's CAS post-processed with Gaussian fusion). "No Δ" empties
  ``pseudo.delta_start_epochs``/``delta_scales``, so every epoch trains on the latest raw generation.
* ``5``: each of ``--models`` with its plain config vs its ``*_gaufuse.yaml``, and the gain (per-seed
  paired difference).

Runs live in ``OUTDIR/runs/VARIANT/seedS``; one with ``report.json`` is skipped, an interrupted one (a
``last.pt`` but no report) is resumed. ``--set`` overrides go to every run (after the variant's own).
Test-time rows write ``RUN/test_cas.npz`` once (``wtal predict --cas``) and cache each post-processing
result in ``RUN/test_time/NAME.json``. Cells are mean ± sample std over the seeds that finished (percent);
the tables go to stdout and, with every per-seed number, to ``OUTDIR/ablation.json``.
"""

from __future__ import annotations

import argparse
import sys

from experiments import (
    CONFIG_DIR,
    Row,
    Table,
    add_run_arguments,
    as_overrides,
    check_run_arguments,
    plain,
    run_tables,
)

from wtal.engine.config import load_config_tree

TEMPLATES = ("uniform", "exponential", "t", "gaussian")
TABLE_KEYS = ("3-train", "3-test", "4", "5")
MODEL_NAMES = {"rskp": "RSKP", "stpn": "STPN", "basnet": "BaS-Net", "wum": "WUM", "facnet": "FAC-Net"}


# ------------------------------------------------------------------------------------------- the ablations


def with_pseudo(model: str, label: str, boundaries: str, delta: bool, test: tuple[str, dict] | None = None) -> Row:
    """The plain config (its NMS test post-processing) plus the pseudo labels of ``MODEL_gaufuse.yaml``."""
    shipped = as_overrides("pseudo", load_config_tree(CONFIG_DIR / f"{model}_gaufuse.yaml")["pseudo"])
    method = (("pseudo.localize.method=nms",) if boundaries == "nms"
              else ("pseudo.localize.method=fusion", f"pseudo.localize.template={boundaries}"))
    no_delta = () if delta else ("pseudo.delta_start_epochs=[]", "pseudo.delta_scales=[]")
    overrides = (*shipped, *method, *no_delta)
    variant = f"{model}-pl-{boundaries}" + ("-delta" if delta else "")
    return Row(label, variant, f"{model}.yaml", overrides, test)


def fusion_at_test(model: str, template: str) -> tuple[str, dict]:
    """The test post-processing of ``MODEL_gaufuse.yaml`` with another fusion template."""
    postprocess = dict(load_config_tree(CONFIG_DIR / f"{model}_gaufuse.yaml")["postprocess"])
    return f"fusion-{template}", {**postprocess, "method": "fusion", "template": template}


def build_tables(keys: list[str], models: list[str], base: str) -> dict[str, Table]:
    name = MODEL_NAMES.get(base, base)
    tables: dict[str, Table] = {}
    if "3-train" in keys:
        tables["3-train"] = Table(f"Table 3, at training: pseudo-label boundaries ({name}, test NMS)", [
            with_pseudo(base, "NMS", "nms", delta=True),
            *(with_pseudo(base, f"{t} fusion", t, delta=True) for t in TEMPLATES)])
    if "3-test" in keys:
        tables["3-test"] = Table(f"Table 3, at test: post-processing of the {name} CAS (no pseudo labels)", [
            plain(base, "NMS"), *(plain(base, f"{t} fusion", fusion_at_test(base, t)) for t in TEMPLATES)])
    if "4" in keys:
        tables["4"] = Table(f"Table 4: components ({name})", [
            plain(base, f"baseline {name}"),
            with_pseudo(base, "+ LinPro (NMS boundaries)", "nms", delta=False),
            with_pseudo(base, "+ fusion", "gaussian", delta=False),
            with_pseudo(base, "+ Δ", "gaussian", delta=True),
            with_pseudo(base, "+ fusion at test", "gaussian", delta=True,
                        test=fusion_at_test(base, "gaussian"))])
    if "5" in keys:
        rows = []
        for model in models:
            rows += [plain(model, MODEL_NAMES.get(model, model)),
                     Row(f"{MODEL_NAMES.get(model, model)} + GauFuse", f"{model}_gaufuse", f"{model}_gaufuse.yaml"),
                     Row("gain", f"{model}_gaufuse", f"{model}_gaufuse.yaml", baseline=model)]
        tables["5"] = Table("Table 5: the plug-in on each base model", rows)
    return tables


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(p)
    p.add_argument("--tables", default="3,4,5", help=f"comma-separated among 3 (both parts), {', '.join(TABLE_KEYS)}")
    p.add_argument("--models", default=",".join(MODEL_NAMES), help="base models of table 5")
    p.add_argument("--base", default="rskp", help="base model of tables 3 and 4")
    args = p.parse_args(argv)
    check_run_arguments(p, args)
    keys = [k.strip() for k in args.tables.split(",") if k.strip()]
    args.tables = [k for k in TABLE_KEYS if k in keys or k.split("-")[0] in keys]
    unknown = set(keys) - set(TABLE_KEYS) - {"3"}
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    missing = [f"{m}{s}.yaml" for m in {*args.models, args.base} for s in ("", "_gaufuse")
               if not (CONFIG_DIR / f"{m}{s}.yaml").is_file()]
    if unknown or not args.tables:
        p.error(f"--tables: use some of 3, {', '.join(TABLE_KEYS)} (got {keys!r})")
    if missing:
        p.error(f"no config {', '.join(sorted(missing))} in {CONFIG_DIR}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_tables(build_tables(args.tables, args.models, args.base), args, "ablation.json")


if __name__ == "__main__":
    sys.exit(main())
