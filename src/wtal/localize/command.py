"""``wtal localize``: a CAS file of any model -> ActivityNet result JSON."""

from __future__ import annotations

from typing import Any

from wtal.localize.casfile import read_cas_file
from wtal.localize.pipeline import LocalizeConfig, localize_videos


def localize_command(cas: str, out: str, method: str | None = None, preset: str | None = None,
                     template: str | None = None, temperature: float | None = None,
                     class_threshold: float | None = None, temperature_mode: str | None = None,
                     run: str | None = None) -> int:
    """Localize every video of the CAS file ``cas`` and write the detections (seconds) to ``out``.

    With ``run``, the trained run's own post-processing (its config's ``postprocess`` section) is the
    starting point, so a run's CAS file gives the run's own predictions; the other options override it.
    """
    from wtal.evaluation.results import write_results  # lazy: evaluation is not needed to localize

    cfg = LocalizeConfig.from_section(localize_section(run, method=method, preset=preset, template=template,
                                                       temperature=temperature, class_threshold=class_threshold,
                                                       temperature_mode=temperature_mode))
    cas_by_video, scores, classes, rate = read_cas_file(cas)
    table = localize_videos(cas_by_video, scores, classes, cfg, rate)
    path = write_results(out, table)
    n_videos = len(set(table.video.tolist()))
    source = f"the recipe of run {run}" if run else f"{cfg.preset} preset"
    print(f"wtal localize: {len(table)} detections in {n_videos} of {len(cas_by_video)} videos "
          f"({source}, {cfg.method}) -> {path}")
    return 0


def localize_section(run: str | None, **options: Any) -> dict[str, Any]:
    """A ``postprocess`` mapping: the run's (or ``{preset: paper, method: fusion}``) with the given options."""
    if run is not None:
        from wtal.engine.runs import read_run_config  # lazy: the engine is only needed with --run

        section = dict(read_run_config(run).postprocess)
    else:
        section = {"preset": "paper", "method": "fusion"}
    section.update({k: v for k, v in options.items() if v is not None})
    return section
