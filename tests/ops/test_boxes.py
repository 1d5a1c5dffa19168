"""Box conversions and overlaps: hand-computed values and agreement with torchvision."""

import pytest
import torch
import torchvision

from sam3.ops import boxes as box_ops


def test_conversions_hand_computed():
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    xyxy = torch.tensor([[0.4, 0.3, 0.6, 0.7]])
    xywh = torch.tensor([[0.4, 0.3, 0.2, 0.4]])
    torch.testing.assert_close(box_ops.box_cxcywh_to_xyxy(cxcywh), xyxy)
    torch.testing.assert_close(box_ops.box_xyxy_to_cxcywh(xyxy), cxcywh)
    torch.testing.assert_close(box_ops.box_xywh_to_xyxy(xywh), xyxy)
    torch.testing.assert_close(box_ops.box_xyxy_to_xywh(xyxy), xywh)
    torch.testing.assert_close(box_ops.box_xywh_to_cxcywh(xywh), cxcywh)
    torch.testing.assert_close(box_ops.box_cxcywh_to_xywh(cxcywh), xywh)


def test_round_trips_on_random_boxes_with_leading_dims():
    torch.manual_seed(0)
    cxcywh = torch.rand(3, 7, 4)
    torch.testing.assert_close(box_ops.box_xyxy_to_cxcywh(box_ops.box_cxcywh_to_xyxy(cxcywh)), cxcywh)
    torch.testing.assert_close(box_ops.box_xywh_to_cxcywh(box_ops.box_cxcywh_to_xywh(cxcywh)), cxcywh)


def test_normalise_denormalise():
    absolute = torch.tensor([[10.0, 20.0, 110.0, 70.0]])
    normalised = box_ops.normalize_boxes(absolute, height=100, width=200)
    torch.testing.assert_close(normalised, torch.tensor([[0.05, 0.2, 0.55, 0.7]]))
    torch.testing.assert_close(box_ops.denormalize_boxes(normalised, height=100, width=200), absolute)


def test_iou_and_giou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    # intersection 1, union 7, hull 9: IoU 1/7, GIoU 1/7 - 2/9.
    assert box_ops.box_iou(a, b).item() == pytest.approx(1 / 7)
    assert box_ops.generalized_box_iou(a, b).item() == pytest.approx(1 / 7 - 2 / 9)
    assert box_ops.elementwise_box_iou(a, b).item() == pytest.approx(1 / 7, abs=1e-6)
    assert box_ops.elementwise_generalized_box_iou(a, b).item() == pytest.approx(1 / 7 - 2 / 9, abs=1e-6)
    far = torch.tensor([[4.0, 0.0, 5.0, 1.0]])  # disjoint: IoU 0, hull 10, union 5
    assert box_ops.elementwise_generalized_box_iou(a, far).item() == pytest.approx(-0.5, abs=1e-6)


def test_elementwise_equals_diagonal_of_torchvision_pairwise():
    torch.manual_seed(1)
    boxes1 = box_ops.box_cxcywh_to_xyxy(torch.rand(50, 4) * 0.5 + 0.25)
    boxes2 = box_ops.box_cxcywh_to_xyxy(torch.rand(50, 4) * 0.5 + 0.25)
    torch.testing.assert_close(
        box_ops.elementwise_box_iou(boxes1, boxes2),
        torchvision.ops.box_iou(boxes1, boxes2).diagonal(),
        atol=1e-5,
        rtol=1e-5,
    )
    torch.testing.assert_close(
        box_ops.elementwise_generalized_box_iou(boxes1, boxes2),
        torchvision.ops.generalized_box_iou(boxes1, boxes2).diagonal(),
        atol=1e-5,
        rtol=1e-5,
    )


def test_elementwise_overlaps_are_exact_for_small_boxes_and_zero_for_empty_pairs():
    # Sides of 0.5..3 % of the image (5..30 px at 1008): an offset eps in the denominators would
    # bias these by eps / union ~ 1e-4; the clamp leaves them exact (Meta's loss has no eps).
    g = torch.Generator().manual_seed(2)
    centres = 0.3 + 0.4 * torch.rand(200, 2, generator=g, dtype=torch.float64)
    sides = 0.005 + 0.025 * torch.rand(200, 2, 2, generator=g, dtype=torch.float64)
    boxes1 = box_ops.box_cxcywh_to_xyxy(torch.cat([centres, sides[:, 0]], -1))
    boxes2 = box_ops.box_cxcywh_to_xyxy(torch.cat([centres + 0.005, sides[:, 1]], -1))
    torch.testing.assert_close(
        box_ops.elementwise_box_iou(boxes1, boxes2),
        torchvision.ops.box_iou(boxes1, boxes2).diagonal(),
        rtol=1e-12,
        atol=0,
    )
    torch.testing.assert_close(
        box_ops.elementwise_generalized_box_iou(boxes1, boxes2),
        torchvision.ops.generalized_box_iou(boxes1, boxes2).diagonal(),
        rtol=1e-12,
        atol=0,
    )
    point = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    assert box_ops.elementwise_box_iou(point, point).item() == 0.0
    assert box_ops.elementwise_generalized_box_iou(point, point).item() == 0.0
