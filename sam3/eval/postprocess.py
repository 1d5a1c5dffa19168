"""Post-processing of grounding outputs: scores, thresholding, per-frame mask NMS, original-size outputs.

For every (frame, prompt) pair of a `DetectorOutput`:
1. score = sigmoid(logit) * sigmoid(presence) (`DetectorOutput.scores`), keep scores above a threshold,
   at most `max_detections` per pair, best first;
2. optional non-maximum suppression among the kept detections of the pair (`MaskNMS`, a per-frame
   callable that the frame-sharded inference can apply on each rank before the gather);
3. `to_original_size`: boxes to absolute xywh in the original frame, mask logits resized bilinearly
   to the original frame (align_corners=False), thresholded at logit 0 (sigmoid 0.5, as SAM3) and
   RLE-encoded with pycocotools.
The functions are pure and run on whatever device the outputs are on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from sam3.ops.boxes import box_cxcywh_to_xyxy, box_xyxy_to_xywh
from sam3.ops.masks import RLE, mask_iou, rle_encode
from sam3.structures import DetectorOutput

__all__ = [
    "PostprocessConfig",
    "FrameDetections",
    "FramePredictions",
    "FrameNMS",
    "MaskNMS",
    "select_detections",
    "to_original_size",
    "postprocess",
]


@dataclass(frozen=True)
class PostprocessConfig:
    """Knobs of the post-processing.

    Attributes:
        score_thresh: keep detections with score > score_thresh (0 keeps all; AP wants a low value,
            cgF1 thresholds at 0.5 itself).
        max_detections: at most this many detections per (frame, prompt) pair, best first; None = all.
        nms_iou_thresh: suppress a detection whose mask (box without masks) IoU with a better kept one
            exceeds this; None disables NMS.
        mask_logit_thresh: a pixel is foreground where the resized mask logit > this (0 = sigmoid 0.5).
    """

    score_thresh: float = 0.0
    max_detections: int | None = None
    nms_iou_thresh: float | None = None
    mask_logit_thresh: float = 0.0


@dataclass
class FrameDetections:
    """Detections of one (frame, prompt) pair at the model's resolution, best score first.

    Attributes:
        scores: (N,) float in [0, 1].
        boxes_cxcywh: (N, 4) float, normalised cxcywh.
        mask_logits: (N, h, w) float mask logits, or None without segmentation.
        query_idx: (N,) int64; the decoder query each detection comes from.
    """

    scores: torch.Tensor
    boxes_cxcywh: torch.Tensor
    mask_logits: torch.Tensor | None
    query_idx: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.numel())

    def index(self, keep: torch.Tensor) -> FrameDetections:
        """The detections at `keep` (indices or a bool mask), in that order."""
        return FrameDetections(
            scores=self.scores[keep],
            boxes_cxcywh=self.boxes_cxcywh[keep],
            mask_logits=None if self.mask_logits is None else self.mask_logits[keep],
            query_idx=self.query_idx[keep],
        )


@dataclass
class FramePredictions:
    """Detections of one (frame, prompt) pair in the original frame.

    Attributes:
        scores: (N,) float.
        boxes_xywh: (N, 4) float, absolute [x, y, w, h] pixels of the original frame.
        masks: (N, H, W) bool at the original size, or None without segmentation.
        rles: N compressed COCO RLEs of `masks` (empty without segmentation).
        areas: (N,) int64 mask areas in pixels (zeros without segmentation).
        query_idx: (N,) int64.
    """

    scores: torch.Tensor
    boxes_xywh: torch.Tensor
    masks: torch.Tensor | None
    rles: list[RLE]
    areas: torch.Tensor
    query_idx: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.numel())


FrameNMS = Callable[[FrameDetections], FrameDetections]


class MaskNMS:
    """Greedy NMS of one (frame, prompt) pair's detections on mask IoU (box IoU when there are no masks).

    Masks are compared at the model's resolution after thresholding the logits at `mask_logit_thresh`.
    Detections must come best first (as `select_detections` returns them); the kept ones stay in order.
    """

    def __init__(self, iou_thresh: float, mask_logit_thresh: float = 0.0) -> None:
        self.iou_thresh = iou_thresh
        self.mask_logit_thresh = mask_logit_thresh

    def __call__(self, detections: FrameDetections) -> FrameDetections:
        if len(detections) <= 1:
            return detections
        if detections.mask_logits is not None:
            masks = detections.mask_logits > self.mask_logit_thresh  # (N, h, w)
            ious = mask_iou(masks, masks)  # (N, N)
        else:
            boxes = box_cxcywh_to_xyxy(detections.boxes_cxcywh)
            ious = box_iou(boxes, boxes)
        keep = torch.ones(len(detections), dtype=torch.bool, device=ious.device)
        for i in range(len(detections)):
            if keep[i]:
                suppressed = ious[i] > self.iou_thresh
                suppressed[: i + 1] = False
                keep &= ~suppressed
        return detections.index(keep)


def select_detections(
    outputs: DetectorOutput,
    config: PostprocessConfig,
    nms: FrameNMS | None = None,
) -> list[FrameDetections]:
    """Scores, thresholds, caps and (optionally) suppresses the queries of every pair.

    Args:
        outputs: grounding outputs over Npairs (frame, prompt) pairs.
        config: thresholds; when `nms` is None and `config.nms_iou_thresh` is set, `MaskNMS` is used.
        nms: a per-pair suppression callable, overriding the config's.

    Returns:
        Npairs `FrameDetections`, in pair order, each sorted by decreasing score.
    """
    if nms is None and config.nms_iou_thresh is not None:
        nms = MaskNMS(config.nms_iou_thresh, config.mask_logit_thresh)
    scores = outputs.scores()  # (Npairs, Q)
    out = []
    for pair in range(outputs.num_pairs):
        order = torch.argsort(scores[pair], descending=True, stable=True)
        order = order[scores[pair][order] > config.score_thresh]
        if config.max_detections is not None:
            order = order[: config.max_detections]
        detections = FrameDetections(
            scores=scores[pair][order],
            boxes_cxcywh=outputs.pred_boxes[pair][order],
            mask_logits=None if outputs.pred_masks is None else outputs.pred_masks[pair][order],
            query_idx=order,
        )
        out.append(nms(detections) if nms is not None else detections)
    return out


def to_original_size(
    detections: FrameDetections,
    orig_size: tuple[int, int],
    mask_logit_thresh: float = 0.0,
    keep_masks: bool = False,
) -> FramePredictions:
    """Maps one pair's detections to its original frame of (height, width) pixels.

    Boxes are clipped to the frame. Masks are resized from (h, w) to (height, width), thresholded and
    RLE-encoded; `keep_masks` also returns the dense (N, H, W) masks.
    """
    height, width = int(orig_size[0]), int(orig_size[1])
    scale = detections.boxes_cxcywh.new_tensor([width, height, width, height])
    boxes_xyxy = box_cxcywh_to_xyxy(detections.boxes_cxcywh) * scale
    boxes_xyxy[:, 0::2] = boxes_xyxy[:, 0::2].clamp(0, width)
    boxes_xyxy[:, 1::2] = boxes_xyxy[:, 1::2].clamp(0, height)
    masks = None
    rles: list[RLE] = []
    areas = torch.zeros(len(detections), dtype=torch.int64)
    if detections.mask_logits is not None:
        if len(detections):
            logits = F.interpolate(
                detections.mask_logits[:, None].float(), size=(height, width), mode="bilinear", align_corners=False
            )[:, 0]  # (N, H, W)
            masks = logits > mask_logit_thresh
            rles = rle_encode(masks)
            areas = masks.flatten(1).sum(1).cpu()
        else:
            masks = torch.zeros(0, height, width, dtype=torch.bool, device=detections.mask_logits.device)
    return FramePredictions(
        scores=detections.scores,
        boxes_xywh=box_xyxy_to_xywh(boxes_xyxy),
        masks=masks if keep_masks else None,
        rles=rles,
        areas=areas,
        query_idx=detections.query_idx,
    )


def postprocess(
    outputs: DetectorOutput,
    orig_sizes: torch.Tensor,
    config: PostprocessConfig,
    nms: FrameNMS | None = None,
) -> list[FramePredictions]:
    """`select_detections` then `to_original_size` for every pair.

    Args:
        outputs: grounding outputs over Npairs pairs.
        orig_sizes: (Npairs, 2) original (height, width) of each pair's frame.
        config: thresholds.
        nms: optional per-pair suppression (see `select_detections`).
    """
    if orig_sizes.shape != (outputs.num_pairs, 2):
        raise ValueError(f"orig_sizes must be ({outputs.num_pairs}, 2), got {tuple(orig_sizes.shape)}")
    detections = select_detections(outputs, config, nms)
    return [
        to_original_size(d, (int(h), int(w)), config.mask_logit_thresh)
        for d, (h, w) in zip(detections, orig_sizes.tolist(), strict=True)
    ]
