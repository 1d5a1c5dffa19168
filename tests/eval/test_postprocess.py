"""Post-processing: scores with presence, thresholds, per-frame mask NMS, original-size boxes and masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sam3.eval.postprocess import MaskNMS, PostprocessConfig, postprocess, select_detections, to_original_size
from sam3.ops.boxes import box_xyxy_to_cxcywh
from sam3.ops.masks import masks_to_boxes_xyxy, rle_decode
from sam3.structures import DetectorOutput


def _outputs(logits, boxes_xyxy, masks, presence) -> DetectorOutput:
    boxes_xyxy = torch.tensor(boxes_xyxy, dtype=torch.float32)
    return DetectorOutput(
        pred_logits=torch.tensor(logits, dtype=torch.float32)[..., None],
        pred_boxes=box_xyxy_to_cxcywh(boxes_xyxy),
        pred_boxes_xyxy=boxes_xyxy,
        presence_logit_dec=torch.tensor(presence, dtype=torch.float32)[:, None],
        pred_masks=masks,
    )


def test_round_trip_to_original_size():
    # one pair, two queries on an 8x8 mask grid; the frame is 48 (H) x 64 (W)
    masks = torch.full((1, 2, 8, 8), -10.0)
    masks[0, 0, 2:6, 4:8] = 10.0  # right half, rows 2..5
    masks[0, 1, 0:2, 0:2] = 10.0
    out = _outputs([[2.0, 1.0]], [[[0.5, 0.25, 1.0, 0.75], [0.0, 0.0, 0.25, 0.25]]], masks, [3.0])
    preds = postprocess(out, torch.tensor([[48, 64]]), PostprocessConfig())
    assert len(preds) == 1 and len(preds[0]) == 2
    p = preds[0]
    expected_scores = torch.sigmoid(torch.tensor([2.0, 1.0])) * torch.sigmoid(torch.tensor(3.0))
    torch.testing.assert_close(p.scores, expected_scores)
    torch.testing.assert_close(p.boxes_xywh[0], torch.tensor([32.0, 12.0, 32.0, 24.0]))
    torch.testing.assert_close(p.boxes_xywh[1], torch.tensor([0.0, 0.0, 16.0, 12.0]))
    decoded = rle_decode(p.rles)  # (2, 48, 64)
    assert decoded.shape == (2, 48, 64)
    # SAM3's rule: bilinear resize (align_corners=False), then logit > 0
    expected = F.interpolate(masks[0][:, None], size=(48, 64), mode="bilinear", align_corners=False)[:, 0] > 0
    assert torch.equal(decoded, expected)
    assert p.areas.tolist() == expected.flatten(1).sum(1).tolist()
    # each 8x8 cell covers 6x8 pixels: the block of cells rows 2..5, columns 4..7 spans pixels 12..35, 32..63
    ys, xs = decoded[0].nonzero(as_tuple=True)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (12, 35, 32, 63)
    assert masks_to_boxes_xyxy(decoded[0]).tolist() == [32.0, 12.0, 64.0, 36.0]


def test_threshold_cap_and_order():
    out = _outputs([[0.0, 3.0, -3.0, 1.0]], [[[0, 0, 0.5, 0.5]] * 4], None, [10.0])
    dets = select_detections(out, PostprocessConfig(score_thresh=0.2, max_detections=2))[0]
    assert dets.query_idx.tolist() == [1, 3]
    assert dets.mask_logits is None


def test_mask_nms_suppresses_overlaps_and_keeps_order():
    masks = torch.full((1, 3, 10, 10), -5.0)
    masks[0, 0, :5, :5] = 5.0
    masks[0, 1, :5, :4] = 5.0  # IoU 0.8 with query 0
    masks[0, 2, 5:, 5:] = 5.0
    out = _outputs([[1.0, 2.0, 0.5]], [[[0, 0, 0.5, 0.5], [0, 0, 0.4, 0.5], [0.5, 0.5, 1, 1]]], masks, [0.0])
    dets = select_detections(out, PostprocessConfig(nms_iou_thresh=0.5))[0]
    assert dets.query_idx.tolist() == [1, 2]  # query 1 scores higher and suppresses query 0
    assert MaskNMS(0.9)(select_detections(out, PostprocessConfig())[0]).query_idx.tolist() == [1, 0, 2]


def test_empty_selection_maps_to_empty_predictions():
    out = _outputs([[-9.0]], [[[0, 0, 1, 1]]], torch.zeros(1, 1, 4, 4), [0.0])
    dets = select_detections(out, PostprocessConfig(score_thresh=0.5))[0]
    pred = to_original_size(dets, (20, 30))
    assert len(pred) == 0 and pred.rles == [] and pred.boxes_xywh.shape == (0, 4)


def test_orig_sizes_shape_is_checked():
    out = _outputs([[0.0]], [[[0, 0, 1, 1]]], None, [0.0])
    with pytest.raises(ValueError, match="orig_sizes"):
        postprocess(out, torch.tensor([[1, 2], [3, 4]]), PostprocessConfig())
