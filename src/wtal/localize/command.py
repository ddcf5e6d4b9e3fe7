"""``wtal localize``: a CAS file of any model -> ActivityNet result JSON."""

from __future__ import annotations

from wtal.localize.casfile import read_cas_file
from wtal.localize.pipeline import LocalizeConfig, localize_videos


def localize_command(cas: str, out: str, method: str = "fusion", preset: str = "paper",
                     template: str | None = None, temperature: float | None = None,
                     class_threshold: float | None = None, temperature_mode: str | None = None) -> int:
    """Localize every video of the CAS file ``cas`` and write the detections (seconds) to ``out``."""
    from wtal.evaluation.results import write_results  # lazy: evaluation is not needed to localize

    cfg = LocalizeConfig.from_preset(preset, method=method, template=template, temperature=temperature,
                                     class_threshold=class_threshold, temperature_mode=temperature_mode)
    cas_by_video, scores, classes, rate = read_cas_file(cas)
    table = localize_videos(cas_by_video, scores, classes, cfg, rate)
    path = write_results(out, table)
    n_videos = len(set(table.video.tolist()))
    print(f"wtal localize: {len(table)} detections in {n_videos} of {len(cas_by_video)} videos "
          f"({cfg.preset} preset, {cfg.method}) -> {path}")
    return 0
