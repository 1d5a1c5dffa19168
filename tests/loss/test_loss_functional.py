"""Pure loss functions and rank-independent point sampling, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sam3.loss.functional import (
    dice_loss,
    hash_uniform_points,
    iou_aware_bce,
    point_sample_bits,
    point_sample_logits,
    sample_keys,
    sigmoid_focal_loss,
    uncertain_point_coords,
)
from sam3.structures import BitMasks

LOG2 = math.log(2)


def test_iou_aware_bce_hand_values() -> None:
    logits = torch.tensor([0.0, 0.0, math.log(3)])  # p = 0.5, 0.5, 0.75
    matched = torch.tensor([True, False, False])
    soft = torch.tensor([0.5, 0.0, 0.0])
    loss = iou_aware_bce(logits, matched, soft, pos_weight=10.0, gamma=2.0)
    # matched: 10 * BCE(0, 0.5) = 10 log 2; unmatched: softplus(x) * p^2
    expected = torch.tensor([10 * LOG2, LOG2 * 0.25, math.log(4) * 0.75**2])
    torch.testing.assert_close(loss, expected)


def test_sigmoid_focal_hand_values() -> None:
    loss = sigmoid_focal_loss(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]), alpha=0.25, gamma=2.0)
    torch.testing.assert_close(loss, torch.tensor([0.25 * 0.25 * LOG2, 0.75 * 0.25 * LOG2]))
    # alpha 0.5, gamma 0: half the BCE (the presence loss).
    plain = sigmoid_focal_loss(torch.tensor([1.3]), torch.tensor([1.0]), alpha=0.5, gamma=0.0)
    bce = F.binary_cross_entropy_with_logits(torch.tensor([1.3]), torch.tensor([1.0]), reduction="none")
    torch.testing.assert_close(plain, 0.5 * bce)


def test_dice_hand_values() -> None:
    logits = torch.tensor([[0.0, 0.0], [30.0, -30.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # row 0: p = (.5, .5): 1 - (2 * 0.5 + 1) / (1 + 1 + 1) = 1/3; row 1: perfect -> 0
    torch.testing.assert_close(dice_loss(logits, targets), torch.tensor([1 / 3, 0.0]), atol=1e-6, rtol=0)


def test_sample_keys_depend_on_every_field() -> None:
    base = sample_keys(5, torch.tensor([3]), torch.tensor([1]), torch.tensor([0]), 0)
    assert torch.equal(base, sample_keys(5, torch.tensor([3]), torch.tensor([1]), torch.tensor([0]), 0))
    variants = [
        sample_keys(6, torch.tensor([3]), torch.tensor([1]), torch.tensor([0]), 0),
        sample_keys(5, torch.tensor([4]), torch.tensor([1]), torch.tensor([0]), 0),
        sample_keys(5, torch.tensor([3]), torch.tensor([2]), torch.tensor([0]), 0),
        sample_keys(5, torch.tensor([3]), torch.tensor([1]), torch.tensor([1]), 0),
        sample_keys(5, torch.tensor([3]), torch.tensor([1]), torch.tensor([0]), 1),
    ]
    assert all(not torch.equal(base, v) for v in variants)
    assert (base >= 0).all() and (base < 2**32).all()


def test_hash_points_uniform_and_per_key() -> None:
    keys = sample_keys(0, torch.arange(64), 0, 0, 0)
    points = hash_uniform_points(keys, 2000)
    assert points.shape == (64, 2000, 2)
    assert points.min() > 0 and points.max() < 1
    assert abs(points.mean().item() - 0.5) < 0.01
    assert abs(points.var().item() - 1 / 12) < 0.005
    # A key's points do not depend on which other keys are drawn with it.
    torch.testing.assert_close(hash_uniform_points(keys[5:6], 2000), points[5:6], rtol=0, atol=0)
    assert not torch.equal(points[0], points[1])


def test_point_sample_bits_equals_grid_sample(generator) -> None:
    masks = torch.rand(3, 9, 13, generator=generator) > 0.5  # 117 pixels: the last byte is partly padding
    mask_idx = torch.tensor([2, 0, 1, 2])
    coords = torch.rand(4, 50, 2, generator=generator)
    expected = point_sample_logits(masks.float()[mask_idx], coords)
    torch.testing.assert_close(point_sample_bits(BitMasks.pack(masks).bits, 9, 13, mask_idx, coords), expected)


def test_point_sample_reads_same_place_at_any_resolution() -> None:
    # A left-half mask at two resolutions reads 1 left of the middle and 0 right of it.
    coords = torch.tensor([[[0.2, 0.5], [0.8, 0.5]]])
    for size in (8, 64):
        mask = torch.zeros(1, size, size, dtype=torch.bool)
        mask[..., : size // 2] = True
        values = point_sample_bits(BitMasks.pack(mask).bits, size, size, torch.tensor([0]), coords)
        torch.testing.assert_close(values, torch.tensor([[1.0, 0.0]]))


def test_uncertain_points_prefer_the_boundary() -> None:
    # Logits = distance to the vertical line x = 0.3: uncertain points lie near it.
    xs = (torch.arange(64) + 0.5) / 64
    logits = (20 * (xs - 0.3)).expand(2, 64, 64).contiguous()
    keys = sample_keys(0, torch.arange(2), 0, 0, 0)
    coords = uncertain_point_coords(logits, keys, num_points=200, oversample_ratio=3.0, importance_sample_ratio=0.75)
    assert coords.shape == (2, 200, 2)
    near = (coords[:, :150, 0] - 0.3).abs().mean()
    uniform = (coords[:, 150:, 0] - 0.3).abs().mean()
    assert near < 0.1 < uniform
    assert torch.equal(coords, uncertain_point_coords(logits, keys, 200, 3.0, 0.75))


def test_uncertain_points_reject_bad_ratios() -> None:
    with pytest.raises(ValueError, match="oversample_ratio"):
        uncertain_point_coords(torch.zeros(1, 4, 4), torch.zeros(1, dtype=torch.int64), 10, 0.5, 0.75)
