"""Spatio-temporal IoU between masklets, and per-frame IoU between detections.

Spatio-temporal IoU of a predicted and a ground-truth masklet: intersections summed over the frames
divided by unions summed over the frames (YT-VIS). A frame where only one of the two is present adds
its area to the union. Masks: exact integer pixel counts (pycocotools RLE arithmetic); two masklets
that are empty everywhere have IoU 1. Boxes: float32, as the official evaluator computes them
(absent boxes count as [0, 0, 0, 0]).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pycocotools import mask as coco_mask

from sam3.eval.saco_format import Masklet

__all__ = ["masklet_box_iou", "masklet_mask_iou", "frame_box_iou", "frame_mask_iou"]


def masklet_box_iou(preds: Sequence[Masklet], gts: Sequence[Masklet]) -> np.ndarray:
    """(D, G) float32 spatio-temporal box IoU of D predicted and G ground-truth masklets of one video."""
    if not preds or not gts:
        return np.zeros((len(preds), len(gts)), dtype=np.float32)
    boxes_p = torch.tensor([_boxes_or_zeros(m) for m in preds], dtype=torch.float32)  # (D, T, 4)
    boxes_g = torch.tensor([_boxes_or_zeros(m) for m in gts], dtype=torch.float32)  # (G, T, 4)
    p = boxes_p.unsqueeze(1)  # (D, 1, T, 4)
    g = boxes_g.unsqueeze(0)  # (1, G, T, 4)
    p_tl, p_br = p[..., :2], p[..., :2] + p[..., 2:]
    g_tl, g_br = g[..., :2], g[..., :2] + g[..., 2:]
    area_p = (p_br - p_tl).prod(-1)
    area_g = (g_br - g_tl).prod(-1)
    inter = (torch.min(p_br, g_br) - torch.max(p_tl, g_tl)).clamp(min=0).prod(-1)  # (D, G, T)
    union = area_p + area_g - inter
    inter, union = inter.sum(-1), union.sum(-1)
    if not bool((union > 0).all()):
        raise ValueError("a ground-truth masklet has no box in any frame; its spatio-temporal IoU is undefined")
    return (inter / union).numpy()


def masklet_mask_iou(preds: Sequence[Masklet], gts: Sequence[Masklet]) -> np.ndarray:
    """(D, G) float64 spatio-temporal mask IoU of D predicted and G ground-truth masklets of one video."""
    num_p, num_g = len(preds), len(gts)
    if num_p == 0 or num_g == 0:
        return np.zeros((num_p, num_g), dtype=np.float64)
    num_frames = preds[0].num_frames
    inter = np.zeros((num_p, num_g), dtype=np.int64)
    area_p_sum = np.zeros(num_p, dtype=np.int64)
    area_g_sum = np.zeros(num_g, dtype=np.int64)
    for t in range(num_frames):
        idx_p = [i for i, m in enumerate(preds) if m.segmentations[t] is not None]
        idx_g = [j for j, m in enumerate(gts) if m.segmentations[t] is not None]
        rles_p = [_as_bytes(preds[i].segmentations[t]) for i in idx_p]
        rles_g = [_as_bytes(gts[j].segmentations[t]) for j in idx_g]
        areas_p = coco_mask.area(rles_p).astype(np.int64) if rles_p else np.zeros(0, np.int64)
        areas_g = coco_mask.area(rles_g).astype(np.int64) if rles_g else np.zeros(0, np.int64)
        area_p_sum[idx_p] += areas_p
        area_g_sum[idx_g] += areas_g
        if rles_p and rles_g:
            inter[np.ix_(idx_p, idx_g)] += _exact_intersections(rles_p, rles_g, areas_p, areas_g)
    union = area_p_sum[:, None] + area_g_sum[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def frame_box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """(A, B) float32 IoU of absolute xywh boxes (A, 4) and (B, 4); degenerate boxes give 0."""
    a = np.asarray(boxes_a, dtype=np.float32).reshape(-1, 4).copy()
    b = np.asarray(boxes_b, dtype=np.float32).reshape(-1, 4).copy()
    a[:, 2:] += a[:, :2]  # (A, 4) xyxy
    b[:, 2:] += b[:, :2]  # (B, 4) xyxy
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.maximum(hi - lo, 0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    eps = np.finfo(np.float64).eps
    inter[area_a <= eps, :] = 0
    inter[:, area_b <= eps] = 0
    inter[union <= eps] = 0
    union[union <= eps] = 1
    return inter / union


def frame_mask_iou(rles_a: list, rles_b: list) -> np.ndarray:
    """(A, B) float64 IoU of compressed COCO RLEs."""
    if not rles_a or not rles_b:
        return np.zeros((len(rles_a), len(rles_b)), dtype=np.float64)
    ious = coco_mask.iou([_as_bytes(r) for r in rles_a], [_as_bytes(r) for r in rles_b], [0] * len(rles_b))
    return np.asarray(ious, dtype=np.float64).reshape(len(rles_a), len(rles_b))


def _exact_intersections(rles_p: list, rles_g: list, areas_p: np.ndarray, areas_g: np.ndarray) -> np.ndarray:
    """(P, G) int64 pixel intersections, recovered exactly from pycocotools' IoU: I = IoU (A + B) / (1 + IoU)."""
    iou = np.asarray(coco_mask.iou(rles_p, rles_g, [0] * len(rles_g)), dtype=np.float64).reshape(
        len(rles_p), len(rles_g)
    )
    total = areas_p[:, None] + areas_g[None, :]
    return np.rint(iou * total / (1.0 + iou)).astype(np.int64)


def _boxes_or_zeros(masklet: Masklet) -> list[list[float]]:
    return [box if box is not None else [0.0, 0.0, 0.0, 0.0] for box in masklet.boxes_xywh]


def _as_bytes(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
