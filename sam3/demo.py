"""`make demo`: the main job on the embedded default, as far as it is implemented.

The full demo (issue 9) trains the tiny model on generated shapes videos with two CPU ranks and
evaluates it. Until the trainer exists this runs the furthest stage that really works and says so.
"""

from __future__ import annotations

import logging

import torch

from sam3.ops.boxes import box_cxcywh_to_xyxy, generalized_box_iou
from sam3.ops.masks import masks_to_boxes_xyxy, rle_decode, rle_encode

logger = logging.getLogger("sam3.demo")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logger.warning(
        "The trainer is not implemented yet (issue 9): `make demo` cannot train or evaluate a model. "
        "Running the furthest implemented stage instead: box and mask ops on a generated frame."
    )
    frame = torch.zeros(1, 64, 96, dtype=torch.bool)
    frame[0, 10:30, 20:60] = True
    rles = rle_encode(frame)
    assert torch.equal(rle_decode(rles), frame)
    box_xyxy = masks_to_boxes_xyxy(frame)
    logger.info("mask RLE %s -> box xyxy %s", rles[0]["counts"], box_xyxy.tolist())
    giou = generalized_box_iou(box_xyxy, box_cxcywh_to_xyxy(torch.tensor([[40.0, 20.0, 40.0, 20.0]])))
    logger.info("GIoU with its own cxcywh box: %.3f", giou.item())
    logger.warning("Demo stage reached: ops only. Training, evaluation and metrics arrive with issues 3-9.")


if __name__ == "__main__":
    main()
