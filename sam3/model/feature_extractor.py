"""Frozen image encoder for feature extraction: the trunk and neck of SAM3 as a fixed multi-scale
feature extractor (e.g. for linear probing or a downstream decoder), always in eval mode and
without gradients.
"""

from __future__ import annotations

import torch
from torch import nn

from sam3.model.neck import ViTDetNeck


class FrozenImageEncoder(nn.Module):
    """Multi-scale image features from a frozen trunk and neck.

    Args:
        vision_backbone: trunk and neck (e.g. `VLBackbone.vision_backbone` after loading weights).
        num_levels: pyramid levels to return, from the finest; all of the neck's when None.
    """

    def __init__(self, vision_backbone: ViTDetNeck, *, num_levels: int | None = None) -> None:
        super().__init__()
        self.vision_backbone = vision_backbone
        self.num_levels = vision_backbone.num_levels if num_levels is None else num_levels
        self.vision_backbone.requires_grad_(False)
        self.vision_backbone.eval()

    def train(self, mode: bool = True) -> FrozenImageEncoder:
        """Stay in eval mode whatever is asked (no dropout, no stochastic depth)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Extract features.

        Args:
            images: (B, 3, H, W) images normalised to [-1, 1], H and W multiples of the patch size.

        Returns:
            per level, (B, C, h_l, w_l) features, finest first (scales 4, 2, 1, 0.5 of the token grid).
        """
        features, _ = self.vision_backbone(images, num_levels=self.num_levels)
        return features
