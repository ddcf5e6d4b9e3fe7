"""benchmarks/fidelity.py: the reference-layout exporters (read back through wtal's readers), the detection hook's
conversion, the numpy shims, and -- when a reference checkout is given -- the step-by-step loss agreement.

The comparison with the public reference code runs only where a checkout is given, one environment variable
per model: ``WTAL_REFERENCE_RSKP`` (LeonHLJ/RSKP), ``WTAL_REFERENCE_FACNET`` (LeonHLJ/FAC-Net),
``WTAL_REFERENCE_BASNET`` (Pilhyeon/BaSNet-pytorch), ``WTAL_REFERENCE_WUM`` (Pilhyeon/WTAL-Uncertainty-Modeling),
``WTAL_REFERENCE_MMSD`` (LeonHLJ/MMSD), ``WTAL_REFERENCE_ISSF`` (MICLAB-BUPT/ISSF).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_benchmark

from wtal.cli import main as wtal_main
from wtal.data.sources import open_source
from wtal.data.synthetic import SynthConfig, generate
from wtal.data.wtalc import read_wtalc_annotations
from wtal.engine.predict import load_run

fidelity = load_benchmark("fidelity")



def _joint(source, name):
    streams = source.features(name, ["rgb", "flow"])
    return np.concatenate([streams["rgb"], streams["flow"]], axis=1)

def _tiny(dim: int):
    synth = generate(SynthConfig(num_videos=40, dim=dim, num_classes=4, seed=0, duration_range=(8.9, 120.0)))
    return synth.annotations, synth.features, synth.layout


@pytest.fixture(scope="module")
def tiny_set():
    return _tiny(32)


def test_folder_export_is_the_layout_basnet_and_wum_read(tmp_path, tiny_set):
    annotations, features, layout = tiny_set
    root = fidelity.export_folders(tmp_path / "folders", annotations, features, layout)
    for split, subset in (("train", "validation"), ("test", "test")):
        listed = (root / f"split_{split}.txt").read_text().split()
        assert listed == annotations.names(subset)
        for name in listed:  # the files their ThumosFeature opens for mode=split, modal=all
            rgb = np.load(root / "features" / split / "rgb" / f"{name}.npy")
            flow = np.load(root / "features" / split / "flow" / f"{name}.npy")
            np.testing.assert_array_equal(np.concatenate([rgb, flow], axis=1), features[name])
    gt = json.loads((root / "gt.json").read_text())["database"]
    name = annotations.names("test")[0]
    expected = [(i.label, i.start, i.end) for i in annotations.videos[name].instances]
    assert [(a["label"], *map(float, a["segment"])) for a in gt[name]["annotations"]] == expected
    assert gt[name]["subset"] == "test"  # their ANETdetection(subset='test') keeps exactly these
    source = open_source(root)
    assert source.annotations.names() == annotations.names()
    np.testing.assert_array_equal(_joint(source, name), features[name])


def test_wtalc_export_is_named_as_rskp_and_facnet_require(tmp_path, tiny_set):
    annotations, features, _ = tiny_set
    folder = fidelity.export_wtalc(tmp_path, annotations, features)
    assert folder == tmp_path / "Thumos14reduced"
    assert (folder / "Thumos14reduced-I3D-JOINTFeatures.npy").is_file()
    back = read_wtalc_annotations(folder)
    assert back.names() == annotations.names() and back.classes == annotations.classes
    name = annotations.names("validation")[3]
    np.testing.assert_array_equal(_joint(open_source(folder), name), features[name])


def test_wtalc_detections_become_activitynet_seconds(tmp_path, tiny_set):
    """A W-TALC detection ``[video index, start, end, score]`` indexes the test videos that have segments and
    is in snippets (1.5625 per second); the hook writes it as ActivityNet seconds under the class's name."""
    annotations, features, _ = tiny_set
    folder = fidelity.export_wtalc(tmp_path, annotations, features)
    videos = fidelity._wtalc_test_videos(str(folder))
    assert videos == [n for n in annotations.names("test") if annotations.videos[n].instances]
    per_class = [np.zeros((0, 4)), np.array([[2, 5, 15, 0.7], [0, 0, 3, 0.2]]), [], np.zeros((0, 4))]
    out = tmp_path / "det.json"
    fidelity._segments_to_json(per_class, str(folder), out, 1.5625)
    results = json.loads(out.read_text())["results"]
    assert results[videos[2]] == [{"label": "Action01", "score": 0.7, "segment": [3.2, 9.6]}]
    assert results[videos[0]] == [{"label": "Action01", "score": 0.2, "segment": [0.0, 1.92]}]
    assert sum(len(v) for v in results.values()) == 2


def test_joint_columns_map_the_i3d_split_to_the_middle_column():
    x = np.arange(24, dtype=np.float32).reshape(3, 8).view(fidelity._JointColumns)
    np.testing.assert_array_equal(x[:, 0:1024], np.arange(24).reshape(3, 8)[:, :4])
    np.testing.assert_array_equal(x[:, 1024:], np.arange(24).reshape(3, 8)[:, 4:])
    np.testing.assert_array_equal(x[1:, 2:5], np.arange(24).reshape(3, 8)[1:, 2:5])  # other slices untouched


def test_joint_tensor_maps_mmsds_split_to_the_middle_column():
    x = torch.arange(24, dtype=torch.float32).reshape(1, 3, 8)
    joint = x.as_subclass(fidelity._JointTensor)
    rgb, flow = joint[..., :1024], joint[..., 1024:]
    assert type(rgb) is torch.Tensor and type(flow) is torch.Tensor
    torch.testing.assert_close(rgb, x[..., :4])
    torch.testing.assert_close(flow, x[..., 4:])
    torch.testing.assert_close(joint[..., 2:5], x[..., 2:5])  # other slices untouched


def test_where_in_the_row_gives_class_indices_of_one_video():
    """ISSF's ``np.where(labels == 1)[0]`` on a ``(1, C)`` batch: the video's classes, not its row index."""
    labels = np.array([[0.0, 1.0, 0.0, 1.0]])
    assert np.where(labels == 1)[0].tolist() == [0, 0]  # as published
    assert fidelity._where_in_the_row(labels == 1)[0].tolist() == [1, 3]
    np.testing.assert_array_equal(fidelity._where_in_the_row(np.array([0, 1, 1]) == 1)[0], [1, 2])
    np.testing.assert_array_equal(fidelity._where_in_the_row(labels == 1, 5, 7), [[7, 5, 7, 5]])


def test_extensionless_finder_imports_files_without_py(tmp_path, monkeypatch):
    (tmp_path / "pkgx").mkdir()
    (tmp_path / "pkgx" / "helper").write_text("VALUE = 41\n")
    (tmp_path / "pkgx" / "user").write_text("from pkgx.helper import VALUE\nANSWER = VALUE + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    finder = fidelity.ExtensionlessFinder(tmp_path)
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    try:
        assert importlib.import_module("pkgx.user").ANSWER == 42
    finally:
        for name in ("pkgx.user", "pkgx.helper", "pkgx"):
            sys.modules.pop(name, None)


def test_ragged_array_falls_back_to_an_object_array():
    array = fidelity._ragged_array(np.array)
    ragged = array([np.zeros((2, 3)), np.zeros((5, 3))])
    assert ragged.dtype == object and [a.shape for a in ragged] == [(2, 3), (5, 3)]
    assert array([[1, 2], [3, 4]]).shape == (2, 2)


def test_derived_schedule_follows_the_short_schedule_rules():
    """RSKP at 40 of 200 epochs on 256-d data: 10 / 5 videos per step, 5e-5 x 5 x sqrt(8), warm-up epoch 20."""
    sched = fidelity.derived_schedule("rskp", 40, 256)
    assert (sched.epochs, sched.batch, sched.warmup_epoch) == (40, 2, 20)
    assert sched.lr == pytest.approx(5e-5 * 5 * 8 ** 0.5)


def test_derived_schedule_rescales_the_epoch_keys_of_mmsd_and_issf():
    """At 40 of 240 (MMSD) / 180 (ISSF) epochs the epoch-valued keys the reference takes as options or hard-codes
    follow ``wtal train --epochs 40``: MMSD's labels every 40/6 epochs and its decay at 70 x 40/240; ISSF's momentum
    epoch 85 x 40/180, its memory initialisation (epoch index 1) not rescaled."""
    mmsd = fidelity.derived_schedule("mmsd", 40, 256)
    assert (mmsd.batch, mmsd.lr_milestones, mmsd.label_epochs) == (2, [12], [7, 13, 20, 27, 33, 40])
    issf = fidelity.derived_schedule("issf", 40, 256)
    assert (issf.batch, issf.momentum_epoch, issf.lr_milestones) == (2, 19, [])


# ------------------------------------------------------------------------------- against a reference checkout

def _reference(model: str) -> Path:
    path = os.environ.get(f"WTAL_REFERENCE_{model.upper()}")
    if not path:
        pytest.skip(f"set WTAL_REFERENCE_{model.upper()} to a checkout of the {model} reference code")
    return Path(path)


@pytest.mark.parametrize("model", ["rskp", "facnet", "basnet", "wum", "mmsd", "issf"])
def test_same_start_same_steps_agree_with_the_reference(tmp_path, tiny_set, model):
    """Reference weights ported into wtal, same videos, same dropout masks, same optimiser: the training losses of
    the first 3 steps agree to float tolerance (RSKP with its memory bank in use from epoch index 1)."""
    ref_path = _reference(model)
    # FAC-Net's and MMSD's references L2-normalise without an epsilon: at 16 channels per stream some snippet's
    # embedding is all zero after ReLU and dropout, and its loss is NaN from the first video (wtal adds eps 1e-9)
    annotations, features, layout = _tiny(256) if model in ("facnet", "mmsd") else tiny_set
    setting = fidelity.StepSetting(steps=3, seed=0, reduction="mean", width=layout.dim)
    classes = list(annotations.classes)
    if model in ("rskp", "facnet", "mmsd", "issf"):
        fidelity.export_wtalc(tmp_path, annotations, features)
        root = tmp_path  # --dataset-root: the folder that holds Thumos14reduced/
        run = {"rskp": fidelity.steps_rskp, "facnet": fidelity.steps_facnet, "mmsd": fidelity.steps_mmsd,
               "issf": fidelity.steps_issf}[model]
        result = run(ref_path, root, layout.dim, len(classes), setting)
    else:
        root = fidelity.export_folders(tmp_path / "folders", annotations, features, layout)
        result = fidelity.steps_folders(model, ref_path, root, layout.dim, classes, setting)
    summary = fidelity.summarize_steps(result)
    assert summary["steps"] == 3
    if model == "mmsd":  # self-voting from the second epoch: the reference's label normaliser count + 1e-4
        rel = fidelity.relative_differences(result["ref"], result["wtal"])
        before = result["videos_before_voting"]
        assert 0 < before < len(rel), "the 3 steps should reach the voting loss"
        assert rel[:before].max() < 1e-5 and rel.max() < 1e-4, rel
    else:
        assert summary["max_rel_loss"] < 1e-5, summary


def _saved_reference_models(model: str, ref_path: Path, run: Path, dim: int,
                            classes: list[str]) -> list[torch.nn.Module]:
    """Reference models with seeded random weights, saved where the reference's own training script saves its
    epoch-1 model (seed 0): FAC-Net ``ckpt/Thumos14reduced/{1,2}/1.pkl`` (RGB, flow), WUM
    ``models/model_seed_0.pkl``, MMSD ``ckpt/Thumos14reduced/<model id>/1.pkl``, ISSF
    ``ckpt/Thumos14reduced/<log dir>/1.pkl``."""
    with fidelity.reference_on_path(ref_path):
        fidelity.install_shims(fidelity.ShimOptions(model, dim, classes, width=dim))
        torch.manual_seed(7)
        if model == "facnet":
            parser = importlib.import_module("train_options").parser
            args = parser.parse_args(["--inp-feat-num", str(dim // 2), "--out-feat-num", str(dim // 2),
                                      "--class-num", str(len(classes))])
            refs = [importlib.import_module("model.main_branch").WSTAL(args) for _ in range(2)]
            for i, ref in enumerate(refs, start=1):
                (run / f"ckpt/Thumos14reduced/{i}").mkdir(parents=True)
                torch.save(ref.state_dict(), run / f"ckpt/Thumos14reduced/{i}/1.pkl")
            return refs
        if model == "wum":
            ref, path = importlib.import_module("model").Model(dim, len(classes), 9, 4), "models/model_seed_0.pkl"
        elif model == "mmsd":
            parser = importlib.import_module("train_options").parser
            args = parser.parse_args(["--inp-feat-num", str(dim // 2), "--out-feat-num", str(dim // 2),
                                      "--class-num", str(len(classes))])
            ref, path = importlib.import_module("model.main_branch").WSTAL(args), "ckpt/Thumos14reduced/0/1.pkl"
        else:
            args = fidelity.issf_parser(ref_path).parse_args(["--input-feat", str(dim), "--output-feat", str(dim),
                                                              "--class-num", str(len(classes))])
            ref, path = importlib.import_module("arch.model").ISSF(args), "ckpt/Thumos14reduced/seed0/1.pkl"
    (run / path).parent.mkdir(parents=True)
    torch.save(ref.state_dict(), run / path)
    return [ref]


@pytest.mark.parametrize("model", ["facnet", "wum", "mmsd", "issf"])
def test_cross_mode_runs_the_reference_weights_through_wtals_prediction(tmp_path, tiny_set, model):
    """``--mode cross``: a copy of a finished wtal run whose checkpoint holds the reference model's weights (read
    from where its training script saves them); ``wtal predict`` on it scores videos with exactly the reference's
    parameters (through the name map) and differs from the wtal run's own predictions."""
    ref_path = _reference(model)
    annotations, features, layout = tiny_set
    classes = list(annotations.classes)
    data = fidelity.export_wtalc(tmp_path / "data", annotations, features)
    run = tmp_path / "runs" / f"{model}_wtal_seed0"
    assert wtal_main(["train", "--config", model, "--data", str(data), "--out", str(run), "--epochs", "1",
                      "--set", "train.progress=false", "--set", "data.val_fraction=0", "--set",
                      "train.select=last"]) == 0
    refs = _saved_reference_models(model, ref_path, tmp_path / "ref", layout.dim, classes)
    target = fidelity.reference_weights_in_wtal_run(model, ref_path, tmp_path / "ref", run, tmp_path / "cross",
                                                    layout.dim, classes, layout.dim, 0, epochs=1)
    params = {"hidden_dim": layout.dim} if model == "wum" else {}
    ported = fidelity.wtal_model(model, layout.dim, len(classes), **params)
    fidelity.port_weights(model, refs, ported)
    loaded = load_run(target).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in ported.state_dict().items())
    cross = json.loads(fidelity.cross_test(target).read_text())["results"]
    own = json.loads(fidelity.cross_test(run).read_text())["results"]
    assert set(cross) == set(own) and cross != own


def test_mmsd_schedule_lists_are_given_on_the_command_line():
    """MMSD's ``--iter_list`` / ``--changeLR_list`` have list defaults but parse one int as published; the shim
    makes them take the rescaled lists."""
    with fidelity.reference_on_path(_reference("mmsd")):
        fidelity.install_shims(fidelity.ShimOptions("mmsd", 256, []))
        parser = importlib.import_module("train_options").parser
        args = parser.parse_args(["--iter_list", "7", "13", "--changeLR_list", "12", "1000000"])
    assert (args.iter_list, args.changeLR_list) == ([7, 13], [12, 1000000])


def test_issf_momentum_epoch_follows_the_schedule():
    """ISSF hard-codes momentum memory updates after epoch index 85; end to end it is set to the schedule's."""
    ref_path = _reference("issf")
    with fidelity.reference_on_path(ref_path):
        fidelity.install_shims(fidelity.ShimOptions("issf", 32, [], momentum_epoch=19))
        args = fidelity.issf_parser(ref_path).parse_args(["--input-feat", "32", "--output-feat", "32", "--epoch", "40"])
        memory = importlib.import_module("arch.saliency").Saliency_Memory(args)
    assert (memory.moment_up, memory.Epoch) == (19, 40)


def test_facnet_l2_eps_zero_reproduces_the_reference_nan():
    """All-zero features with zero biases give all-zero embeddings: the reference's epsilon-free L2 normalisation
    (``l2_eps=0``) is 0/0 there, wtal's default is finite."""
    features, labels = torch.zeros(1, 6, 8), torch.tensor([[1.0, 0.0, 0.0]])
    fixed = fidelity.wtal_losses(fidelity.wtal_model("facnet", 8, 3).eval(), features, labels, 0)["total"]
    unguarded = fidelity.wtal_model("facnet", 8, 3, l2_eps=0.0).eval()
    reference = fidelity.wtal_losses(unguarded, features, labels, 0)["total"]
    assert torch.isfinite(fixed).all() and torch.isnan(reference).all()
