"""``wtal embed-classes``: class-name text embeddings (``class_text.npy``) for a data folder."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from wtal.atomic import write_atomic
from wtal.data.sources import open_source
from wtal.text.clip_text import (
    DEFAULT_TEMPLATES,
    ClipTextTower,
    ClipTokenizer,
    class_phrase,
    class_text_embeddings,
    load_state_dict,
)

logger = logging.getLogger(__name__)


def embed_classes_command(clip_weights: str, vocab: str, data: str, templates: list[str] | None = None,
                          activation: str = "quick_gelu", out: str | None = None) -> int:
    source = open_source(data)
    classes = list(source.annotations.classes)
    tower = ClipTextTower.from_state_dict(load_state_dict(clip_weights), activation, path=clip_weights)
    tokenizer = ClipTokenizer(vocab, context_length=tower.context_length)
    chosen = tuple(templates) if templates else DEFAULT_TEMPLATES
    embeddings = class_text_embeddings(tower, tokenizer, classes, chosen)
    path = Path(out) if out is not None else source.class_text_path
    write_atomic(path, lambda fh: np.save(fh, embeddings, allow_pickle=False), binary=True)
    print(f"{len(classes)} classes x {embeddings.shape[1]}-d text embeddings ({len(chosen)} prompt template(s), "
          f"e.g. {chosen[0].replace('{class}', class_phrase(classes[0]))!r}) -> {path}")
    return 0
