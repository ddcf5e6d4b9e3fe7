"""Command-line interface: parses arguments and calls the library. No logic lives here.

Each subcommand names the one library function that does its work; the function receives the parsed
options as keyword arguments and returns a process exit code (0 on success).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from wtal.errors import WtalInputError


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wtal", description="Weakly-supervised temporal action localization.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic THUMOS-like dataset (W-TALC bundle + per-video folders), "
                       "or a Charades-STA-like grounding set")
    s.add_argument("--task", choices=["detection", "grounding"], default="detection",
                   help="grounding: sentences + features/{rgb,flow}/VIDEO.npy + train.json/test.json")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--dim", type=int, default=None,
                   help="joint feature dimension, RGB half + flow half (default 2048; grounding 1024)")
    s.add_argument("--videos", type=int, default=None,
                   help="number of videos (default 412, about half train, half test; grounding 6000, a fifth test)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(_target="wtal.data.synthetic:synth_command")

    s = sub.add_parser("eval", help="detection mAP of an ActivityNet-format result file (or grounding recall)")
    s.add_argument("--task", choices=["detection", "grounding"], default="detection",
                   help="grounding: R@1/R@5/mIoU of a grounding result file against a query file")
    s.add_argument("--pred", required=True, help="result JSON (ActivityNet format, or a grounding result file)")
    s.add_argument("--gt", required=True, help="gt.json, ActivityNet JSON, or a W-TALC annotation folder "
                   "(grounding: a query JSON such as test.json, or Charades-STA lines with --durations)")
    s.add_argument("--subset", default=None, help="ground-truth subset (default: 'test' if present, else 'validation')")
    s.add_argument("--tiou", type=_floats, default=None,
                   help="comma-separated tIoU thresholds (grounding default: 0.1,0.3,0.5,0.7)")
    s.add_argument("--durations", default=None, help="grounding: video durations (JSON or CSV) for text annotations")
    s.add_argument("--mode", choices=["anet", "wtalc"], default="anet")
    s.add_argument("--json", dest="json_out", default=None, help="write thresholds, mAP and average here")
    s.set_defaults(_target="wtal.evaluation.command:eval_command")

    s = sub.add_parser("localize", help="action instances from a CAS file of any model")
    s.add_argument("--cas", required=True, help="CAS.npz (see README: CAS file format)")
    s.add_argument("--out", required=True, help="result JSON to write")
    s.add_argument("--method", choices=["fusion", "nms", "soft-nms"], default="fusion")
    s.add_argument("--preset", choices=["paper", "reference"], default="paper")
    s.add_argument("--template", choices=["gaussian", "uniform", "exponential", "t"], default=None)
    s.add_argument("--temperature", type=float, default=None)
    s.add_argument("--temperature-mode", choices=["absolute", "relative"], default=None,
                   help="relative: the temperature is in units of each CAS column's range (scale-free)")
    s.add_argument("--class-threshold", type=float, default=None)
    s.set_defaults(_target="wtal.localize.command:localize_command")

    s = sub.add_parser("pseudolabel", help="LinPro pseudo labels from a CAS file")
    s.add_argument("--cas", required=True)
    s.add_argument("--out", required=True, help="labels.npz to write")
    s.add_argument("--preset", choices=["paper", "reference"], default="paper")
    s.add_argument("--temperature", type=float, default=None)
    s.add_argument("--temperature-mode", choices=["absolute", "relative"], default=None,
                   help="relative: the temperature is in units of each CAS column's range (scale-free)")
    s.add_argument("--class-threshold", type=float, default=None)
    s.set_defaults(_target="wtal.pseudo.command:pseudolabel_command")

    s = sub.add_parser("train", help="train a model from a YAML config")
    s.add_argument("--config", required=True)
    s.add_argument("--data", required=True, help="W-TALC bundle folder or per-video feature folder")
    s.add_argument("--out", required=True, help="run folder")
    s.add_argument("--epochs", type=int, default=None, help="rescale the config's schedule to N epochs")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    s.set_defaults(_target="wtal.engine.command:train_command")

    s = sub.add_parser("predict", help="predict with a trained run")
    s.add_argument("--run", required=True)
    s.add_argument("--split", default="test")
    s.add_argument("--out", required=True, help="result JSON to write")
    s.add_argument("--cas", default=None, help="also write the CAS file here")
    s.add_argument("--device", default=None)
    s.set_defaults(_target="wtal.engine.command:predict_command")

    s = sub.add_parser("plot", help="timeline plot of one video of a run")
    s.add_argument("--run", required=True)
    s.add_argument("--video", required=True)
    s.add_argument("--out", default=None, help="PNG to write (default: RUN/plots/VIDEO.png)")
    s.set_defaults(_target="wtal.viz.command:plot_command")

    s = sub.add_parser("demo", help="synthetic data -> train -> localize -> evaluate -> plot, on CPU")
    s.add_argument("--out", default="wtal-demo", help="output folder")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--epochs", type=int, default=None)
    s.set_defaults(_target="wtal.demo:demo_command")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, func_name = args._target.split(":")
    kwargs = {k: v for k, v in vars(args).items() if k not in ("_target", "command")}
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(**kwargs) or 0)
    except WtalInputError as exc:
        print(f"wtal {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
