"""``wtal pseudolabel``: a CAS file of any model -> LinPro pseudo labels (labels.npz).

Pipeline per video: class gating, multi-threshold proposals and Gaussian fusion
(:func:`wtal.localize.pipeline.localize_video`, ``method="fusion"``), kept in snippet units, then LinPro
(:mod:`wtal.pseudo.linpro`) per class. Output archive (``np.savez``, no pickle):

``VIDEO``        ``(T, C)`` float32 pseudo labels, columns in CAS column order (0 for ungated classes)
``__classes__``  ``(C,)`` str class names
``__fps__``      scalar float64 snippets per second (copied from the CAS file)

Pseudo labels are a *training-time* product, so the fusion temperature defaults to the training value of
each preset (paper §4.2: 0.1; GauFuse code: 0.02 for its first generations, reference-notes §3.2), not to
the test-time value that ``wtal localize`` uses. ``--temperature`` overrides it.
"""

from __future__ import annotations

import time

import numpy as np

from wtal.atomic import write_atomic
from wtal.localize.casfile import CLASSES_KEY, FPS_KEY, read_cas_file
from wtal.localize.pipeline import LocalizeConfig, localize_video
from wtal.pseudo.linpro import LinProConfig, pseudo_labels_for_videos

TRAINING_TEMPERATURE = {"paper": 0.1, "reference": 0.02}


def pseudolabel_command(cas: str, out: str, preset: str = "paper", temperature: float | None = None,
                        class_threshold: float | None = None, temperature_mode: str | None = None) -> int:
    """Localize every video of ``cas`` with fusion, run LinPro and write the labels to ``out``."""
    t0 = time.perf_counter()
    if temperature is None:
        temperature = TRAINING_TEMPERATURE.get(preset)
    localize_cfg = LocalizeConfig.from_preset(preset, method="fusion", temperature=temperature,
                                              class_threshold=class_threshold, temperature_mode=temperature_mode)
    linpro_cfg = LinProConfig.from_preset(preset)
    cas_by_video, scores, classes, rate = read_cas_file(cas)

    videos = {}
    n_instances = 0
    for name, video_cas in cas_by_video.items():
        found = localize_video(video_cas, None if scores is None else scores[name], localize_cfg, video=name)
        n_instances += len(found)
        videos[name] = (video_cas.shape[0], found.cls, found.start, found.end, found.score)
    t_localize = time.perf_counter() - t0

    labels, stats = pseudo_labels_for_videos(videos, len(classes), linpro_cfg)
    arrays = {name: g.astype(np.float32) for name, g in labels.items()}
    arrays[CLASSES_KEY] = np.array(classes, dtype=str)
    arrays[FPS_KEY] = np.float64(rate)
    path = write_atomic(out, lambda fh: np.savez(fh, **arrays), binary=True)
    elapsed = time.perf_counter() - t0
    print(f"wtal pseudolabel: {len(labels)} videos, {n_instances} fused instances ({preset} preset, "
          f"temperature {localize_cfg.temperature}) -> {path}")
    print(f"  {stats}; localize {t_localize:.2f} s, total {elapsed:.2f} s")
    return 0
