"""Simple feature pyramid on a plain ViT (ViTDet, Sec. 3 "simple feature pyramid").

The trunk's single feature map (stride = patch size) is turned into levels at scales 4, 2, 1 and 0.5
of the token grid by transposed convolutions or max pooling, each followed by a 1x1 and a 3x3
convolution to `d_model` channels, and paired with a sine position encoding. The module owns the
trunk so that its parameter names match Meta's released checkpoint (`vision_backbone.trunk.*`,
`vision_backbone.convs.*`). An optional second pyramid of the same shape (`sam2_convs.*`, SAM3's "dual"
neck) feeds the interactive (SAM-style) heads from the same trunk pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sam3.model.position_encoding import PositionEmbeddingSine

SUPPORTED_SCALES = (4.0, 2.0, 1.0, 0.5)


class ViTDetNeck(nn.Module):
    """ViT trunk + simple feature pyramid.

    Args:
        trunk: image encoder mapping (B, 3, H, W) to (B, C_trunk, h, w); must expose `embed_dim`.
        position_encoding: encoder of each level's pixel grid.
        d_model: channels of every pyramid level.
        scale_factors: resize factor of each level relative to the token grid, from `SUPPORTED_SCALES`.
        use_sam2_convs: also build the second pyramid (`sam2_convs`) for the interactive heads.
    """

    def __init__(
        self,
        *,
        trunk: nn.Module,
        position_encoding: PositionEmbeddingSine,
        d_model: int,
        scale_factors: Sequence[float],
        use_sam2_convs: bool = False,
    ) -> None:
        super().__init__()
        unknown = [s for s in scale_factors if float(s) not in SUPPORTED_SCALES]
        if unknown:
            raise ValueError(f"scale_factors {unknown} are not supported; choose from {SUPPORTED_SCALES}")
        self.trunk = trunk
        self.position_encoding = position_encoding
        self.scale_factors = tuple(float(s) for s in scale_factors)
        self.convs = nn.ModuleList([_pyramid_level(trunk.embed_dim, d_model, s) for s in self.scale_factors])
        self.sam2_convs = (
            nn.ModuleList([_pyramid_level(trunk.embed_dim, d_model, s) for s in self.scale_factors])
            if use_sam2_convs
            else None
        )

    @property
    def num_levels(self) -> int:
        return len(self.convs)

    def forward(
        self, images: torch.Tensor, num_levels: int | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Encode images into a feature pyramid.

        Args:
            images: (B, 3, H, W) normalised images, H and W multiples of the trunk's patch size.
            num_levels: compute only the first `num_levels` levels (all when None).

        Returns:
            features: per level, (B, d_model, h * s, w * s) with (h, w) the token grid and s the
                level's scale factor (0.5 floors).
            pos: per level, (B, d_model, same h, same w) sine position encodings, dtype of the features.
        """
        num_levels = self._check_levels(num_levels)
        return self._pyramid(self.trunk(images), self.convs, num_levels)  # trunk: B, C_trunk, h, w

    def forward_dual(self, images: torch.Tensor, num_levels: int | None = None) -> tuple[list[torch.Tensor], ...]:
        """Both pyramids from one trunk pass: `forward`'s (features, pos), then the `sam2_convs` pair."""
        if self.sam2_convs is None:
            raise ValueError("this neck has no sam2_convs pyramid; build it with use_sam2_convs=True")
        num_levels = self._check_levels(num_levels)
        x = self.trunk(images)  # B, C_trunk, h, w
        return (*self._pyramid(x, self.convs, num_levels), *self._pyramid(x, self.sam2_convs, num_levels))

    def _check_levels(self, num_levels: int | None) -> int:
        num_levels = self.num_levels if num_levels is None else num_levels
        if not 1 <= num_levels <= self.num_levels:
            raise ValueError(f"num_levels must be in [1, {self.num_levels}], got {num_levels}")
        return num_levels

    def _pyramid(
        self, x: torch.Tensor, convs: nn.ModuleList, num_levels: int
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        features, pos = [], []
        for conv in convs[:num_levels]:
            level = conv(x)
            features.append(level)
            pos.append(self.position_encoding(level).to(level.dtype))
        return features, pos


def _pyramid_level(dim: int, d_model: int, scale: float) -> nn.Sequential:
    """Resampling layers for one level (names as in the released checkpoint), then 1x1 and 3x3 convs."""
    level = nn.Sequential()
    if scale == 4.0:
        level.add_module("dconv_2x2_0", nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2))
        level.add_module("gelu", nn.GELU())
        level.add_module("dconv_2x2_1", nn.ConvTranspose2d(dim // 2, dim // 4, kernel_size=2, stride=2))
        out_dim = dim // 4
    elif scale == 2.0:
        level.add_module("dconv_2x2", nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2))
        out_dim = dim // 2
    elif scale == 1.0:
        out_dim = dim
    else:
        level.add_module("maxpool_2x2", nn.MaxPool2d(kernel_size=2, stride=2))
        out_dim = dim
    level.add_module("conv_1x1", nn.Conv2d(out_dim, d_model, kernel_size=1))
    level.add_module("conv_3x3", nn.Conv2d(d_model, d_model, kernel_size=3, padding=1))
    return level
