"""Segmentation head (SAM3 paper, "Detector": MaskFormer-style instance and semantic masks).

The fused image tokens first cross-attend to the prompt (residual, pre-norm). A pixel decoder then
upsamples them FPN-style: starting from the fused tokens as the coarsest map, each stage adds the
next finer neck level to the nearest-upsampled map, followed by conv 3x3, GroupNorm(8) and ReLU.
Per-query mask logits are the dot product of an MLP embedding of each query with a 1x1-conv
projection of the finest map; a 1x1 conv gives one semantic-segmentation logit per pixel.

The pixel decoder owns one conv/norm per configured stage (`upsampling_stages`), as the released
checkpoint does; with the default three neck levels only the first `levels - 1` stages run.
Parameter names follow `segmentation_head.*`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from sam3.model.mlp import MLP


class PixelDecoder(nn.Module):
    """FPN-style upsampling path.

    Args:
        hidden_dim: channels C.
        num_stages: number of conv/norm stages owned.
    """

    def __init__(self, *, hidden_dim: int, num_stages: int) -> None:
        super().__init__()
        self.conv_layers = nn.ModuleList(nn.Conv2d(hidden_dim, hidden_dim, 3, 1, 1) for _ in range(num_stages))
        self.norms = nn.ModuleList(nn.GroupNorm(8, hidden_dim) for _ in range(num_stages))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Upsamples from the coarsest map to the finest.

        Args:
            feats: maps from finest to coarsest, each (B, C, H_i, W_i).

        Returns:
            (B, C, H_0, W_0) pixel embedding at the finest resolution.
        """
        if len(feats) - 1 > len(self.conv_layers):
            raise ValueError(
                f"pixel decoder has {len(self.conv_layers)} stages but got {len(feats)} levels "
                f"({len(feats)} - 1 > {len(self.conv_layers)})"
            )
        x = feats[-1]
        for stage, finer in enumerate(reversed(feats[:-1])):
            x = finer + F.interpolate(x, size=finer.shape[-2:], mode="nearest")
            x = F.relu(self.norms[stage](self.conv_layers[stage](x)))
        return x


class MaskPredictor(nn.Module):
    """Per-query mask logits from query embeddings and a pixel embedding."""

    def __init__(self, *, hidden_dim: int) -> None:
        super().__init__()
        self.mask_embed = MLP(input_dim=hidden_dim, hidden_dim=hidden_dim, output_dim=hidden_dim, num_layers=3)

    def forward(self, queries: torch.Tensor, pixel_embed: torch.Tensor) -> torch.Tensor:
        """(B, Q, C) queries, (B, C, H, W) pixel embedding -> (B, Q, H, W) mask logits."""
        return torch.einsum("bqc,bchw->bqhw", self.mask_embed(queries), pixel_embed)


class SegmentationHead(nn.Module):
    """Instance and semantic segmentation from the fused image tokens and the neck levels.

    Args:
        hidden_dim: channels C.
        num_heads: heads of the prompt cross-attention.
        upsampling_stages: conv/norm stages of the pixel decoder.
        use_act_checkpoint: recompute the pixel decoder in the backward pass when training.
    """

    def __init__(self, *, hidden_dim: int, num_heads: int, upsampling_stages: int, use_act_checkpoint: bool = False):
        super().__init__()
        self.pixel_decoder = PixelDecoder(hidden_dim=hidden_dim, num_stages=upsampling_stages)
        self.mask_predictor = MaskPredictor(hidden_dim=hidden_dim)
        self.cross_attend_prompt = nn.MultiheadAttention(hidden_dim, num_heads, dropout=0.0, batch_first=True)
        self.cross_attn_norm = nn.LayerNorm(hidden_dim)
        self.semantic_seg_head = nn.Conv2d(hidden_dim, 1, kernel_size=1)
        self.instance_seg_head = nn.Conv2d(hidden_dim, hidden_dim, kernel_size=1)
        self.use_act_checkpoint = use_act_checkpoint

    def forward(
        self,
        fine_feats: list[torch.Tensor],
        encoder_states: torch.Tensor,
        feat_size: tuple[int, int],
        prompt: torch.Tensor,
        prompt_mask: torch.Tensor,
        queries: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicts masks for every pair.

        Args:
            fine_feats: neck levels finer than the encoder grid, finest first, each (B, C, H_i, W_i),
                already gathered per pair.
            encoder_states: (B, H*W, C) fused image tokens.
            feat_size: (H, W) of the encoder grid.
            prompt: (B, L, C) prompt tokens.
            prompt_mask: (B, L) bool, True marks padding.
            queries: (B, Qt, C) last-layer query embeddings.

        Returns:
            mask logits (B, Qt, H_0, W_0) and semantic logits (B, 1, H_0, W_0).
        """
        attended = self.cross_attend_prompt(
            self.cross_attn_norm(encoder_states), prompt, prompt, key_padding_mask=prompt_mask, need_weights=False
        )[0]
        states = encoder_states + attended
        coarse = states.transpose(1, 2).unflatten(2, feat_size)  # B, C, H, W
        feats = [*fine_feats, coarse]
        if self.use_act_checkpoint and self.training:
            pixel_embed = checkpoint(self.pixel_decoder, feats, use_reentrant=False)
        else:
            pixel_embed = self.pixel_decoder(feats)
        masks = self.mask_predictor(queries, self.instance_seg_head(pixel_embed))
        return masks, self.semantic_seg_head(pixel_embed)
