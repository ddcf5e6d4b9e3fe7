"""``wtal pseudolabel``: a CAS file of any model -> LinPro pseudo labels (labels.npz).

The same pipeline as a training-time generation (:func:`wtal.pseudo.generate.label_videos`): per video,
class gating by the video scores (every class when the file has none), multi-threshold proposals and
Gaussian fusion (:func:`wtal.localize.pipeline.localize_video`, ``method="fusion"``) in snippet units, then
LinPro (:mod:`wtal.pseudo.linpro`) per class, over worker processes for large files. Output archive
(``np.savez``, no pickle):

``VIDEO``        ``(T, C)`` float32 pseudo labels, columns in CAS column order (0 for ungated classes)
``__classes__``  ``(C,)`` str class names
``__fps__``      scalar float64 snippets per second (copied from the CAS file)

Pseudo labels are a *training-time* product, so the fusion temperature defaults to the training value of
each preset (paper §4.2: 0.1; GauFuse code: 0.02 for its first generations), not to
the test-time value that ``wtal localize`` uses. ``--temperature`` overrides it.
"""

from __future__ import annotations

import time

import numpy as np

from wtal.atomic import write_atomic
from wtal.localize.casfile import CLASSES_KEY, FPS_KEY, read_cas_file
from wtal.localize.pipeline import LocalizeConfig
from wtal.pseudo.generate import label_videos
from wtal.pseudo.linpro import LinProConfig
from wtal.pseudo.teacher import VideoScores

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
    no_labels = np.zeros(len(classes))
    teacher = {name: VideoScores(c.astype(np.float64), None if scores is None else scores[name], no_labels)
               for name, c in cas_by_video.items()}
    labels, stats, timings = label_videos(teacher, localize_cfg, linpro_cfg, gate_by_labels=False)
    arrays = {name: g.astype(np.float32) for name, g in labels.items()}
    arrays[CLASSES_KEY] = np.array(classes, dtype=str)
    arrays[FPS_KEY] = np.float64(rate)
    path = write_atomic(out, lambda fh: np.savez(fh, **arrays), binary=True)
    elapsed = time.perf_counter() - t0
    print(f"wtal pseudolabel: {len(labels)} videos ({preset} preset, temperature {localize_cfg.temperature}) "
          f"-> {path}")
    print(f"  {stats}; localize {timings.localize:.2f} s, LinPro {timings.linpro:.2f} s over {timings.workers} "
          f"process(es), total {elapsed:.2f} s")
    return 0
