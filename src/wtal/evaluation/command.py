"""``wtal eval``: detection mAP of a result file against ground truth, printed as a table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from wtal.atomic import write_json_atomic
from wtal.errors import WtalInputError
from wtal.evaluation.detection import ACTIVITYNET_TIOU, THUMOS14_TIOU, DetectionReport, detection_map
from wtal.evaluation.results import read_results
from wtal.evaluation.wtalc import wtalc_detection_map


def default_subset(subsets: Sequence[str]) -> str:
    """``test`` when the ground truth has one (THUMOS14), else ``validation`` (ActivityNet)."""
    return "test" if "test" in subsets else "validation"


def eval_command(pred: str, gt: str, subset: str | None = None, tiou: Sequence[float] | None = None,
                 mode: str = "anet", json_out: str | None = None, task: str = "detection",
                 durations: str | None = None) -> int:
    """Evaluate ``pred`` against ``gt`` and print the table; write ``json_out`` when given. Returns 0.

    ``task`` ``grounding`` evaluates a sentence-grounding result file against a query file instead (see
    :func:`~wtal.evaluation.grounding.grounding_eval_command`; ``tiou`` then gives the IoU thresholds and
    ``durations`` a durations file for Charades-STA text annotations).

    ``subset`` defaults to ``test`` when the ground truth has one, else ``validation``; ``tiou`` defaults to
    0.1:0.1:0.7 for ground truth with a ``test`` subset (THUMOS14) and 0.5:0.05:0.95 otherwise (ActivityNet).
    ``mode`` is ``anet`` (official ActivityNet semantics) or ``wtalc`` (W-TALC snippet-grid compatibility,
    with the annotation's Ambiguous segments and snippet rate).
    """
    if task == "grounding":
        return _grounding(pred, gt, subset, tiou, mode, json_out, durations)
    if task != "detection":
        raise WtalInputError(f"unknown task {task!r}", fix="use --task detection or --task grounding")
    from wtal.data.sources import load_annotations  # lazy: the data layer is heavier than the evaluator

    annotations = load_annotations(gt)
    subsets = annotations.subsets()
    subset = subset or default_subset(subsets)
    if subset not in subsets:
        raise WtalInputError(f"the ground truth has no subset {subset!r}", path=gt,
                             fix=f"pass --subset with one of {subsets}")
    thresholds = list(tiou) if tiou else (THUMOS14_TIOU if "test" in subsets else ACTIVITYNET_TIOU)
    evaluated = annotations.subset(subset)
    gt_table = evaluated.ground_truth()
    detections = read_results(pred, classes=annotations.classes)

    if mode == "anet":
        report = detection_map(gt_table, detections, thresholds)
    elif mode == "wtalc":
        rates = {v.snippets_per_second for v in evaluated.videos.values()}
        if len(rates) != 1:
            raise WtalInputError(f"videos of subset {subset!r} have different snippet rates {sorted(rates)}",
                                 path=gt, fix="the wtalc mode needs one snippet rate; use --mode anet")
        report = wtalc_detection_map(gt_table, detections, rates.pop(), thresholds,
                                     ambiguous=evaluated.ambiguous)
    else:
        raise WtalInputError(f"unknown mode {mode!r}", fix="use --mode anet or --mode wtalc")

    print(_header(pred, gt, subset, mode, len(gt_table), len(detections), report))
    print(report.table())
    if json_out:
        write_json_atomic(Path(json_out), {**report.to_json(), "mode": mode, "subset": subset}, indent=1)
    return 0


def _grounding(pred: str, gt: str, subset: str | None, tiou: Sequence[float] | None, mode: str,
               json_out: str | None, durations: str | None) -> int:
    from wtal.data.grounding import read_durations
    from wtal.evaluation.grounding import grounding_eval_command

    if subset is not None or mode != "anet":
        raise WtalInputError("--subset and --mode apply to detection only", path=gt,
                             fix="drop them with --task grounding (the query file is the evaluated split)")
    return grounding_eval_command(pred, gt, tiou, json_out, read_durations(durations) if durations else None)


def _header(pred, gt, subset: str, mode: str, n_gt: int, n_det: int, report: DetectionReport) -> str:
    what = ("official ActivityNet" if mode == "anet"
            else "W-TALC compatibility (snippet grid, Ambiguous filter)")
    return (f"detection mAP, {what}\n  pred: {pred} ({n_det} detections)\n  gt:   {gt} (subset {subset!r}, "
            f"{n_gt} segments, {len(report.classes)} classes)")
