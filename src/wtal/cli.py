"""Command-line interface: parses arguments and calls the library. No logic lives here.

Each subcommand names the one library function that does its work; the function receives the parsed
options as keyword arguments and returns a process exit code (0 on success).

Exit codes: 0 success; 2 bad input or an output the file system refuses (one ``error:`` line naming the
file and the fix, never a traceback); 130 interrupted (Ctrl-C: one line, for ``train`` with the command that
resumes the run); 141 standard output closed early (``wtal ... | head``: quiet, as a Unix tool killed by
SIGPIPE).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from wtal.errors import WtalInputError, file_error

EXIT_INPUT_ERROR = 2
EXIT_INTERRUPTED = 128 + 2  # SIGINT
EXIT_STDOUT_CLOSED = 128 + 13  # SIGPIPE


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to every option that has a default value; options without one (None, an
    off flag, an empty list) say in their help what happens when they are left out."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if default is None or default is False or default == [] or action.required:
            return action.help
        return super()._get_help_string(action)


def package_version() -> str:
    """The installed distribution's version, else the source tree's ``wtal.__version__``."""
    from importlib import metadata

    try:
        return metadata.version("wtal")
    except metadata.PackageNotFoundError:
        from wtal import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wtal", formatter_class=HelpFormatter,
                                description="Weakly-supervised temporal action localization and sentence grounding.")
    p.add_argument("--version", action="version", version=f"wtal {package_version()}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)

    s = command("synth", "write a synthetic THUMOS-like dataset (W-TALC bundle + per-video folders), or a "
                         "Charades-STA-like sentence-grounding set")
    s.add_argument("--task", choices=["detection", "grounding"], default="detection",
                   help="grounding: sentences + features/{rgb,flow}/VIDEO.npy + train.json/test.json")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--dim", type=int, default=None,
                   help="joint feature dimension, RGB half + flow half (default: 2048; grounding 1024)")
    s.add_argument("--videos", type=int, default=None,
                   help="number of videos (default: 412, about half train, half test; grounding 6000, a fifth "
                        "test)")
    s.add_argument("--seed", type=int, default=0, help="random seed of the generator")
    s.add_argument("--clip-dim", type=int, default=0,
                   help="also write a CLIP-like stream of this width (clip/) and class-name text embeddings "
                        "(class_text.npy), e.g. 512 as CLIP ViT-B/16; 0: none")
    s.set_defaults(_target="wtal.data.synthetic:synth_command")

    s = command("embed-classes", "class-name text embeddings (class_text.npy) with a local CLIP text tower")
    s.add_argument("--clip-weights", required=True,
                   help="open_clip / OpenAI CLIP checkpoint (.pt, .bin or .safetensors); only its text tower is read")
    s.add_argument("--vocab", required=True,
                   help="CLIP's BPE vocabulary file (bpe_simple_vocab_16e6.txt.gz, shipped with open_clip)")
    s.add_argument("--data", required=True, help="W-TALC bundle or per-video feature folder (its class list)")
    s.add_argument("--templates", nargs="+", default=None, metavar="TEMPLATE",
                   help='prompt templates with a {class} placeholder, averaged (default: five, e.g. '
                        '"a video of a person doing {class}.")')
    s.add_argument("--activation", choices=["quick_gelu", "gelu"], default="quick_gelu",
                   help="the text tower's MLP activation: quick_gelu for OpenAI's weights, gelu for most "
                        "open_clip-trained ones (the checkpoint does not say)")
    s.add_argument("--out", default=None, help="file to write (default: class_text.npy where the data source reads it)")
    s.set_defaults(_target="wtal.text.command:embed_classes_command")

    s = command("eval", "detection mAP of an ActivityNet-format result file, or grounding recall")
    s.add_argument("--task", choices=["detection", "grounding"], default="detection",
                   help="grounding: R@1/R@5/mIoU of a grounding result file against a query file")
    s.add_argument("--pred", required=True, help="result JSON (ActivityNet format, or a grounding result file)")
    s.add_argument("--gt", required=True, help="gt.json, ActivityNet JSON, or a W-TALC annotation folder "
                                               "(grounding: a query JSON such as test.json, or Charades-STA "
                                               "lines with --durations)")
    s.add_argument("--subset", default=None,
                   help="ground-truth subset (default: 'test' if present, else 'validation')")
    s.add_argument("--tiou", default=None,
                   help="comma-separated tIoU thresholds in (0, 1] (default: 0.1,0.2,...,0.7 when the ground truth "
                        "has a 'test' subset, else 0.5,0.55,...,0.95; grounding 0.1,0.3,0.5,0.7)")
    s.add_argument("--durations", default=None,
                   help="grounding: video durations (JSON or CSV) for text annotations (default: none needed)")
    s.add_argument("--mode", choices=["anet", "wtalc"], default="anet",
                   help="anet: official ActivityNet scoring; wtalc: W-TALC snippet-grid compatibility")
    s.add_argument("--json", dest="json_out", default=None,
                   help="also write thresholds, mAP and average to this JSON file (default: print only)")
    s.set_defaults(_target="wtal.evaluation.command:eval_command")

    s = command("localize", "action instances from a CAS file of any model")
    s.add_argument("--cas", required=True, help="CAS.npz (format: docs/data.md, CAS files)")
    s.add_argument("--out", required=True, help="result JSON to write")
    s.add_argument("--run", default=None,
                   help="start from this trained run's own post-processing recipe, its config's postprocess "
                        "section, which the options below override (default: the preset's)")
    s.add_argument("--method", choices=["fusion", "nms", "soft-nms"], default=None,
                   help="how overlapping proposals are merged: Gaussian fusion or (soft) non-maximum suppression "
                        "(default: the run's, else fusion)")
    _post_processing_options(s, temperature="fusion softmax temperature (default: the preset's)",
                             preset_default=None)
    s.add_argument("--template", choices=["gaussian", "uniform", "exponential", "t"], default=None,
                   help="fusion weight template (default: the preset's, gaussian)")
    s.set_defaults(_target="wtal.localize.command:localize_command")

    s = command("pseudolabel", "LinPro pseudo labels from a CAS file")
    s.add_argument("--cas", required=True, help="CAS.npz (format: docs/data.md, CAS files)")
    s.add_argument("--out", required=True, help="labels.npz to write")
    _post_processing_options(s, temperature="fusion softmax temperature (default: the preset's training-time "
                                            "value, not the test-time one of wtal localize)")
    s.set_defaults(_target="wtal.pseudo.command:pseudolabel_command")

    s = command("train", "train a model from a YAML config")
    s.add_argument("--config", required=True,
                   help="YAML config: a path, or the name of a shipped config (e.g. rskp, rskp_gaufuse.yaml)")
    s.add_argument("--data", required=True, help="W-TALC bundle folder or per-video feature folder")
    s.add_argument("--out", required=True,
                   help="run folder: resolved config, logs, checkpoints and predictions are written here")
    s.add_argument("--epochs", type=int, default=None,
                   help="rescale the config's schedule to N epochs (default: the config's train.epochs)")
    s.add_argument("--seed", type=int, default=None, help="training seed (default: the config's train.seed)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-4; repeatable, applied last "
                        "(default: the config as written)")
    s.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    s.set_defaults(_target="wtal.engine.command:train_command")

    s = command("predict", "predict with a trained run")
    s.add_argument("--run", required=True, help="run folder written by wtal train")
    s.add_argument("--split", default="test", help="data split to predict: train, val or test")
    s.add_argument("--out", required=True, help="result JSON to write")
    s.add_argument("--cas", default=None, help="also write the CAS file here (default: no CAS file)")
    s.add_argument("--data", default=None,
                   help="predict on this data folder instead of the run's, with the same classes, streams and "
                        "widths (default: the run's data)")
    s.add_argument("--teacher-weight", type=float, default=None,
                   help="score with the run's model and its teacher together: CAS and video scores "
                        "(1 - W) model + W teacher, e.g. 0.5 for the fused CBP + VLP branches of a vlp_alternate "
                        "run (default: the model alone)")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    s.set_defaults(_target="wtal.engine.command:predict_command")

    s = command("plot", "timeline plot of one video of an action-localization run, or of one query of a "
                        "sentence-grounding run")
    s.add_argument("--run", required=True, help="run folder written by wtal train")
    s.add_argument("--video", default=None,
                   help="video name (of the run's train, validation or test split); for action localization "
                        "(default: none; give --video or --query)")
    s.add_argument("--query", type=int, default=None,
                   help="query id (its position in its annotation file); for sentence grounding (default: none)")
    s.add_argument("--split", default=None, help="with --query: train, val or test (default: test)")
    s.add_argument("--out", default=None,
                   help="PNG to write (default: RUN/plots/VIDEO.png, or RUN/plots/SPLIT_queryID.png)")
    s.add_argument("--data", default=None, help="the run's data folder, if it moved (default: the run's data)")
    s.set_defaults(_target="wtal.viz.command:plot_command")

    s = command("demo", "synthetic data -> train -> localize -> evaluate -> plot, on CPU")
    s.add_argument("--out", default="wtal-demo", help="output folder")
    s.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and of training")
    s.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default: the demo config's schedule)")
    s.set_defaults(_target="wtal.demo:demo_command")
    return p


def _post_processing_options(s: argparse.ArgumentParser, *, temperature: str, preset_default: str | None = "paper"
                             ) -> None:
    """The localizer settings shared by ``localize`` and ``pseudolabel``."""
    s.add_argument("--preset", choices=["paper", "reference"], default=preset_default,
                   help="post-processing settings: the paper's or the reference code's"
                        + ("" if preset_default else " (default: the run's, else paper)"))
    s.add_argument("--temperature", type=float, default=None, help=temperature)
    s.add_argument("--temperature-mode", choices=["absolute", "relative"], default=None,
                   help="relative: the temperature is in units of each CAS column's range (scale-free) "
                        "(default: the preset's, absolute)")
    s.add_argument("--class-threshold", type=float, default=None,
                   help="keep a class when its video score is at least this (default: the preset's)")


def main(argv: list[str] | None = None) -> int:
    """Run one ``wtal`` command; its exit code. A worker of a multi-process run ends its process here
    (:func:`wtal.engine.distributed.exit_worker`)."""
    code = _run_command(argv)
    distributed = sys.modules.get("wtal.engine.distributed")  # not imported: no process group (and no torch)
    if distributed is not None and distributed.joined_process_group():
        distributed.exit_worker(code)
    return code


def _run_command(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:  # --help, --version and usage errors print, then exit with argparse's code
        _flush_stdout()
        raise
    module_name, func_name = args._target.split(":")
    kwargs = {k: v for k, v in vars(args).items() if k not in ("_target", "command")}
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        with _warnings_to_stderr(f"wtal {args.command}"):
            code = int(func(**kwargs) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers, not at interpreter exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except WtalInputError as exc:
        return _error(args.command, exc)
    except OSError as exc:  # an unexpected file-system refusal that names its file: still one line
        if exc.filename is None:
            raise
        return _error(args.command, file_error(exc))
    except KeyboardInterrupt:
        print(interrupted_message(args, argv), file=sys.stderr)
        return EXIT_INTERRUPTED


def _error(command: str, exc: WtalInputError) -> int:
    print(f"wtal {command}: error: {exc}", file=sys.stderr)
    return EXIT_INPUT_ERROR


def interrupted_message(args: argparse.Namespace, argv: list[str]) -> str:
    """One line for Ctrl-C; for ``train`` the command that continues the run (the user's own arguments)."""
    if args.command != "train":
        return f"wtal {args.command}: interrupted"
    if not (Path(args.out) / "checkpoints" / "last.pt").is_file():
        return f"wtal train: interrupted before the first checkpoint; start again with: {_command_line(argv)}"
    again = argv if "--resume" in argv else [*argv, "--resume"]
    return f"wtal train: interrupted; resume with: {_command_line(again)}"


def _command_line(argv: list[str]) -> str:
    return shlex.join(["wtal", *argv])


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_closed()


def _stdout_closed() -> int:
    """The reader of our standard output went away (``| head``): stop quietly. Later writes, including
    the interpreter's final flush, go to /dev/null (Python docs, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # a replaced sys.stdout without a descriptor
        pass
    return EXIT_STDOUT_CLOSED


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
