"""Benchmark: the cost of learnable prompt context in the VLP branch, against fixed class-text rows.

A random text tower shaped as CLIP ViT-B/16's (vocabulary 49,408, width 512, 12 layers, context 77, 512-d
output; about 63M parameters, frozen) encodes THUMOS14's 20 class names behind ``M`` learnable context tokens.
The tokenizer has no merges (every byte is a token), so the class prompts are longer than with CLIP's real
vocabulary (an upper bound on the cost). Times, on the current device:

* the prompt learner alone, forward and backward (the per-step extra cost of learning the context);
* one training step (forward, backward) of the VLP branch on a batch of videos of CLIP features, with fixed
  class-text rows and with learnt prompts, and their ratio.

Run: ``python benchmarks/bench_vlp_prompt.py [--context 4] [--videos 10] [--snippets 250] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wtal.data.batch import Batch
from wtal.models.base import ModelContext
from wtal.models.factory import build_model
from wtal.text.clip_text import _BLOCK_KEYS, ClipTextTower, ClipTokenizer
from wtal.text.prompt import PromptLearner

THUMOS_CLASSES = ("BaseballPitch", "BasketballDunk", "Billiards", "CleanAndJerk", "CliffDiving", "CricketBowling",
                  "CricketShot", "Diving", "FrisbeeCatch", "GolfSwing", "HammerThrow", "HighJump", "JavelinThrow",
                  "LongJump", "PoleVault", "Shotput", "SoccerPenalty", "TennisSwing", "ThrowDiscus",
                  "VolleyballSpiking")
VOCAB, WIDTH, LAYERS, CONTEXT, EMBED = 49408, 512, 12, 77, 512


def random_tower(seed: int = 0) -> ClipTextTower:
    torch.manual_seed(seed)
    tower = ClipTextTower(VOCAB, CONTEXT, WIDTH, LAYERS, EMBED)
    with torch.no_grad():
        for p in tower.parameters():
            p.normal_(0.0, 0.02)
    return tower.eval()


def open_clip_state(tower: ClipTextTower) -> dict[str, torch.Tensor]:
    """The tower's weights under open_clip's keys (what ``text_encoder`` files hold)."""
    own = tower.state_dict()
    state = {k: own[k] for k in ("token_embedding.weight", "positional_embedding", "text_projection",
                                 "ln_final.weight", "ln_final.bias")}
    for i in range(len(tower.blocks)):
        for mine, theirs in _BLOCK_KEYS.items():
            for part in ("weight", "bias"):
                state[f"transformer.resblocks.{i}.{theirs}{part}"] = own[f"blocks.{i}.{mine}.{part}"]
    return state


def timed(step, repeats: int) -> float:
    """Median seconds of ``step()`` over ``repeats`` runs after one warm-up run."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--context", type=int, default=4, help="learnable context tokens M")
    p.add_argument("--videos", type=int, default=10, help="videos per training step")
    p.add_argument("--snippets", type=int, default=250, help="snippets per video")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "bpe_bytes.txt.gz"
        with gzip.open(vocab, "wt", encoding="utf-8") as fh:
            fh.write("#version: 0.2\n")  # no merges: every byte is its own token
        tokenizer = ClipTokenizer(vocab, context_length=CONTEXT)
        weights = Path(tmp) / "tower.pt"
        tower = random_tower()
        learner = PromptLearner(tower, tokenizer, list(THUMOS_CLASSES), a.context)
        length = learner.token_ids.shape[1]

        def prompts_step() -> None:
            learner.context.grad = None
            learner().sum().backward()

        prompt_s = timed(prompts_step, a.repeats)
        rng = np.random.default_rng(0)
        x = torch.as_tensor(rng.normal(size=(a.videos, a.snippets, EMBED)).astype(np.float32))
        labels = torch.as_tensor(np.eye(len(THUMOS_CLASSES), dtype=np.float32)[np.arange(a.videos) % 20])
        batch = Batch(inputs={"clip": x}, mask=torch.ones(x.shape[:2], dtype=torch.bool), labels=labels,
                      names=[f"v{i}" for i in range(a.videos)], index=torch.arange(a.videos), fields={})
        text = rng.normal(size=(len(THUMOS_CLASSES), EMBED)).astype(np.float32)
        fixed = build_model("vlp", ModelContext({"clip": EMBED}, THUMOS_CLASSES, class_text=text))
        torch.save(open_clip_state(tower), weights)
        prompted = build_model("vlp", ModelContext({"clip": EMBED}, THUMOS_CLASSES), prompt_context=a.context,
                               text_encoder=str(weights), text_vocab=str(vocab))

        def branch_step(model) -> None:
            model.zero_grad(set_to_none=True)
            model.losses(model(batch), batch, 0)["total"].sum().backward()

        fixed_s = timed(lambda: branch_step(fixed), a.repeats)
        prompted_s = timed(lambda: branch_step(prompted), a.repeats)
    frozen = sum(p.numel() for p in tower.parameters())
    print(f"text tower: {frozen / 1e6:.1f}M frozen parameters; {len(THUMOS_CLASSES)} class prompts of up to "
          f"{length} tokens ({a.context} learnable), {torch.get_num_threads()} thread(s)")
    print(f"prompt learner forward + backward: {1e3 * prompt_s:.0f} ms")
    print(f"VLP branch step, {a.videos} videos x {a.snippets} snippets: fixed class text {1e3 * fixed_s:.0f} ms, "
          f"learnt prompts {1e3 * prompted_s:.0f} ms ({prompted_s / fixed_s:.1f}x)")


if __name__ == "__main__":
    main()
