"""Geometry prompt encoder (SAM3 paper, "Detector": box and point exemplar prompts).

Every box becomes one token: a linear projection of its cxcywh coordinates, plus a 7x7 conv over its
ROI-aligned image features (`torchvision.ops.roi_align` on batched `[N, 5]` boxes taken straight from
the per-frame feature maps), plus a projection of its sine position encoding and size, plus a label
embedding (positive / negative). Points likewise: coordinates, bilinearly sampled features, sine
encoding, label. A learned CLS token is appended; the sequence is projected, normalised and refined
by pre-norm layers (self-attention, then cross-attention to the frame's image tokens). The tokens of
a pair are packed to the left: [points, boxes, CLS, padding].

The CLS-only sequence of a pair without geometry depends on its frame alone, so it is computed once
per frame, with no pooling; an empty geometry prompt costs no ROI or point sampling.
Parameter names follow `geometry_encoder.*`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchvision
from torch import nn
from torch.utils.checkpoint import checkpoint

from sam3.model.encoder import PromptedAttentionLayer
from sam3.ops.boxes import box_cxcywh_to_xyxy


@dataclass
class GeometryPrompts:
    """Box and point prompts of every (frame, prompt) pair, padded per pair.

    Attributes:
        boxes_cxcywh: (Npairs, Nb, 4) normalised cxcywh box prompts.
        box_labels: (Npairs, Nb) bool; True for a positive exemplar.
        box_padding: (Npairs, Nb) bool; True marks padding.
        points_xy: (Npairs, Np, 2) normalised xy point prompts, or None.
        point_labels: (Npairs, Np) bool; True for a positive point, or None.
        point_padding: (Npairs, Np) bool; True marks padding, or None.
    """

    boxes_cxcywh: torch.Tensor
    box_labels: torch.Tensor
    box_padding: torch.Tensor
    points_xy: torch.Tensor | None = None
    point_labels: torch.Tensor | None = None
    point_padding: torch.Tensor | None = None

    @staticmethod
    def from_boxes(boxes_cxcywh: torch.Tensor, box_labels: torch.Tensor) -> GeometryPrompts:
        """Prompts with the same unpadded boxes (Npairs, Nb, 4) and labels (Npairs, Nb) per pair."""
        padding = torch.zeros(box_labels.shape, dtype=torch.bool, device=box_labels.device)
        return GeometryPrompts(boxes_cxcywh=boxes_cxcywh, box_labels=box_labels.bool(), box_padding=padding)

    @property
    def num_pairs(self) -> int:
        return self.boxes_cxcywh.shape[0]


class GeometryEncoder(nn.Module):
    """Encodes box and point prompts into prompt tokens (`geometry_encoder`).

    Args:
        d_model: token width C.
        num_layers: refinement layers.
        num_heads: attention heads.
        dim_feedforward: FFN hidden width.
        dropout: dropout probability.
        roi_size: side of the ROI-aligned box features.
        use_act_checkpoint: recompute layer activations in the backward pass when training.
    """

    def __init__(
        self,
        *,
        d_model: int,
        num_layers: int,
        num_heads: int,
        dim_feedforward: int,
        dropout: float,
        roi_size: int = 7,
        use_act_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.label_embed = nn.Embedding(2, d_model)
        self.cls_embed = nn.Embedding(1, d_model)
        self.points_direct_project = nn.Linear(2, d_model)
        self.points_pool_project = nn.Linear(d_model, d_model)
        self.points_pos_enc_project = nn.Linear(d_model, d_model)
        self.boxes_direct_project = nn.Linear(4, d_model)
        self.boxes_pool_project = nn.Conv2d(d_model, d_model, roi_size)
        self.boxes_pos_enc_project = nn.Linear(d_model + 2, d_model)
        self.final_proj = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.img_pre_norm = nn.LayerNorm(d_model)
        self.encode = nn.ModuleList(
            PromptedAttentionLayer(
                d_model=d_model,
                num_heads=num_heads,
                dim_feedforward=dim_feedforward,
                dropout=dropout,
                pos_in_self_attn=False,
                pos_in_cross_attn_keys=True,
            )
            for _ in range(num_layers)
        )
        self.encode_norm = nn.LayerNorm(d_model)
        self.d_model = d_model
        self.roi_size = roi_size
        self.use_act_checkpoint = use_act_checkpoint

    def forward(
        self,
        image_tokens: torch.Tensor,
        image_pos: torch.Tensor,
        feat_size: tuple[int, int],
        pair_frame_slot: torch.Tensor,
        geometry: GeometryPrompts | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encodes the geometry of every pair.

        Args:
            image_tokens: (F, H*W, C) image tokens of the frames (row-major).
            image_pos: (F, H*W, C) their position encodings.
            feat_size: (H, W) of the token grid.
            pair_frame_slot: (Npairs,) frame of every pair.
            geometry: prompts of every pair, or None when no pair has any.

        Returns:
            tokens (Npairs, G, C) and padding mask (Npairs, G) bool (True = padding); G = 1 without
            geometry (the CLS token).
        """
        if geometry is None:
            cls = self.cls_embed.weight[None].expand(image_tokens.shape[0], -1, -1)  # F, 1, C
            no_padding = torch.zeros(cls.shape[:2], dtype=torch.bool, device=cls.device)
            tokens = self._refine(cls, no_padding, image_tokens, image_pos)
            return tokens[pair_frame_slot], no_padding[pair_frame_slot]
        if geometry.num_pairs != pair_frame_slot.numel():
            raise ValueError(
                f"geometry prompts cover {geometry.num_pairs} pairs but the batch has {pair_frame_slot.numel()}"
            )
        feat_map = self.img_pre_norm(image_tokens).transpose(1, 2).unflatten(2, feat_size)  # F, C, H, W
        parts, paddings = [], []
        if geometry.points_xy is not None and geometry.points_xy.shape[1] > 0:
            parts.append(self._encode_points(geometry, feat_map, pair_frame_slot))
            paddings.append(geometry.point_padding)
        if geometry.boxes_cxcywh.shape[1] > 0:
            parts.append(self._encode_boxes(geometry, feat_map, pair_frame_slot))
            paddings.append(geometry.box_padding)
        num_pairs = pair_frame_slot.numel()
        parts.append(self.cls_embed.weight[None].expand(num_pairs, -1, -1))
        paddings.append(torch.zeros(num_pairs, 1, dtype=torch.bool, device=pair_frame_slot.device))
        tokens, padding = _pack_left(torch.cat(parts, dim=1), torch.cat(paddings, dim=1))
        tokens = self._refine(tokens, padding, image_tokens[pair_frame_slot], image_pos[pair_frame_slot])
        return tokens, padding

    def _refine(
        self, tokens: torch.Tensor, padding: torch.Tensor, image_tokens: torch.Tensor, image_pos: torch.Tensor
    ) -> torch.Tensor:
        """Projection, norm and the refinement layers: (B, G, C) -> (B, G, C)."""
        x = self.norm(self.final_proj(tokens))
        for layer in self.encode:
            if self.use_act_checkpoint and self.training:
                x = checkpoint(layer, x, image_tokens, None, padding, image_pos, None, use_reentrant=False)
            else:
                x = layer(x, image_tokens, x_padding_mask=padding, memory_pos=image_pos)
        return self.encode_norm(x)

    def _encode_boxes(
        self, geometry: GeometryPrompts, feat_map: torch.Tensor, pair_frame_slot: torch.Tensor
    ) -> torch.Tensor:
        """(Npairs, Nb, C) box tokens."""
        boxes = geometry.boxes_cxcywh
        num_pairs, num_boxes = boxes.shape[:2]
        height, width = feat_map.shape[-2:]
        scale = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
        boxes_xyxy = box_cxcywh_to_xyxy(boxes) * scale  # Npairs, Nb, 4 in feature pixels
        frame = pair_frame_slot[:, None].expand(-1, num_boxes).to(boxes.dtype)
        rois = torch.cat([frame[..., None], boxes_xyxy], dim=-1).flatten(0, 1)  # Npairs*Nb, 5
        pooled = torchvision.ops.roi_align(feat_map, rois.float(), self.roi_size)  # Npairs*Nb, C, r, r
        pooled = self.boxes_pool_project(pooled).view(num_pairs, num_boxes, self.d_model)
        cx, cy, w, h = boxes.unbind(-1)
        pos_x, pos_y = _sine_xy(cx, cy, self.d_model // 2)
        pos = torch.cat([pos_y, pos_x, h[..., None], w[..., None]], dim=-1)  # Npairs, Nb, C + 2
        embed = self.boxes_direct_project(boxes) + pooled + self.boxes_pos_enc_project(pos)
        return embed + self.label_embed(geometry.box_labels.long())

    def _encode_points(
        self, geometry: GeometryPrompts, feat_map: torch.Tensor, pair_frame_slot: torch.Tensor
    ) -> torch.Tensor:
        """(Npairs, Np, C) point tokens."""
        points = geometry.points_xy
        if geometry.point_labels is None or geometry.point_padding is None:
            raise ValueError("GeometryPrompts.points_xy needs point_labels and point_padding")
        grid = (points * 2 - 1)[:, :, None]  # Npairs, Np, 1, 2
        sampled = torch.nn.functional.grid_sample(feat_map[pair_frame_slot], grid, align_corners=False)
        sampled = sampled.squeeze(-1).transpose(1, 2)  # Npairs, Np, C
        pos_x, pos_y = _sine_xy(points[..., 0], points[..., 1], self.d_model // 2)
        embed = (
            self.points_direct_project(points)
            + self.points_pool_project(sampled)
            + self.points_pos_enc_project(torch.cat([pos_x, pos_y], dim=-1))
        )
        return embed + self.label_embed(geometry.point_labels.long())


def _sine_xy(x: torch.Tensor, y: torch.Tensor, num_feats: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sine encodings (..., num_feats) of normalised coordinates x and y (temperature 1e4, scale 2 pi)."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=x.device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)

    def encode(v: torch.Tensor) -> torch.Tensor:
        pos = v[..., None] * (2 * math.pi) / dim_t
        return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)

    return encode(x), encode(y)


def _pack_left(tokens: torch.Tensor, padding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Moves every pair's valid tokens to the front, keeping their order: (B, G, C), (B, G).

    Branch-free (a stable sort of an unpadded row is the identity), so the graph does not depend on
    the values of `padding` and exports with dynamic shapes.
    """
    order = torch.sort(padding.to(torch.uint8), dim=1, stable=True).indices  # B, G
    tokens = torch.gather(tokens, 1, order[..., None].expand(-1, -1, tokens.shape[-1]))
    return tokens, torch.gather(padding, 1, order)
