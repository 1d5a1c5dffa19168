"""Mask ops: boxes of masks, RLE round trips through pycocotools, mask IoU."""

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask

from sam3.ops import masks as mask_ops


def test_masks_to_boxes_uses_coco_convention_and_handles_empty():
    masks = torch.zeros(2, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True  # rows 2..4, cols 3..8
    boxes = mask_ops.masks_to_boxes_xyxy(masks)
    torch.testing.assert_close(boxes, torch.tensor([[3.0, 2.0, 9.0, 5.0], [0.0, 0.0, 0.0, 0.0]]))
    rle = mask_ops.rle_encode(masks[:1])
    torch.testing.assert_close(mask_ops.rle_to_box_xywh(rle), torch.tensor([[3.0, 2.0, 6.0, 3.0]]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rle_round_trip_on_random_masks(seed):
    generator = torch.Generator().manual_seed(seed)
    masks = torch.rand(5, 37, 53, generator=generator) > 0.6
    masks[3] = False  # an empty mask survives too
    rles = mask_ops.rle_encode(masks)
    assert all(isinstance(r["counts"], str) and r["size"] == [37, 53] for r in rles)
    assert torch.equal(mask_ops.rle_decode(rles), masks)
    transposed = mask_ops.rle_decode_transposed(rles)
    assert transposed.is_contiguous() and torch.equal(transposed, masks.transpose(1, 2))
    assert torch.equal(mask_ops.rle_area(rles), masks.flatten(1).sum(1))


def test_rle_decode_accepts_uncompressed_counts():
    mask = np.zeros((4, 5), dtype=np.uint8)
    mask[1:3, 2:4] = 1
    # Uncompressed RLE: column-major run lengths starting with zeros.
    runs = []
    flat = mask.flatten(order="F")
    value, count = 0, 0
    for pixel in flat:
        if pixel == value:
            count += 1
        else:
            runs.append(count)
            value, count = pixel, 1
    runs.append(count)
    decoded = mask_ops.rle_decode([{"size": [4, 5], "counts": runs}])
    assert torch.equal(decoded[0], torch.from_numpy(mask).bool())


def test_mask_iou_pairwise_and_batched():
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    a[0, :2, :] = True  # 8 px
    a[1] = False
    b = torch.zeros(3, 4, 4, dtype=torch.bool)
    b[0, :, :2] = True  # 8 px, overlap with a[0]: 4 -> IoU 4/12
    b[1, :2, :] = True  # identical to a[0]
    iou = mask_ops.mask_iou(a, b)
    expected = torch.tensor([[4 / 12, 1.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(iou, expected)
    batched = mask_ops.mask_iou(torch.stack([a, a]), torch.stack([b, b]))
    torch.testing.assert_close(batched, torch.stack([expected, expected]))

    def compressed(masks):
        return [{"size": r["size"], "counts": r["counts"].encode()} for r in mask_ops.rle_encode(masks)]

    coco = coco_mask.iou(compressed(a[:1]), compressed(b), [0, 0, 0])
    torch.testing.assert_close(iou[:1].double(), torch.from_numpy(coco))


def test_rle_encode_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        mask_ops.rle_encode(torch.zeros(4, 4, dtype=torch.bool))
