"""``wtal eval``: detection mAP of a result file against ground truth, printed as a table."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from wtal.atomic import write_json_atomic
from wtal.data.annotations import AnnotationSet
from wtal.data.segments import SegmentTable
from wtal.errors import WtalInputError
from wtal.evaluation.detection import ACTIVITYNET_TIOU, THUMOS14_TIOU, DetectionReport, detection_map
from wtal.evaluation.results import read_results
from wtal.evaluation.wtalc import wtalc_detection_map

logger = logging.getLogger(__name__)

TIOU_FIX = ("give comma-separated tIoU thresholds in (0, 1], e.g. --tiou 0.1,0.3,0.5,0.7, or leave --tiou out "
            "for the default (0.1:0.1:0.7 when the ground truth has a 'test' subset, else 0.5:0.05:0.95)")


def default_subset(subsets: Sequence[str]) -> str:
    """``test`` when the ground truth has one (THUMOS14), else ``validation`` (ActivityNet)."""
    return "test" if "test" in subsets else "validation"


def parse_tiou(text: str) -> list[float]:
    """The thresholds of a ``--tiou`` value such as ``"0.1,0.3,0.5"``; WtalInputError naming the option."""
    items = [x.strip() for x in text.split(",")]
    if not text.strip():
        raise WtalInputError("--tiou is empty", fix=TIOU_FIX)
    if "" in items:
        raise WtalInputError(f"--tiou {text!r} has an empty item (two commas, or a comma at an end)", fix=TIOU_FIX)
    values = []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            raise WtalInputError(f"--tiou {text!r}: {item!r} is not a number", fix=TIOU_FIX) from None
        if not (math.isfinite(value) and 0 < value <= 1):
            raise WtalInputError(f"--tiou {text!r}: {item} is not a tIoU threshold in (0, 1]", fix=TIOU_FIX)
        values.append(value)
    return values


def eval_command(pred: str, gt: str, subset: str | None = None, tiou: str | Sequence[float] | None = None,
                 mode: str = "anet", json_out: str | None = None, task: str = "detection",
                 durations: str | None = None) -> int:
    """Evaluate ``pred`` against ``gt`` and print the table; write ``json_out`` when given. Returns 0.

    ``task`` ``grounding`` evaluates a sentence-grounding result file against a query file instead (see
    :func:`~wtal.evaluation.grounding.grounding_eval_command`; ``tiou`` then gives the IoU thresholds and
    ``durations`` a durations file for Charades-STA text annotations).

    ``subset`` defaults to ``test`` when the ground truth has one, else ``validation``; ``tiou`` (thresholds,
    or the text of ``--tiou``) defaults to 0.1:0.1:0.7 for ground truth with a ``test`` subset (THUMOS14) and
    0.5:0.05:0.95 otherwise (ActivityNet). ``mode`` is ``anet`` (official ActivityNet semantics) or ``wtalc``
    (W-TALC snippet-grid compatibility, with the annotation's Ambiguous segments and snippet rate).
    Predicted videos that the subset does not hold are scored as the mode scores them, with a warning.
    """
    if isinstance(tiou, str):
        tiou = parse_tiou(tiou)
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
    thresholds = list(tiou) if tiou is not None else (THUMOS14_TIOU if "test" in subsets else ACTIVITYNET_TIOU)
    evaluated = annotations.subset(subset)
    gt_table = evaluated.ground_truth()
    detections = read_results(pred, classes=annotations.classes)
    warn_unknown_videos(detections, annotations, subset, mode)

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


def warn_unknown_videos(detections: SegmentTable, annotations: AnnotationSet, subset: str, mode: str) -> None:
    """Log a warning with the count, an example and a likely cause when predicted videos are not in ``subset``.

    Scoring is unchanged: the official evaluator counts their detections as false positives, the W-TALC mode
    leaves them out.
    """
    in_subset = set(annotations.names(subset))
    predicted = list(dict.fromkeys(detections.video.tolist()))
    unknown = [v for v in predicted if v not in in_subset]
    if not unknown:
        return
    unknown_set = set(unknown)
    n_det = sum(v in unknown_set for v in detections.video.tolist())
    fate = ("count as false positives (official ActivityNet scoring)" if mode == "anet"
            else "are left out (W-TALC scoring)")
    if len(unknown) == len(predicted):
        what = (f"none of the {len(predicted)} predicted videos is in subset {subset!r} of the ground truth "
                f"(e.g. {unknown[0]!r}): all {n_det} detections {fate}")
    else:
        what = (f"{len(unknown)} of the {len(predicted)} predicted videos are not in subset {subset!r} of the "
                f"ground truth (e.g. {unknown[0]!r}): their {n_det} detections {fate}")
    logger.warning("%s; %s", what, _unknown_video_hint(unknown, annotations, subset))


def _grounding(pred: str, gt: str, subset: str | None, tiou: Sequence[float] | None, mode: str,
               json_out: str | None, durations: str | None) -> int:
    from wtal.data.grounding import read_durations
    from wtal.evaluation.grounding import grounding_eval_command

    if subset is not None or mode != "anet":
        raise WtalInputError("--subset and --mode apply to detection only", path=gt,
                             fix="drop them with --task grounding (the query file is the evaluated split)")
    return grounding_eval_command(pred, gt, tiou, json_out, read_durations(durations) if durations else None)


def _unknown_video_hint(unknown: list[str], annotations: AnnotationSet, subset: str) -> str:
    """Likely causes: the videos are in another subset, or their ids differ by a 'v_' prefix."""
    hints = []
    elsewhere = Counter(annotations.videos[v].subset for v in unknown if v in annotations.videos)
    if elsewhere:
        where = ", ".join(f"{n} in subset {s!r}" for s, n in elsewhere.most_common())
        hints.append(f"of these, {where}: check --subset")
    for video in unknown:
        if video.startswith("v_") and video[2:] in annotations.videos:
            hints.append(f"the ground truth calls {video!r} {video[2:]!r}: remove the 'v_' prefix")
            break
        if "v_" + video in annotations.videos:
            hints.append(f"the ground truth calls {video!r} {'v_' + video!r}: add the 'v_' prefix")
            break
    if not hints:
        example = annotations.names(subset)[0]
        hints.append(f"check the video ids (a prefix such as 'v_'? the ground truth has e.g. {example!r}) "
                     f"and --subset")
    return "; ".join(hints)


def _header(pred, gt, subset: str, mode: str, n_gt: int, n_det: int, report: DetectionReport) -> str:
    what = ("official ActivityNet" if mode == "anet"
            else "W-TALC compatibility (snippet grid, Ambiguous filter)")
    return (f"detection mAP, {what}\n  pred: {pred} ({n_det} detections)\n  gt:   {gt} (subset {subset!r}, "
            f"{n_gt} segments, {len(report.classes)} classes)")
