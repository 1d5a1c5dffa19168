"""Grounding-head modules at tiny sizes: batching over pairs, DAC isolation, geometry packing and
the empty-geometry shortcut, score clamping, box refinement.
"""

from __future__ import annotations

import pytest
import torch

from sam3.model.decoder import QueryDecoder
from sam3.model.encoder import FusionEncoder
from sam3.model.geometry_encoder import GeometryEncoder, GeometryPrompts
from sam3.model.scoring import DotProductScoring
from sam3.model.seg_head import SegmentationHead

C, HEADS, GRID = 32, 4, (6, 5)
HW = GRID[0] * GRID[1]


def _no_dropout(module: torch.nn.Module) -> torch.nn.Module:
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(m, torch.nn.MultiheadAttention):
            m.dropout = 0.0
    return module


@pytest.fixture
def prompt():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(3, 7, C, generator=g)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[0, 4:] = True
    mask[2, 2:] = True
    return tokens, mask


def _decoder(num_queries: int = 10) -> QueryDecoder:
    torch.manual_seed(0)
    dec = QueryDecoder(
        num_layers=3, d_model=C, num_heads=HEADS, dim_feedforward=64, dropout=0.1, num_queries=num_queries
    )
    for p in dec.bbox_embed.layers[-1].parameters():  # zero-initialised: make refinement visible
        torch.nn.init.normal_(p, std=0.5)
    return dec


def test_encoder_is_per_pair_and_ignores_padded_prompt_tokens(prompt):
    tokens, mask = prompt
    torch.manual_seed(0)
    enc = FusionEncoder(num_layers=2, d_model=C, num_heads=HEADS, dim_feedforward=64, dropout=0.1).eval()
    image, pos = torch.randn(3, HW, C), torch.randn(3, HW, C)
    batched = enc(image, pos, tokens, mask)
    single = torch.cat([enc(image[i : i + 1], pos[i : i + 1], tokens[i : i + 1], mask[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    garbage = tokens.clone()
    garbage[mask] = 1e3
    torch.testing.assert_close(enc(image, pos, garbage, mask), batched, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batched, image)


def test_decoder_shapes_refinement_and_presence(prompt):
    tokens, mask = prompt
    dec = _decoder().eval()
    out = dec(torch.randn(3, HW, C), torch.randn(3, HW, C), GRID, tokens, mask)
    assert out.queries.shape == (3, 3, 10, C)
    assert out.boxes_cxcywh.shape == (3, 3, 10, 4)
    assert out.presence_logits.shape == (3, 3, 1)
    assert out.presence_feats.shape == (3, 1, C)
    assert ((out.boxes_cxcywh > 0) & (out.boxes_cxcywh < 1)).all()
    initial = dec.reference_points.weight.sigmoid()
    assert not torch.allclose(out.boxes_cxcywh[0, 0], initial, atol=1e-3), "boxes were not refined"
    assert not torch.allclose(out.boxes_cxcywh[0], out.boxes_cxcywh[1], atol=1e-4)


def test_dac_one_to_many_set_leaves_the_one_to_one_set_unchanged(prompt):
    tokens, mask = prompt
    dec = _no_dropout(_decoder())
    memory, pos = torch.randn(3, HW, C), torch.randn(3, HW, C)
    dec.eval()
    eval_out = dec(memory, pos, GRID, tokens, mask)
    dec.train()
    train_out = dec(memory, pos, GRID, tokens, mask)
    assert train_out.queries.shape == (3, 3, 20, C)
    torch.testing.assert_close(train_out.queries[:, :, :10], eval_out.queries, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(train_out.presence_logits, eval_out.presence_logits, atol=1e-5, rtol=1e-5)
    # the o2m copies start identical but skip self-attention, so they end up elsewhere
    assert not torch.allclose(train_out.queries[:, :, 10:], eval_out.queries, atol=1e-3)


def test_dot_product_scores_pool_valid_tokens_and_clamp(prompt):
    tokens, mask = prompt
    torch.manual_seed(0)
    scoring = DotProductScoring(d_model=C, d_proj=16, mlp_hidden_dim=64, dropout=0.0, clamp_value=12.0)
    queries = torch.randn(2, 3, 10, C)
    scores = scoring(queries, tokens, mask)
    assert scores.shape == (2, 3, 10, 1)
    garbage = tokens.clone()
    garbage[mask] = 50.0
    torch.testing.assert_close(scoring(queries, garbage, mask), scores)
    with torch.no_grad():
        scoring.hs_proj.weight.mul_(1e3)
    big = scoring(queries, tokens, mask)
    assert big.abs().max() == 12.0 and (big.abs() == 12.0).float().mean() > 0.5


def test_segmentation_head_shapes_and_unused_last_stage(prompt):
    tokens, mask = prompt
    torch.manual_seed(0)
    head = SegmentationHead(hidden_dim=C, num_heads=HEADS, upsampling_stages=3)
    fine = [torch.randn(3, C, 24, 20), torch.randn(3, C, 12, 10)]
    masks, semantic = head(fine, torch.randn(3, HW, C), GRID, tokens, mask, torch.randn(3, 10, C))
    assert masks.shape == (3, 10, 24, 20) and semantic.shape == (3, 1, 24, 20)
    (masks.sum() + semantic.sum()).backward()
    assert head.pixel_decoder.conv_layers[2].weight.grad is None
    assert head.pixel_decoder.conv_layers[1].weight.grad is not None


def _geometry_encoder() -> GeometryEncoder:
    torch.manual_seed(0)
    return GeometryEncoder(d_model=C, num_layers=2, num_heads=HEADS, dim_feedforward=64, dropout=0.1).eval()


def test_empty_geometry_is_the_per_frame_cls_token():
    geo = _geometry_encoder()
    frames, pos = torch.randn(2, HW, C), torch.randn(2, HW, C)
    slots = torch.tensor([0, 0, 1])
    tokens, padding = geo(frames, pos, GRID, slots, None)
    assert tokens.shape == (3, 1, C) and not padding.any()
    torch.testing.assert_close(tokens[0], tokens[1])
    assert not torch.allclose(tokens[0], tokens[2])
    empty = GeometryPrompts.from_boxes(torch.zeros(3, 0, 4), torch.zeros(3, 0, dtype=torch.bool))
    torch.testing.assert_close(geo(frames, pos, GRID, slots, empty)[0], tokens, atol=1e-5, rtol=1e-5)


def test_box_prompts_are_batched_per_frame_and_packed_left():
    geo = _geometry_encoder()
    frames, pos = torch.randn(2, HW, C), torch.randn(2, HW, C)
    boxes = torch.tensor([[[0.4, 0.5, 0.3, 0.2], [0.7, 0.3, 0.2, 0.4]], [[0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[True, False], [True, False]])
    padding = torch.tensor([[False, False], [False, True]])
    slots = torch.tensor([0, 1])
    tokens, mask = geo(frames, pos, GRID, slots, GeometryPrompts(boxes, labels, padding))
    assert tokens.shape == (2, 3, C)
    assert mask.tolist() == [[False, False, False], [False, False, True]]
    # pair 1 alone, unpadded, on its own frame: the same two valid tokens (box, CLS)
    single = GeometryPrompts.from_boxes(boxes[1:, :1], labels[1:, :1])
    alone, _ = geo(frames[1:], pos[1:], GRID, torch.tensor([0]), single)
    torch.testing.assert_close(tokens[1, :2], alone[0], atol=1e-5, rtol=1e-5)
    # pooled features come from the pair's own frame
    moved, _ = geo(frames.flip(0), pos.flip(0), GRID, torch.tensor([1, 0]), GeometryPrompts(boxes, labels, padding))
    torch.testing.assert_close(moved, tokens, atol=1e-5, rtol=1e-5)


def test_point_prompts_use_every_point_parameter():
    geo = _geometry_encoder().train()
    frames, pos = torch.randn(1, HW, C), torch.randn(1, HW, C)
    prompts = GeometryPrompts(
        boxes_cxcywh=torch.tensor([[[0.5, 0.5, 0.2, 0.2]]]),
        box_labels=torch.tensor([[True]]),
        box_padding=torch.tensor([[False]]),
        points_xy=torch.tensor([[[0.2, 0.3], [0.8, 0.9]]]),
        point_labels=torch.tensor([[True, False]]),
        point_padding=torch.tensor([[False, False]]),
    )
    tokens, mask = geo(frames, pos, GRID, torch.tensor([0]), prompts)
    assert tokens.shape == (1, 4, C) and not mask.any()
    tokens.square().sum().backward()
    assert [n for n, p in geo.named_parameters() if p.grad is None] == []
