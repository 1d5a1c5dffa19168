"""Pictures of predictions: masks and boxes drawn over the frames of a clip, side by side.

Used for TensorBoard images during training and for the demo's PNG strip. Drawing goes through
`torchvision.utils` (`draw_segmentation_masks`, `draw_bounding_boxes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.io import write_png
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

from sam3.ops.boxes import box_cxcywh_to_xyxy, denormalize_boxes
from sam3.structures import ClipBatch

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]


def denormalize_image(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) model input normalised to [-1, 1] (mean 0.5, std 0.5) -> (3, H, W) uint8."""
    return ((image.detach().float().cpu() * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)


def draw_frame(
    image_uint8: torch.Tensor,
    boxes_xyxy: torch.Tensor,
    masks: torch.Tensor | None,
    labels: Sequence[str] | None = None,
) -> torch.Tensor:
    """One frame with N masks (N, H, W) bool and N absolute xyxy boxes drawn over it: (3, H, W) uint8."""
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(boxes_xyxy))]
    out = image_uint8
    if masks is not None and len(masks):
        out = draw_segmentation_masks(out, masks.cpu().bool(), alpha=0.45, colors=colors)
    if len(boxes_xyxy):
        out = draw_bounding_boxes(
            out, boxes_xyxy.cpu().float(), labels=list(labels) if labels else None, colors=colors, width=1
        )
    return out


def strip(frames: Sequence[torch.Tensor], padding: int = 2) -> torch.Tensor:
    """Frames (3, H, W) uint8 side by side: (3, H + 2p, T * (W + p) + p) uint8."""
    return make_grid(torch.stack(list(frames)), nrow=len(frames), padding=padding, pad_value=255)


def save_png(image_uint8: torch.Tensor, path: str | Path) -> Path:
    """Writes a (3, H, W) uint8 image as PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(image_uint8.cpu(), str(path))
    return path


class PredictionStrip:
    """`visualize(model, batch) -> (3, H, W) uint8`: the model's detections of the first clip's first
    prompt over that clip's frames in the batch (for TensorBoard during training).

    Args:
        score_thresh: draw detections whose score exceeds this.
        max_detections: at most this many per frame.
    """

    def __init__(self, score_thresh: float = 0.5, max_detections: int = 5) -> None:
        self.score_thresh = score_thresh
        self.max_detections = max_detections

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, batch: ClipBatch) -> torch.Tensor:
        outputs = model(batch)
        scores = outputs.scores()  # (Npairs, Q)
        size = batch.images.shape[-1]
        frames = []
        for slot in range(batch.num_local_frames):
            if int(batch.frame_clip_idx[slot]) != 0:
                continue
            pair = int(((batch.pairs.frame_slot == slot) & (batch.pairs.prompt_idx == 0)).nonzero()[0])
            keep = scores[pair].argsort(descending=True)[: self.max_detections]
            keep = keep[scores[pair][keep] > self.score_thresh]
            boxes = denormalize_boxes(box_cxcywh_to_xyxy(outputs.pred_boxes[pair][keep]), size, size)
            masks = None
            if outputs.pred_masks is not None:
                logits = outputs.pred_masks[pair][keep]
                masks = (
                    torch.nn.functional.interpolate(logits[:, None].float(), size=(size, size), mode="bilinear")[:, 0]
                    > 0
                )
            labels = [f"{batch.prompts[0][0]} {float(s):.2f}" for s in scores[pair][keep]]
            frames.append(draw_frame(denormalize_image(batch.images[slot]), boxes, masks, labels))
        return strip(frames) if frames else torch.zeros(3, size, size, dtype=torch.uint8)
