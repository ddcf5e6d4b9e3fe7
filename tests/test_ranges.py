"""Numeric ranges of config values: a value that only torch (or nothing) would reject is a clear
WtalInputError naming the key when the config is read, before any data is opened."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from helpers import joint_context

from wtal.cli import main
from wtal.engine.config import resolve_config
from wtal.errors import WtalInputError
from wtal.models.factory import MODEL_NAMES, build_model, model_class
from wtal.ranges import BELOW_ONE, COUNT, DIVISOR, FRACTION, POSITIVE, Range

BAD_HYPERPARAMETERS = [
    ("rskp", "dropout", "1.5", "in [0, 1)"),
    ("rskp", "propagation_weight", "1.0", "in [0, 1)"),
    ("rskp", "num_bases", "0", "an integer >= 1"),
    ("rskp", "num_bases", "2.5", "an integer >= 1"),
    ("rskp", "em_iterations", "-1", "an integer >= 0"),
    ("rskp", "spl_temperature", "0", "> 0"),
    ("rskp", "memory_target_weight", "1.2", "in [0, 1]"),
    ("rskp", "test_cas_weights", "[0.5]", "list of 2 numbers"),
    ("rskp", "distill_weights", "[1.0, -0.2]", ">= 0 for each element"),
    ("stpn", "sparsity_weight", "-1e-4", ">= 0"),
    ("stpn", "test_stream_weight", "1.5", "in [0, 1]"),
    ("stpn", "attention_hidden", "0", "an integer >= 1"),
    ("basnet", "dropout", "1.0", "in [0, 1)"),
    ("basnet", "topk_ratio", "0.5", ">= 1"),
    ("basnet", "norm_weight", ".nan", ">= 0"),
    ("wum", "margin", "0", "> 0"),
    ("wum", "act_ratio", ".inf", ">= 1"),
    ("wum", "hidden_dim", "-4", "an integer >= 1"),
    ("facnet", "temperatures", "[1.0, 0.0]", "> 0 for each element"),
    ("facnet", "temperatures", "[]", "one or more numbers"),
    ("facnet", "scale", "-5", "> 0"),
    ("facnet", "test_stream_weights", "[]", "list of one or more numbers"),
    ("mil", "dropout", "1.5", "in [0, 1)"),
    ("mil", "topk_ratio", "0.9", ">= 1"),
    ("mil", "embed_dim", "0", "an integer >= 1"),
    ("mil", "dropout", "high", "in [0, 1)"),
]


@pytest.mark.parametrize("model, key, value, allowed", BAD_HYPERPARAMETERS,
                         ids=[f"{m}.{k}={v}" for m, k, v, _ in BAD_HYPERPARAMETERS])
def test_hyperparameter_out_of_range_is_an_input_error(model, key, value, allowed):
    with pytest.raises(WtalInputError) as info:
        resolve_config(model, overrides=[f"model.params.{key}={value}"])
    assert f"model.params.{key} = " in str(info.value) and allowed in str(info.value)


@pytest.mark.parametrize("model, key, value", [
    ("rskp", "dropout", 0.0), ("rskp", "propagation_weight", 0.0), ("rskp", "memory_target_weight", 1.0),
    ("rskp", "em_iterations", 0), ("stpn", "sparsity_length", None), ("wum", "margin_reference_dim", None),
    ("mil", "topk_ratio", 1.0), ("facnet", "temperatures", [0.5]),
])
def test_hyperparameter_range_boundaries_that_are_allowed(model, key, value):
    cfg = resolve_config(model, overrides=[f"model.params.{key}={'null' if value is None else value}"])
    built = build_model(cfg.model.name, joint_context(8, 3), **cfg.model.params)
    assert built is not None


BAD_SETTINGS = [
    ("optim.lr", ".nan", "> 0"),
    ("optim.betas", "[0.9, 1.0]", "in [0, 1) for each element"),
    ("optim.weight_decay", "-0.1", ">= 0"),
    ("optim.grad_clip", "0", "> 0"),
    ("optim.schedule.warmup_epochs", ".nan", ">= 0"),
    ("optim.schedule.factors", "[1.0, -0.1]", ">= 0 for each element"),
    ("optim.short_schedule.warmup_epochs", "-1", ">= 0"),
    ("data.val_fraction", "1.0", "in [0, 1)"),
    ("data.eval_batch_size", "0", "an integer >= 1"),
    ("data.val_seed", "-1", "an integer >= 0"),
    ("train.seed", "-3", "an integer >= 0"),
    ("train.epochs", "0", "an integer >= 1"),
    ("eval.tiou", "[0.0, 0.5]", "in (0, 1] for each element"),
    ("eval.tiou", "[0.5, 1.5]", "in (0, 1] for each element"),
    ("eval.tiou", "[]", "at least one tIoU"),
]


@pytest.mark.parametrize("key, value, allowed", BAD_SETTINGS, ids=[f"{k}={v}" for k, v, _ in BAD_SETTINGS])
def test_run_setting_out_of_range_is_an_input_error(key, value, allowed):
    with pytest.raises(WtalInputError) as info:
        resolve_config("mil", overrides=[f"{key}={value}"])
    assert f"{key} = " in str(info.value) and allowed in str(info.value)


def test_run_setting_boundaries_that_are_allowed():
    cfg = resolve_config("mil", overrides=["optim.betas=[0.0, 0.999]", "eval.tiou=[1.0]", "data.val_fraction=0",
                                           "train.select=last", "optim.weight_decay=0"])
    assert cfg.eval.tiou == [1.0] and cfg.optim.betas == [0.0, 0.999]


def test_bad_value_stops_train_before_the_data_is_read(tmp_path, capsys):
    code = main(["train", "--config", "rskp", "--data", str(tmp_path / "no_data_here"), "--out", str(tmp_path / "run"),
                 "--set", "model.params.dropout=1.5"])
    err = capsys.readouterr().err
    assert code == 2 and "model.params.dropout = 1.5" in err and "no_data_here" not in err
    assert err.count("error:") == 1 and "Traceback" not in err


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_numeric_hyperparameter_declares_its_range(name):
    cls = model_class(name).hyperparameters
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        numeric = {int, float} & {typing.get_origin(a) or a for a in _leaves(hints[f.name])}
        assert not numeric or "range" in f.metadata, f"{name}.{f.name} has no declared range"
        assert "range" not in f.metadata or f.metadata["range"].contains(f.default) or f.default is None or all(
            f.metadata["range"].contains(v) for v in f.default), f"{name}.{f.name}: default outside its range"


def _leaves(tp) -> list:
    args = typing.get_args(tp)
    return [leaf for a in args for leaf in _leaves(a)] if args else [tp]


def test_range_ends_and_non_finite_values():
    assert BELOW_ONE.contains(0) and BELOW_ONE.contains(0.999) and not BELOW_ONE.contains(1.0)
    assert FRACTION.contains(1.0) and not FRACTION.contains(0.0)
    assert not POSITIVE.contains(0.0) and not POSITIVE.contains(float("inf")) and not POSITIVE.contains(float("nan"))
    assert COUNT.contains(3) and not COUNT.contains(3.0) and not COUNT.contains(True) and not COUNT.contains(0)
    assert DIVISOR.contains(1.0) and not DIVISOR.contains(0.99)
    assert Range(high=2, high_open=True).describe() == "a number < 2" and Range().describe() == "a finite number"


def test_facnet_needs_one_test_weight_per_stream_branch():
    cfg = resolve_config("facnet", overrides=["model.params.test_stream_weights=[0.5, 0.3, 0.2]"])
    with pytest.raises(WtalInputError, match="2 stream branches but 3 test_stream_weights"):
        build_model(cfg.model.name, joint_context(8, 3), **cfg.model.params)
    rgb_only = build_model(cfg.model.name, joint_context(8, 3, streams=("rgb",)), **cfg.model.params)
    assert rgb_only.stream_weights == [1.0]  # one stream: its branch alone
