"""Mask operations: mask -> box, COCO run-length encoding (through pycocotools) and mask IoU.

Masks are boolean (..., H, W) tensors. Boxes derived from masks use the COCO pixel convention of
`pycocotools.mask.toBbox`: a mask covering columns x0..x1 (inclusive) has width x1 - x0 + 1, so the
xyxy box is [x0, y0, x1 + 1, y1 + 1]. (`torchvision.ops.masks_to_boxes` returns the inclusive corner
and fails on empty masks, which occur for every invisible instance, so it is not used.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pycocotools import mask as coco_mask

RLE = dict[str, Any]

__all__ = [
    "RLE",
    "masks_to_boxes_xyxy",
    "rle_encode",
    "rle_decode",
    "rle_problem",
    "rle_area",
    "rle_to_box_xywh",
    "mask_iou",
]


def masks_to_boxes_xyxy(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes of masks: (..., H, W) bool -> (..., 4) float32 absolute xyxy; empty masks give zeros."""
    height, width = masks.shape[-2:]
    masks = masks.bool()
    rows = masks.any(dim=-1)  # (..., H)
    cols = masks.any(dim=-2)  # (..., W)
    ys = torch.arange(height, device=masks.device)
    xs = torch.arange(width, device=masks.device)
    big = max(height, width) + 1
    y0 = torch.where(rows, ys, big).amin(dim=-1)
    y1 = torch.where(rows, ys, -1).amax(dim=-1) + 1
    x0 = torch.where(cols, xs, big).amin(dim=-1)
    x1 = torch.where(cols, xs, -1).amax(dim=-1) + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=-1).float()
    return torch.where(rows.any(dim=-1, keepdim=True), boxes, torch.zeros_like(boxes))


def rle_encode(masks: torch.Tensor) -> list[RLE]:
    """(N, H, W) bool masks -> N COCO RLEs with `size` [H, W] and `counts` as a str (JSON-ready)."""
    if masks.ndim != 3:
        raise ValueError(f"rle_encode expects (N, H, W) masks, got shape {tuple(masks.shape)}")
    array = np.asfortranarray(masks.detach().to("cpu", torch.uint8).numpy().transpose(1, 2, 0))
    rles = coco_mask.encode(array)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def rle_decode(rles: list[RLE]) -> torch.Tensor:
    """N COCO RLEs (compressed str/bytes counts or uncompressed list counts) -> (N, H, W) bool."""
    return rle_decode_transposed(rles).transpose(1, 2).contiguous()


def rle_decode_transposed(rles: list[RLE]) -> torch.Tensor:
    """N COCO RLEs -> (N, W, H) bool, contiguous: the masks transposed, as RLE stores them (column by
    column), without the strided copy into row-major order that `rle_decode` makes."""
    if not rles:
        raise ValueError("rle_decode needs at least one RLE (the size of an empty list is unknown)")
    compressed = [_as_compressed(rle) for rle in rles]
    array = coco_mask.decode(compressed)  # (H, W, N) uint8 of 0 and 1, column-major
    # Viewed as bool without a copy: a byte of 0 or 1 is a valid bool (one pass less over N x H x W).
    return torch.from_numpy(array.transpose(2, 1, 0)).view(torch.bool)


def rle_problem(rle: RLE) -> str | None:
    """What is wrong with a compressed RLE's `counts`, or None if its runs cover exactly H*W pixels.

    pycocotools decodes any string without checking it: a string cut mid-number reads past its end and
    runs that do not add up to H*W give a wrong mask (or memory garbage), so check before decoding.
    The string holds each run as 6-bit groups (char - 48), 5 data bits and a continuation bit, the last
    group's bit 4 the sign; runs after the second are stored as the difference to the run two back.
    """
    height, width = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, list):
        runs = counts
    else:
        text = counts.decode("ascii") if isinstance(counts, bytes) else counts
        runs, value, shift = [], 0, 0
        for position, char in enumerate(text):
            code = ord(char) - 48
            if not 0 <= code < 64:
                return f"RLE counts has the invalid character {char!r} at position {position}"
            value |= (code & 0x1F) << shift
            shift += 5
            if code & 0x20:
                continue
            if code & 0x10:
                value |= -1 << shift
            if len(runs) > 2:
                value += runs[-2]
            runs.append(value)
            value, shift = 0, 0
        if shift:
            return "RLE counts ends in the middle of a run (truncated string)"
    if any(run < 0 for run in runs):
        return "RLE counts has a negative run"
    if sum(runs) != height * width:
        return f"RLE runs cover {sum(runs)} pixels, not {height}*{width} = {height * width}"
    return None


def rle_area(rles: list[RLE]) -> torch.Tensor:
    """Pixel areas of N COCO RLEs -> (N,) int64."""
    if not rles:
        return torch.zeros(0, dtype=torch.int64)
    return torch.from_numpy(coco_mask.area([_as_compressed(r) for r in rles]).astype(np.int64))


def rle_to_box_xywh(rles: list[RLE]) -> torch.Tensor:
    """Tight boxes of N COCO RLEs -> (N, 4) float32 absolute xywh (pycocotools convention)."""
    if not rles:
        return torch.zeros(0, 4)
    return torch.from_numpy(coco_mask.toBbox([_as_compressed(r) for r in rles]).astype(np.float32))


def mask_iou(masks1: torch.Tensor, masks2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of masks: (..., N, H, W) and (..., M, H, W) -> (..., N, M); two empty masks give 0."""
    flat1 = masks1.flatten(-2).float()
    flat2 = masks2.flatten(-2).float()
    inter = flat1 @ flat2.transpose(-1, -2)
    area1 = flat1.sum(-1)
    area2 = flat2.sum(-1)
    union = area1[..., :, None] + area2[..., None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def _as_compressed(rle: RLE) -> RLE:
    """pycocotools wants compressed RLEs with bytes counts; accept str counts and uncompressed lists."""
    counts = rle["counts"]
    if isinstance(counts, list):
        height, width = rle["size"]
        return coco_mask.frPyObjects(rle, height, width)
    if isinstance(counts, str):
        return {"size": rle["size"], "counts": counts.encode("ascii")}
    return rle
