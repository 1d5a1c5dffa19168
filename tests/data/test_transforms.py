"""Clip transforms: boxes follow masks within 1 px on every frame; same parameters -> same output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam3.data.readers import load_annotations
from sam3.data.sampler import clip_rng
from sam3.data.synthetic import synthetic_video
from sam3.data.transforms import AugmentConfig, ClipTransform, ClipTransformParams, resize_masks_by_coverage
from sam3.ops.masks import masks_to_boxes_xyxy, rle_to_box_xywh

STRONG = AugmentConfig(hflip_prob=0.5, crop_prob=0.8, crop_scale=(0.2, 1.0), hue=0.05)


def _clip(seed: int, video_idx: int, size: int, width: int | None = None):
    """Frames, per-instance tight boxes and masks of a synthetic clip, optionally squashed to `width`."""
    frames, tracks = synthetic_video(seed, "train", video_idx, 6, size)
    masks = torch.stack([t.masks for t in tracks], dim=1)  # (T, N, H, W)
    if width is not None:  # a non-square source, by subsampling columns
        cols = torch.linspace(0, size - 1, width).long()
        frames, masks = frames[..., cols], masks[..., cols]
    boxes = masks_to_boxes_xyxy(masks)  # (T, N, 4)
    return frames, boxes, masks


@pytest.mark.parametrize("letterbox", [False, True])
@pytest.mark.parametrize("size,width,out", [(64, None, 40), (64, 96, 40), (48, None, 112), (64, 40, 72)])
def test_boxes_match_transformed_masks_within_one_pixel(letterbox, size, width, out):
    transform = ClipTransform(out, augment=STRONG, letterbox=letterbox)
    for clip in range(6):
        frames, boxes, masks = _clip(clip, clip, size, width)
        visible = masks.flatten(-2).any(-1)  # (T, N)
        params = transform.draw(clip_rng(0, 0, clip), *frames.shape[-2:], boxes[visible])
        images, out_boxes, out_masks = transform(frames, boxes, masks, params)
        assert images.shape == (6, 3, out, out) and images.dtype == torch.float32
        assert out_masks.shape == (*masks.shape[:2], out, out) and out_masks.dtype == torch.bool
        # Every visible instance stays visible (the crop holds every box) and its box follows its mask.
        assert torch.equal(out_masks.flatten(-2).any(-1), visible)
        error = (masks_to_boxes_xyxy(out_masks) - out_boxes).abs()[visible]
        assert error.max() <= 1.0 + 1e-4, f"clip {clip}: box error {error.max():.3f} px"


def test_crop_holds_every_box_of_the_clip():
    transform = ClipTransform(32, augment=AugmentConfig(crop_prob=1.0, crop_scale=(0.05, 0.1)))
    boxes = torch.tensor([[10.0, 20.0, 30.0, 25.0], [50.0, 5.0, 60.0, 40.0]])
    for seed in range(20):
        top, left, h, w = transform.draw(clip_rng(seed, 0, 0), 80, 100, boxes).crop_tlhw
        assert left <= 10 and top <= 5 and left + w >= 60 and top + h >= 40
        assert 0 <= left and 0 <= top and left + w <= 100 and top + h <= 80
    empty = transform.draw(clip_rng(0, 0, 0), 80, 100, torch.zeros(0, 4)).crop_tlhw
    assert empty[2] * empty[3] <= 0.1 * 80 * 100 * 1.2


def test_flip_mirrors_boxes_masks_and_phrases():
    transform = ClipTransform(16)
    frames = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    frames[0, 0, :, :4] = 255  # red band on the left
    masks = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    masks[0, 0, 2:6, 1:4] = True
    boxes = masks_to_boxes_xyxy(masks)
    params = ClipTransformParams((0, 0, 16, 16), hflip=True)
    images, out_boxes, out_masks = transform(frames, boxes, masks, params)
    assert torch.equal(out_masks[0, 0], masks[0, 0].flip(-1))
    assert out_boxes[0, 0].tolist() == [12.0, 2.0, 15.0, 6.0]
    assert images[0, 0, :, 12:].min() == 1.0 and images[0, 0, :, :12].max() == -1.0
    flipped = transform.phrase("the Left hand left of the rightmost cup", params)
    assert flipped == "the Right hand right of the leftmost cup"
    assert transform.phrase("bright light", params) == "bright light"
    assert transform.phrase("the left hand", ClipTransformParams((0, 0, 16, 16))) == "the left hand"


def test_eval_transform_only_resizes_and_normalises():
    transform = ClipTransform(8)
    frames = torch.full((2, 3, 16, 24), 255, dtype=torch.uint8)
    params = transform.draw(np.random.default_rng(0), 16, 24, torch.zeros(0, 4))
    assert params == ClipTransformParams((0, 0, 16, 24))
    images, boxes, masks = transform(frames, torch.tensor([[[0.0, 0.0, 12.0, 8.0]]] * 2), None, params)
    assert masks is None and torch.allclose(images, torch.ones(2, 3, 8, 8))
    assert boxes[0, 0].tolist() == [0.0, 0.0, 4.0, 4.0]


def test_no_local_frames_gives_empty_outputs():
    transform = ClipTransform(8, augment=STRONG)
    params = transform.draw(clip_rng(0, 0, 0), 16, 16, torch.zeros(0, 4))
    frames = torch.zeros(0, 3, 16, 16, dtype=torch.uint8)
    empty_masks = torch.zeros(0, 3, 16, 16, dtype=torch.bool)
    images, boxes, masks = transform(frames, torch.zeros(0, 3, 4), empty_masks, params)
    assert images.shape == (0, 3, 8, 8) and boxes.shape == (0, 3, 4) and masks.shape == (0, 3, 8, 8)


def test_resize_masks_by_coverage_keeps_thin_parts():
    masks = torch.zeros(1, 40, 40, dtype=torch.bool)
    masks[0, 10, 3:37] = True  # a one-pixel line: nearest-neighbour shrinking by 3 may drop it
    small = resize_masks_by_coverage(masks, 13, 13)
    assert small[0].any(1).sum() == 1 and small[0].any(0).sum() >= 11
    up = resize_masks_by_coverage(small, 13, 13)
    assert torch.equal(up, small)
    same_area = resize_masks_by_coverage(masks, 80, 80)
    assert same_area.sum() == 4 * masks.sum()  # integer upscaling repeats pixels exactly


@pytest.mark.parametrize("size,out", [((37, 53), (112, 71)), ((72, 128), (100, 100)), ((100, 90), (13, 29))])
def test_resize_masks_by_coverage_equals_adaptive_max_pooling(size, out):
    masks = torch.rand(3, *size, generator=torch.Generator().manual_seed(0)) > 0.97
    expected = torch.nn.functional.adaptive_max_pool2d(masks[:, None].float(), out)[:, 0] > 0
    assert torch.equal(resize_masks_by_coverage(masks, *out), expected)


@pytest.mark.parametrize("size,out", [((37, 53), (16, 16)), ((53, 37), (16, 16)), ((20, 24), (40, 40))])
@pytest.mark.parametrize("hflip", [False, True])
def test_masks_stored_column_by_column_transform_as_row_major_ones(size, out, hflip):
    """The dataset hands masks over transposed (as RLE decodes them); every path gives the same pixels."""
    masks = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1)) > 0.8
    column_major = masks.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert torch.equal(column_major, masks) and not column_major.is_contiguous()
    transform = ClipTransform(out[0])
    frames = torch.zeros(2, 3, *size, dtype=torch.uint8)
    boxes = masks_to_boxes_xyxy(masks)
    params = ClipTransformParams((1, 2, size[0] - 3, size[1] - 2), hflip=hflip)
    _, _, expected = transform(frames, boxes, masks, params)
    _, _, result = transform(frames, boxes, column_major, params)
    assert torch.equal(result, expected)


def test_shapes_index_boxes_are_mask_boxes(shapes_dir):
    index = load_annotations(shapes_dir / "val" / "annotations.json")
    for masklet in index.masklets[0]:
        for box, rle in zip(masklet.boxes_xywh, masklet.segmentations, strict=True):
            if rle is not None:
                assert box == rle_to_box_xywh([rle])[0].tolist()
