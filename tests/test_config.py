"""Config loading, validation, --set overrides, --epochs rescaling and the learning-rate schedule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from wtal.engine.config import (
    RunConfig,
    apply_overrides,
    from_dict,
    is_epoch_key,
    load_run_config,
    parse_override,
    rescale_epochs,
    resolve_config,
)
from wtal.engine.trainer import learning_rate
from wtal.errors import WtalInputError
from wtal.models.factory import DETECTION_MODEL_NAMES

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_complete_or_extend_a_complete_base_and_are_valid(path):
    from helpers import joint_context

    from wtal.data.text import build_vocabulary
    from wtal.localize.pipeline import LocalizeConfig
    from wtal.models.base import ModelContext
    from wtal.models.factory import build_model

    raw = yaml.safe_load(path.read_text())
    grounding = raw.get("task") == "grounding" or "cpl" in raw.get("extends", "")
    complete = ({"task", "model", "grounding", "data", "optim", "train", "eval"} if grounding
                else {"model", "data", "optim", "train", "eval", "postprocess", "pseudo"})
    if "extends" in raw:  # a method config states its differences from one complete base, no chains
        base = yaml.safe_load((path.parent / raw["extends"]).read_text())
        assert "extends" not in base and complete <= set(base)
    else:
        assert complete <= set(raw), "a config without extends is complete"
    cfg = resolve_config(path)
    if grounding:  # the model accepts every listed hyper-parameter
        assert cfg.task == "grounding" and "cpl" in (cfg.model.name, cfg.model.params.get("base"))
        vocabulary = build_vocabulary(["a person opens the door"])
        build_model(cfg.model.name, ModelContext({s: 8 for s in cfg.model.streams}, (),
                                                 extras={"vocabulary": vocabulary}), **cfg.model.params)
        return
    assert cfg.model.name in DETECTION_MODEL_NAMES
    # the model accepts every listed hyper-parameter, and the postprocess section builds a LocalizeConfig
    build_model(cfg.model.name, joint_context(32, 4), **cfg.model.params)
    LocalizeConfig.from_section(cfg.postprocess)


def test_the_cpu_cpl_config_is_cpl_charades_under_its_short_schedule_rule():
    small = resolve_config(CONFIGS / "cpl_synth.yaml").to_dict()
    rule = resolve_config(CONFIGS / "cpl_charades.yaml", epochs=10, overrides=[
        "model.streams=[rgb,flow]", "grounding.num_clips=null", "model.params.hidden_dim=64",
        "model.params.ffn_dim=128", "model.params.proposal_stride=1", "train.num_threads=1"]).to_dict()
    assert small == rule
    assert small["data"]["batch_size"] == 11 and small["model"]["params"]["curriculum_epochs"] == 10
    assert small["optim"]["schedule"]["warmup_steps"] == 400  # updates: not an epoch key


def test_gaufuse_configs_differ_from_their_base_only_in_pseudo_labels_and_test_fusion():
    for name in ("rskp", "stpn", "basnet", "wum", "facnet", "mmsd", "issf"):
        plain = resolve_config(CONFIGS / f"{name}.yaml").to_dict()
        gaufuse = resolve_config(CONFIGS / f"{name}_gaufuse.yaml").to_dict()
        differing = {k for k in plain if plain[k] != gaufuse[k]}
        assert differing == {"postprocess", "pseudo"}, name
        assert plain["postprocess"]["method"] == "nms" and gaufuse["postprocess"]["method"] == "fusion"
        assert gaufuse["pseudo"]["name"] == "gaufuse"


def test_extends_merges_mappings_and_replaces_the_rest(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {name: rskp, params: {dropout: 0.6, scale: 20.0}}\n"
                                        "eval: {tiou: [0.1, 0.5]}\npostprocess: {preset: reference, method: nms}\n")
    (tmp_path / "sub").mkdir()
    child = tmp_path / "sub" / "child.yaml"
    child.write_text("extends: ../base.yaml\nmodel: {params: {dropout: 0.1}}\neval: {tiou: [0.3]}\n"
                     "postprocess: {method: fusion}\n")
    cfg = resolve_config(child)
    assert cfg.model.name == "rskp" and cfg.model.params == {"dropout": 0.1, "scale": 20.0}
    assert cfg.eval.tiou == [0.3]  # lists are replaced, not merged
    assert cfg.postprocess == {"preset": "reference", "method": "fusion"}
    saved = tmp_path / "resolved.yaml"
    saved.write_text(cfg.to_yaml())
    assert "extends" not in saved.read_text() and load_run_config(saved) == cfg  # runs store it flattened


def test_extends_errors(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("extends: b.yaml\n")
    b.write_text("extends: a.yaml\n")
    with pytest.raises(WtalInputError, match="cycle"):
        resolve_config(a)
    chain = [tmp_path / f"c{i}.yaml" for i in range(5)]
    for i, path in enumerate(chain):
        path.write_text(f"extends: c{i + 1}.yaml\n" if i < 4 else "model: {name: mil}\n")
    with pytest.raises(WtalInputError, match="more than 3 levels"):
        resolve_config(chain[0])
    assert resolve_config(chain[2]).model.name == "mil"  # two levels are fine
    missing = tmp_path / "m.yaml"
    missing.write_text("extends: nowhere.yaml\n")
    with pytest.raises(WtalInputError, match="nowhere.yaml.*not found"):
        resolve_config(missing)


def test_old_modality_key_says_what_replaced_it(tmp_path):
    with pytest.raises(WtalInputError, match="data.modality") as err:
        resolve_config(_write(tmp_path, "data: {modality: rgb}\n"))
    assert "model.streams" in err.value.fix


def test_streams_task_and_teacher_are_validated(tmp_path):
    assert resolve_config(_write(tmp_path, "model: {name: mil}\n")).model.streams == ["rgb", "flow"]
    with pytest.raises(WtalInputError, match="model.streams"):
        resolve_config(_write(tmp_path, "model: {name: mil, streams: []}\n"))
    with pytest.raises(WtalInputError, match="model.streams"):
        resolve_config(_write(tmp_path, "model: {name: mil, streams: [rgb, rgb]}\n"))
    with pytest.raises(WtalInputError, match="task"):
        resolve_config(_write(tmp_path, "task: segmentation\n"))
    with pytest.raises(WtalInputError, match="exactly one of teacher.run"):
        resolve_config(_write(tmp_path, "teacher: {checkpoint: best}\n"))


def test_set_creates_a_teacher_section_and_addresses_list_items(tmp_path):
    path = _write(tmp_path, "model: {name: mil, streams: [rgb]}\nplugins: [{name: a, k: 1}, {name: b}]\n")
    cfg = resolve_config(path, overrides=["teacher.run=some/run", "plugins.1.k=5"])
    assert cfg.teacher.run == str((Path.cwd() / "some" / "run").resolve())  # stored absolute
    assert cfg.teacher.checkpoint == "selected" and cfg.plugins == [{"name": "a", "k": 1}, {"name": "b", "k": 5}]
    with pytest.raises(WtalInputError, match="list of 2 item"):
        resolve_config(path, overrides=["plugins.2.k=1"])
    with pytest.raises(WtalInputError, match="unknown config key 'teacher.nope'"):
        resolve_config(path, overrides=["teacher.nope=1"])


def test_teacher_config_file_is_read_into_the_run_config(tmp_path):
    (tmp_path / "t.yaml").write_text("model: {name: rskp, streams: [rgb, flow], params: {dropout: 0.2}}\n")
    path = _write(tmp_path, "model: {name: mil, streams: [rgb]}\nteacher: {config: t.yaml}\n")
    cfg = resolve_config(path)
    assert cfg.teacher.model.name == "rskp" and cfg.teacher.model.params == {"dropout": 0.2}
    assert cfg.teacher.config == str((tmp_path / "t.yaml").resolve())
    saved = tmp_path / "resolved.yaml"
    saved.write_text(cfg.to_yaml())
    (tmp_path / "t.yaml").unlink()  # the run folder does not need the teacher's file any more
    assert load_run_config(saved).teacher.model.params == {"dropout": 0.2}


def test_data_path_is_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = resolve_config(_write(tmp_path, "model: {name: mil}\n"), data_path="rel/data")
    assert cfg.data.path == str(tmp_path.resolve() / "rel" / "data")


def test_every_thumos_model_has_a_config():
    for name in ("rskp", "stpn", "basnet", "wum", "facnet", "issf"):
        cfg = resolve_config(CONFIGS / f"{name}.yaml")
        assert cfg.model.name == name and cfg.eval.tiou == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]


def test_stpn_config_has_the_reproduction_schedule():
    # bellos1203/STPN: 80000 Adam steps of 6 videos at lr 1e-4 over THUMOS14's 200 training videos.
    cfg = resolve_config(CONFIGS / "stpn.yaml")
    assert cfg.optim.lr == 1e-4 and cfg.data.batch_size == 6
    assert cfg.train.epochs * 200 / cfg.data.batch_size == 80000
    short = resolve_config(CONFIGS / "stpn.yaml", epochs=40)  # 60x compression: sqrt rate rule, 1 video/step
    assert short.data.batch_size == 1 and short.optim.lr == pytest.approx(1e-4 * 60 ** 0.5)


def test_rskp_config_has_the_reference_optimiser():
    cfg = resolve_config(CONFIGS / "rskp.yaml")
    assert cfg.optim.lr == 5e-5 and cfg.optim.betas == [0.9, 0.99] and cfg.optim.weight_decay == 5e-4
    assert cfg.optim.name == "adam" and cfg.optim.schedule.type == "constant"
    assert cfg.train.epochs == 200 and cfg.model.params["warmup_epoch"] == 100
    assert cfg.data.batch_size == 10


def test_defaults_fill_missing_keys_and_round_trip(tmp_path):
    cfg = resolve_config(_write(tmp_path, "model: {name: mil}\ntrain: {epochs: 7}\n"))
    assert cfg.train.epochs == 7 and cfg.data.batch_size == 10 and cfg.pseudo is None
    saved = tmp_path / "resolved.yaml"
    saved.write_text(cfg.to_yaml())
    assert load_run_config(saved) == cfg


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(WtalInputError, match="optim.learning_rate") as info:
        resolve_config(_write(tmp_path, "optim: {learning_rate: 0.1}\n"))
    assert "weight_decay" in str(info.value)


@pytest.mark.parametrize("text, key", [
    ("train: {epochs: ten}\n", "train.epochs"),
    ("optim: {lr: -1.0}\n", "optim.lr"),
    ("optim: {schedule: {type: step, milestones: [3], factors: [1.0]}}\n", "factors"),
    ("train: {select: best}\n", "train.select"),
    ("data: [1, 2]\n", "data"),
    ("data: {val_fraction: 0.0}\n", "select"),
])
def test_invalid_values_are_input_errors(tmp_path, text, key):
    with pytest.raises(WtalInputError, match=key.replace(".", r"\.")):
        resolve_config(_write(tmp_path, text))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(WtalInputError, match="not found"):
        resolve_config(tmp_path / "nope.yaml")
    with pytest.raises(WtalInputError, match="malformed YAML"):
        resolve_config(_write(tmp_path, "model: {name: [\n"))


def test_parse_override_values():
    assert parse_override("optim.lr=1e-4") == (["optim", "lr"], 1e-4)
    assert parse_override("optim.betas=[0.9, 0.99]") == (["optim", "betas"], [0.9, 0.99])
    assert parse_override("train.select=last") == (["train", "select"], "last")
    assert parse_override("optim.grad_clip=null") == (["optim", "grad_clip"], None)
    assert parse_override("train.tensorboard=true") == (["train", "tensorboard"], True)
    with pytest.raises(WtalInputError, match="KEY=VALUE"):
        parse_override("optim.lr")


def test_overrides_apply_and_reject_unknown_keys():
    tree = RunConfig().to_dict()
    out = apply_overrides(tree, ["optim.lr=0.5", "optim.schedule.type=step", "model.params.new_knob=3",
                                 "pseudo.name=gaufuse", "postprocess.method=nms"])
    assert out["optim"]["lr"] == 0.5 and out["optim"]["schedule"]["type"] == "step"
    assert out["model"]["params"] == {"new_knob": 3}
    assert out["pseudo"] == {"name": "gaufuse"} and out["postprocess"]["method"] == "nms"
    assert tree["optim"]["lr"] == RunConfig().optim.lr  # input untouched
    with pytest.raises(WtalInputError, match="optim.lrr") as info:
        apply_overrides(tree, ["optim.lrr=1"])
    assert "'lr'" in str(info.value) and "weight_decay" in str(info.value)
    with pytest.raises(WtalInputError, match="unknown config key 'trian'"):
        apply_overrides(tree, ["trian.epochs=3"])


def test_is_epoch_key():
    for key in ("epochs", "warmup_epoch", "warmup_epochs", "dist_epochs", "eval_every", "milestones"):
        assert is_epoch_key(key)
    for key in ("epoch_weight", "lr", "batch_size", "spl_weight", "epochsx"):
        assert not is_epoch_key(key)


def test_rescale_epochs_scales_every_boundary():
    tree = RunConfig().to_dict()
    tree["train"].update(epochs=200, eval_every=5)
    tree["optim"].update(lr=5e-5)
    tree["optim"]["schedule"].update(type="step", milestones=[80, 200, 245], factors=[1, 0.8, 0.4, 0.1],
                                     warmup_epochs=2.5)
    tree["model"]["params"] = {"warmup_epoch": 100, "spl_restore_epoch": None, "scale": 20.0, "dropout": 0.6}
    tree["pseudo"] = {"name": "x", "dist_epochs": [200, 230, 245], "temperature": 0.02}
    out = rescale_epochs(tree, 40)
    assert out["train"]["epochs"] == 40 and out["train"]["eval_every"] == 1
    assert out["optim"]["schedule"]["milestones"] == [16, 40, 49]
    assert out["optim"]["schedule"]["warmup_epochs"] == pytest.approx(0.5)
    assert out["model"]["params"] == {"warmup_epoch": 20, "spl_restore_epoch": None, "scale": 20.0, "dropout": 0.6}
    assert out["pseudo"] == {"name": "x", "dist_epochs": [40, 46, 49], "temperature": 0.02}
    assert out["optim"]["lr"] == 5e-5  # lr_scaling defaults to none
    assert tree["train"]["epochs"] == 200  # input untouched


def test_rescale_keeps_positive_boundaries_positive_and_can_lengthen():
    tree = RunConfig().to_dict()
    tree["train"].update(epochs=200, eval_every=5)
    tree["model"]["params"] = {"warmup_epoch": 100, "start_epoch": 0}
    out = rescale_epochs(tree, 2)
    assert out["train"]["eval_every"] == 1 and out["model"]["params"] == {"warmup_epoch": 1, "start_epoch": 0}
    longer = rescale_epochs(tree, 400)
    assert longer["model"]["params"]["warmup_epoch"] == 200 and longer["train"]["eval_every"] == 10


@pytest.mark.parametrize("rule, factor", [("linear", 5.0), ("sqrt", math.sqrt(5.0)), ("none", 1.0)])
def test_short_schedule_learning_rate_rule(rule, factor):
    tree = RunConfig().to_dict()
    tree["train"]["epochs"] = 200
    tree["optim"]["lr"] = 5e-5
    tree["optim"]["short_schedule"] = {"lr_scaling": rule, "warmup_epochs": 3}
    out = rescale_epochs(tree, 40)
    assert out["optim"]["lr"] == pytest.approx(5e-5 * factor)
    assert out["optim"]["schedule"]["warmup_epochs"] == 3  # in epochs of the short run, not rescaled
    assert out["optim"]["short_schedule"]["warmup_epochs"] == 3
    same = rescale_epochs(tree, 200)  # no compression: no lr change, no warm-up
    assert same["optim"]["lr"] == 5e-5 and same["optim"]["schedule"]["warmup_epochs"] == 0


@pytest.mark.parametrize("epochs, expected", [(40, 2), (100, 5), (20, 1), (1, 1), (200, 10), (400, 10)])
def test_short_schedule_keep_steps_divides_the_batch(epochs, expected):
    tree = RunConfig().to_dict()
    tree["train"]["epochs"], tree["data"]["batch_size"] = 200, 10
    tree["optim"]["short_schedule"] = {"lr_scaling": "none", "batch_scaling": "keep_steps"}
    assert rescale_epochs(tree, epochs)["data"]["batch_size"] == expected  # never below 1, never grows
    tree["optim"]["short_schedule"]["batch_scaling"] = "none"
    assert rescale_epochs(tree, 40)["data"]["batch_size"] == 10


def test_width_scaling_factor_and_validation(tmp_path):
    cfg = from_dict({"optim": {"lr": 1e-4, "width_scaling": {"reference_dim": 2048, "power": 0.5}}})
    assert cfg.optim.width_scaling.factor(256) == pytest.approx(math.sqrt(8.0))
    assert cfg.optim.width_scaling.factor(2048) == 1.0
    assert learning_rate(cfg.optim, 0, 0, 10, input_dim=512) == pytest.approx(2e-4)
    assert learning_rate(cfg.optim, 0, 0, 10) == 1e-4  # no dimension given: no factor
    assert from_dict({}).optim.width_scaling.factor(256) == 1.0  # off by default
    with pytest.raises(WtalInputError, match="width_scaling.power"):
        resolve_config(_write(tmp_path, "optim: {width_scaling: {reference_dim: 2048, power: 2}}\n"))
    with pytest.raises(WtalInputError, match="width_scaling.reference_dim"):
        resolve_config(_write(tmp_path, "optim: {width_scaling: {reference_dim: 0}}\n"))


def test_resolve_order_epochs_then_overrides_then_seed(tmp_path):
    path = _write(tmp_path, "model: {name: rskp, params: {warmup_epoch: 100}}\ntrain: {epochs: 200}\n"
                            "optim: {lr: 1.0e-4, short_schedule: {lr_scaling: linear}}\n")
    cfg = resolve_config(path, epochs=40, overrides=["model.params.warmup_epoch=7"], seed=9, data_path="/d")
    assert cfg.model.params["warmup_epoch"] == 7  # --set is literal, after rescaling
    assert cfg.optim.lr == pytest.approx(5e-4) and cfg.train.seed == 9 and cfg.data.path == "/d"
    cfg = resolve_config(path, epochs=40, overrides=["optim.lr=1e-3"])
    assert cfg.optim.lr == 1e-3


def test_learning_rate_schedules():
    cfg = from_dict({"optim": {"lr": 1.0, "schedule": {"type": "step", "milestones": [80, 200],
                                                         "factors": [1.0, 0.8, 0.1]}}})
    # milestones are epoch indices where the next factor starts (GauFuse: E = e + 1 in (80, 200] -> 4e-5)
    assert [learning_rate(cfg.optim, e, 10_000, 20) for e in (0, 79, 80, 199, 200, 300)] == \
        [1.0, 1.0, 0.8, 0.8, 0.1, 0.1]
    cfg = from_dict({"optim": {"lr": 2.0, "schedule": {"warmup_epochs": 2}}})
    # 2 epochs of 5 steps: linear ramp over 10 steps, then constant
    assert [learning_rate(cfg.optim, 0, s, 5) for s in (0, 4, 9, 10, 50)] == [0.2, 1.0, 2.0, 2.0, 2.0]


def test_inverse_sqrt_schedule_is_fairseqs_formula():
    cfg = from_dict({"optim": {"lr": 4e-4, "schedule": {"type": "inverse_sqrt", "warmup_steps": 400,
                                                          "warmup_init_lr": 1e-7}}})

    def straight(update: int) -> float:  # fairseq: linspace(init, lr, W)[update] in the warm-up, then lr*sqrt(W/n)
        return 1e-7 + update * (4e-4 - 1e-7) / 400 if update < 400 else 4e-4 * (400 / update) ** 0.5

    steps = [0, 1, 199, 399, 400, 401, 1600, 10_000]
    rates = [learning_rate(cfg.optim, 7, s, 331.3) for s in steps]  # neither the epoch nor its length matters
    assert rates == pytest.approx([straight(s) for s in steps], rel=1e-12)
    assert rates[0] == pytest.approx(1e-7) and rates[4] == pytest.approx(4e-4) and rates[6] == pytest.approx(2e-4)
    # the width factor scales the peak; the warm-up still starts at warmup_init_lr
    cfg.optim.width_scaling.reference_dim = 1024
    assert learning_rate(cfg.optim, 0, 1600, 10, input_dim=256) == pytest.approx(2 * 2e-4)
    assert learning_rate(cfg.optim, 0, 0, 10, input_dim=256) == pytest.approx(1e-7)


@pytest.mark.parametrize("schedule, key", [({"type": "inverse_sqrt"}, "warmup_steps"),
                                           ({"type": "inverse_sqrt", "warmup_steps": 4, "warmup_epochs": 1},
                                            "warmup_epochs"),
                                           ({"type": "constant", "warmup_steps": 4}, "warmup_steps")])
def test_inverse_sqrt_schedule_keys_are_checked(schedule, key):
    with pytest.raises(WtalInputError, match=key):
        from_dict({"optim": {"schedule": schedule}})


def test_short_schedule_warmup_is_not_added_to_an_inverse_sqrt_schedule():
    tree = from_dict({"optim": {"schedule": {"type": "inverse_sqrt", "warmup_steps": 400},
                                "short_schedule": {"warmup_epochs": 2}}, "train": {"epochs": 30}}).to_dict()
    out = rescale_epochs(tree, 6)
    assert out["optim"]["schedule"]["warmup_epochs"] == 0 and out["optim"]["schedule"]["warmup_steps"] == 400
    from_dict(out)  # still valid


# ------------------------------------------------------------------------------- shipped configs by name


def test_shipped_config_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    by_path = resolve_config(CONFIGS / "rskp_gaufuse.yaml")
    assert resolve_config("rskp_gaufuse") == by_path == resolve_config("rskp_gaufuse.yaml")
    assert resolve_config("mil", epochs=4).train.epochs == 4


def test_a_local_file_wins_over_the_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "model: {name: mil}\n").rename(tmp_path / "rskp.yaml")
    assert resolve_config("rskp.yaml").model.name == "mil"
    assert resolve_config("rskp").model.name == "rskp"  # no file named "rskp": the shipped config


@pytest.mark.parametrize("name", ["rskpp", "rskp.yml", "../rskp"])
def test_unknown_config_name_lists_the_shipped_ones(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WtalInputError) as info:
        resolve_config(name)
    for shipped in ("rskp", "rskp_gaufuse", "mil", "anet13_wum"):
        assert f" {shipped}," in info.value.fix or info.value.fix.endswith(f" {shipped}")


def test_the_repository_configs_folder_is_the_shipped_one():
    from wtal.engine.config import shipped_config, shipped_config_names

    names = shipped_config_names()
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(names)
    assert shipped_config("rskp").resolve() == (CONFIGS / "rskp.yaml").resolve()
    assert (CONFIGS / "README.md").is_file()
