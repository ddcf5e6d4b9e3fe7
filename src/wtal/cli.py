"""Command-line interface: parses arguments and calls the library. No logic lives here.

Each subcommand names the one library function that does its work; the function receives the parsed
options as keyword arguments and returns a process exit code (0 on success).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from wtal.errors import WtalInputError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wtal", description="Weakly-supervised temporal action localization.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic THUMOS-like dataset (W-TALC bundle + per-video folders)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--dim", type=int, default=2048, help="joint feature dimension (RGB half + flow half)")
    s.add_argument("--videos", type=int, default=412, help="number of videos (about half train, half test)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(_target="wtal.data.synthetic:synth_command")

    s = sub.add_parser("eval", help="detection mAP of an ActivityNet-format result file")
    s.add_argument("--pred", required=True, help="result JSON (ActivityNet format)")
    s.add_argument("--gt", required=True, help="gt.json, ActivityNet JSON, or a W-TALC annotation folder")
    s.add_argument("--subset", default=None, help="ground-truth subset (default: 'test' if present, else 'validation')")
    s.add_argument("--tiou", default=None, help="comma-separated tIoU thresholds in (0, 1], e.g. 0.1,0.3,0.5")
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
    s.add_argument("--data", default=None,
                   help="predict on this data folder instead of the run's (same classes, streams and widths)")
    s.add_argument("--device", default=None)
    s.set_defaults(_target="wtal.engine.command:predict_command")

    s = sub.add_parser("plot", help="timeline plot of one video of a run")
    s.add_argument("--run", required=True)
    s.add_argument("--video", required=True)
    s.add_argument("--out", default=None, help="PNG to write (default: RUN/plots/VIDEO.png)")
    s.add_argument("--data", default=None, help="the run's data folder, if it moved")
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
        with _warnings_to_stderr(f"wtal {args.command}"):
            return int(func(**kwargs) or 0)
    except WtalInputError as exc:
        print(f"wtal {args.command}: error: {exc}", file=sys.stderr)
        return 2


class _PrefixFormatter(logging.Formatter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.prefix}: {record.levelname.lower()}: {record.getMessage()}"


@contextmanager
def _warnings_to_stderr(prefix: str) -> Iterator[None]:
    """Warnings of the library's loggers on stderr as ``PREFIX: warning: ...`` while a command runs, unless
    logging is already configured (by an application, or by a command's own run log, which replaces this)."""
    package = logging.getLogger("wtal")
    if package.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(_PrefixFormatter(prefix))
    package.addHandler(handler)
    try:
        yield
    finally:
        package.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
