"""Spatio-temporal masklet IoU against a dense reference computation."""

from __future__ import annotations

import numpy as np

from sam3.eval.saco_format import Masklet
from sam3.eval.track_iou import frame_box_iou, masklet_box_iou, masklet_mask_iou
from tests.helpers import HEIGHT, NUM_FRAMES, WIDTH, ellipse, encode


def _masklet(masks: list, masklet_id: int) -> Masklet:
    segs = [None if m is None else encode(m) for m in masks]
    boxes = [None if m is None else _box(m) for m in masks]
    return Masklet(masklet_id, 0, 1, boxes, segs, [None if m is None else float(m.sum()) for m in masks])


def _box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def test_mask_iou_equals_dense_reference():
    rng = np.random.default_rng(0)
    tracks = []
    for _k in range(5):
        cx, cy = rng.uniform(10, WIDTH - 10), rng.uniform(8, HEIGHT - 8)
        masks = [ellipse(cx + t, cy, 6, 4) if rng.random() > 0.25 else None for t in range(NUM_FRAMES)]
        tracks.append(masks)
    preds = [_masklet(m, i + 1) for i, m in enumerate(tracks[:3])]
    gts = [_masklet(m, i + 10) for i, m in enumerate(tracks[2:])]
    ious = masklet_mask_iou(preds, gts)
    for i, p in enumerate(tracks[:3]):
        for j, g in enumerate(tracks[2:]):
            inter = union = 0
            for mp, mg in zip(p, g, strict=True):
                mp = np.zeros((HEIGHT, WIDTH), bool) if mp is None else mp
                mg = np.zeros((HEIGHT, WIDTH), bool) if mg is None else mg
                inter += (mp & mg).sum()
                union += (mp | mg).sum()
            assert ious[i, j] == (inter / union if union else 1.0)
    assert ious[2, 0] == 1.0  # the same masklet


def test_box_iou_sums_over_frames():
    a = Masklet(1, 0, 1, [[0, 0, 10, 10], None], [None, None], [100, None])
    b = Masklet(2, 0, 1, [[5, 0, 10, 10], [0, 0, 4, 5]], [None, None], [100, 20])
    # frame 0: inter 50, union 150; frame 1: only b, union 20
    assert masklet_box_iou([a], [b])[0, 0] == np.float32(50 / 170)
    ious = frame_box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 10, 10], [0, 0, 0, 0]]))
    assert ious.dtype == np.float32 and ious.tolist() == [[np.float32(50 / 150), 0.0]]
