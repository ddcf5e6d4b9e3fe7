"""Trivial sentence-grounding baselines on a data folder's test file: the numbers a trained model must beat.

    python benchmarks/grounding_baselines.py --data DIR [--val-fraction 0.1] [--val-seed 0] [--seed 0]

* whole video: every query answered with ``[0, duration]`` (one segment);
* prior: five fixed-length segments at the most common positions (:func:`fit_prior_segments`), fitted on the
  moments of the validation part that a run with the same ``data.val_fraction`` / ``data.val_seed`` carves from
  the training videos (the only moments a weakly-supervised run may read), never on the test moments;
* random: five segments per query, start and end the sorted pair of two uniform draws (seeded).

Prints the R@1 / R@5 table (IoU 0.1 / 0.3 / 0.5 / 0.7, mIoU) of each, in percent.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from wtal.data.grounding import carve_validation, read_grounding_json, split_files
from wtal.data.timebase import seconds_to_fraction
from wtal.evaluation.grounding import (
    fit_prior_segments,
    grounding_recall,
    random_segments,
    whole_video_segments,
)


def fractions(queries) -> np.ndarray:
    durations = np.array([q.duration for q in queries], dtype=np.float64)
    return seconds_to_fraction(queries.moments(), durations[:, None])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="grounding data folder (train.json, test.json)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--val-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="seed of the random proposals")
    args = p.parse_args()
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
    for name, segments in baselines.items():
        report = grounding_recall(segments, np.full(n, segments.shape[1]), moments)
        print(f"\n{name}\n{report.table()}")


if __name__ == "__main__":
    main()
