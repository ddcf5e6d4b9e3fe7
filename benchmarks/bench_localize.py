"""Benchmark ``wtal.localize`` on a THUMOS14-sized test set and cross-check it against plain Python loops.

Synthetic CAS for 212 videos with the THUMOS14 test durations (read from ``../shared/data/thumos14`` when
present, otherwise drawn from a log-normal fitted to them), 20 classes at 25/16 snippets per second, on the
scale of RSKP's softmax-times-attention CAS (actions around 0.02-0.06) so that both presets find actions.
For each preset it times the stages of the vectorised pipeline (class gating + proposals, suppression,
conversion to seconds) and the end-to-end ``localize_videos``, then runs a straightforward per-snippet
Python implementation of the same algorithms and checks that both give the same detections.

    python benchmarks/bench_localize.py [--seed 0] [--repeat 3]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from wtal.data.segments import SegmentTable
from wtal.data.timebase import I3D_SNIPPETS_PER_SECOND, snippet_count, snippets_to_seconds
from wtal.localize.pipeline import (
    LocalizeConfig,
    check_cas,
    gated_classes,
    localize_videos,
    needs_column_range,
    suppress,
)
from wtal.localize.proposals import track_proposals, track_ranges

N_VIDEOS, N_CLASSES = 212, 20
SHARED_THUMOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "thumos14"


def thumos_test_durations(rng: np.random.Generator) -> np.ndarray:
    """The 212 THUMOS14 test durations in seconds (a log-normal stand-in when the annotations are absent)."""
    try:
        duration = np.load(SHARED_THUMOS / "duration.npy", allow_pickle=True).astype(np.float64).ravel()
        subset = np.load(SHARED_THUMOS / "subset.npy", allow_pickle=True)
        test = np.array([(s.decode() if isinstance(s, bytes) else str(s)) == "test" for s in subset])
        if test.sum() == N_VIDEOS:
            return duration[test]
    except OSError:
        pass
    return np.clip(rng.lognormal(np.log(160.0), 0.75, N_VIDEOS), 15.0, 1700.0)


def synthetic_cas(seed: int = 0):
    """``(cas, scores)`` dicts: RSKP-scale CAS with ~16 instances per video in 1-2 true classes.

    Background is a slowly varying 0.001-0.008 (softmax times a small attention), actions add 0.02-0.06
    with ragged edges, and three other classes get a weak false activation.
    """
    rng = np.random.default_rng(seed)
    kernel = np.ones(9) / 9.0
    cas, scores = {}, {}
    for i, seconds in enumerate(thumos_test_durations(rng)):
        n_t = snippet_count(seconds)
        noise = np.abs(rng.normal(0.0, 1.0, (n_t + 8, N_CLASSES)))
        smooth = np.stack([np.convolve(noise[:, c], kernel, mode="valid") for c in range(N_CLASSES)], axis=1)
        col = 0.001 + 0.004 * smooth[:n_t]
        true = rng.choice(N_CLASSES, size=rng.choice([1, 1, 1, 2]), replace=False)
        for c in true:
            for _ in range(rng.integers(4, 30)):
                length = max(2, int(rng.gamma(2.0, 3.5)))
                start = int(rng.integers(0, max(1, n_t - length)))
                bump = rng.uniform(0.02, 0.06) * np.sin(np.linspace(0.2, np.pi - 0.2, length)) ** 0.5
                bump = bump[: n_t - start]
                col[start:start + length, c] += bump * rng.uniform(0.6, 1.0, len(bump))
        for c in rng.choice(N_CLASSES, size=3, replace=False):
            start = int(rng.integers(0, n_t))
            col[start:start + 6, c] += rng.uniform(0.005, 0.03)
        video_score = rng.uniform(0.0, 0.2, N_CLASSES)
        video_score[true] = rng.uniform(0.4, 0.95, len(true))
        cas[f"video_test_{i:07d}"], scores[f"video_test_{i:07d}"] = col, video_score
    return cas, scores


# --- straightforward reference: per-snippet Python loops, written directly from the algorithm text ---------

def slow_proposals(col, thresholds, cfg: LocalizeConfig):
    """Runs above each threshold, scanned snippet by snippet; inner/outer means by explicit sums."""
    n_t = len(col)
    lo, hi = min(col), max(col)
    level = col
    if cfg.threshold_mode == "relative":  # each snippet's place in the column's range
        level = [(x - lo) / (hi - lo) if hi > lo else 0.0 for x in col]
    found, seen = [], set()
    for theta in thresholds:
        t = 0
        while t < n_t:
            if level[t] <= theta:
                t += 1
                continue
            s = t
            while t < n_t and level[t] > theta:
                t += 1
            e = t
            if e - s < cfg.min_length or (cfg.dedup and (s, e) in seen):
                continue
            seen.add((s, e))
            length = e - s
            if cfg.margin == "linear":
                m = cfg.margin_alpha * length
            else:
                m = cfg.margin_coef * length ** cfg.margin_exponent
            if cfg.preset == "paper":
                inner_idx = range(s, e)
                w = math.ceil(m)
                outer_idx = list(range(max(0, s - w), s)) + list(range(e, min(n_t, e + w)))
                stored_end = e
            else:
                inner_idx = range(s, min(e + 1, n_t))
                os_, oe = max(0, int(s - m)), min(n_t - 1, int(e + m + 1))
                outer_idx = list(range(os_, s)) + list(range(e + 1, oe))
                stored_end = e + 1
            inner = sum(col[i] for i in inner_idx) / len(inner_idx)
            outer = sum(col[i] for i in outer_idx) / len(outer_idx) if outer_idx else 0.0
            found.append((float(s), float(stored_end), inner - outer, inner))
    return found


def slow_overlap(a, b, kind):
    if kind == "iou":
        inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
        union = (a[1] - a[0]) + (b[1] - b[0]) - inter
        return inter / union if union > 0 else 0.0
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]) + 1)
    return inter / (b[1] - b[0] + 1)


def slow_fusion(props, cfg: LocalizeConfig, temperature: float):
    """Gaussian fusion: greedy groups around the best remaining instance, softmax-weighted means."""
    use_inner = cfg.fusion_weights == "inner"
    remaining = sorted(props, key=lambda p: (-p[2], p[0], p[1], -(p[3] if use_inner else p[2])))
    fused = []
    while remaining:
        top = remaining[0]
        group = [top] + [p for p in remaining[1:] if slow_overlap(top, p, cfg.overlap) > cfg.fuse_iou]
        logits = [p[3] if use_inner else p[2] for p in group]
        best = max(logits)
        weights = [math.exp((x - best) / temperature) for x in logits]
        total = sum(weights)
        fused.append(tuple(sum(w * p[k] for w, p in zip(weights, group, strict=True)) / total
                           for k in range(3)))
        ids = {id(p) for p in group}
        remaining = [p for p in remaining if id(p) not in ids]
    return sorted(fused, key=lambda d: -d[2])


def slow_localize(cas, scores, cfg: LocalizeConfig, rate: float):
    rows = []
    for name, video in cas.items():
        for c in range(video.shape[1]):
            if scores[name][c] < cfg.class_threshold:
                continue
            col = [float(x) for x in video[:, c]]
            spread = max(col) - min(col)
            relative = cfg.temperature_mode == "relative" and spread > 0
            temperature = cfg.temperature * spread if relative else cfg.temperature
            for s, e, q in slow_fusion(slow_proposals(col, cfg.thresholds, cfg), cfg, temperature):
                start, end = float(snippets_to_seconds(s, rate)), float(snippets_to_seconds(e, rate))
                rows.append((name, c, start, end, q))
    return rows


# --- the vectorised pipeline, stage by stage ------------------------------------------------------------

def staged_localize(cas, scores, cfg: LocalizeConfig, rate: float):
    """The steps of ``localize_batch`` on the whole set, timed one by one (CPU seconds)."""
    timing = {}
    t0 = time.process_time()
    columns, lengths, track_video, track_class = [], [], [], []
    for i, (name, video) in enumerate(cas.items()):
        video = check_cas(video, name)
        keep = gated_classes(video.shape[1], scores[name], cfg)
        columns.append(video[:, keep].T.ravel())
        lengths.append(np.full(len(keep), len(video)))
        track_video.append(np.full(len(keep), i))
        track_class.append(keep)
    t1 = time.process_time()
    values, lengths = np.concatenate(columns), np.concatenate(lengths)
    props = track_proposals(values, lengths, cfg.thresholds, cfg.outer_margin(),
                            relative=cfg.threshold_mode == "relative", min_length=cfg.min_length,
                            convention=cfg.preset, dedup=cfg.dedup, merge_copies=True)
    t2 = time.process_time()
    column_range = track_ranges(values, lengths)[1] if needs_column_range(cfg) else None
    track, start, end, score = suppress(props.track, props.start, props.end, props.score, props.inner, cfg,
                                        props.count, column_range=column_range)
    t3 = time.process_time()
    names = np.array(list(cas), dtype=object)
    table = SegmentTable([f"class_{c}" for c in range(N_CLASSES)], names[np.concatenate(track_video)[track]],
                         np.concatenate(track_class)[track], snippets_to_seconds(start, rate),
                         snippets_to_seconds(end, rate), score)
    t4 = time.process_time()
    timing = {"checks+gating": t1 - t0, "proposals": t2 - t1, "suppression": t3 - t2, "to seconds": t4 - t3}
    return table, timing, (len(props.track), int(props.count.sum()))


def compare(table, slow_rows, atol: float = 1e-9) -> str:
    columns = (table.video.tolist(), table.label.tolist(), table.start, table.end, table.score)
    fast = sorted(zip(*columns, strict=True), key=lambda r: (r[0], r[1], -r[4], r[2], r[3]))
    slow = sorted(slow_rows, key=lambda r: (r[0], r[1], -r[4], r[2], r[3]))
    if len(fast) != len(slow):
        return f"DIFFERENT: {len(fast)} vs {len(slow)} detections"
    worst = 0.0
    for a, b in zip(fast, slow, strict=True):
        if a[:2] != b[:2]:
            return f"DIFFERENT: video/class {a[:2]} vs {b[:2]}"
        worst = max(worst, *(abs(x - y) for x, y in zip(a[2:], b[2:], strict=True)))
    return f"identical ({len(fast)} detections, max |diff| {worst:.1e})" if worst <= atol else \
        f"DIFFERENT: max |diff| {worst:.1e}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3, help="best of N for the vectorised timings")
    args = p.parse_args(argv)
    cas, scores = synthetic_cas(args.seed)
    rate = I3D_SNIPPETS_PER_SECOND
    classes = [f"class_{c}" for c in range(N_CLASSES)]
    n_snippets = sum(len(v) for v in cas.values())
    print(f"{len(cas)} videos, {N_CLASSES} classes, {n_snippets} snippets "
          f"({n_snippets / rate / 3600:.1f} h at {rate:g} snippets/s)")
    for preset in ("paper", "reference"):
        cfg = LocalizeConfig.from_preset(preset)  # Gaussian fusion, the template the slow version implements
        best, stages = math.inf, None
        for _ in range(args.repeat):
            table, timing, (n_rows, n_proposals) = staged_localize(cas, scores, cfg, rate)
            if sum(timing.values()) < best:
                best, stages = sum(timing.values()), timing
        cpu = wall = math.inf
        for _ in range(args.repeat):
            c0, w0 = time.process_time(), time.perf_counter()
            localize_videos(cas, scores, classes, cfg, rate)
            cpu, wall = min(cpu, time.process_time() - c0), min(wall, time.perf_counter() - w0)
        c0, w0 = time.process_time(), time.perf_counter()
        slow_rows = slow_localize(cas, scores, cfg, rate)
        slow_cpu, slow_wall = time.process_time() - c0, time.perf_counter() - w0
        print(f"\n[{preset} preset, Gaussian fusion, T={cfg.temperature}] "
              f"{n_proposals} proposals ({n_rows} distinct) -> {len(table)} detections")
        for stage, seconds in stages.items():
            print(f"  {stage:<16s} {seconds:7.3f} s CPU")
        print(f"  {'localize_videos':<16s} {cpu:7.3f} s CPU, {wall:.3f} s wall (best of {args.repeat})")
        print(f"  {'plain Python':<16s} {slow_cpu:7.3f} s CPU, {slow_wall:.3f} s wall"
              f"  -> speed-up {slow_cpu / cpu:.1f}x CPU, {slow_wall / wall:.1f}x wall")
        print(f"  cross-check: {compare(table, slow_rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
