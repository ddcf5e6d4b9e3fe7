"""Fidelity of wtal's base models against their public reference code, side by side.

::

    python benchmarks/fidelity.py --model rskp --reference PATH [--data DIR] [--out DIR] [--seeds 0,1,2]
        [--steps 50] [--epochs 40] [--mode steps|end2end|both] [--width input|reference] [--reduction sum|mean]

``--reference`` is a checkout of the model's public code (RSKP and FAC-Net: LeonHLJ/RSKP, LeonHLJ/FAC-Net;
BaS-Net and WUM: Pilhyeon/BaSNet-pytorch, Pilhyeon/WTAL-Uncertainty-Modeling; MMSD: LeonHLJ/MMSD; ISSF:
MICLAB-BUPT/ISSF), kept outside this repository.
The script only imports or runs it; every change it needs on a current Python/numpy/torch/CPU is applied
from outside, in :func:`install_shims` (no file of the checkout is edited):

* CPU: ``Tensor.cuda`` / ``Module.cuda`` are no-ops (BaS-Net, WUM call ``.cuda()`` unconditionally);
* numpy: ``np.load`` allows pickles (the W-TALC annotation files are pickled object arrays; numpy >= 1.16.3
  refuses them by default); ``np.array`` of per-video arrays of different lengths falls back to an object
  array (numpy >= 1.24 raises instead); ``np.float`` is ``float`` again for BaS-Net/WUM's evaluator, whose
  ``joblib.Parallel`` runs in-process (fresh worker processes would lack the alias);
* torch: ``torch.solve(B, A)`` (RSKP; removed in torch 2) is ``(torch.linalg.solve(A, B), A)``;
* ``tensorboard_logger`` is replaced by an in-memory stub (it only logs);
* argument types: RSKP's ``--warmup-epoch``/``--dropout``/``--lambda-*`` and FAC-Net's ``--dropout``/``--lambda-*``
  have no ``type=`` (a value given on the command line stays a string); WUM's ``r_act``/``r_bkg`` are floats
  used as slice bounds (torch >= 1.x rejects them) and are made ints;
* data: BaS-Net/WUM hard-code THUMOS14's 20 class names (``config.class_dict``, replaced in place by the data's
  classes) and the 2048-d input width (``Config.len_feature``, set to the data's width); FAC-Net's loader cuts
  the joint I3D features at column 1024 (mapped to the middle column of the data);
* MMSD: its one code defect fixed (``SingleStream.forward`` returns 4 values where ``WSTAL.forward`` unpacks 5: a
  fifth ``None`` is appended; the value is used nowhere); ``train_Processor``'s import of ``AttLoss``, defined
  nowhere and never used, is satisfied by a placeholder; its forward's split of the joint features at column 1024
  is mapped to the middle column; options with a float default and no ``type=`` are typed ``float``;
  ``--iter_list`` / ``--changeLR_list`` (list defaults, one int on the command line) take lists;
* ISSF: its source files have no ``.py`` extension (an import hook loads them); ``thop``, imported by its
  evaluation for a FLOP count, is stubbed; its options, built inside ``core/main``'s ``if __name__ ==
  '__main__'`` block, are read by running only that block's ``add_argument`` statements; and, unless
  ``--published-memory-index``, its training loop's ``np.where(labels == 1)[0]`` on the ``(1, C)`` label batch
  is taken over the one row, so the memory is read and updated by the video's classes (as published it gives
  row indices: every video reads and updates class 0's memory; wtal uses the classes, as for RSKP); end to end,
  its hard-coded momentum epoch 85 is set to the schedule's (``momentum_epoch`` of ``wtal train --epochs N``);
* optional, end to end, ``--reference-l2-eps EPS`` (FAC-Net, MMSD): ``EPS`` added to the norm in their L2
  normalisation, which has none as published (on 128-d streams an embedding that is all zero after ReLU and
  dropout makes the loss NaN for the rest of the run; wtal adds 1e-9);
* speed, end to end only: BaS-Net/WUM evaluate the whole test set after every optimizer step; here only after
  the last one (their evaluation runs in eval mode without gradients, so training is unchanged);
* width, BaS-Net/WUM only, ``--width input`` (default): their hidden convolutions are hard-coded 2048 wide; they
  are built as wide as the input, as wtal's ``hidden_dim: null`` does (the 2048-wide BaS-Net costs about 35x
  more on 256-d data: ~7 CPU-hours per run). ``--width reference`` keeps 2048 on both sides.

Three comparisons (``--mode``):

1. ``steps`` -- same start, same steps: the reference model is built from the checkout, its initial weights are
   copied into the wtal model with a hand-written name map, and both are trained on the same videos in the same
   order (RSKP, FAC-Net, MMSD, ISSF: whole videos, as their loaders; BaS-Net, WUM: the reference's own
   750-snippet samples, fed to both sides) with the reference optimiser. Dropout stays on: the global torch
   generator is re-seeded before every training forward pass on both sides (MMSD: before each of its five
   dropout layers, which the two sides call in different orders), so both draw the same masks. RSKP, FAC-Net,
   MMSD and ISSF run the reference's own training loop (``Processor.train``, ISSF's ``Train.train``) and
   BaS-Net/WUM the reference's ``train`` step function; the per-video (W-TALC references) or per-batch (BaS-Net,
   WUM) training losses are compared. MMSD generates pseudo labels after epochs 1 and 2 (its ``iter_list``, wtal's
   ``label_epochs``), so self-voting is in the loss from the second epoch; ISSF fills its memory after epoch
   index 1 as published, and wtal runs with ``wrap_first_predecessor: true`` (the reference's index -1).
2. ``end2end`` -- same schedule, end to end: the reference training script runs unmodified apart from the shims,
   on the short schedule that ``wtal train --epochs N`` derives from the wtal config (batch size, learning rate,
   warm-up epoch, MMSD's label epochs and lr milestones, ISSF's momentum epoch), tested once after the last
   epoch, and ``wtal train`` runs the same schedule and seed on all training videos with the final checkpoint
   (``data.val_fraction=0``, ``train.select=last``: the reference has no validation split). Both prediction
   sets are scored by ``wtal eval`` (official ActivityNet mAP, tIoU 0.1:0.7). The reference's detections are
   its own post-processing's output: BaS-Net/WUM write an ActivityNet result file; RSKP, FAC-Net, MMSD and ISSF
   only print their W-TALC mAP, so a hook records the detections their evaluation computes (before their
   Ambiguous-segment filter, which the ActivityNet evaluator does not have).
3. ``cross`` (after ``end2end`` with the same ``--tag``; not RSKP): the reference's final model, ported into a
   copy of the wtal run of the same seed, is tested by ``wtal predict`` with wtal's test recipe on whole videos,
   which separates the two sides' training from their test recipes.

The data is the project's synthetic set (``--data``: a ``wtal synth`` folder, else generated with
``--dim 256 --seed 0``) written in each reference's own input layout under ``OUT/data``: a W-TALC bundle named
``Thumos14reduced`` (RSKP, FAC-Net, MMSD and ISSF accept only that name) or per-video folders with ``gt.json`` and
``split_train.txt``/``split_test.txt`` (BaS-Net, WUM).

Output: a markdown table on stdout and ``OUT/fidelity_MODEL.json``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import math
import os
import resource
import runpy
import shutil
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from wtal.data.annotations import AnnotationSet  # noqa: E402
from wtal.data.batch import Batch  # noqa: E402
from wtal.data.folders import write_video_folders  # noqa: E402
from wtal.data.sources import open_source, split_subsets  # noqa: E402
from wtal.data.synthetic import SynthConfig, generate  # noqa: E402
from wtal.data.timebase import FeatureLayout  # noqa: E402
from wtal.data.wtalc import write_wtalc_bundle  # noqa: E402
from wtal.models import ModelContext, build_model  # noqa: E402
from wtal.models.masked import l2_normalize  # noqa: E402

WTALC_NAME = "Thumos14reduced"  # RSKP's and FAC-Net's Processor accept no other dataset name
TIOU = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
# top-level module names of the four checkouts; dropped from sys.modules after each use so that two
# references (which reuse names such as ``model`` and ``utils``) can run in one process
REFERENCE_MODULES = ("model", "utils", "evaluation", "eval", "options", "config", "train", "test", "main",
                     "processor", "train_options", "test_options", "train_Processor", "test_Processor",
                     "thumos_features", "tensorboard_logger", "core", "arch", "data", "thop")


# ============================================================================================ the wtal adapter

def wtal_model(name: str, dim: int, num_classes: int, **params) -> torch.nn.Module:
    """A wtal model on the RGB and flow halves of ``dim``-wide joint features (the references' input)."""
    context = ModelContext({"rgb": dim // 2, "flow": dim - dim // 2}, tuple(f"class{c}" for c in range(num_classes)))
    return build_model(name, context, **params)


def wtal_batch(features: torch.Tensor, labels: torch.Tensor, first_index: int = 0) -> Batch:
    """Unpadded joint ``(B, T, D)`` features as a wtal batch of the RGB and flow streams; ``Batch.index`` (the
    training-set position, MMSD's label-store key) counts from ``first_index``."""
    half = features.shape[-1] // 2
    return Batch({"rgb": features[..., :half], "flow": features[..., half:]},
                 torch.ones(features.shape[:2], dtype=torch.bool), labels, [str(i) for i in range(len(features))],
                 torch.arange(first_index, first_index + len(features)))


def wtal_losses(model: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor, epoch: int,
                first_index: int = 0) -> dict[str, torch.Tensor]:
    """The one place that calls a wtal model: per-video ``(B,)`` losses of unpadded ``(B, T, D)`` features."""
    batch = wtal_batch(features, labels, first_index)
    return model.losses(model(batch), batch, epoch)


def wtal_train_batches(videos: list[tuple[np.ndarray, np.ndarray]]) -> Callable[[], Iterator[Batch]]:
    """``model.on_epoch_end``'s fixed-order training pass: one video per batch (the reference's loader)."""
    def batches() -> Iterator[Batch]:
        for i, (x, y) in enumerate(videos):
            yield wtal_batch(torch.as_tensor(x, dtype=torch.float32).unsqueeze(0),
                             torch.as_tensor(y, dtype=torch.float32).unsqueeze(0), i)
    return batches


# ============================================================================================ data export

def load_synthetic(data: Path | None, out: Path) -> tuple[AnnotationSet, dict[str, np.ndarray], FeatureLayout]:
    """The project's synthetic set: read from a ``wtal synth`` folder, else generated (256-d, seed 0)."""
    if data is None:
        synth = generate(SynthConfig(dim=256, seed=0))
        return synth.annotations, synth.features, synth.layout
    source = open_source(data / "wtalc" if (data / "wtalc").is_dir() else data)
    joint = {}
    for name in source.annotations.videos:
        streams = source.features(name, ["rgb", "flow"])
        joint[name] = np.concatenate([streams["rgb"], streams["flow"]], axis=1)
    widths = source.stream_widths()
    rgb, flow = widths["rgb"], widths["flow"]
    layout = FeatureLayout(source.snippets_per_second, (0, rgb), (rgb, rgb + flow))
    return source.annotations, joint, layout


def export_wtalc(root: Path, annotations: AnnotationSet, features: dict[str, np.ndarray]) -> Path:
    """``root/Thumos14reduced/``: the W-TALC bundle RSKP and FAC-Net read (``--dataset-root root/``)."""
    folder = root / WTALC_NAME
    if not any(folder.glob("*-JOINTFeatures.npy")):
        write_wtalc_bundle(folder, WTALC_NAME, annotations, features)
    return folder


def export_folders(root: Path, annotations: AnnotationSet, features: dict[str, np.ndarray],
                   layout: FeatureLayout) -> Path:
    """BaS-Net/WUM's layout: ``features/{train,test}/{rgb,flow}/VIDEO.npy``, ``gt.json`` and one
    ``split_{train,test}.txt`` per split (video names in annotation order), the files their loaders read."""
    if not (root / "split_test.txt").is_file():
        write_video_folders(root, annotations, {v: layout.split(x) for v, x in features.items()})
        train, test = split_subsets(annotations)
        for split, subset in (("train", train), ("test", test)):
            (root / f"split_{split}.txt").write_text("".join(f"{n}\n" for n in annotations.names(subset)))
    return root


# ============================================================================================ reference shims

class RecordingLogger:
    """Stand-in for ``tensorboard_logger.Logger``: keeps every logged value in memory."""

    def __init__(self, *args, **kwargs):
        self.values: dict[str, list[tuple[int, float]]] = {}

    def log_value(self, name: str, value, step=None) -> None:
        self.values.setdefault(name, []).append((step, float(value)))


def _ragged_array(original: Callable) -> Callable:
    def array(obj, *args, **kwargs):
        try:
            return original(obj, *args, **kwargs)
        except ValueError:  # per-video arrays of different lengths (numpy < 1.24 made an object array)
            out = np.empty(len(obj), dtype=object)
            for i, item in enumerate(obj):
                out[i] = item
            return out
    return array


def _joint_key(key, width: int):
    """An index ``(rows, columns)`` whose column slice is the I3D split at column 1024 (``0:1024``, ``:1024`` or
    ``1024:``), mapped to the middle column of ``width`` joint columns; any other index unchanged."""
    if isinstance(key, tuple) and len(key) == 2 and isinstance(key[1], slice) and key[1].step is None:
        half = width // 2
        if key[1].start in (0, None) and key[1].stop == 1024:
            return (key[0], slice(0, half))
        if key[1].start == 1024 and key[1].stop is None:
            return (key[0], slice(half, None))
    return key


class _JointColumns(np.ndarray):
    """Joint RGB+flow features whose ``[:, 0:1024]`` / ``[:, 1024:]`` (FAC-Net's hard-coded I3D split) select the
    first / second half of the columns at any width."""

    def __getitem__(self, key):
        return np.asarray(super().__getitem__(_joint_key(key, self.shape[-1])))


class _JointTensor(torch.Tensor):
    """A joint feature tensor whose ``[..., :1024]`` / ``[..., 1024:]`` (MMSD's split inside its forward) select the
    first / second half of the columns at any width; every result is a plain tensor."""

    def __getitem__(self, key):
        return self.as_subclass(torch.Tensor)[_joint_key(key, self.shape[-1])]


def _numpy_with(**overrides) -> types.SimpleNamespace:
    """The ``numpy`` module as one reference module sees it, with some functions replaced."""
    namespace = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    for name, value in overrides.items():
        setattr(namespace, name, value)
    return namespace


def _where_in_the_row(condition, *args):
    """``np.where`` with a ``(1, C)`` condition taken over its one row: ISSF's ``np.where(labels == 1)[0]`` on a
    batch of one video then gives the video's class indices (as published it gives row indices, all 0)."""
    if not args and np.ndim(condition) == 2 and np.shape(condition)[0] == 1:
        return np.where(np.asarray(condition)[0])
    return np.where(condition, *args)


class ExtensionlessFinder(importlib.abc.MetaPathFinder):
    """Imports the source files of ISSF's checkout, which have no ``.py`` extension (``core/train``, ...)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def find_spec(self, fullname, path, target=None):
        file = self.root.joinpath(*fullname.split("."))
        if file.is_file() and not file.suffix:
            return importlib.util.spec_from_loader(fullname, importlib.machinery.SourceFileLoader(fullname, str(file)))
        return None


def issf_parser(root: Path) -> argparse.ArgumentParser:
    """ISSF's options: ``core/main`` builds its parser inside ``if __name__ == '__main__'``; the statements of
    that block up to ``parser.parse_args()`` are run on their own (published defaults, nothing else run)."""
    tree = ast.parse((root / "core" / "main").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test))
    body = [n for n in block.body if "parse_args" not in ast.unparse(n) and "main(" not in ast.unparse(n)]
    namespace: dict = {"argparse": argparse}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(root / "core" / "main"), "exec"), namespace)
    return namespace["parser"]


def _load_allowing_pickle(original: Callable, split_joint: bool) -> Callable:
    def load(path, *args, **kwargs):
        kwargs.setdefault("allow_pickle", True)
        arr = original(path, *args, **kwargs)
        if split_joint and str(path).endswith("JOINTFeatures.npy"):
            for i in range(len(arr)):
                arr[i] = np.asarray(arr[i]).view(_JointColumns)
        return arr
    return load


def _solve(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.linalg.solve(a, b), a


def _width_nn(width: int) -> types.SimpleNamespace:
    """``torch.nn`` as seen by BaS-Net/WUM's ``model.py`` with their hard-coded 2048 hidden width set to ``width``."""
    def conv1d(in_channels, out_channels, *args, **kwargs):
        return torch.nn.Conv1d(width if in_channels == 2048 else in_channels,
                               width if out_channels == 2048 else out_channels, *args, **kwargs)
    namespace = types.SimpleNamespace(**{k: getattr(torch.nn, k) for k in dir(torch.nn) if not k.startswith("_")})
    namespace.Conv1d = conv1d
    return namespace


@dataclass
class ShimOptions:
    model: str
    input_dim: int
    classes: list[str]
    width: int | None = None  # BaS-Net/WUM hidden width (None: the reference's 2048)
    test_last_only: int | None = None  # BaS-Net/WUM: evaluate only at this step
    l2_eps: float | None = None  # FAC-Net, MMSD: an epsilon in the L2 normalisation (None: as published, none)
    published_memory_index: bool = False  # ISSF: keep its memory's row-index bug (default: the class index)
    momentum_epoch: int | None = None  # ISSF end to end: its hard-coded momentum epoch 85 rescaled to the schedule


def install_shims(opts: ShimOptions) -> None:
    """Apply the documented minimum of outside changes (module docstring) to the checkout on ``sys.path``."""
    np.load = _load_allowing_pickle(np.load, split_joint=opts.model == "facnet")
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.solve = _solve
    stub = types.ModuleType("tensorboard_logger")
    stub.Logger = RecordingLogger
    sys.modules["tensorboard_logger"] = stub
    if opts.model == "mmsd":
        install_mmsd_shims(opts.l2_eps)
        return
    if opts.model == "issf":
        install_issf_shims(opts)
        return
    if opts.model in ("rskp", "facnet"):
        names = ("options",) if opts.model == "rskp" else ("train_options", "test_options")
        for name in names:
            parser = importlib.import_module(name).parser
            for action in parser._actions:
                if action.dest in ("warmup_epoch",):
                    action.type = int
                elif action.dest in ("dropout", "lambda_a", "lambda_b", "lambda_s", "lambda_cw", "lambda_ca",
                                     "lambda_mil"):
                    action.type = float
        if opts.l2_eps is not None:
            branch = importlib.import_module("model.main_branch")
            branch.calculate_l1_norm = lambda f: l2_normalize(f, opts.l2_eps)
        evaluation = importlib.import_module("evaluation.eval")
        evaluation.np = _numpy_with(array=_ragged_array(np.array))
        return
    config = importlib.import_module("config")
    config.class_dict.clear()
    config.class_dict.update(dict(enumerate(opts.classes)))
    original_init = config.Config.__init__

    def init(self, args):
        original_init(self, args)
        self.len_feature = opts.input_dim
        self.num_classes = len(opts.classes)
    config.Config.__init__ = init
    if opts.width is not None:
        importlib.import_module("model").nn = _width_nn(opts.width)
    if opts.model == "wum":
        options = importlib.import_module("options")
        original_parse = options.parse_args

        def parse_args():
            args = original_parse()
            args.r_act, args.r_bkg = int(args.r_act), int(args.r_bkg)
            return args
        options.parse_args = parse_args
    if not hasattr(np, "float"):  # their evaluator's ``astype(np.float)`` (alias removed in numpy 1.24)
        np.float = float  # noqa: NPY001 -- restores the alias the reference uses
    detection = importlib.import_module("eval.eval_detection")
    detection.Parallel = SerialParallel  # joblib workers would import numpy afresh, without the alias
    if opts.test_last_only is not None:
        test_module = importlib.import_module("test")
        original_test = test_module.test
        last = opts.test_last_only

        def test(net, config, logger, test_loader, test_info, step, *args, **kwargs):
            if step == last:
                return original_test(net, config, logger, test_loader, test_info, step, *args, **kwargs)
            test_info["average_mAP"].append(-math.inf)  # read by main.py's best-model check
            return None
        test_module.test = test


def install_mmsd_shims(l2_eps: float | None = None) -> None:
    """MMSD: its one code defect fixed (each stream's ``forward`` returns 4 values, ``WSTAL.forward`` unpacks 5:
    a fifth ``None`` is appended, unused anywhere), the missing ``AttLoss`` import satisfied (unused), the
    column-1024 split mapped to the middle column, untyped float options typed, ragged pseudo-label arrays; with
    ``l2_eps`` (end to end, ``--reference-l2-eps``) an epsilon in its L2 normalisation."""
    branch = importlib.import_module("model.main_branch")
    four_values = branch.SingleStream.forward
    branch.SingleStream.forward = lambda self, x: (*four_values(self, x), None)
    wstal_forward = branch.WSTAL.forward
    branch.WSTAL.forward = lambda self, x: wstal_forward(self, x.as_subclass(_JointTensor))
    if l2_eps is not None:
        branch.calculate_l1_norm = lambda f: l2_normalize(f, l2_eps)
    losses = importlib.import_module("model.losses")

    class AttLoss:  # imported by train_Processor, defined nowhere, never instantiated
        def __init__(self, *args, **kwargs):
            raise NotImplementedError("MMSD's AttLoss is not part of its published code")
    losses.AttLoss = AttLoss
    for action in importlib.import_module("train_options").parser._actions:
        if action.type is None and isinstance(action.default, float):
            action.type = float
        elif action.dest in ("iter_list", "changeLR_list"):  # list defaults, but one int on the command line
            action.nargs = "+"
    evaluation = importlib.import_module("evaluation.eval")
    evaluation.np = _numpy_with(array=_ragged_array(np.array))


def install_issf_shims(opts: ShimOptions) -> None:
    """ISSF: extensionless source files made importable, ``thop`` (imported for an unused FLOP count) stubbed,
    and unless ``published_memory_index`` the memory read/updated by the video's classes."""
    sys.meta_path.insert(0, ExtensionlessFinder(Path(sys.path[0])))
    thop = types.ModuleType("thop")

    def profile(*args, **kwargs):
        raise NotImplementedError("thop (a FLOP counter) is not installed; the comparison does not count FLOPs")
    thop.profile = profile
    sys.modules["thop"] = thop
    if not opts.published_memory_index:
        importlib.import_module("core.train").np = _numpy_with(where=_where_in_the_row)
    importlib.import_module("eval.evaluate").np = _numpy_with(array=_ragged_array(np.array))
    if opts.momentum_epoch is not None:
        memory = importlib.import_module("arch.saliency").Saliency_Memory
        original_init = memory.__init__

        def init(self, args):
            original_init(self, args)
            self.moment_up = opts.momentum_epoch
        memory.__init__ = init


class SerialParallel:
    """``joblib.Parallel(n_jobs=...)(tasks)`` run in this process, one task after another."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, tasks):
        return [func(*args, **kwargs) for func, args, kwargs in tasks]


@contextlib.contextmanager
def reference_on_path(path: Path) -> Iterator[None]:
    """Import from ``path``; afterwards drop its modules and restore numpy/torch attributes the shims replace."""
    saved = (np.load, torch.Tensor.cuda, torch.nn.Module.cuda, getattr(torch, "solve", None))
    had_float = hasattr(np, "float")
    sys.path.insert(0, str(path))
    try:
        yield
    finally:
        sys.path.remove(str(path))
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, ExtensionlessFinder)]
        for name in list(sys.modules):
            if name.split(".")[0] in REFERENCE_MODULES:
                del sys.modules[name]
        np.load, torch.Tensor.cuda, torch.nn.Module.cuda = saved[:3]
        if not had_float and hasattr(np, "float"):
            del np.float  # noqa: NPY001
        if saved[3] is None:
            if hasattr(torch, "solve"):
                del torch.solve
        else:
            torch.solve = saved[3]


# ---------------------------------------------------------------- detection hooks (RSKP and FAC-Net, end to end)

def _wtalc_test_videos(annotation_path: str) -> list[str]:
    """The video order of the W-TALC evaluation: test subset, videos with at least one segment."""
    names = [v.decode("utf-8") for v in np.load(annotation_path + "/videoname.npy")]
    subset = [s.decode("utf-8") for s in np.load(annotation_path + "/subset.npy")]
    segments = np.load(annotation_path + "/segments.npy", allow_pickle=True)
    return [n for n, s, g in zip(names, subset, segments, strict=True) if s == "test" and len(g)]


def _segments_to_json(per_class: list, annotation_path: str, path: Path, snippets_per_second: float) -> None:
    """W-TALC detections ``[video index, start, end (exclusive), score]`` per class index -> ActivityNet JSON."""
    classes = [c.decode("utf-8") for c in np.load(annotation_path + "/classlist.npy")]
    videos = _wtalc_test_videos(annotation_path)
    results: dict[str, list] = {v: [] for v in videos}
    for c, rows in enumerate(per_class):
        for i, s, e, score in np.asarray(rows, dtype=np.float64).reshape(-1, 4):
            results[videos[int(i)]].append({"label": classes[c], "score": float(score),
                                            "segment": [s / snippets_per_second, e / snippets_per_second]})
    path.write_text(json.dumps({"version": "VERSION 1.3", "results": results, "external_data": {}}))


# the modules of each W-TALC-style reference that hold its evaluation (which calls ``dtmAP``) and its detection mAP
WTALC_EVALUATION = {"rskp": ("evaluation.eval", "evaluation.detectionMAP"),
                    "facnet": ("evaluation.eval", "evaluation.detectionMAP"),
                    "mmsd": ("evaluation.eval", "evaluation.detectionMAP"),
                    "issf": ("eval.evaluate", "eval.detectionMAP")}


def hook_wtalc_detections(out_json: Path, model_name: str) -> None:
    """Record the detections a W-TALC-style reference's evaluation computes, without its Ambiguous filter, as JSON.

    The wrapped detection-mAP function runs once with ``filter_segments`` made the identity and ``getLocMAP``
    made a recorder, then once unchanged (the reference's own printed numbers)."""
    evaluation_name, detection_name = WTALC_EVALUATION[model_name]
    evaluation = importlib.import_module(evaluation_name)
    detection = importlib.import_module(detection_name)
    original = evaluation.dtmAP

    def recorded(*args):
        annotation_path, ref_args = args[-2], args[-1]
        captured: list = []
        saved = detection.filter_segments, detection.getLocMAP
        detection.filter_segments = lambda segments, *a: segments
        detection.getLocMAP = lambda seg_preds, *a: captured.append(seg_preds) or 0.0
        try:
            original(*args)
        finally:
            detection.filter_segments, detection.getLocMAP = saved
        if len(captured[0]) != ref_args.class_num:
            raise RuntimeError("a class has no test segment: W-TALC's per-class list is then not indexed by class")
        _segments_to_json(captured[0], annotation_path, out_json, 25.0 / 16.0)
        return original(*args)
    evaluation.dtmAP = recorded


# ============================================================================================ runner entry point

def run_reference(argv: list[str]) -> None:
    """``fidelity.py _reference MODEL PATH SCRIPT SHIMS_JSON -- ARGS``: run a reference script (a file, or a
    dotted module such as ISSF's ``core.main``) with the shims."""
    model, path, script, shim_json = argv[:4]
    script_args = argv[argv.index("--") + 1:]
    shims = ShimOptions(**json.loads(shim_json))
    sys.path.insert(0, path)
    install_shims(shims)
    if model in WTALC_EVALUATION and not (model == "facnet" and script == "train_main.py"):
        hook_wtalc_detections(Path("detections.json"), model)  # FAC-Net trains and tests in two scripts
    sys.argv = [script, *script_args]
    if script.endswith(".py"):
        runpy.run_path(str(Path(path) / script), run_name="__main__")
    else:
        runpy.run_module(script, run_name="__main__", alter_sys=True)


# ============================================================================================ weight maps

def port_weights(model_name: str, refs: list[torch.nn.Module], wtal: torch.nn.Module) -> None:
    """Copy the reference model's parameters into the wtal model (hand-written name map; shapes checked)."""
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    if model_name == "rskp":
        (ref,) = refs
        pairs = [(ref.mu, wtal.bases), (ref.ac_center, wtal.head.class_centers), (ref.fg_center, wtal.head.fg_center),
                 (ref.feature_embedding[0].weight, wtal.embedding.weight),
                 (ref.feature_embedding[0].bias, wtal.embedding.bias)]
    elif model_name == "facnet":
        for ref, stream in zip(refs, wtal.streams, strict=True):
            emb = ref.feature_embedding.process
            pairs += [(ref.ac_center, stream.class_centers), (ref.fg_center, stream.fg_center),
                      (emb[0].weight, stream.embedding[0].weight), (emb[0].bias, stream.embedding[0].bias),
                      (emb[3].weight, stream.embedding[3].weight), (emb[3].bias, stream.embedding[3].bias)]
    elif model_name == "mmsd":
        (ref,) = refs
        for m, emb in (("rgb", ref.rgb_embedding), ("flow", ref.flow_embedding)):
            pairs += [(emb.process1[0].weight, wtal.first_layers[m][0].weight),
                      (emb.process1[0].bias, wtal.first_layers[m][0].bias),
                      (emb.process2[0].weight, wtal.embeddings[m][0].weight),
                      (emb.process2[0].bias, wtal.embeddings[m][0].bias)]
        pairs += [(ref.fusion_embedding[0].weight, wtal.embeddings["fused"][0].weight),
                  (ref.fusion_embedding[0].bias, wtal.embeddings["fused"][0].bias)]
        for stream, head in ((ref.rgb_stream, "rgb"), (ref.flow_stream, "flow"), (ref.peer_stream, "fused")):
            pairs += [(stream.ac_center, wtal.heads[head].class_centers),
                      (stream.fg_center, wtal.heads[head].fg_center)]
    elif model_name == "issf":
        (ref,) = refs
        emb = ref.feature_embedding[0]
        pairs = [(emb.weight, wtal.embedding.weight), (emb.bias, wtal.embedding.bias),
                 (ref.ac_center, wtal.head.class_centers), (ref.fg_center, wtal.head.fg_center)]
        gates = ((ref.channel_weights, wtal.salient_gate), (ref.channel_back_weights, wtal.nonsalient_gate))
        for ref_gate, gate in gates:
            pairs += [(ref_gate[0].weight, gate[0].weight), (ref_gate[2].weight, gate[2].weight)]
    elif model_name == "basnet":
        (ref,) = refs
        f, c = ref.filter_module, ref.cas_module
        pairs = [(f.conv_1[0].weight.squeeze(-1), wtal.filter[0].weight), (f.conv_1[0].bias, wtal.filter[0].bias),
                 (f.conv_2[0].weight.squeeze(-1), wtal.filter[2].weight), (f.conv_2[0].bias, wtal.filter[2].bias),
                 (c.conv_1[0].weight, wtal.cas_module.conv1.weight), (c.conv_1[0].bias, wtal.cas_module.conv1.bias),
                 (c.conv_2[0].weight, wtal.cas_module.conv2.weight), (c.conv_2[0].bias, wtal.cas_module.conv2.bias),
                 (c.conv_3[0].weight, wtal.cas_module.classifier.weight)]
    elif model_name == "wum":
        (ref,) = refs
        c = ref.cas_module
        pairs = [(c.conv[0].weight, wtal.embedding.weight), (c.conv[0].bias, wtal.embedding.bias),
                 (c.classifier[0].weight, wtal.classifier.weight)]
    ported = {id(dst) for _, dst in pairs}
    missing = [n for n, p in wtal.named_parameters() if id(p) not in ported]
    if missing:
        raise RuntimeError(f"wtal {model_name} parameters without a reference counterpart: {missing}")
    with torch.no_grad():
        for src, dst in pairs:
            if src.shape != dst.shape:
                raise RuntimeError(f"shape mismatch {tuple(src.shape)} -> {tuple(dst.shape)}")
            dst.copy_(src)


class ReseedDropout:
    """Forward pre-hook: re-seed torch's global generator before every training forward of a module, with
    ``base + stride * call + offset``, so that the two sides draw the same dropout masks."""

    def __init__(self, module: torch.nn.Module, base: int, offset: int = 0, stride: int = 1):
        self.calls, self.base, self.offset, self.stride = 0, base, offset, stride
        module.register_forward_pre_hook(self)

    def __call__(self, module, inputs) -> None:
        if module.training:
            torch.manual_seed(self.base + self.stride * self.calls + self.offset)
            self.calls += 1


class StopTraining(Exception):
    pass


def record_backward(losses: list[float]) -> Callable:
    """Context-free patch of ``Tensor.backward`` that records every scalar loss before back-propagating."""
    original = torch.Tensor.backward

    def backward(self, *args, **kwargs):
        losses.append(float(self.detach()))
        return original(self, *args, **kwargs)
    return backward, original


def stop_after(optimizer: torch.optim.Optimizer, steps: int) -> None:
    original = optimizer.step
    count = [0]

    def step(*args, **kwargs):
        original(*args, **kwargs)
        count[0] += 1
        if count[0] >= steps:
            raise StopTraining
    optimizer.step = step


# ============================================================================================ same start, same steps

@dataclass
class StepSetting:
    steps: int
    seed: int
    reduction: str  # wtal side, BaS-Net/WUM: "sum" (wtal's trainer) or "mean" (the references' batch mean)
    width: int | None


class FixedOrderLoader:
    """Stands in for a reference ``DataLoader(shuffle=True)``: a seeded permutation per epoch, batch 1."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.rng, self.orders = dataset, np.random.default_rng(seed), []

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        order = self.rng.permutation(len(self.dataset))
        self.orders.append(order)
        for i in order:
            yield torch.utils.data.default_collate([self.dataset[int(i)]])


def _wtalc_args(module: str, root: Path, dim: int, classes: int, extra: list[str]) -> argparse.Namespace:
    parser = importlib.import_module(module).parser
    args = parser.parse_args(["--dataset-root", f"{root}/", "--dataset-name", WTALC_NAME, "--inp-feat-num", str(dim),
                              "--out-feat-num", str(dim), "--class-num", str(classes), "--save-interval", "100000",
                              *extra])
    args.gpu_ids = []  # CPU, no DataLoader workers
    return args


def _train_recording(train: Callable[[], None], optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
    """Run a reference's own training loop until ``steps`` optimiser steps; every ``backward()``'s loss."""
    stop_after(optimizer, steps)
    losses: list[float] = []
    backward, original = record_backward(losses)
    torch.Tensor.backward = backward
    try:
        train()
    except StopTraining:
        pass
    finally:
        torch.Tensor.backward = original
    return losses


def _dataset_videos(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(features, labels)`` of every video of a W-TALC reference's training dataset, in its index order."""
    return [(np.asarray(dataset[i]["data"], dtype=np.float32), np.asarray(dataset[i]["labels"]))
            for i in range(len(dataset))]


def _run_wtal_videos(model: torch.nn.Module, videos: list[tuple[np.ndarray, np.ndarray]], orders: list[np.ndarray],
                     batch: int, steps: int, optimizer: torch.optim.Optimizer, epoch_end: bool) -> list[float]:
    """wtal side of the W-TALC references: per-video losses summed into a gradient, a step every ``batch``
    videos; ``epoch_end``: ``model.on_epoch_end`` after every epoch (memories, pseudo labels)."""
    losses: list[float] = []
    count = 0
    for epoch, order in enumerate(orders):
        model.train()
        for i in order:
            x, y = videos[int(i)]
            out = wtal_losses(model, torch.as_tensor(x, dtype=torch.float32).unsqueeze(0),
                              torch.as_tensor(y, dtype=torch.float32).unsqueeze(0), epoch, int(i))
            out["total"].sum().backward()
            losses.append(float(out["total"].detach().sum()))
            count += 1
            if count % batch == 0:
                optimizer.step()
                optimizer.zero_grad()
                if count // batch >= steps:
                    return losses
        if epoch_end:
            model.on_epoch_end(epoch, wtal_train_batches(videos))
    return losses


@contextlib.contextmanager
def shuffled_loaders_replaced(loader: FixedOrderLoader) -> Iterator[None]:
    """``DataLoader(..., shuffle=True)`` returns ``loader`` (MMSD re-creates its training loader after each
    pseudo-label generation; the same fixed order continues)."""
    original = torch.utils.data.DataLoader

    def make(dataset, *args, shuffle=False, **kwargs):
        return loader if shuffle else original(dataset, *args, shuffle=shuffle, **kwargs)
    torch.utils.data.DataLoader = make
    try:
        yield
    finally:
        torch.utils.data.DataLoader = original


def _same_steps_on_videos(host, dataset, ref_dropouts: list[torch.nn.Module], wtal: torch.nn.Module,
                          wtal_dropouts: list[torch.nn.Module], s: StepSetting) -> tuple[list[float], list[float]]:
    """RSKP, MMSD, ISSF: the reference's own loop (``host.train()``, ``host.optimizer_module``, batch 1 loaders) on
    a fixed video order, then the wtal model on the same videos in the same order with the reference's Adam.
    Before every training forward of the i-th module of ``*_dropouts`` the global generator is re-seeded, on both
    sides alike, so the paired modules draw the same dropout masks. Returns the per-video losses of both."""
    args = host.args
    loader = FixedOrderLoader(dataset, s.seed)
    host.train_data_loader = loader
    for i, module in enumerate(ref_dropouts):
        ReseedDropout(module, base=1000 * s.seed, offset=i, stride=len(ref_dropouts))
    with shuffled_loaders_replaced(loader):
        ref_losses = _train_recording(host.train, host.optimizer_module, s.steps)
    for i, module in enumerate(wtal_dropouts):
        ReseedDropout(module, base=1000 * s.seed, offset=i, stride=len(wtal_dropouts))
    optimizer = torch.optim.Adam(wtal.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=args.weight_decay)
    videos = _dataset_videos(dataset)
    return ref_losses, _run_wtal_videos(wtal, videos, loader.orders, args.batch_size, s.steps, optimizer, True)


def steps_rskp(ref_path: Path, root: Path, dim: int, classes: int, s: StepSetting) -> dict:
    """RSKP: the reference Processor's own loop (batch 10, lr 5e-5), memory from epoch index 1 on
    (``--warmup-epoch 0``) so that the first 50 steps (2.5 epochs of 200 videos) use the memory bank."""
    with reference_on_path(ref_path):
        install_shims(ShimOptions("rskp", dim, []))
        processor_module = importlib.import_module("processor")
        torch.manual_seed(s.seed)
        warmup = 0
        args = _wtalc_args("options", root, dim, classes, ["--warmup-epoch", str(warmup), "--seed", str(s.seed),
                                                            "--max-epoch", "1000"])
        processor = processor_module.Processor(args)
        wtal = wtal_model("rskp", dim, classes, warmup_epoch=warmup)
        port_weights("rskp", [processor.model], wtal)
        ref_losses, wtal_losses_ = _same_steps_on_videos(processor, processor.train_dataset, [processor.model], wtal,
                                                         [wtal], s)
    return {"ref": ref_losses, "wtal": wtal_losses_, "per_step": args.batch_size,
            "setting": f"batch {args.batch_size}, lr {args.lr:g}, warm-up epoch {warmup} (memory from step 21)"}


def steps_facnet(ref_path: Path, root: Path, dim: int, classes: int, s: StepSetting) -> dict:
    """FAC-Net: two reference Processors (RGB, flow) trained on the same video order against wtal's two-stream
    model (the sum of the two stream losses; per stream an independent Adam state, as two optimizers)."""
    half = dim // 2
    initial, orders, stream_losses = [], [], []
    with reference_on_path(ref_path):
        install_shims(ShimOptions("facnet", dim, []))
        processor_module = importlib.import_module("train_Processor")
        for run_type in (0, 1):
            torch.manual_seed(s.seed)
            args = _wtalc_args("train_options", root, half, classes,
                               ["--run-type", str(run_type), "--seed", str(s.seed), "--max-epoch", "1000"])
            processor = processor_module.Processor(args)
            initial.append(copy.deepcopy(processor.model))
            dataset = processor.train_data_loader.dataset
            if run_type == 0:
                rgb = [np.asarray(dataset[i]["data"], dtype=np.float32) for i in range(len(dataset))]
                labels = [np.asarray(dataset[i]["labels"]) for i in range(len(dataset))]
            else:
                flow = [np.asarray(dataset[i]["data"], dtype=np.float32) for i in range(len(dataset))]
            loader = FixedOrderLoader(dataset, s.seed)
            processor.train_data_loader = loader
            ReseedDropout(processor.model, base=1000 * s.seed, offset=run_type, stride=2)
            stream_losses.append(_train_recording(processor.train, processor.optimizer_module, s.steps))
            orders.append(loader.orders)
    if any(not np.array_equal(a, b) for a, b in zip(orders[0], orders[1], strict=False)):
        raise RuntimeError("the RGB and flow runs saw different video orders")
    wtal = wtal_model("facnet", dim, classes)
    port_weights("facnet", initial, wtal)
    for i, stream in enumerate(wtal.streams):
        ReseedDropout(stream, base=1000 * s.seed, offset=i, stride=2)
    videos = [(np.concatenate([r, f], axis=1), y) for r, f, y in zip(rgb, flow, labels, strict=True)]
    optimizer = torch.optim.Adam(wtal.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=args.weight_decay)
    wtal_losses_ = _run_wtal_videos(wtal, videos, orders[0], args.batch_size, s.steps, optimizer, False)
    ref_losses = [a + b for a, b in zip(*stream_losses, strict=True)]
    return {"ref": ref_losses, "wtal": wtal_losses_, "per_step": args.batch_size,
            "setting": f"batch {args.batch_size}, lr {args.lr:g}, RGB + flow loss per video"}


def steps_mmsd(ref_path: Path, root: Path, dim: int, classes: int, s: StepSetting) -> dict:
    """MMSD: the reference Processor's own loop (batch 10, lr 5e-5, its step decay not reached) with pseudo labels
    generated after epochs 1 and 2 (``iter_list``; wtal ``label_epochs: [1, 2]``), so self-voting is in the loss
    from the second epoch on."""
    half = dim // 2
    label_epochs = [1, 2]
    with reference_on_path(ref_path):
        install_shims(ShimOptions("mmsd", dim, []))
        processor_module = importlib.import_module("train_Processor")
        torch.manual_seed(s.seed)
        args = _wtalc_args("train_options", root, half, classes, ["--seed", str(s.seed), "--max-epoch", "1000"])
        args.iter_list = label_epochs
        processor = processor_module.Processor(args)
        dataset = processor.train_dataset
        wtal = wtal_model("mmsd", dim, classes, label_epochs=tuple(label_epochs))
        ref = processor.model
        port_weights("mmsd", [ref], wtal)
        generate = processor_module.generate_pseudo
        # the generation pass reads every training video once; its order only permutes the stored results
        processor_module.generate_pseudo = lambda _, *a: generate(torch.utils.data.DataLoader(dataset), *a)
        # the five dropout layers in the same order on both sides (RGB first and second layer, flow first and
        # second layer, fused layer), each re-seeded on its own: the two sides call them in different orders
        ref_dropouts = [ref.rgb_embedding.process1[2], ref.rgb_embedding.process2[2], ref.flow_embedding.process1[2],
                        ref.flow_embedding.process2[2], ref.fusion_embedding[2]]
        wtal_dropouts = [wtal.first_layers["rgb"][2], wtal.embeddings["rgb"][2], wtal.first_layers["flow"][2],
                         wtal.embeddings["flow"][2], wtal.embeddings["fused"][2]]
        ref_losses, wtal_losses_ = _same_steps_on_videos(processor, dataset, ref_dropouts, wtal, wtal_dropouts, s)
    n_videos = len(dataset)
    steps_per_epoch = math.ceil(n_videos / args.batch_size)
    # the reference divides the voters' label sum by count + 1e-4 (wtal: the plain mean), a relative change of
    # up to 1e-4 of every voted label: the losses agree to float rounding only before the first generation
    return {"ref": ref_losses, "wtal": wtal_losses_, "per_step": args.batch_size,
            "videos_before_voting": n_videos * label_epochs[0],
            "setting": f"batch {args.batch_size}, lr {args.lr:g}, pseudo labels after epochs {label_epochs} "
                       f"(self-voting from step {steps_per_epoch + 1})"}


def steps_issf(ref_path: Path, root: Path, dim: int, classes: int, s: StepSetting,
               published_memory_index: bool = False) -> dict:
    """ISSF: the reference ``Train`` loop (batch 10, lr 5e-5, wd 5e-4), its memory filled after epoch index 1 and
    in the loss from epoch index 2 on; wtal with ``wrap_first_predecessor: true`` (the reference's index -1).
    ``published_memory_index``: both sides with the released loop's memory index (wtal's flag of that name)."""
    with reference_on_path(ref_path):
        install_shims(ShimOptions("issf", dim, [], published_memory_index=published_memory_index))
        train_module = importlib.import_module("core.train")
        torch.manual_seed(s.seed)
        args = issf_parser(ref_path).parse_args(
            ["--dataset-dir", f"{root}/", "--dataset-name", WTALC_NAME, "--input-feat", str(dim), "--output-feat",
             str(dim), "--class-num", str(classes), "--seed", str(s.seed), "--epoch", "1000", "--save_every", "100000"])
        args.gpu_ids = []  # CPU, no DataLoader workers
        trainer = train_module.Train(args)
        wtal = wtal_model("issf", dim, classes, wrap_first_predecessor=True,
                          published_memory_index=published_memory_index)
        port_weights("issf", [trainer.model], wtal)
        ref_losses, wtal_losses_ = _same_steps_on_videos(trainer, trainer.train_dataset, [trainer.model], wtal,
                                                         [wtal], s)
    steps_per_epoch = math.ceil(len(trainer.train_dataset) / args.batch_size)
    index = "as published (class 0 for every video), both sides" if published_memory_index else "the video's classes"
    return {"ref": ref_losses, "wtal": wtal_losses_, "per_step": args.batch_size,
            "setting": f"batch {args.batch_size}, lr {args.lr:g}, memory from step {2 * steps_per_epoch + 1}, "
                       f"reference memory index: {index}"}


def _folder_batches(dataset, steps: int, batch: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The reference's own training batches: shuffled videos, each resampled to 750 snippets by its loader."""
    np.random.seed(seed)  # noqa: NPY002 -- the reference's random_perturb draws from numpy's global generator
    rng = np.random.default_rng(seed)
    order: list[int] = []
    batches = []
    for _ in range(steps):
        if len(order) < batch:
            order += rng.permutation(len(dataset)).tolist()
        items = [dataset[order.pop(0)] for _ in range(batch)]
        data = torch.stack([torch.as_tensor(it[0]) for it in items])
        label = torch.stack([torch.as_tensor(it[1]) for it in items])
        batches.append((data, label))
    return batches


def steps_folders(model_name: str, ref_path: Path, root: Path, dim: int, classes: list[str], s: StepSetting) -> dict:
    """BaS-Net / WUM: the reference ``train`` step (batch 16, lr 1e-4, Adam wd 5e-4) on its own 750-snippet
    samples; the wtal side sums (wtal's trainer) or averages (the reference) the per-video losses."""
    batch, lr = 16, 1e-4
    with reference_on_path(ref_path):
        install_shims(ShimOptions(model_name, dim, classes, width=s.width))
        features = importlib.import_module("thumos_features")
        model_module = importlib.import_module("model")
        train_module = importlib.import_module("train")
        kwargs = dict(data_path=str(root), mode="train", modal="all", feature_fps=25, num_segments=750,
                      sampling="random", seed=-1)
        if model_name == "basnet":
            kwargs["len_feature"] = dim
        dataset = features.ThumosFeature(**kwargs)
        batches = _folder_batches(dataset, s.steps, batch, s.seed)
        torch.manual_seed(s.seed)
        if model_name == "basnet":
            ref = model_module.BaS_Net(dim, len(classes), 750)
            criterion = train_module.BaS_Net_loss(1e-4)
        else:
            ref = model_module.Model(dim, len(classes), 9, 4)
            criterion = train_module.UM_loss(5e-4, 1, 100)
        wtal = wtal_model(model_name, dim, len(classes), hidden_dim=s.width or 2048,
                           **({"margin_reference_dim": None} if model_name == "wum" else {}))
        port_weights(model_name, [ref], wtal)
        optimizer = torch.optim.Adam(ref.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.0005)
        logger = RecordingLogger()
        ReseedDropout(ref, base=1000 * s.seed)
        for step, (data, label) in enumerate(batches, start=1):
            loader_iter = iter([(data, label, None, None, None)])
            if model_name == "basnet":
                train_module.train(ref, None, loader_iter, optimizer, criterion, logger, step)
            else:
                train_module.train(ref, loader_iter, optimizer, criterion, logger, step)
    ref_losses = [v for _, v in logger.values["loss_total"]]
    ReseedDropout(wtal, base=1000 * s.seed)
    optimizer = torch.optim.Adam(wtal.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.0005)
    wtal.train()
    wtal_losses_ = []
    for data, label in batches:
        optimizer.zero_grad()
        total = wtal_losses(wtal, data, label, 0)["total"]
        (total.sum() if s.reduction == "sum" else total.mean()).backward()
        optimizer.step()
        wtal_losses_.append(float(total.detach().mean()))
    return {"ref": ref_losses, "wtal": wtal_losses_, "per_step": 1,
            "setting": f"batch {batch} x 750 snippets, lr {lr:g}, hidden width {s.width or 2048}, "
                       f"wtal batch reduction {s.reduction}"}


def relative_differences(ref: list[float], ours: list[float]) -> np.ndarray:
    a, b = np.asarray(ref, dtype=np.float64), np.asarray(ours, dtype=np.float64)
    n = min(len(a), len(b))
    return np.abs(a[:n] - b[:n]) / np.maximum(np.abs(a[:n]), 1e-12)


def summarize_steps(result: dict) -> dict:
    per = result["per_step"]
    ref, ours = np.asarray(result["ref"]), np.asarray(result["wtal"])
    n = min(len(ref), len(ours)) // per * per
    step_ref = ref[:n].reshape(-1, per).mean(axis=1)
    step_ours = ours[:n].reshape(-1, per).mean(axis=1)
    rel = relative_differences(ref[:n], ours[:n])
    step_rel = relative_differences(step_ref.tolist(), step_ours.tolist())
    first = [float(step_rel[: k].max()) for k in (1, 5, 10, 20) if k <= len(step_rel)]
    return {"steps": len(step_ref), "max_rel_loss": float(rel.max()), "max_rel_step_loss": float(step_rel.max()),
            "max_rel_step_loss_first_1_5_10_20": first, "step_loss_ref": step_ref.tolist(),
            "step_loss_wtal": step_ours.tolist(), "setting": result["setting"]}


# ============================================================================================ same schedule, end to end

@dataclass
class Schedule:
    """The reference's arguments for the schedule ``wtal train --epochs N`` derives from ``configs/MODEL.yaml``."""

    epochs: int
    batch: int
    lr: float
    warmup_epoch: int | None = None  # RSKP: memory bank warm-up
    lr_milestones: list[int] = field(default_factory=list)  # step decay epochs (MMSD)
    label_epochs: list[int] = field(default_factory=list)  # MMSD: pseudo labels after these epochs
    momentum_epoch: int | None = None  # ISSF: momentum memory updates after this epoch index


def derived_schedule(model_name: str, epochs: int, dim: int) -> Schedule:
    """Batch size, learning rate and the epoch-valued keys of ``configs/MODEL.yaml`` under ``--epochs`` on ``dim``-d
    data (keep_steps batch division, the lr rule of ``optim.short_schedule`` and ``optim.width_scaling``, epoch keys
    rescaled as ``wtal train --epochs`` rescales them)."""
    sys.path.insert(0, str(REPO / "src"))
    from wtal.engine.config import resolve_config
    cfg = resolve_config(REPO / "configs" / f"{model_name}.yaml", epochs=epochs)
    width = cfg.optim.width_scaling.factor(dim)
    params = cfg.model.params
    return Schedule(cfg.train.epochs, cfg.data.batch_size, cfg.optim.lr * width, params.get("warmup_epoch"),
                    list(cfg.optim.schedule.milestones), list(params.get("label_epochs") or []),
                    params.get("momentum_epoch"))


def _cpu_seconds_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_timed(cmd: list[str], cwd: Path, log: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run ``cmd`` niced and return ``(wall seconds, CPU seconds)``; raise with the log's tail on failure."""
    cpu0, t0 = _cpu_seconds_children(), time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(["nice", "-n", "10", *cmd], cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                            env=env).returncode
    wall, cpu = time.perf_counter() - t0, _cpu_seconds_children() - cpu0
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({rc}):\n" + log.read_text()[-3000:])
    return wall, cpu


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    return env


def _reference_cmd(model_name: str, ref_path: Path, script: str, shims: ShimOptions, args: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "_reference", model_name, str(ref_path), script,
            json.dumps(shims.__dict__), "--", *args]


def evaluate_json(pred: Path, gt: Path) -> dict:
    """``wtal eval`` (official ActivityNet mAP) of a result file: ``{"map": [...], "avg": x}`` in percent."""
    out = pred.with_suffix(".eval.json")
    subprocess.run([sys.executable, "-m", "wtal.cli", "eval", "--pred", str(pred), "--gt", str(gt), "--tiou",
                    ",".join(str(t) for t in TIOU), "--json", str(out)], check=True, env=_env(),
                   stdout=subprocess.DEVNULL)
    values = [float(v) for v in json.loads(out.read_text())["mAP"]]  # already in percent
    return {"map": values, "avg": float(np.mean(values))}


def end2end_reference(model_name: str, ref_path: Path, data_root: Path, run: Path, sched: Schedule, seed: int,
                      dim: int, classes: list[str], width: int | None, l2_eps: float | None = None,
                      published_memory_index: bool = False) -> tuple[Path, float, float]:
    """Train and test the reference on the short schedule; return its ActivityNet result file and times."""
    run.mkdir(parents=True, exist_ok=True)
    env = _env()
    if model_name == "mmsd":  # trains, then tests once after the last epoch (save interval = epochs)
        args = ["--dataset-root", f"{data_root}/", "--dataset-name", WTALC_NAME, "--inp-feat-num", str(dim // 2),
                "--out-feat-num", str(dim // 2), "--class-num", str(len(classes)), "--run-type", "0",
                "--model-id", str(seed), "--max-epoch", str(sched.epochs), "--batch-size", str(sched.batch),
                "--lr", repr(sched.lr), "--seed", str(seed), "--save-interval", str(sched.epochs),
                "--iter_list", *map(str, sched.label_epochs), "--changeLR_list", *map(str, sched.lr_milestones),
                "1000000"]  # the reference's list ends with an unreached milestone (its default: [70, 1000])
        shims = ShimOptions("mmsd", dim, classes, l2_eps=l2_eps)
        wall, cpu = run_timed(_reference_cmd("mmsd", ref_path, "train_main.py", shims, args), run,
                              run / "reference.log", env)
        return run / "detections.json", wall, cpu
    if model_name == "issf":  # tests once, after the last epoch: its keep-the-best-on-test check sees one value
        args = ["--dataset-dir", f"{data_root}/", "--dataset-name", WTALC_NAME, "--input-feat", str(dim),
                "--output-feat", str(dim), "--class-num", str(len(classes)), "--run-type", "train",
                "--log-dir", f"seed{seed}", "--epoch", str(sched.epochs), "--batch-size", str(sched.batch),
                "--lr", repr(sched.lr), "--seed", str(seed), "--save_every", str(sched.epochs)]
        shims = ShimOptions("issf", dim, classes, published_memory_index=published_memory_index,
                            momentum_epoch=sched.momentum_epoch)
        wall, cpu = run_timed(_reference_cmd("issf", ref_path, "core.main", shims, args), run,
                              run / "reference.log", env)
        return run / "detections.json", wall, cpu
    if model_name == "rskp":
        shims = ShimOptions("rskp", dim, classes)
        args = ["--dataset-root", f"{data_root}/", "--dataset-name", WTALC_NAME, "--inp-feat-num", str(dim),
                "--out-feat-num", str(dim), "--class-num", str(len(classes)), "--max-epoch", str(sched.epochs),
                "--batch-size", str(sched.batch), "--lr", repr(sched.lr), "--warmup-epoch", str(sched.warmup_epoch),
                "--seed", str(seed), "--save-interval", str(sched.epochs), "--model-id", str(seed)]
        wall, cpu = run_timed(_reference_cmd("rskp", ref_path, "main.py", shims, args), run, run / "reference.log", env)
        return run / "detections.json", wall, cpu
    if model_name == "facnet":
        shims = ShimOptions("facnet", dim, classes, l2_eps=l2_eps)
        common = ["--dataset-root", f"{data_root}/", "--dataset-name", WTALC_NAME, "--inp-feat-num", str(dim // 2),
                  "--out-feat-num", str(dim // 2), "--class-num", str(len(classes))]
        wall = cpu = 0.0
        for run_type in (0, 1):
            args = [*common, "--run-type", str(run_type), "--model-id", str(run_type + 1), "--max-epoch",
                    str(sched.epochs), "--batch-size", str(sched.batch), "--lr", repr(sched.lr), "--seed", str(seed),
                    "--save-interval", str(sched.epochs)]
            w, c = run_timed(_reference_cmd("facnet", ref_path, "train_main.py", shims, args), run,
                             run / f"reference_train{run_type}.log", env)
            wall, cpu = wall + w, cpu + c
        args = [*common, "--rgb-model-id", "1", "--flow-model-id", "2", "--rgb-load-epoch", str(sched.epochs),
                "--flow-load-epoch", str(sched.epochs), "--seed", str(seed)]
        run_timed(_reference_cmd("facnet", ref_path, "test_main.py", shims, args), run, run / "reference_test.log",
                  env)
        return run / "detections.json", wall, cpu
    steps = sched_steps(data_root, sched)
    shims = ShimOptions(model_name, dim, classes, width=width, test_last_only=steps)
    args = ["--data_path", str(data_root), "--model_path", str(run / "models"), "--output_path", str(run / "outputs"),
            "--log_path", str(run / "logs"), "--lr", f"[{sched.lr!r}]*{steps}", "--batch_size", str(sched.batch),
            "--num_workers", "0", "--seed", str(seed)]
    wall, cpu = run_timed(_reference_cmd(model_name, ref_path, "main.py", shims, args), run, run / "reference.log", env)
    return run / "outputs" / ("temp_result.json" if model_name == "basnet" else "result.json"), wall, cpu


def sched_steps(data_root: Path, sched: Schedule) -> int:
    """Optimizer steps of ``sched.epochs`` epochs over the training split (BaS-Net/WUM count steps, not epochs)."""
    n_train = len((data_root / "split_train.txt").read_text().split())
    return math.ceil(sched.epochs * n_train / sched.batch)


def end2end_wtal(model_name: str, wtalc_root: Path, run: Path, epochs: int, seed: int,
                 extra: list[str]) -> tuple[Path, float, float, float]:
    """``wtal train`` on the same schedule (all training videos, final checkpoint); result file and times."""
    cmd = [sys.executable, "-m", "wtal.cli", "train", "--config", str(REPO / "configs" / f"{model_name}.yaml"),
           "--data", str(wtalc_root), "--out", str(run), "--epochs", str(epochs), "--seed", str(seed),
           "--set", "train.num_threads=1", "--set", "data.val_fraction=0", "--set", "train.select=last",
           "--set", f"train.eval_every={epochs}", *extra]
    run.parent.mkdir(parents=True, exist_ok=True)
    wall, cpu = run_timed(cmd, REPO, run.parent / f"{run.name}.log", _env())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_seconds = float(np.mean([r["train_seconds"] for r in records]))
    return run / "predictions" / "test.json", wall, cpu, train_seconds


CROSS_MODELS = ("facnet", "basnet", "wum", "mmsd", "issf")


def _trained_reference(model_name: str, ref_path: Path, ref_run: Path, dim: int, classes: list[str],
                       width: int | None, seed: int, epochs: int) -> list[torch.nn.Module]:
    """The reference's final model(s) (FAC-Net: its RGB and flow models), built from its checkout and loaded from
    the checkpoints its run saved."""
    def wstal(model_id: int, extra: list[str]) -> torch.nn.Module:  # FAC-Net's and MMSD's model, one stream width
        model = importlib.import_module("model.main_branch").WSTAL(
            _wtalc_args("train_options", ref_run, dim // 2, len(classes), extra))
        model.load_state_dict(torch.load(ref_run / "ckpt" / WTALC_NAME / str(model_id) / f"{epochs}.pkl",
                                         map_location="cpu"))
        return model

    with reference_on_path(ref_path):
        install_shims(ShimOptions(model_name, dim, classes, width=width))
        if model_name == "facnet":  # run types 0 and 1 saved as model ids 1 and 2
            return [wstal(run_type + 1, ["--run-type", str(run_type)]) for run_type in (0, 1)]
        if model_name == "mmsd":  # saved under its model id, the seed
            return [wstal(seed, [])]
        if model_name == "basnet":
            ref = importlib.import_module("model").BaS_Net(dim, len(classes), 750)
            checkpoint = ref_run / "models" / f"BaS_Net_model_seed_{seed}.pkl"
        elif model_name == "wum":
            ref = importlib.import_module("model").Model(dim, len(classes), 9, 4)
            checkpoint = ref_run / "models" / f"model_seed_{seed}.pkl"
        else:
            args = issf_parser(ref_path).parse_args(["--input-feat", str(dim), "--output-feat", str(dim),
                                                     "--class-num", str(len(classes))])
            ref = importlib.import_module("arch.model").ISSF(args)
            checkpoint = ref_run / "ckpt" / WTALC_NAME / f"seed{seed}" / f"{epochs}.pkl"
        ref.load_state_dict(torch.load(checkpoint, map_location="cpu"))
    return [ref]


def reference_weights_in_wtal_run(model_name: str, ref_path: Path, ref_run: Path, wtal_run: Path, target: Path,
                                  dim: int, classes: list[str], width: int | None, seed: int,
                                  epochs: int = 40) -> Path:
    """A copy of ``wtal_run`` whose checkpoint holds the reference's trained weights (its final model, saved by
    its run in ``ref_run``), ported into wtal's model with the step comparison's name map (FAC-Net: its two
    single-stream models as wtal's two streams; ISSF's memory, which its test does not read, stays empty)."""
    refs = _trained_reference(model_name, ref_path, ref_run, dim, classes, width, seed, epochs)
    params = {"hidden_dim": width or 2048} if model_name in ("basnet", "wum") else {}
    wtal = wtal_model(model_name, dim, len(classes), **params)
    port_weights(model_name, refs, wtal)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(wtal_run, target, ignore=shutil.ignore_patterns("predictions", "*.lock"))
    checkpoint_path = target / "checkpoints" / "last.pt"
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    state = wtal.state_dict()
    if set(state) != set(checkpoint["model"]):
        raise RuntimeError(f"{wtal_run}: its {model_name} checkpoint has other parameters than the ported model")
    checkpoint["model"] = state
    torch.save(checkpoint, checkpoint_path)
    return target


def cross_test(run: Path) -> Path:
    """``wtal predict`` of a run folder on the test split (the run's own test recipe, whole videos)."""
    pred = run / "predictions" / "test.json"
    subprocess.run([sys.executable, "-m", "wtal.cli", "predict", "--run", str(run), "--out", str(pred)], check=True,
                   env=_env(), stdout=subprocess.DEVNULL)
    return pred


# ============================================================================================ main

def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f} (1)"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f} ({len(values)})"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_reference":
        run_reference(argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, choices=["rskp", "facnet", "basnet", "wum", "mmsd", "issf"])
    p.add_argument("--reference", required=True, type=Path, help="checkout of the model's public code")
    p.add_argument("--data", type=Path, default=None, help="a `wtal synth` folder (default: generate 256-d, seed 0)")
    p.add_argument("--out", type=Path, default=Path("fidelity_out"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--mode", choices=["steps", "end2end", "both", "cross"], default="both",
                   help="cross (not RSKP; after end2end with the same --tag and --epochs): the reference's trained "
                        "weights tested by wtal's test recipe on whole videos")
    p.add_argument("--width", choices=["input", "reference"], default="input",
                   help="BaS-Net/WUM hidden width: the input width (wtal's default) or the reference's 2048")
    p.add_argument("--reduction", choices=["sum", "mean"], default="sum",
                   help="BaS-Net/WUM step comparison: wtal's per-video sum or the reference's batch mean")
    p.add_argument("--wtal-set", action="append", default=[], help="extra --set for the wtal end-to-end run")
    sides = p.add_mutually_exclusive_group()
    sides.add_argument("--wtal-only", action="store_true", help="end to end: skip the reference runs")
    sides.add_argument("--reference-only", action="store_true", help="end to end: skip the wtal runs")
    p.add_argument("--reference-l2-eps", type=float, default=None,
                   help="FAC-Net and MMSD end to end: add this epsilon to the reference's L2 normalisation (as "
                        "published it has none, and its loss can turn NaN on 128-d streams)")
    p.add_argument("--published-memory-index", action="store_true",
                   help="ISSF: run the reference with its memory class index as published (every video reads and "
                        "updates class 0's memory; steps: wtal too, with model.params.published_memory_index); by "
                        "default it is read by the video's classes, as in wtal")
    p.add_argument("--tag", default="", help="suffix of the run folders and of the JSON report")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
    out = a.out.resolve()
    ref_path = a.reference.resolve()
    annotations, features, layout = load_synthetic(a.data, out)
    dim, classes = layout.dim, list(annotations.classes)
    layout_name = "folders" if a.model in ("basnet", "wum") else "wtalc"
    data_root = out / "data" / layout_name
    wtalc_root = export_wtalc(out / "data" / "wtalc", annotations, features)
    if layout_name == "folders":
        export_folders(data_root, annotations, features, layout)
    width = dim if (a.width == "input" and a.model in ("basnet", "wum")) else None
    report: dict = {"model": a.model, "reference": str(ref_path), "dim": dim}
    if a.mode in ("steps", "both"):
        setting = StepSetting(a.steps, seeds[0], a.reduction, width)
        if a.model == "rskp":
            result = steps_rskp(ref_path, out / "data" / "wtalc", dim, len(classes), setting)
        elif a.model == "facnet":
            result = steps_facnet(ref_path, out / "data" / "wtalc", dim, len(classes), setting)
        elif a.model == "mmsd":
            result = steps_mmsd(ref_path, out / "data" / "wtalc", dim, len(classes), setting)
        elif a.model == "issf":
            result = steps_issf(ref_path, out / "data" / "wtalc", dim, len(classes), setting,
                                a.published_memory_index)
        else:
            result = steps_folders(a.model, ref_path, data_root, dim, classes, setting)
        report["steps"] = summarize_steps(result)
        st = report["steps"]
        print(f"{a.model}: same start, same steps ({st['setting']}): {st['steps']} steps, max relative difference "
              f"{st['max_rel_step_loss']:.2e} (step mean), {st['max_rel_loss']:.2e} (per loss); first 1/5/10/20 "
              f"steps: {', '.join(f'{v:.1e}' for v in st['max_rel_step_loss_first_1_5_10_20'])}")
    if a.mode in ("end2end", "both"):
        sched = derived_schedule(a.model, a.epochs, dim)
        gt = wtalc_root
        rows: dict[str, dict] = {"reference": {}, "wtal": {}}
        for seed in seeds:
            if not a.wtal_only:
                ref_root = data_root if layout_name == "folders" else out / "data" / "wtalc"
                ref_json, wall, cpu = end2end_reference(a.model, ref_path, ref_root,
                                                        out / "runs" / f"{a.model}_ref{a.tag}_seed{seed}",
                                                        sched, seed, dim, classes, width, a.reference_l2_eps,
                                                        a.published_memory_index)
                rows["reference"][seed] = {**evaluate_json(ref_json, gt), "wall_s": wall, "cpu_s": cpu,
                                           "cpu_s_per_epoch": cpu / sched.epochs}
            if not a.reference_only:
                wtal_run = out / "runs" / f"{a.model}_wtal{a.tag}_seed{seed}"
                wt_json, wall, cpu, train_s = end2end_wtal(a.model, wtalc_root, wtal_run, a.epochs, seed,
                                                           [x for s in a.wtal_set for x in ("--set", s)])
                rows["wtal"][seed] = {**evaluate_json(wt_json, gt), "wall_s": wall, "cpu_s": cpu,
                                      "cpu_s_per_epoch": cpu / sched.epochs, "train_s_per_epoch": train_s}
            ref_text, wtal_text = (f"{rows[side][seed]['avg']:.1f}" if seed in rows[side] else "-"
                                   for side in ("reference", "wtal"))
            print(f"seed {seed}: reference AVG {ref_text}, wtal AVG {wtal_text}", flush=True)
        report["end2end"] = {"schedule": sched.__dict__, "runs": rows}
        print(f"\n| {a.model} | reference AVG mAP | wtal AVG mAP | reference CPU s/epoch | wtal CPU s/epoch |")
        print("|---|---|---|---|---|")
        ref_avg = [r["avg"] for r in rows["reference"].values()]
        wt_avg = [r["avg"] for r in rows["wtal"].values()]
        ref_t = [r["cpu_s_per_epoch"] for r in rows["reference"].values()] or [math.nan]
        wt_t = [r["cpu_s_per_epoch"] for r in rows["wtal"].values()] or [math.nan]
        print(f"| {sched.epochs} epochs, batch {sched.batch}, lr {sched.lr:.3g} | {mean_std(ref_avg)} | "
              f"{mean_std(wt_avg)} | {statistics.mean(ref_t):.1f} | {statistics.mean(wt_t):.1f} |")
    if a.mode == "cross":
        if a.model not in CROSS_MODELS:
            p.error(f"--mode cross: one of {', '.join(CROSS_MODELS)}")
        rows = {}
        for seed in seeds:
            runs = out / "runs"
            target = reference_weights_in_wtal_run(a.model, ref_path, runs / f"{a.model}_ref{a.tag}_seed{seed}",
                                                   runs / f"{a.model}_wtal{a.tag}_seed{seed}",
                                                   runs / f"{a.model}_cross{a.tag}_seed{seed}", dim, classes, width,
                                                   seed, a.epochs)
            rows[seed] = evaluate_json(cross_test(target), wtalc_root)
            print(f"seed {seed}: reference weights, wtal test AVG {rows[seed]['avg']:.1f}", flush=True)
        report["cross"] = rows
        print(f"reference weights, wtal test: {mean_std([r['avg'] for r in rows.values()])}")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"fidelity_{a.model}{a.tag}_{a.mode}.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
