"""Benchmark: detection mAP on a THUMOS14-sized test set (212 videos, 20 classes, 3358 GT, 100k detections).

Times :func:`wtal.evaluation.detection_map` against a straightforward per-detection loop (the official
evaluator's structure: per class, per detection in score order, tIoU against the ground truth of its video,
then a walk over the ground truth per threshold, with its numpy sorts) and checks that both give the same
mAP. ``--ties K`` quantises the scores so that every distinct score is shared by K detections.

    python benchmarks/bench_eval.py [--detections 100000] [--seed 0] [--ties K] [--skip-loop]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from wtal.data.segments import SegmentTable
from wtal.evaluation.detection import THUMOS14_TIOU, detection_map
from wtal.evaluation.wtalc import wtalc_detection_map


def thumos_like(n_det: int, seed: int) -> tuple[SegmentTable, SegmentTable]:
    """Synthetic ground truth with THUMOS14 test statistics and localizer-like detections."""
    rng = np.random.default_rng(seed)
    n_videos, n_classes, n_gt = 212, 20, 3358
    classes = [f"class_{c:02d}" for c in range(n_classes)]
    videos = np.array([f"video_test_{i:07d}" for i in range(n_videos)], dtype=object)
    duration = rng.uniform(30, 600, n_videos)
    video_class = rng.integers(0, n_classes, n_videos)  # one main class per video, a few with a second one
    gt_vid = np.sort(rng.integers(0, n_videos, n_gt))
    gt_cls = np.where(rng.random(n_gt) < 0.9, video_class[gt_vid], rng.integers(0, n_classes, n_gt))
    gt_len = np.clip(rng.lognormal(np.log(3.0), 0.8, n_gt), 0.2, 120)
    gt_start = rng.uniform(0, 1, n_gt) * np.maximum(duration[gt_vid] - gt_len, 1)
    gt = SegmentTable(tuple(classes), videos[gt_vid], gt_cls.astype(np.int64), gt_start, gt_start + gt_len,
                      np.ones(n_gt))

    # Detections: multi-scale jittered copies of ground truth (as proposals from several thresholds) and
    # background detections in the same videos, with scores correlated with quality.
    n_near = n_det // 2
    src = rng.integers(0, n_gt, n_near)
    centre = (gt_start[src] + gt_start[src] + gt_len[src]) / 2 + rng.normal(0, 0.3, n_near) * gt_len[src]
    length = gt_len[src] * rng.lognormal(0, 0.4, n_near)
    near_score = rng.beta(4, 2, n_near)
    n_far = n_det - n_near
    far_vid = rng.integers(0, n_videos, n_far)
    far_len = np.clip(rng.lognormal(np.log(4.0), 1.0, n_far), 0.64, 200)
    far_start = rng.uniform(0, 1, n_far) * np.maximum(duration[far_vid] - far_len, 1)
    far_cls = np.where(rng.random(n_far) < 0.8, video_class[far_vid], rng.integers(0, n_classes, n_far))
    start = np.concatenate([np.maximum(centre - length / 2, 0), far_start])
    end = np.concatenate([np.maximum(centre + length / 2, 0), far_start + far_len])
    pred = SegmentTable(tuple(classes), np.concatenate([gt.video[src], videos[far_vid]]),
                        np.concatenate([gt_cls[src], far_cls]).astype(np.int64), start, end,
                        np.round(np.concatenate([near_score, rng.beta(2, 4, n_far)]), 4))
    return gt, pred


def with_ties(pred: SegmentTable, per_score: int, seed: int) -> SegmentTable:
    """The same detections with scores quantised by rank: each distinct score shared by ``per_score`` of them."""
    rank = np.empty(len(pred), dtype=np.int64)
    rank[np.argsort(pred.score, kind="stable")] = np.arange(len(pred))
    score = (rank // per_score) / max(1, (len(pred) - 1) // per_score)
    order = np.random.default_rng(seed).permutation(len(pred))  # ties in no particular row order
    return SegmentTable(pred.classes, pred.video[order], pred.label[order], pred.start[order], pred.end[order],
                        score[order])


def loop_detection_map(gt: SegmentTable, pred: SegmentTable, thresholds) -> list[float]:
    """The official evaluator's structure in plain Python + per-detection numpy (no pandas).

    Rows are taken in the order of the result file written for ``pred`` (grouped by video in order of first
    appearance), and sorted with numpy's default sort, as the official code does.
    """
    thresholds = list(thresholds)
    first: dict[str, int] = {}
    file_order = np.argsort([first.setdefault(v, len(first)) for v in pred.video], kind="stable")
    aps = []
    for c in sorted(set(gt.label.tolist())):
        g_idx = np.flatnonzero(gt.label == c)
        by_video: dict[str, list[int]] = {}
        for j, v in enumerate(gt.video[g_idx]):
            by_video.setdefault(v, []).append(j)
        g_start, g_end = gt.start[g_idx], gt.end[g_idx]
        p_idx = file_order[pred.label[file_order] == c]
        p_idx = p_idx[np.argsort(pred.score[p_idx])[::-1]]
        locked = np.zeros((len(thresholds), len(g_idx)), dtype=bool)
        tp = np.zeros((len(thresholds), len(p_idx)))
        for k, i in enumerate(p_idx):
            cand = by_video.get(pred.video[i])
            if cand is None:
                continue
            cand = np.array(cand)
            s, e = pred.start[i], pred.end[i]
            inter = np.clip(np.minimum(e, g_end[cand]) - np.maximum(s, g_start[cand]), 0, None)
            union = (g_end[cand] - g_start[cand]) + (e - s) - inter
            with np.errstate(invalid="ignore"):
                tiou = inter / union  # 0/0 -> NaN, as in the official code (argsort puts it first below)
            visit = np.argsort(tiou)[::-1]
            for t, thr in enumerate(thresholds):
                for jj in visit:
                    if tiou[jj] < thr:
                        break
                    if locked[t, cand[jj]]:
                        continue
                    locked[t, cand[jj]] = True
                    tp[t, k] = 1
                    break
        ap_c = []
        for t in range(len(thresholds)):
            hits = np.cumsum(tp[t])
            prec = hits / np.arange(1, len(hits) + 1)
            rec = hits / len(g_idx)
            mprec = np.concatenate([[0], prec, [0]])
            mrec = np.concatenate([[0], rec, [1]])
            for m in range(len(mprec) - 2, -1, -1):
                mprec[m] = max(mprec[m], mprec[m + 1])
            changed = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
            ap_c.append(np.sum((mrec[changed] - mrec[changed - 1]) * mprec[changed]))
        aps.append(ap_c)
    return list(100.0 * np.mean(np.array(aps), axis=0))


def best_of(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detections", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ties", type=int, default=0, help="share every distinct score among this many detections")
    ap.add_argument("--skip-loop", action="store_true", help="do not run the slow loop version")
    args = ap.parse_args()

    gt, pred = thumos_like(args.detections, args.seed)
    if args.ties:
        pred = with_ties(pred, args.ties, args.seed)
    print(f"ground truth: {len(gt)} segments in {len(set(gt.video))} videos, {len(set(gt.label))} classes; "
          f"detections: {len(pred)}, {len(np.unique(pred.score))} distinct scores")
    t_fast, report = best_of(lambda: detection_map(gt, pred, THUMOS14_TIOU), args.repeats)
    print(f"detection_map (vectorized):   {t_fast:7.3f} s  (best of {args.repeats})")
    print("mAP@0.1:0.7 =", " ".join(f"{m:.2f}" for m in report.mAP), f" avg {report.average:.2f}")
    # THUMOS14 has 99 Ambiguous segments in 37 test videos
    names = sorted(set(gt.video))[:37]
    ambiguous = {v: [(10.0 * k, 10.0 * k + 4.0) for k in range(1, 4)] for v in names}
    t_wtalc, _ = best_of(lambda: wtalc_detection_map(gt, pred, 25 / 16, THUMOS14_TIOU, ambiguous=ambiguous),
                         args.repeats)
    print(f"wtalc_detection_map:          {t_wtalc:7.3f} s  (with an Ambiguous filter)")
    if not args.skip_loop:
        t_loop, loop_map = best_of(lambda: loop_detection_map(gt, pred, THUMOS14_TIOU), 1)
        diff = float(np.max(np.abs(np.array(loop_map) - np.array(report.mAP))))
        print(f"loop version:                 {t_loop:7.3f} s  -> speed-up {t_loop / t_fast:.1f}x")
        print(f"max |mAP difference| = {diff:.2e}  ({'equal' if diff < 1e-6 else 'DIFFERENT'} to 1e-6)")
        if diff >= 1e-6:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
