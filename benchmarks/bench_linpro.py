"""Benchmark: LinPro pseudo labels for a THUMOS-sized training set, reduced LP versus the dense LP.

Synthetic fused instances shaped like THUMOS14 training videos: 200 videos whose lengths follow the
W-TALC validation split (median ~235 snippets, a few near 2600), 1-2 classes per video and 5-20 fused
instances per class. Times

* the reduced (equivalence-class) LP for all videos, serially and with a process pool;
* the dense LP over all T snippets (the reference approach; HiGHS, plus HiGHS interior point as the
  closest stand-in for the reference's scipy-1.8 interior-point default) on a length-stratified subset,
  extrapolated to the whole set (the extrapolation is stated in the output).

Run: ``python benchmarks/bench_linpro.py [--videos 200] [--dense-every 10] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.optimize import linprog

from wtal.pseudo.linpro import (
    LinProConfig,
    LinProStats,
    constraint_matrix,
    pseudo_labels_for_videos,
    solve_class,
    solve_class_dense,
)


def synthetic_videos(count: int, seed: int) -> dict[str, tuple]:
    """``{name: (T, cls, start, end, score)}`` with THUMOS-like lengths and fused-instance counts."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(235.0), 0.85, count), 30, 2600).astype(int)
    lengths[: max(1, count // 60)] = 2600  # the longest THUMOS videos dominate the dense LP
    videos = {}
    for i, T in enumerate(lengths):
        classes = rng.choice(20, size=1 if rng.random() < 0.7 else 2, replace=False)
        cls, start, end, score = [], [], [], []
        for c in classes:
            n = int(rng.integers(5, 21))
            typical = max(2.0, min(40.0, T / n))
            length = np.clip(rng.lognormal(np.log(typical), 0.6, n), 2.0, T / 3)
            s = rng.uniform(0, T - length)
            cls.append(np.full(n, c))
            start.append(s)
            end.append(s + length)
            # fused contrast scores; a few slightly negative ones as fusion can produce
            score.append(np.where(rng.random(n) < 0.05, rng.uniform(-0.05, 0, n), rng.uniform(0.02, 0.45, n)))
        videos[f"video_{i:04d}"] = (int(T), np.concatenate(cls), np.concatenate(start), np.concatenate(end),
                                    np.concatenate(score))
    return videos


def best_of(repeats: int, fn) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def per_class_problems(videos: dict) -> list[tuple]:
    problems = []
    for T, cls, start, end, score in videos.values():
        for c in np.unique(cls):
            m = cls == c
            problems.append((T, start[m], end[m], score[m]))
    return problems


def dense_ipm(T, start, end, score, cfg) -> np.ndarray:
    """Dense LP with HiGHS interior point, no averaging (timing stand-in for scipy-1.8 interior-point)."""
    W = constraint_matrix(T, start, end, cfg).astype(np.float64)
    res = linprog(np.ones(T), A_eq=W, b_eq=score, bounds=(0, cfg.upper_bound), method="highs-ipm")
    return res.x if res.status == 0 else np.zeros(T)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--dense-every", type=int, default=10, help="dense LP on every k-th video by length")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", choices=["paper", "reference"], default="reference")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cfg = LinProConfig.from_preset(args.preset)
    videos = synthetic_videos(args.videos, args.seed)
    problems = per_class_problems(videos)
    Ts = np.array([v[0] for v in videos.values()])
    n_inst = np.array([len(p[1]) for p in problems])
    print(f"{len(videos)} videos, T median {int(np.median(Ts))} max {Ts.max()} total {Ts.sum()} snippets; "
          f"{len(problems)} class LPs with {n_inst.min()}-{n_inst.max()} instances (preset {args.preset})")

    t_serial, (labels, stats) = best_of(
        args.repeats, lambda: pseudo_labels_for_videos(videos, 20, cfg, workers=1))
    t_pool, (labels_pool, _) = best_of(
        args.repeats, lambda: pseudo_labels_for_videos(videos, 20, cfg, workers=args.workers))
    t_auto, _ = best_of(args.repeats, lambda: pseudo_labels_for_videos(videos, 20, cfg))
    assert all(np.array_equal(labels[k], labels_pool[k]) for k in labels)
    print(f"reduced LP, all videos: serial {t_serial:.3f} s, {args.workers} processes {t_pool:.3f} s "
          f"(pool start included), default workers {t_auto:.3f} s; {stats}")

    # length-stratified subset for the dense LP
    order = np.argsort([p[0] for p in problems], kind="stable")
    subset = [problems[i] for i in order[:: args.dense_every]]
    scale = len(problems) / len(subset)
    t_red, red = best_of(args.repeats, lambda: [solve_class(*p, cfg, LinProStats()) for p in subset])
    t_dense, dense = best_of(1, lambda: [solve_class_dense(*p, cfg, LinProStats()) for p in subset])
    t_ipm, _ = best_of(1, lambda: [dense_ipm(*p, cfg) for p in subset])
    gap = max(abs(a.sum() - b.sum()) for a, b in zip(red, dense, strict=True))
    print(f"subset: {len(subset)} of {len(problems)} class LPs (every {args.dense_every}th by T), "
          f"max |objective reduced - dense| = {gap:.2e}")
    print(f"  reduced {t_red:.3f} s | dense HiGHS + averaging {t_dense:.3f} s (x{t_dense / t_red:.1f}) | "
          f"dense HiGHS-IPM {t_ipm:.3f} s (x{t_ipm / t_red:.1f})")
    print(f"  extrapolated to all {len(problems)} LPs (x{scale:.1f}): dense HiGHS {t_dense * scale:.2f} s, "
          f"dense HiGHS-IPM {t_ipm * scale:.2f} s, versus reduced serial {t_serial:.3f} s")
    long = [p for p in problems if p[0] == Ts.max()]
    t_long_red, _ = best_of(args.repeats, lambda: [solve_class(*p, cfg, LinProStats()) for p in long])
    t_long_dense, _ = best_of(1, lambda: [solve_class_dense(*p, cfg, LinProStats()) for p in long])
    t_long_ipm, _ = best_of(1, lambda: [dense_ipm(*p, cfg) for p in long])
    k = max(1, len(long))
    print(f"  per class LP at T={Ts.max()}: reduced {1e3 * t_long_red / k:.2f} ms, dense HiGHS "
          f"{1e3 * t_long_dense / k:.2f} ms, dense HiGHS-IPM {1e3 * t_long_ipm / k:.2f} ms")


if __name__ == "__main__":
    main()
