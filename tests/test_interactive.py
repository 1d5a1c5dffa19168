"""The interactive segmenter on the tiny model: Meta's output shapes, the image-embedding cache (a cached
image id does not run the backbone), the prior-prompt logits cache and its environment switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam3.interactive import DISABLE_LOGITS_CACHE_ENV, InteractiveSegmenter, LruCache, fill_small_holes
from sam3.model_builder import build_model

HW = (40, 60)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("tiny").eval()


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*HW, 3), dtype=np.uint8)


def count_backbone_calls(model) -> list[int]:
    calls = [0]
    model.backbone.vision_backbone.trunk.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_output_shapes_follow_meta(model):
    seg = InteractiveSegmenter(model)
    image_id = seg.embed_image(image(0))
    multi = seg.segment_image(image_id=image_id, points=[[10, 20]], point_labels=[1])
    assert multi.masks.shape == (3, *HW) and multi.masks.dtype == torch.bool
    assert multi.iou_predictions.shape == (3,) and multi.low_res_masks.shape == (3, 64, 64)
    assert multi.low_res_masks.abs().max() <= 32
    single = seg.segment_image(image_id=image_id, boxes=[5, 5, 30, 25], multimask_output=False, return_logits=True)
    assert single.masks.shape == (1, *HW) and single.masks.dtype == torch.float32
    batched = seg.segment_image(image_id=image_id, boxes=[[5, 5, 30, 25], [0, 0, 60, 40]], multimask_output=False)
    assert batched.masks.shape == (2, 1, *HW) and batched.low_res_masks.shape == (2, 1, 64, 64)


def test_cached_image_id_does_not_run_the_backbone(model):
    seg = InteractiveSegmenter(model, image_cache_size=1)
    calls = count_backbone_calls(model)
    first = seg.embed_image(image(1))
    assert calls[0] == 1
    assert seg.embed_image(image(1)) == first  # same content, same hash: cached
    seg.segment_image(image=image(1), points=[[10, 20]], point_labels=[1])
    seg.segment_image(image_id=first, points=[[11, 20]], point_labels=[1])
    assert calls[0] == 1
    seg.embed_image(image(2))  # evicts image 1 (capacity 1)
    seg.embed_image(image(1))
    assert calls[0] == 3
    with pytest.raises(KeyError, match="not embedded"):
        seg.segment_image(image_id="unknown", points=[[1, 1]], point_labels=[1])


def test_prior_prompt_logits_are_fed_back(model):
    seg = InteractiveSegmenter(model)
    image_id = seg.embed_image(image(3))
    one = seg.segment_image(image_id=image_id, points=[[10, 20]], point_labels=[1])
    prior = one.low_res_masks[one.iou_predictions.argmax()][None]
    two = {"image_id": image_id, "points": [[10, 20], [30, 10]], "point_labels": [1, 0], "multimask_output": False}
    cached = seg.segment_image(**two)
    explicit = seg.segment_image(**two, mask_input=prior)
    assert torch.equal(cached.low_res_masks, explicit.low_res_masks)
    none = InteractiveSegmenter(model).segment_image(
        image=image(3), **{k: v for k, v in two.items() if k != "image_id"}
    )
    assert not torch.equal(none.low_res_masks, cached.low_res_masks)


def test_environment_switch_disables_the_logits_cache(model, monkeypatch):
    monkeypatch.setenv(DISABLE_LOGITS_CACHE_ENV, "1")
    seg = InteractiveSegmenter(model)
    image_id = seg.embed_image(image(4))
    seg.segment_image(image_id=image_id, points=[[10, 20]], point_labels=[1])
    assert len(seg.logits) == 0


def test_lru_cache_evicts_the_least_recently_used():
    cache = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert cache.get("b") is None and [k for k, _ in cache.newest_first()] == ["c", "a"]


def test_small_holes_are_filled_also_at_the_border():
    logits = torch.ones(1, 1, 20, 20)
    logits[0, 0, 5:7, 5:7] = -1  # 4-pixel hole
    logits[0, 0, 0, 0] = -1  # 1-pixel hole at the corner
    logits[0, 0, 10:, :] = -1  # 200-pixel background region
    filled = fill_small_holes(logits, max_area=8)
    assert (filled[0, 0, :10] == torch.where(logits[0, 0, :10] > 0, 1.0, 10.0)).all()
    assert (filled[0, 0, 10:] == -1).all()
