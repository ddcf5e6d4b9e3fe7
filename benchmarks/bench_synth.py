"""Time the synthetic generator and measure how hard its data is with a plain MIL baseline.

    python benchmarks/bench_synth.py                    # time at D=2048 and D=256 (THUMOS size), then probe
    python benchmarks/bench_synth.py --dims 256 --probe-dim 256 --videos 100

The probe (calibration only, not a library model) is a linear snippet classifier trained with top-k MIL
pooling (k = T/8) and a BCE loss on the video labels of the training split. On the test split it reports
(a) video-classification mAP, (b) snippet-level AP of its CAS against the true snippet masks, (c) detection
mAP of contiguous runs of the min-max normalised CAS above thresholds 0.1..0.9 (classes with video score >= 0.5,
else the top class), scored by outer-inner contrast, NMS at tIoU 0.5, (d) the share of each sub-action phase
and of near-instance background that the 0.5 threshold marks as action (incomplete / over-complete
localization), and statistics of the annotations next to the real THUMOS14 ones.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from wtal.data.segments import SegmentTable
from wtal.data.synthetic import SynthConfig, SyntheticSet, generate
from wtal.data.timebase import snippets_to_seconds
from wtal.evaluation.classification import classification_map
from wtal.evaluation.detection import detection_map

REAL_THUMOS14 = ("real THUMOS14: 412 videos 8.9-1673 s (median 155 s), 6365 instances (3358 test), "
                 "length median 3.0 s, p90 8.5 s, max 118 s, 15.4 instances/video, 61 multi-label, coverage 0.31")


def describe(data: SyntheticSet) -> str:
    ann = data.annotations
    vids = list(ann.videos.values())
    dur = np.array([v.duration for v in vids])
    lengths = np.array([i.end - i.start for v in vids for i in v.instances])
    cov = np.array([sum(i.end - i.start for i in v.instances) / v.duration for v in vids])
    n_test = sum(len(v.instances) for v in vids if v.subset == "test")
    multi = sum(len({i.label for i in v.instances}) > 1 for v in vids)
    return (f"synthetic:     {len(vids)} videos {dur.min():.1f}-{dur.max():.0f} s (median {np.median(dur):.0f} s), "
            f"{len(lengths)} instances ({n_test} test), length median {np.median(lengths):.1f} s, "
            f"p90 {np.percentile(lengths, 90):.1f} s, max {lengths.max():.0f} s, "
            f"{len(lengths) / len(vids):.1f} instances/video, {multi} multi-label, coverage {cov.mean():.2f}")


def time_generation(videos: int, dim: int, seed: int) -> tuple[SyntheticSet, float]:
    t0 = time.perf_counter()
    data = generate(SynthConfig(num_videos=videos, dim=dim, seed=seed))
    return data, time.perf_counter() - t0


def train_mil(data: SyntheticSet, epochs: int, seed: int) -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    ann = data.annotations
    names = ann.names("validation")
    torch.manual_seed(seed)
    xs = [torch.from_numpy(data.features[n]) for n in names]
    allx = torch.cat(xs)
    mean, std = allx.mean(0), allx.std(0) + 1e-6
    ys = [torch.from_numpy(ann.multi_hot(n)) for n in names]
    model = torch.nn.Linear(allx.shape[1], len(ann.classes))
    # Adam moves every weight by ~lr, so the logit step grows with D: keep lr * D fixed
    opt = torch.optim.Adam(model.parameters(), lr=1e-2 * 256 / allx.shape[1], weight_decay=1e-4)
    for _ in range(epochs):
        for i in torch.randperm(len(names)).tolist():
            x = (xs[i] - mean) / std
            x = torch.nn.functional.dropout(x, 0.5)
            logits = model(x)
            k = max(1, len(x) // 8)
            video = logits.topk(k, dim=0).values.mean(0)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(video, ys[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model, mean, std


def runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) snippet indices of the runs of True in a 1-D mask."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def nms(start: np.ndarray, end: np.ndarray, score: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy 1-D non-maximum suppression."""
    order, kept = np.argsort(-score, kind="stable"), []
    while len(order):
        i, order = order[0], order[1:]
        kept.append(i)
        inter = np.clip(np.minimum(end[i], end[order]) - np.maximum(start[i], start[order]), 0, None)
        union = (end[i] - start[i]) + (end[order] - start[order]) - inter
        order = order[inter / np.maximum(union, 1e-12) < iou]
    return np.array(kept, dtype=np.int64)


def proposals(name: str, c: int, a: np.ndarray, video_score: float, rate: float) -> list[tuple]:
    """Contiguous runs of the normalised CAS ``a`` above thresholds 0.1..0.9, outer-inner scored, then NMS."""
    prefix = np.concatenate([[0.0], np.cumsum(a)])
    cands = []
    for thr in np.arange(0.1, 0.95, 0.1):
        s, e = runs(a >= thr)
        margin = np.maximum(1, (e - s) // 4)
        lo, hi = np.maximum(0, s - margin), np.minimum(len(a), e + margin)
        inner = (prefix[e] - prefix[s]) / (e - s)
        outer_n = (s - lo) + (hi - e)
        outer = ((prefix[s] - prefix[lo]) + (prefix[hi] - prefix[e])) / np.maximum(outer_n, 1)
        cands.append(np.stack([s, e, inner - outer + 0.2 * video_score], axis=1))
    cand = np.concatenate(cands)
    keep = nms(cand[:, 0], cand[:, 1], cand[:, 2], 0.5)
    return [(name, c, float(snippets_to_seconds(s, rate)), float(snippets_to_seconds(e, rate)), float(sc))
            for s, e, sc in cand[keep]]


def probe(data: SyntheticSet, epochs: int, seed: int) -> dict[str, float]:
    ann = data.annotations
    model, mean, std = train_mil(data, epochs, seed)
    test = ann.names("test")
    rate = data.layout.snippets_per_second
    scores, labels, rows = [], [], []
    snippet_cas, snippet_true = [], []
    phase_hits = np.zeros(8)
    phase_counts = np.zeros(8)
    with torch.no_grad():
        for name in test:
            x = (torch.from_numpy(data.features[name]) - mean) / std
            logits = model(x)
            k = max(1, len(x) // 8)
            video = torch.sigmoid(logits.topk(k, dim=0).values.mean(0)).numpy().astype(np.float64)
            cas = torch.sigmoid(logits).numpy().astype(np.float64)
            scores.append(video)
            labels.append(ann.multi_hot(name))
            snippet_cas.append(cas)
            snippet_true.append(data.snippet_labels[name])
            keep = np.flatnonzero(video >= 0.5)
            if len(keep) == 0:
                keep = np.array([int(video.argmax())])
            true_cls = set(np.flatnonzero(ann.multi_hot(name)))
            phase = data.snippet_phase[name].astype(int)
            # background snippets within 5 s of an instance: where over-complete detections land
            centre = snippets_to_seconds(np.arange(len(x)) + 0.5, rate)
            starts = np.array([i.start for i in ann.videos[name].instances])
            ends = np.array([i.end for i in ann.videos[name].instances])
            dist = np.maximum(np.maximum(starts[None] - centre[:, None], centre[:, None] - ends[None]), 0).min(1)
            near_bg = (phase == 0) & (dist <= 5.0)
            for c in keep:
                a = cas[:, c]
                a = (a - a.min()) / (a.max() - a.min() + 1e-12)
                mask = a >= 0.5
                rows += proposals(name, int(c), a, float(video[c]), rate)
                if c in true_cls:
                    on_class = data.snippet_labels[name][:, c]
                    for p in range(1, phase.max() + 1):
                        sel = on_class & (phase == p)
                        phase_hits[p] += mask[sel].sum()
                        phase_counts[p] += sel.sum()
                    phase_hits[0] += mask[near_bg].sum()
                    phase_counts[0] += near_bg.sum()
    cls_map = classification_map(np.array(scores), np.array(labels))
    cas_all, true_all = np.concatenate(snippet_cas), np.concatenate(snippet_true)
    snippet_ap = []
    for c in range(cas_all.shape[1]):
        order = np.argsort(-cas_all[:, c], kind="stable")
        hits = true_all[order, c]
        if hits.sum():
            precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
            snippet_ap.append((precision * hits).sum() / hits.sum())
    report = detection_map(ann.ground_truth(test), SegmentTable.from_rows(ann.classes, rows))
    out = {"classification mAP": cls_map, "snippet AP": 100 * float(np.mean(snippet_ap)),
           **{f"mAP@{t:.1f}": m for t, m in zip(report.thresholds, report.mAP, strict=True)},
           **report.averages}
    names = ["near-instance background (<= 5 s)", "start phase", "middle phase", "end phase"]
    for p, label in enumerate(names):
        if phase_counts[p]:
            out[f"detected share: {label}"] = 100 * phase_hits[p] / phase_counts[p]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=412)
    ap.add_argument("--dims", default="2048,256", help="comma-separated dimensions to time")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--probe-dim", type=int, default=2048, help="dimension of the calibration probe; 0: none")
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    kept = None
    for dim in [int(x) for x in args.dims.split(",") if x]:
        data, seconds = time_generation(args.videos, dim, args.seed)
        snippets = sum(len(f) for f in data.features.values())
        print(f"generate: {args.videos} videos, {snippets} snippets, D={dim}: {seconds:.1f} s")
        if dim == args.probe_dim:
            kept = data
        del data
    if args.probe_dim:
        if kept is None:
            kept, _ = time_generation(args.videos, args.probe_dim, args.seed)
        print(describe(kept))
        print(REAL_THUMOS14)
        t0 = time.perf_counter()
        result = probe(kept, args.epochs, args.seed)
        print(f"MIL probe at D={args.probe_dim} ({time.perf_counter() - t0:.0f} s):")
        for key, value in result.items():
            print(f"  {key:<40} {value:6.1f}")


if __name__ == "__main__":
    main()
