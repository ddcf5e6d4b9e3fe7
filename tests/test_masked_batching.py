"""A padded batch of whole videos equals one video at a time: same per-video losses, same summed gradients.

Models run in float64. Dropout is switched off through the models' ``dropout`` hyperparameter so that the
train-mode code paths (RSKP's memory update, WUM's magnitude dropout) run deterministically; a second pass
uses eval mode with the default hyperparameters.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import SMALL_MODELS, as_double, collate_joint, fill_label_store, model_context

from wtal.models import DETECTION_MODEL_NAMES, build_model

DIM, CLASSES = 32, 4
LENGTHS = (5, 23, 40)
NO_DROPOUT = {"rskp": {"dropout": 0.0}, "stpn": {}, "basnet": {"dropout": 0.0}, "wum": {"dropout": 0.0},
              "facnet": {"dropout": 0.0}, "mil": {"dropout": 0.0}, "mmsd": {"dropout": 0.0},
              "vlp": {"dropout": 0.0}, "issf": {"dropout": 0.0}, "mutual": {"dropout": 0.0}}


def _videos(seed: int):
    rng = np.random.default_rng(seed)
    labels = [np.array([1, 0, 0, 0]), np.array([0, 1, 1, 0]), np.array([0, 0, 0, 1])]
    return [(rng.normal(size=(t, DIM)).astype(np.float32) * 2.0, lab.astype(np.float32), f"v{i}", i)
            for i, (t, lab) in enumerate(zip(LENGTHS, labels, strict=True))]


def _model(name: str, params: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, model_context(name, DIM, CLASSES), **SMALL_MODELS.get(name, {}), **params).double()
    if name in ("rskp", "issf"):  # a filled memory so that the memory branch is exercised after warm-up
        model.memory.normal_()
        model.memory_scores.uniform_()
    if name == "mmsd":  # stored snippet labels of the three videos, so that the self-voting loss runs
        fill_label_store(model, LENGTHS)
    return model


def _run(model, items, epoch):
    batch = as_double(collate_joint(items))
    model.zero_grad()
    out = model(batch)
    losses = model.losses(out, batch, epoch)
    losses["total"].sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def _compare(name: str, params: dict, train: bool, epoch: int):
    items = _videos(1)
    model = _model(name, params)
    model.train(train)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    batched_losses, batched_grads = _run(model, items, epoch)
    after_batch = {k: v.clone() for k, v in model.state_dict().items()}

    single_losses, single_grads = [], {}
    for item in items:
        model.load_state_dict(start)  # each video reads the memory the whole batch read
        losses, grads = _run(model, [item], epoch)
        single_losses.append(losses)
        for k, g in grads.items():
            single_grads[k] = single_grads.get(k, 0) + g

    for key, value in batched_losses.items():
        alone = torch.cat([s[key] for s in single_losses])
        torch.testing.assert_close(value, alone, atol=1e-8, rtol=1e-7, msg=f"{name} loss {key}")
    assert set(batched_grads) == set(single_grads)
    for key, grad in batched_grads.items():
        torch.testing.assert_close(grad, single_grads[key], atol=1e-8, rtol=1e-6, msg=f"{name} grad {key}")
    return start, after_batch, items


@pytest.mark.parametrize("name", DETECTION_MODEL_NAMES)
def test_padded_batch_equals_single_videos_train_mode_without_dropout(name):
    _compare(name, NO_DROPOUT[name], train=True, epoch=150)


@pytest.mark.parametrize("name", DETECTION_MODEL_NAMES)
def test_padded_batch_equals_single_videos_eval_mode(name):
    _compare(name, {}, train=False, epoch=150)


def test_rskp_warmup_epoch_batch_equals_single_videos():
    _compare("rskp", NO_DROPOUT["rskp"], train=True, epoch=3)


def test_rskp_batch_memory_update_equals_sequential_updates():
    """Reads all happen before the updates; the updates then equal one video after another."""
    start, after_batch, items = _compare("rskp", NO_DROPOUT["rskp"], train=True, epoch=150)
    model = _model("rskp", NO_DROPOUT["rskp"])
    model.load_state_dict(start)
    model.train()
    for item in items:
        _run(model, [item], 150)
    torch.testing.assert_close(model.memory_scores, after_batch["memory_scores"], atol=0, rtol=0)
    torch.testing.assert_close(model.memory, after_batch["memory"], atol=1e-12, rtol=0)
    assert not torch.equal(after_batch["memory_scores"], start["memory_scores"])  # the update happened
