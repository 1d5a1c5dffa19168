"""Lean target masks (issue 20, item 4): the packed one-bit-per-pixel masks of a real batch give the
same mask losses, bit for bit, as the padded (pair, slot) bool masks they replace.

The reference is built here from first principles: the padded (Npairs, Nmax, S, S) masks straight from
the clips, the matched masks read from them, and the loss of `SetCriterion.loss_masks` written out on
those bool masks (dense, and point-sampled with the same keys and points).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sam3.data.collate import collate_clips
from sam3.data.dataset import ClipSamplingConfig, build_video_dataset
from sam3.data.prompts import PromptConfig
from sam3.data.transforms import AugmentConfig
from sam3.loss import HungarianMatcher, MaskLoss, SetCriterion
from sam3.loss.functional import (
    dice_loss,
    point_sample_logits,
    sample_keys,
    sigmoid_focal_loss,
    uncertain_point_coords,
)
from sam3.loss.normalization import LossNormalization
from sam3.ops.boxes import box_cxcywh_to_xyxy
from sam3.structures import DetectorOutput

SIZE, PRED_SIZE, QUERIES = 48, 12, 6


def _padded_masks(samples, batch) -> torch.Tensor:
    """(Npairs, Nmax, S, S) bool: the previous target layout, every (pair, slot), empty where not visible."""
    targets = batch.targets
    padded = torch.zeros(*targets.is_visible_padded.shape, SIZE, SIZE, dtype=torch.bool)
    first_slot = [0]
    for s in samples:
        first_slot.append(first_slot[-1] + len(s.frame_indices))
    for pair in range(batch.num_pairs):
        clip = int(batch.pairs.clip_idx[pair])
        local = int(batch.pairs.frame_slot[pair]) - first_slot[clip]
        instances = samples[clip].prompt_instances[int(batch.pairs.prompt_idx[pair])]
        for slot, inst in enumerate(instances):
            if targets.is_visible_padded[pair, slot]:
                padded[pair, slot] = samples[clip].masks[local, inst]
    return padded


def _bool_point_sample(masks: torch.Tensor, mask_idx: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear reads of (K, H, W) bool masks, border padding: the reader of the padded layout."""
    height, width = masks.shape[-2:]
    flat = masks.reshape(-1)
    px = coords[..., 0].float() * width - 0.5
    py = coords[..., 1].float() * height - 0.5
    x0, y0 = px.floor(), py.floor()
    wx, wy = px - x0, py - y0
    x0, y0 = x0.long(), y0.long()
    base = (mask_idx * (height * width)).unsqueeze(-1)
    out = torch.zeros_like(px)
    for dy, weight_y in ((0, 1 - wy), (1, wy)):
        for dx, weight_x in ((0, 1 - wx), (1, wx)):
            index = base + (y0 + dy).clamp(0, height - 1) * width + (x0 + dx).clamp(0, width - 1)
            out = out + flat[index].float() * weight_x * weight_y
    return out


@pytest.mark.parametrize("num_points", [None, 200])
def test_packed_masks_give_the_padded_masks_loss_bit_for_bit(shapes_dir, num_points):
    dataset = build_video_dataset(
        shapes_dir / "train" / "annotations.json",
        image_size=SIZE,
        augment=AugmentConfig(),
        clip_sampling=ClipSamplingConfig(num_frames=4, stride_range=(1, 2)),
        prompts=PromptConfig(max_prompts=4, max_masklets=6),
        seed=5,
    )
    samples = [dataset[(0, i)] for i in range(3)]
    batch = collate_clips(samples)
    targets = batch.targets
    padded = _padded_masks(samples, batch)
    assert targets.total_boxes > 3 and torch.equal(padded[targets.is_visible_padded], targets.packed_masks)

    g = torch.Generator().manual_seed(0)
    num_pairs = batch.num_pairs
    boxes = (0.2 + 0.6 * torch.rand(num_pairs, QUERIES, 4, generator=g)).requires_grad_()
    output = DetectorOutput(
        pred_logits=torch.randn(num_pairs, QUERIES, 1, generator=g),
        pred_boxes=boxes,
        pred_boxes_xyxy=box_cxcywh_to_xyxy(boxes),
        pred_masks=(3 * torch.randn(num_pairs, QUERIES, PRED_SIZE, PRED_SIZE, generator=g)).requires_grad_(),
    )
    cfg = MaskLoss(num_points=num_points, importance_sample_ratio=0.75)
    criterion = SetCriterion(matcher=HungarianMatcher(), masks=cfg)
    norm = LossNormalization.local(targets)
    _, parts = criterion(output, targets, norm, step=3)

    matches = HungarianMatcher()(output, targets)
    assert len(matches) > 0
    src = output.pred_masks[matches.pair_idx, matches.query_idx].float()  # (M, h, w)
    slots = padded.reshape(-1, SIZE, SIZE)  # (Npairs * Nmax, S, S), the padded layout's rows
    slot_idx = matches.pair_idx * padded.shape[1] + matches.target_idx
    if num_points is None:
        src_values = F.interpolate(src[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False).flatten(1)
        target_values = slots[slot_idx].reshape(-1, SIZE * SIZE).float()
    else:
        pairs = targets.pairs
        keys = sample_keys(
            3,
            targets.pair_clip_keys()[matches.pair_idx],
            pairs.frame_idx[matches.pair_idx],
            pairs.prompt_idx[matches.pair_idx],
            targets.object_ids_padded[matches.pair_idx, matches.target_idx],
            0,
        )
        coords = uncertain_point_coords(src, keys, num_points, cfg.oversample_ratio, cfg.importance_sample_ratio)
        target_values = _bool_point_sample(slots, slot_idx, coords)
        src_values = point_sample_logits(src, coords)
    focal = sigmoid_focal_loss(src_values, target_values, cfg.focal_alpha, cfg.focal_gamma).mean(-1).sum()
    dice = dice_loss(src_values, target_values).sum()
    assert torch.equal(parts["loss_mask"], (focal * norm.box_norm).detach())
    assert torch.equal(parts["loss_dice"], (dice * norm.box_norm).detach())
