"""Box format conversions and overlap measures.

Formats: `cxcywh` (centre, size), `xyxy` (corners), `xywh` (COCO: top-left corner, size). Boxes are
normalised to [0, 1] by the image (width, height) or absolute in pixels; the function names say which.
Pairwise measures come from `torchvision.ops`; the elementwise ones (matched pairs in the loss) are
written here because torchvision only offers them folded into losses.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_convert, box_iou, generalized_box_iou

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_xywh_to_xyxy",
    "box_xyxy_to_xywh",
    "box_xywh_to_cxcywh",
    "box_cxcywh_to_xywh",
    "normalize_boxes",
    "denormalize_boxes",
    "box_iou",
    "generalized_box_iou",
    "elementwise_box_iou",
    "elementwise_generalized_box_iou",
]


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy."""
    return box_convert(boxes, "cxcywh", "xyxy")


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh."""
    return box_convert(boxes, "xyxy", "cxcywh")


def box_xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) xywh -> (..., 4) xyxy."""
    return box_convert(boxes, "xywh", "xyxy")


def box_xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) xyxy -> (..., 4) xywh."""
    return box_convert(boxes, "xyxy", "xywh")


def box_xywh_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) xywh -> (..., 4) cxcywh."""
    return box_convert(boxes, "xywh", "cxcywh")


def box_cxcywh_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) cxcywh -> (..., 4) xywh."""
    return box_convert(boxes, "cxcywh", "xywh")


def _size_scale(boxes: torch.Tensor, height: int | float, width: int | float) -> torch.Tensor:
    return boxes.new_tensor([width, height, width, height])


def normalize_boxes(boxes: torch.Tensor, height: int | float, width: int | float) -> torch.Tensor:
    """(..., 4) absolute pixel boxes (any of the formats above) -> normalised by the image size."""
    return boxes / _size_scale(boxes, height, width)


def denormalize_boxes(boxes: torch.Tensor, height: int | float, width: int | float) -> torch.Tensor:
    """(..., 4) normalised boxes (any of the formats above) -> absolute pixels."""
    return boxes * _size_scale(boxes, height, width)


def elementwise_box_iou(boxes1_xyxy: torch.Tensor, boxes2_xyxy: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """IoU of matched boxes: (..., 4) xyxy and (..., 4) xyxy -> (...).

    The union is clamped below at `eps`, not offset by it: pairs of zero area give 0, and every other
    pair gets its exact IoU (an offset would shrink the IoU of small boxes by eps / union).
    """
    iou, _ = _elementwise_iou_and_union(boxes1_xyxy, boxes2_xyxy, eps)
    return iou


def elementwise_generalized_box_iou(
    boxes1_xyxy: torch.Tensor, boxes2_xyxy: torch.Tensor, eps: float = 1e-7
) -> torch.Tensor:
    """Generalised IoU of matched boxes: (..., 4) xyxy and (..., 4) xyxy -> (...) in [-1, 1].

    Union and hull are clamped below at `eps` (see `elementwise_box_iou`).
    """
    iou, union = _elementwise_iou_and_union(boxes1_xyxy, boxes2_xyxy, eps)
    top_left = torch.minimum(boxes1_xyxy[..., :2], boxes2_xyxy[..., :2])
    bottom_right = torch.maximum(boxes1_xyxy[..., 2:], boxes2_xyxy[..., 2:])
    hull_wh = (bottom_right - top_left).clamp(min=0)
    hull = hull_wh[..., 0] * hull_wh[..., 1]
    return iou - (hull - union) / hull.clamp(min=eps)


def _elementwise_iou_and_union(
    boxes1_xyxy: torch.Tensor, boxes2_xyxy: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    area1 = (boxes1_xyxy[..., 2] - boxes1_xyxy[..., 0]) * (boxes1_xyxy[..., 3] - boxes1_xyxy[..., 1])
    area2 = (boxes2_xyxy[..., 2] - boxes2_xyxy[..., 0]) * (boxes2_xyxy[..., 3] - boxes2_xyxy[..., 1])
    top_left = torch.maximum(boxes1_xyxy[..., :2], boxes2_xyxy[..., :2])
    bottom_right = torch.minimum(boxes1_xyxy[..., 2:], boxes2_xyxy[..., 2:])
    inter_wh = (bottom_right - top_left).clamp(min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    union = area1 + area2 - inter
    return inter / union.clamp(min=eps), union
