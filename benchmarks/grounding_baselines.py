"""Trivial sentence-grounding baselines on a data folder's test file: the numbers a trained model must beat.

    python benchmarks/grounding_baselines.py --data DIR [--val-fraction 0.1] [--val-seed 0] [--seed 0]
    python benchmarks/grounding_baselines.py --data DIR --pred RUN0/pred.json RUN1/pred.json ...

* whole video: every query answered with ``[0, duration]`` (one segment);
* prior: five fixed-length segments at the most common positions (:func:`fit_prior_segments`), fitted on the
  moments of the validation part that a run with the same ``data.val_fraction`` / ``data.val_seed`` carves from
  the training videos (the only moments a weakly-supervised run may read), never on the test moments;
* random: five segments per query, start and end the sorted pair of two uniform draws (seeded).

Prints the R@1 / R@5 table (IoU 0.1 / 0.3 / 0.5 / 0.7, mIoU) of each, in percent.

``--pred`` adds result files of the test file (e.g. one per training seed), each scored as is and under two
controls, the mean over ``--permutations`` seeded shuffles (:func:`permute_within`): every query answered with
the ranked list predicted for a random query (any video), or for a random sentence of its own video (itself
included). The gap between a file and its shuffles is what its predictions owe to the query; the gap between
the two shuffles, to the sentence rather than the video. Also printed: the mean length and centre of the
top-1 segments (fractions of the duration) against the test moments' and the prior's, and how the top-1
centres correlate with the moments' centres. With several files, a last row gives the mean and sample standard
deviation over them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from wtal.data.grounding import carve_validation, read_grounding_json, split_files
from wtal.data.timebase import seconds_to_fraction
from wtal.evaluation.grounding import (
    GroundingReport,
    fit_prior_segments,
    grounding_recall,
    permute_within,
    prediction_fractions,
    random_segments,
    read_grounding_results,
    whole_video_segments,
)


def fractions(queries) -> np.ndarray:
    durations = np.array([q.duration for q in queries], dtype=np.float64)
    return seconds_to_fraction(queries.moments(), durations[:, None])


def report_values(report: GroundingReport) -> np.ndarray:
    """R@1 per threshold, mIoU, R@5 per threshold, mIoU@5 (percent), the columns of :func:`row`."""
    return np.array([*report.recall_at_1, report.miou, *report.recall_at_5, report.miou_at_5])


def header(thresholds) -> str:
    ious = "/".join(f"{t:g}" for t in thresholds)
    return f"{'':<44} | R@1 {ious} | mIoU | R@5 {ious} | mIoU@5"


def row(name: str, values: np.ndarray, spread: np.ndarray | None = None) -> str:
    n = (len(values) - 2) // 2
    cells = [f"{v:.2f}" if spread is None else f"{v:.2f} ± {s:.2f}"
             for v, s in zip(values, values if spread is None else spread, strict=True)]
    return (f"{name:<44} | {' '.join(cells[:n])} | {cells[n]} | {' '.join(cells[n + 1:2 * n + 1])} | "
            f"{cells[2 * n + 1]}")


def shuffled(segments: np.ndarray, counts: np.ndarray, moments: np.ndarray, groups: np.ndarray,
             permutations: int) -> np.ndarray:
    """Mean :func:`report_values` of ``segments`` moved by ``permutations`` seeded :func:`permute_within`."""
    rng = np.random.default_rng(0)
    values = []
    for _ in range(permutations):
        perm = permute_within(groups, rng)
        values.append(report_values(grounding_recall(segments[perm], counts[perm], moments)))
    return np.mean(values, axis=0)


def top1_shape(segments: np.ndarray, moments: np.ndarray | None = None) -> str:
    """Mean length and centre of the top-1 segments; with ``moments``, the Pearson correlation of the top-1
    centres with the moments' centres (near 0 for a prediction that ignores where the moment is)."""
    top = segments[:, 0]
    text = f"top-1 length {np.mean(top[:, 1] - top[:, 0]):.3f}, centre {np.mean(top.mean(axis=1)):.3f}"
    if moments is None:
        return text
    centres = top.mean(axis=1)
    corr = f"{np.corrcoef(centres, moments.mean(axis=1))[0, 1]:.3f}" if np.ptp(centres) > 0 else "n/a (constant)"
    return f"{text}, correlation with the moments' centres {corr}"


def score_predictions(paths: list[str], test, moments: np.ndarray, permutations: int) -> None:
    videos = np.array([q.video for q in test])
    as_is = []
    for path in paths:
        segments, counts = prediction_fractions(read_grounding_results(path), test)
        values = report_values(grounding_recall(segments, counts, moments))
        as_is.append(values)
        print(row(path, values))
        print(row("  shuffled across queries", shuffled(segments, counts, moments, np.zeros(len(test)),
                                                        permutations)))
        print(row("  shuffled within each video", shuffled(segments, counts, moments, videos, permutations)))
        print(f"  {top1_shape(segments, moments)}")
    if len(as_is) > 1:
        print(row(f"mean ± sample std over {len(as_is)} files", np.mean(as_is, axis=0), np.std(as_is, axis=0, ddof=1)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="grounding data folder (train.json, test.json)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--val-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="seed of the random proposals")
    p.add_argument("--pred", nargs="*", default=[], help="grounding result files of the test file to score too")
    p.add_argument("--permutations", type=int, default=20, help="shuffles averaged per control of --pred")
    args = p.parse_args(argv)
    train_file, test_file = split_files(Path(args.data))
    _, val = carve_validation(read_grounding_json(train_file), args.val_fraction, args.val_seed)
    test = read_grounding_json(test_file)
    moments = fractions(test)
    n = len(moments)
    prior = fit_prior_segments(fractions(val))
    baselines = {"whole video": whole_video_segments(n),
                 f"prior (fitted on {len(val)} validation moments)": np.broadcast_to(prior, (n, *prior.shape)),
                 f"random (seed {args.seed})": random_segments(n, 5, np.random.default_rng(args.seed))}
    print(f"{test_file}: {n} queries; prior segments (fractions): {np.round(prior, 3).tolist()}")
    print(f"test moments: length {np.mean(moments[:, 1] - moments[:, 0]):.3f} (median "
          f"{np.median(moments[:, 1] - moments[:, 0]):.3f}), centre {np.mean(moments.mean(axis=1)):.3f}; prior "
          f"{top1_shape(prior[None])}")
    reports = {name: grounding_recall(segments, np.full(n, segments.shape[1]), moments)
               for name, segments in baselines.items()}
    for name, report in reports.items():
        print(f"\n{name}\n{report.table()}")
    print(f"\n{header(reports['whole video'].thresholds)}")
    for name, report in reports.items():
        print(row(name, report_values(report)))
    score_predictions(args.pred, test, moments, args.permutations)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
